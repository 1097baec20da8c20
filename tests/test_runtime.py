"""cpu_info, ISA selection (SIMDNN_ISA and set_isa) and thread control."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest

import simdnn


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, check=False
    )


def cpu_family() -> int | None:
    """The CPU family as Linux reports it (/proc/cpuinfo), or None where it cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("cpu family"):
                    return int(line.split(":")[1])
    except OSError:
        pass
    return None


def test_cpu_info_keys():
    info = simdnn.cpu_info()
    assert info["isa"] in info["available"]
    assert info["available"][0] == "scalar"
    assert set(info["available"]) <= set(info["compiled"])
    assert info["num_threads"] == simdnn.get_num_threads() >= 1
    for key in ("l1d_cache", "l2_cache", "l3_cache"):
        assert isinstance(info[key], int)
        assert info[key] > 0
    assert info["vendor"] in ("Intel", "AMD", "unknown")
    # Intel packs a row-major B whose rows lie more than 512 bytes apart; elsewhere no limit.
    assert info["in_place_stride_bytes"] == (512 if info["vendor"] == "Intel" else None)
    # AMD family 25 (Zen 3, and Zen 4 with AVX-512) packs a B whose rows span more than 3.5 MiB.
    family = cpu_family()
    # Intel and Zen 4 pack the far planes of 1x1 convolutions (over 2 KiB).
    if family is None:  # not Linux: the family is not known here
        assert info["in_place_span_bytes"] in (None, 3670016)
        assert info["pointwise_plane_bytes"] in (None, 2048)
        assert info["winograd_chunk_tasks"] in (True, False)
        assert info["winograd_narrow_tile_channels"] in (2048, 8192)
    else:
        zen3_4 = info["vendor"] == "AMD" and family == 25
        zen4 = zen3_4 and "avx512" in info["available"]
        assert info["in_place_span_bytes"] == (3670016 if zen3_4 else None)
        far = zen4 or info["vendor"] == "Intel"
        assert info["pointwise_plane_bytes"] == (2048 if far else None)
        # Zen 4 runs a Winograd chunk's phases over all threads, the others chunks as tasks.
        assert info["winograd_chunk_tasks"] is (not zen4)
        # Zen 3 and 4 take Winograd for narrow layers from 2048 tiles x channels, the others 8192.
        assert info["winograd_narrow_tile_channels"] == (2048 if zen3_4 else 8192)
    for dt in ("float32", "float64"):
        blk = info["gemm_blocking"][dt]
        assert blk["kc"] > 0
        assert blk["nc"] % blk["nr"] == 0


@pytest.mark.parametrize(
    "hook",
    [
        "_set_winograd_chunk_tasks",
        "_set_conv_lanes_wide",
        "_set_gemm_swap",
        "_set_conv_span_images",
    ],
)
@pytest.mark.parametrize("value", [1, 0, "on", 1.0])
def test_test_switches_refuse_anything_but_a_bool_or_none(hook, value):
    """The tests' switches (Winograd's chunk schedule, the wide-row filters-in-lanes forward, the
    transposed GEMM, the implicit GEMM's panels across images) take True, False or None, and name
    what they got otherwise (an int is refused too, though Python would treat 1 as true)."""
    switch = getattr(simdnn._core, hook)
    with pytest.raises(TypeError, match=r"True, False or None, got " + re.escape(repr(value))):
        switch(value)
    switch(None)


def test_best_isa_is_the_default():
    out = run_python("import simdnn; print(simdnn.get_isa())", SIMDNN_ISA="")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == simdnn.cpu_info()["available"][-1]


def test_simdnn_isa_env_forces_a_path(isa):
    code = (
        "import numpy as np, simdnn; a = np.ones((50, 60), np.float32);"
        "print(simdnn.get_isa(), float(simdnn.ops.matmul(a, a.T)[0, 0]))"
    )
    out = run_python(code, SIMDNN_ISA=isa)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [isa, "60.0"]


def test_simdnn_isa_env_rejects_unknown_names():
    out = run_python("import simdnn", SIMDNN_ISA="sse9")
    assert out.returncode != 0
    assert "SIMDNN_ISA='sse9' is not one of scalar, avx2, avx512" in out.stderr


def test_set_isa_validates():
    with pytest.raises(ValueError, match="unknown ISA 'neon'"):
        simdnn.set_isa("neon")
    unavailable = set(simdnn.cpu_info()["compiled"]) - set(simdnn.cpu_info()["available"])
    for isa in unavailable:  # pragma: no cover - depends on the CPU
        with pytest.raises(ValueError, match="not available"):
            simdnn.set_isa(isa)


def test_use_isa_restores(isa):
    before = simdnn.get_isa()
    with simdnn.use_isa("scalar"):
        assert simdnn.get_isa() == "scalar"
    assert simdnn.get_isa() == before


def test_omp_num_threads_is_honoured():
    out = run_python("import simdnn; print(simdnn.get_num_threads())", OMP_NUM_THREADS="1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


def test_set_num_threads(threads):
    simdnn.set_num_threads(1)
    assert simdnn.get_num_threads() == 1
    assert simdnn.cpu_info()["num_threads"] == 1
    a = np.ones((300, 300), np.float32)
    np.testing.assert_array_equal(simdnn.ops.matmul(a, a), np.full((300, 300), 300, np.float32))
    with pytest.raises(ValueError, match=r">= 1, got 0"):
        simdnn.set_num_threads(0)
    with pytest.raises(TypeError, match="must be an int"):
        simdnn.set_num_threads(2.0)
    with pytest.raises(TypeError, match="must be an int"):
        simdnn.set_num_threads(True)


# ------------------------------------------------------------------------------------------------
# Denormal flushing (set_flush_denormal): off by default; when on, the kernels flush on the
# calling thread and on the pool's workers, and the caller's own mode is left as it was.

TINY = {np.float32: np.float32(1e-39), np.float64: np.float64(1e-310)}  # denormal in each dtype


@pytest.fixture
def flush_mode() -> Iterator[None]:
    before = simdnn.get_flush_denormal()
    yield
    simdnn.set_flush_denormal(before)


def _denormal_update(dtype, n):
    """An SGD update whose velocities are denormal where i % 3 == 0 and whose gradients are 0:
    (param, velocity) afterwards and the velocity before."""
    v0 = np.linspace(1.0, 2.0, n).astype(dtype)
    v0[::3] = TINY[dtype]
    p, v = np.ones(n, dtype), v0.copy()
    simdnn.ops.sgd_update(p, np.zeros(n, dtype), v, lr=0.5, momentum=0.75)
    return p, v, v0


def test_flush_denormal_is_off_by_default_and_keeps_denormals(isa, dtype, flush_mode):
    assert simdnn.get_flush_denormal() is False
    p, v, v0 = _denormal_update(dtype, 1001)
    pr, vr = np.ones(1001, dtype), v0.copy()
    simdnn.reference.sgd_update(pr, np.zeros(1001, dtype), vr, lr=0.5, momentum=0.75)
    np.testing.assert_array_equal(v, vr)
    np.testing.assert_array_equal(p, pr)
    assert np.all(v[::3] != 0)
    assert np.all(np.abs(v[::3]) < np.finfo(dtype).tiny)


def test_flush_denormal_flushes_inputs_and_results_on_every_thread(isa, dtype, threads, flush_mode):
    assert simdnn.set_flush_denormal(True) is True  # x86: supported
    assert simdnn.get_flush_denormal() is True
    simdnn.set_num_threads(3)  # the conftest raises the cap: the update splits over 3 threads
    n = 3 * 200_003
    p, v, v0 = _denormal_update(dtype, n)
    # Denormal velocities read as 0 (DAZ): 0.75 * 0 + 0; the others as the twin computes them.
    want = v0.copy()
    want[::3] = 0
    pr = np.ones(n, dtype)
    simdnn.reference.sgd_update(pr, np.zeros(n, dtype), want, lr=0.5, momentum=0.75)
    np.testing.assert_array_equal(v, want)
    np.testing.assert_array_equal(p, pr)
    # A product whose result is denormal comes out 0 (FTZ): 1e-20 * 1e-20 in float32, 1e-160 *
    # 1e-160 in float64, through the GEMM.
    small = np.full((5, 7), 1e-20 if dtype == np.float32 else 1e-160, dtype)
    np.testing.assert_array_equal(simdnn.ops.matmul(small, small.T), np.zeros((5, 5), dtype))
    # The calling thread's own arithmetic (NumPy) keeps its denormals.
    assert TINY[dtype] * dtype(0.5) != 0
    # Off again: the workers take the caller's mode back with the next job.
    assert simdnn.set_flush_denormal(False) is True
    p, v, _ = _denormal_update(dtype, n)
    assert np.all(v[::3] != 0)


def test_set_flush_denormal_takes_a_bool(flush_mode):
    with pytest.raises(TypeError, match="set_flush_denormal: mode must be a bool, got int"):
        simdnn.set_flush_denormal(1)  # type: ignore[arg-type]
    assert simdnn.get_flush_denormal() is False
    assert simdnn.set_flush_denormal(np.bool_(True)) is True
    assert simdnn.get_flush_denormal() is True
