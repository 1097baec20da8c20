"""Pure-NumPy twins of :mod:`simdnn.ops`: same names, same signatures, same results.

They are the oracle of the tests and the baseline of the benchmarks, so each is the strongest
NumPy formulation we know (one BLAS call where there is one), not a teaching loop. They assume
valid input; the argument checking and its error messages belong to :mod:`simdnn.ops`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["gemm", "matmul"]


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a @ b`` for 2-D arrays. Shape: a (M, K), b (K, N) -> (M, N)."""
    return np.matmul(a, b, out=out)


def gemm(
    a: np.ndarray,
    b: np.ndarray,
    c: np.ndarray | None = None,
    *,
    alpha: float = 1.0,
    beta: float = 0.0,
    trans_a: bool = False,
    trans_b: bool = False,
) -> np.ndarray:
    """``alpha * op(a) @ op(b) + beta * c``. Shape: op(a) (M, K), op(b) (K, N), c (M, N)."""
    opa = a.T if trans_a else a
    opb = b.T if trans_b else b
    prod = np.matmul(opa, opb)
    if alpha != 1.0:
        prod *= prod.dtype.type(alpha)
    if c is None:
        return prod
    if beta == 0.0:
        c[...] = prod
    else:
        c *= c.dtype.type(beta)
        c += prod
    return c
