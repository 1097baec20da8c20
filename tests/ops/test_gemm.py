"""simdnn.ops.matmul / gemm against the NumPy twin, on every ISA, in float32 and float64."""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

import simdnn
from helpers import (
    AT_PAGE_END,
    BIG,
    ISAS,
    as64,
    assert_gemm_close,
    assert_same_classes,
    gemm_error_bound,
    need_memory,
    sprinkle,
)
from simdnn import _core, ops, reference
from strategies import (
    BAD_DTYPES,
    DTYPES,
    FLAGS,
    NOT_REALS,
    Draw,
    Layout,
    assert_bounded,
    assert_raises_bad_input,
    common,
    f64,
    layouts,
    normal,
    operand,
    place,
    real_like,
    reals,
    sizes,
)

# Shapes (M, K, N): ones, primes, sizes just around every tile (MR 4/6/12, NR 4/8/16/32) and
# block (KC 256-512), shapes large enough to take the blocked, threaded path, and B row strides
# on both sides of the in-place B rule.
EDGE_SHAPES = [
    (1, 1, 1),
    (1, 7, 1),
    (2, 3, 5),
    (7, 13, 31),
    (11, 1, 33),
    (12, 32, 32),
    (13, 17, 35),
    (5, 97, 1),
    (1, 101, 64),
    (31, 37, 17),
    (47, 64, 95),
    (64, 128, 10),
    (97, 89, 193),
    (101, 513, 67),
    (127, 257, 131),
    (130, 1031, 3),
    (3, 1100, 130),
    (200, 64, 257),
    # B rows of 512 bytes (float32: read in place everywhere) and 516 (packed on Intel, whose
    # CpuInfo::in_place_stride_bytes is 512); A and B rows of 2 KiB (float32: read in place but
    # on Intel) and 4 KiB (float64 there, float32 next: packed, gemm_driver.h in_place_pays)
    (70, 300, 128),
    (70, 300, 129),
    (37, 300, 512),
    (70, 200, 1024),
    (40, 512, 70),
    (40, 1024, 70),
    # B rows of 3.6 KB spanning 4 MB in float32 (packed on AMD Zen 3 and 4: CpuInfo's
    # in_place_span_bytes) and 2.1 MB (read in place everywhere but on Intel)
    (13, 1100, 900),
    (29, 600, 900),
]


def random_shapes(count: int, seed: int, high: int = 300) -> list[tuple[int, int, int]]:
    r = np.random.default_rng(seed)
    return [tuple(int(x) for x in r.integers(1, high, size=3)) for _ in range(count)]


SHAPES = EDGE_SHAPES + random_shapes(12, seed=1)


def make(rng: np.random.Generator, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


def oracle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a.astype(np.float64) @ b.astype(np.float64)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matmul_matches_reference(isa, dtype, rng, shape):
    m, k, n = shape
    a, b = make(rng, (m, k), dtype), make(rng, (k, n), dtype)
    got = ops.matmul(a, b)
    assert got.dtype == dtype
    assert got.shape == (m, n)
    assert_gemm_close(got, oracle(a, b), gemm_error_bound(a, b, dtype))
    # The twin agrees too (it is the benchmark baseline).
    assert_gemm_close(reference.matmul(a, b), oracle(a, b), gemm_error_bound(a, b, dtype))


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("shape", EDGE_SHAPES[::2] + random_shapes(4, seed=2))
def test_gemm_transposes_alpha_beta(isa, dtype, rng, shape, trans_a, trans_b):
    m, k, n = shape
    a = make(rng, (k, m) if trans_a else (m, k), dtype)
    b = make(rng, (n, k) if trans_b else (k, n), dtype)
    c0 = make(rng, (m, n), dtype)
    alpha, beta = -0.75, 1.5
    c = c0.copy()
    out = ops.gemm(a, b, c, alpha=alpha, beta=beta, trans_a=trans_a, trans_b=trans_b)
    assert out is c
    opa = a.T if trans_a else a
    opb = b.T if trans_b else b
    want = alpha * oracle(opa, opb) + beta * c0.astype(np.float64)
    bound = abs(alpha) * gemm_error_bound(opa, opb, dtype) + 4 * np.finfo(dtype).eps * (
        np.abs(want) + 1
    )
    assert_gemm_close(out, want, bound)
    twin = reference.gemm(a, b, c0.copy(), alpha=alpha, beta=beta, trans_a=trans_a, trans_b=trans_b)
    assert_gemm_close(twin, want, bound)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gemm_bias_and_relu_epilogue(isa, dtype, rng, shape):
    """bias and relu on every path of the driver: GEMV (M <= 4), the small unpacked product, the
    blocked engine with one or several K blocks (K 1031 and 1100 against KC 256-512), edge tiles;
    without c, with c and beta, and transposed. ReLU is 1-Lipschitz, so the product's bound holds
    after it."""
    m, k, n = shape
    a, b, bias = make(rng, (m, k), dtype), make(rng, (k, n), dtype), make(rng, (n,), dtype)
    bound = gemm_error_bound(a, b, dtype) + 2 * np.finfo(dtype).eps * (np.abs(bias) + 1)
    pre = oracle(a, b) + bias.astype(np.float64)
    got = ops.gemm(a, b, bias=bias, relu=True)
    assert got.dtype == dtype
    assert_gemm_close(got, np.maximum(pre, 0), bound)
    assert_gemm_close(reference.gemm(a, b, bias=bias, relu=True), np.maximum(pre, 0), bound)
    # bias alone, into c with alpha and beta, A and B transposed.
    c0 = make(rng, (m, n), dtype)
    c = c0.copy()
    out = ops.gemm(a.T.copy(), b.T.copy(), c, alpha=-0.5, beta=2.0, trans_a=True, trans_b=True,
                   bias=bias)  # fmt: skip
    assert out is c
    want = -0.5 * oracle(a, b) + 2.0 * c0.astype(np.float64) + bias.astype(np.float64)
    assert_gemm_close(out, want, 0.5 * bound + 4 * np.finfo(dtype).eps * (np.abs(want) + 1))
    # relu alone.
    assert_gemm_close(ops.gemm(a, b, relu=True), np.maximum(oracle(a, b), 0), bound)


def test_gemm_epilogue_keeps_nan(isa, dtype):
    """relu keeps NaN (as ops.relu and np.maximum do); a NaN bias reaches its whole column; with
    K == 0 the epilogue still runs, on beta * c."""
    a = np.ones((6, 3), dtype)
    a[1, 2] = np.nan
    bias = np.array([0.0, -3.0, -np.inf, np.nan, np.inf], dtype)
    got = ops.gemm(a, np.ones((3, 5), dtype), bias=bias, relu=True)
    want = reference.gemm(a, np.ones((3, 5), dtype), bias=bias, relu=True)
    assert_same_classes(got, want, "epilogue")
    assert np.isnan(got[1]).all()
    assert np.isnan(got[:, 3]).all()
    np.testing.assert_array_equal(got[0], [3, 0, 0, np.nan, np.inf])
    c = np.full((2, 3), -1.0, dtype)
    out = ops.gemm(np.ones((2, 0), dtype), np.ones((0, 3), dtype), c, beta=2.0,
                   bias=np.array([1.0, 3.0, 1.0], dtype), relu=True)  # fmt: skip
    np.testing.assert_array_equal(out, [[0, 1, 0], [0, 1, 0]])


def test_gemm_bias_errors_and_aliasing():
    a, b = np.ones((4, 5), np.float32), np.ones((5, 6), np.float32)
    with pytest.raises(ValueError, match=r"gemm: 'bias' has shape \(5,\); expected \(6,\)"):
        ops.gemm(a, b, bias=np.ones(5, np.float32))
    with pytest.raises(ValueError, match=r"'bias' has shape \(1, 6\)"):
        ops.gemm(a, b, bias=np.ones((1, 6), np.float32))
    with pytest.raises(TypeError, match="gemm: 'a' is float32 but 'bias' is float64"):
        ops.gemm(a, b, bias=np.ones(6))
    # A strided bias is read as its values; a c that holds the bias is computed aside.
    big = np.arange(12, dtype=np.float32)
    np.testing.assert_array_equal(ops.gemm(a, b, bias=big[::2]), 5 + big[::2][None, :].repeat(4, 0))
    for surface in (ops, reference):
        c = np.zeros((4, 6), np.float32)
        c[0] = np.arange(6)
        surface.gemm(a, b, c, beta=1.0, bias=c[0])
        np.testing.assert_array_equal(c[0], 5 + 2 * np.arange(6))
        np.testing.assert_array_equal(c[1:], 5 + np.arange(6)[None, :].repeat(3, 0))


def test_gemm_beta_zero_does_not_read_c(isa, dtype, rng):
    a, b = make(rng, (37, 29), dtype), make(rng, (29, 41), dtype)
    c = np.full((37, 41), np.nan, dtype)
    ops.gemm(a, b, c, beta=0.0)
    assert np.all(np.isfinite(c))
    assert_gemm_close(c, oracle(a, b), gemm_error_bound(a, b, dtype))


def test_gemm_without_c_returns_new_array(isa, dtype, rng):
    a, b = make(rng, (20, 30), dtype), make(rng, (30, 40), dtype)
    out = ops.gemm(a, b, alpha=2.0, beta=5.0)
    assert_gemm_close(out, 2 * oracle(a, b), 2 * gemm_error_bound(a, b, dtype))


@pytest.mark.parametrize(
    "layout",
    ["fortran", "sliced", "negative", "transposed_view", "row_slice"],
)
def test_any_strides_match_numpy(isa, dtype, rng, layout):
    base_a = make(rng, (150, 260), dtype)
    base_b = make(rng, (260, 140), dtype)
    if layout == "fortran":
        a, b = np.asfortranarray(base_a), np.asfortranarray(base_b)
    elif layout == "sliced":
        a, b = base_a[::2, ::3], base_b[::3, ::2]
    elif layout == "negative":
        a, b = base_a[::-1, ::-2], base_b[::-2, ::-1]
    elif layout == "transposed_view":
        a, b = base_b.T[:, :130], base_a.T[:130, :]
    else:
        a, b = base_a[3:140, 5:250], base_b[5:250, 7:130]
    got = ops.matmul(a, b)
    assert_gemm_close(got, oracle(a, b), gemm_error_bound(a, b, dtype))


def test_misaligned_and_byteswapped_inputs(isa, rng):
    a = make(rng, (30, 40), np.float32)
    b = make(rng, (40, 20), np.float32)
    buf = np.zeros(a.nbytes + 1, np.uint8)
    misaligned = np.ndarray(a.shape, np.float32, buffer=buf.data, offset=1)
    misaligned[...] = a
    assert not misaligned.flags.aligned
    want = oracle(a, b)
    for x in (misaligned, a.astype(">f4")):
        assert_gemm_close(ops.matmul(x, b), want, gemm_error_bound(a, b, np.float32))


@pytest.mark.parametrize("order", ["C", "F", "strided", "row_slice"])
def test_matmul_out(isa, dtype, rng, order):
    a, b = make(rng, (70, 50), dtype), make(rng, (50, 90), dtype)
    if order == "strided":
        out = np.zeros((140, 180), dtype)[::2, ::2]
    elif order == "row_slice":
        out = np.zeros((70, 100), dtype)[:, 5:95]
    else:
        out = np.zeros((70, 90), dtype, order=order)
    res = ops.matmul(a, b, out=out)
    assert res is out
    assert_gemm_close(out, oracle(a, b), gemm_error_bound(a, b, dtype))


def test_outputs_aliasing_inputs(isa, dtype, rng):
    a, b = make(rng, (64, 64), dtype), make(rng, (64, 64), dtype)
    want = oracle(a, b)
    bound = gemm_error_bound(a, b, dtype)
    x = a.copy()
    ops.matmul(x, b, out=x)
    assert_gemm_close(x, want, bound)
    y = b.copy()
    ops.gemm(a, y, y, beta=0.5)
    assert_gemm_close(y, want + 0.5 * b, bound + 4 * np.finfo(dtype).eps * (np.abs(want) + 1))


def test_zero_sized_dimensions(isa, dtype):
    for m, k, n in [(0, 5, 3), (4, 5, 0), (0, 0, 0), (3, 0, 4)]:
        a, b = np.ones((m, k), dtype), np.ones((k, n), dtype)
        got = ops.matmul(a, b)
        np.testing.assert_array_equal(got, np.matmul(a, b))
        assert got.shape == (m, n)
        assert got.dtype == dtype
    # K == 0: alpha * (empty sum) + beta * c.
    c = np.full((3, 4), 2.0, dtype)
    ops.gemm(np.ones((3, 0), dtype), np.ones((0, 4), dtype), c, beta=0.5)
    np.testing.assert_array_equal(c, np.full((3, 4), 1.0, dtype))
    c = np.full((3, 4), np.nan, dtype)
    ops.gemm(np.ones((3, 0), dtype), np.ones((0, 4), dtype), c, beta=0.0)
    np.testing.assert_array_equal(c, np.zeros((3, 4), dtype))


def test_long_k_error_is_bounded(isa, rng):
    """float32 with K = 200,000: the error stays within the rigorous bound against float64, and
    the blocked accumulation keeps it far below it (error growth well below linear in K)."""
    k = 200_000
    a = rng.uniform(0, 1, (3, k)).astype(np.float32)
    b = rng.uniform(0, 1, (k, 5)).astype(np.float32)
    got = ops.matmul(a, b)
    want = oracle(a, b)
    bound = gemm_error_bound(a, b, np.float32)
    assert_gemm_close(got, want, bound)
    rel = np.max(np.abs(got - want) / want)
    assert rel < 2e-4, rel  # K * u would be 1.2e-2


def test_results_identical_across_thread_counts(isa, dtype, rng, threads):
    """Each tile is computed by the same FMAs in the same order whatever the thread grid."""
    for m, k, n in [(64, 784, 256), (300, 200, 500), (784, 64, 256), (13, 1000, 700)]:
        a, b = make(rng, (m, k), dtype), make(rng, (k, n), dtype)
        at = np.ascontiguousarray(a.T)
        runs = {}
        for nt in (1, 2, 3):
            simdnn.set_num_threads(nt)
            runs[nt] = (ops.matmul(a, b), ops.gemm(at, b, trans_a=True))
        for nt in (2, 3):
            np.testing.assert_array_equal(runs[nt][0], runs[1][0])
            np.testing.assert_array_equal(runs[nt][1], runs[1][1])


def test_concurrent_python_threads(isa, rng):
    """Kernels release the GIL; several Python threads at once give the serial results."""
    pairs = [(make(rng, (130, 90), np.float32), make(rng, (90, 70), np.float32)) for _ in range(8)]
    want = [ops.matmul(a, b) for a, b in pairs]
    got: list[np.ndarray | None] = [None] * len(pairs)

    def work(i: int) -> None:
        for _ in range(20):
            got[i] = ops.matmul(*pairs[i])

    workers = [threading.Thread(target=work, args=(i,)) for i in range(len(pairs))]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


# ------------------------------------------------------------------------------------------------
# Small M (M <= 4, gemv.h): B read in place, row-major (unit column stride) or transposed (unit
# row stride); gemm's C must be C-contiguous, matmul's out may have any row stride. K and N: 1,
# primes, around the vector widths (4/8/16) and the unrolls (8 rows of B, 4 columns, 2W of K), and
# past one 16 KiB accumulator block (N = 4100 fp32 at M = 1). K past 512 rows with B of 3 MiB or
# more: row-major B in chunks of whole rows, the last one partial and not a multiple of the 8-row
# unroll (1100 = 2 x 512 + 9 x 8 + 4), with several column blocks (M = 2, N = 2100: 2 in fp32, 3 in
# fp64); 1 x 1100 x 37 is K past 512 with a small B (not chunked). M = 5 is the first M of the
# blocked engine.
GEMV_SHAPES = [
    (1, 1, 1),
    (1, 1, 37),
    (1, 37, 1),
    (1, 7, 3),
    (1, 8, 16),
    (1, 9, 17),
    (1, 31, 33),
    (1, 64, 100),
    (1, 131, 7),
    (1, 257, 129),
    (1, 5, 4100),
    (2, 17, 33),
    (2, 1, 15),
    (3, 33, 31),
    (3, 100, 1),
    (4, 13, 67),
    (4, 64, 4),
    (1, 1100, 37),
    (1, 513, 1600),
    (1, 1100, 800),
    (2, 1031, 2100),
    (4, 600, 1400),
    (5, 19, 37),
]


def _gemv_operands(rng, dtype, shape, layout):
    m, k, n = shape
    a, b = make(rng, (m, k), dtype), make(rng, (k, n), dtype)
    if layout == "plain":
        return a, b, b, False
    if layout == "trans_b":  # W of shape (N, K), as gemm(x, W, trans_b=True)
        return a, b, np.ascontiguousarray(b.T), True
    # A transposed view of W (N, K): unit row stride seen by matmul; A strided (every 2nd column).
    wide = make(rng, (m, 2 * k), dtype)
    wide[:, ::2] = a
    return wide[:, ::2], b, np.ascontiguousarray(b.T).T, False


@pytest.mark.parametrize("layout", ["plain", "trans_b", "view"])
@pytest.mark.parametrize("shape", GEMV_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_small_m_gemv(isa, dtype, rng, shape, layout):
    a, b, bop, tb = _gemv_operands(rng, dtype, shape, layout)
    m, n = shape[0], shape[2]
    bound = gemm_error_bound(a, b, dtype)
    got = ops.gemm(a, bop, trans_b=True) if tb else ops.matmul(a, bop)
    assert_gemm_close(got, oracle(a, b), bound)
    # alpha / beta.
    alpha, beta = 1.5, -0.75
    c0 = make(rng, (m, n), dtype)
    out = ops.gemm(a, bop, c0.copy(), alpha=alpha, beta=beta, trans_b=tb)
    assert_gemm_close(
        out,
        alpha * oracle(a, b) + beta * c0,
        abs(alpha) * bound + 4 * np.finfo(dtype).eps * (np.abs(beta * c0) + 1),
    )
    # matmul into a strided out (rows of a taller array): written in place, rows between kept.
    big2 = make(rng, (2 * m, n), dtype)
    keep = big2[1::2].copy()
    if not tb:
        ops.matmul(a, bop, out=big2[::2])
        assert_gemm_close(big2[::2], oracle(a, b), bound)
        np.testing.assert_array_equal(big2[1::2], keep)
    # beta = 0 never reads C: NaN in C does not propagate.
    cn = np.full((m, n), np.nan, dtype)
    ops.gemm(a, bop, cn, alpha=alpha, beta=0.0, trans_b=tb)
    assert_gemm_close(cn, alpha * oracle(a, b), abs(alpha) * bound)


@pytest.mark.parametrize("m", [1, 2, 4])
def test_small_m_gemv_threads(isa, dtype, rng, threads, m):
    """N split across threads (the grain lets N = 3000, K = 700 use 2-3 threads): every split
    gives the one-thread result bit for bit, both layouts."""
    k, n = 700, 3001
    a, b = make(rng, (m, k), dtype), make(rng, (k, n), dtype)
    w = np.ascontiguousarray(b.T)
    runs = {}
    for nt in (1, 2, 3):  # the conftest raises the thread cap to 8
        simdnn.set_num_threads(nt)
        runs[nt] = (ops.matmul(a, b), ops.gemm(a, w, trans_b=True))
    assert_gemm_close(runs[1][0], oracle(a, b), gemm_error_bound(a, b, dtype))
    assert_gemm_close(runs[1][1], oracle(a, b), gemm_error_bound(a, b, dtype))
    for nt in (2, 3):
        np.testing.assert_array_equal(runs[nt][0], runs[1][0])
        np.testing.assert_array_equal(runs[nt][1], runs[1][1])


def test_predict_one_sample(isa, rng):
    """predict on one sample (a 1-row Linear, the GEMV path) equals the batched rows."""
    from simdnn import nn
    from simdnn.training import predict

    model = nn.Sequential(nn.Linear(300, 129, rng=rng), nn.ReLU(), nn.Linear(129, 10, rng=rng))
    x = rng.standard_normal((6, 300)).astype(np.float32)
    batched = predict(model, x)
    for i in range(6):
        one = predict(model, x[i : i + 1])
        np.testing.assert_allclose(one, batched[i : i + 1], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Bad input: a clear TypeError/ValueError naming the argument, never a crash.


@pytest.mark.parametrize(
    ("a", "b", "exc", "words"),
    [
        (np.ones(3, np.float32), np.ones((3, 2), np.float32), ValueError, ["'a'", "2-D", "(3,)"]),
        (np.ones((2, 3), np.float32), np.ones((2, 3, 4), np.float32), ValueError, ["'b'", "2-D"]),
        (
            np.ones((2, 3), np.float32),
            np.ones((4, 2), np.float32),
            ValueError,
            ["(2, 3)", "(4, 2)"],
        ),
        (np.ones((2, 3), np.int64), np.ones((3, 2), np.float32), TypeError, ["'a'", "int64"]),
        (np.ones((2, 3), np.float32), np.ones((3, 2), np.complex64), TypeError, ["'b'", "complex"]),
        (np.ones((2, 3), np.float16), np.ones((3, 2), np.float16), TypeError, ["float16"]),
        (
            np.ones((2, 3), np.float32),
            np.ones((3, 2), np.float64),
            TypeError,
            ["float32", "float64"],
        ),
        (np.ones((2, 3), bool), np.ones((3, 2), np.float32), TypeError, ["'a'", "bool"]),
        ("abc", np.ones((3, 2), np.float32), TypeError, ["'a'"]),
    ],
)
def test_bad_operands(a, b, exc, words):
    for call in (lambda: ops.matmul(a, b), lambda: ops.gemm(a, b)):
        with pytest.raises(exc) as info:
            call()
        for w in words:
            assert w in str(info.value), (w, str(info.value))


def test_transposed_shape_mismatch_names_the_transpose():
    with pytest.raises(ValueError, match=r"a\.T has shape \(3, 2\)"):
        ops.gemm(np.ones((2, 3)), np.ones((3, 4)), trans_a=True)


def test_bad_c_and_out():
    a, b = np.ones((4, 5), np.float32), np.ones((5, 6), np.float32)
    with pytest.raises(ValueError, match=r"'c' has shape \(6, 4\); expected \(4, 6\)"):
        ops.gemm(a, b, np.zeros((6, 4), np.float32))
    with pytest.raises(TypeError, match="'c' has dtype float64; expected float32"):
        ops.gemm(a, b, np.zeros((4, 6)))
    with pytest.raises(ValueError, match="C-contiguous"):
        ops.gemm(a, b, np.zeros((4, 6), np.float32, order="F"))
    ro = np.zeros((4, 6), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        ops.gemm(a, b, ro)
    with pytest.raises(TypeError, match="'c' must be a NumPy array"):
        ops.gemm(a, b, [[0.0] * 6] * 4)
    with pytest.raises(ValueError, match="'out' has shape"):
        ops.matmul(a, b, out=np.zeros((4, 5), np.float32))
    with pytest.raises(TypeError, match="'out' has dtype"):
        ops.matmul(a, b, out=np.zeros((4, 6), np.int32))
    with pytest.raises(TypeError, match="alpha must be a real number"):
        ops.gemm(a, b, alpha=1j)
    with pytest.raises(TypeError, match="beta must be a real number"):
        ops.gemm(a, b, beta="1")


def test_array_likes_are_accepted():
    got = ops.matmul([[1.0, 2.0]], [[3.0], [4.0]])
    np.testing.assert_array_equal(got, [[11.0]])
    assert got.dtype == np.float64


# Products with a transposed B that the driver may compute transposed (gemm_driver.h swap_pays):
# the MLP's dX shape, primes, several K blocks (K 1031 against KC 256-512), M and N on both sides
# of every tile, and C^T rows of 4 KiB (M = 1024 float32, 512 float64: the scratch is padded).
SWAP_SHAPES = [
    (64, 256, 784),
    (5, 1031, 67),
    (13, 300, 97),
    (37, 61, 300),
    (97, 89, 193),
    (100, 300, 500),
    (512, 40, 24),
    (1024, 40, 24),
]


@pytest.mark.parametrize("shape", SWAP_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_transposed_product_has_the_same_bits(isa, dtype, rng, threads, shape):
    """C^T = B^T . A^T computed in place of C = A . B^T (forced on and off through the tests'
    switch): close to the float64 oracle, and the same bits either way on 1-3 threads, with A row
    major or transposed, alpha and beta into C, and the bias and ReLU epilogue."""
    m, k, n = shape
    b = make(rng, (n, k), dtype)
    bias = make(rng, (n,), dtype)
    c0 = make(rng, (m, n), dtype)
    for trans_a in (False, True):
        a = make(rng, (k, m) if trans_a else (m, k), dtype)
        opa = a.T if trans_a else a
        want = oracle(opa, b.T)
        bound = gemm_error_bound(opa, b.T, dtype)
        runs = {}
        try:
            for swap in (True, False):
                _core._set_gemm_swap(swap)
                for nt in (1, 2, 3):
                    simdnn.set_num_threads(nt)
                    c = c0.copy()
                    ops.gemm(a, b, c, alpha=-0.75, beta=1.5, trans_a=trans_a, trans_b=True)
                    runs[swap, nt] = (
                        ops.gemm(a, b, trans_a=trans_a, trans_b=True),
                        c,
                        ops.gemm(a, b, trans_a=trans_a, trans_b=True, bias=bias, relu=True),
                    )
        finally:
            _core._set_gemm_swap(None)
        plain, into_c, epilogue = runs[True, 1]
        assert_gemm_close(plain, want, bound)
        with_c = -0.75 * want + 1.5 * c0.astype(np.float64)
        assert_gemm_close(
            into_c, with_c, 0.75 * bound + 4 * np.finfo(dtype).eps * (np.abs(with_c) + 1)
        )
        pre = want + bias.astype(np.float64)
        assert_gemm_close(
            epilogue, np.maximum(pre, 0), bound + 2 * np.finfo(dtype).eps * (np.abs(bias) + 1)
        )
        for key, outs in runs.items():
            for got, first in zip(outs, runs[True, 1]):
                np.testing.assert_array_equal(got, first, err_msg=str(key))


def test_transposed_product_switch_reaches_the_driver(isa, dtype, rng, threads):
    """Forced on, the product keeps only C^T (N x M) in its workspace; forced off, it packs B^T
    (K x N, in KC x NC blocks): the switch decides which path runs. A is transposed so that,
    transposed, neither operand is packed (both are read in place)."""
    simdnn.set_num_threads(1)
    m, k, n = 8, 500, 512  # rows of B of 2000 or 4000 bytes: read in place (in_place_pays)
    a, b = make(rng, (k, m), dtype), make(rng, (n, k), dtype)
    held = {}
    try:
        for swap in (True, False):
            _core._set_gemm_swap(swap)
            simdnn.empty_cache()
            ops.gemm(a, b, trans_a=True, trans_b=True)
            held[swap] = simdnn.cpu_info()["workspace_bytes"]
    finally:
        _core._set_gemm_swap(None)
    assert 0 < 4 * held[True] <= held[False], held


@pytest.mark.parametrize("n", [128, 129, 256])
def test_b_read_in_place_up_to_the_stride_limit(isa, dtype, rng, threads, n):
    """A row-major B is read where it lies while its rows are at most cpu_info()'s
    in_place_stride_bytes apart (512 on Intel, no limit elsewhere) and packed past that: with A
    read in place too (rows of 300 elements), the product holds no packing workspace exactly
    when B is read in place. The rule reaches the driver on every ISA."""
    simdnn.set_num_threads(1)
    limit = simdnn.cpu_info()["in_place_stride_bytes"]
    a, b = make(rng, (64, 300), dtype), make(rng, (300, n), dtype)
    simdnn.empty_cache()
    got = ops.gemm(a, b)
    held = simdnn.cpu_info()["workspace_bytes"]
    row = n * np.dtype(dtype).itemsize
    assert (held == 0) == (limit is None or row <= limit), (row, limit, held)
    assert_gemm_close(got, oracle(a, b), gemm_error_bound(a, b, dtype))


@pytest.mark.parametrize("trans_a", [False, True])
def test_many_packed_a_blocks(isa, dtype, rng, threads, trans_a):
    """A packed in several blocks per row group (huge inputs do this; here the budget is shrunk)
    on 1-3 threads, where row groups run different blocks at the same time."""
    before = _core._set_gemm_a_pack_bytes(20_000)
    try:
        m, k, n = 181, 300, 97
        a = make(rng, (k, m) if trans_a else (m, k), dtype)
        b = make(rng, (k, n), dtype)
        opa = a.T if trans_a else a
        want = oracle(opa, b)
        for nt in (1, 2, 3):
            simdnn.set_num_threads(nt)
            got = ops.gemm(a, b, trans_a=trans_a)
            assert_gemm_close(got, want, gemm_error_bound(opa, b, dtype))
    finally:
        _core._set_gemm_a_pack_bytes(before)


# ------------------------------------------------------------------------------------------------
# Properties (hypothesis, marker property): any draw of shapes, layouts and arguments
# against the float64 twin.


# ------------------------------------------------------------------------------------------------
# GEMM: matmul and gemm


@pytest.mark.property
@given(st.data())
def test_gemm_matches_twin(data: st.DataObject) -> None:
    draw = data.draw
    isa, dtype, rng = common(draw)
    m, k, n = draw(sizes(0, 70)), draw(sizes(0, 70)), draw(sizes(0, 70))
    ta, tb = draw(FLAGS), draw(FLAGS)
    a = operand(draw, normal(rng, (k, m) if ta else (m, k), dtype))
    b = operand(draw, normal(rng, (n, k) if tb else (k, n), dtype))
    alpha = real_like(draw, draw(reals()))
    beta = real_like(draw, draw(reals()))
    c0 = normal(rng, (m, n), dtype) if draw(st.booleans()) else None
    c = None if c0 is None else c0.copy()
    kw = {"alpha": alpha, "beta": beta, "trans_a": ta, "trans_b": tb}
    note(f"m={m} k={k} n={n} {kw} c={'yes' if c is not None else 'no'}")
    want = reference.gemm(f64(a), f64(b), f64(c0), **{**kw, "alpha": float(alpha)})
    with simdnn.use_isa(isa):
        got = ops.gemm(a, b, c, **kw)
    if c is not None:
        assert got is c
    opa, opb = (a.T if ta else a), (b.T if tb else b)
    mag = abs(float(alpha)) * (np.abs(f64(opa)) @ np.abs(f64(opb)))
    if c0 is not None and float(beta) != 0.0:
        mag = mag + abs(float(beta)) * np.abs(f64(c0))
    assert_bounded(got, want, mag, k, dtype, "gemm")


@pytest.mark.property
@given(st.data())
def test_matmul_matches_twin(data: st.DataObject) -> None:
    draw = data.draw
    isa, dtype, rng = common(draw)
    m, k, n = draw(sizes(0, 70)), draw(sizes(0, 70)), draw(sizes(0, 70))
    a = operand(draw, normal(rng, (m, k), dtype))
    b = operand(draw, normal(rng, (k, n), dtype))
    want = reference.matmul(f64(a), f64(b))
    mag = np.abs(f64(a)) @ np.abs(f64(b))
    choices = ["none", "view"] + (["alias_a"] if k == n else []) + (["alias_b"] if m == k else [])
    where = draw(st.sampled_from(choices))
    note(f"m={m} k={k} n={n} out={where}")
    placed = None
    if where == "view":
        lay = draw(layouts(2, exotic=False))
        misaligned = draw(st.booleans())
        lay = Layout(lay.order, lay.steps, lay.flips, lay.offset, misaligned, False)
        note(f"out layout {lay}")
        placed = place(np.full((m, n), np.nan, dtype), lay)
        out = placed.array
    elif where in ("alias_a", "alias_b"):
        # out is one of the inputs, in any writeable layout.
        placed = place(np.array(a if where == "alias_a" else b, dtype), draw(layouts(2, False)))
        out = placed.array
        a, b = (out, b) if where == "alias_a" else (a, out)
    else:
        out = None
    with simdnn.use_isa(isa):
        got = ops.matmul(a, b, out=out)
    if out is not None:
        assert got is out
    assert_bounded(got, want, mag, k, dtype, "matmul")
    if placed is not None:
        assert placed.gaps_untouched(), "matmul wrote outside 'out'"


@st.composite
def bad_gemm_calls(draw: Draw) -> tuple[str, Callable[[], object], type[Exception]]:
    m, k, n = draw(st.integers(1, 9)), draw(st.integers(1, 9)), draw(st.integers(1, 9))
    dtype = draw(st.sampled_from(DTYPES))
    other = np.float64 if dtype == np.float32 else np.float32
    a, b = np.ones((m, k), dtype), np.ones((k, n), dtype)
    fn = draw(st.sampled_from([ops.gemm, ops.matmul]))
    bad = draw(
        st.sampled_from(
            [
                "a_ndim",
                "b_ndim",
                "inner",
                "a_dtype",
                "mixed",
                "not_array",
                "ragged",
                "out_shape",
                "out_dtype",
                "out_readonly",
                "out_list",
                "c_not_contiguous",
                "alpha",
                "beta",
            ]
        )
    )
    c: Any = None
    kw: dict[str, Any] = {}
    exc: type[Exception] = ValueError
    if bad == "a_ndim":
        a = np.ones(draw(st.sampled_from([(m,), (m, k, 1), ()])), dtype)
    elif bad == "b_ndim":
        b = np.ones(draw(st.sampled_from([(k,), (1, k, n)])), dtype)
    elif bad == "inner":
        b = np.ones((k + draw(st.sampled_from([-1, 1])), n), dtype)
    elif bad == "a_dtype":
        a, exc = a.astype(draw(BAD_DTYPES)), TypeError
    elif bad == "mixed":
        b, exc = b.astype(other), TypeError
    elif bad == "not_array":
        a, exc = draw(st.sampled_from(["abc", None, {"a": 1}, object()])), TypeError
    elif bad == "ragged":
        a, exc = [[1.0, 2.0], [3.0]], TypeError
    elif bad == "out_shape":
        c = np.zeros((m + 1, n), dtype)
    elif bad == "out_dtype":
        c, exc = np.zeros((m, n), draw(st.sampled_from([other, np.int32, np.float16]))), TypeError
    elif bad == "out_readonly":
        c = np.zeros((m, n), dtype)
        c.flags.writeable = False
    elif bad == "out_list":
        c, exc = np.zeros((m, n), dtype).tolist(), TypeError
    elif bad == "c_not_contiguous":
        if fn is ops.matmul:  # any strides are fine for matmul's out: make it the wrong shape
            c = np.zeros((m + 2, n), dtype)[::2]
            c = c if c.shape != (m, n) else np.zeros((m, n + 1), dtype)[:, 1:][:, ::-1][:-1]
        else:
            c = np.zeros((n, m + 1), dtype).T[:m] if m > 1 and n > 1 else np.zeros((m, n, 1), dtype)
    elif bad in ("alpha", "beta"):
        fn = ops.gemm
        kw[bad], exc = draw(NOT_REALS), TypeError
    if fn is ops.matmul:
        return f"matmul {bad}", lambda: ops.matmul(a, b, out=c), exc
    return f"gemm {bad} {kw}", lambda: ops.gemm(a, b, c, **kw), exc


@pytest.mark.property
@given(st.data())
def test_gemm_rejects_bad_input(data: st.DataObject) -> None:
    what, call, exc = data.draw(bad_gemm_calls())
    with simdnn.use_isa(data.draw(st.sampled_from(ISAS))):
        assert_raises_bad_input(call, exc, what)


# ------------------------------------------------------------------------------------------------
# Regressions (marker regression): one reproducer per bug found, named after it.


# ------------------------------------------------------------------------------------------------
# cpp/bindings/gemm.cpp: a one-row `out` was written with a unit column stride whatever its own.


@pytest.mark.regression
def test_matmul_one_row_out_with_column_step_or_reversed(isa):
    a = np.ones((1, 3), np.float32)
    b = np.ones((3, 10), np.float32) * np.arange(10, dtype=np.float32)
    want = a @ b
    with simdnn.use_isa(isa):
        stepped = np.full((1, 20), np.nan, np.float32)
        ops.matmul(a, b, out=stepped[:, ::2])  # was written into stepped[0, :10]
        np.testing.assert_array_equal(stepped[:, ::2], want)
        assert np.all(np.isnan(stepped[:, 1::2]))
        # A reversed row: was written from its last element onwards, past the buffer's end
        # (glibc then aborted with "corrupted size vs. prev_size").
        buf = np.full((1, 12), np.nan, np.float32)
        ops.matmul(a, b, out=buf[:, 1:11][:, ::-1])
        np.testing.assert_array_equal(buf[:, 1:11][:, ::-1], want)
        assert np.isnan(buf[0, 0])
        assert np.isnan(buf[0, 11])


# ------------------------------------------------------------------------------------------------
# CMakeLists.txt: GCC 12 auto-vectorised the scalar micro-kernel's k loop into code that also
# loaded the B row and A column after the last ones (found by valgrind). Here A and B end exactly
# where an inaccessible page begins, so a read past them is a segfault, not a silent stray read.

_GUARD_SCRIPT = (
    AT_PAGE_END
    + r"""
from simdnn import _core

checked = 0
for uk in _core.ukernels():
    if uk["isa"] not in sys.argv[1:]:
        continue
    dt = np.dtype(uk["dtype"])
    for m in range(1, uk["mr"] + 1):
        for n in range(1, uk["nr"] + 1):
            for k in (1, 2, 3, 16, 17):
                for column_a in (False, True):
                    a = np.ones((k, m) if column_a else (m, k), dt)
                    a = at_page_end(a)
                    a = a.T if column_a else a
                    b = at_page_end(np.ones((k, n), dt))
                    c = np.zeros((m, n), dt)
                    _core.run_ukernel(uk["index"], a, b, c, 1.0, 0.0)
                    assert (c == k).all()
                    checked += 1
print(checked)
"""
)


@pytest.mark.regression
def test_micro_kernels_do_not_read_past_a_and_b():

    if not sys.platform.startswith("linux"):
        pytest.skip("uses mmap and mprotect through libc")
    isas = ISAS
    run = subprocess.run(
        [sys.executable, "-c", _GUARD_SCRIPT, *isas], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    assert int(run.stdout) > 1000


# ------------------------------------------------------------------------------------------------
# Non-finite values (marker nonfinite): NaN, +Inf, -Inf and zeros sprinkled into every
# input; the class of each element must be the twin's.


@pytest.mark.nonfinite
@pytest.mark.usefixtures("quiet_numpy")
@pytest.mark.parametrize(("m", "k", "n"), [(1, 1, 1), (7, 13, 5), (37, 61, 67), (97, 130, 33)])
@pytest.mark.parametrize(("trans_a", "trans_b"), [(False, False), (True, True)])
def test_gemm_non_finite(isa, dtype, rng, m, k, n, trans_a, trans_b):
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


@pytest.mark.nonfinite
@pytest.mark.usefixtures("quiet_numpy")
def test_gemm_beta_zero_ignores_c_but_not_a(isa, dtype):
    """beta = 0 does not read c (BLAS and PyTorch's addmm); NaN in a still reaches the result."""
    a = np.ones((5, 3), dtype)
    a[2, 1] = np.nan
    c = np.full((5, 4), np.nan, dtype)
    got = ops.gemm(a, np.ones((3, 4), dtype), c, beta=0.0)
    assert np.isnan(got[2]).all()
    assert np.isfinite(np.delete(got, 2, axis=0)).all()


# ------------------------------------------------------------------------------------------------
# Limits: tensors past 2**31 elements (marker large) and workspaces that cannot be
# allocated.


@pytest.mark.large
def test_gemm_output_past_2_31_elements(each_isa) -> None:
    # Rank-1 update into C of 65536 x 32769 = 2**31 + 65536 elements: the last rows start past
    # element 2**31. The odd N also keeps every row misaligned differently.
    m, n = 65536, 32769
    need_memory(m * n * 4)
    rng = np.random.default_rng(1)
    a = rng.standard_normal((m, 1)).astype(np.float32)
    b = rng.standard_normal((1, n)).astype(np.float32)
    assert (m - 1) * n > BIG
    # One C for every ISA, NaN-filled before each call (beta 0 writes C without reading it): a
    # fresh 8.6 GB output per ISA would fault in again, as slowly as the first on the CI VM.
    c = np.empty((m, n), np.float32)
    for isa in each_isa():
        c.fill(np.nan)
        assert ops.gemm(a, b, c) is c
        for i in [0, 1, 12345, BIG // n, BIG // n + 1, m - 2, m - 1]:
            np.testing.assert_array_equal(c[i], a[i, 0] * b[0], err_msg=f"{isa} row {i}")
    del c


@pytest.mark.large
def test_gemm_input_past_2_31_elements(each_isa) -> None:
    # A of 32769 x 65536 (2**31 + 65536 elements) times a vector: the packing reads past 2**31.
    m, k = 32769, 65536
    need_memory(m * k * 4)
    a = np.empty((m, k), dtype=np.float32)
    # a[i, j] = r[i] + s[j], written in place (a random fill would take longer than the test).
    rng = np.random.default_rng(2)
    r = rng.standard_normal(m).astype(np.float32)
    s = rng.standard_normal(k).astype(np.float32)
    np.add(r[:, None], s[None, :], out=a)
    b = rng.standard_normal((k, 1)).astype(np.float32)
    rows = np.array([0, 1, BIG // k - 2, BIG // k - 1, m - 1])  # row m - 1 starts at 2**31
    want = a[rows].astype(np.float64) @ b[:, 0].astype(np.float64)
    bound = k * np.finfo(np.float32).eps * (np.abs(a[rows]) @ np.abs(b[:, 0])).astype(np.float64)
    for isa in each_isa():
        got = ops.gemm(a, b)[:, 0]
        assert np.all(np.abs(got[rows] - want) <= bound), (isa, got[rows], want)
    del a
