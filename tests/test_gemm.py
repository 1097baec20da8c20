"""simdnn.ops.matmul / gemm against the NumPy twin, on every ISA, in float32 and float64."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import simdnn
from helpers import assert_gemm_close, gemm_error_bound
from simdnn import _core, ops, reference

# Shapes (M, K, N): ones, primes, sizes just around every tile (MR 4/6/12, NR 4/8/16/32) and
# block (KC 256-512), and shapes large enough to take the blocked, threaded path.
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
