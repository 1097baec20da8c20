"""Reverse-mode automatic differentiation: the tape under every model.

Every differentiable op computes its result from NumPy arrays and, when an input needs a
gradient, records one :class:`Node`: the inputs and a closure holding the op's backward rule
(forward and backward side by side, in the op's own function). :meth:`Tensor.backward` collects
the nodes reachable from the result, runs their rules once each in reverse creation order (a
node is always created after its inputs, so that order is topological) and *adds up* the
gradients of every tensor used more than once: a layer applied twice, a residual branch, tied
weights.

Leaves that require a gradient (a model's :class:`simdnn.nn.Parameter`) keep it in ``.grad``:
the first contribution after ``zero_grad()`` is written (a fresh kernel result is taken without
a copy, and rules that can write straight into the buffer, as the linear layer's GEMM does, use
:func:`grad_sink`), later ones are added. The tape, not the layer, remembers the inputs, and it
is freed as backward runs.

NumPy arrays are accepted wherever a tensor is and are constants. Gradients are recorded only
when :func:`is_grad_enabled` (see :class:`no_grad`), which is per thread, as in PyTorch.
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar, Union

import numpy as np
import numpy.typing as npt

Array = np.ndarray
# A backward rule: (gradient of the output, which inputs need one) -> one gradient per input
# (None where not needed, or where the rule already wrote it into the input's .grad).
Rule = Callable[[Array, tuple[bool, ...]], Sequence[Union[Array, None]]]

_state = threading.local()
_sequence = itertools.count()


def is_grad_enabled() -> bool:
    """Whether ops record the tape in this thread (False inside :class:`no_grad`)."""
    return getattr(_state, "enabled", True)


F = TypeVar("F", bound=Callable[..., Any])


class _GradMode:
    """A context manager and a decorator, with or without parentheses (``@no_grad()`` or
    ``@no_grad``), as in PyTorch."""

    _enabled: bool

    def __new__(cls, fn: Callable[..., Any] | None = None) -> Any:
        # Bare @no_grad hands the function to the constructor: give back what @no_grad() would.
        self = super().__new__(cls)
        if fn is None:
            return self
        if not callable(fn):
            raise TypeError(f"{cls.__name__}: expected a function to decorate, got {fn!r}")
        return self(fn)

    def __enter__(self) -> None:
        self._prev = is_grad_enabled()
        _state.enabled = self._enabled

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _state.enabled = self._prev

    def __call__(self, fn: F) -> F:
        mode = type(self)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with mode():
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


class no_grad(_GradMode):
    """Record nothing: a context manager (``with simdnn.no_grad():``) or a decorator
    (``@simdnn.no_grad()`` or ``@simdnn.no_grad``).

    Results made inside do not require a gradient; inference and optimiser updates use it.
    """

    _enabled = False


class enable_grad(_GradMode):
    """Record again inside a :class:`no_grad` block (context manager or decorator)."""

    _enabled = True


class Node:
    """How a tensor was made: its inputs, which of them need a gradient, and the backward rule."""

    __slots__ = ("inputs", "name", "needs", "rule", "seq")

    def __init__(self, inputs: tuple[Tensor | None, ...], needs: tuple[bool, ...], rule: Rule,
                 name: str) -> None:  # fmt: skip
        self.inputs = inputs
        self.needs = needs
        self.rule: Rule | None = rule
        self.seq = next(_sequence)
        self.name = name


def _float_dtype(dt: np.dtype) -> bool:
    return dt.kind == "f"


class Tensor:
    """A NumPy array and, for results of differentiable ops, the node that made it.

    Args:
        data: anything ``numpy.asarray`` takes (a tensor's array is shared, not copied).
        requires_grad: make this a leaf whose gradient backward() accumulates in ``.grad``.

    ``np.asarray(t)`` gives the array; arithmetic (``+ - * / @``, unary ``-``) broadcasts as
    NumPy does, with NumPy arrays and Python numbers as constants on either side.
    """

    __slots__ = (
        "__weakref__",
        "_grad",
        "_grad_pinned",
        "_grad_stale",
        "_node",
        "data",
        "requires_grad",
    )  # fmt: skip

    # NumPy hands its ufuncs to the tensor: arithmetic with a NumPy array on the left
    # (np_array + t) stays on the tape; any other ufunc (np.abs, np.isnan, ...) sees the arrays
    # and returns a plain NumPy result, with no gradient.
    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        op = _UFUNC_OPS.get(ufunc.__name__) if method == "__call__" and not kwargs else None
        if op is not None:
            return op(*inputs)
        arrays = [x.data if isinstance(x, Tensor) else x for x in inputs]
        if "out" in kwargs:
            kwargs["out"] = tuple(o.data if isinstance(o, Tensor) else o for o in kwargs["out"])
        return getattr(ufunc, method)(*arrays, **kwargs)

    def __init__(self, data: Any, requires_grad: bool = False) -> None:
        arr = data.data if isinstance(data, Tensor) else np.asarray(data)
        if requires_grad and not _float_dtype(arr.dtype):
            raise TypeError(
                f"Tensor: only floating-point tensors can require a gradient, got dtype {arr.dtype}"
            )
        self.data: Array = arr
        self.requires_grad = bool(requires_grad)
        self._node: Node | None = None
        self._grad: Array | None = None
        self._grad_stale = False
        self._grad_pinned = False

    # -- array protocol and introspection ----------------------------------------------------

    def __array__(self, dtype: npt.DTypeLike | None = None, copy: bool | None = None) -> Array:
        if dtype is not None and np.dtype(dtype) != self.data.dtype:
            return self.data.astype(dtype)
        return self.data.copy() if copy else self.data

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return self.data.size

    def __len__(self) -> int:
        return len(self.data)

    @property
    def is_leaf(self) -> bool:
        return self._node is None

    @property
    def grad_fn(self) -> str | None:
        """The name of the op that made this tensor (None for leaves and constants)."""
        return None if self._node is None else self._node.name

    def numpy(self) -> Array:
        """The array (shared, not copied), as PyTorch's ``detach().numpy()``."""
        return self.data

    def item(self) -> float:
        if self.data.size != 1:
            raise ValueError(f"item: the tensor has {self.data.size} elements, expected 1")
        return self.data.item()

    def __float__(self) -> float:
        return float(self.item())

    def detach(self) -> Tensor:
        """The same array without history (shares memory)."""
        return Tensor(self.data)

    def __repr__(self) -> str:
        extra = ""
        if self._node is not None:
            extra = f", grad_fn={self._node.name}"
        elif self.requires_grad:
            extra = ", requires_grad=True"
        body = np.array2string(self.data, prefix="tensor(")
        return f"tensor({body}{extra})"

    # -- gradients ---------------------------------------------------------------------------

    @property
    def grad(self) -> Array | None:
        """The gradient accumulated by backward() (leaves that require it); None before any."""
        if self._grad_stale:
            assert self._grad is not None
            self._grad.fill(0)
            self._grad_stale = False
        return self._grad

    @grad.setter
    def grad(self, value: Array | None) -> None:
        """Set (or with None, drop) the gradient buffer. The buffer is then this tensor's: later
        backward passes write into it in place (gradients as views of one flat buffer)."""
        if value is not None:
            value = np.asarray(value)
            if value.shape != self.data.shape:
                raise ValueError(
                    f"grad: expected an array of shape {self.data.shape}, got {value.shape}"
                )
        self._grad = value
        self._grad_stale = False
        self._grad_pinned = value is not None

    def zero_grad(self) -> None:
        """Mark the gradient as zero: the next backward writes it instead of adding (no fill
        and no read of the old values), and reading ``.grad`` before that gives zeros."""
        if self._grad is not None:
            self._grad_stale = True

    def _accumulate(self, g: Array, owned: bool) -> None:
        """Add g into .grad (write it after zero_grad). owned: g is a fresh array that nothing
        else refers to, so it may become the buffer itself instead of being copied."""
        if g.dtype != self.data.dtype:
            g = g.astype(self.data.dtype)
            owned = True
        if g.shape != self.data.shape:
            raise RuntimeError(
                f"backward: gradient of shape {g.shape} for a tensor of shape {self.data.shape}"
            )
        buf = self._grad
        if buf is None or self._grad_stale:
            if buf is not None and (self._grad_pinned or not owned):
                np.copyto(buf, g)
            else:
                self._grad = g if owned and g.flags.writeable else g.copy()
            self._grad_stale = False
        else:
            buf += g

    def backward(self, grad: Any = None, retain_graph: bool = False) -> None:
        """Backpropagate from this tensor: every leaf that requires a gradient and that it
        depends on gets d(this)/d(leaf) added to its ``.grad``.

        grad: the gradient of whatever this tensor feeds (default 1, for a one-element result).
        retain_graph: keep the tape so that backward can run through it again.
        """
        if not self.requires_grad:
            raise RuntimeError(
                "backward: this tensor does not require a gradient (it was computed from "
                "constants only, or under no_grad)"
            )
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward: a gradient must be given for a result of shape {self.shape}; "
                    "only one-element results default to 1"
                )
            seed = np.ones_like(self.data)
        else:
            seed = np.asarray(grad.data if isinstance(grad, Tensor) else grad)
            if seed.shape != self.data.shape:
                raise ValueError(
                    f"backward: grad has shape {seed.shape}, expected {self.data.shape}"
                )
            seed = seed.astype(self.data.dtype, copy=False)
        if self._node is None:
            self._accumulate(seed, owned=grad is None)
            return
        _run_backward(self, seed, retain_graph)

    # -- arithmetic --------------------------------------------------------------------------

    def __add__(self, other: Any) -> Tensor:
        return add(self, other)

    def __radd__(self, other: Any) -> Tensor:
        return add(other, self)

    def __sub__(self, other: Any) -> Tensor:
        return sub(self, other)

    def __rsub__(self, other: Any) -> Tensor:
        return sub(other, self)

    def __mul__(self, other: Any) -> Tensor:
        return mul(self, other)

    def __rmul__(self, other: Any) -> Tensor:
        return mul(other, self)

    def __truediv__(self, other: Any) -> Tensor:
        return div(self, other)

    def __rtruediv__(self, other: Any) -> Tensor:
        return div(other, self)

    def __matmul__(self, other: Any) -> Tensor:
        return matmul(self, other)

    def __rmatmul__(self, other: Any) -> Tensor:
        return matmul(other, self)

    def __neg__(self) -> Tensor:
        return neg(self)

    def __pos__(self) -> Tensor:
        return self

    def __pow__(self, exponent: float) -> Tensor:
        return power(self, exponent)

    def __getitem__(self, index: Any) -> Tensor:
        return getitem(self, index)

    # Comparisons give plain boolean arrays (no gradient), as masks.
    def __gt__(self, other: Any) -> Array:
        return self.data > _data(other)

    def __ge__(self, other: Any) -> Array:
        return self.data >= _data(other)

    def __lt__(self, other: Any) -> Array:
        return self.data < _data(other)

    def __le__(self, other: Any) -> Array:
        return self.data <= _data(other)

    def __eq__(self, other: Any) -> Array:  # type: ignore[override]
        return self.data == _data(other)

    def __ne__(self, other: Any) -> Array:  # type: ignore[override]
        return self.data != _data(other)

    __hash__ = object.__hash__  # tensors are keyed by identity, as in PyTorch

    # -- methods -----------------------------------------------------------------------------

    # dtype and out are there for numpy.sum(t) / numpy.mean(t), which call these methods; with
    # either given, the result is NumPy's, without a gradient.
    def sum(self, axis: int | tuple[int, ...] | None = None, dtype: Any = None, out: Any = None,
            keepdims: bool = False) -> Any:  # fmt: skip
        if dtype is not None or out is not None:
            return self.data.sum(axis=axis, dtype=dtype, out=out, keepdims=keepdims)
        return sum_(self, axis, keepdims)

    def mean(self, axis: int | tuple[int, ...] | None = None, dtype: Any = None, out: Any = None,
             keepdims: bool = False) -> Any:  # fmt: skip
        if dtype is not None or out is not None:
            return self.data.mean(axis=axis, dtype=dtype, out=out, keepdims=keepdims)
        return mean(self, axis, keepdims)

    def reshape(self, *shape: Any) -> Tensor:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return reshape(self, shape)

    def flatten(self, start_dim: int = 0) -> Tensor:
        return flatten(self, start_dim)

    def transpose(self, *axes: int) -> Tensor:
        return transpose(self, axes or None)

    @property
    def T(self) -> Tensor:
        return transpose(self, None)

    def relu(self) -> Tensor:
        from .functional import relu

        return relu(self)

    def sigmoid(self) -> Tensor:
        from .functional import sigmoid

        return sigmoid(self)

    def tanh(self) -> Tensor:
        from .functional import tanh

        return tanh(self)

    def exp(self) -> Tensor:
        return exp(self)

    def log(self) -> Tensor:
        return log(self)


# ------------------------------------------------------------------------------------------------
# The engine


def _data(x: Any) -> Any:
    return x.data if isinstance(x, Tensor) else x


def as_array(x: Any) -> Array:
    """The NumPy array of a tensor or array-like."""
    return x.data if isinstance(x, Tensor) else np.asarray(x)


def record(data: Array, inputs: Sequence[Any], rule: Rule, name: str) -> Tensor:
    """The result of an op: a tensor holding `data` and, when the tape is on and an input needs
    a gradient, a node with the op's backward rule. `inputs` may hold tensors, arrays, numbers
    or None; only tensors that require a gradient are remembered."""
    if is_grad_enabled():
        needs = tuple(isinstance(t, Tensor) and t.requires_grad for t in inputs)
        if any(needs):
            out = Tensor.__new__(Tensor)
            out.data = data
            out.requires_grad = True
            out._grad = None
            out._grad_stale = out._grad_pinned = False
            kept = tuple(t if n else None for t, n in zip(inputs, needs))
            out._node = Node(kept, needs, rule, name)
            return out
    return Tensor(data)


def grad_sink(t: Any) -> tuple[Array, float] | None:
    """(buffer, beta) when a rule may write t's gradient straight into t.grad: the kernel
    computes beta * buffer + its contribution (beta 0 right after zero_grad: overwrite). None
    when t is not such a leaf (the rule then returns the gradient instead)."""
    if not isinstance(t, Tensor) or t._node is not None or t._grad is None:
        return None
    if t._grad.dtype != t.data.dtype or not t._grad.flags.c_contiguous:
        return None
    beta = 0.0 if t._grad_stale else 1.0
    t._grad_stale = False
    return t._grad, beta


def _run_backward(root: Tensor, seed: Array, retain_graph: bool) -> None:
    # The nodes reachable from the root (iteratively: deep nets must not hit the recursion limit).
    nodes: list[Tensor] = []
    seen: set[int] = {id(root)}
    stack = [root]
    while stack:
        t = stack.pop()
        nodes.append(t)
        assert t._node is not None
        for p in t._node.inputs:
            if p is not None and p._node is not None and id(p) not in seen:
                seen.add(id(p))
                stack.append(p)
    nodes.sort(key=lambda t: t._node.seq, reverse=True)  # type: ignore[union-attr]
    grads: dict[int, Array] = {id(root): seed}
    # Arrays already handed to a tensor: a rule may pass its incoming gradient (or one array to
    # two inputs) through, and such an array must never become a leaf's buffer uncopied.
    handed: set[int] = {id(seed)}
    for t in nodes:
        g = grads.pop(id(t), None)
        node = t._node
        assert node is not None
        if g is None:
            continue
        if node.rule is None:
            raise RuntimeError(
                "backward: trying to backward through the graph a second time (its saved "
                "arrays were freed); pass retain_graph=True to the first backward"
            )
        results = node.rule(g, node.needs)
        inputs = node.inputs
        if not retain_graph:  # free the saved arrays and the inputs as PyTorch does
            node.rule = None
            node.inputs = ()
        for p, gi in zip(inputs, results):
            if p is None or gi is None:
                continue
            owned = gi.base is None and id(gi) not in handed
            handed.add(id(gi))
            if p._node is None:
                p._accumulate(gi, owned)
            else:
                prev = grads.get(id(p))
                grads[id(p)] = gi if prev is None else prev + gi


# ------------------------------------------------------------------------------------------------
# Elementary ops. Each: forward on arrays, then its backward rule beside it.


def _unbroadcast(g: Array, shape: tuple[int, ...], dtype: np.dtype) -> Array:
    """Sum g over the axes that broadcasting added or stretched, back to `shape`."""
    if g.shape != shape:
        extra = g.ndim - len(shape)
        if extra:
            g = g.sum(axis=tuple(range(extra)))
        axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
        if axes:
            g = g.sum(axis=axes, keepdims=True)
    return g if g.dtype == dtype else g.astype(dtype)


def _shape_dtype(x: Any) -> tuple[tuple[int, ...], np.dtype]:
    a = x.data if isinstance(x, Tensor) else np.asarray(x)
    return a.shape, a.dtype


def add(a: Any, b: Any) -> Tensor:
    """a + b with NumPy broadcasting (also the element-wise join of a skip connection)."""
    (sa, da), (sb, db) = _shape_dtype(a), _shape_dtype(b)

    def rule(g: Array, needs: tuple[bool, ...]) -> tuple[Array | None, Array | None]:
        return (
            _unbroadcast(g, sa, da) if needs[0] else None,
            _unbroadcast(g, sb, db) if needs[1] else None,
        )

    return record(np.add(_data(a), _data(b)), (a, b), rule, "add")


def sub(a: Any, b: Any) -> Tensor:
    (sa, da), (sb, db) = _shape_dtype(a), _shape_dtype(b)

    def rule(g: Array, needs: tuple[bool, ...]) -> tuple[Array | None, Array | None]:
        return (
            _unbroadcast(g, sa, da) if needs[0] else None,
            _unbroadcast(-g, sb, db) if needs[1] else None,
        )

    return record(np.subtract(_data(a), _data(b)), (a, b), rule, "sub")


def mul(a: Any, b: Any) -> Tensor:
    av, bv = _data(a), _data(b)
    (sa, da), (sb, db) = _shape_dtype(a), _shape_dtype(b)

    def rule(g: Array, needs: tuple[bool, ...]) -> tuple[Array | None, Array | None]:
        return (
            _unbroadcast(g * bv, sa, da) if needs[0] else None,
            _unbroadcast(g * av, sb, db) if needs[1] else None,
        )

    return record(np.multiply(av, bv), (a, b), rule, "mul")


def div(a: Any, b: Any) -> Tensor:
    av, bv = _data(a), _data(b)
    (sa, da), (sb, db) = _shape_dtype(a), _shape_dtype(b)
    out = np.divide(av, bv)

    def rule(g: Array, needs: tuple[bool, ...]) -> tuple[Array | None, Array | None]:
        return (
            _unbroadcast(g / bv, sa, da) if needs[0] else None,
            _unbroadcast(-g * out / bv, sb, db) if needs[1] else None,
        )

    return record(out, (a, b), rule, "div")


def neg(a: Any) -> Tensor:
    return record(np.negative(_data(a)), (a,), lambda g, needs: (-g,), "neg")


def power(a: Any, exponent: float) -> Tensor:
    """a ** exponent for a constant real exponent."""
    av = _data(a)
    e = float(exponent)

    def rule(g: Array, needs: tuple[bool, ...]) -> tuple[Array]:
        return ((g * e * av ** (e - 1)).astype(av.dtype, copy=False),)

    return record(np.power(av, av.dtype.type(e)), (a,), rule, "pow")


def exp(a: Any) -> Tensor:
    out = np.exp(_data(a))
    return record(out, (a,), lambda g, needs: (g * out,), "exp")


def log(a: Any) -> Tensor:
    av = _data(a)
    return record(np.log(av), (a,), lambda g, needs: (g / av,), "log")


def matmul(a: Any, b: Any) -> Tensor:
    """a @ b of 2-D operands on the backend's GEMM (gradients by the same GEMM, transposed)."""
    from .backend import backend_ops

    av, bv = as_array(a), as_array(b)
    if av.ndim != 2 or bv.ndim != 2:
        raise ValueError(f"matmul: expected 2-D operands, got shapes {av.shape} and {bv.shape}")
    ops = backend_ops()

    def rule(g: Array, needs: tuple[bool, ...]) -> tuple[Array | None, Array | None]:
        ga = ops.gemm(g, bv, trans_b=True) if needs[0] else None
        gb = None
        if needs[1]:
            sink = grad_sink(b)
            if sink is not None:
                ops.gemm(av, g, sink[0], beta=sink[1], trans_a=True)
            else:
                gb = ops.gemm(av, g, trans_a=True)
        return ga, gb

    return record(ops.matmul(av, bv), (a, b), rule, "matmul")


def _axes(axis: int | Sequence[int] | None, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (int, np.integer)):
        axis = (int(axis),)
    out = []
    for ax in axis:
        if not -ndim <= ax < ndim:
            raise ValueError(f"axis {ax} is out of range for a {ndim}-D tensor")
        out.append(ax % ndim)
    return tuple(out)


def sum_(a: Any, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> Tensor:
    """Sum over `axis` (all axes by default), as numpy.sum."""
    av = as_array(a)
    axes = _axes(axis, av.ndim)

    def rule(g: Array, needs: tuple[bool, ...]) -> tuple[Array]:
        if not keepdims:
            g = np.expand_dims(g, axes)
        return (np.broadcast_to(g, av.shape),)

    return record(np.asarray(av.sum(axis=axes, keepdims=keepdims)), (a,), rule, "sum")


def mean(a: Any, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> Tensor:
    """Mean over `axis` (all axes by default), as numpy.mean."""
    av = as_array(a)
    axes = _axes(axis, av.ndim)
    count = max(int(np.prod([av.shape[i] for i in axes])), 1)

    def rule(g: Array, needs: tuple[bool, ...]) -> tuple[Array]:
        if not keepdims:
            g = np.expand_dims(g, axes)
        return (np.broadcast_to(g / av.dtype.type(count), av.shape),)

    return record(np.asarray(av.mean(axis=axes, keepdims=keepdims)), (a,), rule, "mean")


def reshape(a: Any, shape: Sequence[int]) -> Tensor:
    av = as_array(a)
    out = av.reshape(tuple(shape))
    return record(out, (a,), lambda g, needs: (g.reshape(av.shape),), "reshape")


def flatten(a: Any, start_dim: int = 0) -> Tensor:
    """Merge the axes from start_dim on into one (start_dim=1 keeps the batch axis)."""
    av = as_array(a)
    start = start_dim % max(av.ndim, 1)
    return reshape(a, (*av.shape[:start], -1))


def transpose(a: Any, axes: Sequence[int] | None = None) -> Tensor:
    av = as_array(a)
    perm = tuple(reversed(range(av.ndim))) if axes is None else tuple(axes)
    inverse = tuple(np.argsort(perm))
    return record(av.transpose(perm), (a,), lambda g, needs: (g.transpose(inverse),), "transpose")


def getitem(a: Any, index: Any) -> Tensor:
    """Basic slicing and integer/boolean indexing; the gradient is scattered back (added, so
    repeated indices accumulate)."""
    av = as_array(a)
    if isinstance(index, Tensor):
        index = index.data

    basic = all(
        isinstance(i, (slice, int, np.integer)) or i is None or i is Ellipsis
        for i in (index if isinstance(index, tuple) else (index,))
    )

    def rule(g: Array, needs: tuple[bool, ...]) -> tuple[Array]:
        full = np.zeros_like(av)
        if basic:  # each element is picked at most once: a plain assignment
            full[index] = g
        else:
            np.add.at(full, index, g)
        return (full,)

    return record(np.asarray(av[index]), (a,), rule, "getitem")


def concatenate(tensors: Sequence[Any], axis: int = 0) -> Tensor:
    """Join tensors along an existing axis, as numpy.concatenate (the join of two branches)."""
    arrays = [as_array(t) for t in tensors]
    if not arrays:
        raise ValueError("concatenate: expected at least one tensor")
    out = np.concatenate(arrays, axis=axis)
    ax = axis % out.ndim
    bounds = np.cumsum([0] + [x.shape[ax] for x in arrays])

    def rule(g: Array, needs: tuple[bool, ...]) -> list[Array | None]:
        return [
            g[(slice(None),) * ax + (slice(lo, hi),)] if need else None
            for lo, hi, need in zip(bounds[:-1], bounds[1:], needs)
        ]

    return record(out, tuple(tensors), rule, "concatenate")


cat = concatenate


def stack(tensors: Sequence[Any], axis: int = 0) -> Tensor:
    """Stack tensors along a new axis, as numpy.stack."""
    arrays = [as_array(t) for t in tensors]
    if not arrays:
        raise ValueError("stack: expected at least one tensor")
    out = np.stack(arrays, axis=axis)
    ax = axis % out.ndim

    def rule(g: Array, needs: tuple[bool, ...]) -> list[Array | None]:
        return [np.take(g, i, axis=ax) if need else None for i, need in enumerate(needs)]

    return record(out, tuple(tensors), rule, "stack")


_UFUNC_OPS: dict[str, Callable[..., Tensor]] = {
    "add": add,
    "subtract": sub,
    "multiply": mul,
    "divide": div,
    "negative": neg,
    "matmul": matmul,
    "exp": exp,
    "log": log,
}


def tensor(data: Any, requires_grad: bool = False, dtype: npt.DTypeLike | None = None) -> Tensor:
    """A new tensor holding a copy of `data` (as ``torch.tensor``)."""
    arr = np.array(_data(data), dtype=dtype, copy=True)
    return Tensor(arr, requires_grad=requires_grad)


def walk(root: Tensor) -> Iterator[Node]:
    """The nodes of the tape behind `root`, each once (for inspection and tests)."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        t = stack.pop()
        if t._node is None or id(t._node) in seen:
            continue
        seen.add(id(t._node))
        yield t._node
        stack.extend(p for p in t._node.inputs if p is not None)
