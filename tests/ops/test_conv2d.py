"""simdnn.ops convolutions against their NumPy twins, finite differences and equivariance.

Shape legend: x (N, C, H, W), w (K, C/groups, R, S), b (K,), y (N, K, P, Q).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

import simdnn
from helpers import BIG, F64, ISAS, as64, assert_same_classes, need_memory, sprinkle
from simdnn import ops, reference
from strategies import (
    BAD_DTYPES,
    DTYPES,
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
    # Depthwise: rows wider than 4 vectors, column strides 2-3 (the phase-split plane) with
    # dilation, 2x5 (taps 8 + 2), 7x7 (8 * 6 + 1), 1x1.
    (2, 5, 9, 70, 5, 3, 3, 1, 1, 1, 5),
    (1, 3, 11, 37, 3, 3, 3, (1, 3), (2, 1), (1, 2), 3),
    (2, 4, 12, 33, 4, 2, 5, 2, (0, 3), (2, 1), 4),
    (1, 6, 7, 19, 6, 1, 1, 2, 0, 1, 6),
    (1, 2, 20, 21, 2, 7, 7, 2, 3, 1, 2),
    # Depthwise with channels in the lanes (a block of W channels of one image transposed into
    # padded pixels): a full block and a 1-channel tail, 7x7/s2 on 4-wide rows (rows in pairs),
    # padding wider than the taps, mixed strides and dilations, 2x2 dilated (its flipped
    # backward-data padded 1) and 1x1 with padding 2 (the flipped one crops).
    (2, 17, 7, 7, 17, 3, 3, 1, 1, 1, 17),
    (1, 33, 14, 14, 33, 7, 7, 2, 0, 1, 33),
    (2, 16, 9, 11, 16, 5, 5, 1, 3, 1, 16),
    (1, 24, 10, 10, 24, 3, 3, (2, 1), (1, 0), (2, 1), 24),
    (2, 18, 6, 5, 18, 2, 2, 1, 1, 2, 18),
    (1, 16, 3, 3, 16, 1, 1, 1, 2, 1, 16),
    # ... and its strided backward-data (per column phase, taps over a dy row padded both ends):
    # stride 3 with dilation and padding unequal per axis, and 4x4/s2 with padding 3.
    (2, 16, 11, 13, 16, 3, 5, 3, (1, 2), (1, 2), 16),
    (1, 20, 12, 9, 20, 4, 4, 2, 3, 1, 20),
    # Backward-data's col2im, gather form (unit column stride and dilation): rows of one column
    # (each store spills into the rows below), rows of several vectors with a partial last one
    # and a row dilation; rows wider than its tables (S x 88 blocks of 16) take the scatter form.
    (2, 3, 6, 1, 4, 3, 1, 1, (1, 0), 1, 1),
    (2, 3, 4, 45, 5, 2, 7, 1, (1, 3), (2, 1), 1),
    (1, 2, 3, 1400, 2, 2, 3, 1, 1, 1, 1),
    # ... the same with column stride 2 (even and odd columns as two streams, interleaved on the
    # store): one column; odd widths with padding 1-3 and a column dilation; 1400 columns (44
    # blocks of 32, in the tables) and 3000 (the scatter form). Column dilation 2 at stride 1.
    (2, 3, 6, 1, 4, 3, 1, 2, (1, 0), 1, 1),
    (2, 3, 5, 45, 5, 2, 7, 2, (1, 3), (2, 2), 1),
    (2, 4, 7, 33, 3, 3, 4, (1, 2), (2, 1), 1, 1),
    (1, 2, 3, 1400, 2, 2, 3, 2, 1, 1, 1),
    (1, 2, 3, 3000, 2, 2, 3, (1, 2), 1, 1, 1),
    (2, 3, 6, 20, 4, 3, 3, 1, 2, (1, 2), 1),
    # Backward-weights' direct kernel (C/G*R*S <= 32, a batch of at least one image per thread):
    # LeNet's first layer; stride 2 with padding, 7 filters (a partial filter block) and 9 taps
    # (5 + 4); a dilated, column-strided 2x4; a 1x7 row (5 + 2 taps) with padding.
    (4, 1, 28, 28, 20, 5, 5, 1, 0, 1, 1),
    (3, 3, 17, 19, 7, 3, 3, 2, 1, 1, 1),
    (3, 2, 15, 20, 5, 2, 4, (1, 2), (2, 1), (2, 1), 1),
    (3, 1, 9, 12, 3, 1, 7, 1, (0, 3), 1, 1),
    # ... with groups: one input channel and 2 filters a group; 2 channels and 3 filters.
    (3, 4, 17, 19, 8, 3, 3, 2, 1, 1, 4),
    (2, 6, 12, 21, 9, 2, 3, 1, (1, 0), 1, 3),
    # ... and 16 filters over 36 reduction rows (the filter bound, not the row bound).
    (2, 4, 15, 18, 16, 3, 3, 1, 1, 1, 1),
    # ... on rows under whole vectors: 9-pixel rows of 11-wide padded planes, and row dilation
    # 2 on 14-wide ones; 3 filters over 64 channels 7x7 (602 KB of float32 sums on AVX-512:
    # direct where the core's L2 holds them, where the channels-in-lanes form does not take it).
    (2, 3, 9, 9, 5, 3, 3, 1, 1, 1, 1),
    (2, 4, 13, 12, 6, 3, 3, 1, (2, 1), (2, 1), 1),
    (2, 64, 14, 14, 3, 7, 7, 1, 0, 1, 1),
    # Backward-weights with the input channels in the lanes (rows under half a vector, or
    # channel vectors at least 3/4 full): 20 channels (a partial channel vector) and 12 filters
    # on 3-wide rows; 16 channels and 9 filters (a partial filter block) a group, 2x2/s2; a
    # dilated 3x2 with row padding only (5-wide rows); 3x3/s8 on 56x56 planes, whose copies take
    # several chunks a task; on long rows, 16 channels and 10 filters 4x4 p3, 24 channels (3/4
    # of two AVX-512 float vectors) and 8 filters 5x5, and 2 groups of 16 channels and 20 filters.
    (3, 20, 7, 6, 12, 3, 3, 2, 1, 1, 1),
    (2, 32, 5, 5, 18, 2, 2, 2, 1, 1, 2),
    (2, 8, 9, 8, 7, 3, 2, 1, (2, 0), (2, 3), 1),
    (8, 16, 56, 56, 4, 3, 3, 8, 1, 1, 1),
    (2, 16, 12, 13, 10, 4, 4, 1, 3, 1, 1),
    (2, 24, 9, 9, 8, 5, 5, 1, 2, 1, 1),
    (2, 32, 10, 11, 40, 3, 3, 1, 1, 1, 2),
    # ... and at stride 1 with 32 registers up to 128 filters where a thread has 384 pixels or
    # more: 100 filters (a partial last block), two 16x15 images a thread on two threads.
    (4, 16, 16, 15, 100, 3, 3, 1, 1, 1, 1),
    # Backward-data as the flipped convolution with 8 input channels a group: 8 filters, the
    # direct forward's case; one group, and two groups with dilation.
    (2, 8, 11, 13, 16, 3, 3, 1, 1, 1, 1),
    (2, 16, 12, 14, 8, 3, 3, 1, 2, 2, 2),
    # Dense layers with at most 24 filters on output rows under half a vector: filters in the
    # lanes (one vector of filters per pixel). 16 filters over 7-wide rows (the flipped
    # backward-data of the first), 17 (a partial second block) on 2-wide rows at stride 2, a
    # dilated 2x2, one output column, and 40 channels 5x5/s2.
    (3, 16, 7, 7, 16, 4, 4, 1, 2, 1, 1),
    (2, 5, 5, 3, 17, 3, 3, 2, 1, 1, 1),
    (2, 7, 4, 4, 9, 2, 2, 1, 1, 2, 1),
    (1, 3, 3, 2, 5, 3, 2, 1, (1, 0), 1, 1),
    (2, 40, 11, 11, 8, 5, 5, 2, 1, 1, 1),
    # ... and grouped, blocks never straddling two groups: 6 filters a group on 7-wide rows, 17
    # (a full and a 1-filter block a group) at stride 2, and 7x7/s2 with 8 filters a group.
    (2, 8, 7, 7, 12, 3, 3, 1, 1, 1, 2),
    (2, 12, 5, 5, 51, 3, 3, 2, 1, 1, 3),
    (2, 16, 7, 7, 32, 7, 7, 2, 1, 1, 4),
    # ... two filter blocks a task where a group has them: 40 filters (a pair and a partial
    # block; at stride 2 on 3-wide rows, the AVX2 case too), 33 a group in 2 groups (a pair and
    # a 1-filter block), and 64 filters, the bound.
    (2, 6, 6, 6, 40, 3, 3, 1, 1, 1, 1),
    (2, 6, 5, 5, 40, 3, 3, 2, 1, 1, 1),
    (1, 4, 5, 7, 66, 2, 3, 1, 1, 1, 2),
    (1, 3, 4, 4, 64, 3, 3, 1, 1, 1, 1),
    # Backward-data by col2im where the flipped convolution would qualify (stride 1, a little
    # border) but has twice as many filters as channels, at the bound of 32.
    (2, 8, 7, 9, 32, 3, 3, 1, 1, 1, 1),
    # 1x1 layers, whose input the GEMM reads in place (64 channels or more before the bias row),
    # and a 32x32 plane (rows of 4 KiB: packed instead).
    (2, 70, 9, 11, 24, 1, 1, 1, 0, 1, 1),
    (1, 64, 32, 32, 16, 1, 1, 1, 0, 1, 1),
    # Grouped 1x1 layers with few filters a group, read in place by the direct forward: 3 filters
    # a group on 99-pixel planes (a partial last vector, from the zero-padded copy), 8 (one full
    # block) on 576 pixels (two runs of pixels an image). Dense 1x1 with 5 filters: the in-place
    # direct backward-weights (the channels as its taps), also with a 1-pixel plane.
    (2, 24, 9, 11, 12, 1, 1, 1, 0, 1, 4),
    (2, 16, 24, 24, 16, 1, 1, 1, 0, 1, 2),
    (2, 40, 17, 13, 5, 1, 1, 1, 0, 1, 1),
    (3, 9, 1, 1, 6, 1, 1, 1, 0, 1, 3),
    # The direct forward's flat form (rows end to end at the padded width) where rows fill their
    # vectors poorly: 17-pixel rows of 11 filters (blocks 8 + 3), 8-pixel rows (one vector of 16
    # at float32), and 18-pixel rows with groups and a column dilation.
    (2, 5, 14, 14, 11, 4, 4, 1, 3, 1, 1),
    (3, 6, 14, 14, 3, 7, 7, 1, 0, 1, 1),
    (2, 16, 12, 22, 6, 3, 3, 1, 0, (1, 2), 2),
]
# Kernel rows that read only padding rows, which the direct forward's row, flat and lanes forms skip
# (live_taps): the flat form with dilated rows and padding 5, so that the first and last output
# rows reach no image row (their outputs are the bias); the row form at stride 2 with padding 3
# (the first output row reaches none), and dilated 3 with padding 4 at the top only; the
# filters-in-lanes form on 5-pixel rows with padding 3 (two rows reaching no image row).
DEAD_ROW_CASES = [
    (2, 8, 10, 10, 5, 3, 3, 1, (5, 1), (2, 1), 1),
    (2, 3, 11, 20, 7, 3, 3, 2, (3, 1), 1, 1),
    (2, 4, 9, 18, 6, 3, 3, 1, (4, 0), (3, 1), 1),
    (2, 5, 4, 5, 9, 3, 3, 1, (3, 1), 1, 1),
]
CASES += DEAD_ROW_CASES


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


# The forward's window form of im2col (AVX-512): more than 24 filters a group (the implicit GEMM)
# on planes whose vectors span output rows. Padded planes read partial windows at the first and
# last planes; a 7x7 kernel on a 5x6 plane has taps wholly on padding; stride 2 mixes window and
# vector panels; 12x12 (144 taps) is beyond the window table and takes the vector form.
WINDOW_CASES = [
    (2, 7, 9, 11, 30, 3, 3, 1, 1, 1, 1),
    (1, 3, 5, 6, 29, 7, 7, 1, 3, 1, 1),
    (2, 4, 13, 7, 33, 3, 3, 2, 1, 1, 1),
    (1, 5, 10, 9, 27, 3, 3, 1, 2, 2, 1),
    (2, 8, 8, 8, 52, 3, 3, 1, 1, 1, 2),
    (1, 2, 14, 14, 26, 12, 12, 1, 0, 1, 1),
    # Backward-weights' window form: unpadded, rows shorter than a vector, stride 2 down.
    (3, 6, 15, 9, 40, 3, 3, (2, 1), 0, 1, 1),
]
ALL_CASES = CASES + WINDOW_CASES + random_cases(16, seed=3)


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


def _out_like(shape: tuple[int, ...], dtype: type, layout: str) -> np.ndarray:
    """A NaN-filled output of `shape` laid out as `layout`: C order, every other element of a
    wider array, or Fortran order."""
    if layout == "strided":
        return np.full((*shape[:-1], 2 * shape[-1]), np.nan, dtype)[..., ::2]
    return np.full(shape, np.nan, dtype, order="F" if layout == "fortran" else "C")


@pytest.mark.parametrize("algorithm", ["direct", "winograd"])
@pytest.mark.parametrize("layout", ["contiguous", "strided", "fortran", "overlaps x"])
def test_conv2d_out(isa, dtype, rng, layout, algorithm):
    """out= receives a plain call's result, bit for bit, and is returned; its NaN contents are
    never read. An out the kernel cannot write itself (not C-contiguous, or overlapping x: a 3x3
    padded layer with K == C keeps x's shape, and out starts one image after x in one buffer, so
    writing image 0's output in place would overwrite image 1's input) gets the same result,
    computed aside."""
    x = rng.standard_normal((3, 8, 9, 7)).astype(dtype)
    w = rng.standard_normal((8, 8, 3, 3)).astype(dtype)
    b = rng.standard_normal(8).astype(dtype)
    want = ops.conv2d(x, w, b, padding=1, algorithm=algorithm)
    twin_out = np.full(want.shape, np.nan, dtype)
    assert reference.conv2d(x, w, b, padding=1, algorithm=algorithm, out=twin_out) is twin_out
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(twin_out, want, rtol=tol, atol=tol)
    if layout == "overlaps x":
        buf = np.empty((x.shape[0] + 1, *x.shape[1:]), dtype)
        buf[:-1] = x
        x, out = buf[:-1], buf[1:]
    else:
        out = _out_like(want.shape, dtype, layout)
    got = ops.conv2d(x, w, b, padding=1, algorithm=algorithm, out=out)
    assert got is out
    np.testing.assert_array_equal(got, want)


def test_conv2d_out_of_an_empty_result(isa):
    out = np.full((0, 4, 5, 5), np.nan, np.float32)
    x, w = np.ones((0, 3, 5, 5), np.float32), np.ones((4, 3, 1, 1), np.float32)
    assert ops.conv2d(x, w, out=out) is out
    out = np.full((2, 0, 5, 5), np.nan, np.float32)
    assert ops.conv2d(np.ones((2, 3, 5, 5), np.float32), w[:0], out=out) is out


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


# The filters-in-lanes forward on wide rows (direct_forward_lanes, forced): runs of NQ pixels of
# a row and strips of NQ rows for the columns past the last run; tasks of one to four blocks of W
# filters (AVX-512: up to four a task, runs of 6 pixels for three and four, 12 for one and two;
# AVX2: up to two, runs of 6), the last block partial, and 100 filters in tasks of four and
# three; strides 1 and 2 (compiled in) and 3, padding, dilation, groups; rows of exactly one run
# and of runs plus a column, and strips past the last whole one (23 rows: 5 left of runs of 6,
# 11 of 12); a padded 1x1 layer (the unpadded one takes the pointwise form); and, as
# backward-data's flipped convolution, both passes.
LANES_WIDE_CASES = [
    (1, 6, 14, 30, 100, 3, 3, 1, 1, 1, 1),
    (2, 5, 17, 13, 37, 3, 2, 1, 1, 1, 1),
    (3, 7, 30, 29, 16, 5, 5, 2, 2, 1, 1),
    (1, 3, 9, 40, 50, 3, 3, 1, 1, 1, 1),
    (2, 6, 20, 31, 12, 3, 3, 3, 1, 1, 2),
    (2, 4, 16, 28, 32, 3, 3, (1, 2), 2, 2, 1),
    (4, 24, 27, 27, 32, 3, 3, 2, 0, 1, 1),
    (1, 2, 12, 12, 8, 1, 1, 1, 1, 1, 1),
    (2, 3, 7, 14, 5, 2, 2, 1, 1, 1, 1),
    (1, 3, 23, 17, 64, 3, 3, 1, 1, 1, 1),
]


@pytest.mark.parametrize("case", LANES_WIDE_CASES, ids=case_id)
def test_lanes_forward_on_wide_rows(isa, dtype, rng, threads, case):
    """Forced wide lanes against the twin on 1-3 threads, same bits on each (every output is one
    task's), and backward-data (the flipped convolution where it is one) likewise. Where lanes
    exist (not scalar), forcing the form must change the bits of a layer that otherwise takes the
    implicit GEMM (more than 24 filters a group), which adds the bias last: the hook reached the
    kernel."""
    x, w, b, kw = setup(case, dtype, rng)
    y0 = ops.conv2d(x, w, b, **kw)
    dy = rng.standard_normal(y0.shape).astype(dtype)
    runs = []
    simdnn._core._set_conv_lanes_wide(True)
    try:
        for nt in (1, 2, 3):
            simdnn.set_num_threads(nt)
            runs.append((ops.conv2d(x, w, b, **kw), ops.conv2d_backward_data(dy, w, x.shape, **kw)))
        simdnn._core._set_conv_lanes_wide(False)
        never = ops.conv2d(x, w, b, **kw)
    finally:
        simdnn._core._set_conv_lanes_wide(None)
    k_r_s = w.shape[1] * w.shape[2] * w.shape[3]
    assert_close(runs[0][0], reference.conv2d(x, w, b, **kw), dtype, scale=k_r_s**0.5)
    want_dx = reference.conv2d_backward_data(dy, w, x.shape, **kw)
    assert_close(runs[0][1], want_dx, dtype, scale=10)
    for y, dx in runs[1:]:
        np.testing.assert_array_equal(y, runs[0][0])
        np.testing.assert_array_equal(dx, runs[0][1])
    if isa != "scalar" and w.shape[0] // kw["groups"] > 24:
        assert not np.array_equal(never, runs[0][0])


@pytest.mark.parametrize("wide", [True, None])
def test_lanes_padding_survives_a_stale_workspace(isa, dtype, rng, wide):
    """The filters-in-lanes forward zeroes its padded copy's borders once per range of images and
    then copies only each image's interior. A first call leaves nonzero values all over the
    workspace (an unpadded layer on larger images); the padded layer after it, on one thread so
    that one range holds all six images (each of a different scale, so that a border left from
    any earlier image shows), matches the twin on narrow (7-pixel) and wide (20-pixel) rows."""
    simdnn.set_num_threads(1)
    simdnn._core._set_conv_lanes_wide(wide)
    try:
        big = rng.standard_normal((2, 48, 40, 40)).astype(dtype) + 5
        ops.conv2d(big, rng.standard_normal((32, 48, 3, 3)).astype(dtype), algorithm="direct")
        for hw, padding in ((7, 1), (20, 2), (7, (2, 0))):
            x = rng.standard_normal((6, 12, hw, hw)).astype(dtype)
            x *= np.arange(1, 7, dtype=dtype).reshape(6, 1, 1, 1) ** 2
            w = rng.standard_normal((32, 12, 3, 3)).astype(dtype)
            b = rng.standard_normal(32).astype(dtype)
            got = ops.conv2d(x, w, b, padding=padding, algorithm="direct")
            want = reference.conv2d(x, w, b, padding=padding)
            assert_close(got, want, dtype, scale=108**0.5)
    finally:
        simdnn._core._set_conv_lanes_wide(None)


def test_wide_lanes_leave_large_task_weights_to_the_gemm(isa, dtype, rng):
    """A task of the wide filters-in-lanes forward streams its weights from L2 on every run of
    pixels; past 640 KiB (or half the L2) the layer stays on the implicit GEMM. 3x3 320->96 p0
    14x14 N2 (a task of 64 float32 filters: 720 KiB of weights) must give the GEMM's bits, not
    the lanes' (which differ where lanes exist: forcing them changes the result)."""
    x = rng.standard_normal((2, 320, 14, 14)).astype(dtype)
    w = rng.standard_normal((96, 320, 3, 3)).astype(dtype)
    b = rng.standard_normal(96).astype(dtype)
    got = ops.conv2d(x, w, b, algorithm="direct")
    simdnn._core._set_conv_lanes_wide(False)
    try:
        gemm = ops.conv2d(x, w, b, algorithm="direct")
        simdnn._core._set_conv_lanes_wide(True)
        lanes = ops.conv2d(x, w, b, algorithm="direct")
    finally:
        simdnn._core._set_conv_lanes_wide(None)
    np.testing.assert_array_equal(got, gemm)
    if isa != "scalar":
        assert not np.array_equal(lanes, gemm)
    assert_close(got, reference.conv2d(x, w, b), dtype, scale=2880**0.5)


# Four-block tasks of the wide filters-in-lanes forward (AVX-512) against the implicit GEMM:
# (filters, C, kernel, padding, which path the rule picks). The lanes case is capped at 8
# vectors of filters, the most the form takes (64 in float64).
FOUR_BLOCK_CASES = [
    (64, 8, 2, 0, "gemm"),  # a 2x2 kernel with 64 filters
    (128, 3, 3, 1, "gemm"),  # more than 64 filters, 27 taps a filter
    (128, 3, 7, 3, "lanes"),  # more than 64 filters (float32), but a 7x7 kernel
]


@pytest.mark.parametrize("case", FOUR_BLOCK_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}x{c[2]}")
def test_four_block_lanes_leave_short_reductions_to_the_gemm(isa, dtype, rng, case):
    """With 32 registers a wide-lanes task takes four blocks of filters. On 2x2 kernels from 64
    filters on, and on 3x3 reductions under 216 past 64 filters, the GEMM won: those layers must
    give the GEMM's bits, a 7x7 kernel the lanes' (forcing either path changes the result), and
    every path the twin's answer."""
    filters, c, r, pad, want_path = case
    width = (64 if isa == "avx512" else 32) // np.dtype(dtype).itemsize
    k = min(filters, 8 * width) if want_path == "lanes" else filters
    x = rng.standard_normal((4, c, 16, 16)).astype(dtype)
    w = rng.standard_normal((k, c, r, r)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype)
    got = ops.conv2d(x, w, b, padding=pad, algorithm="direct")
    forced = {}
    try:
        for path, on in (("gemm", False), ("lanes", True)):
            simdnn._core._set_conv_lanes_wide(on)
            forced[path] = ops.conv2d(x, w, b, padding=pad, algorithm="direct")
    finally:
        simdnn._core._set_conv_lanes_wide(None)
    if isa == "avx512":  # the rule is for four-block tasks; AVX2's take two blocks
        np.testing.assert_array_equal(got, forced[want_path])
        assert not np.array_equal(forced["lanes"], forced["gemm"])
    want = reference.conv2d(x, w, b, padding=pad)
    for out in (got, *forced.values()):
        assert_close(out, want, dtype, scale=(c * r * r) ** 0.5)


# Column panels across images in the forward's implicit GEMM (span_images, forced on and off):
# planes of 49, 196, 132 (stride 2), 81 (two groups: the second group's channels start past 0),
# 64 (a multiple of every NR: the rule leaves it per image, forcing reaches it; 1x1 padded, not
# pointwise), 56 and 100 pixels; 2-9 images, so that panels across images fill one or several
# bands of the scratch; 630 reduction rows (K blocks added up in the scratch); a dilated layer;
# and backward-data, the flipped convolution where it is one.
SPAN_CASES = [
    (3, 5, 7, 7, 70, 3, 3, 1, 1, 1, 1),
    (4, 16, 14, 14, 30, 3, 3, 1, 1, 1, 1),
    (3, 6, 23, 21, 26, 3, 3, 2, 1, 1, 1),
    (3, 8, 9, 9, 52, 3, 3, 1, 1, 1, 2),
    (5, 4, 6, 6, 33, 1, 1, 1, 1, 1, 1),
    (9, 3, 6, 7, 25, 2, 2, 1, 1, 1, 1),
    (2, 70, 9, 9, 30, 3, 3, 1, 1, 1, 1),
    (3, 4, 14, 14, 27, 3, 3, 1, 2, 2, 1),
]


@pytest.mark.parametrize("case", SPAN_CASES, ids=case_id)
def test_panels_across_images(isa, dtype, rng, threads, case):
    """Panels across images and per image give the same bits (each output is the same FMAs in the
    same order), on 1-3 threads, forward and backward-data, and the twin's answer."""
    x, w, b, kw = setup(case, dtype, rng)
    dy = rng.standard_normal(reference.conv2d(x, w, b, **kw).shape).astype(dtype)
    runs = {}
    try:
        for span in (True, False):
            simdnn._core._set_conv_span_images(span)
            for nt in (1, 2, 3):
                simdnn.set_num_threads(nt)
                runs[span, nt] = (
                    ops.conv2d(x, w, b, algorithm="direct", **kw),
                    ops.conv2d_backward_data(dy, w, x.shape, algorithm="direct", **kw),
                )
    finally:
        simdnn._core._set_conv_span_images(None)
    k_r_s = w.shape[1] * w.shape[2] * w.shape[3]
    assert_close(runs[True, 1][0], reference.conv2d(x, w, b, **kw), dtype, scale=k_r_s**0.5)
    want_dx = reference.conv2d_backward_data(dy, w, x.shape, **kw)
    assert_close(runs[True, 1][1], want_dx, dtype, scale=10)
    for key, (y, dx) in runs.items():
        np.testing.assert_array_equal(y, runs[True, 1][0], err_msg=str(key))
        np.testing.assert_array_equal(dx, runs[True, 1][1], err_msg=str(key))


def test_panels_across_images_switch_reaches_the_gemm(isa, dtype, rng):
    """Forced on, the forward holds a scratch for the panels across images (of 66 filters x 100
    pixels, 17 images: 150 KiB for float32 with 32-wide panels) beside its packs; forced off, no
    scratch, and at most a few panels more of packed B: the switch decides which path runs, which
    the equal bits above cannot show."""
    simdnn.set_num_threads(1)
    x, w, b, kw = setup((17, 5, 10, 10, 66, 3, 3, 1, 1, 1, 1), dtype, rng)
    held = {}
    try:
        for span in (True, False):
            simdnn._core._set_conv_span_images(span)
            simdnn.empty_cache()
            ops.conv2d(x, w, b, algorithm="direct", **kw)
            held[span] = simdnn.cpu_info()["workspace_bytes"]
    finally:
        simdnn._core._set_conv_span_images(None)
    assert held[True] > held[False], held


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_grouped_pointwise_input_past_8_mib(isa, dtype, rng, bias):
    """Grouped 1x1 layers whose input is 8 MiB or more sum their channels through y, two at a
    time (an odd 15 a group here, so one alone at the end), in the order of the register blocks
    that smaller inputs take: the twin's answer, with a plane of P*Q = 23707 pixels whose last
    11 are not a whole vector."""
    x = rng.standard_normal((2, 45, 157, 151)).astype(dtype)
    assert x.nbytes >= 8 << 20
    w = rng.standard_normal((15, 15, 1, 1)).astype(dtype)
    b = rng.standard_normal(15).astype(dtype) if bias else None
    y = ops.conv2d(x, w, b, groups=3)
    assert_close(y, reference.conv2d(x, w, b, groups=3), dtype, scale=15**0.5)
    small = ops.conv2d(x[:1, :, :50], w, b, groups=3)
    np.testing.assert_array_equal(y[:1, :, :50], small)


@pytest.mark.parametrize(
    "case",
    [
        (1, 6, 23, 19, 5, 3, 3, 1, 1, 1, 1),
        (2, 4, 17, 40, 8, 5, 5, 2, 2, 1, 2),
        (3, 2, 9, 20, 3, 2, 3, (1, 3), (0, 1), (2, 1), 1),
        (1, 3, 30, 70, 7, 7, 7, 1, 3, 1, 1),
        # Blocks of 8 filters: 8 + 8 + 7, and 8 + 8 + 4 a group with stride 2.
        (2, 5, 13, 21, 23, 3, 3, 1, 1, 1, 1),
        (1, 4, 11, 37, 40, 5, 5, 2, 2, 1, 2),
        # A grouped 1x1 layer, 2 filters a group.
        (2, 12, 5, 20, 6, 1, 1, 1, 0, 1, 3),
        # The flat form on one image: its vectors split between threads.
        (1, 5, 14, 14, 11, 4, 4, 1, 3, 1, 1),
    ],
    ids=case_id,
)
def test_few_filters_direct_forward_any_thread_count(isa, dtype, rng, threads, case):
    """The direct forward (at most 24 filters a group, in blocks of 8): tasks of whole images or,
    below one image a thread, blocks of output rows; every output is one task's, so any thread
    count gives the same bits."""
    x, w, b, kw = setup(case, dtype, rng)
    runs = []
    for nt in (1, 2, 3):
        simdnn.set_num_threads(nt)
        runs.append(ops.conv2d(x, w, b, **kw))
    k_r_s = w.shape[1] * w.shape[2] * w.shape[3]
    assert_close(runs[0], reference.conv2d(x, w, b, **kw), dtype, scale=k_r_s**0.5)
    for other in runs[1:]:
        np.testing.assert_array_equal(other, runs[0])


@pytest.mark.parametrize(
    "case",
    [
        (1, 5, 34, 30, 6, 3, 3, 1, 1, 1, 1),
        (1, 12, 60, 40, 8, 4, 4, 2, 2, 1, 4),
        # Sums of more than 512 KiB (float32 on AVX-512): allowed for one image.
        (1, 48, 50, 50, 8, 5, 5, 2, 1, 1, 1),
    ],
    ids=case_id,
)
def test_direct_weights_of_one_image_any_thread_count(isa, dtype, rng, threads, case):
    """The direct backward-weights of one image on several threads: split by input channels,
    each weight summed by one task in the same order, so 2, 3 and 5 threads give the same bits.
    (One thread may take the GEMM: the last case's sums are allowed only when split.)"""
    x, w, _, kw = setup(case, dtype, rng)
    dy = rng.standard_normal(reference.conv2d(x, w, **kw).shape).astype(dtype)
    rdw, rdb = reference.conv2d_backward_weights(x, dy, w.shape, **kw)
    pixels = dy.shape[2] * dy.shape[3]
    runs = []
    for nt in (1, 2, 3, 5):
        simdnn.set_num_threads(nt)
        runs.append(ops.conv2d_backward_weights(x, dy, w.shape, **kw))
        assert_close(runs[-1][0], rdw, dtype, scale=pixels**0.5)
        assert_close(runs[-1][1], rdb, dtype, scale=pixels**0.5)
    for dw, db in runs[2:]:
        np.testing.assert_array_equal(dw, runs[1][0])
        np.testing.assert_array_equal(db, runs[1][1])


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


# ------------------------------------------------------------------------------------------------
# Properties (hypothesis, marker property): any draw of shapes, layouts and arguments
# against the float64 twin.


# ------------------------------------------------------------------------------------------------
# Convolution


@dataclass
class ConvCase:
    n: int
    c: int
    h: int
    w: int
    k: int
    r: int
    s: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c, self.h, self.w)

    @property
    def w_shape(self) -> tuple[int, int, int, int]:
        return (self.k, self.c // self.groups, self.r, self.s)

    @property
    def y_shape(self) -> tuple[int, int, int, int]:
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        p = (self.h + 2 * ph - dh * (self.r - 1) - 1) // sh + 1
        q = (self.w + 2 * pw - dw * (self.s - 1) - 1) // sw + 1
        return (self.n, self.k, p, q)

    def kwargs(self, draw: Draw) -> dict[str, object]:
        return {
            "stride": int_param(draw, self.stride),
            "padding": int_param(draw, self.padding),
            "dilation": int_param(draw, self.dilation),
            "groups": int_like(draw, self.groups),
        }

    def plain(self) -> dict[str, object]:
        return {
            "stride": self.stride,
            "padding": self.padding,
            "dilation": self.dilation,
            "groups": self.groups,
        }


@st.composite
def conv_cases(draw: Draw) -> ConvCase:
    if draw(st.integers(0, 4)) == 0:  # depthwise: groups == C == K
        groups = draw(st.integers(2, 6))
        cg, kg = 1, 1
    else:
        groups = draw(st.sampled_from([1, 1, 2, 3]))
        cg, kg = draw(sizes(0, 4)), draw(sizes(0, 4))
    r, s = draw(st.integers(1, 5)), draw(st.integers(1, 5))

    def stride() -> int:
        return draw(st.one_of(st.integers(1, 3), st.sampled_from((4, 5, *HUGE_STRIDES))))

    def dilation(size: int) -> int:
        # Any dilation is valid for a 1-wide kernel; a wider one must fit the input.
        if size == 1:
            return draw(st.sampled_from((1, 2, 3, *HUGE_STRIDES)))
        return draw(st.integers(1, 3))

    sh, sw, dh, dw = stride(), stride(), dilation(r), dilation(s)
    ph, pw = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    h_min = max(0, dh * (r - 1) + 1 - 2 * ph)
    w_min = max(0, dw * (s - 1) + 1 - 2 * pw)
    h = draw(st.integers(h_min, h_min + 12))
    w = draw(st.integers(w_min, w_min + 12))
    n = draw(sizes(0, 3))
    case = ConvCase(n, groups * cg, h, w, groups * kg, r, s, (sh, sw), (ph, pw), (dh, dw), groups)
    note(f"conv case {case}")
    return case


def conv_red(case: ConvCase) -> int:
    return (case.c // case.groups) * case.r * case.s


@pytest.mark.property
@given(st.data())
def test_conv2d_matches_twin(data: st.DataObject) -> None:
    draw = data.draw
    isa, dtype, rng = common(draw)
    case = draw(conv_cases())
    x = operand(draw, normal(rng, case.x_shape, dtype))
    w = operand(draw, normal(rng, case.w_shape, dtype))
    b = operand(draw, normal(rng, (case.k,), dtype)) if draw(st.booleans()) else None
    kw = case.kwargs(draw)
    with simdnn.use_isa(isa):
        y = ops.conv2d(x, w, b, **kw)
    want = reference.conv2d(f64(x), f64(w), f64(b), **case.plain())
    mag = reference.conv2d(
        np.abs(f64(x)), np.abs(f64(w)), None if b is None else np.abs(f64(b)), **case.plain()
    )
    assert y.shape == case.y_shape
    assert_bounded(y, want, mag, conv_red(case) + 1, dtype, "conv2d")


@pytest.mark.property
@given(st.data())
def test_conv2d_backward_data_matches_twin(data: st.DataObject) -> None:
    draw = data.draw
    isa, dtype, rng = common(draw)
    case = draw(conv_cases())
    dy = operand(draw, normal(rng, case.y_shape, dtype))
    w = operand(draw, normal(rng, case.w_shape, dtype))
    x_shape = tuple(int_like(draw, v) for v in case.x_shape)
    if draw(st.booleans()):
        x_shape = list(x_shape)
    with simdnn.use_isa(isa):
        dx = ops.conv2d_backward_data(dy, w, x_shape, **case.kwargs(draw))
    want = reference.conv2d_backward_data(f64(dy), f64(w), case.x_shape, **case.plain())
    mag = reference.conv2d_backward_data(
        np.abs(f64(dy)), np.abs(f64(w)), case.x_shape, **case.plain()
    )
    n_red = (case.k // case.groups) * case.r * case.s
    assert_bounded(dx, want, mag, n_red, dtype, "conv2d_backward_data")


@pytest.mark.property
@given(st.data())
def test_conv2d_backward_weights_matches_twin(data: st.DataObject) -> None:
    draw = data.draw
    isa, dtype, rng = common(draw)
    case = draw(conv_cases())
    x = operand(draw, normal(rng, case.x_shape, dtype))
    dy = operand(draw, normal(rng, case.y_shape, dtype))
    w_shape = tuple(int_like(draw, v) for v in case.w_shape)
    with simdnn.use_isa(isa):
        dw, db = ops.conv2d_backward_weights(x, dy, w_shape, **case.kwargs(draw))
    want_dw, want_db = reference.conv2d_backward_weights(
        f64(x), f64(dy), case.w_shape, **case.plain()
    )
    mag_dw, mag_db = reference.conv2d_backward_weights(
        np.abs(f64(x)), np.abs(f64(dy)), case.w_shape, **case.plain()
    )
    _, _, p, q = case.y_shape
    n_red = case.n * p * q
    assert_bounded(dw, want_dw, mag_dw, n_red, dtype, "conv2d_backward_weights dw")
    assert_bounded(db, want_db, mag_db, n_red, dtype, "conv2d_backward_weights db")


@st.composite
def bad_conv_calls(draw: Draw) -> tuple[str, Callable[[], object], type[Exception]]:
    """A small valid call of one of the three convolution passes with one thing wrong."""
    pass_ = draw(st.sampled_from(["forward", "backward_data", "backward_weights"]))
    groups = draw(st.sampled_from([1, 2]))
    cg, kg = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    c, k = groups * cg, groups * kg
    r, s = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    n, h, w = draw(st.integers(1, 2)), draw(st.integers(3, 6)), draw(st.integers(3, 6))
    dtype = draw(st.sampled_from(DTYPES))
    other = np.float64 if dtype == np.float32 else np.float32
    kw: dict[str, Any] = {"stride": 1, "padding": 0, "dilation": 1, "groups": groups}
    x_shape: Any = (n, c, h, w)
    w_shape: Any = (k, cg, r, s)
    dy_shape: Any = (n, k, h - r + 1, w - s + 1)
    b: Any = None
    # The pass's two array arguments, by name: (shape, dtype).
    names = {"forward": ("x", "w"), "backward_data": ("dy", "w"), "backward_weights": ("x", "dy")}
    first, second = names[pass_]
    dtypes = {"x": dtype, "w": dtype, "dy": dtype}
    exc: type[Exception] = ValueError
    choices = [
        "low",
        "groups_divide",
        "w_channels",
        "too_big",
        "too_big_dilated",
        "not_int",
        "huge",
        "ndim",
        "dtype",
        "mixed",
        "kernel_empty",
    ]
    choices += {
        "forward": ["bias_dtype", "bias_shape"],
        "backward_data": ["dy_shape", "shape_arg"],
        "backward_weights": ["dy_shape", "shape_arg"],
    }[pass_]
    bad = draw(st.sampled_from(choices))
    if bad == "low":
        name = draw(st.sampled_from(["stride", "padding", "dilation", "groups"]))
        low = draw(st.sampled_from([-1, -(2**40)] if name == "padding" else [0, -1]))
        kw[name] = low if name == "groups" else draw(st.sampled_from([low, (low, 1), [1, low]]))
    elif bad == "groups_divide":
        kw["groups"] = next(g for g in range(2, 2 * c * k + 2) if c % g or k % g)
        w_shape = (k, max(1, c // kw["groups"]), r, s)
    elif bad == "w_channels":
        w_shape = (k, cg + draw(st.sampled_from([-1, 1])) if cg > 1 else cg + 1, r, s)
    elif bad == "too_big":
        w_shape = (k, cg, h + 1, s) if draw(st.booleans()) else (k, cg, r, w + 1)
    elif bad == "too_big_dilated":
        w_shape = (k, cg, max(r, 2), s)
        kw["dilation"] = (h, 1)  # h * (R - 1) + 1 > h
    elif bad == "not_int":
        kw[draw(st.sampled_from(["stride", "padding", "dilation", "groups"]))] = draw(NOT_INTS)
        exc = TypeError
    elif bad == "huge":
        # Values no int64 holds, or whose sums and products with the sizes overflow int64.
        name = draw(st.sampled_from(["stride", "padding", "dilation", "groups"]))
        v = draw(st.sampled_from(HUGE_INTS))
        if name == "stride" and v < 2**63:
            v = -v if v > 0 else v  # a huge positive stride that fits int64 is valid
        if name == "dilation":
            w_shape = (k, cg, 3, 3)  # dilation * (R - 1) overflows, or passes the input
        kw[name] = v if name == "groups" else draw(st.sampled_from([v, (1, v), (v, 1)]))
    elif bad == "ndim":
        arg = draw(st.sampled_from([first, second]))
        shapes = {"x": x_shape, "w": w_shape, "dy": dy_shape}
        cut = draw(st.sampled_from(["drop", "add"]))
        new = shapes[arg][:3] if cut == "drop" else (*shapes[arg], 1)
        if arg == "x":
            x_shape = new
        elif arg == "w":
            w_shape = new
        else:
            dy_shape = new
    elif bad == "dtype":
        dtypes[first], exc = draw(BAD_DTYPES), TypeError
    elif bad == "mixed":
        dtypes[second], exc = other, TypeError
    elif bad == "kernel_empty":
        w_shape = (k, cg, 0, s) if draw(st.booleans()) else (k, cg, r, 0)
    elif bad == "bias_dtype":
        b, exc = np.zeros(k, draw(st.sampled_from([other, np.int64]))), TypeError
    elif bad == "bias_shape":
        b = np.zeros(draw(st.sampled_from([(k + 1,), (k, 1), ()])), dtype)
    elif bad == "dy_shape":
        axis = draw(st.integers(0, 3))
        dy_shape = tuple(v + (1 if i == axis else 0) for i, v in enumerate(dy_shape))
    elif bad == "shape_arg":
        cases = {
            "backward_data": [
                ((n, c, h), TypeError),
                ((n, c, h, w, 1), TypeError),
                ((n, c, -h, w), ValueError),
                ((n, c, float(h), w), TypeError),
                ((n, c, h, 2**64), ValueError),
                (h, TypeError),
                ("nchw", TypeError),
            ],
            "backward_weights": [
                ((k, cg, r), TypeError),
                ((k, cg, r, -s), ValueError),
                ((k, cg, r, None), TypeError),
                ((k, 2**63, r, s), ValueError),
                (None, TypeError),
            ],
        }[pass_]
        shape_arg, exc = draw(st.sampled_from(cases))
        if pass_ == "backward_data":
            x_shape = shape_arg
        else:
            w_shape = shape_arg

    def array(name: str, shape: Any) -> np.ndarray:
        return np.ones(shape, dtypes[name])

    what = f"{pass_}: {bad} kw={kw} x={x_shape} w={w_shape} dy={dy_shape} b={b}"
    if pass_ == "forward":
        x, wt = array("x", x_shape), array("w", w_shape)
        return what, lambda: ops.conv2d(x, wt, b, **kw), exc
    if pass_ == "backward_data":
        dy, wt = array("dy", dy_shape), array("w", w_shape)
        return what, lambda: ops.conv2d_backward_data(dy, wt, x_shape, **kw), exc
    x, dy = array("x", x_shape), array("dy", dy_shape)
    return what, lambda: ops.conv2d_backward_weights(x, dy, w_shape, **kw), exc


@pytest.mark.property
@given(st.data())
def test_conv_rejects_bad_input(data: st.DataObject) -> None:
    what, call, exc = data.draw(bad_conv_calls())
    with simdnn.use_isa(data.draw(st.sampled_from(ISAS))):
        assert_raises_bad_input(call, exc, what)


# ------------------------------------------------------------------------------------------------
# Regressions (marker regression): one reproducer per bug found, named after it.


# ------------------------------------------------------------------------------------------------
# cpp/bindings/conv.cpp: the padded input and the dilated kernel were sized with int64 overflow.


@pytest.mark.regression
def test_conv_huge_dilation_or_padding_is_refused_not_wrapped(isa):
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    w = np.ones((1, 1, 5, 5), np.float32)
    with simdnn.use_isa(isa):
        # 2**62 * (5 - 1) + 1 wrapped to 1: a "1x1" kernel, a (1, 1, 4, 4) result of 4 * x.
        with pytest.raises(ValueError, match="larger than the padded input"):
            ops.conv2d(x, w, dilation=2**62)
        with pytest.raises(ValueError, match="larger than the padded input"):
            ops.conv2d_backward_weights(
                x, np.ones((1, 1, 4, 4), np.float32), w.shape, dilation=2**62
            )
        # 4 + 2 * 2**62 wrapped to a negative padded size.
        with pytest.raises(ValueError, match=r"padding .* is too large"):
            ops.conv2d(x, w, padding=(0, 2**62))
        # Valid huge values still work where they cannot overflow: a 1-wide kernel ignores its
        # dilation, a stride beyond the input gives one output row.
        w1 = np.ones((1, 1, 1, 1), np.float32)
        y = ops.conv2d(x, w1, dilation=2**63 - 1, stride=(2**63 - 1, 1))
        np.testing.assert_array_equal(y, x[:, :, :1, :])


# ------------------------------------------------------------------------------------------------
# python/simdnn/reference.py: the convolution twins overflowed as_strided on valid huge strides
# and dilations (OverflowError: Python int too large to convert to C long).


@pytest.mark.regression
def test_conv_twins_accept_huge_strides_and_dilations():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 2, 3, 4))
    w = rng.standard_normal((3, 2, 1, 2))
    kw = {"stride": (2**63 - 1, 2**62), "dilation": (2**62, 1)}  # P = Q = 1, a 1-high kernel
    y = reference.conv2d(x, w, **kw)
    np.testing.assert_allclose(y, reference.conv2d(x, w, stride=3), rtol=1e-14)
    np.testing.assert_allclose(y, ops.conv2d(x, w, **kw), rtol=1e-14)
    dy = rng.standard_normal(y.shape)
    np.testing.assert_allclose(
        reference.conv2d_backward_weights(x, dy, w.shape, **kw)[0],
        reference.conv2d_backward_weights(x, dy, w.shape, stride=3)[0],
        rtol=1e-14,
    )


# ------------------------------------------------------------------------------------------------
# cpp/conv/conv.cpp: with C = 0 the GEMM engine saw an empty reduction and wrote nothing: y was
# uninitialised memory, and backward-weights set db to 0 instead of the sum of dy.


@pytest.mark.regression
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_with_no_input_channels(isa, dtype):
    x = np.zeros((2, 0, 9, 5), dtype)
    w = np.zeros((4, 0, 1, 5), dtype)
    b = np.arange(1, 5, dtype=dtype)
    dy = np.arange(2 * 4 * 9, dtype=dtype).reshape(2, 4, 9, 1)
    with simdnn.use_isa(isa):
        for _ in range(3):  # fresh output arrays held garbage more often than not
            np.testing.assert_array_equal(ops.conv2d(x, w, groups=2), np.zeros((2, 4, 9, 1)))
            y = ops.conv2d(x, w, b, groups=2)
            np.testing.assert_array_equal(y, np.broadcast_to(b[:, None, None], (2, 4, 9, 1)))
        dw, db = ops.conv2d_backward_weights(x, dy, w.shape, groups=2)
    assert dw.shape == w.shape
    np.testing.assert_array_equal(db, dy.sum(axis=(0, 2, 3)))
    np.testing.assert_array_equal(
        db, reference.conv2d_backward_weights(x, dy, w.shape, groups=2)[1]
    )


# ------------------------------------------------------------------------------------------------
# cpp/conv/conv.cpp: a valid stride of 2**63 - 1 (one output column) overflowed a rounding-up
# division in col2im: dx came back 0, and other geometries wrote out of range.


@pytest.mark.regression
@pytest.mark.parametrize("stride", [(1, 2**63 - 1), (2**63 - 1, 1), (2**62, 2**62 + 1)])
def test_conv_huge_valid_strides(isa, stride):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 6))
    w = rng.standard_normal((4, 3, 2, 2))
    conv = {"stride": stride, "padding": 1}
    with simdnn.use_isa(isa):
        y = ops.conv2d(x, w, **conv)
        dy = rng.standard_normal(y.shape)
        dx = ops.conv2d_backward_data(dy, w, x.shape, **conv)
        dw, db = ops.conv2d_backward_weights(x, dy, w.shape, **conv)
    np.testing.assert_allclose(y, reference.conv2d(x, w, **conv), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        dx, reference.conv2d_backward_data(dy, w, x.shape, **conv), rtol=1e-12, atol=1e-12
    )
    want_dw, want_db = reference.conv2d_backward_weights(x, dy, w.shape, **conv)
    np.testing.assert_allclose(dw, want_dw, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db, want_db, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# cpp/conv/conv.cpp: backward-data as a convolution of the zero-padded dY with flipped weights
# multiplied an Inf weight by dY's border zeros (NaN) where the true gradient is finite. The
# depthwise stride-1 path and the many-channel flipped path both did.


@pytest.mark.regression
@pytest.mark.parametrize(("c", "k", "groups"), [(6, 6, 6), (16, 8, 1)])
def test_backward_data_with_inf_weights_adds_only_real_terms(isa, c, k, groups):
    w = np.zeros((k, c // groups, 3, 3))
    w[:, :, 0, 0] = np.inf  # the top-left tap reaches dY's border at the bottom-right of dx
    dy = np.ones((1, k, 8, 8))
    with simdnn.use_isa(isa):
        dx = ops.conv2d_backward_data(dy, w, (1, c, 8, 8), padding=1, groups=groups)
    want = reference.conv2d_backward_data(dy, w, (1, c, 8, 8), padding=1, groups=groups)
    np.testing.assert_array_equal(np.isnan(dx), np.isnan(want))
    assert not np.isnan(dx).any()
    assert np.isposinf(dx[0, :, :7, :7]).all()
    assert (dx[0, :, 7, :] == 0).all()


# Backward-data's col2im GEMM has C/groups * R * S rows; at 4 or fewer it is a GEMV, which with
# more than 512 filters a group and a dY of 3 MB or more sums partial rows in a shared buffer. That
# buffer was the workspace slot holding the col matrix the GEMV was writing: the partial sums
# overwrote col (errors of 207 against values of 151), on one image (a threaded GEMV) and on
# several (an image per thread).


# Backward-data's col form with images in parallel computes the col of several images with small
# output planes in one GEMM (up to 100 columns, backward_data.h's kColBatchColumns), each image's
# columns side by side, the last batch of a thread's images partial (5, 7 and 9 images on 1-3
# threads). Planes of 9 (stride 2, two groups), 12 (stride 1: the gather form of one stream) and
# 16 pixels (stride 3: the scatter form), 2x2 planes from a 7x7 kernel (the sweep's grouped
# 7x7/s2 row in small), 49 pixels (two images a GEMM) and a dilated layer of stride 2 down only.
# The last two compute col in chunks of channels (kColChunkBytes: 1,800 and 1,170 rows a group,
# chunks of at least 384 rows), of equal size or not (200 channels in 4 or 5 chunks, 130 in 2 of
# 65 or in 33, 33, 33 and 31), the second batched as well (25-pixel planes, two groups, 6
# images); on 3 threads the first takes the per-image path (2 images), which does not chunk.
COL_BATCH_CASES = [
    (7, 8, 7, 7, 16, 5, 5, 2, 1, 1, 2),
    (5, 4, 6, 5, 40, 3, 3, 1, 0, 1, 1),
    (9, 3, 10, 10, 8, 3, 3, 3, 1, 1, 1),
    (9, 16, 7, 7, 32, 7, 7, 2, 1, 1, 4),
    (5, 6, 7, 7, 40, 3, 3, 1, 1, 1, 1),
    (7, 5, 12, 9, 36, 3, 2, (2, 1), 1, 2, 1),
    (2, 200, 14, 14, 16, 3, 3, 1, 0, 1, 1),
    (6, 260, 9, 9, 32, 3, 3, 2, 1, 1, 2),
]


@pytest.mark.parametrize("case", COL_BATCH_CASES, ids=case_id)
def test_backward_data_col_of_several_images(isa, dtype, rng, threads, case):
    x, w, _, kw = setup(case, dtype, rng)
    dy = rng.standard_normal(reference.conv2d(x, w, **kw).shape).astype(dtype)
    want = reference.conv2d_backward_data(dy, w, x.shape, **kw)
    for nt in (1, 2, 3):
        simdnn.set_num_threads(nt)
        dx = ops.conv2d_backward_data(dy, w, x.shape, algorithm="direct", **kw)
        assert_close(dx, want, dtype, scale=10)


def test_backward_data_col_of_several_images_is_one_buffer(isa, dtype, rng, threads):
    """On one thread, 12 images of 2x2 planes (392 col rows) hold a col of 12 x 4 columns where
    one image holds 4: more workspace, which per-image GEMMs would not take (equal dX above
    cannot tell the two apart)."""
    simdnn.set_num_threads(1)
    held = {}
    for n in (1, 12):
        x, w, _, kw = setup((n, 16, 7, 7, 32, 7, 7, 2, 1, 1, 2), dtype, rng)
        dy = rng.standard_normal((n, 32, 2, 2)).astype(dtype)
        simdnn.empty_cache()
        ops.conv2d_backward_data(dy, w, x.shape, **kw)
        held[n] = simdnn.cpu_info()["workspace_bytes"]
    assert held[12] > held[1], held


def test_backward_data_col_in_chunks_of_channels(isa, dtype, rng, threads):
    """On one thread, 200 channels of 3x3 taps on 12x12 planes: a whole col is 1,800 x 144, held
    in chunks of 50 (float32) or 40 channels (float64) it takes a quarter or a fifth of that (the
    workspace also holds the GEMM's packs, far smaller)."""
    simdnn.set_num_threads(1)
    x, w, _, kw = setup((2, 200, 14, 14, 16, 3, 3, 1, 0, 1, 1), dtype, rng)
    dy = rng.standard_normal((2, 16, 12, 12)).astype(dtype)
    simdnn.empty_cache()
    ops.conv2d_backward_data(dy, w, x.shape, **kw)
    whole_col = 1800 * 144 * np.dtype(dtype).itemsize
    assert simdnn.cpu_info()["workspace_bytes"] < whole_col / 2


@pytest.mark.regression
@pytest.mark.parametrize(
    ("n", "c", "k", "r", "hw", "groups"),
    [(2, 1, 600, 2, 40, 1), (1, 4, 1040, 1, 56, 2)],
    ids=["1-600-2x2-N2", "4-1040-1x1-g2-N1"],
)
def test_backward_data_gemv_col_keeps_its_buffer(isa, dtype, n, c, k, r, hw, groups):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((k, c // groups, r, r)).astype(dtype)
    p = hw - r + 1
    dy = rng.standard_normal((n, k, p, p)).astype(dtype)
    assert (k // groups) * p * p * np.dtype(dtype).itemsize >= 3 << 20  # the chunked GEMV
    with simdnn.use_isa(isa):
        dx = ops.conv2d_backward_data(dy, w, (n, c, hw, hw), groups=groups)
    want = reference.conv2d_backward_data(dy, w, (n, c, hw, hw), groups=groups)
    assert_close(dx, want, dtype, scale=(k // groups) ** 0.5)


# Pointwise (1x1, stride 1, no padding) layers whose im2col is the input itself: the GEMM packs it
# in row groups (Im2colB::pack_pointwise) where the planes lie further apart than the CPU's L1
# stride prefetcher follows (Intel: 2 KiB; 23x23 planes are 2,116 bytes in float32), the B tile
# of all rows does not fit a quarter of the L1 (400-600 rows) and A has more than one row panel
# (16-24 filters a group), and wherever a bias row follows fewer than 64 rows read in place (the
# 40-channel case, on every CPU). 600 rows are two K blocks on AVX-512 float32, of 300 rows (not
# a whole number of 8-row groups); 23 x 23 = 529 pixels leave each image a partial panel.
@pytest.mark.parametrize(
    ("op", "n", "c", "k", "groups"),
    [
        ("forward", 3, 600, 20, 1),
        ("forward", 2, 800, 40, 2),
        ("forward", 2, 40, 7, 1),
        ("backward_data", 3, 24, 400, 1),
        ("backward_data", 2, 32, 800, 2),
    ],
    ids=["fwd-600-20", "fwd-800-40-g2", "fwd-40-7-bias-tail", "bd-24-400", "bd-32-800-g2"],
)
def test_pointwise_packed_in_row_groups(isa, dtype, op, n, c, k, groups):
    rng = np.random.default_rng(11)
    hw = 23
    w = rng.standard_normal((k, c // groups, 1, 1)).astype(dtype)
    if op == "forward":
        x = rng.standard_normal((n, c, hw, hw)).astype(dtype)
        b = rng.standard_normal(k).astype(dtype)
        with simdnn.use_isa(isa):
            got = ops.conv2d(x, w, b, groups=groups)
        want = reference.conv2d(x, w, b, groups=groups)
        scale = (c // groups) ** 0.5
    else:
        dy = rng.standard_normal((n, k, hw, hw)).astype(dtype)
        with simdnn.use_isa(isa):
            got = ops.conv2d_backward_data(dy, w, (n, c, hw, hw), groups=groups)
        want = reference.conv2d_backward_data(dy, w, (n, c, hw, hw), groups=groups)
        scale = (k // groups) ** 0.5
    assert_close(got, want, dtype, scale=scale)


# ------------------------------------------------------------------------------------------------
# Non-finite values (marker nonfinite): NaN, +Inf, -Inf and zeros sprinkled into every
# input; the class of each element must be the twin's.


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
    (2, 6, 11, 9, 6, 3, 3, 2, 1, 1, 6),  # depthwise, stride 2
    (1, 4, 13, 14, 4, 5, 5, (2, 3), 2, (1, 2), 4),  # depthwise, strides 2 and 3, dilated
    (2, 8, 10, 10, 5, 3, 3, 1, (5, 1), (2, 1), 1),  # flat form, kernel rows on padding only
]


@pytest.mark.nonfinite
@pytest.mark.usefixtures("quiet_numpy")
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv2d_non_finite(isa, dtype, rng, case):
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


@pytest.mark.nonfinite
@pytest.mark.usefixtures("quiet_numpy")
@pytest.mark.parametrize("stride", [2, (2, 3), (3, 1)], ids=str)
def test_depthwise_strided_backward_data_non_finite_dy(isa, dtype, rng, stride):
    """Finite weights take the strided depthwise gather (dy's zero padding times finite taps);
    NaN and Inf in dy must land where the twin puts them."""
    conv = {"stride": stride, "padding": 2, "dilation": 1, "groups": 5}
    w = rng.standard_normal((5, 1, 4, 3)).astype(dtype)
    x_shape = (2, 5, 14, 17)
    dy = sprinkle(rng, ops.conv2d(np.zeros(x_shape, dtype), w, **conv).shape, dtype)
    dx = ops.conv2d_backward_data(dy, w, x_shape, **conv)
    (dy64, w64) = as64(dy, w)
    want = reference.conv2d_backward_data(dy64, w64, x_shape, **conv)
    assert_same_classes(dx, want, "conv2d_backward_data")


@pytest.mark.nonfinite
@pytest.mark.usefixtures("quiet_numpy")
@pytest.mark.parametrize("case", DEAD_ROW_CASES, ids=str)
def test_dead_kernel_rows_keep_non_finite_inputs(isa, dtype, rng, case):
    """With finite weights the direct forward skips kernel rows that read only padding; NaN and
    Inf in the image (its first and last rows included) must still land where the twin puts
    them."""
    n, c, h, w, k, r, s, stride, padding, dilation, groups = case
    conv = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    x = sprinkle(rng, (n, c, h, w), dtype)
    x[:, :, 0, 0], x[:, :, -1, -1] = np.inf, np.nan
    wt = rng.standard_normal((k, c // groups, r, s)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype)
    y = ops.conv2d(x, wt, b, **conv)
    x64, w64, b64 = as64(x, wt, b)
    assert_same_classes(y, reference.conv2d(x64, w64, b64, **conv), "conv2d")


@pytest.mark.nonfinite
@pytest.mark.usefixtures("quiet_numpy")
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


# ------------------------------------------------------------------------------------------------
# Limits: tensors past 2**31 elements (marker large) and workspaces that cannot be
# allocated.


@pytest.mark.large
def test_conv2d_output_past_2_31_elements(each_isa) -> None:
    # A 1x1 convolution with 33 filters over an 8192 x 8192 image: the output has
    # 33 * 2**26 = 2**31 + 2**26 elements, so its last channel starts past 2**31. One output for
    # every ISA (out=), NaN-filled before each call, so that it faults in once.
    k, h, w = 33, 8192, 8192
    need_memory(k * h * w * 4 + h * w * 4)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 1, h, w), dtype=np.float32)
    wt = rng.standard_normal((k, 1, 1, 1), dtype=np.float32)
    b = rng.standard_normal(k, dtype=np.float32)
    y = np.empty((1, k, h, w), np.float32)
    for isa in each_isa():
        y.fill(np.nan)
        assert ops.conv2d(x, wt, b, out=y) is y
        for ch in [0, 1, BIG // (h * w) - 1, BIG // (h * w), k - 1]:
            for row in [0, h // 2, h - 1]:
                want = x[0, 0, row] * wt[ch, 0, 0, 0] + b[ch]
                np.testing.assert_allclose(
                    y[0, ch, row], want, rtol=1e-6, atol=1e-6, err_msg=f"{isa} {ch} {row}"
                )
    del y


# ------------------------------------------------------------------------------------------------
# Workspaces that cannot be allocated. Each case runs in a child process whose address space is
# capped (RLIMIT_AS) at what it has mapped plus 1 GiB, then asks for a ~4 GiB workspace: the
# stride-2 backward-data convolution lowers to col2im with a (C R S) x (P Q) column buffer,
# 64 * 16 * 16 * 256 * 256 floats. With N = 1 the buffer is taken before the parallel regions; with
# N = 2 and two threads each thread takes its own inside one, so the failure has to cross the
# region. After the MemoryError the library must still compute correctly.

_CHILD = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    import simdnn
    from simdnn import ops, reference

    n = int(sys.argv[1])
    simdnn.set_num_threads(2)
    rng = np.random.default_rng(5)
    small = rng.standard_normal((2, 3, 9, 9))
    w_small = rng.standard_normal((4, 3, 3, 3))
    dy_small = rng.standard_normal((2, 4, 4, 4))
    # Warm up: OpenMP threads and their stacks exist before the cap.
    ops.conv2d_backward_data(dy_small, w_small, small.shape, stride=2)

    # Two filters: dY of an image (the col GEMM's B) takes 512 KiB, past what col in chunks of
    # channels allows (backward_data.h), so that col is whole: 4 GiB.
    dy = np.ones((n, 2, 256, 256), dtype=np.float32)
    w = np.ones((2, 64, 16, 16), dtype=np.float32)
    x_shape = (n, 64, 526, 526)
    with open("/proc/self/status") as f:
        vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), hard))
    try:
        ops.conv2d_backward_data(dy, w, x_shape, stride=2)
    except MemoryError as e:
        print("MemoryError:", e)
    else:
        print("no error")
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    got = ops.conv2d_backward_data(dy_small, w_small, small.shape, stride=2)
    want = reference.conv2d_backward_data(dy_small, w_small, small.shape, stride=2)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    print("afterwards ok")
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
@pytest.mark.parametrize("n", [1, 2], ids=["sequential", "per-thread"])
def test_workspace_that_cannot_be_allocated_raises_memory_error(n: int) -> None:
    env = dict(os.environ)
    # Under AddressSanitizer (tools/sanitize.sh) a failed allocation must return null, as libc's
    # does, instead of ending the process with a report.
    env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":allocator_may_return_null=1"
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(n)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("MemoryError: simdnn: cannot allocate 4"), proc.stdout
    assert "GiB of kernel workspace" in lines[0]
    assert lines[1] == "afterwards ok"
