"""Which implementation the layers run on: the native kernels or their pure-NumPy twins.

``simdnn.use_backend("numpy")`` switches the layers of the calling thread to
:mod:`simdnn.reference`; ``use_backend("native")`` (the default) back to :mod:`simdnn.ops`. It
also works as a context manager, restoring the thread's previous backend on exit::

    with simdnn.use_backend("numpy"):
        slow = model(x)

The choice is per thread, so overlapping blocks in two threads never leak into each other; a
thread that never chose uses the process default, :func:`set_default_backend`.
"""

from __future__ import annotations

import threading
from types import ModuleType, TracebackType

from . import ops, reference

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
