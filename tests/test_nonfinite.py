"""NaN and Inf go through every kernel as IEEE arithmetic says, never masked.

Every input of every op gets NaN, +Inf, -Inf and exact zeros sprinkled at random positions (so
that Inf * 0 and Inf - Inf happen), on every ISA, in float32 and float64, with shapes that reach
the vector bodies, the edge tiles and the padding. The result is compared with the NumPy twin
evaluated in float64 on the same values: the class of every element (NaN, +Inf, -Inf, finite) must
be the same, and the finite ones close. The class does not depend on the order of a sum (a NaN or
a +Inf/-Inf pair anywhere gives NaN, one sign of Inf gives that Inf), and the finite values are
small enough that nothing overflows, so the comparison is exact for every blocking and thread
count. A few hand-written cases pin the semantics that PyTorch users expect (max-pool returns NaN
for a window holding one, ReLU keeps NaN).

Shape legend: x (N, C, H, W), w (K, C/groups, R, S), y and dy (N, K, P, Q).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Callable

import numpy as np
import pytest

from simdnn import ops, reference

F64 = np.float64


@pytest.fixture(autouse=True)
def _quiet_numpy() -> Iterator[None]:
    """NumPy warns of the invalid operations these tests make on purpose (in the twins)."""
    with np.errstate(all="ignore"):
        yield


def sprinkle(rng: np.random.Generator, shape: tuple[int, ...], dtype: type, frac: float = 0.02):
    """Normal values with NaN, +Inf, -Inf and 0 each at about ``frac`` of the positions."""
    x = rng.standard_normal(shape)
    u = rng.random(shape)
    x[u < 4 * frac] = 0.0
    x[u < 3 * frac] = -np.inf
    x[u < 2 * frac] = np.inf
    x[u < frac] = np.nan
    if x.size >= 4:  # at least one of each, wherever the fractions round to none
        x.flat[rng.choice(x.size, 4, replace=False)] = [np.nan, np.inf, -np.inf, 0.0]
    return x.astype(dtype)


def assert_same_classes(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, (what, got.shape, want.shape)
    g, w = np.asarray(got, F64), np.asarray(want, F64)
    for name, test in (("NaN", np.isnan), ("+Inf", np.isposinf), ("-Inf", np.isneginf)):
        bad = test(g) != test(w)
        assert not bad.any(), (
            f"{what}: {int(bad.sum())} of {g.size} elements differ in being {name}; first at "
            f"{np.argwhere(bad)[0].tolist()}: got {g[bad][0]!r}, want {w[bad][0]!r}"
        )
    fin = np.isfinite(w)
    tol = 1e-4 if got.dtype == np.float32 else 1e-10
    np.testing.assert_allclose(g[fin], w[fin], rtol=tol, atol=tol * 100, err_msg=what)


def as64(*arrays: np.ndarray | None) -> list[np.ndarray | None]:
    return [None if a is None else a.astype(F64) for a in arrays]


@pytest.mark.parametrize(("m", "k", "n"), [(1, 1, 1), (7, 13, 5), (37, 61, 67), (97, 130, 33)])
@pytest.mark.parametrize(("trans_a", "trans_b"), [(False, False), (True, True)])
def test_gemm(isa, dtype, rng, m, k, n, trans_a, trans_b):
    a = sprinkle(rng, (k, m) if trans_a else (m, k), dtype, 0.3 / k)
    b = sprinkle(rng, (n, k) if trans_b else (k, n), dtype, 0.3 / k)
    c = sprinkle(rng, (m, n), dtype)
    kw = {"trans_a": trans_a, "trans_b": trans_b}
    for alpha, beta in ((1.0, 0.0), (-0.5, 1.0), (2.0, -3.0)):
        got = ops.gemm(a, b, c.copy(), alpha=alpha, beta=beta, **kw)
        a64, b64, c64 = as64(a, b, c)
        want = reference.gemm(a64, b64, c64, alpha=alpha, beta=beta, **kw)
        assert_same_classes(got, want, f"gemm alpha={alpha} beta={beta}")
    got = ops.matmul(a.T if trans_a else a, b.T if trans_b else b)
    a64, b64 = as64(a, b)
    assert_same_classes(got, np.matmul(a64.T if trans_a else a64, b64.T if trans_b else b64), "mm")


def test_gemm_beta_zero_ignores_c_but_not_a(isa, dtype):
    """beta = 0 does not read c (BLAS and PyTorch's addmm); NaN in a still reaches the result."""
    a = np.ones((5, 3), dtype)
    a[2, 1] = np.nan
    c = np.full((5, 4), np.nan, dtype)
    got = ops.gemm(a, np.ones((3, 4), dtype), c, beta=0.0)
    assert np.isnan(got[2]).all()
    assert np.isfinite(np.delete(got, 2, axis=0)).all()


CONV_CASES = [
    # n, c, h, w, k, r, s, stride, padding, dilation, groups
    (1, 1, 5, 5, 1, 3, 3, 1, 1, 1, 1),
    (2, 3, 11, 13, 5, 3, 3, 1, 1, 1, 1),
    (2, 4, 12, 9, 6, 3, 2, 2, (1, 0), 1, 2),
    (1, 8, 10, 10, 8, 3, 3, 1, 2, 2, 8),  # depthwise, dilated
    (3, 7, 9, 17, 11, 1, 1, 1, 0, 1, 1),  # 1x1: a plain GEMM
    (2, 16, 9, 8, 5, 3, 3, 1, 1, 1, 1),  # enough channels for backward-data as a convolution
    (1, 6, 7, 9, 6, 3, 3, 1, 1, 1, 6),  # depthwise, stride 1
    (1, 2, 7, 7, 3, 5, 5, 3, 2, 1, 1),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv2d_forward_and_backward(isa, dtype, rng, case):
    n, c, h, w, k, r, s, stride, padding, dilation, groups = case
    conv = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    x = sprinkle(rng, (n, c, h, w), dtype)
    wt = sprinkle(rng, (k, c // groups, r, s), dtype, 0.05)
    b = sprinkle(rng, (k,), dtype, 0.1)
    y = ops.conv2d(x, wt, b, **conv)
    x64, w64, b64 = as64(x, wt, b)
    assert_same_classes(y, reference.conv2d(x64, w64, b64, **conv), "conv2d")

    dy = sprinkle(rng, y.shape, dtype)
    (dy64,) = as64(dy)
    dx = ops.conv2d_backward_data(dy, wt, x.shape, **conv)
    assert_same_classes(
        dx, reference.conv2d_backward_data(dy64, w64, x.shape, **conv), "conv2d_backward_data"
    )
    dw, db = ops.conv2d_backward_weights(x, dy, wt.shape, **conv)
    want_dw, want_db = reference.conv2d_backward_weights(x64, dy64, wt.shape, **conv)
    assert_same_classes(dw, want_dw, "conv2d_backward_weights dw")
    assert_same_classes(db, want_db, "conv2d_backward_weights db")


def test_conv2d_inf_weight_meets_padding(isa, dtype):
    """Padding is zeros that are multiplied, as in the twin and PyTorch: an Inf weight that
    reaches the padding gives Inf * 0 = NaN at the border, and only there."""
    x = np.ones((1, 1, 4, 4), dtype)
    w = np.zeros((1, 1, 3, 3), dtype)
    w[0, 0, 0, 0] = np.inf  # the top-left tap: it reads the padding in row 0 and column 0
    y = ops.conv2d(x, w, padding=1)
    want = reference.conv2d(x.astype(F64), w.astype(F64), padding=1)
    assert_same_classes(y, want, "conv2d inf x padding")
    assert np.isnan(y[0, 0, 0]).all()
    assert np.isnan(y[0, 0, :, 0]).all()
    assert np.isposinf(y[0, 0, 1:, 1:]).all()


POOL_CASES = [
    # n, c, h, w, kernel, stride, padding
    (1, 1, 4, 4, 2, None, 0),
    (2, 3, 17, 35, 2, 2, 0),
    (2, 2, 15, 33, 3, 2, 1),
    (1, 3, 9, 40, (2, 3), 1, (1, 1)),
    (1, 2, 12, 19, 4, 3, 2),
    (1, 1, 20, 20, (17, 16), 1, 0),  # int32 indices
]


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_pooling_forward_and_backward(isa, dtype, rng, case):
    n, c, h, w, kernel, stride, padding = case
    x = sprinkle(rng, (n, c, h, w), dtype, 0.01)
    (x64,) = as64(x)
    y, idx = ops.max_pool2d(x, kernel, stride, padding)
    want_y, want_idx = reference.max_pool2d(x64, kernel, stride, padding)
    assert_same_classes(y, want_y, "max_pool2d")
    np.testing.assert_array_equal(idx, want_idx)
    dy = sprinkle(rng, y.shape, dtype)
    (dy64,) = as64(dy)
    assert_same_classes(
        ops.max_pool2d_backward(dy, idx, x.shape, kernel, stride, padding),
        reference.max_pool2d_backward(dy64, want_idx, x.shape, kernel, stride, padding),
        "max_pool2d_backward",
    )
    for cip in (True, False):
        assert_same_classes(
            ops.avg_pool2d(x, kernel, stride, padding, cip),
            reference.avg_pool2d(x64, kernel, stride, padding, cip),
            f"avg_pool2d cip={cip}",
        )
        assert_same_classes(
            ops.avg_pool2d_backward(dy, x.shape, kernel, stride, padding, cip),
            reference.avg_pool2d_backward(dy64, x.shape, kernel, stride, padding, cip),
            f"avg_pool2d_backward cip={cip}",
        )


def test_max_pool_nan_wins_its_window(isa, dtype):
    """A NaN anywhere in a window is its maximum, as in PyTorch, whatever comes after it; +Inf is
    the maximum of a window without NaN; windows of -Inf return -Inf."""
    x = np.zeros((1, 1, 4, 6), dtype)
    x[0, 0, 0, 0] = np.nan
    x[0, 0, 1, 1] = 5.0
    x[0, 0, 0, 2] = np.inf
    x[0, 0, 2:, 4:] = -np.inf
    x[0, 0, 3, 1] = np.nan
    x[0, 0, 3, 0] = np.inf
    y, idx = ops.max_pool2d(x, 2)
    assert np.isnan(y[0, 0, 0, 0])
    assert idx[0, 0, 0, 0] == 0
    assert np.isposinf(y[0, 0, 0, 1])
    assert idx[0, 0, 0, 1] == 0
    assert np.isnan(y[0, 0, 1, 0])
    assert idx[0, 0, 1, 0] == 3
    assert np.isneginf(y[0, 0, 1, 2])
    assert idx[0, 0, 1, 2] == 0
    assert y[0, 0, 1, 1] == 0
    assert y[0, 0, 0, 2] == 0


@pytest.mark.parametrize("size", [1, 7, 16, 33, 1000])
def test_elementwise(isa, dtype, rng, size):
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


def _optimizer_cases() -> list[tuple[str, Callable[..., None], dict[str, object], int]]:
    return [
        ("sgd", ops.sgd_update, {"lr": 0.1}, 0),
        ("sgd-momentum", ops.sgd_update, {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}, 1),
        ("adam", ops.adam_update, {"lr": 0.01, "step": 3}, 2),
    ]


@pytest.mark.parametrize(("name", "op", "kw", "states"), _optimizer_cases(), ids=lambda v: "")
def test_optimizer_updates(isa, dtype, rng, name, op, kw, states):
    """A NaN or Inf gradient poisons exactly its parameter (and state), as in the twin."""
    size = 67
    param = rng.standard_normal(size).astype(dtype)
    grad = sprinkle(rng, (size,), dtype, 0.05)
    state = [np.abs(rng.standard_normal(size)).astype(dtype) for _ in range(states)]
    p64, g64 = as64(param, grad)
    s64 = as64(*state)
    if states == 0:
        op(param, grad, None, **kw)
        getattr(reference, op.__name__)(p64, g64, None, **kw)
    else:
        op(param, grad, *state, **kw)
        getattr(reference, op.__name__)(p64, g64, *s64, **kw)
    assert_same_classes(param, p64, name)
    for s, w in zip(state, s64):
        np.testing.assert_array_equal(np.isnan(s), np.isnan(w))


def test_layers_propagate_nan_through_forward_and_backward():
    """A NaN pixel of one image makes that image's outputs NaN (not the other image's) and
    reaches the weight gradients; no layer hides it."""
    from simdnn import nn

    rng = np.random.default_rng(5)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 10),
    )
    x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    x[1, 0, 3, 3] = np.nan
    out = model(x)
    assert np.isnan(out.data[1]).all()
    assert np.isfinite(out.data[0]).all()
    grad = np.ones_like(out)
    grad[1] = 0.0  # even a zero gradient times the NaN activation gives NaN (IEEE), not 0
    out.backward(grad)
    first, last = model[0], model[4]
    assert np.isnan(last.weight.grad).any()
    assert np.isnan(first.weight.grad).all()
