"""cpu_info, ISA selection (SIMDNN_ISA and set_isa) and thread control."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import simdnn


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, check=False
    )


def test_cpu_info_keys():
    info = simdnn.cpu_info()
    assert info["isa"] in info["available"]
    assert info["available"][0] == "scalar"
    assert set(info["available"]) <= set(info["compiled"])
    assert info["num_threads"] == simdnn.get_num_threads() >= 1
    for key in ("l1d_cache", "l2_cache", "l3_cache"):
        assert isinstance(info[key], int)
        assert info[key] > 0
    for dt in ("float32", "float64"):
        blk = info["gemm_blocking"][dt]
        assert blk["kc"] > 0
        assert blk["nc"] % blk["nr"] == 0


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
