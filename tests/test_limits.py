"""Limits: tensors whose element counts and offsets pass 2**31, and workspaces that cannot be had.

The large-tensor tests need up to ~11 GiB and are marked ``large``; they are skipped, with the
reason shown, only on machines whose available memory is too small for them. They check sampled
rows (the first ones and those whose offsets lie past 2**31 elements) against closed forms or the
NumPy reference on slices: a 32-bit index anywhere would wrap and land on the wrong element.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from simdnn import ops, reference

GIB = 1 << 30
BIG = 2**31


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo (0 where there is none: such machines skip these tests)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def need_memory(nbytes: int) -> None:
    have = available_bytes()
    if have < nbytes * 1.15:
        pytest.skip(f"needs {nbytes / GIB:.1f} GiB of free memory, {have / GIB:.1f} GiB available")


@pytest.mark.large
def test_gemm_output_past_2_31_elements() -> None:
    # Rank-1 update into C of 65536 x 32769 = 2**31 + 65536 elements: the last rows start past
    # element 2**31. The odd N also keeps every row misaligned differently.
    m, n = 65536, 32769
    need_memory(m * n * 4)
    rng = np.random.default_rng(1)
    a = rng.standard_normal((m, 1)).astype(np.float32)
    b = rng.standard_normal((1, n)).astype(np.float32)
    c = ops.gemm(a, b)
    assert c.shape == (m, n)
    assert (m - 1) * n > BIG
    for i in [0, 1, 12345, BIG // n, BIG // n + 1, m - 2, m - 1]:
        np.testing.assert_array_equal(c[i], a[i, 0] * b[0], err_msg=f"row {i}")
    del c


@pytest.mark.large
def test_gemm_input_past_2_31_elements() -> None:
    # A of 32769 x 65536 (2**31 + 65536 elements) times a vector: the packing reads past 2**31.
    m, k = 32769, 65536
    need_memory(m * k * 4)
    a = np.empty((m, k), dtype=np.float32)
    # a[i, j] = r[i] + s[j], written in place (a random fill would take longer than the test).
    rng = np.random.default_rng(2)
    r = rng.standard_normal(m).astype(np.float32)
    s = rng.standard_normal(k).astype(np.float32)
    np.add(r[:, None], s[None, :], out=a)
    b = rng.standard_normal((k, 1)).astype(np.float32)
    got = ops.gemm(a, b)[:, 0]
    rows = np.array([0, 1, BIG // k - 2, BIG // k - 1, m - 1])  # row m - 1 starts at 2**31
    want = a[rows].astype(np.float64) @ b[:, 0].astype(np.float64)
    bound = k * np.finfo(np.float32).eps * (np.abs(a[rows]) @ np.abs(b[:, 0])).astype(np.float64)
    assert np.all(np.abs(got[rows] - want) <= bound), (got[rows], want)
    del a


@pytest.mark.large
def test_conv2d_output_past_2_31_elements() -> None:
    # A 1x1 convolution with 33 filters over an 8192 x 8192 image: the output has
    # 33 * 2**26 = 2**31 + 2**26 elements, so its last channel starts past 2**31.
    k, h, w = 33, 8192, 8192
    need_memory(k * h * w * 4 + h * w * 4)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 1, h, w), dtype=np.float32)
    wt = rng.standard_normal((k, 1, 1, 1), dtype=np.float32)
    b = rng.standard_normal(k, dtype=np.float32)
    y = ops.conv2d(x, wt, b)
    assert y.shape == (1, k, h, w)
    for ch in [0, 1, BIG // (h * w) - 1, BIG // (h * w), k - 1]:
        for row in [0, h // 2, h - 1]:
            want = x[0, 0, row] * wt[ch, 0, 0, 0] + b[ch]
            np.testing.assert_allclose(y[0, ch, row], want, rtol=1e-6, atol=1e-6)
    del y


@pytest.mark.large
def test_max_pool2d_input_past_2_31_elements() -> None:
    # 2x2 max-pooling of one 65536 x 32769 plane (2**31 + 65536 elements; odd W leaves a column
    # out, as floor mode does). Rows past 2**31 are checked against the reference on slices.
    h, w = 65536, 32769
    need_memory(h * w * 4 * 5 // 4)
    rng = np.random.default_rng(4)
    x = np.empty((1, 1, h, w), dtype=np.float32)
    np.add(
        rng.standard_normal(h).astype(np.float32)[:, None],
        rng.standard_normal(w).astype(np.float32)[None, :],
        out=x[0, 0],
    )
    y, idx = ops.max_pool2d(x, 2)
    assert y.shape == idx.shape == (1, 1, h // 2, w // 2)
    for row0 in [0, BIG // w - 8, h - 16]:
        want_y, want_idx = reference.max_pool2d(x[:, :, row0 : row0 + 16], 2)
        np.testing.assert_array_equal(y[:, :, row0 // 2 : row0 // 2 + 8], want_y)
        np.testing.assert_array_equal(idx[:, :, row0 // 2 : row0 // 2 + 8], want_idx)
    del x, y, idx


# ------------------------------------------------------------------------------------------------
# Workspaces that cannot be allocated. Each case runs in a child process whose address space is
# capped (RLIMIT_AS) at what it has mapped plus 1 GiB, then asks for a ~4 GiB workspace: the
# stride-2 backward-data convolution lowers to col2im with a (C R S) x (P Q) column buffer,
# 64 * 16 * 16 * 256 * 256 floats. With N = 1 the buffer is taken before the parallel regions; with
# N = 2 and two threads each thread takes its own inside one, so the failure has to cross the
# region. After the MemoryError the library must still compute correctly.

_CHILD = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    import simdnn
    from simdnn import ops, reference

    n = int(sys.argv[1])
    simdnn.set_num_threads(2)
    rng = np.random.default_rng(5)
    small = rng.standard_normal((2, 3, 9, 9))
    w_small = rng.standard_normal((4, 3, 3, 3))
    dy_small = rng.standard_normal((2, 4, 4, 4))
    # Warm up: OpenMP threads and their stacks exist before the cap.
    ops.conv2d_backward_data(dy_small, w_small, small.shape, stride=2)

    dy = np.ones((n, 1, 256, 256), dtype=np.float32)
    w = np.ones((1, 64, 16, 16), dtype=np.float32)
    x_shape = (n, 64, 526, 526)
    with open("/proc/self/status") as f:
        vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), hard))
    try:
        ops.conv2d_backward_data(dy, w, x_shape, stride=2)
    except MemoryError as e:
        print("MemoryError:", e)
    else:
        print("no error")
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    got = ops.conv2d_backward_data(dy_small, w_small, small.shape, stride=2)
    want = reference.conv2d_backward_data(dy_small, w_small, small.shape, stride=2)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    print("afterwards ok")
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
@pytest.mark.parametrize("n", [1, 2], ids=["sequential", "per-thread"])
def test_workspace_that_cannot_be_allocated_raises_memory_error(n: int) -> None:
    env = dict(os.environ)
    # Under AddressSanitizer (tools/sanitize.sh) a failed allocation must return null, as libc's
    # does, instead of ending the process with a report.
    env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":allocator_may_return_null=1"
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(n)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("MemoryError: simdnn: cannot allocate 4"), proc.stdout
    assert "GiB of kernel workspace" in lines[0]
    assert lines[1] == "afterwards ok"
