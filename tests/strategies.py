"""Strategies and checks of the property-based tests (hypothesis, marker ``property``) in
tests/ops/: every native op in simdnn.ops against its NumPy twin, each op's in its own file.

Each test draws the instruction set (every one in ``helpers.ISAS``), the dtype,
the shapes (0, 1, primes, sizes that are no multiple of any tile), the memory layout of every input
(C or Fortran order, slices with steps, negative strides, transposed views, misaligned or
byte-swapped data, non-contiguous ``out``) and the arguments (ints, NumPy ints, pairs as tuples or
lists, huge strides where they are valid). Valid draws must match the twin evaluated in float64
on the same data, within a rigorous bound that grows with the reduction length (exactly, where the
op is a selection: ReLU, max-pool values and indices); invalid draws (one argument just outside its
valid range, a wrong type, dtype or shape) must raise TypeError or ValueError and nothing else.

The ``ci`` hypothesis profile (registered in tests/conftest.py, the default) is derandomized and
runs ``CI_EXAMPLES`` examples per test. For a long run, 20x as many examples from fresh seeds:

    HYPOTHESIS_PROFILE=long pytest tests -m property

A failure prints the falsifying example and a ``@reproduce_failure`` blob to replay it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import note
from hypothesis import strategies as st

import helpers

ISAS: tuple[str, ...] = tuple(helpers.ISAS)


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
# Elementwise: relu, relu_backward; optimiser steps: sgd_update, adam_update


@st.composite
def any_shapes(draw: Draw) -> tuple[int, ...]:
    """0 to 4 dimensions, including empty ones, and totals past a vector or two."""
    ndim = draw(st.integers(0, 4))
    shape = tuple(draw(sizes(0, 9 if ndim > 2 else 70)) for _ in range(ndim))
    note(f"shape {shape}")
    return shape
