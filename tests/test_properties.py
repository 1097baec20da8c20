"""Property-based tests (hypothesis) of every native op in simdnn.ops against its NumPy twin.

Each test draws the instruction set (every one in ``simdnn.cpu_info()["available"]``), the dtype,
the shapes (0, 1, primes, sizes that are no multiple of any tile), the memory layout of every input
(C or Fortran order, slices with steps, negative strides, transposed views, misaligned or
byte-swapped data, non-contiguous ``out``) and the arguments (ints, NumPy ints, pairs as tuples or
lists, huge strides where they are valid). Valid draws must match the twin evaluated in float64
on the same data, within a rigorous bound that grows with the reduction length (exactly, where the
op is a selection: ReLU, max-pool values and indices); invalid draws (one argument just outside its
valid range, a wrong type, dtype or shape) must raise TypeError or ValueError and nothing else.

The ``ci`` hypothesis profile (registered in tests/conftest.py, the default) is derandomized and
runs ``CI_EXAMPLES`` examples per test. For a long run, 20x as many examples from fresh seeds:

    HYPOTHESIS_PROFILE=long pytest tests/test_properties.py

A failure prints the falsifying example and a ``@reproduce_failure`` blob to replay it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

import simdnn
from simdnn import ops, reference

ISAS: tuple[str, ...] = tuple(simdnn.cpu_info()["available"])
DTYPES = (np.float32, np.float64)
F64 = np.float64

# Sizes that catch edge tiles: zero, one, primes, one past a power of two, odd multiples.
EDGE_SIZES = (0, 1, 2, 3, 5, 7, 11, 13, 17, 19, 31, 33, 37, 61, 65, 67)
# Strides that are valid however large (a window that fits once), whose products must not
# overflow anywhere.
HUGE_STRIDES = (2**31 + 1, 2**62, 2**63 - 1)
# Integers that no int64 holds, or that overflow the first product they enter.
HUGE_INTS = (2**62, 2**63 - 1, 2**63, 2**64 + 3, -(2**63) - 1)

Draw = Callable[[st.SearchStrategy[Any]], Any]


def sizes(lo: int, hi: int) -> st.SearchStrategy[int]:
    edge = [v for v in EDGE_SIZES if lo <= v <= hi]
    if not edge:
        return st.integers(lo, hi)
    return st.one_of(st.sampled_from(edge), st.integers(lo, hi))


def int_like(draw: Draw, v: int) -> object:
    """v as a Python int or a NumPy integer scalar (both are ints to the ops)."""
    kind = draw(st.sampled_from(["int", "int", "int64", "intc"]))
    if kind == "int64" and -(2**63) <= v < 2**63:
        return np.int64(v)
    if kind == "intc" and -(2**31) <= v < 2**31:
        return np.intc(v)
    return v


def int_param(draw: Draw, pair: tuple[int, int]) -> object:
    """An int-or-pair argument meaning ``pair``: an int when both are equal (sometimes), else a
    tuple or a list of two ints."""
    a, b = pair
    form = draw(st.sampled_from(["int", "tuple", "list"]))
    if form == "int" and a == b:
        return int_like(draw, a)
    two = (int_like(draw, a), int_like(draw, b))
    return two if form == "tuple" else list(two)


def real_like(draw: Draw, v: float) -> object:
    """v as a Python float, a NumPy float, or a Python int when it is integral."""
    kind = draw(st.sampled_from(["float", "float", "float64", "float32", "int"]))
    if kind == "float64":
        return np.float64(v)
    if kind == "float32" and float(np.float32(v)) == v:
        return np.float32(v)
    if kind == "int" and float(v).is_integer() and abs(v) < 2**53:
        return int(v)
    return float(v)


# ------------------------------------------------------------------------------------------------
# Memory layouts


@dataclass(frozen=True)
class Layout:
    """How an array of a given logical shape sits in memory."""

    order: tuple[int, ...]  # memory order of the logical axes (C: identity, Fortran: reversed)
    steps: tuple[int, ...]  # slice step per logical axis
    flips: tuple[bool, ...]  # negative stride per logical axis
    offset: int  # elements skipped at the start of the buffer
    misaligned: bool  # data one byte off its natural alignment
    byteswapped: bool  # non-native byte order


@st.composite
def layouts(draw: Draw, ndim: int, exotic: bool = True) -> Layout:
    kind = draw(st.sampled_from(["C", "C", "F", "any"]))
    if kind == "C" or ndim == 0:
        order, steps, flips = tuple(range(ndim)), (1,) * ndim, (False,) * ndim
    elif kind == "F":
        order, steps, flips = tuple(reversed(range(ndim))), (1,) * ndim, (False,) * ndim
    else:
        order = tuple(draw(st.permutations(range(ndim))))
        steps = tuple(draw(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim)))
        flips = tuple(draw(st.lists(st.booleans(), min_size=ndim, max_size=ndim)))
    oddity = draw(st.sampled_from(["none"] * 6 + ["misaligned", "byteswapped"])) if exotic else ""
    return Layout(
        order,
        steps,
        flips,
        draw(st.integers(0, 2)),
        oddity == "misaligned",
        oddity == "byteswapped",
    )


@dataclass
class Placed:
    """An array inside a larger buffer; ``gaps_untouched``: nothing was written beside it."""

    array: np.ndarray
    buffer: np.ndarray  # every element of the allocation, 1-D
    covered: np.ndarray  # bool mask over buffer: the elements that belong to ``array``

    def gaps_untouched(self) -> bool:
        gaps = self.buffer[~self.covered]
        if gaps.dtype.kind != "f":
            return bool(np.all(gaps == np.iinfo(gaps.dtype).max))
        return bool(np.all(np.isnan(gaps)))


def place(values: np.ndarray, lay: Layout) -> Placed:
    """Copy ``values`` into a new array of the same logical shape laid out as ``lay``; the unused
    elements of its buffer hold NaN (or, in an integer array, its largest value), so a kernel
    that reads a gap produces NaN (or an out-of-range index error)."""
    shape = values.shape
    dt = np.dtype(values.dtype)
    if lay.byteswapped:
        dt = dt.newbyteorder()
    mem_shape = [shape[a] * lay.steps[a] for a in lay.order]
    count = lay.offset + math.prod(mem_shape)
    raw = np.zeros(count * dt.itemsize + 8, np.uint8)
    start = 1 if lay.misaligned else 0
    flat = np.ndarray((count,), dt, buffer=raw.data, offset=start)
    # Gaps hold NaN (an index array: its largest value, out of range of any window).
    flat[...] = np.nan if dt.kind == "f" else np.iinfo(dt).max
    index = np.arange(count)

    def arrange(buf: np.ndarray) -> np.ndarray:
        v = buf[lay.offset :].reshape(mem_shape).transpose(np.argsort(lay.order))
        if not shape:  # indexing a 0-d array with () would give a scalar, not a view
            return v
        v = v[tuple(slice(None, None, s) for s in lay.steps)]
        return v[tuple(slice(None, None, -1) if f else slice(None) for f in lay.flips)]

    view = arrange(flat)
    view[...] = values
    covered = np.zeros(count, bool)
    covered[arrange(index).ravel()] = True
    return Placed(view, flat, covered)


def normal(rng: np.random.Generator, shape: Sequence[int], dtype: type) -> np.ndarray:
    return np.asarray(rng.standard_normal(tuple(shape))).astype(dtype)


def operand(draw: Draw, values: np.ndarray, exotic: bool = True) -> np.ndarray:
    """``values`` in a drawn layout (a read-only input)."""
    lay = draw(layouts(values.ndim, exotic))
    note(f"layout {values.shape}: {lay}")
    return place(values, lay).array


def common(draw: Draw) -> tuple[str, type, np.random.Generator]:
    isa = draw(st.sampled_from(ISAS))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    note(f"isa={isa} dtype={np.dtype(dtype).name}")
    return isa, dtype, rng


def f64(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else np.array(a, dtype=F64)


# ------------------------------------------------------------------------------------------------
# Tolerances


def gamma(n: int, dtype: type) -> float:
    """gamma_n = n u / (1 - n u): the relative bound of n successive roundings (Higham 3.1)."""
    u = np.finfo(dtype).eps / 2
    return n * u / (1 - n * u)


def assert_bounded(
    got: np.ndarray, want: np.ndarray, mag: np.ndarray, n: int, dtype: type, what: str
) -> None:
    """|got - want| <= 2 gamma_{n+4} mag elementwise: ``want`` is the float64 twin, ``mag`` the
    same computation on absolute values (the sum of the magnitudes of the terms), ``n`` the
    reduction length. Doubled for the rounding of the float64 oracle itself."""
    assert got.dtype == np.dtype(dtype), (what, got.dtype)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    bound = 2 * gamma(n + 4, dtype) * np.asarray(mag, F64) + np.finfo(dtype).tiny * (n + 4)
    err = np.abs(got.astype(F64) - want)
    bad = ~(err <= bound)
    if np.any(bad):
        i = np.unravel_index(np.argmax(np.where(bad, 1.0, 0.0)), err.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {err.size} elements outside the bound (n={n}); first at "
            f"{i}: got {got[i]!r}, want {want[i]!r}, bound {bound[i]:.3g}"
        )


def assert_raises_bad_input(call: Callable[[], object], exc: type[Exception], what: str) -> None:
    """The call raises ``exc`` (TypeError for types and dtypes, ValueError for shapes and values);
    anything else (RuntimeError, MemoryError, no error) fails the test."""
    note(f"bad input: {what}")
    with pytest.raises((TypeError, ValueError)) as info:
        call()
    assert isinstance(info.value, exc), (what, info.value)


def reals(lo: float = -3.0, hi: float = 3.0) -> st.SearchStrategy[float]:
    return st.one_of(
        st.sampled_from([0.0, 1.0, -1.0, 0.5, 2.0]),
        st.floats(lo, hi, allow_nan=False, allow_infinity=False),
    )


FLAGS = st.sampled_from([False, True, 0, 1, np.bool_(True)])

# Values that are not real numbers (hyper-parameters) or not ints (shape and window arguments).
NOT_REALS = st.sampled_from([1j, "1", None, True, np.bool_(False), [1.0], b"1"])
NOT_INTS = st.sampled_from(
    [1.5, 2.0, "2", None, True, np.float64(2.0), np.array(2.5), (1, 2, 3), (1,), [1.0, 1]]
)
BAD_DTYPES = st.sampled_from([np.int32, np.int64, np.uint8, np.float16, np.complex64, bool])


# ------------------------------------------------------------------------------------------------
# GEMM: matmul and gemm


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


@given(st.data())
def test_gemm_rejects_bad_input(data: st.DataObject) -> None:
    what, call, exc = data.draw(bad_gemm_calls())
    with simdnn.use_isa(data.draw(st.sampled_from(ISAS))):
        assert_raises_bad_input(call, exc, what)


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


@given(st.data())
def test_conv_rejects_bad_input(data: st.DataObject) -> None:
    what, call, exc = data.draw(bad_conv_calls())
    with simdnn.use_isa(data.draw(st.sampled_from(ISAS))):
        assert_raises_bad_input(call, exc, what)


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


@given(st.data())
def test_pool_rejects_bad_input(data: st.DataObject) -> None:
    what, call, exc = data.draw(bad_pool_calls())
    with simdnn.use_isa(data.draw(st.sampled_from(ISAS))):
        assert_raises_bad_input(call, exc, what)


# ------------------------------------------------------------------------------------------------
# Elementwise: relu, relu_backward; optimiser steps: sgd_update, adam_update


@st.composite
def any_shapes(draw: Draw) -> tuple[int, ...]:
    """0 to 4 dimensions, including empty ones, and totals past a vector or two."""
    ndim = draw(st.integers(0, 4))
    shape = tuple(draw(sizes(0, 9 if ndim > 2 else 70)) for _ in range(ndim))
    note(f"shape {shape}")
    return shape


@given(st.data())
def test_relu_and_backward_match_twin_exactly(data: st.DataObject) -> None:
    draw = data.draw
    isa, dtype, rng = common(draw)
    shape = draw(any_shapes())
    values = normal(rng, shape, dtype)
    if values.size and draw(st.booleans()):  # exact zeros: relu'(0) is 0, as in PyTorch
        values.flat[rng.integers(0, values.size, size=max(1, values.size // 4))] = 0
    x = operand(draw, values)
    dy = operand(draw, normal(rng, shape, dtype))
    with simdnn.use_isa(isa):
        y = ops.relu(x)
        dx = ops.relu_backward(dy, x)
    # Selections and one multiply by 0 or 1: exact.
    for got, want in ((y, reference.relu(np.array(x))), (dx, reference.relu_backward(dy, x))):
        assert got.dtype == np.dtype(dtype)
        assert got.shape == shape
        np.testing.assert_array_equal(got, want)


def _optimizer_state(
    draw: Draw, rng: np.random.Generator, dtype: type
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """A model's worth of parameters (1 to 4 arrays of any shapes), gradients in drawn layouts,
    and two state arrays per parameter (non-negative, as Adam's second moment)."""
    shapes = [draw(any_shapes()) for _ in range(draw(st.integers(1, 4)))]
    params = [normal(rng, s, dtype) for s in shapes]
    grads = [operand(draw, normal(rng, s, dtype)) for s in shapes]
    m = [normal(rng, s, dtype) for s in shapes]
    v = [np.asarray(np.abs(normal(rng, s, dtype))) for s in shapes]
    return params, grads, m, v


def _copies(arrays: list[np.ndarray], dtype: type | None = None) -> list[np.ndarray]:
    return [np.array(a, dtype=dtype) for a in arrays]


@given(st.data())
def test_sgd_update_matches_twin(data: st.DataObject) -> None:
    draw = data.draw
    isa, dtype, rng = common(draw)
    params, grads, vel, _ = _optimizer_state(draw, rng, dtype)
    momentum = real_like(draw, draw(st.sampled_from([0.0, 0.5, 0.9])))
    kw = {
        "lr": real_like(draw, draw(st.floats(0, 2))),
        "momentum": momentum,
        "nesterov": bool(float(momentum)) and draw(FLAGS),
        "weight_decay": real_like(draw, draw(st.sampled_from([0.0, 1e-4, 0.5]))),
    }
    as_list = draw(st.booleans()) or len(params) > 1
    note(f"{kw} as_list={as_list}")
    want_p, want_v = _copies(params, F64), _copies(vel, F64)
    velocity = vel if float(momentum) else draw(st.sampled_from([None, vel]))
    with simdnn.use_isa(isa):
        if as_list:
            ops.sgd_update(params, grads, velocity, **kw)
        else:
            ops.sgd_update(params[0], grads[0], None if velocity is None else velocity[0], **kw)
    n = len(params) if as_list else 1
    plain = {k: (float(v) if k != "nesterov" else v) for k, v in kw.items()}
    reference.sgd_update(
        want_p[:n], _copies(grads[:n], F64), want_v[:n] if float(momentum) else None, **plain
    )
    for got, want in zip(
        params[:n] + (vel[:n] if float(momentum) else []),
        want_p[:n] + (want_v[:n] if float(momentum) else []),
    ):
        mag = np.abs(want) + 4.0
        assert_bounded(got, want, mag, 8, dtype, "sgd_update")


@given(st.data())
def test_adam_update_matches_twin(data: st.DataObject) -> None:
    draw = data.draw
    isa, dtype, rng = common(draw)
    params, grads, m, v = _optimizer_state(draw, rng, dtype)
    kw = {
        "lr": real_like(draw, draw(st.floats(0, 0.1))),
        "beta1": real_like(draw, draw(st.sampled_from([0.0, 0.5, 0.9]))),
        "beta2": real_like(draw, draw(st.sampled_from([0.0, 0.9, 0.999]))),
        "eps": real_like(draw, draw(st.sampled_from([1e-8, 1e-3, 0.1]))),
        "weight_decay": real_like(draw, draw(st.sampled_from([0.0, 1e-2]))),
        "step": int_like(draw, draw(st.integers(1, 1000))),
    }
    note(f"{kw}")
    want = [_copies(a, F64) for a in (params, m, v)]
    g64 = _copies(grads, F64)
    plain = {k: (int(x) if k == "step" else float(x)) for k, x in kw.items()}
    lr, b1, b2, wd, step = (plain[k] for k in ("lr", "beta1", "beta2", "weight_decay", "step"))
    # The magnitudes of the terms of each result (for the rounding bound), from the inputs: the
    # first moment may cancel (beta1 * m + (1 - beta1) * g near 0), and the step divides it by
    # sqrt(v) + eps, which amplifies its rounding error when v is small.
    # The gradient itself may cancel (g + weight_decay * p near 0), and the second moment's
    # error (first order: the magnitudes below, times u) moves the step by half its relative size.
    g_mag = [np.abs(g) + wd * np.abs(p) for g, p in zip(g64, want[0])]
    g_abs = [np.abs(g + wd * p) for g, p in zip(g64, want[0])]
    m_mag = [b1 * np.abs(m0) + (1 - b1) * gm for m0, gm in zip(want[1], g_mag)]
    v_mag = [b2 * v0 + (1 - b2) * gm * gm for v0, gm in zip(want[2], g_mag)]
    v_err = [b2 * v0 + (1 - b2) * 2 * ga * gm for v0, ga, gm in zip(want[2], g_abs, g_mag)]
    reference.adam_update(want[0], g64, want[1], want[2], **plain)
    c1, c2 = 1 - b1**step, 1 - b2**step
    p_mag = [
        np.abs(p)
        + lr
        / c1
        * (mm + np.abs(m1) * (1 + ve / np.maximum(v1, 1e-300)))
        / (np.sqrt(v1 / c2) + plain["eps"])
        for p, mm, m1, v1, ve in zip(want[0], m_mag, want[1], want[2], v_err)
    ]
    with simdnn.use_isa(isa):
        ops.adam_update(params, grads, m, v, **kw)
    for got_list, want_list, mags, what in zip(
        (params, m, v), want, (p_mag, m_mag, v_mag), ("param", "exp_avg", "exp_avg_sq")
    ):
        for got, w, mag in zip(got_list, want_list, mags):
            assert_bounded(got, w, mag, 16, dtype, f"adam_update {what}")


@st.composite
def bad_elementwise_calls(draw: Draw) -> tuple[str, Callable[[], object], type[Exception]]:
    op = draw(st.sampled_from(["relu", "relu_backward", "sgd", "adam"]))
    bad = draw(
        st.sampled_from(
            [
                "dtype",
                "mixed",
                "shape",
                "not_array",
                "hyper_type",
                "hyper_range",
                "layout",
                "readonly",
                "list_length",
                "step",
            ]
        )
    )
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(any_shapes())
    good = np.ones(shape, dtype)
    exc: type[Exception] = ValueError
    what = f"{op}: {bad} shape={shape}"
    if op in ("relu", "relu_backward"):
        x, dy = good, good.copy()
        if bad in ("dtype", "hyper_type", "step", "readonly"):
            x, exc = np.ones(shape, draw(BAD_DTYPES)), TypeError
        elif bad == "mixed":
            dy, exc = dy.astype(np.float32 if dtype == np.float64 else np.float64), TypeError
            if op == "relu":
                x = np.full(shape, "a")  # a string array, even when empty
        elif bad in ("shape", "layout", "list_length", "hyper_range"):
            dy = np.ones((*shape, 2), dtype)
            if op == "relu":
                x, exc = np.array([[1.0], [1.0, 2.0]], dtype=object), TypeError
        else:
            x, exc = "not an array", TypeError
        if op == "relu":
            return what, lambda: ops.relu(x), exc
        return what, lambda: ops.relu_backward(dy, x), exc
    # Optimisers: param, grad and states of one shape and dtype, writeable and C-contiguous.
    p, g, s1, s2 = good.copy(), good.copy(), np.zeros_like(good), np.zeros_like(good)
    kw: dict[str, object] = {"lr": 0.1}
    if op == "sgd":
        kw["momentum"] = 0.9
    if bad == "dtype":
        p, exc = p.astype(draw(BAD_DTYPES)), TypeError
    elif bad == "mixed":
        g, exc = g.astype(np.float32 if dtype == np.float64 else np.float64), TypeError
    elif bad == "shape":
        g = np.ones((*shape, 1), dtype)
    elif bad == "not_array":
        g, exc = draw(st.sampled_from(["x", None, object()])), TypeError
    elif bad == "hyper_type":
        name = draw(
            st.sampled_from(
                ["lr", "weight_decay"] + (["momentum"] if op == "sgd" else ["beta1", "eps", "step"])
            )
        )
        kw[name], exc = draw(NOT_REALS if name != "step" else NOT_INTS), TypeError
    elif bad == "hyper_range":
        names = ["lr", "weight_decay"] + (
            ["momentum"] if op == "sgd" else ["beta1", "beta2", "eps"]
        )
        name = draw(st.sampled_from(names))
        kw[name] = draw(
            st.sampled_from(
                [-1e-9, -1.0, math.nan, math.inf, -math.inf]
                + ([1.0, 1.5] if name.startswith("beta") else [])
            )
        )
    elif bad == "layout":  # a strided view: not C-contiguous, cannot be updated in place
        p = np.ones((*shape, 2), dtype)[..., 0] if good.size > 1 else np.ones(4, dtype)[::2]
        g, s1, s2 = np.ones(p.shape, dtype), np.zeros(p.shape, dtype), np.zeros(p.shape, dtype)
    elif bad == "readonly":
        p.flags.writeable = False
    elif bad == "list_length":
        p, g = [p, p.copy()], [g]
        s1, s2 = [s1, s1.copy()], [s2, s2.copy()]
    elif bad == "step":
        if op == "adam":
            kw["step"] = draw(st.sampled_from([0, -1, -(2**40)]))
        else:
            kw["nesterov"], kw["momentum"] = True, 0.0
    note(f"{what} kw={kw}")
    if op == "sgd":
        return what, lambda: ops.sgd_update(p, g, s1, **kw), exc
    return what, lambda: ops.adam_update(p, g, s1, s2, **kw), exc


@given(st.data())
def test_elementwise_and_optimizers_reject_bad_input(data: st.DataObject) -> None:
    what, call, exc = data.draw(bad_elementwise_calls())
    with simdnn.use_isa(data.draw(st.sampled_from(ISAS))):
        assert_raises_bad_input(call, exc, what)
