"""pytest-benchmark setup: both sides on the same thread count (simdnn's and NumPy's BLAS).

Run with ``pytest benchmarks/`` (add ``--benchmark-compare`` to compare with a saved run, and
``--benchmark-save=NAME`` to save one). ``SIMDNN_BENCH_THREADS`` overrides the thread count.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from threadpoolctl import threadpool_limits

import simdnn


@pytest.fixture(scope="session", autouse=True)
def same_threads() -> Iterator[int]:
    n = int(os.environ.get("SIMDNN_BENCH_THREADS", simdnn.get_num_threads()))
    before = simdnn.get_num_threads()
    simdnn.set_num_threads(n)
    with threadpool_limits(limits=n, user_api="blas"):
        yield n
    simdnn.set_num_threads(before)
