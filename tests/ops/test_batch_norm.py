"""batch_norm and batch_norm_backward against their NumPy twins, finite differences and direct
formulas, on every ISA and dtype."""

from __future__ import annotations

import numpy as np
import pytest

import simdnn
from simdnn import ops, reference

# C = 1, primes, S below, at and above the vector widths (the column path takes S < 64, the row
# path S >= 64, with scalar tails when S is not a multiple of the vector width).
SHAPES = [
    (1, 1),
    (3, 5),
    (7, 13, 11),
    (2, 17, 5, 3),
    (4, 3, 40),
    (5, 2, 33),
    (3, 2, 67),
    (2, 3, 9, 11),
    (16, 64, 8, 8),
    (3, 1, 7, 7),
]


# weight/bias given, running statistics given
VARIANTS = {"affine+running": (True, True), "plain": (False, False), "affine": (True, False)}


def tol(dtype: type) -> float:
    return 2e-5 if dtype == np.float32 else 1e-12


def make(rng, shape, dtype, affine, running, loc=1.5, scale=2.0):
    c = shape[1]
    x = (rng.standard_normal(shape) * scale + loc).astype(dtype)
    w = rng.uniform(0.5, 1.5, c).astype(dtype) if affine else None
    b = rng.standard_normal(c).astype(dtype) if affine else None
    rm = rng.standard_normal(c).astype(dtype) if running else None
    rv = rng.uniform(0.5, 2.0, c).astype(dtype) if running else None
    return x, w, b, rm, rv


def copy(a):
    return None if a is None else a.copy()


def assert_close(got, want, t, what):
    assert got.dtype == want.dtype, what
    assert got.shape == want.shape, what
    assert got.flags.c_contiguous, what
    np.testing.assert_allclose(got, want, rtol=t, atol=t, err_msg=what)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_twin(isa, dtype, rng, shape, training, variant):
    affine, running = VARIANTS[variant]
    if not training:
        running = True  # eval needs the running statistics
    m = np.prod(shape) // shape[1]
    if training and m == 1:
        return  # an error, tested below
    x, w, b, rm, rv = make(rng, shape, dtype, affine, running)
    rm2, rv2 = copy(rm), copy(rv)
    t = tol(dtype)
    got = ops.batch_norm(x, w, b, rm, rv, training, momentum=0.2, eps=1e-3)
    want = reference.batch_norm(x, w, b, rm2, rv2, training, momentum=0.2, eps=1e-3)
    for g, e, what in zip(got, want, ["y", "save_mean", "save_invstd"]):
        assert_close(g, e, t, what)
    if running:
        assert_close(rm, rm2, t, "running_mean")
        assert_close(rv, rv2, t, "running_var")
    dy = rng.standard_normal(shape).astype(dtype)
    _, save_mean, save_invstd = got
    bgot = ops.batch_norm_backward(dy, x, w, save_mean, save_invstd, training)
    bwant = reference.batch_norm_backward(dy, x, w, save_mean, save_invstd, training)
    # dweight sums M products of O(1) values: its error grows with sqrt(M) in float32.
    for g, e, what, k in zip(bgot, bwant, ["dx", "dweight", "dbias"], [1, np.sqrt(m), np.sqrt(m)]):
        assert_close(g, e, t * k, what)
    dx0, dw0, db0 = ops.batch_norm_backward(
        dy, x, w, save_mean, save_invstd, training, need_dx=False
    )
    assert dx0 is None
    np.testing.assert_array_equal(dw0, bgot[1])
    np.testing.assert_array_equal(db0, bgot[2])


def test_running_statistics_update(isa, dtype, rng):
    x = rng.standard_normal((6, 3, 4, 5)).astype(dtype) * 3 + 2
    rm = np.array([0.5, -1.0, 2.0], dtype)
    rv = np.array([1.0, 2.0, 0.5], dtype)
    rm0, rv0 = rm.copy().astype(np.float64), rv.copy().astype(np.float64)
    _, mean, invstd = ops.batch_norm(x, None, None, rm, rv, True, momentum=0.3, eps=1e-5)
    x64 = x.astype(np.float64)
    bmean = x64.mean(axis=(0, 2, 3))
    bvar = x64.var(axis=(0, 2, 3))
    uvar = x64.var(axis=(0, 2, 3), ddof=1)  # M / (M - 1) with M = 120
    t = tol(dtype)
    np.testing.assert_allclose(rm, 0.7 * rm0 + 0.3 * bmean, rtol=t, atol=t)
    np.testing.assert_allclose(rv, 0.7 * rv0 + 0.3 * uvar, rtol=t, atol=t)
    np.testing.assert_allclose(mean, bmean, rtol=t, atol=t)
    np.testing.assert_allclose(invstd, 1 / np.sqrt(bvar + 1e-5), rtol=t, atol=t)
    # momentum 0 leaves them, momentum 1 replaces them.
    before = rm.copy(), rv.copy()
    ops.batch_norm(x, None, None, rm, rv, True, momentum=0.0)
    np.testing.assert_array_equal(rm, before[0])
    np.testing.assert_array_equal(rv, before[1])
    ops.batch_norm(x, None, None, rm, rv, True, momentum=1.0)
    np.testing.assert_allclose(rm, bmean, rtol=t, atol=t)
    np.testing.assert_allclose(rv, uvar, rtol=t, atol=t)


def test_eval_uses_running_statistics(isa, dtype, rng):
    x, w, b, rm, rv = make(rng, (4, 3, 6), dtype, True, True)
    rm0, rv0 = rm.copy(), rv.copy()
    rm.flags.writeable = rv.flags.writeable = False  # eval only reads them
    y, mean, invstd = ops.batch_norm(x, w, b, rm, rv, False, eps=1e-5)
    np.testing.assert_array_equal(rm, rm0)  # eval never writes them
    np.testing.assert_array_equal(rv, rv0)
    np.testing.assert_array_equal(mean, rm0)
    inv = 1 / np.sqrt(rv0.astype(np.float64) + 1e-5)
    want = (x - rm0[:, None]) * (inv * w)[:, None] + b[:, None]
    t = tol(dtype)
    np.testing.assert_allclose(invstd, inv, rtol=t, atol=t)
    np.testing.assert_allclose(y, want, rtol=t, atol=t)
    dy = rng.standard_normal(x.shape).astype(dtype)
    dx, _, db = ops.batch_norm_backward(dy, x, w, mean, invstd, False)
    np.testing.assert_allclose(db, dy.astype(np.float64).sum(axis=(0, 2)), rtol=t * 10, atol=t * 10)
    np.testing.assert_allclose(dx, dy * (w * invstd)[:, None], rtol=t, atol=t)


@pytest.mark.parametrize("shape", [(8, 3, 50), (200, 3), (4, 2, 5, 7), (4, 2, 70)], ids=str)
def test_large_mean_does_not_cancel(isa, dtype, rng, shape):
    """Mean 1e4 and standard deviation 1: E[x^2] - E[x]^2 in float32 would lose every digit of
    the variance (x^2 ~ 1e8 has an ulp of 8); the two-pass variance keeps them."""
    x = (rng.standard_normal(shape) + 1e4).astype(dtype)
    x64 = x.astype(np.float64)  # the exact values that the kernel sees
    axes = (0, *range(2, x.ndim))
    bshape = (1, shape[1]) + (1,) * (x.ndim - 2)
    mean = x64.mean(axis=axes)
    var = x64.var(axis=axes)
    y, save_mean, save_invstd = ops.batch_norm(x, None, None, None, None, True, eps=1e-5)
    t = 1e-5 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(save_invstd, 1 / np.sqrt(var + 1e-5), rtol=t)
    want = (x64 - mean.reshape(bshape)) / np.sqrt(var + 1e-5).reshape(bshape)
    np.testing.assert_allclose(y, want, rtol=0, atol=10 * t)
    assert abs(float(np.std(y)) - 1.0) < 1e-3
    # The gradient of a mean-1e4 input: dbias and dweight do not depend on the mean.
    dy = rng.standard_normal(shape).astype(dtype)
    _, dw, _ = ops.batch_norm_backward(dy, x, None, save_mean, save_invstd, True)
    xhat = (x64 - save_mean.astype(np.float64).reshape(bshape)) * save_invstd.reshape(bshape)
    np.testing.assert_allclose(dw, np.sum(dy * xhat, axis=axes), rtol=t * 100, atol=t * 100)


def direct(x, w, b, eps, dy):
    """Batch norm of an (N, C) float64 input and its gradients from the textbook formulas."""
    mu = x.mean(axis=0)
    var = ((x - mu) ** 2).mean(axis=0)
    xhat = (x - mu) / np.sqrt(var + eps)
    y = xhat * w + b
    n = x.shape[0]
    dxhat = dy * w
    dx = (n * dxhat - dxhat.sum(0) - xhat * (dxhat * xhat).sum(0)) / (n * np.sqrt(var + eps))
    return y, dx, (dy * xhat).sum(0), dy.sum(0)


@pytest.mark.parametrize("shape", [(9, 4), (40, 3)])
def test_direct_formula(isa, rng, shape):
    x = rng.standard_normal(shape) * 3 - 1
    w, b = rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
    dy = rng.standard_normal(shape)
    y, mean, invstd = ops.batch_norm(x, w, b, None, None, True, eps=1e-4)
    dx, dw, db = ops.batch_norm_backward(dy, x, w, mean, invstd, True)
    for got, want in zip((y, dx, dw, db), direct(x, w, b, 1e-4, dy)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 4), (2, 2, 17), (2, 1, 65)], ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("impl", ["native", "twin"])
def test_backward_finite_differences(isa, rng, shape, training, impl):
    """loss = sum(y * g); central differences in float64 on x, weight and bias."""
    mod = ops if impl == "native" else reference
    c = shape[1]
    x = rng.standard_normal(shape)
    w, b = rng.uniform(0.5, 1.5, c), rng.standard_normal(c)
    rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2.0, c)
    g = rng.standard_normal(shape)

    def loss(x_, w_, b_):
        y = mod.batch_norm(x_, w_, b_, rm.copy(), rv.copy(), training, eps=1e-3)[0]
        return float(np.sum(y * g))

    _, mean, invstd = mod.batch_norm(x, w, b, rm.copy(), rv.copy(), training, eps=1e-3)
    dx, dw, db = mod.batch_norm_backward(g, x, w, mean, invstd, training)
    h = 1e-6

    def numeric(arr):
        out = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            old = arr[i]
            arr[i] = old + h
            up = loss(x, w, b)
            arr[i] = old - h
            down = loss(x, w, b)
            arr[i] = old
            out[i] = (up - down) / (2 * h)
        return out

    for got, arr in ((dx, x), (dw, w), (db, b)):
        np.testing.assert_allclose(got, numeric(arr), rtol=1e-6, atol=1e-7)


def test_weight_none_means_one(isa, dtype, rng):
    x, *_ = make(rng, (4, 3, 20), dtype, True, False)
    ones, zeros = np.ones(3, dtype), np.zeros(3, dtype)
    y1, m1, i1 = ops.batch_norm(x, None, None, None, None, True)
    y2, m2, i2 = ops.batch_norm(x, ones, zeros, None, None, True)
    for a, b_ in ((y1, y2), (m1, m2), (i1, i2)):
        np.testing.assert_array_equal(a, b_)
    dy = rng.standard_normal(x.shape).astype(dtype)
    for a, b_ in zip(
        ops.batch_norm_backward(dy, x, None, m1, i1, True),
        ops.batch_norm_backward(dy, x, ones, m1, i1, True),
    ):
        np.testing.assert_array_equal(a, b_)


def test_strided_inputs_and_running_views(isa, dtype, rng):
    base = rng.standard_normal((6, 20, 5, 9)).astype(dtype)
    x = base[:, ::2, :, ::-2]  # (6, 10, 5, 5), no axis contiguous
    w = rng.standard_normal(20).astype(dtype)[::2]
    b = rng.standard_normal(20).astype(dtype)[::2]
    stats = np.ones((2, 20), dtype)
    rm, rv = stats[0, ::2], stats[1, 1::2]  # strided views, updated through the view
    rm2, rv2 = rm.copy(), rv.copy()
    got = ops.batch_norm(x, w, b, rm, rv, True)
    want = reference.batch_norm(np.ascontiguousarray(x), w.copy(), b.copy(), rm2, rv2, True)
    t = tol(dtype)
    for g, e in zip(got, want):
        assert g.flags.c_contiguous
        np.testing.assert_allclose(g, e, rtol=t, atol=t)
    np.testing.assert_allclose(stats[0, ::2], rm2, rtol=t, atol=t)
    np.testing.assert_allclose(stats[1, 1::2], rv2, rtol=t, atol=t)
    np.testing.assert_array_equal(stats[0, 1::2], 1)  # the other elements untouched
    dy = rng.standard_normal((6, 10, 5, 5)).astype(dtype)[:, :, ::-1]
    bg = ops.batch_norm_backward(dy, x, w, got[1], got[2], True)
    bw = reference.batch_norm_backward(dy, x, w, got[1], got[2], True)
    for g, e in zip(bg, bw):
        assert g.flags.c_contiguous
        np.testing.assert_allclose(g, e, rtol=t * 10, atol=t * 10)


@pytest.mark.parametrize(
    "shape", [(0, 3), (0, 2, 16), (0, 2, 64), (4, 2, 0), (3, 0, 5), (0, 0)], ids=str
)
def test_empty(isa, dtype, shape):
    c = shape[1]
    x = np.zeros(shape, dtype)
    rm, rv = np.full(c, 0.5, dtype), np.full(c, 2.0, dtype)
    y, mean, invstd = ops.batch_norm(x, None, None, rm, rv, True, eps=1e-2)
    assert y.shape == shape
    assert mean.shape == invstd.shape == (c,)
    np.testing.assert_array_equal(mean, 0)
    np.testing.assert_allclose(invstd, 10.0, rtol=1e-6)
    np.testing.assert_array_equal(rm, 0.5)  # left alone, as in PyTorch
    np.testing.assert_array_equal(rv, 2.0)
    want = reference.batch_norm(x, None, None, rm.copy(), rv.copy(), True, eps=1e-2)
    np.testing.assert_allclose(invstd, want[2], rtol=1e-6)
    dx, dw, db = ops.batch_norm_backward(x, x, None, mean, invstd, True)
    assert dx.shape == shape
    np.testing.assert_array_equal(dw, 0)
    np.testing.assert_array_equal(db, 0)


@pytest.mark.parametrize("shape", [(4096, 32), (8, 64, 12, 12)], ids=str)
def test_threads(isa, threads, rng, shape):
    """The row path (S >= 64) splits the channels between threads, so every channel is summed in
    the same order whatever the thread count; the column path splits the rows and adds the
    threads' partial sums: the same bits for a given count, within rounding across counts."""
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    out = []
    for nt in (1, 2, 3):
        simdnn.set_num_threads(nt)
        y, m, i = ops.batch_norm(x, None, None, None, None, True)
        out.append((y, m, i, *ops.batch_norm_backward(dy, x, None, m, i, True)))
    for other in out[1:]:
        for a, b in zip(out[0], other):
            if shape[2:]:
                np.testing.assert_array_equal(a, b)
            else:
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    simdnn.set_num_threads(2)
    again = ops.batch_norm(x, None, None, None, None, True)
    for a, b in zip(again, ops.batch_norm(x, None, None, None, None, True)):
        np.testing.assert_array_equal(a, b)
    want = reference.batch_norm(x, None, None, None, None, True)
    np.testing.assert_allclose(out[0][0], want[0], rtol=2e-5, atol=2e-5)


def test_errors():
    x = np.zeros((4, 3, 5), np.float32)
    c3 = np.ones(3, np.float32)
    bn, bwd = ops.batch_norm, ops.batch_norm_backward
    with pytest.raises(TypeError, match=r"'x'.*int64"):
        bn(np.zeros((4, 3), np.int64), None, None, None, None, True)
    with pytest.raises(TypeError, match="'weight' is float64"):
        bn(x, np.ones(3), None, None, None, True)
    with pytest.raises(TypeError, match="'running_mean' has dtype float64"):
        bn(x, None, None, np.zeros(3), np.ones(3), True)
    with pytest.raises(TypeError, match="'running_var'"):
        bn(x, None, None, c3.copy(), [1.0, 1.0, 1.0], True)
    with pytest.raises(ValueError, match=r"'bias' has shape \(4,\); expected \(3,\)"):
        bn(x, c3, np.ones(4, np.float32), None, None, True)
    with pytest.raises(ValueError, match=r"'running_var' has shape \(3, 1\); expected \(3,\)"):
        bn(x, None, None, c3.copy(), np.ones((3, 1), np.float32), True)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        bn(np.zeros(5, np.float32), None, None, None, None, True)
    with pytest.raises(ValueError, match="running_mean' and 'running_var'"):
        bn(x, None, None, None, None, False)
    with pytest.raises(ValueError, match="running_mean' and 'running_var'"):
        bn(x, None, None, c3, None, False)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(np.zeros((1, 3), np.float32), None, None, None, None, True)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(np.zeros((1, 3, 1, 1), np.float32), None, None, None, None, True)
    bn(np.zeros((1, 3), np.float32), None, None, c3, c3, False)  # M == 1 is fine in eval
    readonly = c3.copy()
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="'running_mean' must be writeable"):
        bn(x, None, None, readonly, c3.copy(), True)
    for eps in (0.0, -1e-5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps must be a finite number > 0"):
            bn(x, None, None, None, None, True, eps=eps)
    for momentum in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
            bn(x, None, None, None, None, True, momentum=momentum)
    with pytest.raises(TypeError, match="eps must be a real number"):
        bn(x, None, None, None, None, True, eps="1e-5")
    y, m, i = bn(x, None, None, None, None, True)
    with pytest.raises(ValueError, match=r"'dy' has shape \(4, 3, 6\); expected \(4, 3, 5\)"):
        bwd(np.zeros((4, 3, 6), np.float32), x, None, m, i, True)
    with pytest.raises(TypeError, match="'dy' is float64"):
        bwd(np.zeros((4, 3, 5)), x, None, m, i, True)
    with pytest.raises(ValueError, match=r"'save_invstd' has shape \(2,\); expected \(3,\)"):
        bwd(y, x, None, m, i[:2], True)
    with pytest.raises(TypeError, match="'save_mean' is float64"):
        bwd(y, x, None, m.astype(np.float64), i, True)
    with pytest.raises(ValueError, match="'save_mean' and 'save_invstd' are required"):
        bwd(y, x, None, None, i, True)
    # The native binding checks the hyper-parameters too.
    with pytest.raises(ValueError, match="eps"):
        simdnn._core.batch_norm(x, None, None, None, None, True, 0.1, 0.0)
    with pytest.raises(ValueError, match="momentum"):
        simdnn._core.batch_norm(x, None, None, None, None, True, 2.0, 1e-5)


# Split when the threads that the size earns (one per 32768 values) are at least twice C.
@pytest.mark.parametrize(
    ("shape", "nt"), [((150_001, 1), 2), ((3, 1, 30_000), 2), ((2, 2, 65_600), 4), ((5, 2, 7), 4)]
)
def test_few_channels_split_between_threads(isa, dtype, threads, rng, shape, nt):
    """With fewer channels than threads each channel's values are cut into ranges (C = 1 is one
    contiguous run); the partial sums are added in a fixed order: the same bits on every call."""
    simdnn.set_num_threads(nt)
    x, w, b, rm, rv = make(rng, shape, dtype, True, True, loc=100.0)
    rm2, rv2 = rm.copy(), rv.copy()
    got = ops.batch_norm(x, w, b, rm, rv, True)
    want = reference.batch_norm(x, w, b, rm2, rv2, True)
    t = 1e-4 if dtype == np.float32 else 1e-11
    for g, e in zip((*got, rm, rv), (*want, rm2, rv2)):
        np.testing.assert_allclose(g, e, rtol=t, atol=t)
    dy = rng.standard_normal(shape).astype(dtype)
    bgot = ops.batch_norm_backward(dy, x, w, got[1], got[2], True)
    bwant = reference.batch_norm_backward(dy, x, w, got[1], got[2], True)
    m = x.size // shape[1]
    for g, e, k in zip(bgot, bwant, (1, np.sqrt(m), np.sqrt(m))):
        np.testing.assert_allclose(g, e, rtol=t * k, atol=t * k)
    again = ops.batch_norm(x, w, b, rm.copy(), rv.copy(), True)
    for g, e in zip(got, again):
        np.testing.assert_array_equal(g, e)
    y_eval = ops.batch_norm(x, w, b, rm, rv, False)[0]
    np.testing.assert_allclose(
        y_eval, reference.batch_norm(x, w, b, rm, rv, False)[0], rtol=t, atol=t
    )
