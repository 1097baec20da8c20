"""Winograd F(4x4, 3x3) and F(2x2, 3x3) convolutions: the NumPy twins against the direct
reference, the native kernels (algorithm="winograd" and "winograd_2x2") against the twins on
every ISA, the choice between algorithms
(ops, functional, layers, simdnn.conv_algorithm), non-finite inputs, float32 accuracy and
gradients through a model.

Shape legend: x (N, C, H, W), w (K, C, 3, 3), b (K,), y (N, K, P, Q), P = H + 2 ph - 2.
"""

from __future__ import annotations

import contextvars
import threading
from typing import Any

import numpy as np
import pytest

import simdnn
from helpers import F64, as64, sprinkle
from simdnn import functional as F
from simdnn import nn, ops, reference

# (N, C, K, H, W, padding): planes of 1-3 pixels (with padding), P or Q not multiples of 4
# (5, 7, 13, 17), one and three images, 1, 3 and 17 channels, padding 0, 1, 2 and ph != pw.
CASES = [
    (1, 1, 1, 1, 1, 1),
    (3, 3, 1, 1, 2, (1, 2)),
    (1, 17, 3, 2, 3, 1),
    (3, 1, 17, 3, 3, 0),
    (1, 3, 3, 3, 1, 2),
    (1, 3, 17, 5, 5, 1),
    (3, 17, 1, 7, 7, 0),
    (1, 1, 3, 7, 13, (2, 0)),
    (3, 3, 3, 13, 13, 2),
    (1, 17, 17, 17, 5, (0, 1)),
    (3, 3, 17, 5, 17, (1, 0)),
    (1, 17, 3, 17, 17, 1),
    (3, 1, 1, 6, 9, (2, 1)),
    (1, 3, 1, 8, 8, 1),
]


ALGORITHMS = ("direct", "winograd", "winograd_2x2", "auto")
# The Winograd algorithms and their output tiles (the twins' `tile`).
TILES = {"winograd": 4, "winograd_2x2": 2}
winograd_algorithms = pytest.mark.parametrize("algorithm", list(TILES))


def case_id(case: tuple) -> str:
    return "-".join(str(v).replace(" ", "") for v in case)


def make(case: tuple, dtype: type, rng: np.random.Generator):
    """x, w, b and a dy of the output's shape, and the padding pair."""
    n, c, k, h, w, padding = case
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((k, c, 3, 3)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype)
    dy = rng.standard_normal((n, k, h + 2 * ph - 2, w + 2 * pw - 2)).astype(dtype)
    return x, wt, b, dy, padding


def assert_near(got: np.ndarray, want: np.ndarray, rel: float, what: str = "") -> None:
    """Elementwise within rel times the largest |want| (the output's scale): Winograd's error
    is spread over a tile, so near-zero elements carry the error of their neighbours."""
    assert got.shape == want.shape, (what, got.shape, want.shape)
    scale = max(1.0, float(np.abs(want).max(initial=0)))
    np.testing.assert_allclose(
        got.astype(F64), want.astype(F64), rtol=0, atol=rel * scale, err_msg=what
    )


def tolerance(dtype: type) -> float:
    return 5e-5 if dtype == np.float32 else 1e-10


# ------------------------------------------------------------------------------------------------
# The NumPy twins against the direct reference, in float64.


@pytest.mark.parametrize("tile", [4, 2])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_twins_match_the_direct_reference(rng, case, bias, tile):
    x, w, b, dy, padding = make(case, F64, rng)
    b = b if bias else None
    y = reference.conv2d_winograd(x, w, b, padding, tile=tile)
    assert y.dtype == F64
    assert_near(y, reference.conv2d(x, w, b, padding=padding), 1e-10, "forward")
    dx = reference.conv2d_winograd_backward_data(dy, w, x.shape, padding, tile=tile)
    want_dx = reference.conv2d_backward_data(dy, w, x.shape, padding=padding)
    assert_near(dx, want_dx, 1e-10, "backward-data")
    dw, db = reference.conv2d_winograd_backward_weights(x, dy, w.shape, padding, tile=tile)
    want_dw, want_db = reference.conv2d_backward_weights(x, dy, w.shape, padding=padding)
    assert_near(dw, want_dw, 1e-10, "backward-weights dw")
    assert_near(db, want_db, 1e-12, "backward-weights db")


@pytest.mark.parametrize("tile", [4, 2])
def test_twins_compute_in_the_input_dtype(rng, tile):
    x, w, b, dy, padding = make((2, 3, 4, 9, 6, 1), np.float32, rng)
    assert reference.conv2d_winograd(x, w, b, padding, tile=tile).dtype == np.float32
    dx = reference.conv2d_winograd_backward_data(dy, w, x.shape, padding, tile=tile)
    assert dx.dtype == np.float32
    dw, db = reference.conv2d_winograd_backward_weights(x, dy, w.shape, padding, tile=tile)
    assert dw.dtype == db.dtype == np.float32


def test_the_transform_matrices_interpolate_at_the_chosen_points():
    # Points 0, 1, -1, 1/2, -2 and infinity: AT's columns are the powers 0..3 of each point (the
    # last, infinity, picks the leading coefficient), and BT's rows are the products of
    # (x - p) over the other finite points (row j has the root set without p_j).
    points = [0.0, 1.0, -1.0, 0.5, -2.0]
    at = [[p**i for p in points] + [1.0 if i == 3 else 0.0] for i in range(4)]
    np.testing.assert_array_equal(reference.WINOGRAD_AT, at)
    for j, pj in enumerate(points):
        others = [p for p in points if p != pj]
        coeffs = np.polynomial.polynomial.polyfromroots(others)  # ascending, degree 4
        np.testing.assert_allclose(reference.WINOGRAD_BT[j], np.append(coeffs, 0.0), atol=1e-15)
    full = np.polynomial.polynomial.polyfromroots(points)
    np.testing.assert_allclose(reference.WINOGRAD_BT[5], full, atol=1e-15)
    for m in (reference.WINOGRAD_BT, reference.WINOGRAD_G, reference.WINOGRAD_AT):
        assert not m.flags.writeable
    # F(4, 3) in one dimension: AT [(G g) * (BT d)] is the correlation of d with g.
    rng = np.random.default_rng(0)
    d, g3 = rng.standard_normal(6), rng.standard_normal(3)
    got = reference.WINOGRAD_AT @ ((reference.WINOGRAD_G @ g3) * (reference.WINOGRAD_BT @ d))
    np.testing.assert_allclose(got, np.correlate(d, g3, "valid"), rtol=1e-12, atol=1e-12)


def test_the_2x2_transform_matrices_interpolate_at_0_1_minus_1_and_infinity():
    # AT's columns are the powers 0..1 of each finite point; the last, infinity, picks the
    # leading coefficient with Lavin's sign (-1 here, as BT's last row is d1 - d3).
    points = [0.0, 1.0, -1.0]
    at = [[p**i for p in points] + [-1.0 if i == 1 else 0.0] for i in range(2)]
    np.testing.assert_array_equal(reference.WINOGRAD_2X2_AT, at)
    for m in (reference.WINOGRAD_2X2_BT, reference.WINOGRAD_2X2_G, reference.WINOGRAD_2X2_AT):
        assert not m.flags.writeable
    # F(2, 3) in one dimension: AT [(G g) * (BT d)] is the correlation of d with g.
    rng = np.random.default_rng(0)
    d, g3 = rng.standard_normal(4), rng.standard_normal(3)
    bt, g, at_ = reference.WINOGRAD_2X2_BT, reference.WINOGRAD_2X2_G, reference.WINOGRAD_2X2_AT
    got = at_ @ ((g @ g3) * (bt @ d))
    np.testing.assert_allclose(got, np.correlate(d, g3, "valid"), rtol=1e-12, atol=1e-12)


X4, W4, DY4 = (2, 3, 6, 6), (4, 3, 3, 3), (2, 4, 6, 6)


def _z(*shape: int, dtype: type = F64) -> np.ndarray:
    return np.zeros(shape, dtype)


@pytest.mark.parametrize(
    ("call", "exc", "words"),
    [
        (lambda: reference.conv2d_winograd(_z(*X4), _z(4, 3, 5, 5)), ValueError, "w must"),
        (lambda: reference.conv2d_winograd(_z(*X4), _z(4, 2, 3, 3)), ValueError, "w must"),
        (lambda: reference.conv2d_winograd(_z(*X4), _z(*W4), padding=-1), ValueError, "padding"),
        (lambda: reference.conv2d_winograd(_z(*X4), _z(*W4), padding=1.5), TypeError, "padding"),
        (lambda: reference.conv2d_winograd(_z(2, 3, 1, 6), _z(*W4), padding=0), ValueError,
         "smaller than the 3x3 kernel"),
        (lambda: reference.conv2d_winograd(_z(*X4).tolist(), _z(*W4)), TypeError, "x must"),
        (lambda: reference.conv2d_winograd(_z(*X4, dtype=np.int32), _z(*W4)), TypeError,
         "x must be float32 or float64"),
        (lambda: reference.conv2d_winograd(_z(*X4), _z(*W4, dtype=np.float32)), TypeError,
         "one dtype"),
        (lambda: reference.conv2d_winograd(_z(*X4), _z(*W4), _z(3)), ValueError, "b must"),
        (lambda: reference.conv2d_winograd(_z(3, 6, 6), _z(*W4)), ValueError, "x must be 4-D"),
        (lambda: reference.conv2d_winograd_backward_data(_z(2, 4, 10, 10), _z(*W4), X4, 3),
         ValueError, "padding must be at most 2"),
        (lambda: reference.conv2d_winograd_backward_data(_z(2, 4, 5, 6), _z(*W4), X4, 1),
         ValueError, "dy must have shape"),
        (lambda: reference.conv2d_winograd_backward_data(_z(*DY4), _z(*W4), (2, 3, 6), 1),
         ValueError, "x_shape"),
        (lambda: reference.conv2d_winograd_backward_weights(_z(*X4), _z(*DY4), (4, 3, 3, 2), 1),
         ValueError, "w_shape"),
        (lambda: reference.conv2d_winograd_backward_weights(_z(*X4), _z(2, 5, 6, 6), W4, 1),
         ValueError, "dy must have shape"),
        (lambda: reference.conv2d_winograd(_z(*X4), _z(*W4), tile=3), ValueError,
         "tile must be 4 .* or 2 .*, got 3"),
        (lambda: reference.conv2d_winograd(_z(*X4), _z(*W4), tile=4.0), ValueError,
         "tile must be"),
        (lambda: reference.conv2d_winograd_backward_data(_z(*DY4), _z(*W4), X4, 1, tile=6),
         ValueError, "tile must be"),
        (lambda: reference.conv2d_winograd_backward_weights(_z(*X4), _z(*DY4), W4, 1, tile=1),
         ValueError, "tile must be"),
    ],
)  # fmt: skip
def test_twins_name_the_bad_argument(call, exc, words):
    with pytest.raises(exc, match=words) as info:
        call()
    assert str(info.value).startswith("conv2d_winograd")


# ------------------------------------------------------------------------------------------------
# The native kernels with algorithm="winograd" and "winograd_2x2" against the twins (every ISA,
# both dtypes).


@winograd_algorithms
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_native_forward_matches_the_twin(isa, dtype, rng, case, bias, algorithm):
    x, w, b, _, padding = make(case, dtype, rng)
    b = b if bias else None
    y = ops.conv2d(x, w, b, padding=padding, algorithm=algorithm)
    assert y.dtype == dtype
    want = reference.conv2d_winograd(x, w, b, padding, tile=TILES[algorithm])
    assert_near(y, want, tolerance(dtype), "forward")


@winograd_algorithms
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_native_backward_data_matches_the_twin(isa, dtype, rng, case, algorithm):
    x, w, _, dy, padding = make(case, dtype, rng)
    dx = ops.conv2d_backward_data(dy, w, x.shape, padding=padding, algorithm=algorithm)
    assert dx.dtype == dtype
    want = reference.conv2d_winograd_backward_data(dy, w, x.shape, padding, tile=TILES[algorithm])
    assert_near(dx, want, tolerance(dtype), "backward-data")


# Channel sums of more than 64 terms, which the forward and backward-data GEMMs add in runs of at
# most 64 (winograd.h, kWinogradSumDepth): the first on the small-GEMM path (70 x 4 tiles x 72
# multiply-adds a point), the second through the blocked engine (runs of 48, 48 and 40), with odd
# channel counts on both sides.
SUM_RUN_CASES = [(1, 72, 70, 6, 6, 1), (2, 136, 130, 9, 11, 1)]


@winograd_algorithms
@pytest.mark.parametrize("case", SUM_RUN_CASES, ids=case_id)
def test_native_sums_over_many_channels_match_the_twin(isa, dtype, rng, case, algorithm):
    x, w, b, dy, padding = make(case, dtype, rng)
    tile = TILES[algorithm]
    y = ops.conv2d(x, w, b, padding=padding, algorithm=algorithm)
    assert_near(y, reference.conv2d_winograd(x, w, b, padding, tile=tile), tolerance(dtype), "y")
    dx = ops.conv2d_backward_data(dy, w, x.shape, padding=padding, algorithm=algorithm)
    want_dx = reference.conv2d_winograd_backward_data(dy, w, x.shape, padding, tile=tile)
    assert_near(dx, want_dx, tolerance(dtype), "backward-data")


@winograd_algorithms
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_native_backward_weights_matches_the_twin(isa, dtype, rng, case, algorithm):
    x, w, _, dy, padding = make(case, dtype, rng)
    dw, db = ops.conv2d_backward_weights(x, dy, w.shape, padding=padding, algorithm=algorithm)
    assert dw.dtype == db.dtype == dtype
    want_dw, want_db = reference.conv2d_winograd_backward_weights(
        x, dy, w.shape, padding, tile=TILES[algorithm]
    )
    assert_near(dw, want_dw, tolerance(dtype), "backward-weights dw")
    assert_near(db, want_db, tolerance(dtype), "backward-weights db")


# 9 images of 16 -> 16 channels on 34x34 (64 tiles, 0.3 MB an image in float32, 0.6 in float64):
# forward and backward-data chunks are cut to what fits in L2 beside U, so on a 1 MiB or 2 MiB L2
# at least one dtype runs chunks of 1-3 images with a shorter last one.
TASK_CASES = [
    (5, 3, 17, 9, 6, 1),
    (4, 17, 3, 28, 28, 0),
    (2, 1, 1, 5, 5, 2),
    (9, 16, 16, 34, 34, 0),
]


@winograd_algorithms
@pytest.mark.parametrize("schedule", ["tasks", "phases"])
@pytest.mark.parametrize("threads", [1, 2, 3, 4])
@pytest.mark.parametrize("case", TASK_CASES, ids=case_id)
def test_chunks_on_any_thread_count(isa, dtype, rng, case, threads, schedule, algorithm):
    """Both chunk schedules, whichever this CPU uses (cpu_info()["winograd_chunk_tasks"]). As
    tasks, with a batch of at least one image per thread, each thread runs whole chunks
    (transforms and GEMMs) and backward-weights adds one partial dU and db per thread: on 3 and
    4 threads a batch of 5 leaves a thread without a chunk, whose partial must add nothing. As
    phases, each transform and the GEMMs of a chunk are split over all threads."""
    x, w, b, dy, padding = make(case, dtype, rng)
    cap, before = simdnn.cpu_info()["thread_cap"], simdnn.get_num_threads()
    simdnn._core._set_thread_cap(max(cap, threads))
    simdnn._core._set_winograd_chunk_tasks(schedule == "tasks")
    try:
        simdnn.set_num_threads(threads)
        y = ops.conv2d(x, w, b, padding=padding, algorithm=algorithm)
        dx = ops.conv2d_backward_data(dy, w, x.shape, padding=padding, algorithm=algorithm)
        dw, db = ops.conv2d_backward_weights(x, dy, w.shape, padding=padding, algorithm=algorithm)
    finally:
        simdnn._core._set_winograd_chunk_tasks(None)
        simdnn._core._set_thread_cap(cap)
        simdnn.set_num_threads(before)
    tol, tile = tolerance(dtype), TILES[algorithm]
    assert_near(y, reference.conv2d_winograd(x, w, b, padding, tile=tile), tol, "forward")
    want_dx = reference.conv2d_winograd_backward_data(dy, w, x.shape, padding, tile=tile)
    assert_near(dx, want_dx, tol, "backward-data")
    want_dw, want_db = reference.conv2d_winograd_backward_weights(
        x, dy, w.shape, padding, tile=tile
    )
    assert_near(dw, want_dw, tol, "backward-weights dw")
    assert_near(db, want_db, tol, "backward-weights db")


@pytest.mark.parametrize(
    "case",
    [
        *CASES[::3],
        (2, 64, 64, 10, 9, 1),
        (1, 32, 48, 12, 12, 0),
        (4, 136, 144, 18, 18, 1),
        (2, 176, 168, 18, 18, 1),
    ],
    ids=case_id,
)
def test_direct_winograd_and_auto_agree(isa, dtype, rng, case):
    """The four algorithms are one convolution: each pass agrees within rounding, and "direct"
    is the default path's exact result (auto may pick any; the last two cases take F(4x4) and
    F(2x2): over 128 channels with 100 and 50 tiles of 4x4)."""
    x, w, b, dy, padding = make(case, dtype, rng)
    tol = tolerance(dtype)
    ys = {a: ops.conv2d(x, w, b, padding=padding, algorithm=a) for a in ALGORITHMS}
    dxs = {
        a: ops.conv2d_backward_data(dy, w, x.shape, padding=padding, algorithm=a)
        for a in ALGORITHMS
    }
    dws = {
        a: ops.conv2d_backward_weights(x, dy, w.shape, padding=padding, algorithm=a)
        for a in ALGORITHMS
    }
    for a in ("winograd", "winograd_2x2", "auto"):
        assert_near(ys[a], ys["direct"], tol, f"forward {a}")
        assert_near(dxs[a], dxs["direct"], tol, f"backward-data {a}")
        assert_near(dws[a][0], dws["direct"][0], tol, f"backward-weights dw {a}")
        assert_near(dws[a][1], dws["direct"][1], tol, f"backward-weights db {a}")
    x64, w64, b64 = as64(x, w, b)
    assert_near(ys["direct"], reference.conv2d(x64, w64, b64, padding=padding), tol)
    np.testing.assert_array_equal(ops.conv2d(x, w, b, padding=padding), ys["auto"])


# ------------------------------------------------------------------------------------------------
# Refusals: a geometry Winograd cannot run, and bad algorithm names, on both surfaces.

INELIGIBLE = [
    ("kernel-5x5", (5, 5), {"padding": 2}),
    ("kernel-3x1", (3, 1), {"padding": 1}),
    ("stride-2", (3, 3), {"stride": 2, "padding": 1}),
    ("stride-1x2", (3, 3), {"stride": (1, 2), "padding": 1}),
    ("dilation-2", (3, 3), {"dilation": 2, "padding": 2}),
    ("groups-2", (3, 3), {"groups": 2, "padding": 1}),
    ("depthwise", (3, 3), {"groups": 4, "padding": 1}),
]


def _ineligible_args(kernel: tuple[int, int], kw: dict[str, Any]):
    groups = kw.get("groups", 1)
    x = np.ones((1, 4, 9, 9), np.float32)
    w = np.ones((4, 4 // groups, *kernel), np.float32)
    y = reference.conv2d(x, w, **kw)
    return x, w, np.ones_like(y)


@pytest.mark.parametrize("surface", [ops, reference], ids=["ops", "reference"])
@pytest.mark.parametrize(("name", "kernel", "kw"), INELIGIBLE, ids=[c[0] for c in INELIGIBLE])
@winograd_algorithms
def test_winograd_refuses_an_ineligible_geometry(surface, name, kernel, kw, algorithm):
    x, w, dy = _ineligible_args(kernel, kw)
    named = rf"algorithm='{algorithm}' needs"
    with pytest.raises(ValueError, match=rf"^conv2d: {named}"):
        surface.conv2d(x, w, **kw, algorithm=algorithm)
    with pytest.raises(ValueError, match=rf"^conv2d_backward_data: {named}"):
        surface.conv2d_backward_data(dy, w, x.shape, **kw, algorithm=algorithm)
    with pytest.raises(ValueError, match=rf"^conv2d_backward_weights: {named}"):
        surface.conv2d_backward_weights(x, dy, w.shape, **kw, algorithm=algorithm)
    for algorithm in ("direct", "auto"):  # the other two run it
        surface.conv2d(x, w, **kw, algorithm=algorithm)


@pytest.mark.parametrize("surface", [ops, reference], ids=["ops", "reference"])
@pytest.mark.parametrize("padding", [3, (0, 3), (4, 1)], ids=str)
@winograd_algorithms
def test_winograd_backward_data_refuses_padding_above_2(surface, padding, algorithm):
    """Backward-data is the forward algorithm with padding 2 - padding: padding 3 cannot run
    it, though the forward pass and backward-weights can."""
    x = np.ones((1, 2, 6, 6), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    y = surface.conv2d(x, w, padding=padding, algorithm=algorithm)
    with pytest.raises(ValueError, match=rf"^conv2d_backward_data: .*'{algorithm}'.*padding"):
        surface.conv2d_backward_data(y, w, x.shape, padding=padding, algorithm=algorithm)
    surface.conv2d_backward_weights(x, y, w.shape, padding=padding, algorithm=algorithm)


BAD_NAMES = [
    ("fast", ValueError),
    ("Winograd", ValueError),
    ("", ValueError),
    ("winograd ", ValueError),
    ("winograd_4x4", ValueError),
    ("winograd_2X2", ValueError),
    (None, TypeError),
    (1, TypeError),
    (b"winograd", TypeError),
    (["direct"], TypeError),
]


@pytest.mark.parametrize("surface", [ops, reference], ids=["ops", "reference"])
@pytest.mark.parametrize(("value", "exc"), BAD_NAMES, ids=repr)
def test_bad_algorithm_names_are_refused(surface, value, exc):
    x, w = np.ones((1, 2, 5, 5), np.float32), np.ones((3, 2, 3, 3), np.float32)
    dy = np.ones((1, 3, 5, 5), np.float32)
    calls = {
        "conv2d": lambda: surface.conv2d(x, w, padding=1, algorithm=value),
        "conv2d_backward_data": lambda: surface.conv2d_backward_data(
            dy, w, x.shape, padding=1, algorithm=value
        ),
        "conv2d_backward_weights": lambda: surface.conv2d_backward_weights(
            x, dy, w.shape, padding=1, algorithm=value
        ),
    }
    for name, call in calls.items():
        with pytest.raises(exc) as info:
            call()
        msg = str(info.value)
        assert msg.startswith(f"{name}: algorithm must"), msg
        assert repr(value) in msg, msg
        assert "'auto', 'direct', 'winograd' or 'winograd_2x2'" in msg, msg


@pytest.mark.parametrize(("value", "exc"), BAD_NAMES, ids=repr)
def test_bad_algorithm_names_are_refused_above_the_ops(value, exc):
    x, w = np.ones((1, 2, 5, 5)), np.ones((3, 2, 3, 3))
    if value is not None:  # None means "the context's" there
        with pytest.raises(exc, match=r"^conv2d: algorithm must"):
            F.conv2d(x, w, padding=1, algorithm=value)
        with pytest.raises(exc, match=r"^conv1d: algorithm must"):
            F.conv1d(x[:, :, 0], w[:, :, 0], padding=1, algorithm=value)
        with pytest.raises(exc, match=r"^Conv2d: algorithm must"):
            nn.Conv2d(2, 3, 3, algorithm=value)
    with pytest.raises(exc, match=r"^conv_algorithm: name must") as info:
        simdnn.conv_algorithm(value)
    assert repr(value) in str(info.value)
    assert "'auto', 'direct', 'winograd' or 'winograd_2x2'" in str(info.value)
    assert simdnn.get_conv_algorithm() == "auto"  # a refused choice changes nothing


# ------------------------------------------------------------------------------------------------
# Non-finite inputs: the kernels fall back to the direct path when a Winograd result is not all
# finite, so NaN and Inf land exactly where the direct convolution puts them.


def assert_same_non_finite(got: np.ndarray, want: np.ndarray, what: str) -> None:
    for name, test in (("NaN", np.isnan), ("+Inf", np.isposinf), ("-Inf", np.isneginf)):
        bad = test(got) != test(want)
        assert not bad.any(), (
            f"{what}: {int(bad.sum())} of {got.size} elements differ in being {name}; first at "
            f"{np.argwhere(bad)[0].tolist()}"
        )


@pytest.mark.nonfinite
@pytest.mark.usefixtures("quiet_numpy")
@pytest.mark.parametrize("case", CASES[5::2], ids=case_id)
@pytest.mark.parametrize("what", ["nan", "inf", "sprinkled"])
def test_non_finite_inputs_land_where_direct_puts_them(isa, dtype, rng, case, what):
    x, w, b, dy, padding = make(case, dtype, rng)
    if what == "sprinkled":
        x, dy = sprinkle(rng, x.shape, dtype), sprinkle(rng, dy.shape, dtype)
    else:
        value = np.nan if what == "nan" else -np.inf
        x.flat[rng.integers(x.size)] = value
        dy.flat[rng.integers(dy.size)] = value
    kw = {"padding": padding}
    want_y = ops.conv2d(x, w, b, **kw, algorithm="direct")
    want_dx = ops.conv2d_backward_data(dy, w, x.shape, **kw, algorithm="direct")
    want_dw, want_db = ops.conv2d_backward_weights(x, dy, w.shape, **kw, algorithm="direct")
    assert not np.isfinite(want_y).all()
    for algorithm in ("winograd", "auto"):
        y = ops.conv2d(x, w, b, **kw, algorithm=algorithm)
        assert_same_non_finite(y, want_y, f"conv2d {algorithm}")
        dx = ops.conv2d_backward_data(dy, w, x.shape, **kw, algorithm=algorithm)
        assert_same_non_finite(dx, want_dx, f"conv2d_backward_data {algorithm}")
        dw, db = ops.conv2d_backward_weights(x, dy, w.shape, **kw, algorithm=algorithm)
        assert_same_non_finite(dw, want_dw, f"conv2d_backward_weights dw {algorithm}")
        assert_same_non_finite(db, want_db, f"conv2d_backward_weights db {algorithm}")


# ------------------------------------------------------------------------------------------------
# float32 accuracy on the layers the automatic choice gives Winograd (winograd.h,
# winograd_profitable: F(4x4) for any width with enough tiles, else F(2x2) over 128 channels): its
# largest error against a float64 direct reference within 10x that of the direct float32 path,
# for each pass. (F(4x4)'s forward GEMMs summed over all channels in one run read 9.7-13.1x at 256
# channels on AMD Zen 4 with AVX-512; summed in runs of 64 terms, 3.8-5.1x.)

PASSES = ("forward", "backward-data", "backward-weights")
# The algorithm, (N, C = K, H = W), 3x3, padding 1, and the passes checked.
LAYERS = [
    ("winograd", (2, 64, 16), PASSES),
    ("winograd", (2, 128, 28), PASSES),
    ("winograd", (2, 256, 14), PASSES),
    ("winograd", (2, 512, 7), PASSES),
    ("winograd_2x2", (2, 256, 14), PASSES),
    ("winograd_2x2", (2, 512, 7), PASSES),
]
F4, F2, DIRECT = "winograd", "winograd_2x2", "direct"
# Layers with enough tiles for "auto" (4x4 tiles x channels >= 8192), and its algorithm for the
# forward, backward-data and backward-weights passes there: over 128 channels F(4x4) needs 64 of
# its tiles (the N4 layers) and F(2x2) 64 of its own (one image of 14x14 has 49: direct).
AUTO_LAYERS = [
    ((8, 64, 16), (F4, F4, F4)),
    ((2, 128, 28), (F4, F4, F4)),
    ((4, 192, 14), (F4, F4, F4)),
    ((4, 256, 14), (F4, F4, F4)),
    ((2, 256, 14), (F2, F2, F2)),
    ((2, 272, 14), (F2, F2, F2)),
    ((1, 512, 14), (DIRECT, DIRECT, DIRECT)),
    # Narrow layers with few tiles: 49 x 128 = 6272 and 8 x 64 = 512 tiles x channels, under the
    # bound of most CPUs (8192) and on either side of AMD Zen 3 and Zen 4's (2048).
    (
        (1, 128, 28),
        (F4,) * 3 if simdnn.cpu_info()["winograd_narrow_tile_channels"] <= 6272 else (DIRECT,) * 3,
    ),
    ((2, 64, 7), (DIRECT, DIRECT, DIRECT)),
]


def layer_ids(layers: list) -> list[str]:
    return [f"{c}x{c}-{hw}x{hw}-N{n}" for (n, c, hw), _ in layers]


def pass_results(algorithm: str, x: np.ndarray, w: np.ndarray, dy: np.ndarray) -> dict:
    """Each pass of a 3x3 padding-1 convolution under `algorithm`."""
    return {
        "forward": ops.conv2d(x, w, padding=1, algorithm=algorithm),
        "backward-data": ops.conv2d_backward_data(dy, w, x.shape, padding=1, algorithm=algorithm),
        "backward-weights": ops.conv2d_backward_weights(
            x, dy, w.shape, padding=1, algorithm=algorithm
        )[0],
    }


def layer_data(layer: tuple[int, int, int], seed: int = 7) -> tuple[np.ndarray, ...]:
    n, c, hw = layer
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, hw, hw))
    w = rng.standard_normal((c, c, 3, 3)) / np.sqrt(9 * c)
    dy = rng.standard_normal((n, c, hw, hw))
    return x, w, dy


@pytest.mark.parametrize(
    ("algorithm", "layer", "passes"),
    LAYERS,
    ids=[f"{a}-{i}" for (a, _, _), i in zip(LAYERS, layer_ids([row[1:] for row in LAYERS]))],
)
def test_float32_winograd_error_is_within_10x_of_direct(isa, algorithm, layer, passes):
    x, w, dy = layer_data(layer)
    want = {
        "forward": reference.conv2d(x, w, padding=1),
        "backward-data": reference.conv2d_backward_data(dy, w, x.shape, padding=1),
        "backward-weights": reference.conv2d_backward_weights(x, dy, w.shape, padding=1)[0],
    }
    x32, w32, dy32 = (a.astype(np.float32) for a in (x, w, dy))
    direct = pass_results("direct", x32, w32, dy32)
    winograd = pass_results(algorithm, x32, w32, dy32)
    ratios = {}
    for p in passes:
        scale = np.abs(want[p]).max()
        err_direct = np.abs(direct[p] - want[p]).max() / scale
        err_winograd = np.abs(winograd[p] - want[p]).max() / scale
        ratios[p] = (err_winograd / max(err_direct, 1e-30), err_direct, err_winograd)
    report = ", ".join(f"{p} {r:.1f}x ({ed:.1e} -> {ew:.1e})" for p, (r, ed, ew) in ratios.items())
    assert all(r <= 10 for r, _, _ in ratios.values()), report


@pytest.mark.parametrize(
    ("layer", "chosen"),
    AUTO_LAYERS,
    ids=layer_ids(AUTO_LAYERS),
)
def test_auto_takes_the_tile_the_layer_has_work_for(isa, layer, chosen):
    """ "auto" gives exactly the result of the algorithm listed for each pass: F(4x4) where the
    batch has enough of its tiles, F(2x2) on wide layers with fewer, direct where F(2x2) has too
    few too."""
    x, w, dy = (a.astype(np.float32) for a in layer_data(layer, seed=3))
    results = {a: pass_results(a, x, w, dy) for a in ALGORITHMS}
    for p, want in zip(PASSES, chosen):
        # The three paths round differently, so the comparison below tells which one ran.
        for a, b in ((F4, F2), (F4, DIRECT), (F2, DIRECT)):
            assert not np.array_equal(results[a][p], results[b][p]), (p, a, b)
        np.testing.assert_array_equal(results["auto"][p], results[want][p], err_msg=p)


# ------------------------------------------------------------------------------------------------
# The choice above the ops: functional, layers, simdnn.conv_algorithm; and gradients through a
# model forced to Winograd.


class Spy:
    """Records the algorithm of every convolution pass the layers run on simdnn.ops."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, str]] = []
        for name in ("conv2d", "conv2d_backward_data", "conv2d_backward_weights"):
            monkeypatch.setattr(ops, name, self._wrap(name, getattr(ops, name)))

    def _wrap(self, name: str, fn: Any) -> Any:
        def spy(*args: Any, **kwargs: Any) -> Any:
            algorithm = kwargs.get("algorithm", args[7] if len(args) > 7 else "auto")
            self.calls.append((name, algorithm))
            return fn(*args, **kwargs)

        return spy

    def algorithms(self) -> set[str]:
        return {a for _, a in self.calls}


def small_model(rng: np.random.Generator, algorithm: str | None) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, rng=rng, algorithm=algorithm),
        nn.Tanh(),
        nn.Conv2d(3, 4, 3, padding=(2, 0), rng=rng, algorithm=algorithm),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * 7 * 3, 3, rng=rng),
    )


@winograd_algorithms
@pytest.mark.parametrize("how", ["layer", "context"])
def test_gradcheck_of_a_model_forced_to_winograd(monkeypatch, how, algorithm):
    rng = np.random.default_rng(3)
    model = small_model(rng, algorithm if how == "layer" else None).astype(np.float64)
    x, y = rng.standard_normal((3, 2, 5, 5)), rng.integers(0, 3, 3)
    spy = Spy(monkeypatch)
    if how == "layer":
        result = simdnn.gradcheck(model, nn.CrossEntropyLoss(), x, y, entries=12)
    else:
        with simdnn.conv_algorithm(algorithm):
            result = simdnn.gradcheck(model, nn.CrossEntropyLoss(), x, y, entries=12)
    assert spy.algorithms() == {algorithm}
    assert {name for name, _ in spy.calls} == {
        "conv2d",
        "conv2d_backward_data",
        "conv2d_backward_weights",
    }
    assert all(n > 0 for n in result.checked.values()), result.checked
    assert max(result.values()) < 1e-5, result


def test_the_backward_pass_uses_the_forward_passs_algorithm(monkeypatch, rng):
    """The algorithm is read when the forward pass runs: a backward pass after the block (or in
    another context) still uses it."""
    layer = nn.Conv2d(3, 4, 3, padding=1, rng=rng)
    x = simdnn.Tensor(rng.standard_normal((2, 3, 6, 6)).astype(np.float32), requires_grad=True)
    spy = Spy(monkeypatch)
    with simdnn.conv_algorithm("direct"):
        out = layer(x).sum()
    with simdnn.conv_algorithm("winograd"):
        out.backward()
    assert spy.calls == [
        ("conv2d", "direct"),
        ("conv2d_backward_data", "direct"),
        ("conv2d_backward_weights", "direct"),
    ]


def test_explicit_choices_beat_the_context(monkeypatch, rng):
    x = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    spy = Spy(monkeypatch)
    with simdnn.conv_algorithm("winograd"):
        F.conv2d(x, w, padding=1, algorithm="direct")
        nn.Conv2d(2, 3, 3, padding=1, algorithm="auto")(x)
        F.conv2d(x, w, padding=1)
    with simdnn.conv_algorithm("direct"):
        nn.Conv2d(2, 3, 3, padding=1, algorithm="winograd")(x)
    F.conv2d(x, w, padding=1)
    assert [a for _, a in spy.calls] == ["direct", "auto", "winograd", "winograd", "auto"]


@winograd_algorithms
def test_context_winograd_runs_direct_where_winograd_cannot(monkeypatch, rng, algorithm):
    """Under conv_algorithm("winograd") every layer runs: those Winograd cannot run take the
    direct path (pass by pass: padding 3 runs backward-data direct), where an explicit
    algorithm="winograd" is refused."""
    layers = {
        "3x3": nn.Conv2d(2, 2, 3, padding=1, rng=rng),
        "5x5": nn.Conv2d(2, 2, 5, padding=2, rng=rng),
        "stride-2": nn.Conv2d(2, 2, 3, stride=2, padding=1, rng=rng),
        "groups-2": nn.Conv2d(2, 2, 3, groups=2, padding=1, rng=rng),
        "padding-3": nn.Conv2d(2, 2, 3, padding=3, rng=rng),
        "conv1d": nn.Conv1d(2, 2, 3, padding=1, rng=rng),
    }
    want = {
        "3x3": [algorithm] * 3,
        "5x5": ["direct"] * 3,
        "stride-2": ["direct"] * 3,
        "groups-2": ["direct"] * 3,
        "padding-3": [algorithm, "direct", algorithm],
        "conv1d": ["direct"] * 3,
    }
    for name, layer in layers.items():
        spy = Spy(monkeypatch)
        shape = (2, 2, 8) if name == "conv1d" else (2, 2, 8, 8)
        x = simdnn.Tensor(rng.standard_normal(shape).astype(np.float32), requires_grad=True)
        with simdnn.conv_algorithm(algorithm):
            layer(x).sum().backward()
        assert [a for _, a in spy.calls] == want[name], name
    with pytest.raises(ValueError, match=rf"^conv2d: algorithm='{algorithm}'"):
        F.conv2d(np.ones((1, 2, 8, 8)), np.ones((2, 2, 5, 5)), algorithm=algorithm)


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"kernel_size": 5, "padding": 2}, "kernel"),
        ({"kernel_size": 3, "stride": 2}, "stride"),
        ({"kernel_size": 3, "dilation": 2}, "dilation"),
        ({"kernel_size": 3, "groups": 2}, "groups"),
        ({"kernel_size": 3, "padding": (1, 3)}, "padding"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
@winograd_algorithms
def test_a_layer_forced_to_winograd_must_be_able_to_run_it(kw, words, algorithm):
    with pytest.raises(ValueError, match=rf"^Conv2d: algorithm='{algorithm}' needs .*{words}"):
        nn.Conv2d(4, 4, algorithm=algorithm, **kw)
    nn.Conv2d(4, 4, algorithm="direct", **kw)


def test_the_layer_setting_is_configuration_not_state(tmp_path, rng):
    plain = nn.Conv2d(2, 3, 3, padding=1, rng=rng)
    forced = nn.Conv2d(2, 3, 3, padding=1, rng=rng, algorithm="winograd")
    assert plain.algorithm is None
    assert forced.algorithm == "winograd"
    assert "algorithm" not in plain.config()
    assert "algorithm" not in repr(plain)
    assert forced.config()["algorithm"] == "winograd"
    assert repr(forced).endswith("algorithm='winograd')")
    assert list(forced.state_dict()) == list(plain.state_dict()) == ["weight", "bias"]
    plain.load_state_dict(forced.state_dict())  # the same parameters, either way
    model = nn.Sequential(forced, nn.ReLU(), plain)
    simdnn.save(model, tmp_path / "m.npz")
    loaded = simdnn.load(tmp_path / "m.npz")
    assert loaded[0].algorithm == "winograd"
    assert loaded[2].algorithm is None
    assert repr(loaded) == repr(model)
    assert list(simdnn.load_state_dict(tmp_path / "m.npz")) == list(model.state_dict())
    assert forced.astype(np.float64).algorithm == "winograd"


@winograd_algorithms
def test_the_numpy_backend_runs_the_winograd_twin(rng, algorithm):
    x = rng.standard_normal((2, 3, 7, 5))
    layer = nn.Conv2d(3, 4, 3, padding=1, rng=rng, algorithm=algorithm).astype(np.float64)
    w, b = layer.weight.data, layer.bias.data
    with simdnn.use_backend("numpy"):
        y = layer(x).numpy()
        with simdnn.conv_algorithm("direct"):
            z = nn.Conv2d.forward(layer, x).numpy()
    want = reference.conv2d_winograd(x, w, b, 1, tile=TILES[algorithm])
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(z, want)  # the layer's own
    assert_near(y, reference.conv2d(x, w, b, padding=1), 1e-12)


# ------------------------------------------------------------------------------------------------
# simdnn.conv_algorithm: nesting, restoring after an exception, isolation between threads.


def test_the_default_is_auto_and_blocks_nest():
    assert simdnn.get_conv_algorithm() == "auto"
    with simdnn.conv_algorithm("direct") as outer:
        assert simdnn.get_conv_algorithm() == "direct"
        assert repr(outer) == "conv_algorithm('direct')"
        with simdnn.conv_algorithm("winograd"):
            assert simdnn.get_conv_algorithm() == "winograd"
            with simdnn.conv_algorithm("auto"):
                assert simdnn.get_conv_algorithm() == "auto"
            assert simdnn.get_conv_algorithm() == "winograd"
        assert simdnn.get_conv_algorithm() == "direct"
    assert simdnn.get_conv_algorithm() == "auto"


def test_the_previous_choice_is_restored_after_an_exception():
    seen = []

    def fail() -> None:
        with simdnn.conv_algorithm("winograd"):
            seen.append(simdnn.get_conv_algorithm())
            raise RuntimeError("boom")

    with simdnn.conv_algorithm("direct"):
        with pytest.raises(RuntimeError, match="boom"):
            fail()
        assert seen == ["winograd"]
        assert simdnn.get_conv_algorithm() == "direct"
    assert simdnn.get_conv_algorithm() == "auto"


def test_a_call_sets_the_choice_and_an_object_can_be_entered_again():
    def body() -> None:
        simdnn.conv_algorithm("winograd")  # a plain call: for the rest of this context
        assert simdnn.get_conv_algorithm() == "winograd"
        choice = simdnn.conv_algorithm("direct")
        with choice:
            assert simdnn.get_conv_algorithm() == "direct"
        assert simdnn.get_conv_algorithm() == "winograd"
        with choice:  # entered again after its exit: sets it again
            assert simdnn.get_conv_algorithm() == "direct"
        assert simdnn.get_conv_algorithm() == "winograd"

    contextvars.copy_context().run(body)
    assert simdnn.get_conv_algorithm() == "auto"


def test_each_thread_has_its_own_choice():
    """Two threads inside overlapping blocks each see their own choice; a new thread starts at
    "auto" whatever the starting thread chose."""
    barrier = threading.Barrier(2, timeout=10)
    seen: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            log = seen.setdefault(name, [simdnn.get_conv_algorithm()])
            with simdnn.conv_algorithm(name):
                barrier.wait()  # both inside their blocks
                log.append(simdnn.get_conv_algorithm())
                barrier.wait()
            log.append(simdnn.get_conv_algorithm())
        except BaseException as err:  # reported by the main thread
            errors.append(err)

    with simdnn.conv_algorithm("direct"):
        threads = [threading.Thread(target=worker, args=(n,)) for n in ("winograd", "auto")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert simdnn.get_conv_algorithm() == "direct"
    assert not errors, errors
    assert seen == {"winograd": ["auto", "winograd", "auto"], "auto": ["auto", "auto", "auto"]}
