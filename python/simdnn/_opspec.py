"""One description per op, shared by :mod:`simdnn.ops` (the native kernels) and
:mod:`simdnn.reference` (their NumPy twins), and by the layers that need an output shape.

For each op this module holds, once on the Python side:

- the normalisation of its arguments (an int or an (h, w) pair -> a pair, ``stride=None`` ->
  the kernel size);
- the validation of its arguments, with the messages of the native bindings (TypeError for a
  wrong type, ValueError for a wrong value, naming the op, the argument and what it got);
- its output-shape formula (:func:`conv_out_size` is the only one in Python).

``ops`` keeps its hot paths cheap: the geometry of a convolution or a pooling (stride, padding,
...) is checked by the bindings themselves, so ``ops.conv2d`` passes it straight through, and only
the checks of its scalars (gemm's alpha and beta, the optimisers' hyper-parameters, batch norm's
eps and momentum, the convolutions' algorithm name) run here. The twins
run every check here, so that both surfaces refuse the same arguments with the same error;
tests/ops/test_surfaces.py holds them to it. Array shapes and dtypes are the bindings' business
(the twins assume valid arrays).

:data:`SPECS` lists every public op with its output-shape function. Adding an op on the Python
side means: a row here (with its checks and output shape, if new), its native function in
``ops`` (typed signature, ``Shape:`` docstring) and its twin in ``reference`` (the same
signature), both ``__all__`` lists, its stub in ``_core.pyi``, a valid call in
tests/ops/test_surfaces.py (which then checks signatures, errors and shapes of both surfaces and
the stub) and its own tests/ops/test_<op>.py.

Shape legend: N batch, C input channels, H x W input size, K output channels, R x S kernel size,
P x Q output size.
"""

from __future__ import annotations

import math
import numbers
import operator
from dataclasses import dataclass
from typing import Callable, Union

import numpy as np

IntPair = Union[int, tuple[int, int]]
Shape4 = tuple[int, int, int, int]

_INT64_MAX = 2**63 - 1


# ------------------------------------------------------------------------------------------------
# Output sizes.


def conv_out_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    """Output length of a window of ``kernel`` taps (``dilation`` apart) sliding by ``stride``
    over ``size`` inputs with ``padding`` on both sides: the P (or Q) of a convolution, and of a
    pooling (dilation 1)::

        P = (H + 2 * padding - dilation * (R - 1) - 1) // stride + 1
    """
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv2d_output_shape(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
) -> Shape4:
    """(N, K, P, Q) of conv2d of an (N, C, H, W) input with (K, C / groups, R, S) weights."""
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    n, _, h, w = x_shape
    k, _, r, s = w_shape
    return n, k, conv_out_size(h, r, sh, ph, dh), conv_out_size(w, s, sw, pw, dw)


def pool2d_output_shape(
    x_shape: tuple[int, ...],
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
) -> Shape4:
    """(N, C, P, Q) of pooling an (N, C, H, W) input with R x S windows."""
    r, s, sh, sw, ph, pw = window(kernel_size, stride, padding)
    n, c, h, w = x_shape
    return n, c, conv_out_size(h, r, sh, ph), conv_out_size(w, s, sw, pw)


# ------------------------------------------------------------------------------------------------
# Normalisation and validation of arguments. Every message names the op (fn), the argument and
# what it got; the geometry messages are those of cpp/bindings (common.cpp, conv.cpp, pool.cpp).


def _index(v: object) -> int | None:
    """v as an int when it is one (anything with __index__: int, NumPy ints, bool), else None."""
    try:
        return operator.index(v)  # type: ignore[arg-type]
    except TypeError:
        return None


def pair(v: IntPair) -> tuple[int, int]:
    """An int or an (h, w) pair as a pair, unchecked (for arguments already checked)."""
    if isinstance(v, (tuple, list)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


def int_pair(v: object, name: str, fn: str, low: int) -> tuple[int, int]:
    """An int or a pair (tuple or list) of ints, each >= low and within int64, as a pair."""
    one = _index(v)
    if one is not None:
        values = [one, one]
    elif isinstance(v, (tuple, list)) and len(v) == 2:
        values = [_index(e) for e in v]
    else:
        values = [None]
    if any(e is None for e in values):
        raise TypeError(f"{fn}: {name} must be an int or a pair of ints, got {v!r}")
    for e in values:
        assert e is not None
        if not -_INT64_MAX - 1 <= e <= _INT64_MAX:
            raise ValueError(f"{fn}: {name} does not fit in a 64-bit integer, got {v!r}")
    for e in values:
        assert e is not None
        if e < low:
            raise ValueError(f"{fn}: {name} must be >= {low}, got {v!r}")
    return values[0], values[1]  # type: ignore[return-value]


def conv_args(
    stride: object, padding: object, dilation: object, groups: object, fn: str
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], int]:
    """The checked (stride, padding, dilation, groups) of a convolution."""
    st = int_pair(stride, "stride", fn, 1)
    pad = int_pair(padding, "padding", fn, 0)
    dil = int_pair(dilation, "dilation", fn, 1)
    g = _index(groups)
    if g is None:
        raise TypeError(f"{fn}: groups must be an int, got {groups!r}")
    if not -_INT64_MAX - 1 <= g <= _INT64_MAX:
        raise ValueError(f"{fn}: groups does not fit in a 64-bit integer, got {groups!r}")
    if g < 1:
        raise ValueError(f"{fn}: groups must be >= 1, got {g}")
    return st, pad, dil, g


# The convolution algorithms of conv2d and its two backward passes: "auto" lets the native code
# choose (Winograd for eligible layers with enough channels, else direct), "direct" is the exact
# implicit-GEMM path, "winograd" forces Winograd F(4x4, 3x3) and "winograd_2x2" Winograd F(2x2,
# 3x3) (ValueError where not eligible; both need the same geometry).
CONV_ALGORITHMS: tuple[str, ...] = ("auto", "direct", "winograd", "winograd_2x2")
# The output tile (m of F(m x m, 3x3)) of each Winograd algorithm name.
WINOGRAD_TILES: dict[str, int] = {"winograd": 4, "winograd_2x2": 2}
WINOGRAD_ALGORITHMS: tuple[str, ...] = tuple(WINOGRAD_TILES)
_ALGORITHM_LIST = "'auto', 'direct', 'winograd' or 'winograd_2x2'"


def conv_algorithm_arg(value: object, fn: str, name: str = "algorithm") -> str:
    """The checked algorithm name of a convolution: TypeError for a non-str, ValueError for an
    unknown name (both naming the argument, what it got and the allowed values)."""
    if not isinstance(value, str):
        raise TypeError(f"{fn}: {name} must be a str, one of {_ALGORITHM_LIST}, got {value!r}")
    if value not in CONV_ALGORITHMS:
        raise ValueError(f"{fn}: {name} must be one of {_ALGORITHM_LIST}, got {value!r}")
    return str(value)


def winograd_ineligibility(
    w_shape: tuple[int, ...],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    backward_data: bool = False,
    algorithm: str = "winograd",
) -> str | None:
    """Why Winograd (``algorithm``, either tile: the geometry is the same) cannot run this
    (checked) geometry, or None when it can: it needs a 3x3 kernel, stride 1, dilation 1 and
    groups 1, and for backward-data (the forward algorithm with padding 2 - padding) a padding of
    at most 2."""
    r, s = w_shape[-2], w_shape[-1]
    reasons = []
    if (r, s) != (3, 3):
        reasons.append(f"kernel ({r}, {s})")
    if stride != (1, 1):
        reasons.append(f"stride {stride}")
    if dilation != (1, 1):
        reasons.append(f"dilation {dilation}")
    if groups != 1:
        reasons.append(f"groups {groups}")
    if backward_data and max(padding) > 2:
        reasons.append(f"padding {padding}")
    if not reasons:
        return None
    need = "a 3x3 kernel, stride 1, dilation 1 and groups 1"
    if backward_data:
        need += " (and padding <= 2 for backward-data)"
    return f"algorithm={algorithm!r} needs {need}, got {', '.join(reasons)}"


def winograd_eligible(
    w_shape: tuple[int, ...],
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    backward_data: bool = False,
) -> bool:
    """Whether Winograd F(4x4, 3x3) can run this geometry (see :func:`winograd_ineligibility`)."""
    return (
        winograd_ineligibility(
            w_shape, pair(stride), pair(padding), pair(dilation), int(groups), backward_data
        )
        is None
    )


def window(
    kernel_size: object, stride: object, padding: object, fn: str = "pool2d"
) -> tuple[int, int, int, int, int, int]:
    """The checked (R, S, sh, sw, ph, pw) of a pooling window; stride None is the kernel size
    and padding may be at most half the kernel size (as in PyTorch)."""
    r, s = int_pair(kernel_size, "kernel_size", fn, 1)
    sh, sw = (r, s) if stride is None else int_pair(stride, "stride", fn, 1)
    ph, pw = int_pair(padding, "padding", fn, 0)
    if ph > r // 2 or pw > s // 2:
        raise ValueError(
            f"{fn}: padding must be at most half of kernel_size, got padding ({ph}, {pw}) with "
            f"kernel_size ({r}, {s})"
        )
    if r > 0x7FFFFFFF // s:
        raise ValueError(f"{fn}: kernel_size ({r}, {s}) has more than 2^31 - 1 positions")
    return r, s, sh, sw, ph, pw


def real(value: object, name: str, fn: str) -> float:
    """A real number (not a bool) as a float; TypeError otherwise."""
    if type(value) is float:  # the common case, without the cost of an ABC check
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{fn}: {name} must be a real number, got {type(value).__name__}")
    return float(value)


def hyper(value: object, name: str, fn: str, *, below_one: bool = False) -> float:
    """A hyper-parameter: a real number >= 0 (and < 1 with below_one), as PyTorch's optimisers
    require; NaN and Inf are refused (they would silently turn every parameter into NaN)."""
    v = real(value, name, fn)
    if not (0.0 <= v < (1.0 if below_one else math.inf)):
        want = "in [0, 1)" if below_one else "a finite number >= 0"
        raise ValueError(f"{fn}: {name} must be {want}, got {v!r}")
    return v


def gemm_args(
    alpha: object, beta: object, trans_a: object, trans_b: object
) -> tuple[float, float, bool, bool]:
    """The checked (alpha, beta, trans_a, trans_b) of gemm."""
    # Called per layer per step: the float test inline, one call for the whole check.
    if type(alpha) is not float:
        alpha = real(alpha, "alpha", "gemm")
    if type(beta) is not float:
        beta = real(beta, "beta", "gemm")
    return alpha, beta, bool(trans_a), bool(trans_b)  # type: ignore[return-value]


def bias_backward_args(db: object, accumulate: object) -> bool:
    """The checked ``accumulate`` of bias_backward: it needs a ``db`` to add to."""
    if accumulate and db is None:
        raise ValueError("bias_backward: accumulate=True needs 'db', the array to add to")
    return bool(accumulate)


def cross_entropy_labels(logits: np.ndarray, labels: object) -> np.ndarray:
    """softmax_cross_entropy's labels as an integer array, checked against the logits (N, D) with
    the bindings' errors: integers, 1-D, N of them, each in [0, D)."""
    fn = "softmax_cross_entropy"
    t = np.asarray(labels)
    if t.dtype.kind not in "iu":
        raise TypeError(f"{fn}: 'labels' must be integers (class indices), got dtype {t.dtype}")
    if t.ndim != 1:
        raise ValueError(f"{fn}: 'labels' must be 1-D (N,), got shape {t.shape}")
    n, d = logits.shape
    if len(t) != n:
        raise ValueError(f"{fn}: {n} rows of logits but {len(t)} labels; they must match")
    bad = (t < 0) | (t >= d)
    if bad.any():
        raise ValueError(f"{fn}: labels must be in [0, {d}) for {d} classes, found {t[bad][0]}")
    return t


def sgd_args(
    lr: object, momentum: object, nesterov: object, weight_decay: object
) -> tuple[float, float, bool, float]:
    """The checked (lr, momentum, nesterov, weight_decay) of sgd_update."""
    fn = "sgd_update"
    momentum = hyper(momentum, "momentum", fn)
    if nesterov and momentum == 0.0:
        raise ValueError(f"{fn}: nesterov=True needs momentum > 0")
    return hyper(lr, "lr", fn), momentum, bool(nesterov), hyper(weight_decay, "weight_decay", fn)


def adam_args(
    lr: object, beta1: object, beta2: object, eps: object, weight_decay: object, step: object
) -> tuple[float, float, float, float, float, int]:
    """The checked (lr, beta1, beta2, eps, weight_decay, step) of adam_update."""
    fn = "adam_update"
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, numbers.Integral):
        raise TypeError(f"{fn}: step must be an int, got {type(step).__name__}")
    if step < 1:
        raise ValueError(f"{fn}: step must be >= 1, got {step}")
    return (
        hyper(lr, "lr", fn),
        hyper(beta1, "beta1", fn, below_one=True),
        hyper(beta2, "beta2", fn, below_one=True),
        hyper(eps, "eps", fn),
        hyper(weight_decay, "weight_decay", fn),
        int(step),
    )


def batch_norm_args(momentum: object, eps: object) -> tuple[float, float]:
    """The checked (momentum, eps) of batch_norm: eps finite and > 0, momentum in [0, 1]."""
    fn = "batch_norm"
    eps = real(eps, "eps", fn)
    if not (math.isfinite(eps) and eps > 0.0):
        raise ValueError(f"{fn}: eps must be a finite number > 0, got {eps!r}")
    momentum = real(momentum, "momentum", fn)
    if not (0.0 <= momentum <= 1.0):
        raise ValueError(f"{fn}: momentum must be in [0, 1], got {momentum!r}")
    return momentum, eps


def check_output(
    out: object, dtype: np.dtype, shape: tuple[int, ...], fn: str, arg: str, whose: str
) -> np.ndarray:
    """An ``out=`` array: a writable ndarray of exactly ``dtype`` (a byte-swapped one is another
    dtype) and ``shape``, any strides; the bindings' errors otherwise (``whose`` says where the
    dtype comes from: "x's", "the indices'")."""
    name = f"{fn}: '{arg}'"
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(out)}")
    if out.dtype != dtype:
        raise TypeError(f"{name} has dtype {out.dtype}; expected {np.dtype(dtype)}, {whose} dtype")
    if out.shape != tuple(shape):
        raise ValueError(f"{name} has shape {out.shape}; expected {tuple(shape)}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    return out


def check_pool_outputs(
    out: object, dtype: np.dtype, index_dtype: type, shape: tuple[int, ...], fn: str
) -> tuple[np.ndarray, np.ndarray]:
    """max_pool2d's ``out=(y, indices)``: two arrays as :func:`check_output` wants them, sharing no
    memory."""
    if not isinstance(out, tuple) or len(out) != 2:
        got = f"a tuple of length {len(out)}" if isinstance(out, tuple) else str(type(out))
        raise TypeError(f"{fn}: 'out' must be a tuple (y, indices) of two NumPy arrays, got {got}")
    y = check_output(out[0], dtype, shape, fn, "out[0]", "x's")
    idx = check_output(out[1], np.dtype(index_dtype), shape, fn, "out[1]", "the indices'")
    if np.may_share_memory(y, idx):
        raise ValueError(f"{fn}: 'out[0]' and 'out[1]' share memory")
    return y, idx


# ------------------------------------------------------------------------------------------------
# The ops. output_shape maps the op's arguments (arrays or, for backward passes, the shapes they
# name) to the shape of each array it returns; None for the in-place updates.

ShapeFn = Callable[..., tuple[tuple[int, ...], ...]]


def _gemm_shape(
    a: np.ndarray, b: np.ndarray, c: object = None, *, trans_a: bool = False,
    trans_b: bool = False, **_: object,
) -> tuple[tuple[int, ...], ...]:  # fmt: skip
    m = a.shape[1] if trans_a else a.shape[0]
    n = b.shape[0] if trans_b else b.shape[1]
    return ((m, n),)


def _bias_backward_shape(dy: np.ndarray, *_: object, **__: object) -> tuple[tuple[int, ...], ...]:
    return dy.shape, (dy.shape[1],)


def _softmax_cross_entropy_shape(
    logits: np.ndarray, *_: object, **__: object
) -> tuple[tuple[int, ...], ...]:
    return (), logits.shape


def _matmul_shape(a: np.ndarray, b: np.ndarray, out: object = None) -> tuple[tuple[int, ...]]:
    return ((a.shape[0], b.shape[1]),)


def _conv2d_shape(
    x: np.ndarray, w: np.ndarray, b: object = None, stride: IntPair = 1, padding: IntPair = 0,
    dilation: IntPair = 1, groups: int = 1, algorithm: str = "auto", out: object = None,
) -> tuple[tuple[int, ...]]:  # fmt: skip
    return (conv2d_output_shape(x.shape, w.shape, stride, padding, dilation),)


def _conv2d_backward_data_shape(
    dy: np.ndarray, w: np.ndarray, x_shape: Shape4, *_: object, **__: object
) -> tuple[tuple[int, ...]]:
    return (tuple(x_shape),)


def _conv2d_backward_weights_shape(
    x: np.ndarray, dy: np.ndarray, w_shape: Shape4, *_: object, **__: object
) -> tuple[tuple[int, ...], ...]:
    return tuple(w_shape), (w_shape[0],)


def _max_pool2d_shape(
    x: np.ndarray, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0,
    out: object = None,
) -> tuple[tuple[int, ...], ...]:  # fmt: skip
    y = pool2d_output_shape(x.shape, kernel_size, stride, padding)
    return y, y


def _avg_pool2d_shape(
    x: np.ndarray, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0,
    count_include_pad: bool = True,
) -> tuple[tuple[int, ...]]:  # fmt: skip
    return (pool2d_output_shape(x.shape, kernel_size, stride, padding),)


def _max_pool2d_backward_shape(
    dy: np.ndarray, indices: np.ndarray, x_shape: Shape4, *_: object, **__: object
) -> tuple[tuple[int, ...]]:
    return (tuple(x_shape),)


def _avg_pool2d_backward_shape(
    dy: np.ndarray, x_shape: Shape4, *_: object, **__: object
) -> tuple[tuple[int, ...]]:
    return (tuple(x_shape),)


def _like_first(x: np.ndarray, *_: object) -> tuple[tuple[int, ...]]:
    return (x.shape,)


def _batch_norm_shape(x: np.ndarray, *_: object, **__: object) -> tuple[tuple[int, ...], ...]:
    return x.shape, (x.shape[1],), (x.shape[1],)


def _batch_norm_backward_shape(
    dy: np.ndarray, x: np.ndarray, *_: object, **__: object
) -> tuple[tuple[int, ...], ...]:
    return x.shape, (x.shape[1],), (x.shape[1],)


@dataclass(frozen=True)
class OpSpec:
    """What the Python side knows of an op beyond its signature (which ops.py and reference.py
    spell out, typed, and tests/ops/test_surfaces.py holds equal)."""

    name: str
    # The shapes of the arrays it returns, from its arguments; None: it updates in place.
    output_shape: ShapeFn | None


SPECS: dict[str, OpSpec] = {
    s.name: s
    for s in [
        OpSpec("matmul", _matmul_shape),
        OpSpec("gemm", _gemm_shape),
        OpSpec("conv2d", _conv2d_shape),
        OpSpec("conv2d_backward_data", _conv2d_backward_data_shape),
        OpSpec("conv2d_backward_weights", _conv2d_backward_weights_shape),
        OpSpec("max_pool2d", _max_pool2d_shape),
        OpSpec("max_pool2d_backward", _max_pool2d_backward_shape),
        OpSpec("avg_pool2d", _avg_pool2d_shape),
        OpSpec("avg_pool2d_backward", _avg_pool2d_backward_shape),
        OpSpec("relu", _like_first),
        OpSpec("relu_backward", _like_first),
        OpSpec("bias_backward", _bias_backward_shape),
        OpSpec("softmax_cross_entropy", _softmax_cross_entropy_shape),
        OpSpec("sgd_update", None),
        OpSpec("adam_update", None),
        OpSpec("batch_norm", _batch_norm_shape),
        OpSpec("batch_norm_backward", _batch_norm_backward_shape),
    ]
}

# The public ops, in the order of __all__ (sorted): ops.__all__ and reference.__all__ are this.
NAMES: list[str] = sorted(SPECS)
