"""bias_backward: every ISA and dtype against the NumPy twin, at sizes with vector tails and
column splits between threads; the ReLU's gate as relu_backward's, NaN and Inf as IEEE says;
db written, accumulated, strided or aliasing dy."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import as64, assert_same_classes, sprinkle
from simdnn import ops, reference

# (M, N): ones, primes, tails of every vector width, the MLP's layers, and column counts that the
# threads split (M * N past two grains of 64K elements).
SHAPES = [(1, 1), (1, 17), (7, 1), (3, 31), (64, 10), (64, 256), (13, 97), (5, 70_001), (300, 1000)]


def _sums_bound(dx: np.ndarray) -> np.ndarray:
    """Rows summed one after another in the dtype: at most M - 1 roundings per column."""
    eps = np.finfo(dx.dtype).eps
    return (dx.shape[0] + 1) * eps * np.abs(dx.astype(np.float64)).sum(axis=0) + 1e-300


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("gated", [False, True])
def test_bias_backward_matches_twin(isa, dtype, rng, shape, gated):
    dy = rng.standard_normal(shape).astype(dtype)
    y = np.maximum(rng.standard_normal(shape), 0).astype(dtype) if gated else None
    dx, db = ops.bias_backward(dy, y)
    want_dx = dy if y is None else reference.relu_backward(dy, y)
    np.testing.assert_array_equal(dx, want_dx)
    if y is None:
        assert dx is dy
    assert db.shape == (shape[1],)
    assert db.dtype == dtype
    want = want_dx.astype(np.float64).sum(axis=0)
    assert np.all(np.abs(db - want) <= _sums_bound(want_dx))
    twin_dx, twin_db = reference.bias_backward(dy, y)
    np.testing.assert_array_equal(twin_dx, want_dx)
    assert np.all(np.abs(twin_db - want) <= _sums_bound(want_dx))


@pytest.mark.parametrize("shape", [(1, 5), (64, 256), (5, 70_001)], ids=str)
def test_bias_backward_into_db(isa, dtype, rng, shape):
    """db given: overwritten (its NaN never read), or added to with accumulate; strided; or a
    view of dy's own buffer (summed aside, then copied, as NumPy's out=)."""
    n = shape[1]
    dy = rng.standard_normal(shape).astype(dtype)
    y = rng.standard_normal(shape).astype(dtype)
    want = (dy * (y > 0)).astype(np.float64).sum(axis=0)
    tol = _sums_bound(dy) + np.finfo(dtype).eps * np.abs(want)
    db = np.full(n, np.nan, dtype)
    _, out = ops.bias_backward(dy, y, db)
    assert out is db
    assert np.all(np.abs(db - want) <= tol)
    start = rng.standard_normal(n).astype(dtype)
    db = start.copy()
    ops.bias_backward(dy, y, db, accumulate=True)
    assert np.all(np.abs(db - (want + start)) <= tol + np.finfo(dtype).eps * np.abs(start))
    buf = np.full(2 * n, 7.0, dtype)
    ops.bias_backward(dy, y, buf[::2])
    assert np.all(np.abs(buf[::2] - want) <= tol)
    np.testing.assert_array_equal(buf[1::2], 7.0)
    # db over dy's first row: the sums are those of dy as it was.
    dy2 = dy.copy()
    _, out = ops.bias_backward(dy2, None, dy2[0], accumulate=True)
    assert out.base is dy2 or np.shares_memory(out, dy2)
    want2 = dy.astype(np.float64).sum(axis=0) + dy[0]
    tol2 = _sums_bound(dy) + 2 * np.finfo(dtype).eps * np.abs(want2)
    assert np.all(np.abs(dy2[0] - want2) <= tol2)
    np.testing.assert_array_equal(dy2[1:], dy[1:])


@pytest.mark.nonfinite
@pytest.mark.usefixtures("quiet_numpy")
@pytest.mark.parametrize("shape", [(1, 1), (7, 33), (64, 256)], ids=str)
def test_bias_backward_non_finite(isa, dtype, rng, shape):
    """The gate multiplies (NaN and Inf in dy propagate; a NaN y is inactive), and the sums carry
    NaN and Inf as the twin's do."""
    dy = sprinkle(rng, shape, dtype, 0.05)
    y = sprinkle(rng, shape, dtype, 0.05)
    dx, db = ops.bias_backward(dy, y)
    dy64, y64 = as64(dy, y)
    want_dx, want_db = reference.bias_backward(dy64, y64)
    assert_same_classes(dx, want_dx, "dx")
    assert_same_classes(db, want_db, "db")


def test_bias_backward_bad_arguments():
    dy = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"bias_backward: argument 'dy' must be 2-D"):
        ops.bias_backward(np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"'y' has shape \(4, 3\)"):
        ops.bias_backward(dy, np.ones((4, 3), np.float32))
    with pytest.raises(TypeError, match="'y'"):
        ops.bias_backward(dy, np.ones((3, 4)))
    with pytest.raises(TypeError, match="bias_backward: argument 'dy' has dtype int32"):
        ops.bias_backward(np.ones((3, 4), np.int32))


def test_bias_backward_empty_rows_give_zero_sums(isa, dtype):
    dx, db = ops.bias_backward(np.ones((0, 5), dtype), np.ones((0, 5), dtype))
    assert dx.shape == (0, 5)
    np.testing.assert_array_equal(db, np.zeros(5))
    np.testing.assert_array_equal(reference.bias_backward(np.ones((0, 5), dtype))[1], np.zeros(5))
