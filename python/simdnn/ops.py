"""Native kernels: SIMD micro-kernels under a blocked, OpenMP-threaded framework.

Every function here has a pure-NumPy twin of the same name and signature in
:mod:`simdnn.reference`; what the two share beyond the signature (argument normalisation and
checks, output shapes) is described once per op in :mod:`simdnn._opspec`. Inputs are NumPy
arrays (or array-likes) of float32 or float64, any strides and memory order; the kernels release
the GIL while they run. Bad input raises TypeError (dtype, type) or ValueError (shape, value)
naming the argument.

Shape legend used throughout simdnn: N batch, C input channels, H x W input size, K output
channels (or output features), R x S kernel size, P x Q output size. For GEMM: M x K times K x N.
"""

from __future__ import annotations

import numpy as np

from . import _core

# The argument checks that the bindings do not make, shared with the twins.
from ._opspec import CONV_ALGORITHMS as _CONV_ALGORITHMS
from ._opspec import IntPair
from ._opspec import adam_args as _adam_args
from ._opspec import batch_norm_args as _batch_norm_args
from ._opspec import bias_backward_args as _bias_backward_args
from ._opspec import conv_algorithm_arg as _conv_algorithm_arg
from ._opspec import gemm_args as _gemm_args
from ._opspec import sgd_args as _sgd_args

__all__ = [
    "adam_update",
    "avg_pool2d",
    "avg_pool2d_backward",
    "batch_norm",
    "batch_norm_backward",
    "bias_backward",
    "conv2d",
    "conv2d_backward_data",
    "conv2d_backward_weights",
    "gemm",
    "matmul",
    "max_pool2d",
    "max_pool2d_backward",
    "relu",
    "relu_backward",
    "sgd_update",
    "softmax_cross_entropy",
]


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
    bias: np.ndarray | None = None,
    relu: bool = False,
) -> np.ndarray:
    """General matrix multiply: ``act(alpha * op(a) @ op(b) + beta * c + bias)``.

    ``op(x)`` is ``x.T`` when the matching ``trans_*`` flag is set; the transpose is handled while
    packing and never materialised. ``bias`` (one value per column, added to every row) and
    ``act`` (ReLU when ``relu`` is true, else the identity; NaN stays NaN) are applied to each
    tile of the result while it is in cache, so a Linear layer and its ReLU write their output
    once.

    Shape:
        - op(a): (M, K)
        - op(b): (K, N)
        - bias: (N,), the inputs' dtype
        - c, result: (M, N)

    When ``c`` is given it must be C-contiguous, of shape (M, N) and of the inputs' dtype; the
    result is written into it and ``c`` is returned. As in BLAS, ``beta == 0`` means ``c`` is not
    read, so NaN in ``c`` does not propagate. Without ``c`` a new array is returned (``beta`` is
    then irrelevant).
    """
    alpha, beta, trans_a, trans_b = _gemm_args(alpha, beta, trans_a, trans_b)
    return _core.gemm(a, b, c, alpha, beta, trans_a, trans_b, bias, bool(relu))


# ------------------------------------------------------------------------------------------------
# Convolution (NCHW). stride, padding and dilation take an int or an (h, w) pair, as in PyTorch.
# algorithm: "auto" (the native code chooses: Winograd F(4x4, 3x3) for eligible layers with enough
# channels and tiles, F(2x2, 3x3) for wide layers with fewer tiles, else direct), "direct" (the
# exact implicit-GEMM path), "winograd" or "winograd_2x2" (F(4x4, 3x3) or F(2x2, 3x3), forced;
# ValueError unless the kernel is 3x3 with stride 1, dilation 1 and groups 1, and for backward-data
# padding <= 2). The name is checked here (as by the twins), the geometry natively.


def _algorithm(value: object, fn: str) -> str:
    if value.__class__ is str and value in _CONV_ALGORITHMS:
        return value  # type: ignore[return-value]
    return _conv_algorithm_arg(value, fn)


def conv2d(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    algorithm: str = "auto",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """2-D cross-correlation of a batch of images with a bank of filters, plus a bias.

    Each output pixel sees a receptive field of R x S input pixels (spread by ``dilation``) in
    each of the C/groups input channels of its group; every position shares the same weights.

    Shape:
        - x: (N, C, H, W)
        - w: (K, C / groups, R, S)
        - b: (K,) or None
        - result: (N, K, P, Q) with
          P = (H + 2 * padding[0] - dilation[0] * (R - 1) - 1) // stride[0] + 1, Q likewise.
        - out: (N, K, P, Q) or None

    ``algorithm`` picks the implementation: "auto" (default), "direct", "winograd" or
    "winograd_2x2" (see above); a Winograd result that is not all finite is recomputed by the
    direct path, so NaN and Inf land where the direct convolution puts them.

    ``out``, when given, receives the result and is returned, as NumPy's ``out=``: an array of
    x's dtype (exactly: not byte-swapped) and the result's shape, any strides; it may share
    memory with an input (the result is then computed aside and copied in). Its old contents
    are never read.
    """
    algorithm = _algorithm(algorithm, "conv2d")
    return _core.conv2d(x, w, b, stride, padding, dilation, groups, algorithm, out)


def conv2d_backward_data(
    dy: np.ndarray,
    w: np.ndarray,
    x_shape: tuple[int, int, int, int],
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    algorithm: str = "auto",
) -> np.ndarray:
    """Gradient of conv2d with respect to its input: the transposed convolution of dy with w.

    Shape:
        - dy: (N, K, P, Q)
        - w: (K, C / groups, R, S)
        - x_shape: (N, C, H, W), the input's shape (several H give the same P when stride > 1)
        - result: (N, C, H, W)

    ``algorithm`` as in :func:`conv2d`; Winograd runs the forward algorithm on dy with the
    flipped, transposed filters and padding 2 - padding.
    """
    algorithm = _algorithm(algorithm, "conv2d_backward_data")
    return _core.conv2d_backward_data(dy, w, x_shape, stride, padding, dilation, groups, algorithm)


def conv2d_backward_weights(
    x: np.ndarray,
    dy: np.ndarray,
    w_shape: tuple[int, int, int, int],
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    algorithm: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of conv2d with respect to its weights and bias.

    Shape:
        - x: (N, C, H, W)
        - dy: (N, K, P, Q)
        - w_shape: (K, C / groups, R, S)
        - result: (dw, db) with dw (K, C / groups, R, S) and db (K,)

    ``algorithm`` as in :func:`conv2d`; Winograd's is the exact transpose of its forward pass.
    """
    algorithm = _algorithm(algorithm, "conv2d_backward_weights")
    return _core.conv2d_backward_weights(
        x, dy, w_shape, stride, padding, dilation, groups, algorithm
    )


# ------------------------------------------------------------------------------------------------
# Pooling (NCHW). kernel_size, stride and padding take an int or an (h, w) pair; stride=None
# means stride = kernel_size. Padding may be at most half the kernel size.


def max_pool2d(
    x: np.ndarray,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    out: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Maximum over each R x S window; padding counts as -inf.

    Returns ``(y, indices)``: ``indices[n, c, p, q]`` is the position ``r * S + s`` of the maximum
    inside its window (the first maximum in window order; a NaN in the window wins, as in
    PyTorch), stored compactly as uint8 (int32 when R * S > 256). Pass it to
    :func:`max_pool2d_backward`.

    Shape:
        - x: (N, C, H, W)
        - y, indices: (N, C, P, Q) with P = (H + 2 * padding[0] - R) // stride[0] + 1, Q likewise.
        - out: a tuple of two (N, C, P, Q) arrays, or None

    ``out=(y, indices)``, when given, receives both results and is returned, as NumPy's ``out=``
    for a function of two results: y of x's dtype, indices of the dtype above, each of any
    strides and sharing no memory with the other (either may share memory with x).
    """
    return _core.max_pool2d(x, kernel_size, stride, padding, out)


def max_pool2d_backward(
    dy: np.ndarray,
    indices: np.ndarray,
    x_shape: tuple[int, int, int, int],
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
) -> np.ndarray:
    """Gradient of max_pool2d: each dy lands on the arg-max of its window (summed where windows
    overlap).

    Shape:
        - dy, indices: (N, C, P, Q)
        - x_shape: (N, C, H, W)
        - result: (N, C, H, W)
    """
    return _core.max_pool2d_backward(dy, indices, x_shape, kernel_size, stride, padding)


def avg_pool2d(
    x: np.ndarray,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    count_include_pad: bool = True,
) -> np.ndarray:
    """Mean over each R x S window; padding counts as 0 and, when ``count_include_pad``, in the
    divisor (otherwise only the input pixels inside the window are counted).

    Shape:
        - x: (N, C, H, W)
        - result: (N, C, P, Q) with P = (H + 2 * padding[0] - R) // stride[0] + 1, Q likewise.
    """
    return _core.avg_pool2d(x, kernel_size, stride, padding, bool(count_include_pad))


def avg_pool2d_backward(
    dy: np.ndarray,
    x_shape: tuple[int, int, int, int],
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    count_include_pad: bool = True,
) -> np.ndarray:
    """Gradient of avg_pool2d: each input pixel of a window receives dy / divisor, with the
    forward pass's divisor (R * S, or the number of input pixels in the window when
    ``count_include_pad`` is False; the shares of padding pixels are dropped).

    Shape:
        - dy: (N, C, P, Q)
        - x_shape: (N, C, H, W)
        - result: (N, C, H, W)
    """
    return _core.avg_pool2d_backward(
        dy, x_shape, kernel_size, stride, padding, bool(count_include_pad)
    )


# ------------------------------------------------------------------------------------------------
# Elementwise kernels of training: ReLU, the bias gradient and the fused optimiser updates (one
# pass over the parameter, its gradient and its state instead of NumPy's several passes with
# temporaries).


def relu(x: np.ndarray) -> np.ndarray:
    """max(x, 0) elementwise; NaN stays NaN (as in PyTorch). Shape: any; result of the same."""
    return _core.relu(x)


def relu_backward(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Gradient of relu: dy * (x > 0), a multiply, so NaN and Inf in dy propagate as IEEE
    arithmetic says (PyTorch's select would zero them where x <= 0); a NaN x counts as
    inactive. Shape: dy and x of the same shape; result of that shape."""
    return _core.relu_backward(dy, x)


def bias_backward(
    dy: np.ndarray,
    y: np.ndarray | None = None,
    db: np.ndarray | None = None,
    *,
    accumulate: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The backward pass of a bias added to every row, and of a ReLU fused after it (gemm's
    ``bias`` and ``relu``), in one pass over ``dy``.

    Returns ``(dx, db)``: ``dx = dy * (y > 0)`` when ``y``, the ReLU's output, is given (as
    :func:`relu_backward`), else ``dy`` itself; ``db`` the column sums of ``dx``. ``db``, when
    given, receives them (any strides; NumPy's ``out=``) and is returned; with ``accumulate`` they
    are added to it instead (a gradient accumulated over several uses).

    Shape:
        - dy, y, dx: (M, N)
        - db: (N,), dy's dtype
    """
    accumulate = _bias_backward_args(db, accumulate)
    return _core.bias_backward(dy, y, db, accumulate)


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Softmax cross-entropy averaged over the batch, and its gradient, in one pass over the
    logits: ``loss = mean(logsumexp(logits[i]) - logits[i, labels[i]])`` (summed in float64) and
    ``grad = (softmax(logits) - onehot(labels)) / N``, the gradient of ``loss`` with respect to
    ``logits`` (scale it by the loss's own gradient). NaN or +Inf in a row make its loss and
    gradient NaN, as the NumPy formulation does.

    Shape:
        - logits, grad: (N, D)
        - labels: (N,), integers in [0, D)
        - loss: (), the logits' dtype
    """
    return _core.softmax_cross_entropy(logits, labels)


def sgd_update(
    param: np.ndarray | list[np.ndarray],
    grad: np.ndarray | list[np.ndarray],
    velocity: np.ndarray | list[np.ndarray] | None,
    *,
    lr: float,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> None:
    """One SGD step in place (PyTorch's rule; velocity starts at zero):

        g = grad + weight_decay * param
        velocity = momentum * velocity + g
        param -= lr * (g + momentum * velocity if nesterov else velocity)

    Without momentum, velocity may be None and param -= lr * g. param and velocity must be
    writeable C-contiguous float32/float64 arrays of one shape and dtype, as grad. Each argument
    may also be a list of arrays (a model's parameters), updated in one call. lr, momentum and
    weight_decay must be finite and >= 0, as PyTorch's SGD requires (ValueError otherwise).
    """
    lr, momentum, nesterov, weight_decay = _sgd_args(lr, momentum, nesterov, weight_decay)
    _core.sgd_update(param, grad, velocity, lr, momentum, nesterov, weight_decay)


def adam_update(
    param: np.ndarray | list[np.ndarray],
    grad: np.ndarray | list[np.ndarray],
    exp_avg: np.ndarray | list[np.ndarray],
    exp_avg_sq: np.ndarray | list[np.ndarray],
    *,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    step: int = 1,
) -> None:
    """One Adam step in place (``step`` counts from 1 for the bias correction):

    g = grad + weight_decay * param
    exp_avg = beta1 * exp_avg + (1 - beta1) * g
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
    param -= lr / (1 - beta1**step) * exp_avg / (sqrt(exp_avg_sq / (1 - beta2**step)) + eps)

    lr, eps and weight_decay must be finite and >= 0, beta1 and beta2 in [0, 1) and step an int
    >= 1, as PyTorch's Adam requires (ValueError or TypeError otherwise).
    """
    lr, beta1, beta2, eps, weight_decay, step = _adam_args(
        lr, beta1, beta2, eps, weight_decay, step
    )
    _core.adam_update(param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay, step)


# ------------------------------------------------------------------------------------------------
# Normalisation. x is (N, C, *spatial) with the channels on axis 1 (BatchNorm1d takes (N, C) or
# (N, C, L), BatchNorm2d (N, C, H, W)); each channel has M = N * prod(spatial) values.


def batch_norm(
    x: np.ndarray,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    running_mean: np.ndarray | None,
    running_var: np.ndarray | None,
    training: bool,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batch normalisation: ``y = (x - mean) / sqrt(var + eps) * weight + bias`` per channel.

    Shape:
        - x, y: (N, C, *spatial), any ndim >= 2
        - weight, bias: (C,) or None (1 and 0)
        - running_mean, running_var: (C,) or None
        - save_mean, save_invstd: (C,)

    Returns ``(y, save_mean, save_invstd)``; pass the last two to :func:`batch_norm_backward`.

    training=True: mean and biased variance of the batch (two-pass, summed in double), and
    ``save_mean`` = that mean, ``save_invstd = 1 / sqrt(var + eps)``. running_mean and running_var,
    when given, are updated in place as in PyTorch: ``r = (1 - momentum) * r + momentum * stat``
    with the unbiased variance ``var * M / (M - 1)`` for running_var (they must be writeable
    arrays of x's dtype). M == 1 raises ValueError, as in PyTorch; M == 0 gives an empty y,
    save_mean 0, save_invstd ``1 / sqrt(eps)`` and leaves the running statistics alone.

    training=False: normalises with running_mean and running_var (both required);
    ``save_mean`` is a copy of running_mean and ``save_invstd = 1 / sqrt(running_var + eps)``.

    eps must be finite and > 0 and momentum in [0, 1] (ValueError otherwise).
    """
    momentum, eps = _batch_norm_args(momentum, eps)
    return _core.batch_norm(
        x, weight, bias, running_mean, running_var, bool(training), momentum, eps
    )


def batch_norm_backward(
    dy: np.ndarray,
    x: np.ndarray,
    weight: np.ndarray | None,
    save_mean: np.ndarray,
    save_invstd: np.ndarray,
    training: bool,
    need_dx: bool = True,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Gradients of :func:`batch_norm`: ``(dx or None, dweight, dbias)``.

    With ``xhat = (x - save_mean) * save_invstd`` and sums over the M values of each channel:
    ``dbias = sum(dy)``, ``dweight = sum(dy * xhat)``, and

    - training: ``dx = weight * save_invstd * (dy - mean(dy) - xhat * mean(dy * xhat))``
    - eval: ``dx = dy * weight * save_invstd``

    weight None means 1. dx is not computed (None) when ``need_dx`` is False.

    Shape:
        - dy, x, dx: (N, C, *spatial)
        - weight, save_mean, save_invstd, dweight, dbias: (C,)
    """
    return _core.batch_norm_backward(
        dy, x, weight, save_mean, save_invstd, bool(training), bool(need_dx)
    )
