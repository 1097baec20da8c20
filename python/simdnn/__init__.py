"""simdnn: a small, fast deep-learning library for the CPU.

The compute core is hand-written SIMD (AVX-512, AVX2, portable scalar) multi-threaded C++; this
package is a thin layer over it.

- :mod:`simdnn.ops`: the native kernels (GEMM, convolution, pooling), NumPy arrays in and out.
- :mod:`simdnn.reference`: a pure-NumPy twin of every op, with the same signatures.
- :class:`Tensor` and :mod:`simdnn.autograd`: reverse-mode automatic differentiation (the tape
  under every model); :class:`no_grad`; :mod:`simdnn.functional`: the differentiable ops.
- :mod:`simdnn.nn`: layers, containers and losses (modules define ``forward`` only);
  :mod:`simdnn.optim`: SGD, Adam and learning-rate schedules; :mod:`simdnn.init`: initialisers;
  :func:`fit`, :func:`evaluate`, :func:`predict`.
- :func:`save` / :func:`load` / :func:`load_state_dict`, :func:`gradcheck`, :mod:`simdnn.viz`.
- :mod:`simdnn.distributed`: data-parallel training over MPI (``fit(..., distributed=True)``
  under ``mpiexec``); mpi4py is imported only when it is used.
- :func:`use_backend`: run the same model on the native kernels or on the NumPy twins.
- :class:`conv_algorithm` / :func:`get_conv_algorithm`: the convolution algorithm ("auto",
  "direct", "winograd" or "winograd_2x2") of the layers that name none, per thread, as a
  context manager.
- :func:`cpu_info`, :func:`set_num_threads`, :func:`set_isa`: what runs, and on how many threads;
  :func:`set_flush_denormal`: denormals flushed to zero in the kernels (off by default).

Set ``SIMDNN_ISA=scalar|avx2|avx512`` before import to force an instruction set, and
``OMP_NUM_THREADS`` (or :func:`set_num_threads`) to choose the thread count.
"""

from __future__ import annotations

from . import autograd, demos, distributed, functional, init, nn, ops, optim, reference, viz
from ._runtime import (
    cpu_info,
    empty_cache,
    get_flush_denormal,
    get_isa,
    get_num_threads,
    set_flush_denormal,
    set_isa,
    set_num_threads,
    use_isa,
)
from .autograd import (
    Tensor,
    concatenate,
    enable_grad,
    is_grad_enabled,
    no_grad,
    stack,
    tensor,
)
from .backend import (
    conv_algorithm,
    get_backend,
    get_conv_algorithm,
    set_default_backend,
    use_backend,
)
from .functional import add
from .gradcheck import gradcheck
from .init import seed
from .io import load, load_state_dict, save
from .nn.module import inference_mode
from .training import Callback, EarlyStopping, History, evaluate, fit, predict

__version__ = "0.1.0"

__all__ = [
    "Callback",
    "EarlyStopping",
    "History",
    "Tensor",
    "__version__",
    "add",
    "autograd",
    "concatenate",
    "conv_algorithm",
    "cpu_info",
    "demos",
    "distributed",
    "empty_cache",
    "enable_grad",
    "evaluate",
    "fit",
    "functional",
    "get_backend",
    "get_conv_algorithm",
    "get_flush_denormal",
    "get_isa",
    "get_num_threads",
    "gradcheck",
    "inference_mode",
    "init",
    "is_grad_enabled",
    "load",
    "load_state_dict",
    "nn",
    "no_grad",
    "ops",
    "optim",
    "predict",
    "reference",
    "save",
    "seed",
    "set_default_backend",
    "set_flush_denormal",
    "set_isa",
    "set_num_threads",
    "stack",
    "tensor",
    "use_backend",
    "use_isa",
    "viz",
]
