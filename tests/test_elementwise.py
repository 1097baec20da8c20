"""ReLU and the fused optimiser updates against their NumPy twins, on every ISA and dtype."""

from __future__ import annotations

import numpy as np
import pytest

from simdnn import ops, reference

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


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("n", [1, 33, 70_001])
def test_sgd_update_matches_twin(isa, dtype, rng, momentum, nesterov, weight_decay, n):
    if nesterov and not momentum:
        return
    p = rng.standard_normal(n).astype(dtype)
    v = rng.standard_normal(n).astype(dtype) if momentum else None
    p2, v2 = p.copy(), None if v is None else v.copy()
    tol = 1e-6 if dtype == np.float32 else 1e-14
    for _ in range(3):
        g = rng.standard_normal(n).astype(dtype)
        kw = {"lr": 0.1, "momentum": momentum, "nesterov": nesterov, "weight_decay": weight_decay}
        ops.sgd_update(p, g, v, **kw)
        reference.sgd_update(p2, g, v2, **kw)
        np.testing.assert_allclose(p, p2, rtol=tol, atol=tol)
        if v is not None:
            np.testing.assert_allclose(v, v2, rtol=tol, atol=tol)


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
@pytest.mark.parametrize("n", [1, 33, 70_001])
def test_adam_update_matches_twin(isa, dtype, rng, weight_decay, n):
    p = rng.standard_normal(n).astype(dtype)
    m, v = np.zeros_like(p), np.zeros_like(p)
    p2, m2, v2 = p.copy(), m.copy(), v.copy()
    tol = 2e-6 if dtype == np.float32 else 1e-13
    for step in range(1, 4):
        g = rng.standard_normal(n).astype(dtype)
        kw = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.99, "eps": 1e-8}
        ops.adam_update(p, g, m, v, weight_decay=weight_decay, step=step, **kw)
        reference.adam_update(p2, g, m2, v2, weight_decay=weight_decay, step=step, **kw)
        np.testing.assert_allclose(p, p2, rtol=tol, atol=tol)
        np.testing.assert_allclose(m, m2, rtol=tol, atol=tol)
        np.testing.assert_allclose(v, v2, rtol=tol, atol=tol)


def test_update_bad_input():
    p = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="C-contiguous"):
        ops.sgd_update(np.zeros(16, np.float32)[::2], p, None, lr=0.1)
    ro = np.zeros(8, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        ops.sgd_update(ro, p, None, lr=0.1)
    with pytest.raises(TypeError, match="'param' is float32 but 'grad' is float64"):
        ops.sgd_update(p, np.zeros(8), None, lr=0.1)
    with pytest.raises(
        ValueError, match="'grad' has shape \\(9,\\) but 'param' has shape \\(8,\\)"
    ):
        ops.sgd_update(p, np.zeros(9, np.float32), None, lr=0.1)
    with pytest.raises(ValueError, match="needs a 'velocity'"):
        ops.sgd_update(p, p.copy(), None, lr=0.1, momentum=0.9)
    with pytest.raises(TypeError, match="'param' must be a NumPy array"):
        ops.sgd_update([0.0], p, None, lr=0.1)
    with pytest.raises(ValueError, match="step must be >= 1"):
        ops.adam_update(p, p.copy(), p.copy(), p.copy(), lr=0.1, step=0)
    with pytest.raises(TypeError, match="int64"):
        ops.relu(np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="must match"):
        ops.relu_backward(np.zeros(3, np.float32), np.zeros(4, np.float32))
