"""Which instruction set and how many threads the kernels use."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from . import _core


def cpu_info() -> dict[str, Any]:
    """Describe the CPU and the kernels in use.

    Returns a dict with at least:

    - ``isa``: the instruction set in use (``"avx512"``, ``"avx2"`` or ``"scalar"``);
    - ``available``: the instruction sets this CPU and this build support, narrowest first;
    - ``num_threads``: the threads a kernel may use (see :func:`set_num_threads`);
    - ``l1d_cache``, ``l2_cache``, ``l3_cache``: the per-core cache sizes in bytes that the
      blocking is derived from, and ``gemm_blocking``: the resulting tile and block sizes.
    """
    return _core.cpu_info()


def get_num_threads() -> int:
    """The number of threads each kernel may use (``OMP_NUM_THREADS`` by default)."""
    return _core.get_num_threads()


def set_num_threads(n: int) -> None:
    """Let each kernel use ``n >= 1`` threads. Affects calls made after it returns."""
    _core.set_num_threads(n)


def get_isa() -> str:
    """The instruction set the calling thread's kernels use now."""
    return _core.get_isa()


def set_isa(name: str) -> None:
    """Switch the process default to ``"scalar"``, ``"avx2"`` or ``"avx512"`` (must be
    available): every thread not inside a :func:`use_isa` block.

    Raises ValueError naming the available instruction sets otherwise. The environment variable
    ``SIMDNN_ISA`` does the same at import time.
    """
    _core.set_isa(name)


@contextlib.contextmanager
def use_isa(name: str) -> Iterator[None]:
    """Context manager: run the block with instruction set ``name`` in the calling thread only,
    then restore the thread's previous choice; other threads keep theirs (the process default
    unless they are in a block of their own)."""
    previous = _core.get_thread_isa()
    _core.set_thread_isa(name)
    try:
        yield
    finally:
        _core.set_thread_isa(previous)
