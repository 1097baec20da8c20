"""Which implementation the layers run on: the native kernels or their pure-NumPy twins.

``simdnn.use_backend("numpy")`` switches every layer to :mod:`simdnn.reference`;
``use_backend("native")`` (the default) back to :mod:`simdnn.ops`. It also works as a context
manager, restoring the previous backend on exit::

    with simdnn.use_backend("numpy"):
        slow = model(x)
"""

from __future__ import annotations

from types import ModuleType, TracebackType

from . import ops, reference

_BACKENDS: dict[str, ModuleType] = {"native": ops, "numpy": reference}
_current = "native"


def get_backend() -> str:
    """The name of the backend the layers use now: ``"native"`` or ``"numpy"``."""
    return _current


def backend_ops() -> ModuleType:
    """The module whose functions the layers call (:mod:`simdnn.ops` or :mod:`simdnn.reference`)."""
    return _BACKENDS[_current]


class use_backend:
    """Switch the backend now; as a context manager, restore the previous one on exit."""

    def __init__(self, name: str) -> None:
        global _current
        if name not in _BACKENDS:
            raise ValueError(f"use_backend: unknown backend {name!r}; expected 'native' or 'numpy'")
        self.previous = _current
        self.name = name
        _current = name

    def __enter__(self) -> use_backend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        global _current
        _current = self.previous
