"""Helpers shared by the kernel tests: the ISAs to test, tolerances, non-finite inputs, memory."""

from __future__ import annotations

import numpy as np
import pytest

import simdnn


def available_isas() -> list[str]:
    """The instruction sets every kernel test runs on: those with kernels registered (the C++
    kernel registry, where the extension has one) that this CPU can run, in cpu_info's order."""
    available = list(simdnn.cpu_info()["available"])
    registry = getattr(simdnn._core, "kernel_registry", None)
    if registry is None:
        return available
    registered = set()
    for entry in registry():
        isa = entry.get("isa") if isinstance(entry, dict) else getattr(entry, "isa", entry)
        registered.add(str(isa))
    return [isa for isa in available if isa in registered] or available


ISAS: list[str] = available_isas()


def gemm_error_bound(a: np.ndarray, b: np.ndarray, dtype: type) -> np.ndarray:
    """A rigorous elementwise bound on the rounding error of a dot-product-based a @ b.

    |fl(a @ b) - a @ b| <= gamma_K * (|a| @ |b|) with gamma_K = K u / (1 - K u) (Higham, Accuracy
    and Stability of Numerical Algorithms, 3.5); doubled for the rounding of alpha/beta scaling,
    plus the rounding of the float64 oracle itself.
    """
    k = a.shape[1]
    u = np.finfo(dtype).eps / 2
    gamma = (k + 2) * u / (1 - (k + 2) * u)
    mag = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))
    return 2 * gamma * mag + 1e-300


def assert_gemm_close(got: np.ndarray, want: np.ndarray, bound: np.ndarray) -> None:
    err = np.abs(got.astype(np.float64) - want)
    bad = err > bound
    if np.any(bad):
        i = np.unravel_index(np.argmax(err - bound), err.shape)
        raise AssertionError(
            f"{int(bad.sum())} of {err.size} elements exceed the error bound; worst at {i}: "
            f"got {got[i]!r}, want {want[i]!r}, bound {bound[i]:.3g}"
        )


F64 = np.float64


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


GIB = 1 << 30


BIG = 2**31


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo (0 where there is none: such machines skip these tests)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def need_memory(nbytes: int) -> None:
    have = available_bytes()
    if have < nbytes * 1.15:
        pytest.skip(f"needs {nbytes / GIB:.1f} GiB of free memory, {have / GIB:.1f} GiB available")


# Source for a subprocess script (a stray read there is a segfault of that process, not of the
# test run): at_page_end(values) returns a copy of values (C order) whose last byte is the last
# byte before a PROT_NONE page, so that a kernel reading past the array faults. Linux (mmap and
# mprotect through libc).
AT_PAGE_END = r"""
import ctypes, mmap, sys
import numpy as np

PAGE = mmap.PAGESIZE
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
keep = []


def at_page_end(values):
    nbytes = values.nbytes
    pages = nbytes // PAGE + 2
    buf = mmap.mmap(-1, pages * PAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    guard = base + (pages - 1) * PAGE
    assert libc.mprotect(guard, PAGE, 0) == 0, ctypes.get_errno()
    arr = np.frombuffer(buf, values.dtype, count=values.size, offset=(pages - 1) * PAGE - nbytes)
    arr = arr.reshape(values.shape)
    arr[...] = values
    keep.append(buf)
    return arr
"""
