"""simdnn.ops convolutions against their NumPy twins, finite differences and equivariance.

Shape legend: x (N, C, H, W), w (K, C/groups, R, S), b (K,), y (N, K, P, Q).
"""

from __future__ import annotations

import numpy as np
import pytest

import simdnn
from simdnn import ops, reference

# (N, C, H, W, K, R, S, stride, padding, dilation, groups): N = 1, C = 1, odd and non-square
# planes, kernels 1/3/5/7, strides 1-3, padding 0-3, dilation 1-2, groups 1, 2 and depthwise.
CASES = [
    (1, 1, 5, 5, 1, 1, 1, 1, 0, 1, 1),
    (2, 3, 7, 9, 4, 3, 3, 1, 1, 1, 1),
    (1, 1, 28, 28, 20, 5, 5, 1, 0, 1, 1),
    (3, 20, 12, 12, 50, 5, 5, 1, 0, 1, 1),
    (2, 16, 11, 10, 8, 3, 3, 2, 1, 1, 1),
    (2, 16, 9, 9, 32, 1, 1, 1, 0, 1, 1),
    (1, 13, 15, 11, 17, 7, 7, 1, 3, 1, 1),
    (2, 5, 17, 13, 7, 7, 5, 3, 2, 1, 1),
    (2, 12, 8, 8, 12, 3, 3, 1, 2, 2, 1),
    (1, 8, 10, 13, 8, 3, 3, 1, 1, 1, 8),
    (2, 8, 10, 13, 8, 3, 3, 2, 1, 1, 8),
    (2, 6, 11, 9, 6, 5, 5, 1, 2, 2, 6),
    (1, 4, 9, 9, 6, 3, 2, (2, 1), (1, 0), (2, 1), 2),
    (1, 9, 5, 6, 9, 1, 3, 1, (0, 1), 1, 3),
    (3, 10, 6, 5, 12, 1, 1, 1, 1, 1, 2),
    (1, 24, 14, 14, 24, 3, 3, 1, 1, 1, 1),
    (2, 32, 16, 16, 16, 3, 3, 2, 1, 1, 1),
    (1, 3, 4, 4, 2, 4, 4, 1, 0, 1, 1),
    (2, 2, 7, 7, 3, 3, 3, 3, 3, 1, 1),
]


def random_cases(count: int, seed: int) -> list[tuple]:
    r = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        groups = int(r.choice([1, 1, 2, 3]))
        c = groups * int(r.integers(1, 6))
        k = groups * int(r.integers(1, 6))
        kr, ks = int(r.choice([1, 2, 3, 5])), int(r.choice([1, 3, 4]))
        sh, sw = (int(v) for v in r.integers(1, 4, size=2))
        dh, dw = (int(v) for v in r.integers(1, 3, size=2))
        ph, pw = (int(v) for v in r.integers(0, 4, size=2))
        h, w = (int(v) for v in r.integers(1, 20, size=2))
        if dh * (kr - 1) + 1 > h + 2 * ph or dw * (ks - 1) + 1 > w + 2 * pw:
            continue
        n = int(r.integers(1, 4))
        out.append((n, c, h, w, k, kr, ks, (sh, sw), (ph, pw), (dh, dw), groups))
    return out


ALL_CASES = CASES + random_cases(16, seed=3)


def case_id(case: tuple) -> str:
    return "-".join(str(v).replace(" ", "") for v in case)


def setup(case: tuple, dtype: type, rng: np.random.Generator):
    n, c, h, w, k, r, s, stride, padding, dilation, groups = case
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((k, c // groups, r, s)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype)
    kw = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    return x, wt, b, kw


def assert_close(got: np.ndarray, want: np.ndarray, dtype: type, scale: float = 1.0) -> None:
    assert got.dtype == want.dtype == dtype
    assert got.shape == want.shape
    tol = (2e-5 if dtype == np.float32 else 1e-12) * scale
    np.testing.assert_allclose(
        got, want, rtol=tol, atol=tol * max(1.0, float(np.abs(want).max(initial=0)))
    )


@pytest.mark.parametrize("case", ALL_CASES, ids=case_id)
def test_all_passes_match_reference(isa, dtype, rng, case):
    x, w, b, kw = setup(case, dtype, rng)
    y = ops.conv2d(x, w, b, **kw)
    k_r_s = w.shape[1] * w.shape[2] * w.shape[3]
    assert_close(y, reference.conv2d(x, w, b, **kw), dtype, scale=k_r_s**0.5)
    assert_close(ops.conv2d(x, w, **kw), reference.conv2d(x, w, **kw), dtype, scale=k_r_s**0.5)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = ops.conv2d_backward_data(dy, w, x.shape, **kw)
    assert_close(dx, reference.conv2d_backward_data(dy, w, x.shape, **kw), dtype, scale=10)
    dw, db = ops.conv2d_backward_weights(x, dy, w.shape, **kw)
    rdw, rdb = reference.conv2d_backward_weights(x, dy, w.shape, **kw)
    pixels = y.shape[0] * y.shape[2] * y.shape[3]
    assert_close(dw, rdw, dtype, scale=pixels**0.5)
    assert_close(db, rdb, dtype, scale=pixels**0.5)


@pytest.mark.parametrize("case", CASES[::2], ids=case_id)
def test_gradients_match_finite_differences(case):
    """Directional derivatives of L = sum(conv2d(x, w, b) * g) in float64 through the kernels."""
    rng = np.random.default_rng(11)
    x, w, b, kw = setup(case, np.float64, rng)
    g = rng.standard_normal(ops.conv2d(x, w, b, **kw).shape)

    def loss(x_: np.ndarray, w_: np.ndarray, b_: np.ndarray) -> float:
        return float(np.sum(ops.conv2d(x_, w_, b_, **kw) * g))

    dx = ops.conv2d_backward_data(g, w, x.shape, **kw)
    dw, db = ops.conv2d_backward_weights(x, g, w.shape, **kw)
    eps = 1e-6
    for grad, which in ((dx, 0), (dw, 1), (db, 2)):
        d = rng.standard_normal(grad.shape)
        args_p = [x, w, b]
        args_m = [x, w, b]
        args_p[which] = args_p[which] + eps * d
        args_m[which] = args_m[which] - eps * d
        numeric = (loss(*args_p) - loss(*args_m)) / (2 * eps)
        analytic = float(np.sum(grad * d))
        assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(analytic)), (which, numeric, analytic)


@pytest.mark.parametrize(("stride", "shift"), [(1, 1), (1, 3), (2, 1), (3, 2)])
def test_translation_equivariance(isa, rng, stride, shift):
    """Shifting the input by a multiple of the stride shifts the feature maps by the multiple."""
    x = rng.standard_normal((2, 3, 17, 23)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    y = ops.conv2d(x, w, stride=stride)
    moved = np.zeros_like(x)
    moved[:, :, stride * shift :, stride * shift :] = x[
        :, :, : 17 - stride * shift, : 23 - stride * shift
    ]
    y_moved = ops.conv2d(moved, w, stride=stride)
    p, q = y.shape[2:]
    np.testing.assert_allclose(
        y_moved[:, :, shift:, shift:], y[:, :, : p - shift, : q - shift], rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("layout", ["fortran", "sliced", "negative"])
def test_non_contiguous_inputs(isa, rng, layout):
    base_x = rng.standard_normal((4, 6, 20, 18)).astype(np.float32)
    base_w = rng.standard_normal((8, 6, 3, 3)).astype(np.float32)
    if layout == "fortran":
        x, w = np.asfortranarray(base_x), np.asfortranarray(base_w)
    elif layout == "sliced":
        x, w = base_x[::2, :, 1::2, ::2], base_w[:, :, ::-1, :]
    else:
        x, w = base_x[::-1, ::-1, ::-1, ::-1], base_w[::-1]
    kw = {"padding": 1}
    y = ops.conv2d(x, w, **kw)
    np.testing.assert_allclose(y, reference.conv2d(x, w, **kw), rtol=1e-4, atol=1e-4)
    dy = np.asfortranarray(rng.standard_normal(y.shape).astype(np.float32))
    np.testing.assert_allclose(
        ops.conv2d_backward_data(dy, w, x.shape, **kw),
        reference.conv2d_backward_data(dy, w, x.shape, **kw),
        rtol=1e-4,
        atol=1e-4,
    )
    got = ops.conv2d_backward_weights(x, dy[:, :, :, :], w.shape, **kw)
    want = reference.conv2d_backward_weights(x, dy, w.shape, **kw)
    for g_, w_ in zip(got, want):
        np.testing.assert_allclose(g_, w_, rtol=1e-4, atol=1e-3)


def test_thread_counts(isa, rng, threads):
    """Forward and backward-data are bitwise identical for any thread count; backward-weights
    sums per-thread partials, so it is identical run to run for a thread count and close across
    them."""
    x = rng.standard_normal((3, 16, 21, 19)).astype(np.float32)
    w = rng.standard_normal((24, 16, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((3, 24, 21, 19)).astype(np.float32)
    runs = {}
    for nt in (1, 2, 3):
        simdnn.set_num_threads(nt)
        runs[nt] = (
            ops.conv2d(x, w, padding=1),
            ops.conv2d_backward_data(dy, w, x.shape, padding=1),
            ops.conv2d_backward_weights(x, dy, w.shape, padding=1),
            ops.conv2d_backward_weights(x, dy, w.shape, padding=1),
        )
    for nt in (2, 3):
        np.testing.assert_array_equal(runs[nt][0], runs[1][0])
        np.testing.assert_array_equal(runs[nt][1], runs[1][1])
        np.testing.assert_allclose(runs[nt][2][0], runs[1][2][0], rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(runs[nt][2][0], runs[nt][3][0])


def test_batch_one_uses_every_thread_and_matches(isa, rng, threads):
    simdnn.set_num_threads(2)
    x = rng.standard_normal((1, 8, 64, 64)).astype(np.float32)
    dy = rng.standard_normal((1, 16, 64, 64)).astype(np.float32)
    dw, db = ops.conv2d_backward_weights(x, dy, (16, 8, 3, 3), padding=1)
    rdw, rdb = reference.conv2d_backward_weights(x, dy, (16, 8, 3, 3), padding=1)
    np.testing.assert_allclose(dw, rdw, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(db, rdb, rtol=1e-4, atol=1e-3)


def test_empty_batch_and_channels():
    x = np.zeros((0, 3, 8, 8), np.float32)
    w = np.ones((4, 3, 3, 3), np.float32)
    assert ops.conv2d(x, w).shape == (0, 4, 6, 6)
    dw, db = ops.conv2d_backward_weights(x, np.zeros((0, 4, 6, 6), np.float32), w.shape)
    np.testing.assert_array_equal(dw, np.zeros_like(w))
    np.testing.assert_array_equal(db, np.zeros(4, np.float32))
    dx = ops.conv2d_backward_data(np.zeros((0, 4, 6, 6), np.float32), w, (0, 3, 8, 8))
    assert dx.shape == (0, 3, 8, 8)


# ------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "kwargs", "exc", "words"),
    [
        ((3, 8, 8), (4, 3, 3, 3), {}, ValueError, ["'x'", "4-D", "(3, 8, 8)"]),
        ((1, 3, 8, 8), (4, 3, 3), {}, ValueError, ["'w'", "4-D"]),
        ((1, 3, 8, 8), (4, 2, 3, 3), {}, ValueError, ["w.shape[1] == C / groups == 3"]),
        ((1, 4, 8, 8), (4, 4, 3, 3), {"groups": 3}, ValueError, ["groups=3 must divide"]),
        ((1, 3, 8, 8), (4, 3, 9, 3), {}, ValueError, ["larger than the padded input"]),
        ((1, 3, 8, 8), (4, 3, 5, 5), {"dilation": 2}, ValueError, ["larger than the padded"]),
        ((1, 3, 8, 8), (4, 3, 3, 3), {"stride": 0}, ValueError, ["stride must be >= 1"]),
        ((1, 3, 8, 8), (4, 3, 3, 3), {"stride": (1, -1)}, ValueError, ["stride"]),
        ((1, 3, 8, 8), (4, 3, 3, 3), {"padding": -1}, ValueError, ["padding must be >= 0"]),
        ((1, 3, 8, 8), (4, 3, 3, 3), {"dilation": 0}, ValueError, ["dilation must be >= 1"]),
        ((1, 3, 8, 8), (4, 3, 3, 3), {"stride": 1.5}, TypeError, ["stride must be an int"]),
        ((1, 3, 8, 8), (4, 3, 3, 3), {"padding": (1, 2, 3)}, TypeError, ["padding"]),
        ((1, 3, 8, 8), (4, 3, 3, 3), {"groups": 0}, ValueError, ["groups must be >= 1"]),
        ((1, 3, 8, 8), (4, 3, 0, 3), {}, ValueError, ["at least 1x1"]),
    ],
)
def test_conv2d_bad_shapes_and_arguments(x_shape, w_shape, kwargs, exc, words):
    x = np.ones(x_shape, np.float32)
    w = np.ones(w_shape, np.float32)
    with pytest.raises(exc) as info:
        ops.conv2d(x, w, **kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_conv2d_bad_dtypes_and_bias():
    x = np.ones((1, 3, 8, 8), np.float32)
    w = np.ones((4, 3, 3, 3), np.float32)
    with pytest.raises(TypeError, match="'x' has dtype int32"):
        ops.conv2d(x.astype(np.int32), w)
    with pytest.raises(TypeError, match="'x' is float32 but 'w' is float64"):
        ops.conv2d(x, w.astype(np.float64))
    with pytest.raises(TypeError, match="'b' is float64"):
        ops.conv2d(x, w, np.ones(4))
    with pytest.raises(ValueError, match=r"'b' has shape \(3,\); expected \(4,\)"):
        ops.conv2d(x, w, np.ones(3, np.float32))


def test_backward_bad_shapes():
    w = np.ones((4, 3, 3, 3), np.float32)
    dy = np.ones((2, 4, 6, 6), np.float32)
    with pytest.raises(ValueError, match=r"'dy' has shape \(2, 4, 6, 6\); expected \(2, 4, 8, 8\)"):
        ops.conv2d_backward_data(dy, w, (2, 3, 10, 10))
    with pytest.raises(TypeError, match="x_shape must be a tuple of 4 ints"):
        ops.conv2d_backward_data(dy, w, (2, 3, 8))
    with pytest.raises(ValueError, match="x_shape has a negative size"):
        ops.conv2d_backward_data(dy, w, (2, 3, -8, 8))
    x = np.ones((2, 3, 8, 8), np.float32)
    with pytest.raises(ValueError, match=r"'dy' has shape \(2, 4, 6, 6\); expected \(2, 5, 6, 6\)"):
        ops.conv2d_backward_weights(x, dy, (5, 3, 3, 3))
    with pytest.raises(TypeError, match="w_shape must be a tuple of 4 ints"):
        ops.conv2d_backward_weights(x, dy, (4, 3, 3, 3.0))
    with pytest.raises(TypeError, match="'dy' has dtype int64"):
        ops.conv2d_backward_weights(x, dy.astype(np.int64), w.shape)
