"""Plain reproducers of the bugs that the property tests (test_properties.py, test_threads.py,
test_nonfinite.py) found, one test per bug, each named after it."""

from __future__ import annotations

import numpy as np
import pytest

import simdnn
from simdnn import ops, reference

# ------------------------------------------------------------------------------------------------
# cpp/bindings/gemm.cpp: a one-row `out` was written with a unit column stride whatever its own.


@pytest.mark.parametrize("isa", simdnn.cpu_info()["available"])
def test_matmul_one_row_out_with_column_step_or_reversed(isa):
    a = np.ones((1, 3), np.float32)
    b = np.ones((3, 10), np.float32) * np.arange(10, dtype=np.float32)
    want = a @ b
    with simdnn.use_isa(isa):
        stepped = np.full((1, 20), np.nan, np.float32)
        ops.matmul(a, b, out=stepped[:, ::2])  # was written into stepped[0, :10]
        np.testing.assert_array_equal(stepped[:, ::2], want)
        assert np.all(np.isnan(stepped[:, 1::2]))
        # A reversed row: was written from its last element onwards, past the buffer's end
        # (glibc then aborted with "corrupted size vs. prev_size").
        buf = np.full((1, 12), np.nan, np.float32)
        ops.matmul(a, b, out=buf[:, 1:11][:, ::-1])
        np.testing.assert_array_equal(buf[:, 1:11][:, ::-1], want)
        assert np.isnan(buf[0, 0])
        assert np.isnan(buf[0, 11])


# ------------------------------------------------------------------------------------------------
# cpp/bindings: ints beyond int64 went through pybind11's cast, whose cast_error is a RuntimeError.


@pytest.mark.parametrize("value", [2**63, 2**64, -(2**63) - 1, (1, 2**64)])
def test_ints_beyond_int64_raise_value_error(value):
    x = np.ones((1, 1, 4, 4), np.float32)
    w = np.ones((1, 1, 3, 3), np.float32)
    dy = np.ones((1, 1, 2, 2), np.float32)
    calls = [
        lambda: ops.conv2d(x, w, stride=value),
        lambda: ops.conv2d(x, w, padding=value),
        lambda: ops.conv2d(x, w, dilation=value),
        lambda: ops.max_pool2d(x, value),
        lambda: ops.avg_pool2d(x, 2, value),
    ]
    if isinstance(value, int):
        calls += [
            lambda: ops.conv2d_backward_data(dy, w, (1, 1, 4, value)),
            lambda: ops.conv2d_backward_weights(x, dy, (1, 1, 3, value)),
            lambda: ops.avg_pool2d_backward(dy, (1, 1, 4, value), 2),
            lambda: ops.conv2d(x, w, groups=value),
            lambda: simdnn.set_num_threads(value),
        ]
    for call in calls:
        with pytest.raises(ValueError, match="does not fit in a 64-bit integer"):
            call()


# ------------------------------------------------------------------------------------------------
# cpp/bindings/conv.cpp: the padded input and the dilated kernel were sized with int64 overflow.


@pytest.mark.parametrize("isa", simdnn.cpu_info()["available"])
def test_conv_huge_dilation_or_padding_is_refused_not_wrapped(isa):
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    w = np.ones((1, 1, 5, 5), np.float32)
    with simdnn.use_isa(isa):
        # 2**62 * (5 - 1) + 1 wrapped to 1: a "1x1" kernel, a (1, 1, 4, 4) result of 4 * x.
        with pytest.raises(ValueError, match="larger than the padded input"):
            ops.conv2d(x, w, dilation=2**62)
        with pytest.raises(ValueError, match="larger than the padded input"):
            ops.conv2d_backward_weights(
                x, np.ones((1, 1, 4, 4), np.float32), w.shape, dilation=2**62
            )
        # 4 + 2 * 2**62 wrapped to a negative padded size.
        with pytest.raises(ValueError, match=r"padding .* is too large"):
            ops.conv2d(x, w, padding=(0, 2**62))
        # Valid huge values still work where they cannot overflow: a 1-wide kernel ignores its
        # dilation, a stride beyond the input gives one output row.
        w1 = np.ones((1, 1, 1, 1), np.float32)
        y = ops.conv2d(x, w1, dilation=2**63 - 1, stride=(2**63 - 1, 1))
        np.testing.assert_array_equal(y, x[:, :, :1, :])


def test_pool_huge_x_shape_is_refused_not_wrapped():
    dy = np.ones((0, 1, 1, 1), np.float32)
    with pytest.raises(ValueError, match="too large to pad"):
        ops.avg_pool2d_backward(dy, (0, 1, 2**63 - 1, 1), 3, 2**62, 1)


# ------------------------------------------------------------------------------------------------
# cpp/bindings: which objects are ints. NumPy ints were refused for groups and set_num_threads
# while every other int argument took them; NumPy float arrays passed for ints and were truncated.


def test_numpy_ints_are_ints_everywhere(threads):
    x = np.ones((1, 2, 5, 5), np.float32)
    w = np.ones((2, 1, 1, 1), np.float32)
    want = ops.conv2d(x, w, groups=2)
    for groups in (np.int64(2), np.int32(2), np.array(2)):
        np.testing.assert_array_equal(ops.conv2d(x, w, groups=groups), want)
    simdnn.set_num_threads(np.int64(1))
    assert simdnn.get_num_threads() == 1


def test_numpy_float_arrays_are_not_ints():
    x = np.ones((1, 1, 5, 5), np.float32)
    w = np.ones((1, 1, 1, 1), np.float32)
    # stride=np.array(2.5) ran with stride 2; x_shape=(1, 1, np.array(5.7), 5) with height 5.
    for stride in (np.array(2.5), (np.array(2.5), 1), np.float64(2.0)):
        with pytest.raises(TypeError, match="stride must be an int or a pair of ints"):
            ops.conv2d(x, w, stride=stride)
    with pytest.raises(TypeError, match="x_shape must be a tuple of 4 ints"):
        ops.conv2d_backward_data(x, w, (1, 1, np.array(5.7), 5))
    with pytest.raises(TypeError, match="kernel_size must be an int or a pair of ints"):
        ops.max_pool2d(x, np.array(2.0))


# ------------------------------------------------------------------------------------------------
# python/simdnn/reference.py: the convolution twins overflowed as_strided on valid huge strides
# and dilations (OverflowError: Python int too large to convert to C long).


def test_conv_twins_accept_huge_strides_and_dilations():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 2, 3, 4))
    w = rng.standard_normal((3, 2, 1, 2))
    kw = {"stride": (2**63 - 1, 2**62), "dilation": (2**62, 1)}  # P = Q = 1, a 1-high kernel
    y = reference.conv2d(x, w, **kw)
    np.testing.assert_allclose(y, reference.conv2d(x, w, stride=3), rtol=1e-14)
    np.testing.assert_allclose(y, ops.conv2d(x, w, **kw), rtol=1e-14)
    dy = rng.standard_normal(y.shape)
    np.testing.assert_allclose(
        reference.conv2d_backward_weights(x, dy, w.shape, **kw)[0],
        reference.conv2d_backward_weights(x, dy, w.shape, stride=3)[0],
        rtol=1e-14,
    )


# ------------------------------------------------------------------------------------------------
# cpp/conv/conv.cpp: with C = 0 the GEMM engine saw an empty reduction and wrote nothing: y was
# uninitialised memory, and backward-weights set db to 0 instead of the sum of dy.


@pytest.mark.parametrize("isa", simdnn.cpu_info()["available"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_with_no_input_channels(isa, dtype):
    x = np.zeros((2, 0, 9, 5), dtype)
    w = np.zeros((4, 0, 1, 5), dtype)
    b = np.arange(1, 5, dtype=dtype)
    dy = np.arange(2 * 4 * 9, dtype=dtype).reshape(2, 4, 9, 1)
    with simdnn.use_isa(isa):
        for _ in range(3):  # fresh output arrays held garbage more often than not
            np.testing.assert_array_equal(ops.conv2d(x, w, groups=2), np.zeros((2, 4, 9, 1)))
            y = ops.conv2d(x, w, b, groups=2)
            np.testing.assert_array_equal(y, np.broadcast_to(b[:, None, None], (2, 4, 9, 1)))
        dw, db = ops.conv2d_backward_weights(x, dy, w.shape, groups=2)
    assert dw.shape == w.shape
    np.testing.assert_array_equal(db, dy.sum(axis=(0, 2, 3)))
    np.testing.assert_array_equal(
        db, reference.conv2d_backward_weights(x, dy, w.shape, groups=2)[1]
    )


# ------------------------------------------------------------------------------------------------
# cpp/conv/conv.cpp: a valid stride of 2**63 - 1 (one output column) overflowed a rounding-up
# division in col2im: dx came back 0, and other geometries wrote out of range.


@pytest.mark.parametrize("isa", simdnn.cpu_info()["available"])
@pytest.mark.parametrize("stride", [(1, 2**63 - 1), (2**63 - 1, 1), (2**62, 2**62 + 1)])
def test_conv_huge_valid_strides(isa, stride):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 6))
    w = rng.standard_normal((4, 3, 2, 2))
    conv = {"stride": stride, "padding": 1}
    with simdnn.use_isa(isa):
        y = ops.conv2d(x, w, **conv)
        dy = rng.standard_normal(y.shape)
        dx = ops.conv2d_backward_data(dy, w, x.shape, **conv)
        dw, db = ops.conv2d_backward_weights(x, dy, w.shape, **conv)
    np.testing.assert_allclose(y, reference.conv2d(x, w, **conv), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        dx, reference.conv2d_backward_data(dy, w, x.shape, **conv), rtol=1e-12, atol=1e-12
    )
    want_dw, want_db = reference.conv2d_backward_weights(x, dy, w.shape, **conv)
    np.testing.assert_allclose(dw, want_dw, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db, want_db, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# cpp/conv/conv.cpp: backward-data as a convolution of the zero-padded dY with flipped weights
# multiplied an Inf weight by dY's border zeros (NaN) where the true gradient is finite. The
# depthwise stride-1 path and the many-channel flipped path both did.


@pytest.mark.parametrize("isa", simdnn.cpu_info()["available"])
@pytest.mark.parametrize(("c", "k", "groups"), [(6, 6, 6), (16, 8, 1)])
def test_backward_data_with_inf_weights_adds_only_real_terms(isa, c, k, groups):
    w = np.zeros((k, c // groups, 3, 3))
    w[:, :, 0, 0] = np.inf  # the top-left tap reaches dY's border at the bottom-right of dx
    dy = np.ones((1, k, 8, 8))
    with simdnn.use_isa(isa):
        dx = ops.conv2d_backward_data(dy, w, (1, c, 8, 8), padding=1, groups=groups)
    want = reference.conv2d_backward_data(dy, w, (1, c, 8, 8), padding=1, groups=groups)
    np.testing.assert_array_equal(np.isnan(dx), np.isnan(want))
    assert not np.isnan(dx).any()
    assert np.isposinf(dx[0, :, :7, :7]).all()
    assert (dx[0, :, 7, :] == 0).all()


# ------------------------------------------------------------------------------------------------
# cpp/elementwise: Adam's 1 - beta was computed in float32 (1 - 0.999f = 0.00099998713).


@pytest.mark.parametrize("isa", simdnn.cpu_info()["available"])
def test_adam_one_minus_beta_is_rounded_once(isa):
    p = np.zeros(37, np.float32)
    m, v = np.zeros_like(p), np.zeros_like(p)
    with simdnn.use_isa(isa):
        ops.adam_update(p, np.ones_like(p), m, v, lr=1e-3, beta1=0.9, beta2=0.999)
    np.testing.assert_array_equal(v, np.float32(1.0 - 0.999))  # was 0.00099998713
    np.testing.assert_array_equal(m, np.float32(1.0 - 0.9))


# ------------------------------------------------------------------------------------------------
# python/simdnn/ops.py: optimiser steps truncated a float step and took any hyper-parameter.


@pytest.mark.parametrize(
    ("kw", "exc"),
    [
        ({"step": 1.5}, TypeError),
        ({"step": True}, TypeError),
        ({"step": 0}, ValueError),
        ({"beta1": 1.0}, ValueError),
        ({"beta2": -0.1}, ValueError),
        ({"lr": float("nan")}, ValueError),
        ({"lr": -1e-3}, ValueError),
        ({"eps": float("inf")}, ValueError),
        ({"weight_decay": -1.0}, ValueError),
    ],
)
def test_adam_hyper_parameters_are_checked(kw, exc):
    p = np.ones(5, np.float32)
    with pytest.raises(exc, match="adam_update"):
        ops.adam_update(p, p.copy(), np.zeros_like(p), np.zeros_like(p), **{"lr": 0.1, **kw})
    np.testing.assert_array_equal(p, 1.0)  # nothing was updated


@pytest.mark.parametrize(
    "kw",
    [
        {"lr": -0.1},
        {"momentum": -0.5},
        {"momentum": 0.0, "nesterov": True},
        {"weight_decay": np.nan},
    ],
)
def test_sgd_hyper_parameters_are_checked(kw):
    p = np.ones(5)
    with pytest.raises(ValueError, match="sgd_update"):
        ops.sgd_update(p, p.copy(), np.zeros_like(p), **{"lr": 0.1, "momentum": 0.9, **kw})
    np.testing.assert_array_equal(p, 1.0)


# ------------------------------------------------------------------------------------------------
# CMakeLists.txt: GCC 12 auto-vectorised the scalar micro-kernel's k loop into code that also
# loaded the B row and A column after the last ones (found by valgrind). Here A and B end exactly
# where an inaccessible page begins, so a read past them is a segfault, not a silent stray read.

_GUARD_SCRIPT = r"""
import ctypes, mmap, sys
import numpy as np
from simdnn import _core

PAGE = mmap.PAGESIZE
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
keep = []


def at_page_end(values):
    # A copy of values (C order) whose last byte is the last byte before a PROT_NONE page.
    nbytes = values.nbytes
    pages = nbytes // PAGE + 2
    buf = mmap.mmap(-1, pages * PAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    guard = base + (pages - 1) * PAGE
    assert libc.mprotect(guard, PAGE, 0) == 0, ctypes.get_errno()
    arr = np.frombuffer(buf, values.dtype, count=values.size, offset=(pages - 1) * PAGE - nbytes)
    arr = arr.reshape(values.shape)
    arr[...] = values
    keep.append(buf)
    return arr


checked = 0
for uk in _core.ukernels():
    if uk["isa"] not in sys.argv[1:]:
        continue
    dt = np.dtype(uk["dtype"])
    for m in range(1, uk["mr"] + 1):
        for n in range(1, uk["nr"] + 1):
            for k in (1, 2, 3, 16, 17):
                for column_a in (False, True):
                    a = np.ones((k, m) if column_a else (m, k), dt)
                    a = at_page_end(a)
                    a = a.T if column_a else a
                    b = at_page_end(np.ones((k, n), dt))
                    c = np.zeros((m, n), dt)
                    _core.run_ukernel(uk["index"], a, b, c, 1.0, 0.0)
                    assert (c == k).all()
                    checked += 1
print(checked)
"""


def test_micro_kernels_do_not_read_past_a_and_b():
    import subprocess
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("uses mmap and mprotect through libc")
    isas = simdnn.cpu_info()["available"]
    run = subprocess.run(
        [sys.executable, "-c", _GUARD_SCRIPT, *isas], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    assert int(run.stdout) > 1000
