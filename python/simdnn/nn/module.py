"""Module, Parameter and the containers: the building blocks of every model.

A module defines ``forward`` only. Its parameters are leaf tensors (:class:`Parameter`) and every
op that forward calls records itself on the tape (:mod:`simdnn.autograd`), so ``loss.backward()``
reaches every parameter through any graph: a layer applied twice, a residual connection,
branches, tied weights. The tape, not the layer, remembers the inputs.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from ..autograd import Tensor, no_grad

Shape = tuple[int, ...]

# The built-in layers by class name: what simdnn.load rebuilds architectures from. Only classes
# defined inside simdnn are entered, so a user class named like a built-in (Flatten, ReLU) can
# never replace one.
LAYER_REGISTRY: dict[str, type[Module]] = {}


class _Meta(threading.local):
    active = False


_meta = _Meta()


@contextlib.contextmanager
def meta_build() -> Iterator[None]:
    """Build modules without their memory (in this thread): every parameter and buffer is a
    read-only zero-stride view of one element, so constructors validate their arguments and
    declare their shapes and dtypes for nothing. simdnn.load checks a file against the
    architecture it declares this way before allocating anything."""
    prev = _meta.active
    _meta.active = True
    try:
        yield
    finally:
        _meta.active = prev


def is_meta() -> bool:
    return _meta.active


def meta_array(shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
    return np.broadcast_to(np.zeros((), dtype), shape)


class Parameter(Tensor):
    """A trainable array: a leaf tensor that requires a gradient, with its ``.grad`` buffer
    allocated up front (zeros) so that kernels can write gradients straight into it.

    ``zero_grad()`` only marks the gradient as zero; the next backward pass then writes it
    instead of adding to it (no fill, and no read of the old values), and reading ``.grad``
    before that gives zeros.
    """

    __slots__ = ()

    def __init__(self, data: Any) -> None:
        arr = np.asarray(data.data if isinstance(data, Tensor) else data)
        if arr.dtype not in (np.float32, np.float64):
            raise TypeError(f"Parameter: expected float32 or float64 data, got {arr.dtype}")
        super().__init__(arr, requires_grad=True)
        self._grad = arr if _meta.active else np.zeros_like(arr)

    @property
    def grad(self) -> np.ndarray:
        g = Tensor.grad.fget(self)  # type: ignore[attr-defined]
        if g is None:  # dropped by the user (p.grad = None): zeros again
            g = self._grad = np.zeros_like(self.data)
        return g

    @grad.setter
    def grad(self, value: np.ndarray | None) -> None:
        Tensor.grad.fset(self, value)  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class _Trace(threading.local):
    calls: list[tuple[Module, Shape, Shape]] | None = None


_trace = _Trace()


class _Inference(threading.local):
    depth = 0


_inference = _Inference()


class inference_mode:
    """Run every module as in evaluation mode (dropout off, BatchNorm on its running
    statistics) and record no tape, in this thread only: the modules' own ``training`` flags are
    not touched, so several threads can predict with one model while another trains it.
    :func:`simdnn.predict` and :func:`simdnn.evaluate` use it."""

    def __enter__(self) -> None:
        self._grad = no_grad()
        self._grad.__enter__()
        _inference.depth += 1

    def __exit__(self, *exc: object) -> None:
        _inference.depth -= 1
        self._grad.__exit__(None, None, None)


def _shape_of(v: Any) -> Shape:
    return tuple(np.shape(v.data if isinstance(v, Tensor) else v))


def check_count_range(value: np.ndarray, dtype: np.dtype, what: str) -> None:
    """An integer buffer (BatchNorm's batch count) must survive the cast to its dtype: uint64
    2**64 - 1 would wrap to -1 in int64, and a count is never negative. `what` starts the
    ValueError's message (the caller and the entry)."""
    if dtype.kind not in "iu" or value.size == 0:
        return
    lo, hi = int(value.min()), int(value.max())
    top = int(np.iinfo(dtype).max)
    if lo < 0 or hi > top:
        raise ValueError(f"{what} holds {lo if lo < 0 else hi}, outside [0, {top}]")


class Module:
    """Base class of layers and models.

    Subclasses call ``super().__init__()``, assign parameters, buffers and sub-modules as
    attributes, and implement ``forward(*inputs)``; calling the module runs forward. There is no
    backward to write: gradients come from the tape.
    """

    @property
    def training(self) -> bool:
        """Training mode (dropout active, BatchNorm on batch statistics); False inside
        :class:`inference_mode` in this thread, whatever the flag set by train()/eval()."""
        return self._training and not _inference.depth

    # Layers that act on (N, C, H, W) planes describe their window for summary()'s receptive
    # field: (kernel extent, stride) per spatial axis.
    spatial: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__module__.startswith("simdnn.") and not cls.__name__.startswith("_"):
            LAYER_REGISTRY.setdefault(cls.__name__, cls)

    def __init__(self) -> None:
        object.__setattr__(self, "_params", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_training", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if "_params" not in self.__dict__:
            raise AttributeError(
                f"{type(self).__name__}: call super().__init__() before assigning attributes"
            )
        self._params.pop(name, None)
        self._modules.pop(name, None)
        if name in self._buffers:
            if value is not None and not isinstance(value, np.ndarray):
                raise TypeError(f"{type(self).__name__}: buffer {name!r} must be a NumPy array")
            self._buffers[name] = value
        elif isinstance(value, Parameter):
            self._params[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        self._params.pop(name, None)
        self._modules.pop(name, None)
        self._buffers.pop(name, None)
        object.__delattr__(self, name)

    def register_buffer(self, name: str, value: np.ndarray | None) -> None:
        """State that is not trained but saved with the model (BatchNorm's running statistics)."""
        if value is not None and not isinstance(value, np.ndarray):
            raise TypeError(f"register_buffer: {name!r} must be a NumPy array or None")
        self._buffers[name] = value
        object.__setattr__(self, name, value)

    # -- computation -------------------------------------------------------------------------

    def forward(self, *inputs: Any) -> Any:
        raise TypeError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *inputs: Any, **kwargs: Any) -> Any:
        out = self.forward(*inputs, **kwargs)
        calls = _trace.calls
        # summary() rows: the leaves, and modules holding parameters of their own beside their
        # children (a scale, a bias added in forward), whose row comes after their children's.
        if calls is not None and (not self._modules or self._params):
            calls.append((self, _shape_of(inputs[0]) if inputs else (), _shape_of(out)))
        return out

    def backward(self, *args: Any, **kwargs: Any) -> None:
        """Removed: the tape computes the gradients; this says so instead of an AttributeError
        (code written for the old per-layer API calls it)."""
        raise TypeError(
            "Module.backward was removed: gradients come from the tape; call loss.backward() "
            f"on the loss computed from the {type(self).__name__}'s output"
        )

    # -- structure ---------------------------------------------------------------------------

    def children(self) -> Iterator[Module]:
        yield from self._modules.values()

    def named_children(self) -> Iterator[tuple[str, Module]]:
        yield from self._modules.items()

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """Every module of the tree once (a module used twice under its first name), parents
        before children."""
        seen: set[int] = set()
        stack = [(prefix, self)]
        while stack:
            name, mod = stack.pop()
            if id(mod) in seen:
                continue
            seen.add(id(mod))
            yield name, mod
            kids = [(f"{name}.{k}" if name else k, m) for k, m in mod._modules.items()]
            stack.extend(reversed(kids))

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """Every parameter once: a tied parameter (one Parameter held by two layers) under the
        first name it is found by."""
        seen: set[int] = set()
        for mod_name, mod in self.named_modules(prefix):
            for name, p in mod._params.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def named_buffers(self) -> Iterator[tuple[str, np.ndarray]]:
        for mod_name, mod in self.named_modules():
            for name, b in mod._buffers.items():
                if b is not None:
                    yield (f"{mod_name}.{name}" if mod_name else name), b

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.zero_grad()

    def train(self, mode: bool = True) -> Module:
        for _, mod in self.named_modules():
            object.__setattr__(mod, "_training", bool(mode))
        return self

    def eval(self) -> Module:
        return self.train(False)

    def num_parameters(self) -> int:
        return sum(p.data.size for p in self.parameters())

    # -- state -------------------------------------------------------------------------------

    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """Copies of every parameter and buffer, by dotted name (``"0.weight"``,
        ``"1.running_mean"``, ...); a tied parameter appears once."""
        out: OrderedDict[str, np.ndarray] = OrderedDict(
            (name, p.data.copy()) for name, p in self.named_parameters()
        )
        for name, b in self.named_buffers():
            out[name] = b.copy()
        return out

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        """Copy arrays into the parameters and buffers of the same names (and shapes).

        Everything is checked before anything is written, so a bad entry leaves the model as it
        was. strict: every entry must be given and nothing else (ValueError naming the
        differences); otherwise missing and unexpected names are skipped.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"load_state_dict: expected a mapping, got {type(state).__name__}")
        targets: dict[str, tuple[Any, str, np.ndarray]] = {}
        for name, p in self.named_parameters():
            targets[name] = (p, "param", p.data)
        for mod_name, mod in self.named_modules():
            for bname, b in mod._buffers.items():
                if b is not None:
                    key = f"{mod_name}.{bname}" if mod_name else bname
                    targets[key] = (mod, bname, b)
        missing = [k for k in targets if k not in state]
        unexpected = [k for k in state if k not in targets]
        if strict and (missing or unexpected):
            raise ValueError(f"load_state_dict: missing entries {missing}, unexpected {unexpected}")
        plan = []
        for name, (_, _, current) in targets.items():
            if name not in state:
                continue
            raw = state[name]
            value = raw.data if isinstance(raw, Tensor) else raw
            value = np.asarray(value)
            float_into_int = current.dtype.kind in "iu" and value.dtype.kind == "f"
            if value.dtype.kind not in "fiu" or float_into_int:
                raise TypeError(
                    f"load_state_dict: {name!r} has dtype {value.dtype}, expected real numbers "
                    f"for {current.dtype}"
                )
            if value.shape != current.shape:
                raise ValueError(
                    f"load_state_dict: {name!r} has shape {value.shape}, expected {current.shape}"
                )
            check_count_range(value, current.dtype, f"load_state_dict: {name!r}")
            plan.append((current, value))
        for current, value in plan:
            current[...] = value

    def astype(self, dtype: npt.DTypeLike) -> Module:
        """Convert every parameter (and its gradient) and floating buffer to float32 or
        float64, in place."""
        dt = np.dtype(dtype)
        if dt not in (np.float32, np.float64):
            raise TypeError(f"astype: expected float32 or float64, got {dt}")

        def convert(a: np.ndarray) -> np.ndarray:
            return meta_array(a.shape, dt) if _meta.active else a.astype(dt)

        for p in self.parameters():
            if p.data.dtype != dt:
                p.data = convert(p.data)
                p._grad = p.data if _meta.active else np.zeros_like(p.data)
                p._grad_stale = p._grad_pinned = False
        for _, mod in self.named_modules():
            for name, b in list(mod._buffers.items()):
                if b is not None and b.dtype.kind == "f" and b.dtype != dt:
                    setattr(mod, name, convert(b))
        return self

    @property
    def dtype(self) -> np.dtype:
        params = self.parameters()
        return params[0].dtype if params else np.dtype(np.float32)

    # -- description -------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this layer (used by simdnn.save)."""
        return {}

    def output_shape(self, input_shape: Shape) -> Shape:
        """Output shape for a given input shape (N first), without computing anything."""
        return input_shape

    def window(self) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """((kernel extent h, w), (stride h, w)) for layers that slide a window, else None."""
        return None

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items())

    def __repr__(self) -> str:
        if not self._modules:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"{type(self).__name__}("]
        for name, child in self._modules.items():
            lines.append("  " + f"({name}): {child!r}".replace("\n", "\n  "))
        lines.append(")")
        return "\n".join(lines)

    def summary(self, input_shape: Shape, print_fn: Any = print) -> str:
        """A table of the layers as forward runs them (one row per call, so a layer applied
        twice has two rows): output shape, parameters, receptive field, and what a dense layer
        with the same input and output sizes would cost (what weight sharing saves). A module
        with parameters of its own beside its children gets an "(own)" row for them after its
        children's, so that the total is num_parameters() (of what forward uses).

        input_shape is one example's shape without the batch axis, e.g. (1, 28, 28) or (784,).
        It runs forward once on zeros, in evaluation mode, without recording a tape.
        """
        names = {id(m): n for n, m in self.named_modules()}
        calls: list[tuple[Module, Shape, Shape]] = []
        _trace.calls = calls
        try:
            with inference_mode():
                self(np.zeros((1, *tuple(input_shape)), self.dtype))
        finally:
            _trace.calls = None
        rows = []
        rf = (1, 1)
        jump = (1, 1)
        total = 0
        dense_total = 0
        counted: set[int] = set()
        for layer, shape, out in calls:
            params = sum(p.data.size for p in layer._params.values() if id(p) not in counted)
            counted.update(id(p) for p in layer._params.values())
            # A container's own parameters: not a layer, so no window; dense layers in place of
            # its children would still need them, so they are their own dense equivalent.
            own = bool(layer._modules)
            win = None if own else layer.window()
            if win is not None:
                (kh, kw), (sh, sw) = win
                rf = (rf[0] + (kh - 1) * jump[0], rf[1] + (kw - 1) * jump[1])
                jump = (jump[0] * sh, jump[1] * sw)
            dense = 0
            if own:
                dense = params
            elif layer._params:
                n_in, n_out = math.prod(shape[1:]), math.prod(out[1:])
                dense = n_in * n_out + n_out
            total += params
            dense_total += dense
            label = f"{names.get(id(layer), '?')} {type(layer).__name__}"
            rows.append(
                (
                    f"{label.lstrip()} (own)" if own else label,
                    str(out[1:]),
                    f"{params:,}",
                    f"{rf[0]}x{rf[1]}" if len(out) == 4 else "-",
                    f"{dense:,}" if layer._params else "-",
                )
            )
        header = ("layer", "output shape", "parameters", "receptive field", "dense equivalent")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
        fmt = "  ".join(f"{{:{'<' if i < 2 else '>'}{w}}}" for i, w in enumerate(widths))
        lines = [fmt.format(*header), "-" * (sum(widths) + 8)]
        lines += [fmt.format(*r) for r in rows]
        lines.append("-" * (sum(widths) + 8))
        saved = f" ({dense_total / total:.1f}x fewer)" if total else ""
        lines.append(
            f"total parameters: {total:,}; dense layers of the same shapes would need "
            f"{dense_total:,}{saved}"
        )
        text = "\n".join(lines)
        if print_fn is not None:
            print_fn(text)
        return text


def _check_module(value: Any, where: str) -> Module:
    if not isinstance(value, Module):
        raise TypeError(f"{where} is {type(value).__name__}, not a Module")
    return value


class Sequential(Module):
    """Layers applied one after the other.

    A :class:`ReLU` directly followed by a :class:`MaxPool2d` runs as the pooling followed by the
    ReLU: max commutes with the monotone ReLU, so the output and every gradient are the same
    (values, NaN and infinities; only the sign of a zero output may differ), and the ReLU and its
    backward pass touch the pooled tensor, a quarter of the elements for 2x2 windows, instead of
    the full one. A :class:`Linear` directly followed by a :class:`ReLU` runs as one op
    (``functional.linear(..., activation="relu")``): the bias and the ReLU are the GEMM's epilogue
    and their backward passes one pass over the gradient, with the same results up to rounding
    (the bias is added after the product, not before). summary() and direct calls of the layers
    see the layers as written.

    Shape:
        - Input: whatever the first layer takes.
        - Output: whatever the last layer gives.
    """

    def __init__(self, *layers: Module) -> None:
        super().__init__()
        for i, layer in enumerate(layers):
            setattr(self, str(i), _check_module(layer, f"Sequential: argument {i}"))

    @property
    def layers(self) -> list[Module]:
        return list(self._modules.values())

    def __len__(self) -> int:
        return len(self._modules)

    def __getitem__(self, i: int) -> Module:
        return self.layers[i]

    def __iter__(self) -> Iterator[Module]:
        return iter(self.layers)

    def append(self, layer: Module) -> Sequential:
        setattr(self, str(len(self)), _check_module(layer, "Sequential.append: the layer"))
        return self

    def forward(self, x: Any) -> Any:
        from .layers import Linear, MaxPool2d, ReLU

        layers = list(self._modules.values())
        # Not while summary() traces the calls: its rows show the layers as written.
        rewrite = _trace.calls is None
        i = 0
        while i < len(layers):
            layer = layers[i]
            after = type(layers[i + 1]) if rewrite and i + 1 < len(layers) else None
            if after is MaxPool2d and type(layer) is ReLU:
                # relu(max_pool(x)) == max_pool(relu(x)): the class docstring says why.
                x = layer(layers[i + 1](x))
                i += 2
            elif after is ReLU and type(layer) is Linear:
                x = layer._forward(x, "relu")
                i += 2
            else:
                x = layer(x)
                i += 1
        return x

    def output_shape(self, input_shape: Shape) -> Shape:
        for layer in self._modules.values():
            input_shape = layer.output_shape(input_shape)
        return input_shape


class ModuleList(Module):
    """A list of modules whose parameters the owner sees (PyTorch's ModuleList); it has no
    forward of its own: iterate over it in the owner's forward."""

    def __init__(self, modules: Iterable[Module] = ()) -> None:
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module: Module) -> ModuleList:
        setattr(self, str(len(self)), _check_module(module, "ModuleList: an item"))
        return self

    def extend(self, modules: Iterable[Module]) -> ModuleList:
        for m in modules:
            self.append(m)
        return self

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(list(self._modules.values()))

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]


class ModuleDict(Module):
    """Modules by name whose parameters the owner sees (PyTorch's ModuleDict)."""

    def __init__(self, modules: Mapping[str, Module] | None = None) -> None:
        super().__init__()
        for k, m in (modules or {}).items():
            self[k] = m

    def __setitem__(self, key: str, module: Module) -> None:
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(f"ModuleDict: keys must be identifiers, got {key!r}")
        setattr(self, key, _check_module(module, f"ModuleDict: item {key!r}"))

    def __getitem__(self, key: str) -> Module:
        return self._modules[key]

    def __contains__(self, key: object) -> bool:
        return key in self._modules

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._modules))

    def keys(self) -> list[str]:
        return list(self._modules)

    def values(self) -> list[Module]:
        return list(self._modules.values())

    def items(self) -> list[tuple[str, Module]]:
        return list(self._modules.items())
