"""The layers: each holds its parameters and calls one functional operation (simdnn.functional),
forward and backward side by side.

Shape legend: N batch, D_in/D_out features, C/K channels in/out, H x W input planes, R x S
kernels, P x Q output planes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Union

import numpy as np
import numpy.typing as npt

from .. import functional as F
from .. import init
from .module import Module, Parameter, Shape

IntPair = Union[int, tuple[int, int]]


def _pair(v: IntPair, name: str, layer: str) -> tuple[int, int]:
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(e, int) for e in v):
        return int(v[0]), int(v[1])
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v), int(v)
    raise TypeError(f"{layer}: {name} must be an int or a pair of ints, got {v!r}")


def _check_input(
    layer: Module, x: np.ndarray, expected: str, ok: Callable[[np.ndarray], bool]
) -> None:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{layer!r}: expected a NumPy array, got {type(x).__name__}")
    if not ok(x):
        raise ValueError(f"{layer!r}: expected input of shape {expected}, got {x.shape}")


def _dtype(dtype: npt.DTypeLike | None) -> np.dtype:
    dt = np.dtype(np.float32 if dtype is None else dtype)
    if dt not in (np.float32, np.float64):
        raise TypeError(f"expected dtype float32 or float64, got {dt}")
    return dt


class Linear(Module):
    """Fully connected layer: y = x . W + b.

    Args:
        in_features: D_in. out_features: D_out. bias: learn b (default True).
        init: weight initialiser name (default "xavier_uniform", Glorot/Xavier; see
            simdnn.init). The bias starts at zero.

    Shape:
        - Input: (N, D_in)
        - Output: (N, D_out)

    Attributes:
        weight: (D_in, D_out), the transpose of PyTorch's layout (Keras's), so that the forward
            pass is a plain row-major product. bias: (D_out,).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        init: str = "xavier_uniform",
        dtype: npt.DTypeLike | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(
                f"Linear: in_features and out_features must be >= 1, got {in_features}, "
                f"{out_features}"
            )
        self.in_features, self.out_features, self.init = in_features, out_features, init
        dt = _dtype(dtype)
        self.weight = Parameter(_init_get(init)((in_features, out_features), dt, rng))
        self.bias = Parameter(np.zeros(out_features, dt)) if bias else None
        self._x: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        _check_input(
            self,
            x,
            f"(N, {self.in_features})",
            lambda a: a.ndim == 2 and a.shape[1] == self.in_features,
        )
        self._x = x
        return F.linear(x, self.weight.data, None if self.bias is None else self.bias.data)

    def backward(self, grad_out: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        dw, dw_beta = self.weight.grad_target()
        db, db_beta = (None, 0.0) if self.bias is None else self.bias.grad_target()
        return F.linear_backward(
            grad_out, self._x, self.weight.data, dw, dw_beta, db, db_beta, need_input_grad
        )

    def output_shape(self, input_shape: Shape) -> Shape:
        return (input_shape[0], self.out_features)

    def config(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
            "init": self.init,
        }


class Conv2d(Module):
    """2-D convolution: every output pixel is a weighted sum over its receptive field (R x S
    pixels of each input channel of its group), with the same weights at every position.

    Args:
        in_channels: C. out_channels: K (feature maps). kernel_size: R x S (int or pair).
        stride, padding, dilation: int or pair, as in PyTorch. groups: split the channels into
        groups convolved separately (groups = C = K is a depthwise convolution). bias: learn b.
        init: weight initialiser (default "kaiming_uniform", He, for ReLU nets).

    Shape:
        - Input: (N, C, H, W)
        - Output: (N, K, P, Q), P = (H + 2*padding - dilation*(R-1) - 1) // stride + 1, Q likewise

    Attributes:
        weight: (K, C/groups, R, S). bias: (K,).
    """

    spatial = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        bias: bool = True,
        init: str = "kaiming_uniform",
        dtype: npt.DTypeLike | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        name = "Conv2d"
        self.kernel_size = _pair(kernel_size, "kernel_size", name)
        self.stride = _pair(stride, "stride", name)
        self.padding = _pair(padding, "padding", name)
        self.dilation = _pair(dilation, "dilation", name)
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(
                f"Conv2d: groups={groups} must divide in_channels={in_channels} and "
                f"out_channels={out_channels}"
            )
        if min(*self.kernel_size, *self.stride, *self.dilation) < 1 or min(self.padding) < 0:
            raise ValueError(
                f"Conv2d: kernel_size, stride and dilation must be >= 1 and padding >= 0, got "
                f"{self.kernel_size}, {self.stride}, {self.dilation}, {self.padding}"
            )
        self.in_channels, self.out_channels, self.groups, self.init = (
            in_channels,
            out_channels,
            groups,
            init,
        )
        dt = _dtype(dtype)
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        self.weight = Parameter(_init_get(init)(shape, dt, rng))
        self.bias = Parameter(np.zeros(out_channels, dt)) if bias else None
        self._x: np.ndarray | None = None

    def _args(self) -> tuple[Any, ...]:
        return self.stride, self.padding, self.dilation, self.groups

    def forward(self, x: np.ndarray) -> np.ndarray:
        _check_input(
            self,
            x,
            f"(N, {self.in_channels}, H, W)",
            lambda a: a.ndim == 4 and a.shape[1] == self.in_channels,
        )
        self._x = x
        return F.conv2d(
            x, self.weight.data, None if self.bias is None else self.bias.data, *self._args()
        )

    def backward(self, grad_out: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        dx, dw, db = F.conv2d_backward(
            grad_out, self._x, self.weight.data, *self._args(), need_dx=need_input_grad
        )
        self.weight.add_grad(dw)
        if self.bias is not None:
            self.bias.add_grad(db)
        return dx

    def output_shape(self, input_shape: Shape) -> Shape:
        n, _, h, w = input_shape
        (r, s), (sh, sw), (ph, pw), (dh, dw) = (
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
        )
        return (
            n,
            self.out_channels,
            (h + 2 * ph - dh * (r - 1) - 1) // sh + 1,
            (w + 2 * pw - dw * (s - 1) - 1) // sw + 1,
        )

    def window(self) -> tuple[tuple[int, int], tuple[int, int]]:
        (r, s), (dh, dw) = self.kernel_size, self.dilation
        return (dh * (r - 1) + 1, dw * (s - 1) + 1), self.stride

    def config(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "padding": self.padding,
            "dilation": self.dilation,
            "groups": self.groups,
            "bias": self.bias is not None,
            "init": self.init,
        }


class _Pool2d(Module):
    spatial = True

    def __init__(self, kernel_size: IntPair, stride: IntPair | None, padding: IntPair) -> None:
        super().__init__()
        name = type(self).__name__
        self.kernel_size = _pair(kernel_size, "kernel_size", name)
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride", name)
        self.padding = _pair(padding, "padding", name)
        if min(*self.kernel_size, *self.stride) < 1:
            raise ValueError(f"{name}: kernel_size and stride must be >= 1")
        if any(p < 0 or p > k // 2 for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(
                f"{name}: padding {self.padding} must be between 0 and half the kernel size "
                f"{self.kernel_size}"
            )
        self._x_shape: tuple[int, ...] = ()

    def _check(self, x: np.ndarray) -> None:
        _check_input(self, x, "(N, C, H, W)", lambda a: a.ndim == 4)

    def output_shape(self, input_shape: Shape) -> Shape:
        n, c, h, w = input_shape
        (r, s), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return n, c, (h + 2 * ph - r) // sh + 1, (w + 2 * pw - s) // sw + 1

    def window(self) -> tuple[tuple[int, int], tuple[int, int]]:
        return self.kernel_size, self.stride

    def config(self) -> dict[str, Any]:
        return {"kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding}


class MaxPool2d(_Pool2d):
    """Max pooling: the largest value of each R x S window (padding counts as -inf).

    Shape:
        - Input: (N, C, H, W)
        - Output: (N, C, P, Q), P = (H + 2*padding - R) // stride + 1, Q likewise
    """

    def __init__(
        self, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0
    ) -> None:
        super().__init__(kernel_size, stride, padding)
        self._indices: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._check(x)
        self._x_shape = x.shape
        y, self._indices = F.max_pool2d(x, self.kernel_size, self.stride, self.padding)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return F.max_pool2d_backward(
            grad_out, self._indices, self._x_shape, self.kernel_size, self.stride, self.padding
        )


class AvgPool2d(_Pool2d):
    """Average pooling: the mean of each R x S window.

    count_include_pad: divide by R*S even where the window covers padding (default True), or
    only by the number of input pixels it covers.

    Shape:
        - Input: (N, C, H, W)
        - Output: (N, C, P, Q), P = (H + 2*padding - R) // stride + 1, Q likewise
    """

    def __init__(
        self,
        kernel_size: IntPair,
        stride: IntPair | None = None,
        padding: IntPair = 0,
        count_include_pad: bool = True,
    ) -> None:
        super().__init__(kernel_size, stride, padding)
        self.count_include_pad = count_include_pad

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._check(x)
        self._x_shape = x.shape
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.count_include_pad)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return F.avg_pool2d_backward(
            grad_out,
            self._x_shape,
            self.kernel_size,
            self.stride,
            self.padding,
            self.count_include_pad,
        )

    def config(self) -> dict[str, Any]:
        return {**super().config(), "count_include_pad": self.count_include_pad}


class Flatten(Module):
    """Flattens everything but the batch axis.

    Shape:
        - Input: (N, *)
        - Output: (N, product of *)
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        _check_input(self, x, "(N, ...)", lambda a: a.ndim >= 1)
        self._x_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return grad_out.reshape(self._x_shape)

    def output_shape(self, input_shape: Shape) -> Shape:
        return (input_shape[0], math.prod(input_shape[1:]))


class Dropout(Module):
    """Zeroes each element with probability p during training and scales the rest by 1/(1-p)
    ("inverted" dropout), so evaluation needs no rescaling. Identity in eval mode.

    Shape:
        - Input: any
        - Output: same as the input
    """

    def __init__(self, p: float = 0.5, rng: np.random.Generator | None = None) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = p
        self._rng = rng
        self._mask: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        rng = init.generator() if self._rng is None else self._rng
        keep = rng.random(x.shape) >= self.p
        self._mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - self.p))
        return x * self._mask

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return grad_out if self._mask is None else grad_out * self._mask

    def config(self) -> dict[str, Any]:
        return {"p": self.p}


# ------------------------------------------------------------------------------------------------
# Activations


class Sigmoid(Module):
    """Logistic unit 1 / (1 + exp(-x)); its slope is at most 1/4, so stacks of sigmoids shrink
    gradients layer after layer (the vanishing-gradient problem).

    Shape: any input; output of the same shape.
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._y = F.sigmoid(x)
        return self._y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return F.sigmoid_backward(grad_out, self._y)


class Tanh(Module):
    """Hyperbolic tangent. Shape: any input; output of the same shape."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._y = F.tanh(x)
        return self._y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return F.tanh_backward(grad_out, self._y)


class ReLU(Module):
    """max(0, x): slope 1 wherever the unit is active. Shape: any; output of the same shape."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x = x
        return F.relu(x)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return F.relu_backward(grad_out, self._x)


class LeakyReLU(Module):
    """x for x > 0, negative_slope * x otherwise. Shape: any; output of the same shape."""

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x = x
        return F.leaky_relu(x, self.negative_slope)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return F.leaky_relu_backward(grad_out, self._x, self.negative_slope)

    def config(self) -> dict[str, Any]:
        return {"negative_slope": self.negative_slope}


class Softmax(Module):
    """exp(x) / sum(exp(x)) along an axis (probabilities). For training a classifier, feed
    logits to CrossEntropyLoss instead, which is stabler.

    Shape: any input; output of the same shape.
    """

    def __init__(self, axis: int = -1) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._y = F.softmax(x, self.axis)
        return self._y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return F.softmax_backward(grad_out, self._y, self.axis)

    def config(self) -> dict[str, Any]:
        return {"axis": self.axis}


def _init_get(name: str) -> Any:
    return init.get(name)
