"""Argument handling shared by every op: ints are any int (Python or NumPy, never a float array),
and ints beyond int64 are a ValueError naming the argument."""

from __future__ import annotations

import numpy as np
import pytest

import simdnn
from simdnn import ops

# ------------------------------------------------------------------------------------------------
# Regressions (marker regression): one reproducer per bug found, named after it.


# ------------------------------------------------------------------------------------------------
# cpp/bindings: ints beyond int64 went through pybind11's cast, whose cast_error is a RuntimeError.


@pytest.mark.regression
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
# cpp/bindings: which objects are ints. NumPy ints were refused for groups and set_num_threads
# while every other int argument took them; NumPy float arrays passed for ints and were truncated.


@pytest.mark.regression
def test_numpy_ints_are_ints_everywhere(threads):
    x = np.ones((1, 2, 5, 5), np.float32)
    w = np.ones((2, 1, 1, 1), np.float32)
    want = ops.conv2d(x, w, groups=2)
    for groups in (np.int64(2), np.int32(2), np.array(2)):
        np.testing.assert_array_equal(ops.conv2d(x, w, groups=groups), want)
    simdnn.set_num_threads(np.int64(1))
    assert simdnn.get_num_threads() == 1


@pytest.mark.regression
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
