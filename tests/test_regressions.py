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
