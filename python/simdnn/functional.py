"""Differentiable operations of the layers: each computes its result and states its backward
rule beside it, once (see :mod:`simdnn.autograd`).

Every function takes tensors or NumPy arrays (arrays are constants) and returns a
:class:`~simdnn.autograd.Tensor`. The kernels run on the current backend
(:func:`simdnn.use_backend`): the native SIMD kernels of :mod:`simdnn.ops` or their NumPy twins
in :mod:`simdnn.reference`; the smooth activations and the losses are NumPy in both.

Shape legend: N batch, C/K channels in/out, H x W input planes, R x S kernels, P x Q output
planes, L a 1-D length, D_in/D_out features.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import init as _init
from ._opspec import (
    WINOGRAD_ALGORITHMS,
    IntPair,
    conv_algorithm_arg,
    conv_args,
    winograd_ineligibility,
)
from .autograd import Array, Tensor, add, as_array, grad_sink, record
from .backend import backend_ops, get_conv_algorithm

__all__ = [
    "adaptive_avg_pool2d",
    "add",
    "avg_pool1d",
    "avg_pool2d",
    "batch_norm",
    "binary_cross_entropy_with_logits",
    "conv1d",
    "conv2d",
    "cross_entropy",
    "dropout",
    "global_avg_pool2d",
    "leaky_relu",
    "linear",
    "log_softmax",
    "max_pool1d",
    "max_pool2d",
    "mse_loss",
    "relu",
    "sigmoid",
    "softmax",
    "tanh",
]


class _KinkLog(threading.local):
    log: list[Array] | None = None


_kinks = _KinkLog()


@contextlib.contextmanager
def record_kinks() -> Iterator[list[Array]]:
    """Collect the decisions of the non-smooth ops run inside (ReLU and leaky ReLU active sets,
    max-pool arg-maxes), in order: two runs whose lists are equal are on the same smooth piece,
    so a finite difference between them means something (simdnn.gradcheck uses it)."""
    prev = _kinks.log
    _kinks.log = log = []
    try:
        yield log
    finally:
        _kinks.log = prev


def _floating(x: Any, fn: str, name: str = "input") -> Any:
    """x itself if float32/float64; a TypeError naming fn otherwise (ints are cast by layers)."""
    dt = as_array(x).dtype
    if dt not in (np.float32, np.float64):
        raise TypeError(f"{fn}: {name} must be float32 or float64, got {dt}")
    return x


def match_dtype(x: Any, weight: Any, fn: str) -> Any:
    """x in the weight's dtype: NumPy inputs are converted (integer images, float64 data fed
    to a float32 model); a tensor (another layer's output) in the other float type is a
    TypeError naming both dtypes, with or without a tape, on every backend."""
    want = as_array(weight).dtype
    arr = as_array(x)
    if arr.dtype == want:
        return x
    if isinstance(x, Tensor) and arr.dtype.kind == "f":
        raise TypeError(
            f"{fn}: input is {arr.dtype} but the weights are {want}; convert the model "
            f"(model.astype) or the input so that they match"
        )
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{fn}: expected a real-valued input, got dtype {arr.dtype}")
    return arr.astype(want)


# ------------------------------------------------------------------------------------------------
# Dense layer: y = x . W + b, with W of shape (D_in, D_out).


def linear(x: Any, weight: Any, bias: Any = None, activation: str | None = None) -> Tensor:
    """Shape: x (N, D_in), weight (D_in, D_out), bias (D_out,) -> (N, D_out).

    activation: None, or "relu" for relu(x . W + b) as one op (what Sequential runs for a Linear
    followed by a ReLU): the bias and the ReLU are the GEMM's epilogue, applied to each tile of y
    while it is in cache, so y is written once instead of being read again by a bias pass and a
    ReLU call.

    Backward: the ReLU's gate and db (the column sums of dY) in one pass (ops.bias_backward),
    then dX = dY . W^T (only when x needs it) and dW = X^T . dY, written by the GEMM straight into
    weight.grad (beta 0 overwrites after zero_grad, 1 accumulates); db likewise into bias.grad.
    """
    if activation not in (None, "relu"):
        raise ValueError(f"linear: activation must be None or 'relu', got {activation!r}")
    relu_after = activation == "relu"
    ops = backend_ops()
    xv, wv = as_array(x), as_array(weight)
    if xv.ndim == wv.ndim == 2:
        bv = None if bias is None else as_array(bias)
        if bv is not None and bv.dtype != xv.dtype:
            bv = bv.astype(np.result_type(xv, wv))  # as the bias's add would cast it
        y = ops.gemm(xv, wv, bias=bv, relu=relu_after)
    else:
        # Operands that are not matrices: matmul names the error (NumPy's twin broadcasts them as
        # np.matmul does).
        y = ops.matmul(xv, wv)
        if bias is not None:
            y += as_array(bias)
        if relu_after:
            y = ops.relu(y)
    if relu_after and _kinks.log is not None:
        _kinks.log.append(y > 0)

    def rule(g: Array, needs: tuple[bool, ...]) -> tuple[Array | None, ...]:
        gx = gw = gb = None
        if needs[2]:
            sink = grad_sink(bias)
            if sink is None:
                g, gb = ops.bias_backward(g, y if relu_after else None)
            else:
                g, _ = ops.bias_backward(
                    g, y if relu_after else None, sink[0], accumulate=sink[1] != 0.0
                )
        elif relu_after:
            g = ops.relu_backward(g, y)
        if needs[0]:
            gx = ops.gemm(g, wv, trans_b=True)
        if needs[1]:
            sink = grad_sink(weight)
            if sink is not None:
                ops.gemm(xv, g, sink[0], beta=sink[1], trans_a=True)
            else:
                gw = ops.gemm(xv, g, trans_a=True)
        return gx, gw, gb

    return record(y, (x, weight, bias), rule, "linear_relu" if relu_after else "linear")


# ------------------------------------------------------------------------------------------------
# Convolution and pooling: the native kernels, forward and backward.


def _conv_algorithms(
    algorithm: str | None, w_shape: tuple[int, ...], geometry: tuple[Any, ...], fn: str
) -> tuple[str, str, str]:
    """The algorithms of the (forward, backward-data, backward-weights) passes: an explicit
    ``algorithm`` for all three (checked: "winograd" and "winograd_2x2" are strict, the op
    raises where they cannot run); None takes the context's (:func:`simdnn.conv_algorithm`),
    where they mean "wherever the geometry allows it" and each pass that cannot run it runs
    "direct"."""
    if algorithm is not None:
        algorithm = conv_algorithm_arg(algorithm, fn)
        return algorithm, algorithm, algorithm
    chosen = get_conv_algorithm()
    if chosen not in WINOGRAD_ALGORITHMS:
        return chosen, chosen, chosen
    try:
        st, pad, dil, groups = conv_args(*geometry, fn)
    except (TypeError, ValueError):
        return "direct", "direct", "direct"  # the op itself names the bad argument
    if len(w_shape) != 4 or winograd_ineligibility(w_shape, st, pad, dil, groups) is not None:
        return "direct", "direct", "direct"
    bd_ok = winograd_ineligibility(w_shape, st, pad, dil, groups, backward_data=True) is None
    return chosen, chosen if bd_ok else "direct", chosen


def conv2d(
    x: Any,
    weight: Any,
    bias: Any = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    algorithm: str | None = None,
) -> Tensor:
    """Shape: x (N, C, H, W), weight (K, C/groups, R, S), bias (K,) -> (N, K, P, Q).

    Backward: dX by the backward-data kernel (only when x needs it), dW and db together by the
    backward-weights kernel.

    ``algorithm`` ("auto", "direct", "winograd" or "winograd_2x2", see
    :func:`simdnn.ops.conv2d`) applies to the
    forward pass and both backward passes; None (the default) takes the current
    :func:`simdnn.conv_algorithm`, read once, here: the backward passes use what the forward
    pass chose.
    """
    ops = backend_ops()
    xv, wv = as_array(x), as_array(weight)
    geometry = (stride, padding, dilation, groups)
    fwd, bwd_data, bwd_weights = _conv_algorithms(algorithm, wv.shape, geometry, "conv2d")
    y = ops.conv2d(xv, wv, None if bias is None else as_array(bias), *geometry, fwd)

    def rule(g: Array, needs: tuple[bool, ...]) -> tuple[Array | None, ...]:
        gx = None
        if needs[0]:
            gx = ops.conv2d_backward_data(g, wv, xv.shape, *geometry, bwd_data)
        gw = gb = None
        if needs[1] or needs[2]:
            gw, gb = ops.conv2d_backward_weights(xv, g, wv.shape, *geometry, bwd_weights)
        return gx, gw if needs[1] else None, gb if needs[2] else None

    return record(y, (x, weight, bias), rule, "conv2d")


def _as_2d(x: Any, fn: str) -> Any:
    """(N, C, L) -> (N, C, 1, L): a 1-D op is the 2-D kernel seen through a height of 1."""
    shape = as_array(x).shape
    if len(shape) != 3:
        raise ValueError(f"{fn}: expected input of shape (N, C, L), got {shape}")
    return x.reshape(shape[0], shape[1], 1, shape[2]) if isinstance(x, Tensor) else \
        as_array(x).reshape(shape[0], shape[1], 1, shape[2])  # fmt: skip


def _from_2d(y: Tensor) -> Tensor:
    n, c, _, q = y.shape
    return y.reshape(n, c, q)


def _single(v: Any, name: str, fn: str) -> int:
    if isinstance(v, (tuple, list)):
        if len(v) != 1:
            raise ValueError(f"{fn}: {name} must be an int or a 1-tuple, got {v!r}")
        v = v[0]
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{fn}: {name} must be an int, got {v!r}")
    return int(v)


def conv1d(
    x: Any,
    weight: Any,
    bias: Any = None,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    groups: int = 1,
    algorithm: str | None = None,
) -> Tensor:
    """Shape: x (N, C, L), weight (K, C/groups, S), bias (K,) -> (N, K, Q), on the 2-D kernels
    with a height of 1. ``algorithm`` as in :func:`conv2d` (a 1 x S kernel never runs
    Winograd: an explicit "winograd" or "winograd_2x2" is refused, the context's runs
    direct)."""
    fn = "conv1d"
    wshape = as_array(weight).shape
    if len(wshape) != 3:
        raise ValueError(f"{fn}: expected weight of shape (K, C/groups, S), got {wshape}")
    w2 = weight.reshape(wshape[0], wshape[1], 1, wshape[2]) if isinstance(weight, Tensor) else \
        as_array(weight).reshape(wshape[0], wshape[1], 1, wshape[2])  # fmt: skip
    y = conv2d(
        _as_2d(x, fn),
        w2,
        bias,
        (1, _single(stride, "stride", fn)),
        (0, _single(padding, "padding", fn)),
        (1, _single(dilation, "dilation", fn)),
        groups,
        None if algorithm is None else conv_algorithm_arg(algorithm, fn),
    )
    return _from_2d(y)


def max_pool2d(x: Any, kernel_size: IntPair, stride: IntPair | None = None,
               padding: IntPair = 0) -> Tensor:  # fmt: skip
    """Shape: x (N, C, H, W) -> (N, C, P, Q). The kernel keeps each window's arg-max (one byte
    per output) for the backward pass, which routes each gradient to it."""
    ops = backend_ops()
    xv = as_array(x)
    y, idx = ops.max_pool2d(xv, kernel_size, stride, padding)
    if _kinks.log is not None:
        _kinks.log.append(idx)

    def rule(g: Array, needs: tuple[bool, ...]) -> tuple[Array]:
        return (ops.max_pool2d_backward(g, idx, xv.shape, kernel_size, stride, padding),)

    return record(y, (x,), rule, "max_pool2d")


def avg_pool2d(
    x: Any,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    count_include_pad: bool = True,
) -> Tensor:
    """Shape: x (N, C, H, W) -> (N, C, P, Q)."""
    ops = backend_ops()
    xv = as_array(x)
    y = ops.avg_pool2d(xv, kernel_size, stride, padding, count_include_pad)

    def rule(g: Array, needs: tuple[bool, ...]) -> tuple[Array]:
        return (
            ops.avg_pool2d_backward(g, xv.shape, kernel_size, stride, padding, count_include_pad),
        )

    return record(y, (x,), rule, "avg_pool2d")


def max_pool1d(x: Any, kernel_size: int, stride: int | None = None, padding: int = 0) -> Tensor:
    """Shape: x (N, C, L) -> (N, C, Q), on the 2-D kernel with a height of 1."""
    fn = "max_pool1d"
    k = _single(kernel_size, "kernel_size", fn)
    s = k if stride is None else _single(stride, "stride", fn)
    return _from_2d(max_pool2d(_as_2d(x, fn), (1, k), (1, s), (0, _single(padding, "padding", fn))))


def avg_pool1d(
    x: Any,
    kernel_size: int,
    stride: int | None = None,
    padding: int = 0,
    count_include_pad: bool = True,
) -> Tensor:
    """Shape: x (N, C, L) -> (N, C, Q), on the 2-D kernel with a height of 1."""
    fn = "avg_pool1d"
    k = _single(kernel_size, "kernel_size", fn)
    s = k if stride is None else _single(stride, "stride", fn)
    p = _single(padding, "padding", fn)
    return _from_2d(avg_pool2d(_as_2d(x, fn), (1, k), (1, s), (0, p), count_include_pad))


def adaptive_avg_pool2d(x: Any, output_size: IntPair = 1) -> Tensor:
    """Shape: x (N, C, H, W) -> (N, C, P, Q) with (P, Q) = output_size, averaging equal windows.

    output_size 1 is global average pooling (a mean over each plane); other sizes must divide H
    and W (windows of H/P x W/Q, the average-pooling kernel).
    """
    xv = as_array(x)
    if xv.ndim != 4:
        raise ValueError(f"adaptive_avg_pool2d: expected input (N, C, H, W), got {xv.shape}")
    p, q = (output_size, output_size) if isinstance(output_size, int) else output_size
    h, w = xv.shape[2:]
    if (p, q) == (1, 1):
        return as_tensor(x).mean(axis=(2, 3), keepdims=True)
    if p < 1 or q < 1 or h % p or w % q:
        raise ValueError(
            f"adaptive_avg_pool2d: output_size {(p, q)} must divide the input plane {(h, w)}"
        )
    return avg_pool2d(x, (h // p, w // q), (h // p, w // q), 0)


def global_avg_pool2d(x: Any) -> Tensor:
    """Shape: x (N, C, H, W) -> (N, C): the mean of each feature map."""
    xv = as_array(x)
    if xv.ndim != 4:
        raise ValueError(f"global_avg_pool2d: expected input (N, C, H, W), got {xv.shape}")
    return as_tensor(x).mean(axis=(2, 3))


def as_tensor(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


# ------------------------------------------------------------------------------------------------
# Activations: backward from the input (ReLU) or from the output where that is cheaper.


def relu(x: Any) -> Tensor:
    """max(0, x); backward passes dY where x > 0 (the native kernel, one pass)."""
    ops = backend_ops()
    xv = as_array(x)
    if _kinks.log is not None:
        _kinks.log.append(xv > 0)
    return record(ops.relu(xv), (x,), lambda g, needs: (ops.relu_backward(g, xv),), "relu")


def leaky_relu(x: Any, negative_slope: float = 0.01) -> Tensor:
    """x where x > 0, negative_slope * x elsewhere."""
    xv = as_array(x)
    slope = xv.dtype.type(negative_slope)
    pos = xv > 0
    if _kinks.log is not None:
        _kinks.log.append(pos)

    def rule(g: Array, needs: tuple[bool, ...]) -> tuple[Array]:
        return (np.where(pos, g, g * slope),)

    return record(np.where(pos, xv, xv * slope), (x,), rule, "leaky_relu")


def sigmoid(x: Any) -> Tensor:
    """1 / (1 + exp(-x)), computed as 0.5 * (1 + tanh(x / 2)) (no overflow); its slope
    y (1 - y) is at most 1/4."""
    xv = as_array(x)
    half = xv.dtype.type(0.5)
    y = half + half * np.tanh(half * xv)
    return record(y, (x,), lambda g, needs: (g * y * (1 - y),), "sigmoid")


def tanh(x: Any) -> Tensor:
    y = np.tanh(as_array(x))
    return record(y, (x,), lambda g, needs: (g * (1 - y * y),), "tanh")


def softmax(x: Any, axis: int = -1) -> Tensor:
    """exp(x) / sum(exp(x)) along axis (max-shifted: no overflow)."""
    xv = as_array(x)
    z = xv - xv.max(axis=axis, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=axis, keepdims=True)

    def rule(g: Array, needs: tuple[bool, ...]) -> tuple[Array]:
        return (z * (g - np.sum(g * z, axis=axis, keepdims=True)),)

    return record(z, (x,), rule, "softmax")


def _log_softmax(xv: Array, axis: int) -> Array:
    z = xv - xv.max(axis=axis, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))


def log_softmax(x: Any, axis: int = -1) -> Tensor:
    """x - max - log(sum(exp(x - max))) along axis."""
    out = _log_softmax(as_array(x), axis)

    def rule(g: Array, needs: tuple[bool, ...]) -> tuple[Array]:
        return (g - np.exp(out) * np.sum(g, axis=axis, keepdims=True),)

    return record(out, (x,), rule, "log_softmax")


def dropout(
    x: Any, p: float = 0.5, training: bool = True, rng: np.random.Generator | None = None
) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p) ("inverted"
    dropout) when training; the identity otherwise. rng: default simdnn's generator."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p!r}")
    if not training or p == 0.0:
        return as_tensor(x)
    xv = as_array(x)
    gen = _init.generator() if rng is None else rng
    mask = (gen.random(xv.shape) >= p).astype(xv.dtype) * xv.dtype.type(1.0 / (1.0 - p))
    return record(xv * mask, (x,), lambda g, needs: (g * mask,), "dropout")


def batch_norm(
    x: Any,
    running_mean: Array | None,
    running_var: Array | None,
    weight: Any = None,
    bias: Any = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Batch normalisation over every axis but the channels (axis 1), as PyTorch's.

    Shape: x (N, C) or (N, C, L) or (N, C, H, W); weight (gamma), bias (beta), running_mean and
    running_var (C,) -> y of x's shape.

    training: normalise with the batch's mean and biased variance and update the running
    statistics in place (r = (1 - momentum) r + momentum * stat, the unbiased variance);
    otherwise use the running statistics. Backward: one native pass for dgamma, dbeta and dx.
    """
    ops = backend_ops()
    xv = as_array(x)
    wv = None if weight is None else as_array(weight)
    bv = None if bias is None else as_array(bias)
    y, save_mean, save_invstd = ops.batch_norm(
        xv, wv, bv, running_mean, running_var, training, momentum, eps
    )

    def rule(g: Array, needs: tuple[bool, ...]) -> tuple[Array | None, ...]:
        dx, dw, db = ops.batch_norm_backward(
            g, xv, wv, save_mean, save_invstd, training, need_dx=needs[0]
        )
        return dx, dw if needs[1] else None, db if needs[2] else None

    return record(y, (x, weight, bias), rule, "batch_norm")


# ------------------------------------------------------------------------------------------------
# Losses: the mean over the batch, as a one-element tensor; backward starts there.


def _check_pred(fn: str, pred: Any) -> Array:
    pv = as_array(pred)
    if pv.dtype not in (np.float32, np.float64):
        raise TypeError(f"{fn}: predictions must be float32 or float64, got {pv.dtype}")
    return pv


def _check_same_length(fn: str, pred: Array, target: Array) -> None:
    if len(target) != len(pred):
        raise ValueError(
            f"{fn}: {len(pred)} predictions but {len(target)} targets; they must match"
        )


def cross_entropy(logits: Any, target: Any) -> Tensor:
    """Softmax cross-entropy from logits and integer class labels, averaged over the batch:
    log-sum-exp minus the true class's logit. Its gradient (softmax(logits) - one_hot) / N is
    computed with the loss, in one pass (ops.softmax_cross_entropy; no separate softmax node).

    Shape: logits (N, D), target (N,) integers in [0, D) -> one-element tensor.
    """
    fn = "cross_entropy"
    lv = _check_pred(fn, logits)
    if lv.ndim != 2:
        raise ValueError(f"{fn}: logits must be 2-D (N, classes), got shape {lv.shape}")
    t = np.asarray(as_array(target))
    if t.dtype.kind not in "iu":
        raise TypeError(f"{fn}: labels must be integers (class indices), got dtype {t.dtype}")
    if t.ndim != 1:
        raise ValueError(f"{fn}: labels must be 1-D (N,), got shape {t.shape}")
    _check_same_length(fn, lv, t)
    # The loss and its gradient in one native pass (the op checks the labels' range).
    value, grad = backend_ops().softmax_cross_entropy(lv, t)

    def rule(g: Array, needs: tuple[bool, ...]) -> tuple[Array]:
        return (grad * g,)

    return record(value, (logits,), rule, "cross_entropy")


def mse_loss(pred: Any, target: Any) -> Tensor:
    """Mean squared error over every element; gradient 2 (pred - target) / size.

    Shape: pred (N, *), target the same -> one-element tensor.
    """
    fn = "mse_loss"
    pv = _check_pred(fn, pred)
    tv = np.asarray(as_array(target), dtype=pv.dtype)
    if tv.shape != pv.shape:
        raise ValueError(f"{fn}: target has shape {tv.shape}, predictions have {pv.shape}")
    diff = pv - tv
    size = max(diff.size, 1)
    value = np.asarray(np.mean(diff * diff) if diff.size else 0.0, dtype=pv.dtype)
    scale = pv.dtype.type(2.0 / size)

    def rule(g: Array, needs: tuple[bool, ...]) -> tuple[Array | None, Array | None]:
        d = diff * (scale * g)
        return d, (-d if needs[1] else None)

    return record(value, (pred, target), rule, "mse_loss")


def binary_cross_entropy_with_logits(pred: Any, target: Any) -> Tensor:
    """Binary cross-entropy from logits, averaged: max(x, 0) - x y + log(1 + exp(-|x|)), which
    never overflows. Gradient (sigmoid(x) - y) / size.

    Shape: pred (N, *) logits, target the same with values in [0, 1] -> one-element tensor.
    """
    fn = "binary_cross_entropy_with_logits"
    xv = _check_pred(fn, pred)
    yv = np.asarray(as_array(target), dtype=xv.dtype)
    if yv.shape != xv.shape:
        raise ValueError(f"{fn}: target has shape {yv.shape}, predictions have {xv.shape}")
    if yv.size and (yv.min() < 0 or yv.max() > 1):
        raise ValueError(f"{fn}: targets must be in [0, 1]")
    loss = np.maximum(xv, 0) - xv * yv + np.log1p(np.exp(-np.abs(xv)))
    value = np.asarray(np.mean(loss) if xv.size else 0.0, dtype=xv.dtype)
    size = xv.dtype.type(max(xv.size, 1))

    def rule(g: Array, needs: tuple[bool, ...]) -> tuple[Array]:
        half = xv.dtype.type(0.5)
        s = half + half * np.tanh(half * xv)
        return ((s - yv) * (g / size),)

    return record(value, (pred,), rule, "binary_cross_entropy_with_logits")
