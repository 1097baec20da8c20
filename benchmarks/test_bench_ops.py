"""Every row of ``python -m simdnn bench`` (simdnn.bench.all_cases: the GEMM, convolution and
pooling kernels and the two training steps) under pytest-benchmark, parametrised over
(op and shape, side, dtype): each row once per side (native, numpy, and torch when installed),
grouped so that the sides appear side by side. Every side runs on the same thread count
(simdnn's, NumPy's BLAS and PyTorch's when it is installed).

Run with ``pytest benchmarks/`` (``-k conv2d`` to select an op, ``--benchmark-save=NAME`` to save
a run, ``--benchmark-compare`` to compare with the last saved one). ``SIMDNN_BENCH_THREADS``
overrides the thread count.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import simdnn
from simdnn.bench import all_cases, check_close
from simdnn.bench.report import threads, torch_module

TORCH = torch_module()
SIDES = ["native", "numpy"] + (["torch"] if TORCH is not None else [])
CASES = all_cases()


@pytest.fixture(scope="session", autouse=True)
def same_threads() -> Iterator[int]:
    n = int(os.environ.get("SIMDNN_BENCH_THREADS", simdnn.get_num_threads()))
    with threads(n, TORCH):
        yield n


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("label", [c.label for c in CASES])
def test_row(benchmark: Any, label: str, side: str, dtype: str) -> None:
    """Benchmark one side of one row, after checking the first call of each side on the same
    inputs as simdnn.bench.report does (the native result against NumPy's or PyTorch's). The case
    is built afresh: a training row keeps state (its models, the batch it is on) from call to
    call, so a case shared between tests compared steps of different batches."""
    case = {c.label: c for c in all_cases()}[label]
    dt = np.dtype(dtype)
    args = case.make(np.random.default_rng(0), dt)
    if side == "torch":
        if case.torch is None or dt != np.float32:
            pytest.skip("no PyTorch equivalent for this row")  # only rows PyTorch lacks
        # Before the native side's first step: a training row copies the model's weights.
        fn, call_args = case.torch(args)
        expected = case.native(*args)
        check_close(case, expected, fn(*call_args), dt, "PyTorch")
    else:
        fn, call_args = (case.native if side == "native" else case.numpy), args
        check_close(case, case.native(*args), case.numpy(*args), dt, "numpy")
    benchmark.group = f"{case.label} {dtype}"
    benchmark.extra_info["gflops" if case.flops else "gbytes"] = (
        case.flops if case.flops else case.nbytes
    ) / 1e9
    benchmark(fn, *call_args)
