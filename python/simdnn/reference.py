"""Pure-NumPy twins of :mod:`simdnn.ops`: same names, same signatures, same results.

They are the oracle of the tests and the baseline of the benchmarks, so each is the strongest
NumPy formulation we know (one BLAS call where there is one), not a teaching loop. They assume
valid input; the argument checking and its error messages belong to :mod:`simdnn.ops`.
"""

from __future__ import annotations

from typing import Union

import numpy as np
from numpy.lib.stride_tricks import as_strided

__all__ = [
    "conv2d",
    "conv2d_backward_data",
    "conv2d_backward_weights",
    "gemm",
    "matmul",
]

IntPair = Union[int, tuple[int, int]]


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


# ------------------------------------------------------------------------------------------------
# Convolution: per-image contiguous im2col and one batched matmul (forward, backward-weights);
# backward-data as one batched matmul and one strided slice accumulation per kernel tap.
# Shape legend: x (N, C, H, W), w (K, C/groups, R, S), b (K,), y (N, K, P, Q).


def _pair(v: IntPair) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _out_size(h: int, r: int, stride: int, pad: int, dilation: int) -> int:
    return (h + 2 * pad - dilation * (r - 1) - 1) // stride + 1


def _im2col(
    x: np.ndarray,
    r: int,
    s: int,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> np.ndarray:
    """(N, C, H, W) -> contiguous (N, C, R, S, P, Q): the receptive field of every output pixel."""
    n, c, h, w = x.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    p = _out_size(h, r, sh, ph, dh)
    q = _out_size(w, s, sw, pw, dw)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x
    s_n, s_c, s_h, s_w = xp.strides
    view = as_strided(
        xp, (n, c, r, s, p, q), (s_n, s_c, s_h * dh, s_w * dw, s_h * sh, s_w * sw), writeable=False
    )
    return np.ascontiguousarray(view)


def _is_depthwise(c: int, k: int, groups: int) -> bool:
    return groups > 1 and groups == c == k


def _taps(
    xp: np.ndarray,
    r: int,
    s: int,
    p: int,
    q: int,
    stride: tuple[int, int],
    dilation: tuple[int, int],
) -> list[tuple[int, int, np.ndarray]]:
    """Strided views of a padded (N, C, Hp, Wp) array, one (N, C, P, Q) view per kernel tap."""
    (sh, sw), (dh, dw) = stride, dilation
    return [
        (
            i,
            j,
            xp[
                :,
                :,
                i * dh : i * dh + sh * (p - 1) + 1 : sh,
                j * dw : j * dw + sw * (q - 1) + 1 : sw,
            ],
        )
        for i in range(r)
        for j in range(s)
    ]


def _pad(x: np.ndarray, padding: tuple[int, int]) -> np.ndarray:
    ph, pw = padding
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x


def conv2d(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> np.ndarray:
    """Shape: x (N, C, H, W), w (K, C/groups, R, S), b (K,) -> (N, K, P, Q).

    Depthwise convolutions (groups == C == K) are one multiply-add of whole strided views per
    kernel tap: a matmul per single-channel group would be far slower.
    """
    n = x.shape[0]
    k, cg, r, s = w.shape
    if _is_depthwise(x.shape[1], k, groups):
        st, pad, dil = _pair(stride), _pair(padding), _pair(dilation)
        p = _out_size(x.shape[2], r, st[0], pad[0], dil[0])
        q = _out_size(x.shape[3], s, st[1], pad[1], dil[1])
        y = np.zeros((n, k, p, q), dtype=x.dtype)
        for i, j, view in _taps(_pad(x, pad), r, s, p, q, st, dil):
            y += w[:, 0, i, j].reshape(1, k, 1, 1) * view
        if b is not None:
            y += b.reshape(1, k, 1, 1)
        return y
    cols = _im2col(x, r, s, _pair(stride), _pair(padding), _pair(dilation))
    p, q = cols.shape[-2:]
    cols = cols.reshape(n, groups, cg * r * s, p * q)
    y = np.matmul(w.reshape(groups, k // groups, cg * r * s), cols).reshape(n, k, p, q)
    if b is not None:
        y += b.reshape(1, k, 1, 1)
    return y


def conv2d_backward_data(
    dy: np.ndarray,
    w: np.ndarray,
    x_shape: tuple[int, int, int, int],
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> np.ndarray:
    """Shape: dy (N, K, P, Q), w (K, C/groups, R, S) -> dx of x_shape (N, C, H, W)."""
    n, c, h, wd = x_shape
    k, cg, r, s = w.shape
    p, q = dy.shape[-2:]
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    if _is_depthwise(c, k, groups):
        dxp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw), dtype=dy.dtype)
        for i, j, view in _taps(dxp, r, s, p, q, (sh, sw), (dh, dw)):
            view += w[:, 0, i, j].reshape(1, c, 1, 1) * dy
        return np.ascontiguousarray(dxp[:, :, ph : ph + h, pw : pw + wd])
    wg = w.reshape(groups, k // groups, cg * r * s)
    cols = np.matmul(wg.transpose(0, 2, 1), dy.reshape(n, groups, k // groups, p * q))
    cols = cols.reshape(n, c, r, s, p, q)
    dxp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw), dtype=dy.dtype)
    for i in range(r):
        for j in range(s):
            dxp[
                :,
                :,
                i * dh : i * dh + sh * (p - 1) + 1 : sh,
                j * dw : j * dw + sw * (q - 1) + 1 : sw,
            ] += cols[:, :, i, j]
    return np.ascontiguousarray(dxp[:, :, ph : ph + h, pw : pw + wd])


def conv2d_backward_weights(
    x: np.ndarray,
    dy: np.ndarray,
    w_shape: tuple[int, int, int, int],
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Shape: x (N, C, H, W), dy (N, K, P, Q) -> (dw of w_shape (K, C/groups, R, S), db (K,))."""
    n = x.shape[0]
    k, cg, r, s = w_shape
    if _is_depthwise(x.shape[1], k, groups):
        p, q = dy.shape[-2:]
        dw = np.empty(w_shape, dtype=x.dtype)
        for i, j, view in _taps(
            _pad(x, _pair(padding)), r, s, p, q, _pair(stride), _pair(dilation)
        ):
            dw[:, 0, i, j] = np.einsum("ncpq,ncpq->c", dy, view)
        return dw, dy.sum(axis=(0, 2, 3))
    cols = _im2col(x, r, s, _pair(stride), _pair(padding), _pair(dilation))
    p, q = cols.shape[-2:]
    cols = cols.reshape(n, groups, cg * r * s, p * q)
    dyg = dy.reshape(n, groups, k // groups, p * q)
    dw = np.matmul(dyg, cols.transpose(0, 1, 3, 2)).sum(axis=0).reshape(k, cg, r, s)
    return dw, dy.sum(axis=(0, 2, 3))
