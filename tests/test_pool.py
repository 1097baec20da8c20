"""simdnn.ops pooling (max and average, forward and backward) against the NumPy twins, on every
ISA, in float32 and float64; the twins against a plain loop oracle; gradients against finite
differences; PyTorch's max-pool semantics (ties, NaN, -inf); threads, strides and bad input."""

from __future__ import annotations

import numpy as np
import pytest

import simdnn
from simdnn import bench, ops, reference

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
    ((1, 1, 12, 50), 4, 3, 2),  # stride 3: gathers
    ((1, 1, 9, 40), (2, 5), (3, 4), (1, 2)),
    ((1, 1, 10, 37), (3, 4), None, (1, 2)),  # stride > kernel in neither; = kernel
    ((1, 1, 13, 45), (2, 2), (3, 3), 1),  # stride > kernel: gaps no window covers
    ((2, 1, 5, 7), 2, (2**62, 1), 1),  # a stride no product of which may overflow
    ((1, 2, 6, 5), 3, (1, 2**63 - 1), 1),
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
