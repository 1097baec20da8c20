"""Native kernels: SIMD micro-kernels under a blocked, OpenMP-threaded framework.

Every function here has a pure-NumPy twin of the same name and signature in
:mod:`simdnn.reference`. Inputs are NumPy arrays (or array-likes) of float32 or float64, any
strides and memory order; the kernels release the GIL while they run. Bad input raises TypeError
(dtype, type) or ValueError (shape, value) naming the argument.

Shape legend used throughout simdnn: N batch, C input channels, H x W input size, K output
channels (or output features), R x S kernel size, P x Q output size. For GEMM: M x K times K x N.
"""

from __future__ import annotations

import numbers

import numpy as np

from . import _core

__all__ = ["gemm", "matmul"]


def _real(value: object, name: str, fn: str) -> float:
    if type(value) is float:  # the common case, without the cost of an ABC check
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{fn}: {name} must be a real number, got {type(value).__name__}")
    return float(value)


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Matrix product ``a @ b`` of two 2-D float32 or float64 arrays of the same dtype.

    Shape:
        - a: (M, K)
        - b: (K, N)
        - out, result: (M, N), same dtype as the inputs

    ``out``, when given, receives the result (any strides; it may alias an input) and is returned.
    Zero-sized dimensions give NumPy's answer: an empty array, or zeros when K == 0.
    """
    return _core.matmul(a, b, out)


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
    """General matrix multiply: ``alpha * op(a) @ op(b) + beta * c``.

    ``op(x)`` is ``x.T`` when the matching ``trans_*`` flag is set; the transpose is handled while
    packing and never materialised.

    Shape:
        - op(a): (M, K)
        - op(b): (K, N)
        - c, result: (M, N)

    When ``c`` is given it must be C-contiguous, of shape (M, N) and of the inputs' dtype; the
    result is written into it and ``c`` is returned. As in BLAS, ``beta == 0`` means ``c`` is not
    read, so NaN in ``c`` does not propagate. Without ``c`` a new array is returned (``beta`` is
    then irrelevant).
    """
    fn = "gemm"
    return _core.gemm(
        a,
        b,
        c,
        _real(alpha, "alpha", fn),
        _real(beta, "beta", fn),
        bool(trans_a),
        bool(trans_b),
    )
