"""Which implementation the layers run on: the native kernels or their pure-NumPy twins.

``simdnn.use_backend("numpy")`` switches the layers of the calling thread to
:mod:`simdnn.reference`; ``use_backend("native")`` (the default) back to :mod:`simdnn.ops`. It
also works as a context manager, restoring the thread's previous backend on exit::

    with simdnn.use_backend("numpy"):
        slow = model(x)

The choice is per thread, so overlapping blocks in two threads never leak into each other; a
thread that never chose uses the process default, :func:`set_default_backend`.

:class:`conv_algorithm` chooses, the same way, the algorithm of the convolutions ("auto",
"direct", "winograd" or "winograd_2x2") for the layers and functional calls that name none.
"""

from __future__ import annotations

import contextvars
import threading
from types import ModuleType, TracebackType

from . import ops, reference
from ._opspec import conv_algorithm_arg

_BACKENDS: dict[str, ModuleType] = {"native": ops, "numpy": reference}
_default = "native"


class _Choice(threading.local):
    name: str | None = None


_choice = _Choice()


def _check(name: object, fn: str) -> str:
    if name not in _BACKENDS:
        raise ValueError(f"{fn}: unknown backend {name!r}; expected 'native' or 'numpy'")
    return name  # type: ignore[return-value]


def get_backend() -> str:
    """The name of the backend the calling thread's layers use: ``"native"`` or ``"numpy"``."""
    return _choice.name or _default


def set_default_backend(name: str) -> None:
    """The backend of every thread that has not chosen one with :class:`use_backend`."""
    global _default
    _default = _check(name, "set_default_backend")


def backend_ops() -> ModuleType:
    """The module whose functions the layers call (:mod:`simdnn.ops` or :mod:`simdnn.reference`)."""
    return _BACKENDS[_choice.name or _default]


class use_backend:
    """Switch the calling thread's backend now; as a context manager, restore its previous
    choice on exit."""

    def __init__(self, name: str) -> None:
        _check(name, "use_backend")
        self.previous = _choice.name
        self.name = name
        _choice.name = name

    def __enter__(self) -> use_backend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _choice.name = self.previous


# ------------------------------------------------------------------------------------------------
# The convolution algorithm of the layers: a context variable, so that each thread (and each
# asyncio task) has its own, starting at the default "auto".

_conv_algorithm: contextvars.ContextVar[str] = contextvars.ContextVar(
    "simdnn_conv_algorithm", default="auto"
)


def get_conv_algorithm() -> str:
    """The convolution algorithm the calling context's layers use when they name none:
    ``"auto"`` (the default), ``"direct"``, ``"winograd"`` or ``"winograd_2x2"`` (see
    :class:`conv_algorithm`)."""
    return _conv_algorithm.get()


class conv_algorithm:
    """Choose the algorithm of the convolutions (forward and both backward passes) that
    :func:`simdnn.functional.conv2d`, ``conv1d`` and the Conv layers run without an
    ``algorithm`` of their own; as a context manager, restore the previous choice on exit::

        with simdnn.conv_algorithm("direct"):
            y = model(x)  # every convolution on the exact direct path

    ``"auto"`` (the default) lets the native code choose: Winograd for 3x3, stride 1, dilation 1,
    groups 1 layers with enough channels (F(4x4, 3x3), or F(2x2, 3x3) on layers over 128 channels
    with too few 4x4 tiles), else direct. ``"direct"`` forces the exact path. ``"winograd"`` (F(4x4,
    3x3)) and ``"winograd_2x2"`` (F(2x2, 3x3)) run that Winograd wherever the geometry allows it and
    direct elsewhere (an explicit ``algorithm="winograd"`` on a layer or call is strict instead: a
    ValueError where it cannot run). The algorithm is fixed when the forward pass runs: the backward
    pass of a tape recorded inside the block uses it even after the block has ended.

    The choice is a :mod:`contextvars` variable: per thread (a new thread starts at "auto") and
    per asyncio task.
    """

    def __init__(self, name: str) -> None:
        self.name = conv_algorithm_arg(name, "conv_algorithm", "name")
        self._token: contextvars.Token[str] | None = _conv_algorithm.set(self.name)

    def __enter__(self) -> conv_algorithm:
        if self._token is None:  # the same object entered again after it was exited
            self._token = _conv_algorithm.set(self.name)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            _conv_algorithm.reset(self._token)
            self._token = None

    def __repr__(self) -> str:
        return f"conv_algorithm({self.name!r})"
