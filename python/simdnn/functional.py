"""Functional operations of the layers, forward and backward side by side.

Every function runs on the current backend (:func:`simdnn.use_backend`): the native kernels of
:mod:`simdnn.ops` or the NumPy twins of :mod:`simdnn.reference`. The smooth activations
(sigmoid, tanh, softmax) and the losses are NumPy in both. Shape legend: N batch, C/K channels
in/out, H x W and P x Q planes, R x S kernels, D_in/D_out features.
"""

from __future__ import annotations

from typing import Union

import numpy as np

from .backend import backend_ops

IntPair = Union[int, tuple[int, int]]

# ------------------------------------------------------------------------------------------------
# Dense layer: y = x . w + b, with w of shape (D_in, D_out).


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """Shape: x (N, D_in), w (D_in, D_out), b (D_out,) -> (N, D_out)."""
    y = backend_ops().matmul(x, w)
    if b is not None:
        y += b
    return y


def linear_backward(
    dy: np.ndarray,
    x: np.ndarray,
    w: np.ndarray,
    dw: np.ndarray,
    dw_beta: float,
    db: np.ndarray | None,
    db_beta: float,
    need_dx: bool = True,
) -> np.ndarray | None:
    """dw = dw_beta * dw + X^T . dY and db = db_beta * db + column sums of dY, in place;
    returns dY . W^T (or None).

    Shape: dy (N, D_out), x (N, D_in), w and dw (D_in, D_out), db (D_out,) -> dx (N, D_in).
    The weight gradient is written by the GEMM itself (beta 1 accumulates, 0 overwrites).
    """
    ops = backend_ops()
    ops.gemm(x, dy, dw, beta=dw_beta, trans_a=True)
    if db is not None:
        if db_beta == 0.0:
            np.sum(dy, axis=0, out=db)
        else:
            db += dy.sum(axis=0)
    return ops.gemm(dy, w, trans_b=True) if need_dx else None


# ------------------------------------------------------------------------------------------------
# Convolution and pooling: the kernels themselves.


def conv2d(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    stride: IntPair,
    padding: IntPair,
    dilation: IntPair,
    groups: int,
) -> np.ndarray:
    """Shape: x (N, C, H, W), w (K, C/groups, R, S), b (K,) -> (N, K, P, Q)."""
    return backend_ops().conv2d(x, w, b, stride, padding, dilation, groups)


def conv2d_backward(
    dy: np.ndarray,
    x: np.ndarray,
    w: np.ndarray,
    stride: IntPair,
    padding: IntPair,
    dilation: IntPair,
    groups: int,
    need_dx: bool = True,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Shape: dy (N, K, P, Q) -> (dx (N, C, H, W) or None, dw (K, C/groups, R, S), db (K,))."""
    ops = backend_ops()
    dx = (
        ops.conv2d_backward_data(dy, w, x.shape, stride, padding, dilation, groups)
        if need_dx
        else None
    )
    dw, db = ops.conv2d_backward_weights(x, dy, w.shape, stride, padding, dilation, groups)
    return dx, dw, db


def max_pool2d(
    x: np.ndarray, kernel_size: IntPair, stride: IntPair | None, padding: IntPair
) -> tuple[np.ndarray, np.ndarray]:
    """Shape: x (N, C, H, W) -> (y, indices), both (N, C, P, Q)."""
    return backend_ops().max_pool2d(x, kernel_size, stride, padding)


def max_pool2d_backward(
    dy: np.ndarray,
    indices: np.ndarray,
    x_shape: tuple[int, ...],
    kernel_size: IntPair,
    stride: IntPair | None,
    padding: IntPair,
) -> np.ndarray:
    """Shape: dy, indices (N, C, P, Q) -> dx (N, C, H, W)."""
    return backend_ops().max_pool2d_backward(dy, indices, x_shape, kernel_size, stride, padding)


def avg_pool2d(
    x: np.ndarray,
    kernel_size: IntPair,
    stride: IntPair | None,
    padding: IntPair,
    count_include_pad: bool,
) -> np.ndarray:
    """Shape: x (N, C, H, W) -> (N, C, P, Q)."""
    return backend_ops().avg_pool2d(x, kernel_size, stride, padding, count_include_pad)


def avg_pool2d_backward(
    dy: np.ndarray,
    x_shape: tuple[int, ...],
    kernel_size: IntPair,
    stride: IntPair | None,
    padding: IntPair,
    count_include_pad: bool,
) -> np.ndarray:
    """Shape: dy (N, C, P, Q) -> dx (N, C, H, W)."""
    return backend_ops().avg_pool2d_backward(
        dy, x_shape, kernel_size, stride, padding, count_include_pad
    )


# ------------------------------------------------------------------------------------------------
# Activations: forward from x, backward from the cached output y where that is cheaper.


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) as 0.5 * (1 + tanh(x / 2)): the same function, without overflow."""
    half = x.dtype.type(0.5)
    return half + half * np.tanh(half * x)


def sigmoid_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    return dy * y * (1.0 - y)


def tanh(x: np.ndarray) -> np.ndarray:
    return np.tanh(x)


def tanh_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    return dy * (1.0 - y * y)


def relu(x: np.ndarray) -> np.ndarray:
    return backend_ops().relu(x)


def relu_backward(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    return backend_ops().relu_backward(dy, x)


def leaky_relu(x: np.ndarray, negative_slope: float) -> np.ndarray:
    return np.where(x > 0, x, x * x.dtype.type(negative_slope))


def leaky_relu_backward(dy: np.ndarray, x: np.ndarray, negative_slope: float) -> np.ndarray:
    return np.where(x > 0, dy, dy * dy.dtype.type(negative_slope))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - x.max(axis=axis, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=axis, keepdims=True)
    return z


def softmax_backward(dy: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return y * (dy - np.sum(dy * y, axis=axis, keepdims=True))


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Stable log(softmax(x)): x - max - log(sum(exp(x - max)))."""
    z = x - x.max(axis=axis, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))
