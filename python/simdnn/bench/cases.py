"""The benchmark rows: every native kernel on a documented set of shapes, and whole training steps.

Each :class:`Case` makes its inputs, runs the native op, the strongest pure-NumPy formulation
(:mod:`simdnn.reference`, or the NumPy backend for training steps) and, when PyTorch is
importable, the PyTorch equivalent. Shape legend: GEMM M x K . K x N; convolutions x (N, C, H, W),
w (K, C/groups, R, S), y (N, K, P, Q); pooling x (N, C, H, W), window R x S.

The rows:

- GEMM: squares 256-2048; the products of training Linear(784 -> 256) on a batch of 64 (forward,
  dX = dY . W^T, dW = X^T . dY); a 128 x 4096 . 4096 x 1000 classifier; batch-1 inference
  1 x 4096 . 4096 x 4096 with B plain and transposed (GEMVs, rated in GB/s: they stream B).
- Convolution, forward, backward-data and backward-weights each: LeNet's two layers (1 -> 20 and
  20 -> 50, 5x5, batch 64), 3x3 padding 1 with 64, 128 and 256 channels (Winograd under "auto":
  F(4x4, 3x3), except forward and backward-data at 256 channels, which take F(2x2, 3x3); and
  again forced "direct"), a stride-2 3x3
  down-sampling, a 1x1 and a depthwise 3x3.
- Pooling: max and average, 2x2/s2 and 3x3/s2 padding 1, forward and backward, on 64x64x32x32.
- Training steps (forward + backward + SGD update) on synthetic MNIST-shaped batches of 64: an
  MLP 784-256-256-10 and a LeNet-style ConvNet (1 -> 20 5x5, pool, 20 -> 50 5x5, pool,
  800 -> 500 -> 10); native kernels against the NumPy backend on the same model and weights.
- Batch-1 inference with a model: ``predict`` of one sample through an MLP 4096-4096-4096-1000
  (150 MB of float32 weights, so rated in GB/s of weights streamed), against the NumPy backend.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .. import nn, ops, optim, reference
from .._opspec import conv_out_size
from ..backend import use_backend
from ..training import predict

Args = tuple[Any, ...]


@dataclasses.dataclass
class Case:
    """One benchmark row."""

    group: str  # the op, e.g. "conv2d_backward_data"
    name: str  # the shapes
    flops: float  # floating-point operations of one call; 0 for memory-bound rows
    nbytes: float  # bytes read + written by one call, for float32
    make: Callable[[np.random.Generator, np.dtype], Args]
    native: Callable[..., Any]
    numpy: Callable[..., Any]
    # args -> (callable, torch args), when PyTorch is importable; None when it has no equivalent.
    torch: Callable[[Args], tuple[Callable[..., Any], Args]] | None = None
    rtol: float = 1e-4
    # Copies of the inputs to rotate between calls (None: enough to exceed the caches).
    copies: int | None = None
    # How many leading outputs to compare with PyTorch's (max-pool indices are numbered
    # differently there: flat plane positions instead of window positions).
    torch_outputs: int | None = None

    @property
    def label(self) -> str:
        return f"{self.group} {self.name}"


def _torch() -> Any:
    import torch

    return torch


def _t(a: Any) -> Any:
    """A NumPy array as a torch tensor sharing its memory (other values unchanged)."""
    if isinstance(a, np.ndarray):
        return _torch().from_numpy(np.ascontiguousarray(a))
    return a


# ------------------------------------------------------------------------------------------------
# GEMM


def _gemm_case(
    name: str,
    m: int,
    k: int,
    n: int,
    trans_a: bool = False,
    trans_b: bool = False,
    streaming: bool = False,
) -> Case:
    """streaming: a product that reads B once (one row of A), rated in GB/s of its operands
    against the streaming limit, on two copies of B (each larger than L3)."""

    def make(rng: np.random.Generator, dtype: np.dtype) -> Args:
        a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
        b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
        return (a, b)

    def native(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return ops.gemm(a, b, trans_a=trans_a, trans_b=trans_b)

    # The strongest NumPy formulation: one BLAS call on transposed views (no copies).
    def numpy_fn(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.matmul(a.T if trans_a else a, b.T if trans_b else b)

    def torch_fn(args: Args) -> tuple[Callable[..., Any], Args]:
        torch = _torch()
        a, b = (_t(x) for x in args)
        return (lambda a_, b_: torch.matmul(a_.T if trans_a else a_, b_.T if trans_b else b_)), (
            a,
            b,
        )

    return Case(
        "gemm",
        name,
        0.0 if streaming else 2.0 * m * n * k,
        4.0 * (m * k + k * n + m * n),
        make,
        native,
        numpy_fn,
        torch_fn,
        copies=2 if streaming else None,
    )


def gemm_cases() -> list[Case]:
    cases = [_gemm_case(f"{s}x{s}x{s}", s, s, s) for s in (256, 512, 1024, 2048)]
    cases += [
        _gemm_case("mlp fwd 64x784 . 784x256", 64, 784, 256),
        _gemm_case("mlp dX 64x256 . (784x256)^T", 64, 256, 784, trans_b=True),
        _gemm_case("mlp dW (64x784)^T . 64x256", 784, 64, 256, trans_a=True),
        _gemm_case("wide 128x4096 . 4096x1000", 128, 4096, 1000),
        # Batch-1 inference (the GEMV path, gemv.h): X . W and X . W^T, 64 MB of B per call.
        _gemm_case("gemv 1x4096 . 4096x4096", 1, 4096, 4096, streaming=True),
        _gemm_case("gemv 1x4096 . (4096x4096)^T", 1, 4096, 4096, trans_b=True, streaming=True),
    ]
    return cases


# ------------------------------------------------------------------------------------------------
# Convolution


@dataclasses.dataclass(frozen=True)
class ConvShape:
    """One convolution layer: x (N, C, H, W), w (K, C/groups, R, R)."""

    name: str
    n: int
    c: int
    h: int
    w: int
    k: int
    r: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    algorithm: str = "auto"  # simdnn's only; "direct" rows show what Winograd replaced

    def kwargs(self) -> dict[str, int]:
        return {"stride": self.stride, "padding": self.padding, "groups": self.groups}

    @property
    def out(self) -> tuple[int, int]:
        p = conv_out_size(self.h, self.r, self.stride, self.padding)
        q = conv_out_size(self.w, self.r, self.stride, self.padding)
        return p, q

    @property
    def flops(self) -> float:
        p, q = self.out
        return 2.0 * self.n * self.k * (self.c // self.groups) * self.r * self.r * p * q


CONV_SHAPES = [
    ConvShape("lenet1 1->20 5x5 28x28 N64", 64, 1, 28, 28, 20, 5),
    ConvShape("lenet2 20->50 5x5 12x12 N64", 64, 20, 12, 12, 50, 5),
    ConvShape("3x3 64->64 32x32 N32", 32, 64, 32, 32, 64, 3, padding=1),
    ConvShape("3x3 128->128 28x28 N16", 16, 128, 28, 28, 128, 3, padding=1),
    ConvShape("3x3 256->256 14x14 N16", 16, 256, 14, 14, 256, 3, padding=1),
    # The same three with Winograd off: the rows above run it (auto), rated in direct FLOPs.
    ConvShape("3x3 64->64 32x32 N32 direct", 32, 64, 32, 32, 64, 3, padding=1, algorithm="direct"),
    ConvShape(
        "3x3 128->128 28x28 N16 direct", 16, 128, 28, 28, 128, 3, padding=1, algorithm="direct"
    ),
    ConvShape(
        "3x3 256->256 14x14 N16 direct", 16, 256, 14, 14, 256, 3, padding=1, algorithm="direct"
    ),
    ConvShape("3x3/s2 64->128 32x32 N16", 16, 64, 32, 32, 128, 3, stride=2, padding=1),
    ConvShape("1x1 128->128 28x28 N16", 16, 128, 28, 28, 128, 1),
    ConvShape("dw3x3 128 28x28 N16", 16, 128, 28, 28, 128, 3, padding=1, groups=128),
]


def _conv_cases(shape: ConvShape) -> list[Case]:
    p, q = shape.out
    x_shape = (shape.n, shape.c, shape.h, shape.w)
    w_shape = (shape.k, shape.c // shape.groups, shape.r, shape.r)
    y_shape = (shape.n, shape.k, p, q)
    kw = shape.kwargs()
    alg = shape.algorithm
    sizes = [int(np.prod(s)) for s in (x_shape, w_shape, y_shape)]
    nbytes = 4.0 * sum(sizes)

    def make_fwd(rng: np.random.Generator, dtype: np.dtype) -> Args:
        return (
            rng.standard_normal(x_shape).astype(dtype),
            rng.standard_normal(w_shape).astype(dtype),
            rng.standard_normal(shape.k).astype(dtype),
        )

    def make_bwd_data(rng: np.random.Generator, dtype: np.dtype) -> Args:
        return (
            rng.standard_normal(y_shape).astype(dtype),
            rng.standard_normal(w_shape).astype(dtype),
        )

    def make_bwd_weights(rng: np.random.Generator, dtype: np.dtype) -> Args:
        return (
            rng.standard_normal(x_shape).astype(dtype),
            rng.standard_normal(y_shape).astype(dtype),
        )

    def torch_fwd(args: Args) -> tuple[Callable[..., Any], Args]:
        f = _torch().nn.functional
        return (lambda x, w, b: f.conv2d(x, w, b, **kw)), tuple(_t(a) for a in args)

    def torch_bwd_data(args: Args) -> tuple[Callable[..., Any], Args]:
        grad = _torch().nn.grad
        return (lambda dy, w: grad.conv2d_input(x_shape, w, dy, **kw)), tuple(_t(a) for a in args)

    def torch_bwd_weights(args: Args) -> tuple[Callable[..., Any], Args]:
        grad = _torch().nn.grad

        def fn(x: Any, dy: Any) -> tuple[Any, Any]:
            return grad.conv2d_weight(x, w_shape, dy, **kw), dy.sum((0, 2, 3))

        return fn, tuple(_t(a) for a in args)

    return [
        Case(
            "conv2d",
            shape.name,
            shape.flops,
            nbytes,
            make_fwd,
            lambda x, w, b: ops.conv2d(x, w, b, **kw, algorithm=alg),
            lambda x, w, b: reference.conv2d(x, w, b, **kw),
            torch_fwd,
        ),
        Case(
            "conv2d_backward_data",
            shape.name,
            shape.flops,
            nbytes,
            make_bwd_data,
            lambda dy, w: ops.conv2d_backward_data(dy, w, x_shape, **kw, algorithm=alg),
            lambda dy, w: reference.conv2d_backward_data(dy, w, x_shape, **kw),
            torch_bwd_data,
        ),
        Case(
            "conv2d_backward_weights",
            shape.name,
            shape.flops,
            nbytes,
            make_bwd_weights,
            lambda x, dy: ops.conv2d_backward_weights(x, dy, w_shape, **kw, algorithm=alg),
            lambda x, dy: reference.conv2d_backward_weights(x, dy, w_shape, **kw),
            torch_bwd_weights,
        ),
    ]


def conv_cases() -> list[Case]:
    return [case for shape in CONV_SHAPES for case in _conv_cases(shape)]


# ------------------------------------------------------------------------------------------------
# Pooling


def _pool_case(
    op: str, backward: bool, k: int, stride: int, padding: int, shape: tuple[int, ...]
) -> Case:
    """One pooling row: op "max" or "avg", a k x k window, float32 byte counts.

    Float64 rows scale every byte by 2, the uint8 indices included, which overstates their rate
    by about 2%.
    """
    n, c, h, w = shape
    p = conv_out_size(h, k, stride, padding)
    q = conv_out_size(w, k, stride, padding)
    x_elems, y_elems = n * c * h * w, n * c * p * q
    idx_bytes = y_elems * (1 if k * k <= 256 else 4)
    window = f"{k}x{k}/s{stride}" + (f" p{padding}" if padding else "")
    name = f"{window} {'x'.join(map(str, shape))}"

    def torch_pool_fwd(args: Args) -> tuple[Callable[..., Any], Args]:
        f = _torch().nn.functional
        x = _t(args[0])
        if op == "max":
            return (lambda t: f.max_pool2d(t, k, stride, padding, return_indices=True)), (x,)
        return (lambda t: f.avg_pool2d(t, k, stride, padding)), (x,)

    if not backward:

        def make(rng: np.random.Generator, dtype: np.dtype) -> Args:
            return (rng.standard_normal(shape).astype(dtype), k, stride, padding)

        native = ops.max_pool2d if op == "max" else ops.avg_pool2d
        twin = reference.max_pool2d if op == "max" else reference.avg_pool2d
        # Read x, write y (and the indices).
        nbytes = 4.0 * (x_elems + y_elems) + (idx_bytes if op == "max" else 0)
        return Case(
            f"{op}_pool2d",
            name,
            0,
            nbytes,
            make,
            native,
            twin,
            torch_pool_fwd,
            torch_outputs=1 if op == "max" else None,
        )

    if op == "max":

        def make_max(rng: np.random.Generator, dtype: np.dtype) -> Args:
            x = rng.standard_normal(shape).astype(dtype)
            _, idx = ops.max_pool2d(x, k, stride, padding)
            dy = rng.standard_normal(idx.shape).astype(dtype)
            return (dy, idx, shape, k, stride, padding, x)

        def torch_max_bwd(args: Args) -> tuple[Callable[..., Any], Args]:
            torch = _torch()
            dy, x = _t(args[0]), _t(args[6])
            _, t_idx = torch.nn.functional.max_pool2d(x, k, stride, padding, return_indices=True)
            back = torch.ops.aten.max_pool2d_with_indices_backward

            def fn(g: Any, xt: Any, it: Any) -> Any:
                return back(g, xt, [k, k], [stride, stride], [padding, padding], [1, 1], False, it)

            return fn, (dy, x, t_idx)

        # Read dy and the indices, write dx.
        return Case(
            "max_pool2d_backward",
            name,
            0,
            4.0 * (y_elems + x_elems) + idx_bytes,
            make_max,
            lambda dy, idx, xs, kk, st, pd, _x: ops.max_pool2d_backward(dy, idx, xs, kk, st, pd),
            lambda dy, idx, xs, kk, st, pd, _x: reference.max_pool2d_backward(
                dy, idx, xs, kk, st, pd
            ),
            torch_max_bwd,
        )

    def make_avg(rng: np.random.Generator, dtype: np.dtype) -> Args:
        dy = rng.standard_normal((n, c, p, q)).astype(dtype)
        return (dy, shape, k, stride, padding, np.zeros(shape, dtype))

    def torch_avg_bwd(args: Args) -> tuple[Callable[..., Any], Args]:
        back = _torch().ops.aten.avg_pool2d_backward
        dy, x = _t(args[0]), _t(args[5])

        def fn(g: Any, xt: Any) -> Any:
            return back(g, xt, [k, k], [stride, stride], [padding, padding], False, True, None)

        return fn, (dy, x)

    return Case(
        "avg_pool2d_backward",
        name,
        0,
        4.0 * (y_elems + x_elems),
        make_avg,
        lambda dy, xs, kk, st, pd, _x: ops.avg_pool2d_backward(dy, xs, kk, st, pd),
        lambda dy, xs, kk, st, pd, _x: reference.avg_pool2d_backward(dy, xs, kk, st, pd),
        torch_avg_bwd,
    )


def pool_cases() -> list[Case]:
    """Max and average pooling of a ConvNet's feature maps (batch 64, 64 channels, 32 x 32), forward
    and backward: the 2x2/s2 and 3x3/s2 padding 1 windows, and 3x3/s3, the stride PyTorch's
    ``MaxPool2d(3)`` defaults to (its windows tile the map without overlap, and a column stride of
    3 takes other kernel paths than 1 and 2). Memory-bound: rated in GB/s of x, y (and indices)
    moved."""
    shape = (64, 64, 32, 32)
    return [
        _pool_case(op, backward, k, stride, padding, shape)
        for op in ("max", "avg")
        for backward in (False, True)
        for k, stride, padding in ((2, 2, 0), (3, 2, 1), (3, 3, 0))
    ]


# ------------------------------------------------------------------------------------------------
# Whole training steps


def build_mlp(dtype: np.dtype, seed: int = 0) -> nn.Sequential:
    """784 -> 256 -> 256 -> 10 with ReLU units."""
    rng = np.random.default_rng(seed)
    return nn.Sequential(
        nn.Linear(784, 256, rng=rng),
        nn.ReLU(),
        nn.Linear(256, 256, rng=rng),
        nn.ReLU(),
        nn.Linear(256, 10, rng=rng),
    ).astype(dtype)


def build_lenet(dtype: np.dtype, seed: int = 0) -> nn.Sequential:
    """LeNet-style: 1 -> 20 5x5, pool 2, 20 -> 50 5x5, pool 2, 800 -> 500 -> 10, ReLU units."""
    rng = np.random.default_rng(seed)
    return nn.Sequential(
        nn.Conv2d(1, 20, 5, rng=rng),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5, rng=rng),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(800, 500, rng=rng),
        nn.ReLU(),
        nn.Linear(500, 10, rng=rng),
    ).astype(dtype)


def model_flops(model: nn.Sequential, input_shape: tuple[int, ...]) -> float:
    """FLOPs of one training step's products: forward, weight gradients, and input gradients of
    every trainable layer but the first (which fit does not compute)."""
    shape = input_shape
    total = 0.0
    first = True
    for layer in model:
        out = layer.output_shape(shape)
        if isinstance(layer, nn.Linear):
            fwd = 2.0 * shape[0] * layer.in_features * layer.out_features
        elif isinstance(layer, nn.Conv2d):
            r, s = layer.kernel_size
            fwd = 2.0 * np.prod(out) * (layer.in_channels // layer.groups) * r * s
        else:
            fwd = 0.0
        if fwd:
            total += fwd * (2 if first else 3)
            first = False
        shape = out
    return float(total)


class TrainStep:
    """One SGD step (momentum 0.9) of a model on a batch, on one backend."""

    def __init__(self, model: nn.Sequential, backend: str) -> None:
        self.model = model
        self.backend = backend
        self.loss = nn.CrossEntropyLoss()
        self.opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def __call__(self, x: np.ndarray, y: np.ndarray) -> float:
        with use_backend(self.backend):
            self.opt.zero_grad()
            value = self.loss(self.model(x), y)
            value.backward()
            self.opt.step()
        return float(value)


def _torch_model(model: nn.Sequential) -> Any:
    """The same architecture and weights in PyTorch (Linear weights transposed to its layout)."""
    torch = _torch()
    layers: list[Any] = []
    for layer in model:
        if isinstance(layer, nn.Linear):
            t = torch.nn.Linear(layer.in_features, layer.out_features)
            t.weight.data = torch.from_numpy(layer.weight.data.T.copy())
            t.bias.data = torch.from_numpy(layer.bias.data.copy())
        elif isinstance(layer, nn.Conv2d):
            t = torch.nn.Conv2d(
                layer.in_channels,
                layer.out_channels,
                layer.kernel_size,
                stride=layer.stride,
                padding=layer.padding,
                dilation=layer.dilation,
                groups=layer.groups,
            )
            t.weight.data = torch.from_numpy(layer.weight.data.copy())
            t.bias.data = torch.from_numpy(layer.bias.data.copy())
        elif isinstance(layer, nn.ReLU):
            t = torch.nn.ReLU()
        elif isinstance(layer, nn.MaxPool2d):
            t = torch.nn.MaxPool2d(layer.kernel_size)
        elif isinstance(layer, nn.Flatten):
            t = torch.nn.Flatten()
        else:
            raise TypeError(f"no PyTorch equivalent for {layer!r}")
        layers.append(t)
    return torch.nn.Sequential(*layers)


def _train_case(name: str, build: Callable[..., nn.Sequential], x_shape: Sequence[int]) -> Case:
    batches = 4

    def make(rng: np.random.Generator, dtype: np.dtype) -> Args:
        xs = [rng.standard_normal(tuple(x_shape)).astype(dtype) for _ in range(batches)]
        ys = [rng.integers(0, 10, x_shape[0]) for _ in range(batches)]
        return (xs, ys, build(dtype), build(dtype))

    counter = {"native": 0, "numpy": 0, "torch": 0}

    def runner(which: str) -> Callable[..., float]:
        steps: dict[int, TrainStep] = {}

        def fn(xs: list[np.ndarray], ys: list[np.ndarray], m_native: Any, m_numpy: Any) -> float:
            model = m_native if which == "native" else m_numpy
            step = steps.setdefault(id(model), TrainStep(model, which))
            i = counter[which] = (counter[which] + 1) % batches
            return step(xs[i], ys[i])

        return fn

    def torch_fn(args: Args) -> tuple[Callable[..., Any], Args]:
        torch = _torch()
        xs, ys, model, _ = args
        tm = _torch_model(model)
        opt = torch.optim.SGD(tm.parameters(), lr=0.01, momentum=0.9)
        loss_fn = torch.nn.CrossEntropyLoss()
        txs = [_t(x) for x in xs]
        tys = [torch.from_numpy(y) for y in ys]

        def step(txs_: Any, tys_: Any) -> float:
            i = counter["torch"] = (counter["torch"] + 1) % batches
            opt.zero_grad()
            value = loss_fn(tm(txs_[i]), tys_[i])
            value.backward()
            opt.step()
            return float(value.detach())

        return step, (txs, tys)

    flops = model_flops(build(np.dtype(np.float32)), tuple(x_shape))
    return Case(
        "train_step",
        name,
        flops,
        0.0,
        make,
        runner("native"),
        runner("numpy"),
        torch_fn,
        rtol=1e-3,
        copies=1,
    )


def train_cases() -> list[Case]:
    """SGD steps of an MLP and of a LeNet-style ConvNet on MNIST-shaped batches of 64."""
    return [
        _train_case("mlp 784-256-256-10 batch 64", build_mlp, (64, 784)),
        _train_case("lenet 1x28x28 batch 64", build_lenet, (64, 1, 28, 28)),
    ]


WIDE_MLP = (4096, 4096, 4096, 1000)


def build_wide_mlp(dtype: np.dtype, seed: int = 0, dims: Sequence[int] = WIDE_MLP) -> nn.Sequential:
    """An MLP of `dims` (default 4096 -> 4096 -> 4096 -> 1000) with ReLU units between its
    Linear layers: weights far larger than the caches."""
    rng = np.random.default_rng(seed)
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(d_in, d_out, rng=rng))
    return nn.Sequential(*layers).astype(dtype)


def _predict_case(name: str, dims: Sequence[int], batch: int) -> Case:
    """``predict`` of the MLP `dims` (build_wide_mlp) on `batch` rows; rated by the bytes of the
    parameters, which it streams once."""

    def build(dtype: np.dtype) -> nn.Sequential:
        return build_wide_mlp(dtype, dims=dims)

    x_shape = (batch, dims[0])

    def make(rng: np.random.Generator, dtype: np.dtype) -> Args:
        return (rng.standard_normal(tuple(x_shape)).astype(dtype), build(dtype))

    def runner(backend: str) -> Callable[..., np.ndarray]:
        def fn(x: np.ndarray, model: nn.Sequential) -> np.ndarray:
            with use_backend(backend):
                return predict(model, x)

        return fn

    def torch_fn(args: Args) -> tuple[Callable[..., Any], Args]:
        torch = _torch()
        x, model = args
        tm = _torch_model(model).eval()

        def run(tx: Any) -> Any:
            with torch.inference_mode():
                return tm(tx)

        return run, (_t(x),)

    params = sum((d_in + 1) * d_out for d_in, d_out in zip(dims[:-1], dims[1:]))
    return Case(
        "predict",
        name,
        0.0,
        4.0 * params,
        make,
        runner("native"),
        runner("numpy"),
        torch_fn,
        copies=1,
    )


def predict_cases() -> list[Case]:
    """Batch-1 inference through a model whose weights do not fit in the caches."""
    return [_predict_case("mlp 4096-4096-4096-1000 1 sample", WIDE_MLP, 1)]


def all_cases() -> list[Case]:
    return gemm_cases() + conv_cases() + pool_cases() + train_cases() + predict_cases()
