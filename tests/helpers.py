"""Tolerances shared by the kernel tests."""

from __future__ import annotations

import numpy as np


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
