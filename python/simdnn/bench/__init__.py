"""Benchmarks: every native kernel and two whole training steps against pure NumPy (and PyTorch
when it is importable), on the same thread count. ``python -m simdnn bench --help``.

The rows are defined in :mod:`simdnn.bench.cases`; :mod:`simdnn.bench.report` times them and
writes the report. ``pytest benchmarks/`` runs the same rows under pytest-benchmark.
"""

from __future__ import annotations

from .cases import (
    Case,
    all_cases,
    conv_cases,
    gemm_cases,
    pool_cases,
    train_cases,
)
from .report import Limits, Result, check_close, main, run_case

__all__ = [
    "Case",
    "Limits",
    "Result",
    "all_cases",
    "check_close",
    "conv_cases",
    "gemm_cases",
    "main",
    "pool_cases",
    "run_case",
    "train_cases",
]
