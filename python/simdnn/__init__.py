"""simdnn: a small, fast deep-learning library for the CPU.

The compute core is hand-written SIMD (AVX-512, AVX2, portable scalar) and OpenMP C++; this package
is a thin layer over it.

- :mod:`simdnn.ops`: the native kernels (GEMM, ...), NumPy arrays in and out.
- :mod:`simdnn.reference`: a pure-NumPy twin of every op, with the same signatures.
- :func:`cpu_info`, :func:`set_num_threads`, :func:`set_isa`: what runs, and on how many threads.

Set ``SIMDNN_ISA=scalar|avx2|avx512`` before import to force an instruction set, and
``OMP_NUM_THREADS`` (or :func:`set_num_threads`) to choose the thread count.
"""

from __future__ import annotations

from . import ops, reference
from ._runtime import cpu_info, get_isa, get_num_threads, set_isa, set_num_threads, use_isa

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "cpu_info",
    "get_isa",
    "get_num_threads",
    "ops",
    "reference",
    "set_isa",
    "set_num_threads",
    "use_isa",
]
