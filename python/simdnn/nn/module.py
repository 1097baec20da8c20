"""Module, Parameter and Sequential: the building blocks of every model.

Training is reverse-mode differentiation done by hand, layer by layer: ``forward(x)`` computes
the output and caches what the backward pass needs; ``backward(grad_out)`` returns the gradient
with respect to the input and *adds* the gradients of the layer's parameters into their
``.grad`` (so several backward passes accumulate until :meth:`Module.zero_grad`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

Shape = tuple[int, ...]

# Every Module subclass, by class name: what simdnn.load rebuilds architectures from.
LAYER_REGISTRY: dict[str, type[Module]] = {}


class Parameter:
    """A trainable array and the gradient accumulated for it.

    ``zero_grad()`` only marks the gradient as zero; the next backward pass then writes it instead
    of adding to it (no fill, and no read of the old values: a tenth of an MLP step's memory
    traffic), and reading ``.grad`` before that gives zeros.
    """

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self._grad = np.zeros_like(data)
        self._grad_is_zero = False

    @property
    def grad(self) -> np.ndarray:
        if self._grad_is_zero:
            self._grad.fill(0)
            self._grad_is_zero = False
        return self._grad

    @grad.setter
    def grad(self, value: np.ndarray) -> None:
        self._grad = value
        self._grad_is_zero = False

    def zero_grad(self) -> None:
        self._grad_is_zero = True

    def grad_target(self) -> tuple[np.ndarray, float]:
        """(gradient buffer, beta) for a backward pass that writes beta * buffer + its own
        contribution: beta is 0 right after zero_grad (overwrite), else 1 (accumulate)."""
        beta = 0.0 if self._grad_is_zero else 1.0
        self._grad_is_zero = False
        return self._grad, beta

    def add_grad(self, value: np.ndarray) -> None:
        """Accumulate value into the gradient (or write it, right after zero_grad)."""
        buf, beta = self.grad_target()
        if beta == 0.0:
            np.copyto(buf, value)
        else:
            buf += value

    @property
    def shape(self) -> Shape:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class of layers and models.

    Subclasses implement ``forward(x)`` and ``backward(grad_out)``; parameters and sub-modules
    assigned as attributes are found by :meth:`parameters`, :meth:`state_dict` and friends.
    """

    training: bool
    # Layers that act on (N, C, H, W) planes describe their window for summary()'s receptive
    # field: (kernel extent, stride) per spatial axis.
    spatial: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        LAYER_REGISTRY[cls.__name__] = cls

    def __init__(self) -> None:
        object.__setattr__(self, "_params", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if "_params" not in self.__dict__:
            raise AttributeError(
                f"{type(self).__name__}: call super().__init__() before assigning attributes"
            )
        self._params.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._params[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    # -- computation -------------------------------------------------------------------------

    def forward(self, x: np.ndarray) -> np.ndarray:
        raise TypeError(f"{type(self).__name__} does not define forward()")

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        raise TypeError(f"{type(self).__name__} does not define backward()")

    def accepts_need_input_grad(self) -> bool:
        """Whether backward(grad, need_input_grad=False) may skip computing the input gradient
        (the first trainable layer of a model never needs it; Linear and Conv2d skip it)."""
        import inspect

        return "need_input_grad" in inspect.signature(self.backward).parameters

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)

    # -- structure ---------------------------------------------------------------------------

    def children(self) -> Iterator[Module]:
        yield from self._modules.values()

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        seen: set[int] = set()
        for mod_name, mod in self.named_modules(prefix):
            for name, p in mod._params.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.zero_grad()

    def train(self, mode: bool = True) -> Module:
        for _, mod in self.named_modules():
            object.__setattr__(mod, "training", mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def num_parameters(self) -> int:
        return sum(p.data.size for p in self.parameters())

    # -- state -------------------------------------------------------------------------------

    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """Copies of every parameter, by dotted name (``"0.weight"``, ``"2.bias"``, ...)."""
        return OrderedDict((name, p.data.copy()) for name, p in self.named_parameters())

    def load_state_dict(self, state: Mapping[str, np.ndarray], strict: bool = True) -> None:
        """Copy arrays into the parameters of the same names (and shapes).

        strict: every parameter must be given and nothing else (ValueError naming the
        differences); otherwise missing and unexpected names are skipped.
        """
        params = dict(self.named_parameters())
        missing = [k for k in params if k not in state]
        unexpected = [k for k in state if k not in params]
        if strict and (missing or unexpected):
            raise ValueError(
                f"load_state_dict: missing parameters {missing}, unexpected {unexpected}"
            )
        for name, p in params.items():
            if name not in state:
                continue
            value = np.asarray(state[name])
            if value.shape != p.data.shape:
                raise ValueError(
                    f"load_state_dict: {name!r} has shape {value.shape}, expected {p.data.shape}"
                )
            p.data[...] = value

    def astype(self, dtype: npt.DTypeLike) -> Module:
        """Convert every parameter (and its gradient) to float32 or float64, in place."""
        dt = np.dtype(dtype)
        if dt not in (np.float32, np.float64):
            raise TypeError(f"astype: expected float32 or float64, got {dt}")
        for p in self.parameters():
            p.data = p.data.astype(dt)
            p.grad = p.grad.astype(dt)
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
        """A table of the layers: output shape, parameters, receptive field, and what a dense
        layer with the same input and output sizes would cost (what weight sharing saves).

        input_shape is one example's shape without the batch axis, e.g. (1, 28, 28) or (784,).
        """
        rows = []
        shape: Shape = (1, *tuple(input_shape))
        rf = (1, 1)
        jump = (1, 1)
        total = 0
        dense_total = 0
        for name, layer in _leaf_layers(self):
            out = layer.output_shape(shape)
            params = layer.num_parameters()
            win = layer.window()
            if win is not None:
                (kh, kw), (sh, sw) = win
                rf = (rf[0] + (kh - 1) * jump[0], rf[1] + (kw - 1) * jump[1])
                jump = (jump[0] * sh, jump[1] * sw)
            dense = 0
            if params:
                n_in, n_out = math.prod(shape[1:]), math.prod(out[1:])
                dense = n_in * n_out + n_out
            total += params
            dense_total += dense if params else 0
            rows.append(
                (
                    f"{name} {type(layer).__name__}",
                    str(out[1:]),
                    f"{params:,}",
                    f"{rf[0]}x{rf[1]}" if len(out) == 4 else "-",
                    f"{dense:,}" if params else "-",
                )
            )
            shape = out
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


def _leaf_layers(module: Module) -> list[tuple[str, Module]]:
    """The layers in execution order: the children of Sequential containers, recursively."""
    if isinstance(module, Sequential):
        out: list[tuple[str, Module]] = []
        for name, child in module._modules.items():
            for sub_name, sub in _leaf_layers(child):
                out.append((f"{name}.{sub_name}" if sub_name else name, sub))
        return out
    return [("", module)]


class Sequential(Module):
    """Layers applied one after the other; backward runs them in reverse.

    Shape:
        - Input: whatever the first layer takes.
        - Output: whatever the last layer gives.
    """

    def __init__(self, *layers: Module) -> None:
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: argument {i} is {type(layer).__name__}, not a Module")
            setattr(self, str(i), layer)

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
        setattr(self, str(len(self)), layer)
        return self

    def forward(self, x: np.ndarray) -> np.ndarray:
        for layer in self._modules.values():
            x = layer.forward(x)
        return x

    def backward(self, grad_out: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        """Backpropagate through the layers in reverse. With need_input_grad=False (what fit
        does) nothing below the first layer with parameters is computed: no layer there has a
        gradient to receive, and that layer skips its input gradient when it can (a Linear on
        784 inputs saves a third of its backward pass)."""
        layers = list(self._modules.values())
        stop = 0
        if not need_input_grad:
            stop = next((i for i, m in enumerate(layers) if m.parameters()), len(layers))
        for i in range(len(layers) - 1, stop - 1, -1):
            layer = layers[i]
            if i == stop and not need_input_grad and layer.accepts_need_input_grad():
                return layer.backward(grad_out, need_input_grad=False)
            grad_out = layer.backward(grad_out)
        return None if not need_input_grad else grad_out

    def output_shape(self, input_shape: Shape) -> Shape:
        for layer in self._modules.values():
            input_shape = layer.output_shape(input_shape)
        return input_shape
