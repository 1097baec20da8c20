"""softmax_cross_entropy: every ISA and dtype against the float64 NumPy twin, at batch and class
counts with rows split between threads; any integer label dtype; NaN and Inf rows as the NumPy
formulation gives them; the gradient against finite differences of the loss."""

from __future__ import annotations

import numpy as np
import pytest

from simdnn import ops, reference

# (N, D): ones, primes, the MLP's 64 x 10, wide rows, and batches the threads split (N * D past
# 8K logits a task).
SHAPES = [(1, 1), (1, 7), (5, 3), (64, 10), (3, 1000), (97, 131), (300, 1001)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_softmax_cross_entropy_matches_twin(isa, dtype, rng, shape):
    n, d = shape
    x = (3 * rng.standard_normal(shape)).astype(dtype)
    t = rng.integers(0, d, n)
    loss, grad = ops.softmax_cross_entropy(x, t)
    assert loss.shape == ()
    assert loss.dtype == dtype
    assert grad.shape == shape
    assert grad.dtype == dtype
    want_loss, want_grad = reference.softmax_cross_entropy(x.astype(np.float64), t)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(loss, want_loss, rtol=tol, atol=tol)
    np.testing.assert_allclose(grad, want_grad, rtol=tol, atol=tol / n)
    twin_loss, twin_grad = reference.softmax_cross_entropy(x, t)
    np.testing.assert_allclose(twin_loss, want_loss, rtol=tol, atol=tol)
    np.testing.assert_allclose(twin_grad, want_grad, rtol=tol, atol=tol / n)
    # Each row's gradient sums to zero: softmax sums to one, minus the one-hot.
    np.testing.assert_allclose(grad.sum(axis=1), 0, atol=10 * tol / n)


def test_softmax_cross_entropy_gradient_is_the_loss_derivative(isa, rng):
    x = rng.standard_normal((6, 5))
    t = np.array([0, 4, 2, 2, 1, 3])
    _, grad = ops.softmax_cross_entropy(x, t)
    eps = 1e-6
    for i, j in [(0, 0), (1, 4), (2, 1), (5, 3), (4, 4)]:
        up, down = x.copy(), x.copy()
        up[i, j] += eps
        down[i, j] -= eps
        numeric = (ops.softmax_cross_entropy(up, t)[0] - ops.softmax_cross_entropy(down, t)[0]) / (
            2 * eps
        )
        assert abs(numeric - grad[i, j]) < 1e-8


def test_softmax_cross_entropy_is_stable_for_large_logits(isa, dtype):
    """max-shifted: logits of 1e4 neither overflow nor lose the answer."""
    x = np.array([[1e4, 0.0, -1e4], [0.0, 1e4, 1e4]], dtype)
    loss, grad = ops.softmax_cross_entropy(x, np.array([0, 1]))
    np.testing.assert_allclose(loss, np.log(2) / 2, rtol=1e-6)
    np.testing.assert_allclose(grad, [[0, 0, 0], [0, -0.25, 0.25]], atol=1e-7)


@pytest.mark.parametrize("label_dtype", [np.uint8, np.int16, np.int32, np.int64, np.uint64])
def test_any_integer_labels(isa, rng, label_dtype):
    x = rng.standard_normal((7, 4)).astype(np.float32)
    t = np.array([0, 3, 1, 2, 3, 0, 1], label_dtype)
    got = ops.softmax_cross_entropy(x, t)
    want = ops.softmax_cross_entropy(x, t.astype(np.int64))
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    got = ops.softmax_cross_entropy(x, list(t))  # an array-like
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.nonfinite
@pytest.mark.usefixtures("quiet_numpy")
def test_non_finite_logits_make_their_rows_nan(isa, dtype):
    x = np.array(
        [[1.0, np.nan, 0.0], [np.inf, 0.0, 1.0], [-np.inf, 0.0, 1.0], [-np.inf] * 3, [1, 2, 3]],
        dtype,
    )
    t = np.array([0, 1, 1, 2, 2])
    loss, grad = ops.softmax_cross_entropy(x, t)
    want_loss, want_grad = reference.softmax_cross_entropy(x, t)
    assert np.isnan(loss)
    assert np.isnan(want_loss)
    np.testing.assert_array_equal(np.isnan(grad), np.isnan(want_grad))
    assert np.isnan(grad[[0, 1, 3]]).all()
    np.testing.assert_allclose(grad[[2, 4]], want_grad[[2, 4]], rtol=1e-6, atol=1e-7)
    assert grad[2, 0] == 0  # exp(-Inf) is an exact 0, not NaN


def test_empty_batch(isa, dtype):
    loss, grad = ops.softmax_cross_entropy(np.zeros((0, 4), dtype), np.zeros(0, np.int64))
    assert loss == 0
    assert grad.shape == (0, 4)
