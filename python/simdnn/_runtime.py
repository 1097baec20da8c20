"""Which instruction set and how many threads the kernels use."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import _core


def cpu_info() -> dict[str, Any]:
    """Describe the CPU and the kernels in use.

    Returns a dict with at least:

    - ``isa``: the instruction set in use (``"avx512"``, ``"avx2"`` or ``"scalar"``);
    - ``available``: the instruction sets this CPU and this build support, narrowest first;
    - ``num_threads``: the threads a kernel may use (see :func:`set_num_threads`);
    - ``l1d_cache``, ``l2_cache``, ``l3_cache``: the per-core cache sizes in bytes that the
      blocking is derived from, and ``gemm_blocking``: the resulting tile and block sizes;
    - ``vendor`` (``"Intel"``, ``"AMD"`` or ``"unknown"``) and ``in_place_stride_bytes``: a
      matrix product reads a row-major right operand without copying it only when its rows are
      at most this many bytes apart (512 on Intel, ``None`` where there is no limit);
      ``in_place_span_bytes``: how far such an operand's rows may span in all (rows times
      stride) to be read without copying (3670016, 3.5 MiB, on AMD Zen 3 and Zen 4; ``None``
      where there is no such limit); ``pointwise_plane_bytes``: the
      largest image plane a 1x1 convolution reads without copying (2048 on Intel and AMD Zen 4,
      ``None`` elsewhere); ``winograd_chunk_tasks``: whether a Winograd convolution with an
      image per thread gives each thread whole chunks of images (``True``), or splits each phase
      of a chunk over all threads (``False``, on AMD Zen 4, where that measured faster);
      ``winograd_narrow_tile_channels``: the least 4x4 tiles of the batch times min(C, K) at
      which ``"auto"`` takes Winograd for a layer of at most 128 channels (2048 on AMD Zen 3 and
      Zen 4, 8192 elsewhere);
    - ``threading``: ``"simdnn"``, the library's own thread pool, which every kernel uses;
      ``pool_threads``: the worker threads it holds now (the calling thread is the other one);
      ``thread_cap``: the most threads any setting gives (the CPUs this process may run on: its
      affinity mask, lowered to a cgroup CPU quota); ``cpu_quota``: the CPUs that quota allows,
      rounded up (``None`` without one);
    - ``openmp``: whether the build links the OpenMP runtime. The kernels do not run on it; it is
      linked so that a threadpoolctl limit on ``"openmp"`` also limits simdnn in that thread;
    - ``workspace_bytes``: the kernel workspace all threads hold now (see :func:`empty_cache`).
    """
    return _core.cpu_info()


def get_num_threads() -> int:
    """The number of threads each kernel may use.

    By default ``OMP_NUM_THREADS``, else the CPUs this process may run on (its affinity mask, and
    a cgroup CPU quota as a container runtime sets it: ``docker run --cpus 2`` gives 2);
    never more than that CPU count, whatever the source (a larger value is clamped with a
    RuntimeWarning). A threadpoolctl limit on ``"openmp"`` lowers it in the limited thread.
    """
    return _core.get_num_threads()


# Whether the user chose the thread count with set_num_threads: simdnn.distributed.init() then
# keeps that choice instead of dividing the node's cores among its ranks (it would otherwise
# silently undo a call made before it).
_set_by_user = False


def set_num_threads(n: int) -> None:
    """Let each kernel use ``n >= 1`` threads. Affects calls made after it returns.

    ``n`` above the CPUs this process may run on is clamped to them, with a RuntimeWarning.
    :func:`simdnn.distributed.init` keeps a count set here before it runs.
    """
    global _set_by_user
    _core.set_num_threads(n)
    _set_by_user = True  # after the call: a rejected n leaves the choice to init


def set_flush_denormal(mode: bool) -> bool:
    """Flush denormal numbers to zero in simdnn's kernels (``True``) or keep them (``False``, the
    default), as ``torch.set_flush_denormal``. Returns whether this CPU supports it (x86: yes;
    elsewhere ``False`` and nothing changes).

    When on, every kernel call runs with the x86 flush-to-zero and denormals-are-zero modes, on
    the calling thread for the duration of the call and on the kernel's worker threads: inputs
    smaller in magnitude than the smallest normal number (1.2e-38 in float32, 2.2e-308 in
    float64) count as zero, and so do such results. NumPy, and the calling thread outside simdnn's
    kernels, keep their own mode. Why: on Intel cores every instruction that meets a denormal
    takes a microcode assist; momentum buffers of units whose gradient
    stays zero decay into that range and stay there for hundreds of steps (an SGD update whose
    velocities were 30% denormal took 1.13-1.17 ms instead of 0.09-0.11 ms on an Intel Xeon;
    0.10 ms with flushing on).
    """
    if not isinstance(mode, (bool, np.bool_)):
        raise TypeError(f"set_flush_denormal: mode must be a bool, got {type(mode).__name__}")
    return bool(_core._set_flush_denormal(bool(mode)))


def get_flush_denormal() -> bool:
    """Whether simdnn's kernels flush denormals to zero (see :func:`set_flush_denormal`)."""
    return bool(_core._get_flush_denormal())


def empty_cache() -> None:
    """Release the kernel workspace every thread holds now, and return free heap pages to the OS.

    Workspaces above 64 MiB per thread are released when the call that grew them ends anyway; the
    rest is kept for the next call. Threads other than the caller and the kernels' own pool release
    theirs when their next kernel call ends. ``cpu_info()["workspace_bytes"]`` shows what is held.
    """
    _core.empty_cache()


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
