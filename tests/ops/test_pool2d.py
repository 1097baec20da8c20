"""simdnn.ops pooling (max and average, forward and backward) against the NumPy twins, on every
ISA, in float32 and float64; the twins against a plain loop oracle; gradients against finite
differences; PyTorch's max-pool semantics (ties, NaN, -inf); threads, strides and bad input."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

import simdnn
from helpers import AT_PAGE_END, BIG, F64, ISAS, as64, assert_same_classes, need_memory, sprinkle
from simdnn import bench, ops, reference
from strategies import (
    BAD_DTYPES,
    DTYPES,
    FLAGS,
    HUGE_INTS,
    HUGE_STRIDES,
    NOT_INTS,
    Draw,
    assert_bounded,
    assert_raises_bad_input,
    common,
    f64,
    int_like,
    int_param,
    normal,
    operand,
    sizes,
)

# (x shape, kernel_size, stride, padding). Shape legend: x (N, C, H, W), window R x S.
Case = tuple[tuple[int, int, int, int], object, object, object]


EDGE_CASES: list[Case] = [
    ((1, 1, 1, 1), 1, None, 0),
    ((1, 1, 5, 7), 1, 1, 0),
    ((2, 3, 8, 8), 2, None, 0),
    ((1, 1, 7, 9), 2, 2, 1),
    ((1, 2, 9, 11), 3, 2, 1),
    ((1, 1, 3, 3), 3, None, 0),  # H and W equal to the window
    ((1, 1, 3, 8), 3, 2, 0),
    ((2, 1, 3, 7), 3, 1, 1),
    ((1, 1, 5, 5), 5, 1, 2),
    ((1, 1, 11, 13), 5, 3, 2),
    ((1, 1, 6, 10), (2, 3), (1, 2), (1, 1)),
    ((1, 1, 7, 8), (3, 1), (2, 1), (1, 0)),
    ((1, 1, 4, 9), (1, 4), (1, 3), (0, 2)),
    ((1, 1, 2, 2), 2, 1, 1),
    ((1, 1, 1, 1), 2, 1, 1),  # every window is mostly padding
    ((1, 1, 1, 5), (1, 3), 1, (0, 1)),
    ((2, 2, 17, 19), 2, 1, 1),
    # Rows longer than two vectors of every ISA: full, tail and edge blocks in one row.
    ((3, 2, 33, 35), 3, 2, 1),
    ((1, 1, 40, 70), 2, 2, 0),
    ((1, 1, 41, 71), 2, 2, 1),
    ((1, 1, 30, 67), 3, 2, 0),
    ((1, 1, 20, 100), 3, 1, 1),
    ((1, 1, 12, 50), 4, 3, 2),  # stride 3: a whole and a partial tap triple
    ((1, 1, 150, 52), 3, 3, 1),  # stride 3, taller than one chunk of padded rows
    ((1, 1, 9, 40), (2, 5), (3, 4), (1, 2)),
    ((1, 1, 10, 37), (3, 4), None, (1, 2)),  # stride > kernel in neither; = kernel
    ((1, 1, 13, 45), (2, 2), (3, 3), 1),  # stride > kernel: gaps no window covers
    ((2, 1, 5, 7), 2, (2**62, 1), 1),  # a stride no product of which may overflow
    ((1, 2, 6, 5), 3, (1, 2**63 - 1), 1),
    # Taller than one chunk of padded rows (64 float32 or 32 float64 rows of 32-ish elements),
    # with edge and partial blocks: the copies are made again part-way down the plane.
    ((1, 1, 150, 37), 3, 2, 1),
    ((1, 1, 90, 21), 3, 1, 1),
    # 2x2/s2 without padding (compact.h): rows of fewer than W outputs flattened across rows and
    # planes, longer ones in place with an overlapping last vector. LeNet's maps, odd H and W (a
    # row and a column no window covers), one output a row and plane, rows of 30 outputs.
    ((3, 5, 24, 24), 2, 2, 0),
    ((2, 3, 9, 7), 2, None, 0),
    ((4, 3, 3, 2), 2, 2, 0),
    ((1, 2, 2, 61), 2, 2, 0),
    # Rows of whole vectors of every ISA (Q = 16): forward reads x, backward writes dx in place;
    # odd H and W.
    ((2, 3, 33, 32), 2, 2, 0),
    ((1, 2, 6, 33), 2, None, 0),
    # Backward takes the compact path on any row whose 2Q scratch elements fit one chunk (2048):
    # Q = 1024 does, one row a chunk; Q = 1025 is left to the row loops.
    ((1, 2, 5, 2049), 2, None, 0),
    ((1, 1, 4, 2050), 2, 2, 0),
]


def random_cases(count: int, seed: int) -> list[Case]:
    r = np.random.default_rng(seed)
    cases: list[Case] = []
    for _ in range(count):
        kr, ks = (int(v) for v in r.integers(1, 6, size=2))
        ph, pw = int(r.integers(0, kr // 2 + 1)), int(r.integers(0, ks // 2 + 1))
        stride = None if r.random() < 0.2 else tuple(int(v) for v in r.integers(1, 4, size=2))
        h = int(r.integers(max(1, kr - 2 * ph), 25))
        w = int(r.integers(max(1, ks - 2 * pw), 45))
        n, c = (int(v) for v in r.integers(1, 3, size=2))
        cases.append(((n, c, h, w), (kr, ks), stride, (ph, pw)))
    return cases


CASES = EDGE_CASES + random_cases(14, seed=7)


def case_id(case: Case) -> str:
    shape, k, s, p = case
    return f"{'x'.join(map(str, shape))}-k{k}-s{s}-p{p}".replace(" ", "")


def tol(dtype: type) -> dict[str, float]:
    return {"rtol": 2e-6, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-13, "atol": 1e-14}


# ------------------------------------------------------------------------------------------------
# Against the NumPy twins


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_max_pool_matches_reference(isa, dtype, rng, case):
    shape, k, s, p = case
    for values in ("normal", "ties"):
        x = rng.standard_normal(shape).astype(dtype)
        if values == "ties":
            x = np.round(x)  # many equal maxima: the first must win on both sides
        y, idx = ops.max_pool2d(x, k, s, p)
        y_ref, idx_ref = reference.max_pool2d(x, k, s, p)
        assert y.dtype == dtype
        assert idx.dtype == idx_ref.dtype == np.uint8
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(idx, idx_ref)

        dy = rng.standard_normal(y.shape).astype(dtype)
        dx = ops.max_pool2d_backward(dy, idx, shape, k, s, p)
        assert dx.dtype == dtype
        assert dx.shape == shape
        np.testing.assert_allclose(
            dx, reference.max_pool2d_backward(dy, idx, shape, k, s, p), **tol(dtype)
        )


@pytest.mark.parametrize("count_include_pad", [True, False], ids=["incl", "excl"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_avg_pool_matches_reference(isa, dtype, rng, case, count_include_pad):
    shape, k, s, p = case
    x = rng.standard_normal(shape).astype(dtype)
    y = ops.avg_pool2d(x, k, s, p, count_include_pad)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, reference.avg_pool2d(x, k, s, p, count_include_pad), **tol(dtype))

    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = ops.avg_pool2d_backward(dy, shape, k, s, p, count_include_pad)
    assert dx.dtype == dtype
    assert dx.shape == shape
    want = reference.avg_pool2d_backward(dy, shape, k, s, p, count_include_pad)
    np.testing.assert_allclose(dx, want, **tol(dtype))


# ------------------------------------------------------------------------------------------------
# The twins against a plain loop (they are the oracle above and the benchmark baseline)


def window_geometry(case: Case) -> tuple[int, ...]:
    shape, k, s, p = case
    kr, ks = (k, k) if isinstance(k, int) else k
    sh, sw = (kr, ks) if s is None else ((s, s) if isinstance(s, int) else s)
    ph, pw = (p, p) if isinstance(p, int) else p
    h, w = shape[2], shape[3]
    return kr, ks, sh, sw, ph, pw, (h + 2 * ph - kr) // sh + 1, (w + 2 * pw - ks) // sw + 1


def loop_pool(x: np.ndarray, case: Case, count_include_pad: bool) -> tuple[np.ndarray, ...]:
    """max y, indices and avg y by the definition, one window at a time."""
    kr, ks, sh, sw, ph, pw, pp, qq = window_geometry(case)
    n, c, h, w = x.shape
    ymax = np.zeros((n, c, pp, qq))
    idx = np.zeros((n, c, pp, qq), np.int64)
    yavg = np.zeros((n, c, pp, qq))
    for i in range(n):
        for j in range(c):
            for p in range(pp):
                for q in range(qq):
                    best, where, total, inside = -np.inf, -1, 0.0, 0
                    for r in range(kr):
                        for s in range(ks):
                            ih, iw = p * sh - ph + r, q * sw - pw + s
                            if not (0 <= ih < h and 0 <= iw < w):
                                continue
                            v = x[i, j, ih, iw]
                            inside += 1
                            total += v
                            if where < 0:
                                where = r * ks + s
                            if v > best or np.isnan(v):
                                best, where = v, r * ks + s
                    ymax[i, j, p, q], idx[i, j, p, q] = best, where
                    yavg[i, j, p, q] = total / (kr * ks if count_include_pad else inside)
    return ymax, idx, yavg


def loop_backward(
    dy: np.ndarray, idx: np.ndarray, shape: tuple[int, ...], case: Case, count_include_pad: bool
) -> tuple[np.ndarray, np.ndarray]:
    kr, ks, sh, sw, ph, pw, pp, qq = window_geometry(case)
    n, c, h, w = shape
    dmax = np.zeros(shape)
    davg = np.zeros(shape)
    for i in range(n):
        for j in range(c):
            for p in range(pp):
                for q in range(qq):
                    r, s = divmod(int(idx[i, j, p, q]), ks)
                    dmax[i, j, p * sh - ph + r, q * sw - pw + s] += dy[i, j, p, q]
                    rows = [p * sh - ph + r for r in range(kr) if 0 <= p * sh - ph + r < h]
                    cols = [q * sw - pw + s for s in range(ks) if 0 <= q * sw - pw + s < w]
                    div = kr * ks if count_include_pad else len(rows) * len(cols)
                    for ih in rows:
                        for iw in cols:
                            davg[i, j, ih, iw] += dy[i, j, p, q] / div
    return dmax, davg


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("case", EDGE_CASES[:17] + random_cases(6, seed=8), ids=case_id)
def test_reference_matches_loops(rng, case, count_include_pad):
    shape, k, s, p = case
    x = np.round(rng.standard_normal(shape), 1)  # ties included
    ymax, idx, yavg = loop_pool(x, case, count_include_pad)
    y_ref, idx_ref = reference.max_pool2d(x, k, s, p)
    np.testing.assert_array_equal(y_ref, ymax)
    np.testing.assert_array_equal(idx_ref, idx)
    np.testing.assert_allclose(reference.avg_pool2d(x, k, s, p, count_include_pad), yavg, 1e-13)
    dy = rng.standard_normal(ymax.shape)
    dmax, davg = loop_backward(dy, idx, shape, case, count_include_pad)
    np.testing.assert_allclose(reference.max_pool2d_backward(dy, idx_ref, shape, k, s, p), dmax)
    got = reference.avg_pool2d_backward(dy, shape, k, s, p, count_include_pad)
    np.testing.assert_allclose(got, davg, 1e-13)


# ------------------------------------------------------------------------------------------------
# Gradients


def numeric_grad(f, x: np.ndarray, eps: float) -> np.ndarray:
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        up = f(x)
        x[i] = old - eps
        down = f(x)
        x[i] = old
        g[i] = (up - down) / (2 * eps)
    return g


GRAD_CASES: list[Case] = [
    ((1, 2, 6, 7), 2, None, 0),
    ((1, 1, 7, 9), 3, 2, 1),
    ((2, 1, 5, 6), 3, 1, 1),
    ((1, 1, 8, 9), (2, 3), (3, 2), (1, 1)),
    ((1, 1, 9, 11), 4, 3, 2),
    # Tiled 3-wide windows at stride 3 (8 whole windows a row and more: every ISA's float64
    # vector), a partial last block on 4 lanes, padding, rows between window rows.
    ((1, 1, 7, 29), 3, 3, 1),
    ((1, 1, 9, 26), (2, 3), (4, 3), (1, 0)),
]


@pytest.mark.parametrize("case", GRAD_CASES, ids=case_id)
def test_max_pool_gradient_finite_differences(isa, rng, case):
    shape, k, s, p = case
    # Distinct values 0.01 apart: a 1e-6 step never changes the arg-max.
    x = rng.permutation(np.prod(shape)).reshape(shape) * 0.01
    y, idx = ops.max_pool2d(x, k, s, p)
    g = rng.standard_normal(y.shape)
    dx = ops.max_pool2d_backward(g, idx, shape, k, s, p)
    num = numeric_grad(lambda v: float(np.sum(ops.max_pool2d(v, k, s, p)[0] * g)), x, 1e-6)
    np.testing.assert_allclose(dx, num, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("case", GRAD_CASES, ids=case_id)
def test_avg_pool_gradient_finite_differences(isa, rng, case, count_include_pad):
    shape, k, s, p = case
    x = rng.standard_normal(shape)
    y = ops.avg_pool2d(x, k, s, p, count_include_pad)
    g = rng.standard_normal(y.shape)
    dx = ops.avg_pool2d_backward(g, shape, k, s, p, count_include_pad)

    def f(v: np.ndarray) -> float:
        return float(np.sum(ops.avg_pool2d(v, k, s, p, count_include_pad) * g))

    np.testing.assert_allclose(dx, numeric_grad(f, x, 1e-5), rtol=1e-7, atol=1e-8)


# ------------------------------------------------------------------------------------------------
# Max-pool semantics (PyTorch's CPU kernel)


def test_gradient_lands_on_the_argmax(isa, dtype):
    x = np.zeros((1, 1, 4, 6), dtype)
    x[0, 0, 1, 0] = 5  # window (0, 0)
    x[0, 0, 0, 3] = 7  # window (0, 1)
    x[0, 0, 3, 5] = 2  # window (1, 2)
    x[0, 0, 2, 2] = 1  # window (1, 1)
    y, idx = ops.max_pool2d(x, 2)
    np.testing.assert_array_equal(idx[0, 0], [[2, 1, 0], [0, 0, 3]])
    dx = ops.max_pool2d_backward(np.full(y.shape, 3, dtype), idx, x.shape, 2)
    want = np.zeros_like(x)
    for r, c in [(1, 0), (0, 3), (0, 4), (2, 0), (2, 2), (3, 5)]:
        want[0, 0, r, c] = 3
    np.testing.assert_array_equal(dx, want)


def test_overlapping_windows_sum_their_gradients(isa, dtype):
    x = np.zeros((1, 1, 5, 5), dtype)
    x[0, 0, 2, 2] = 1  # the maximum of all four 3x3/s2 windows
    _, idx = ops.max_pool2d(x, 3, 2)
    np.testing.assert_array_equal(idx[0, 0], [[8, 6], [2, 0]])
    dy = np.array([[[[1, 2], [3, 4]]]], dtype)
    dx = ops.max_pool2d_backward(dy, idx, x.shape, 3, 2)
    assert dx[0, 0, 2, 2] == 10
    assert np.count_nonzero(dx) == 1


def test_ties_go_to_the_first_maximum(isa, dtype):
    x = np.ones((1, 1, 7, 8), dtype)
    _, idx = ops.max_pool2d(x, 3, 2, 1)
    # The first in-bounds position of each window: row 1 in the first window row, else row 0.
    r0 = np.array([1, 0, 0, 0])[:, None]
    s0 = np.array([1, 0, 0, 0])[None, :]
    np.testing.assert_array_equal(idx[0, 0], r0 * 3 + s0)
    x = np.array([[[[1, 3, 3], [3, 2, 3], [0, 3, 1]]]], dtype)
    assert ops.max_pool2d(x, 3)[1][0, 0, 0, 0] == 1


def test_nan_wins_and_the_last_nan_is_reported(isa, dtype):
    x = np.zeros((1, 1, 4, 40), dtype)
    x[0, 0, 0, 0] = np.nan  # window (0, 0), position 0, then a larger value after it
    x[0, 0, 1, 1] = 5
    x[0, 0, 2, 20] = np.nan  # window (1, 10): two NaNs, the last one counts
    x[0, 0, 3, 21] = np.nan
    x[0, 0, 3, 20] = np.inf
    y, idx = ops.max_pool2d(x, 2)
    assert np.isnan(y[0, 0, 0, 0])
    assert idx[0, 0, 0, 0] == 0
    assert np.isnan(y[0, 0, 1, 10])
    assert idx[0, 0, 1, 10] == 3
    assert np.count_nonzero(np.isnan(y)) == 2
    y_ref, idx_ref = reference.max_pool2d(x, 2)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(idx, idx_ref)
    dx = ops.max_pool2d_backward(np.ones_like(y), idx, x.shape, 2)
    assert dx[0, 0, 0, 0] == 1
    assert dx[0, 0, 3, 21] == 1
    assert dx[0, 0, 1, 1] == 0


@pytest.mark.parametrize("padding", [0, 1])
@pytest.mark.parametrize("w", [9, 17, 18, 33, 34, 65])
def test_3x3_s2_notices_a_nan_at_every_position(isa, dtype, rng, padding, w):
    # The 3x3/s2 path compares without the NaN rule and computes a plane again when one of its
    # inputs was NaN: plane i holds one NaN at position i, so a NaN the check misses (the
    # element shifted in at a block's edge, the last block of a row, the last row) gives a
    # plane that differs from the twin. Widths put 1, 2 and 4 vector blocks in a row for 4, 8
    # and 16 lanes.
    h = 7
    x = np.repeat(rng.standard_normal((1, 1, h, w)).astype(dtype), h * w, axis=0)
    x.reshape(h * w, h * w)[np.arange(h * w), np.arange(h * w)] = np.nan
    y, idx = ops.max_pool2d(x, 3, 2, padding)
    y_ref, idx_ref = reference.max_pool2d(x, 3, 2, padding)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(idx, idx_ref)


@pytest.mark.parametrize(
    "shape",
    [(3, 4, 8, 8), (2, 3, 13, 25), (1, 1, 2, 2), (2, 3, 32, 32), (2, 3, 8, 40), (1, 2, 4, 70)],
)
def test_short_rows_keep_tie_and_nan_rules(isa, dtype, rng, shape):
    # Small integers (ties in most windows), zeros as after a ReLU, NaN and -inf, on the 2x2/s2
    # planes that run flattened across rows: the same values and indices as the twin, and each
    # dy lands on its window's recorded position.
    x = rng.integers(-1, 3, size=shape).astype(dtype)
    x[rng.random(shape) < 0.05] = np.nan
    x[rng.random(shape) < 0.05] = -np.inf
    y, idx = ops.max_pool2d(x, 2)
    y_ref, idx_ref = reference.max_pool2d(x, 2)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(idx, idx_ref)
    dy = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_array_equal(
        ops.max_pool2d_backward(dy, idx, shape, 2),
        reference.max_pool2d_backward(dy, idx, shape, 2),
    )
    bad = idx.copy()
    bad.flat[-1] = 4  # past the last of the 4 window positions
    with pytest.raises(ValueError, match="indices out of range"):
        ops.max_pool2d_backward(dy, bad, shape, 2)


@pytest.mark.parametrize("shape", [(1, 2, 4, 70), (2, 1, 6, 41), (2, 1, 4, 26)])
def test_2x2_bad_index_found_at_every_position(isa, dtype, rng, shape):
    # Rows of 35, 20 and 13 outputs: whole vectors and a last one that overlaps the vector before
    # it (its lanes over it are stored again, not counted again), on every ISA. A bad index at any
    # position of the first plane's rows, overlap included, is reported; the good ones are not.
    x = rng.standard_normal(shape).astype(dtype)
    y, idx = ops.max_pool2d(x, 2)
    dy = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_array_equal(
        ops.max_pool2d_backward(dy, idx, shape, 2),
        reference.max_pool2d_backward(dy, idx, shape, 2),
    )
    for pos in range(2 * y.shape[3]):
        bad = idx.copy()
        bad.reshape(-1)[pos] = 4 + pos % 200
        with pytest.raises(ValueError, match="indices out of range"):
            ops.max_pool2d_backward(dy, bad, shape, 2)


@pytest.mark.parametrize(("k", "s", "p"), [(3, 2, 1), (2, 1, 1), (5, 2, 2), ((3, 4), 3, (1, 2))])
def test_all_minus_inf_windows_give_an_in_bounds_index(isa, dtype, k, s, p):
    shape = (1, 2, 7, 37)
    x = np.full(shape, -np.inf, dtype)
    y, idx = ops.max_pool2d(x, k, s, p)
    assert np.all(y == -np.inf)
    np.testing.assert_array_equal(idx, reference.max_pool2d(x, k, s, p)[1])
    # Indices into the padding would be refused here.
    dx = ops.max_pool2d_backward(np.ones_like(y), idx, shape, k, s, p)
    assert dx.sum() == y.size


# The separable 3x3/s2 paths (padding 0 or 1; cpp/pool forward.h and backward.h, s2k3_*): widths
# around every vector length of every ISA (1, 4, 8, 16 lanes: a block of W outputs reads 2W + 1
# columns, the last block of a row a scratch copy of the row's end), primes, odd heights, planes
# of one or two columns or rows, and dx rows or columns that no window or one more window pair
# reaches.
S2K3_SHAPES = [
    (1, 1),
    (1, 2),
    (2, 1),
    (2, 2),
    (3, 3),
    (5, 7),
    (7, 13),
    (4, 16),
    (9, 17),
    (11, 31),
    (6, 32),
    (13, 33),
    (3, 34),
    (17, 47),
    (2, 64),
    (5, 65),
    (8, 67),
]


def pool_input(rng: np.random.Generator, shape: tuple[int, ...], dtype: type, values: str):
    """x for the path tests: "normal", "ties" (rounded), "nonfinite" (NaN and +-inf sprinkled) or
    "neginf" (mostly -inf: windows of -inf only report their first in-bounds position)."""
    if values == "nonfinite":
        return sprinkle(rng, shape, dtype, 0.05)
    if values == "neginf":
        x = np.full(shape, -np.inf, dtype)
        x.flat[rng.choice(x.size, max(1, x.size // 20), replace=False)] = 1.0
        return x
    x = rng.standard_normal(shape).astype(dtype)
    return np.round(x) if values == "ties" else x


@pytest.mark.usefixtures("quiet_numpy")
@pytest.mark.parametrize("values", ["normal", "ties", "nonfinite", "neginf"])
@pytest.mark.parametrize(
    ("h", "w", "padding"),
    [(h, w, p) for h, w in S2K3_SHAPES for p in (0, 1) if min(h, w) + 2 * p >= 3],
    ids=lambda v: str(v),
)
def test_3x3_stride2_paths(isa, dtype, rng, h, w, padding, values):
    shape = (2, 3, h, w)
    x = pool_input(rng, shape, dtype, values)
    y, idx = ops.max_pool2d(x, 3, 2, padding)
    y_ref, idx_ref = reference.max_pool2d(x, 3, 2, padding)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(idx, idx_ref)
    dy = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_allclose(
        ops.max_pool2d_backward(dy, idx, shape, 3, 2, padding),
        reference.max_pool2d_backward(dy, idx, shape, 3, 2, padding),
        **tol(dtype),
    )
    if values == "normal":
        for cip in (True, False):
            # The taps are added in window order, as in the twin: the same bits.
            np.testing.assert_array_equal(
                ops.avg_pool2d(x, 3, 2, padding, cip), reference.avg_pool2d(x, 3, 2, padding, cip)
            )
            np.testing.assert_allclose(
                ops.avg_pool2d_backward(dy, shape, 3, 2, padding, cip),
                reference.avg_pool2d_backward(dy, shape, 3, 2, padding, cip),
                **tol(dtype),
            )


def assert_pool_gradients(
    dy: np.ndarray, idx: np.ndarray, shape: tuple[int, ...], args: tuple[Any, ...], **cmp: float
) -> None:
    """Max and average (both divisor rules) pooling gradients against the twin: the same bits
    (NaN where the twin has NaN), or within assert_allclose's rtol / atol when given."""

    def check(got: np.ndarray, want: np.ndarray, msg: str) -> None:
        if cmp:
            np.testing.assert_allclose(got, want, **cmp, err_msg=msg)
        else:
            np.testing.assert_array_equal(got, want, err_msg=msg)

    check(
        ops.max_pool2d_backward(dy, idx, shape, *args),
        reference.max_pool2d_backward(dy, idx, shape, *args),
        str((shape, args)),
    )
    for cip in (True, False):
        check(
            ops.avg_pool2d_backward(dy, shape, *args, cip),
            reference.avg_pool2d_backward(dy, shape, *args, cip),
            str((shape, args, cip)),
        )


# Rows for the column-blocked forward at strides 1-3: Q from 1 to beyond 2 vectors of every ISA,
# so that full, partial and edge blocks meet; a partial last block whose W windows lie inside
# the input runs as an overlapping full block, every other one through padded copies. (Nine
# widths: under valgrind (tools/memcheck.sh) each non-finite case takes about 10 s.)
VECTOR_STRIDE_WIDTHS = (1, 5, 8, 13, 24, 25, 49, 50, 100)


@pytest.mark.usefixtures("quiet_numpy")
@pytest.mark.parametrize("values", ["normal", "ties", "nonfinite", "neginf"])
@pytest.mark.parametrize("sw", [1, 2, 3])
def test_column_strides_1_to_3_match_the_twin_exactly(isa, dtype, rng, sw, values):
    # Windows 1-7 wide (stride 3: whole and partial tap triples), every padding up to half the
    # window, and two row geometries: the same bits and indices as the twin, NaN, -inf and ties
    # included; the gradients within rounding.
    for ks in range(1, 8):
        for pw in range(ks // 2 + 1):
            for w in VECTOR_STRIDE_WIDTHS:
                if w + 2 * pw < ks:
                    continue
                for kr, sh, ph in ((3, 3, 1), (2, 1, 0)):
                    shape = (2, 1, 5, w)
                    x = pool_input(rng, shape, dtype, values)
                    args = ((kr, ks), (sh, sw), (ph, pw))
                    y, idx = ops.max_pool2d(x, *args)
                    y_ref, idx_ref = reference.max_pool2d(x, *args)
                    np.testing.assert_array_equal(y, y_ref, err_msg=str((shape, args)))
                    np.testing.assert_array_equal(idx, idx_ref, err_msg=str((shape, args)))
                    if values == "normal":
                        # And the gradients (stride 3: 3-wide windows tiled where they do not
                        # overlap in rows, else average gathered in three phases, max scattered).
                        dy = rng.standard_normal(y.shape).astype(dtype)
                        assert_pool_gradients(dy, idx, shape, args, **tol(dtype))
                        for cip in (True, False):
                            np.testing.assert_array_equal(
                                ops.avg_pool2d(x, *args, cip),
                                reference.avg_pool2d(x, *args, cip),
                                err_msg=str((shape, args, cip)),
                            )


# Rows for the tiled backward (3-wide windows at column stride 3 that do not overlap in rows):
# vector blocks of W = 4, 8 and 16 windows whole and overlapped (Q a multiple of W or not),
# windows cut by the padding at either end, columns past the last window, rows of fewer whole
# windows than lanes (average pooling: one masked block, 1-11 windows here), rows of none (the
# general paths).
TILED3_WIDTHS = (3, 4, 10, 13, 24, 26, 29, 33, 34, 48, 52, 53)


@pytest.mark.usefixtures("quiet_numpy")
@pytest.mark.parametrize("values", ["normal", "nonfinite"])
def test_tiling_stride3_windows_backward_matches_the_twin_exactly(isa, dtype, rng, values):
    # Each dx element lies in one window at most: the gradient is that window's term, with the
    # twin's bits (dy, 0, or dy / divisor), NaN and inf in dy included. Rows that no window
    # reaches: between window rows (R < sh) and below the last one (11 rows).
    for kr, sh, ph in ((3, 3, 0), (3, 3, 1), (1, 3, 0), (2, 4, 1)):
        for pw in (0, 1):
            for w in TILED3_WIDTHS:
                shape = (2, 1, 11, w)
                args = ((kr, 3), (sh, 3), (ph, pw))
                y, idx = ops.max_pool2d(pool_input(rng, shape, dtype, "normal"), *args)
                dy = pool_input(rng, y.shape, dtype, values)
                assert_pool_gradients(dy, idx, shape, args)


@pytest.mark.parametrize("nt", [1, 3])
@pytest.mark.parametrize(("kr", "sh", "ph", "pw"), [(3, 3, 1, 1), (2, 4, 1, 0)])
def test_tiling_stride3_bad_indices_are_counted_once(isa, dtype, threads, nt, kr, sh, ph, pw):
    """The tiled max backward: an index into a padding row or column, or past the window, is
    refused in every window column class (cut by the padding, in a whole vector block, in the
    overlapped last block), counted once however the rows are split between tasks (on 2 threads
    and more this plane is cut into row blocks)."""
    shape = (1, 1, 301, 53)
    y_shape = ops.max_pool2d(np.zeros(shape, dtype), (kr, 3), (sh, 3), (ph, pw))[0].shape
    args = ((kr, 3), (sh, 3), (ph, pw))
    dy = np.ones(y_shape, dtype)
    simdnn.set_num_threads(nt)
    good = np.full(dy.shape, 3 * ph + 1, np.uint8)  # row ph, middle column: inside every window
    np.testing.assert_array_equal(
        ops.max_pool2d_backward(dy, good, shape, *args),
        reference.max_pool2d_backward(dy, good, shape, *args),
    )
    for pi in (0, 1, y_shape[2] // 2, y_shape[2] - 1):
        for qi in (0, 1, 9, y_shape[3] - 2, y_shape[3] - 1):
            ih0, iw0 = sh * pi - ph, 3 * qi - pw
            into_padding = [
                r * 3 + c
                for r in range(kr)
                for c in range(3)
                if not (0 <= ih0 + r < shape[2] and 0 <= iw0 + c < shape[3])
            ]
            for bad in [*into_padding[:1], *into_padding[-1:], 3 * kr, 255]:
                idx = good.copy()
                idx[0, 0, pi, qi] = bad
                with pytest.raises(ValueError, match=f"1 of {dy.size} indices"):
                    ops.max_pool2d_backward(dy, idx, shape, *args)


_POOL_GUARD_SCRIPT = (
    AT_PAGE_END
    + r"""
import itertools
import simdnn
from simdnn import _core, ops

def as_tuple(v):
    return v if isinstance(v, tuple) else (v,)


checked = 0
for isa, dt, nt in itertools.product(sys.argv[1:], (np.float32, np.float64), (1, 2)):
    _core.set_isa(isa)
    simdnn.set_num_threads(nt)
    rng = np.random.default_rng(0)
    for (kr, ks, sh, sw, ph, pw), n, w in itertools.product(WINDOWS, (1, 3), WIDTHS):
        if w + 2 * pw < ks:
            continue
        shape = (n, 1, 7, w)
        args = ((kr, ks), (sh, sw), (ph, pw))
        x = rng.standard_normal(shape).astype(dt)
        y, idx = ops.max_pool2d(x, *args)
        dy = rng.standard_normal(y.shape).astype(dt)
        xg, dyg, idxg = at_page_end(x), at_page_end(dy), at_page_end(idx)
        for got, want in (
            (ops.max_pool2d(xg, *args), (y, idx)),
            (ops.avg_pool2d(xg, *args), ops.avg_pool2d(x, *args)),
            (ops.max_pool2d_backward(dyg, idxg, shape, *args),
             ops.max_pool2d_backward(dy, idx, shape, *args)),
            (ops.avg_pool2d_backward(dyg, shape, *args), ops.avg_pool2d_backward(dy, shape, *args)),
        ):
            for a, b in zip(as_tuple(got), as_tuple(want)):
                np.testing.assert_array_equal(a, b)
        checked += 1
print(checked)
"""
)


@pytest.mark.regression
def test_pool_reads_stay_inside_their_arrays():
    """x, dy and the indices end where an inaccessible page begins: the blocks that read past a
    row's end (the forward's short rows and the 3x3/s2 path, the 3x3/s2 and tiled gradients) must
    switch to copies before they would read past the array."""
    if not sys.platform.startswith("linux"):
        pytest.skip("uses mmap and mprotect through libc")
    windows = [
        (3, 3, 3, 3, 0, 0),  # tiled gradient; forward rows of fewer windows than lanes
        (3, 3, 3, 3, 1, 1),
        (3, 3, 2, 2, 0, 0),  # the 3x3/s2 paths
        (3, 3, 2, 2, 1, 1),
        (5, 5, 3, 3, 0, 0),
        (2, 2, 2, 2, 0, 0),
        (3, 3, 1, 1, 0, 0),
        (2, 3, 2, 1, 0, 0),
    ]
    widths = [3, 5, 8, 10, 16, 17, 22, 32, 34, 47, 50]
    script = f"WINDOWS = {windows!r}\nWIDTHS = {widths!r}\n" + _POOL_GUARD_SCRIPT
    run = subprocess.run(
        [sys.executable, "-c", script, *ISAS], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    assert int(run.stdout) > 100 * len(ISAS)


def test_3x3_stride2_bad_indices_are_counted(isa, dtype):
    """Indices of the separable backward path that point into the padding columns (tap 0 of the
    first window, tap 2 of the last one on an odd width) or rows are refused."""
    shape = (1, 1, 5, 7)
    dy = np.ones((1, 1, 3, 4), dtype)
    for p, q, k in [(1, 0, 3), (1, 3, 5), (0, 1, 1), (1, 0, 0)]:
        idx = np.full(dy.shape, 4, np.uint8)
        idx[0, 0, p, q] = k
        with pytest.raises(ValueError, match="1 of 12 indices"):
            ops.max_pool2d_backward(dy, idx, shape, 3, 2, 1)
    idx = np.full(dy.shape, 4, np.uint8)
    idx[0, 0, 2, 3] = 9  # out of range
    with pytest.raises(ValueError, match="1 of 12 indices"):
        ops.max_pool2d_backward(dy, idx, shape, 3, 2, 1)


@pytest.mark.parametrize("nt", [1, 3])
@pytest.mark.parametrize(("k", "s", "p"), [(4, 3, 2), (5, 1, 2), (4, 2, 1)])
def test_scattered_bad_indices_are_counted_once(isa, dtype, threads, nt, k, s, p):
    """The scattered max backward (column strides of 3 and more; overlapping windows of more than
    4 taps): an index into the padding or past the window is refused at any window row, and
    counted once however the rows are split between tasks (on 2 threads and more this plane is
    cut into 16 row blocks, which the windows straddle)."""
    shape = (1, 1, 301, 110)
    y_shape = ops.max_pool2d(np.zeros(shape, dtype), k, s, p)[0].shape
    dy = np.ones(y_shape, dtype)
    simdnn.set_num_threads(nt)
    center = p * k + p  # row p, column p: inside every window
    good = np.full(dy.shape, center, np.uint8)
    np.testing.assert_array_equal(
        ops.max_pool2d_backward(dy, good, shape, k, s, p),
        reference.max_pool2d_backward(dy, good, shape, k, s, p),
    )
    for pi in range(y_shape[2]):
        for qi in [0, 1, y_shape[3] - 1]:
            ih0, iw0 = s * pi - p, s * qi - p
            into_padding = [
                r * k + c
                for r in range(k)
                for c in range(k)
                if not (0 <= ih0 + r < shape[2] and 0 <= iw0 + c < shape[3])
            ]
            for bad in [*into_padding[:1], *into_padding[-1:], k * k + pi % 200]:
                idx = good.copy()
                idx[0, 0, pi, qi] = bad
                with pytest.raises(ValueError, match=f"1 of {dy.size} indices"):
                    ops.max_pool2d_backward(dy, idx, shape, k, s, p)


def test_large_windows_use_int32_indices(isa, dtype, rng):
    shape = (1, 2, 20, 45)
    x = rng.standard_normal(shape).astype(dtype)
    for k, s, p in [(17, 1, 0), ((16, 17), (2, 5), (8, 3)), (20, 3, 10)]:
        y, idx = ops.max_pool2d(x, k, s, p)
        y_ref, idx_ref = reference.max_pool2d(x, k, s, p)
        assert idx.dtype == idx_ref.dtype == np.int32
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(idx, idx_ref)
        dy = rng.standard_normal(y.shape).astype(dtype)
        np.testing.assert_allclose(
            ops.max_pool2d_backward(dy, idx, shape, k, s, p),
            reference.max_pool2d_backward(dy, idx, shape, k, s, p),
            **tol(dtype),
        )
    assert ops.max_pool2d(x, 16)[1].dtype == np.uint8  # 256 positions still fit


def test_windows_beyond_float_index_lanes(isa, dtype):
    """4097 x 4097 windows have more positions than float32 lanes hold exactly (2^24): float32
    takes the scalar path there. Every window covers the whole (tiny) input."""
    k, pad = 4097, 2048
    x = np.array([[[[1.0, 5.0, 2.0], [7.0, 3.0, -1.0]]]], dtype)
    y, idx = ops.max_pool2d(x, k, 1, pad)
    assert y.shape == (1, 1, 2, 3)
    assert idx.dtype == np.int32
    np.testing.assert_array_equal(y, np.full(y.shape, 7.0))
    p, q = np.meshgrid(np.arange(2), np.arange(3), indexing="ij")
    np.testing.assert_array_equal(idx[0, 0], (1 - p + pad) * k + (0 - q + pad))
    dy = np.arange(1, 7, dtype=dtype).reshape(y.shape)
    dx = ops.max_pool2d_backward(dy, idx, x.shape, k, 1, pad)
    np.testing.assert_array_equal(dx[0, 0], [[0, 0, 0], [21, 0, 0]])
    np.testing.assert_allclose(ops.avg_pool2d(x, k, 1, pad, False), np.full(y.shape, 17 / 6))
    np.testing.assert_allclose(ops.avg_pool2d(x, k, 1, pad), np.full(y.shape, 17 / k**2), 1e-6)
    dx = ops.avg_pool2d_backward(dy, x.shape, k, 1, pad, False)
    np.testing.assert_allclose(dx, np.full(x.shape, 21 / 6), 1e-6)


# ------------------------------------------------------------------------------------------------
# Threads, layouts, sizes


@pytest.mark.parametrize(
    "case",
    [
        ((1, 1, 200, 300), 3, 2, 1),  # one plane cut into row blocks
        ((3, 1, 130, 120), 2, None, 0),  # fewer planes than 8 per thread
        ((4, 9, 33, 35), 3, 1, 1),  # whole planes
        ((2, 3, 64, 50), 5, 3, 2),
        # Column stride 3 (backward scattered): windows overlapping in rows and columns, one
        # plane cut into row blocks whose windows reach across the cuts.
        ((1, 1, 200, 301), (5, 4), 3, 2),
        # Max backward scattered at strides 1 and 2 (overlapping windows of more than 4 taps).
        ((1, 1, 150, 97), 5, 1, 2),
        ((2, 1, 120, 90), (4, 3), 2, 1),
        ((8, 20, 24, 25), 2, None, 0),  # 2x2/s2 on short rows: ranges of rows across planes
        ((4, 6, 33, 32), 2, None, 0),  # 2x2/s2 on rows of whole vectors
    ],
    ids=case_id,
)
def test_results_identical_across_thread_counts(isa, dtype, rng, threads, case):
    shape, k, s, p = case
    x = rng.standard_normal(shape).astype(dtype)
    y_shape = ops.max_pool2d(x[:1, :1], k, s, p)[0].shape[2:]
    dy = rng.standard_normal(shape[:2] + y_shape).astype(dtype)
    runs = []
    for nt in (1, 2, 3):
        simdnn.set_num_threads(nt)
        y, idx = ops.max_pool2d(x, k, s, p)
        runs.append(
            (
                y,
                idx,
                ops.max_pool2d_backward(dy, idx, shape, k, s, p),
                ops.avg_pool2d(x, k, s, p, False),
                ops.avg_pool2d_backward(dy, shape, k, s, p, False),
                ops.avg_pool2d_backward(dy, shape, k, s, p, True),
            )
        )
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("layout", ["sliced", "fortran", "negative", "transposed", "misaligned"])
def test_any_layout_gives_the_contiguous_result(isa, dtype, rng, layout):
    base = rng.standard_normal((3, 4, 19, 23)).astype(dtype)
    if layout == "sliced":
        x = base[1:, ::2, 2:, ::2]
    elif layout == "fortran":
        x = np.asfortranarray(base)
    elif layout == "negative":
        x = base[::-1, :, ::-1, ::-1]
    elif layout == "transposed":
        x = base.transpose(1, 0, 3, 2)
    else:
        buf = np.zeros(base.nbytes + 1, np.uint8)
        x = np.ndarray(base.shape, dtype, buffer=buf.data, offset=1)
        x[...] = base
        assert not x.flags.aligned
    xc = np.ascontiguousarray(x)
    y, idx = ops.max_pool2d(x, 3, 2, 1)
    y_c, idx_c = ops.max_pool2d(xc, 3, 2, 1)
    np.testing.assert_array_equal(y, y_c)
    np.testing.assert_array_equal(idx, idx_c)
    np.testing.assert_array_equal(ops.avg_pool2d(x, 3, 2, 1), ops.avg_pool2d(xc, 3, 2, 1))
    # Non-contiguous dy and indices for the backward passes.
    dy = np.asfortranarray(rng.standard_normal(y.shape).astype(dtype))
    idx_f = np.asfortranarray(idx)
    want = ops.max_pool2d_backward(np.ascontiguousarray(dy), idx, x.shape, 3, 2, 1)
    np.testing.assert_array_equal(ops.max_pool2d_backward(dy, idx_f, x.shape, 3, 2, 1), want)
    np.testing.assert_array_equal(
        ops.avg_pool2d_backward(dy[..., ::-1], x.shape, 3, 2, 1),
        ops.avg_pool2d_backward(np.ascontiguousarray(dy[..., ::-1]), x.shape, 3, 2, 1),
    )


@pytest.mark.parametrize(
    ("window", "layout"),
    [(2, "contiguous"), (3, "strided"), ((3, 2), "fortran"), (17, "contiguous"), (1, "overlaps x")],
)
def test_max_pool2d_out(isa, dtype, rng, window, layout):
    """out=(y, indices) receives a plain call's results, bit for bit, and is returned; the old
    contents are never read. Layouts the kernel cannot write itself (strided, Fortran order, a y
    that overlaps x: a 1x1 window keeps x's shape, and y starts one image after x in one buffer)
    get the same, computed aside; a 17x17 window has int32 indices."""
    x = rng.standard_normal((3, 3, 19, 18)).astype(dtype)
    want_y, want_idx = ops.max_pool2d(x, window, 1, 0)
    shape, idx_dtype = want_y.shape, want_idx.dtype
    twin = (np.full(shape, np.nan, dtype), np.zeros(shape, idx_dtype))
    twin_y, twin_idx = reference.max_pool2d(x, window, 1, 0, out=twin)
    assert twin_y is twin[0]
    assert twin_idx is twin[1]
    np.testing.assert_array_equal(twin[0], want_y)
    np.testing.assert_array_equal(twin[1], want_idx)
    if layout == "strided":
        y = np.full((*shape[:-1], 2 * shape[-1]), np.nan, dtype)[..., ::2]
        idx = np.full((*shape[:-1], 2 * shape[-1]), 77, idx_dtype)[..., ::2]
    else:
        order = "F" if layout == "fortran" else "C"
        y = np.full(shape, np.nan, dtype, order=order)
        idx = np.full(shape, 77, idx_dtype, order=order)
        if layout == "overlaps x":
            buf = np.empty((x.shape[0] + 1, *x.shape[1:]), dtype)
            buf[:-1] = x
            x, y = buf[:-1], buf[1:]
    got = ops.max_pool2d(x, window, 1, 0, out=(y, idx))
    assert got[0] is y
    assert got[1] is idx
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(idx, want_idx)


def test_byteswapped_and_array_like_inputs(isa):
    x = np.arange(2 * 3 * 6 * 7, dtype=np.float32).reshape(2, 3, 6, 7)
    want = ops.max_pool2d(x, 2)
    for other in (x.astype(">f4"), x.tolist()):
        y, idx = ops.max_pool2d(other, 2)
        np.testing.assert_array_equal(y, want[0])
        np.testing.assert_array_equal(idx, want[1])
    dy = np.ones(want[0].shape, ">f8")
    dx = ops.max_pool2d_backward(dy, want[1], x.shape, 2)
    assert dx.dtype == np.float64
    assert dx.sum() == want[0].size


@pytest.mark.parametrize("shape", [(0, 3, 5, 5), (2, 0, 5, 5)])
def test_empty_batch_or_channels(isa, dtype, shape):
    x = np.zeros(shape, dtype)
    y, idx = ops.max_pool2d(x, 3, 2, 1)
    assert y.shape == idx.shape == (*shape[:2], 3, 3)
    assert ops.avg_pool2d(x, 3, 2, 1).shape == (*shape[:2], 3, 3)
    dx = ops.max_pool2d_backward(y, idx, shape, 3, 2, 1)
    assert dx.shape == shape
    assert dx.dtype == dtype
    assert ops.avg_pool2d_backward(y, shape, 3, 2, 1).shape == shape


def test_bench_cases_agree_with_their_twins():
    for case in bench.pool_cases():
        args = case.make(np.random.default_rng(0), np.dtype(np.float32))
        bench.check_close(case, case.native(*args), case.numpy(*args), np.dtype(np.float32))


# ------------------------------------------------------------------------------------------------
# Bad input: a clear TypeError/ValueError naming the argument, never a crash.

X = np.zeros((1, 2, 6, 6), np.float32)


Y, IDX = ops.max_pool2d(X, 3, 2, 1)  # (1, 2, 3, 3), uint8


def _out_of_range() -> np.ndarray:
    bad = IDX.copy()
    bad[0, 1, 2, 2] = 9  # 3 x 3 window: positions 0..8
    return bad


def _into_padding() -> np.ndarray:
    bad = IDX.copy()
    bad[0, 0, 0, 0] = 0  # the top-left window's position (0, 0) is padding
    return bad


BAD_CALLS = [
    (lambda: ops.max_pool2d(np.zeros((2, 6, 6), np.float32), 2), ValueError, ["'x'", "4-D"]),
    (lambda: ops.avg_pool2d(np.zeros((6, 6)), 2), ValueError, ["avg_pool2d", "'x'", "(6, 6)"]),
    (lambda: ops.max_pool2d(X, 0), ValueError, ["kernel_size", ">= 1", "0"]),
    (lambda: ops.max_pool2d(X, (2, -1)), ValueError, ["kernel_size", "(2, -1)"]),
    (lambda: ops.max_pool2d(X, 2, 0), ValueError, ["stride", ">= 1"]),
    (lambda: ops.avg_pool2d(X, 2, (1, -2)), ValueError, ["stride"]),
    (lambda: ops.max_pool2d(X, 3, 1, 2), ValueError, ["padding", "half", "(2, 2)", "(3, 3)"]),
    (lambda: ops.avg_pool2d(X, (4, 2), 1, (2, 2)), ValueError, ["padding", "(2, 2)", "(4, 2)"]),
    (lambda: ops.max_pool2d(X, 2, 1, -1), ValueError, ["padding", ">= 0"]),
    (lambda: ops.max_pool2d(X, 7), ValueError, ["kernel_size", "(7, 7)", "(6, 6)", "empty"]),
    (lambda: ops.max_pool2d(X, (3, 9), 1, 1), ValueError, ["kernel_size", "(8, 8)", "empty"]),
    (lambda: ops.max_pool2d(np.zeros((1, 1, 0, 4)), 1), ValueError, ["height", "(1, 1, 0, 4)"]),
    (lambda: ops.max_pool2d(X.astype(np.int64), 2), TypeError, ["'x'", "int64"]),
    (lambda: ops.avg_pool2d(X.astype(np.float16), 2), TypeError, ["'x'", "float16"]),
    (lambda: ops.max_pool2d(X, 2.0), TypeError, ["kernel_size", "2.0"]),
    (lambda: ops.max_pool2d(X, (2, 2, 2)), TypeError, ["kernel_size"]),
    (lambda: ops.max_pool2d(X, 2, "1"), TypeError, ["stride"]),
    (lambda: ops.avg_pool2d(X, 2, padding=True), TypeError, ["padding"]),
    (lambda: ops.max_pool2d(X, (1 << 20, 1 << 20), 1, 1 << 19), ValueError, ["2^31"]),
    # Backward passes.
    (
        lambda: ops.max_pool2d_backward(Y[..., :2], IDX, X.shape, 3, 2, 1),
        ValueError,
        ["'dy'", "(1, 2, 3, 2)", "(1, 2, 3, 3)", "x_shape (1, 2, 6, 6)"],
    ),
    (
        lambda: ops.max_pool2d_backward(Y, IDX, X.shape, 3, 2, 0),
        ValueError,
        ["'dy'", "(1, 2, 2, 2)", "padding (0, 0)"],
    ),
    (
        lambda: ops.max_pool2d_backward(Y, IDX[:, :1], X.shape, 3, 2, 1),
        ValueError,
        ["'indices'", "(1, 1, 3, 3)"],
    ),
    (
        lambda: ops.max_pool2d_backward(Y, IDX.astype(np.int64), X.shape, 3, 2, 1),
        TypeError,
        ["'indices'", "int64", "uint8"],
    ),
    (
        lambda: ops.max_pool2d_backward(Y, IDX.astype(np.int32), X.shape, 3, 2, 1),
        TypeError,
        ["'indices'", "int32", "uint8"],
    ),
    (
        lambda: ops.max_pool2d_backward(Y, IDX.astype(np.float32), X.shape, 3, 2, 1),
        TypeError,
        ["'indices'", "float32"],
    ),
    (
        lambda: ops.max_pool2d_backward(Y, IDX.tolist(), X.shape, 3, 2, 1),
        TypeError,
        ["'indices'", "NumPy array"],
    ),
    (
        lambda: ops.max_pool2d_backward(
            np.zeros((1, 1, 1, 1)), np.zeros((1, 1, 1, 1), np.uint8), (1, 1, 17, 17), 17
        ),
        TypeError,
        ["'indices'", "int32", "17x17"],
    ),
    (
        lambda: ops.max_pool2d_backward(Y.astype(np.int32), IDX, X.shape, 3, 2, 1),
        TypeError,
        ["'dy'", "int32"],
    ),
    (
        lambda: ops.max_pool2d_backward(Y, _out_of_range(), X.shape, 3, 2, 1),
        ValueError,
        ["indices out of range", "1 of 18", "< 9"],
    ),
    (
        lambda: ops.max_pool2d_backward(Y, _into_padding(), X.shape, 3, 2, 1),
        ValueError,
        ["indices out of range", "padding"],
    ),
    (
        lambda: ops.max_pool2d_backward(Y, IDX, (1, 2, 6), 3, 2, 1),
        TypeError,
        ["x_shape", "4 ints"],
    ),
    (lambda: ops.max_pool2d_backward(Y, IDX, 6, 3, 2, 1), TypeError, ["x_shape"]),
    (
        lambda: ops.avg_pool2d_backward(Y, (1, 2, -6, 6), 3, 2, 1),
        ValueError,
        ["x_shape", "negative"],
    ),
    (
        lambda: ops.avg_pool2d_backward(Y, (1, 2, 0, 6), 3, 2, 1),
        ValueError,
        ["x_shape", "height"],
    ),
    (
        lambda: ops.avg_pool2d_backward(Y, (2, 2, 6, 6), 3, 2, 1),
        ValueError,
        ["avg_pool2d_backward", "'dy'", "(2, 2, 3, 3)"],
    ),
    (
        lambda: ops.avg_pool2d_backward(Y.astype(np.float16), X.shape, 3, 2, 1),
        TypeError,
        ["'dy'", "float16"],
    ),
    (
        lambda: ops.avg_pool2d_backward(Y, X.shape, 3, 2, 2),
        ValueError,
        ["padding", "half"],
    ),
]


@pytest.mark.parametrize(("call", "exc", "words"), BAD_CALLS)
def test_bad_input(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for word in words:
        assert word in str(info.value), (word, str(info.value))


# ------------------------------------------------------------------------------------------------
# Properties (hypothesis, marker property): any draw of shapes, layouts and arguments
# against the float64 twin.


# ------------------------------------------------------------------------------------------------
# Pooling


@dataclass
class PoolCase:
    n: int
    c: int
    h: int
    w: int
    kernel: tuple[int, int]
    stride: tuple[int, int] | None  # None: the kernel size
    padding: tuple[int, int]

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c, self.h, self.w)

    @property
    def y_shape(self) -> tuple[int, int, int, int]:
        (r, s), (ph, pw) = self.kernel, self.padding
        sh, sw = self.kernel if self.stride is None else self.stride
        return (self.n, self.c, (self.h + 2 * ph - r) // sh + 1, (self.w + 2 * pw - s) // sw + 1)

    def args(self, draw: Draw) -> tuple[object, object, object]:
        stride = None if self.stride is None else int_param(draw, self.stride)
        return int_param(draw, self.kernel), stride, int_param(draw, self.padding)

    def plain(self) -> tuple[object, object, object]:
        return self.kernel, self.stride, self.padding


@st.composite
def pool_cases(draw: Draw) -> PoolCase:
    if draw(st.integers(0, 9)) == 0:  # more than 256 window positions: int32 indices
        r, s = draw(st.sampled_from([(17, 16), (16, 17), (1, 257), (20, 20)]))
    else:
        r, s = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    ph, pw = draw(st.integers(0, r // 2)), draw(st.integers(0, s // 2))

    def stride() -> int:
        return draw(st.one_of(st.integers(1, 4), st.sampled_from(HUGE_STRIDES)))

    strides = None if draw(st.integers(0, 4)) == 0 else (stride(), stride())
    h = draw(st.integers(max(1, r - 2 * ph), max(1, r - 2 * ph) + 12))
    w = draw(st.integers(max(1, s - 2 * pw), max(1, s - 2 * pw) + 12))
    case = PoolCase(draw(sizes(0, 3)), draw(sizes(0, 3)), h, w, (r, s), strides, (ph, pw))
    note(f"pool case {case}")
    return case


def pool_values(
    draw: Draw, rng: np.random.Generator, shape: Sequence[int], dtype: type
) -> np.ndarray:
    """Distinct values, or many ties (the first maximum must win), or a few levels."""
    kind = draw(st.sampled_from(["normal", "ties", "levels"]))
    x = rng.standard_normal(tuple(shape))
    if kind == "ties":
        x = np.round(x)
    elif kind == "levels":
        x = rng.integers(-1, 2, size=tuple(shape)).astype(F64)
    return x.astype(dtype)


@pytest.mark.property
@given(st.data())
def test_max_pool2d_matches_twin_exactly(data: st.DataObject) -> None:
    draw = data.draw
    isa, dtype, rng = common(draw)
    case = draw(pool_cases())
    x = operand(draw, pool_values(draw, rng, case.x_shape, dtype))
    with simdnn.use_isa(isa):
        y, idx = ops.max_pool2d(x, *case.args(draw))
    want_y, want_idx = reference.max_pool2d(np.array(x), *case.plain())
    assert y.dtype == np.dtype(dtype)
    assert y.shape == idx.shape == case.y_shape
    assert idx.dtype == want_idx.dtype == (np.uint8 if np.prod(case.kernel) <= 256 else np.int32)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(idx, want_idx)


@pytest.mark.property
@given(st.data())
def test_max_pool2d_backward_matches_twin(data: st.DataObject) -> None:
    draw = data.draw
    isa, dtype, rng = common(draw)
    case = draw(pool_cases())
    x = pool_values(draw, rng, case.x_shape, dtype)
    _, idx = reference.max_pool2d(x, *case.plain())
    dy = operand(draw, normal(rng, case.y_shape, dtype))
    idx_in = operand(draw, idx, exotic=False)
    x_shape = tuple(int_like(draw, v) for v in case.x_shape)
    with simdnn.use_isa(isa):
        dx = ops.max_pool2d_backward(dy, idx_in, x_shape, *case.args(draw))
    want = reference.max_pool2d_backward(f64(dy), idx, case.x_shape, *case.plain())
    mag = reference.max_pool2d_backward(np.abs(f64(dy)), idx, case.x_shape, *case.plain())
    assert_bounded(dx, want, mag, int(np.prod(case.kernel)), dtype, "max_pool2d_backward")


@pytest.mark.property
@given(st.data())
def test_avg_pool2d_matches_twin(data: st.DataObject) -> None:
    draw = data.draw
    isa, dtype, rng = common(draw)
    case = draw(pool_cases())
    x = operand(draw, normal(rng, case.x_shape, dtype))
    cip = draw(FLAGS)
    with simdnn.use_isa(isa):
        y = ops.avg_pool2d(x, *case.args(draw), cip)
    want = reference.avg_pool2d(f64(x), *case.plain(), bool(cip))
    mag = reference.avg_pool2d(np.abs(f64(x)), *case.plain(), bool(cip))
    assert_bounded(y, want, mag, int(np.prod(case.kernel)), dtype, "avg_pool2d")


@pytest.mark.property
@given(st.data())
def test_avg_pool2d_backward_matches_twin(data: st.DataObject) -> None:
    draw = data.draw
    isa, dtype, rng = common(draw)
    case = draw(pool_cases())
    dy = operand(draw, normal(rng, case.y_shape, dtype))
    cip = draw(FLAGS)
    x_shape = tuple(int_like(draw, v) for v in case.x_shape)
    with simdnn.use_isa(isa):
        dx = ops.avg_pool2d_backward(dy, x_shape, *case.args(draw), cip)
    want = reference.avg_pool2d_backward(f64(dy), case.x_shape, *case.plain(), bool(cip))
    mag = reference.avg_pool2d_backward(np.abs(f64(dy)), case.x_shape, *case.plain(), bool(cip))
    assert_bounded(dx, want, mag, int(np.prod(case.kernel)), dtype, "avg_pool2d_backward")


@st.composite
def bad_pool_calls(draw: Draw) -> tuple[str, Callable[[], object], type[Exception]]:
    """A small valid call of one of the four pooling passes with one thing wrong."""
    pass_ = draw(st.sampled_from(["max", "max_backward", "avg", "avg_backward"]))
    dtype = draw(st.sampled_from(DTYPES))
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    r, s = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    h, w = draw(st.integers(r, 7)), draw(st.integers(s, 7))
    kernel: Any = (r, s)
    stride: Any = None
    padding: Any = 0
    x_shape: Any = (n, c, h, w)
    x_dtype: Any = dtype
    exc: type[Exception] = ValueError
    choices = ["kernel_low", "stride_low", "padding_low", "padding_half", "too_big", "empty_x"]
    choices += ["not_int", "huge"]
    if pass_.endswith("backward"):
        choices += ["dy_shape", "dy_dtype", "shape_arg"]
    else:
        choices += ["ndim", "dtype"]
    if pass_ == "max_backward":
        choices += ["idx_dtype", "idx_shape", "idx_range", "idx_padding", "idx_list"]
    bad = draw(st.sampled_from(choices))
    dy_shape: Any = None
    dy_dtype: Any = dtype
    idx_fix: Callable[[np.ndarray], Any] = lambda i: i  # noqa: E731
    if bad == "kernel_low":
        kernel = draw(st.sampled_from([0, -1, (r, 0), [0, s], (-(2**40), s)]))
    elif bad == "stride_low":
        stride = draw(st.sampled_from([0, -1, (1, 0), [0, 2]]))
    elif bad == "padding_low":
        padding = draw(st.sampled_from([-1, (0, -1), [-1, 0]]))
    elif bad == "padding_half":  # at most half the kernel, as in PyTorch
        padding = draw(st.sampled_from([(r // 2 + 1, 0), (0, s // 2 + 1)]))
        x_shape = (n, c, h + 4, w + 4)
    elif bad == "too_big":  # the output would be empty
        kernel = draw(st.sampled_from([(h + 1, s), (r, w + 1)]))
    elif bad == "empty_x":
        x_shape = draw(st.sampled_from([(n, c, 0, w), (n, c, h, 0)]))
    elif bad == "not_int":
        which = draw(st.sampled_from(["kernel", "stride", "padding"]))
        v = draw(NOT_INTS)
        v = 1.5 if v is None and which == "stride" else v  # stride=None is the kernel size
        kernel, stride, padding = (
            v if which == "kernel" else kernel,
            v if which == "stride" else stride,
            v if which == "padding" else padding,
        )
        exc = TypeError
    elif bad == "huge":
        which = draw(st.sampled_from(["kernel", "stride", "padding"]))
        v = draw(st.sampled_from(HUGE_INTS))
        if which == "stride" and v < 2**63:
            v = -v if v > 0 else v  # a huge positive stride is valid
        v = draw(st.sampled_from([v, (1, v), (v, 1)]))
        kernel, stride, padding = (
            v if which == "kernel" else kernel,
            v if which == "stride" else stride,
            v if which == "padding" else padding,
        )
    elif bad == "ndim":
        x_shape = draw(st.sampled_from([(c, h, w), (h, w), (n, c, h, w, 1)]))
    elif bad == "dtype":
        x_dtype, exc = draw(BAD_DTYPES), TypeError
    elif bad == "dy_shape":
        dy_shape = draw(st.sampled_from(["grow", "ndim"]))
    elif bad == "dy_dtype":
        dy_dtype, exc = draw(BAD_DTYPES), TypeError
    elif bad == "shape_arg":
        x_shape, exc = draw(
            st.sampled_from(
                [
                    ((n, c, h), TypeError),
                    ((n, c, h, float(w)), TypeError),
                    ((n, -c, h, w), ValueError),
                    (h, TypeError),
                    (None, TypeError),
                ]
            )
        )
    elif bad == "idx_dtype":
        wrong = [np.int64, np.float32, np.int16, np.uint16]
        wrong.append(np.int32 if r * s <= 256 else np.uint8)
        dt = draw(st.sampled_from(wrong))
        idx_fix, exc = (lambda i: i.astype(dt)), TypeError
    elif bad == "idx_shape":
        idx_fix = lambda i: i[:, :, :-1] if i.shape[2] > 1 else i[:, :1, :, :, None]  # noqa: E731
    elif bad == "idx_range":
        idx_fix = lambda i: np.full_like(i, r * s)  # noqa: E731
    elif bad == "idx_padding":
        padding = (r // 2, s // 2)
        if padding == (0, 0):
            idx_fix = lambda i: np.full_like(i, r * s)  # noqa: E731
        else:
            idx_fix = lambda i: np.zeros_like(i)  # noqa: E731 (the first window's (0, 0) is padding)
    elif bad == "idx_list":
        idx_fix, exc = (lambda i: i.tolist()), TypeError

    what = f"{pass_}: {bad} x_shape={x_shape} kernel={kernel} stride={stride} padding={padding}"
    if pass_ in ("max", "avg"):
        x = np.ones(x_shape, x_dtype)
        if pass_ == "max":
            return what, lambda: ops.max_pool2d(x, kernel, stride, padding), exc
        return what, lambda: ops.avg_pool2d(x, kernel, stride, padding), exc
    # Backward passes: dy (and indices) of the valid forward output of a valid geometry.
    geom_k = (r, s)
    geom_pad = padding if bad in ("idx_padding",) else 0
    valid_shape = (n, c, h, w)
    y, idx = reference.max_pool2d(np.ones(valid_shape), geom_k, None, geom_pad)
    dy = y.astype(dy_dtype)
    if dy_shape == "grow":
        dy = np.ones((n, c, y.shape[2] + 1, y.shape[3]), dtype)
    elif dy_shape == "ndim":
        dy = np.ones(y.shape[1:], dtype)
    if pass_ == "max_backward":
        indices = idx_fix(idx)
        return (
            what,
            lambda: ops.max_pool2d_backward(dy, indices, x_shape, kernel, stride, padding),
            exc,
        )
    return what, lambda: ops.avg_pool2d_backward(dy, x_shape, kernel, stride, padding), exc


@pytest.mark.property
@given(st.data())
def test_pool_rejects_bad_input(data: st.DataObject) -> None:
    what, call, exc = data.draw(bad_pool_calls())
    with simdnn.use_isa(data.draw(st.sampled_from(ISAS))):
        assert_raises_bad_input(call, exc, what)


# ------------------------------------------------------------------------------------------------
# Regressions (marker regression): one reproducer per bug found, named after it.


@pytest.mark.regression
def test_pool_huge_x_shape_is_refused_not_wrapped():
    dy = np.ones((0, 1, 1, 1), np.float32)
    with pytest.raises(ValueError, match="too large to pad"):
        ops.avg_pool2d_backward(dy, (0, 1, 2**63 - 1, 1), 3, 2**62, 1)


# ------------------------------------------------------------------------------------------------
# Non-finite values (marker nonfinite): NaN, +Inf, -Inf and zeros sprinkled into every
# input; the class of each element must be the twin's.


POOL_CASES = [
    # n, c, h, w, kernel, stride, padding
    (1, 1, 4, 4, 2, None, 0),
    (2, 3, 17, 35, 2, 2, 0),
    (2, 2, 15, 33, 3, 2, 1),
    (1, 3, 9, 40, (2, 3), 1, (1, 1)),
    (1, 2, 12, 19, 4, 3, 2),
    (1, 1, 20, 20, (17, 16), 1, 0),  # int32 indices
]


@pytest.mark.nonfinite
@pytest.mark.usefixtures("quiet_numpy")
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_pooling_non_finite(isa, dtype, rng, case):
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


@pytest.mark.nonfinite
@pytest.mark.usefixtures("quiet_numpy")
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


# ------------------------------------------------------------------------------------------------
# Limits: tensors past 2**31 elements (marker large) and workspaces that cannot be
# allocated.


@pytest.mark.large
def test_max_pool2d_input_past_2_31_elements(each_isa) -> None:
    # 2x2 max-pooling of one 65536 x 32769 plane (2**31 + 65536 elements; odd W leaves a column
    # out, as floor mode does). Rows past 2**31 are checked against the reference on slices. One
    # pair of outputs for every ISA (out=), refilled before each call, so that it faults in once.
    h, w = 65536, 32769
    need_memory(h * w * 4 * 5 // 4)
    rng = np.random.default_rng(4)
    x = np.empty((1, 1, h, w), dtype=np.float32)
    np.add(
        rng.standard_normal(h).astype(np.float32)[:, None],
        rng.standard_normal(w).astype(np.float32)[None, :],
        out=x[0, 0],
    )
    rows = [0, BIG // w - 8, h - 16]
    wants = [reference.max_pool2d(x[:, :, row0 : row0 + 16], 2) for row0 in rows]
    y = np.empty((1, 1, h // 2, w // 2), np.float32)
    idx = np.empty(y.shape, np.uint8)
    for isa in each_isa():
        y.fill(np.nan)
        idx.fill(255)
        got_y, got_idx = ops.max_pool2d(x, 2, out=(y, idx))
        assert got_y is y
        assert got_idx is idx
        for row0, (want_y, want_idx) in zip(rows, wants):
            got = np.s_[:, :, row0 // 2 : row0 // 2 + 8]
            np.testing.assert_array_equal(y[got], want_y, err_msg=f"{isa} {row0}")
            np.testing.assert_array_equal(idx[got], want_idx, err_msg=f"{isa} {row0}")
    del x, y, idx
