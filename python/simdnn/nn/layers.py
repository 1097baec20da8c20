"""The layers: each holds its parameters and calls one differentiable operation of
simdnn.functional in ``forward``; the backward rules live with those operations.

Shape legend: N batch, D_in/D_out features, C/K channels in/out, H x W input planes, R x S
kernels, P x Q output planes, L a 1-D length.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import functional as F
from .. import init
from .._opspec import (
    WINOGRAD_ALGORITHMS,
    IntPair,
    conv_algorithm_arg,
    conv_out_size,
    winograd_ineligibility,
)
from ..autograd import Tensor, as_array
from .module import Module, Parameter, Shape, is_meta, meta_array

# Sizes, strides and paddings at or above this are refused by name: NumPy would otherwise fail
# on them with a message of its own ("Maximum allowed dimension exceeded") naming no argument.
_SIZE_LIMIT = 2**62


def _int(v: Any, name: str, layer: str, low: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{layer}: {name} must be an int, got {v!r}")
    if v < low:
        raise ValueError(f"{layer}: {name} must be >= {low}, got {v}")
    if v >= _SIZE_LIMIT:
        raise ValueError(f"{layer}: {name} must be < 2**62, got {v}")
    return int(v)


def _pair(v: IntPair, name: str, layer: str) -> tuple[int, int]:
    if (
        isinstance(v, (tuple, list))
        and len(v) == 2
        and all(isinstance(e, (int, np.integer)) and not isinstance(e, bool) for e in v)
    ):
        pair = int(v[0]), int(v[1])
    elif isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        pair = int(v), int(v)
    else:
        raise TypeError(f"{layer}: {name} must be an int or a pair of ints, got {v!r}")
    if max(pair) >= _SIZE_LIMIT:
        raise ValueError(f"{layer}: {name} must be < 2**62, got {v!r}")
    return pair


def _bool(v: Any, name: str, layer: str) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{layer}: {name} must be True or False, got {v!r}")
    return bool(v)


def _real(v: Any, name: str, layer: str, low: float, high: float, *, high_open: bool) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{layer}: {name} must be a real number, got {v!r}")
    f = float(v)
    if not (low <= f < high if high_open else low <= f <= high):
        bracket = ")" if high_open else "]"
        raise ValueError(f"{layer}: {name} must be in [{low}, {high}{bracket}, got {v!r}")
    return f


def _rng(v: Any, layer: str) -> np.random.Generator | None:
    if v is not None and not isinstance(v, np.random.Generator):
        raise TypeError(f"{layer}: rng must be a numpy.random.Generator or None, got {v!r}")
    return v


def _check_input(
    layer: Module, x: Any, expected: str, ok: Callable[[tuple[int, ...]], bool]
) -> None:
    if not isinstance(x, (np.ndarray, Tensor)):
        raise TypeError(f"{layer!r}: expected a tensor or NumPy array, got {type(x).__name__}")
    if not ok(x.shape):
        raise ValueError(f"{layer!r}: expected input of shape {expected}, got {x.shape}")


def _dtype(dtype: npt.DTypeLike | None, layer: str) -> np.dtype:
    # NumPy's own error for a bad name ("data type 'abc' not understood") names no layer or
    # argument; any failure to convert is reported like a dtype of the wrong kind.
    try:
        dt = np.dtype(np.float32 if dtype is None else dtype)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{layer}: dtype must be float32 or float64, got {dtype!r}") from err
    if dt not in (np.float32, np.float64):
        raise TypeError(f"{layer}: dtype must be float32 or float64, got {dt}")
    return dt


def _init_get(name: str) -> Any:
    if not isinstance(name, str):
        raise TypeError(f"init must be an initialiser name, got {name!r}")
    return init.get(name)


def _weights(init_name: str, shape: tuple[int, ...], dt: np.dtype, rng: Any) -> np.ndarray:
    """Initial weights drawn by the named initialiser (no memory under meta_build)."""
    make = _init_get(init_name)
    return meta_array(shape, dt) if is_meta() else make(shape, dt, rng)


def _filled(shape: tuple[int, ...], dt: npt.DTypeLike, value: float) -> np.ndarray:
    return meta_array(shape, dt) if is_meta() else np.full(shape, value, dt)


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
        name = "Linear"
        self.in_features = _int(in_features, "in_features", name)
        self.out_features = _int(out_features, "out_features", name)
        self.init = init
        dt = _dtype(dtype, name)
        shape = (self.in_features, self.out_features)
        self.weight = Parameter(_weights(init, shape, dt, _rng(rng, name)))
        has_bias = _bool(bias, "bias", name)
        self.bias = Parameter(_filled((self.out_features,), dt, 0)) if has_bias else None

    def forward(self, x: Any) -> Tensor:
        return self._forward(x, None)

    def _forward(self, x: Any, activation: str | None) -> Tensor:
        """forward, with F.linear's fused activation (Sequential's Linear + ReLU)."""
        _check_input(self, x, f"(N, {self.in_features})",
                     lambda s: len(s) == 2 and s[1] == self.in_features)  # fmt: skip
        x = F.match_dtype(x, self.weight, "Linear")
        return F.linear(x, self.weight, self.bias, activation)

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
        algorithm: the convolution algorithm of the forward and both backward passes, "auto",
            "direct", "winograd" (Winograd F(4x4, 3x3)) or "winograd_2x2" (F(2x2, 3x3), more
            accurate: 0.4-0.9x the direct path's float32 error, F(4x4) 2-6x; both need 3x3 kernels,
            stride 1, dilation 1, groups 1 and padding <= 2, else a ValueError here); None (the
            default) follows :func:`simdnn.conv_algorithm`. A setting, not a parameter: saved with
            the architecture, not in the state dict.

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
        algorithm: str | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.kernel_size = _pair(kernel_size, "kernel_size", name)
        self.stride = _pair(stride, "stride", name)
        self.padding = _pair(padding, "padding", name)
        self.dilation = _pair(dilation, "dilation", name)
        in_channels = _int(in_channels, "in_channels", name)
        out_channels = _int(out_channels, "out_channels", name)
        groups = _int(groups, "groups", name)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"{name}: groups={groups} must divide in_channels={in_channels} and "
                f"out_channels={out_channels}"
            )
        if min(*self.kernel_size, *self.stride, *self.dilation) < 1 or min(self.padding) < 0:
            raise ValueError(
                f"{name}: kernel_size, stride and dilation must be >= 1 and padding >= 0, got "
                f"{self.kernel_size}, {self.stride}, {self.dilation}, {self.padding}"
            )
        self.in_channels, self.out_channels, self.groups, self.init = (
            in_channels,
            out_channels,
            groups,
            init,
        )
        if algorithm is not None:
            algorithm = conv_algorithm_arg(algorithm, name)
            if algorithm in WINOGRAD_ALGORITHMS:
                shape4 = (out_channels, in_channels // groups, *self.kernel_size)
                reason = winograd_ineligibility(
                    shape4,
                    self.stride,
                    self.padding,
                    self.dilation,
                    groups,
                    backward_data=True,
                    algorithm=algorithm,
                )
                if reason is not None:
                    raise ValueError(f"{name}: {reason}")
        self.algorithm: str | None = algorithm
        dt = _dtype(dtype, name)
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        self.weight = Parameter(_weights(init, shape, dt, _rng(rng, name)))
        has_bias = _bool(bias, "bias", name)
        self.bias = Parameter(_filled((out_channels,), dt, 0)) if has_bias else None

    def _args(self) -> tuple[Any, ...]:
        return self.stride, self.padding, self.dilation, self.groups

    def forward(self, x: Any) -> Tensor:
        _check_input(self, x, f"(N, {self.in_channels}, H, W)",
                     lambda s: len(s) == 4 and s[1] == self.in_channels)  # fmt: skip
        x = F.match_dtype(x, self.weight, type(self).__name__)
        return F.conv2d(x, self.weight, self.bias, *self._args(), self.algorithm)

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
            conv_out_size(h, r, sh, ph, dh),
            conv_out_size(w, s, sw, pw, dw),
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
            # Only when set: the architecture of a model that never chose one reads as before.
            **({} if self.algorithm is None else {"algorithm": self.algorithm}),
        }


class Conv1d(Module):
    """1-D convolution over sequences: the 2-D kernels seen through a height of 1.

    Args: as Conv2d, with ints for kernel_size, stride, padding and dilation.

    Shape:
        - Input: (N, C, L)
        - Output: (N, K, Q), Q = (L + 2*padding - dilation*(S-1) - 1) // stride + 1

    Attributes:
        weight: (K, C/groups, S). bias: (K,).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        init: str = "kaiming_uniform",
        dtype: npt.DTypeLike | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        name = "Conv1d"
        self.kernel_size = _int(kernel_size, "kernel_size", name)
        self.stride = _int(stride, "stride", name)
        self.padding = _int(padding, "padding", name, low=0)
        self.dilation = _int(dilation, "dilation", name)
        self.in_channels = _int(in_channels, "in_channels", name)
        self.out_channels = _int(out_channels, "out_channels", name)
        self.groups = _int(groups, "groups", name)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(
                f"{name}: groups={groups} must divide in_channels={in_channels} and "
                f"out_channels={out_channels}"
            )
        self.init = init
        dt = _dtype(dtype, name)
        # Initialised as the (K, C/groups, 1, S) kernel it runs as: the same fans.
        k, cg, s = self.out_channels, self.in_channels // self.groups, self.kernel_size
        w = _weights(init, (k, cg, 1, s), dt, _rng(rng, name))
        self.weight = Parameter(meta_array((k, cg, s), dt) if is_meta() else w.reshape(k, cg, s))
        has_bias = _bool(bias, "bias", name)
        self.bias = Parameter(_filled((k,), dt, 0)) if has_bias else None

    def forward(self, x: Any) -> Tensor:
        _check_input(self, x, f"(N, {self.in_channels}, L)",
                     lambda s: len(s) == 3 and s[1] == self.in_channels)  # fmt: skip
        x = F.match_dtype(x, self.weight, "Conv1d")
        return F.conv1d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)  # fmt: skip

    def output_shape(self, input_shape: Shape) -> Shape:
        n, _, length = input_shape
        q = conv_out_size(length, self.kernel_size, self.stride, self.padding, self.dilation)
        return n, self.out_channels, q

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

    def _check(self, x: Any) -> None:
        _check_input(self, x, "(N, C, H, W)", lambda s: len(s) == 4)

    def output_shape(self, input_shape: Shape) -> Shape:
        n, c, h, w = input_shape
        (r, s), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return n, c, conv_out_size(h, r, sh, ph), conv_out_size(w, s, sw, pw)

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

    def forward(self, x: Any) -> Tensor:
        self._check(x)
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)


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
        self.count_include_pad = _bool(count_include_pad, "count_include_pad", "AvgPool2d")

    def forward(self, x: Any) -> Tensor:
        self._check(x)
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.count_include_pad)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "count_include_pad": self.count_include_pad}


class _Pool1d(Module):
    def __init__(self, kernel_size: int, stride: int | None, padding: int) -> None:
        super().__init__()
        name = type(self).__name__
        self.kernel_size = _int(kernel_size, "kernel_size", name)
        self.stride = self.kernel_size if stride is None else _int(stride, "stride", name)
        self.padding = _int(padding, "padding", name, low=0)
        if self.padding > self.kernel_size // 2:
            raise ValueError(
                f"{name}: padding {self.padding} must be at most half the kernel size "
                f"{self.kernel_size}"
            )

    def _check(self, x: Any) -> None:
        _check_input(self, x, "(N, C, L)", lambda s: len(s) == 3)

    def output_shape(self, input_shape: Shape) -> Shape:
        n, c, length = input_shape
        return n, c, conv_out_size(length, self.kernel_size, self.stride, self.padding)

    def config(self) -> dict[str, Any]:
        return {"kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding}


class MaxPool1d(_Pool1d):
    """Max pooling over sequences (the 2-D kernel with a height of 1).

    Shape:
        - Input: (N, C, L)
        - Output: (N, C, Q), Q = (L + 2*padding - kernel_size) // stride + 1
    """

    def __init__(self, kernel_size: int, stride: int | None = None, padding: int = 0) -> None:
        super().__init__(kernel_size, stride, padding)

    def forward(self, x: Any) -> Tensor:
        self._check(x)
        return F.max_pool1d(x, self.kernel_size, self.stride, self.padding)


class AvgPool1d(_Pool1d):
    """Average pooling over sequences (the 2-D kernel with a height of 1).

    Shape:
        - Input: (N, C, L)
        - Output: (N, C, Q), Q = (L + 2*padding - kernel_size) // stride + 1
    """

    def __init__(
        self,
        kernel_size: int,
        stride: int | None = None,
        padding: int = 0,
        count_include_pad: bool = True,
    ) -> None:
        super().__init__(kernel_size, stride, padding)
        self.count_include_pad = _bool(count_include_pad, "count_include_pad", "AvgPool1d")

    def forward(self, x: Any) -> Tensor:
        self._check(x)
        return F.avg_pool1d(x, self.kernel_size, self.stride, self.padding, self.count_include_pad)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "count_include_pad": self.count_include_pad}


class AdaptiveAvgPool2d(Module):
    """Average pooling to a fixed output plane; output_size 1 is global average pooling (one
    value per feature map, whatever the input size). Other sizes must divide H and W.

    Shape:
        - Input: (N, C, H, W)
        - Output: (N, C, P, Q) with (P, Q) = output_size
    """

    def __init__(self, output_size: IntPair = 1) -> None:
        super().__init__()
        self.output_size = _pair(output_size, "output_size", "AdaptiveAvgPool2d")
        if min(self.output_size) < 1:
            raise ValueError(f"AdaptiveAvgPool2d: output_size must be >= 1, got {output_size}")

    def forward(self, x: Any) -> Tensor:
        _check_input(self, x, "(N, C, H, W)", lambda s: len(s) == 4)
        return F.adaptive_avg_pool2d(x, self.output_size)

    def output_shape(self, input_shape: Shape) -> Shape:
        return (*input_shape[:2], *self.output_size)

    def config(self) -> dict[str, Any]:
        return {"output_size": self.output_size}


class GlobalAvgPool2d(Module):
    """The mean of each feature map, flattened (AdaptiveAvgPool2d(1) then Flatten).

    Shape:
        - Input: (N, C, H, W)
        - Output: (N, C)
    """

    def forward(self, x: Any) -> Tensor:
        _check_input(self, x, "(N, C, H, W)", lambda s: len(s) == 4)
        return F.global_avg_pool2d(x)

    def output_shape(self, input_shape: Shape) -> Shape:
        return tuple(input_shape[:2])


class _BatchNorm(Module):
    _ndims: tuple[int, ...] = ()
    _expected = ""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        dtype: npt.DTypeLike | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.num_features = _int(num_features, "num_features", name)
        self.eps = _real(eps, "eps", name, 0.0, math.inf, high_open=True)
        if self.eps <= 0:
            raise ValueError(f"{name}: eps must be > 0, got {eps!r}")
        self.momentum = (
            None if momentum is None else _real(momentum, "momentum", name, 0.0, 1.0,
                                                high_open=False)
        )  # fmt: skip
        self.affine = _bool(affine, "affine", name)
        self.track_running_stats = _bool(track_running_stats, "track_running_stats", name)
        dt = _dtype(dtype, name)
        c = self.num_features
        self.weight = Parameter(_filled((c,), dt, 1)) if self.affine else None
        self.bias = Parameter(_filled((c,), dt, 0)) if self.affine else None
        if self.track_running_stats:
            self.register_buffer("running_mean", _filled((c,), dt, 0))
            self.register_buffer("running_var", _filled((c,), dt, 1))
            self.register_buffer("num_batches_tracked", _filled((), np.int64, 0))
        else:
            self.running_mean = self.running_var = None

    def forward(self, x: Any) -> Tensor:
        c = self.num_features
        _check_input(self, x, self._expected.format(c=c),
                     lambda s: len(s) in self._ndims and s[1] == c)  # fmt: skip
        ref = self.weight if self.weight is not None else self.running_mean
        if ref is not None:
            x = F.match_dtype(x, ref, type(self).__name__)
        track = self.track_running_stats
        momentum = self.momentum
        if self.training and track:
            self.num_batches_tracked += 1
            if momentum is None:  # a cumulative average of every batch's statistics
                momentum = 1.0 / float(self.num_batches_tracked)
        return F.batch_norm(
            x,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight,
            self.bias,
            training=self.training or not track,
            momentum=0.1 if momentum is None else momentum,
            eps=self.eps,
        )

    def config(self) -> dict[str, Any]:
        return {
            "num_features": self.num_features,
            "eps": self.eps,
            "momentum": self.momentum,
            "affine": self.affine,
            "track_running_stats": self.track_running_stats,
        }


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of features (or channels of sequences): each is normalised with the
    batch's mean and variance in training and with running estimates in evaluation, then scaled
    by weight (gamma) and shifted by bias (beta). momentum and eps as in PyTorch
    (running = (1 - momentum) running + momentum batch; momentum None: cumulative average).

    Shape:
        - Input: (N, C) or (N, C, L)
        - Output: same as the input
    """

    _ndims = (2, 3)
    _expected = "(N, {c}) or (N, {c}, L)"


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of feature maps: per channel over N, H and W (see BatchNorm1d).

    Shape:
        - Input: (N, C, H, W)
        - Output: same as the input
    """

    _ndims = (4,)
    _expected = "(N, {c}, H, W)"


class Flatten(Module):
    """Flattens everything but the batch axis.

    Shape:
        - Input: (N, *)
        - Output: (N, product of *)
    """

    def forward(self, x: Any) -> Tensor:
        _check_input(self, x, "(N, ...)", lambda s: len(s) >= 1)
        shape = x.shape
        t = x if isinstance(x, Tensor) else Tensor(x)
        return t.reshape(shape[0], math.prod(shape[1:]))

    def output_shape(self, input_shape: Shape) -> Shape:
        return (input_shape[0], math.prod(input_shape[1:]))


class Identity(Module):
    """Returns its input (a placeholder, or the shortcut of a residual block).

    Shape: any input; the same output.
    """

    def forward(self, x: Any) -> Any:
        return x


class Residual(Module):
    """A skip connection around a block: y = block(x) + shortcut(x), shortcut the identity by
    default (or e.g. a 1x1 convolution where the block changes the shape). Gradients reach x
    through both paths and add up, which keeps them from vanishing in deep stacks.

    Shape: block(x) and shortcut(x) must have the same shape; that is the output's.
    """

    def __init__(self, block: Module, shortcut: Module | None = None) -> None:
        super().__init__()
        if not isinstance(block, Module):
            raise TypeError(f"Residual: block must be a Module, got {type(block).__name__}")
        if shortcut is not None and not isinstance(shortcut, Module):
            raise TypeError(
                f"Residual: shortcut must be a Module or None, got {type(shortcut).__name__}"
            )
        self.block = block
        self.shortcut = shortcut

    def forward(self, x: Any) -> Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        return F.add(self.block(x), skip)


class Dropout(Module):
    """Zeroes each element with probability p during training and scales the rest by 1/(1-p)
    ("inverted" dropout), so evaluation needs no rescaling. Identity in eval mode.

    Shape:
        - Input: any
        - Output: same as the input
    """

    def __init__(self, p: float = 0.5, rng: np.random.Generator | None = None) -> None:
        super().__init__()
        self.p = _real(p, "p", "Dropout", 0.0, 1.0, high_open=True)
        self._rng = _rng(rng, "Dropout")

    def forward(self, x: Any) -> Tensor:
        return F.dropout(x, self.p, self.training, self._rng)

    def config(self) -> dict[str, Any]:
        return {"p": self.p}


# ------------------------------------------------------------------------------------------------
# Activations


class Sigmoid(Module):
    """Logistic unit 1 / (1 + exp(-x)); its slope is at most 1/4, so stacks of sigmoids shrink
    gradients layer after layer (the vanishing-gradient problem).

    Shape: any input; output of the same shape.
    """

    def forward(self, x: Any) -> Tensor:
        return F.sigmoid(x)


class Tanh(Module):
    """Hyperbolic tangent. Shape: any input; output of the same shape."""

    def forward(self, x: Any) -> Tensor:
        return F.tanh(x)


class ReLU(Module):
    """max(0, x): slope 1 wherever the unit is active. Shape: any; output of the same shape."""

    def forward(self, x: Any) -> Tensor:
        return F.relu(x)


class LeakyReLU(Module):
    """x for x > 0, negative_slope * x otherwise. Shape: any; output of the same shape."""

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = _real(
            negative_slope, "negative_slope", "LeakyReLU", -math.inf, math.inf, high_open=True
        )
        if not math.isfinite(self.negative_slope):
            raise ValueError(f"LeakyReLU: negative_slope must be finite, got {negative_slope!r}")

    def forward(self, x: Any) -> Tensor:
        return F.leaky_relu(x, self.negative_slope)

    def config(self) -> dict[str, Any]:
        return {"negative_slope": self.negative_slope}


class Softmax(Module):
    """exp(x) / sum(exp(x)) along an axis (probabilities). For training a classifier, feed
    logits to CrossEntropyLoss instead, which is stabler.

    Shape: any input; output of the same shape.
    """

    def __init__(self, axis: int = -1) -> None:
        super().__init__()
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
            raise TypeError(f"Softmax: axis must be an int, got {axis!r}")
        if not -64 <= axis < 64:
            raise ValueError(f"Softmax: axis must be in [-64, 64) (NumPy's limit), got {axis}")
        self.axis = int(axis)

    def forward(self, x: Any) -> Tensor:
        arr = as_array(x)
        if not -arr.ndim <= self.axis < arr.ndim:
            raise ValueError(f"Softmax: axis {self.axis} is out of range for input {arr.shape}")
        return F.softmax(x, self.axis)

    def config(self) -> dict[str, Any]:
        return {"axis": self.axis}
