"""simdnn: a small, fast deep-learning library for the CPU.

The compute core is hand-written SIMD (AVX-512, AVX2, portable scalar) multi-threaded C++; this
package is a thin layer over it.

- :mod:`simdnn.ops`: the native kernels (GEMM, convolution, pooling), NumPy arrays in and out.
- :mod:`simdnn.reference`: a pure-NumPy twin of every op, with the same signatures.
- :mod:`simdnn.nn`: layers, containers and losses; :mod:`simdnn.optim`: SGD and Adam;
  :mod:`simdnn.init`: initialisers; :func:`fit`, :func:`evaluate`, :func:`predict`.
- :func:`save` / :func:`load`, :func:`gradcheck`, :mod:`simdnn.viz`.
- :func:`use_backend`: run the same model on the native kernels or on the NumPy twins.
- :func:`cpu_info`, :func:`set_num_threads`, :func:`set_isa`: what runs, and on how many threads.

Set ``SIMDNN_ISA=scalar|avx2|avx512`` before import to force an instruction set, and
``OMP_NUM_THREADS`` (or :func:`set_num_threads`) to choose the thread count.
"""

from __future__ import annotations

from . import demos, functional, init, nn, ops, optim, reference, viz
from ._runtime import (
    cpu_info,
    empty_cache,
    get_isa,
    get_num_threads,
    set_isa,
    set_num_threads,
    use_isa,
)
from .backend import get_backend, use_backend
from .gradcheck import gradcheck
from .init import seed
from .io import load, save
from .training import Callback, EarlyStopping, History, evaluate, fit, predict

__version__ = "0.1.0"

__all__ = [
    "Callback",
    "EarlyStopping",
    "History",
    "__version__",
    "cpu_info",
    "demos",
    "empty_cache",
    "evaluate",
    "fit",
    "functional",
    "get_backend",
    "get_isa",
    "get_num_threads",
    "gradcheck",
    "init",
    "load",
    "nn",
    "ops",
    "optim",
    "predict",
    "reference",
    "save",
    "seed",
    "set_isa",
    "set_num_threads",
    "use_backend",
    "use_isa",
    "viz",
]
