"""relu and relu_backward: every ISA and dtype against the NumPy twin, at sizes with vector
tails and thread splits; any draw (hypothesis); NaN and Inf as IEEE arithmetic says."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import simdnn
from helpers import as64, assert_same_classes, sprinkle
from simdnn import ops, reference
from strategies import any_shapes, common, normal, operand

SIZES = [1, 7, 16, 31, 97, 1000, 65_537, 300_001]  # tails, and sizes split between threads


@pytest.mark.parametrize("n", SIZES)
def test_relu_and_backward_match_twins(isa, dtype, rng, n):
    x = rng.standard_normal(n).astype(dtype)
    x[::5] = 0.0
    dy = rng.standard_normal(n).astype(dtype)
    np.testing.assert_array_equal(ops.relu(x), reference.relu(x))
    np.testing.assert_array_equal(ops.relu_backward(dy, x), reference.relu_backward(dy, x))
    y = ops.relu(x.reshape(-1, 1)[:, :])
    assert y.shape == (n, 1)
    assert y.dtype == dtype


def test_relu_non_finite_values(isa, dtype):
    x = np.array([np.nan, -np.inf, np.inf, -1.0, 0.0, 2.0], dtype)
    np.testing.assert_array_equal(ops.relu(x), [np.nan, 0, np.inf, 0, 0, 2])
    dy = np.array([1.0, 2.0, np.nan, np.nan, np.inf, 3.0], dtype)
    # IEEE multiply: NaN/Inf in dy propagate (NaN * 0 is NaN, Inf * 0 is NaN); NaN x is inactive.
    got = ops.relu_backward(dy, x)
    np.testing.assert_array_equal(got, [0, 0, np.nan, np.nan, np.nan, 3])
    np.testing.assert_array_equal(got, reference.relu_backward(dy, x))


def test_relu_strided_input(isa, rng):
    x = rng.standard_normal((40, 30)).astype(np.float32)[::2, ::-3]
    np.testing.assert_array_equal(ops.relu(x), np.maximum(x, 0))


# ------------------------------------------------------------------------------------------------
# Properties (hypothesis, marker property): any draw of shapes, layouts and arguments
# against the float64 twin.


@pytest.mark.property
@given(st.data())
def test_relu_and_backward_match_twin_exactly(data: st.DataObject) -> None:
    draw = data.draw
    isa, dtype, rng = common(draw)
    shape = draw(any_shapes())
    values = normal(rng, shape, dtype)
    if values.size and draw(st.booleans()):  # exact zeros: relu'(0) is 0, as in PyTorch
        values.flat[rng.integers(0, values.size, size=max(1, values.size // 4))] = 0
    x = operand(draw, values)
    dy = operand(draw, normal(rng, shape, dtype))
    with simdnn.use_isa(isa):
        y = ops.relu(x)
        dx = ops.relu_backward(dy, x)
    # Selections and one multiply by 0 or 1: exact.
    for got, want in ((y, reference.relu(np.array(x))), (dx, reference.relu_backward(dy, x))):
        assert got.dtype == np.dtype(dtype)
        assert got.shape == shape
        np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------------------------------------
# Non-finite values (marker nonfinite): NaN, +Inf, -Inf and zeros sprinkled into every
# input; the class of each element must be the twin's.


@pytest.mark.nonfinite
@pytest.mark.usefixtures("quiet_numpy")
@pytest.mark.parametrize("size", [1, 7, 16, 33, 1000])
def test_relu_non_finite(isa, dtype, rng, size):
    x, dy = sprinkle(rng, (size,), dtype, 0.1), sprinkle(rng, (size,), dtype, 0.1)
    x64, dy64 = as64(x, dy)
    want = reference.relu(x64)
    got = ops.relu(x)
    assert_same_classes(got, want, "relu") if np.isnan(want).any() else None
    np.testing.assert_array_equal(np.isnan(got), np.isnan(x))  # NaN stays NaN, never 0
    got = ops.relu_backward(dy, x)
    want = reference.relu_backward(dy64, x64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
