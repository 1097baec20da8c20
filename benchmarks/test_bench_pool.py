"""Pooling against the NumPy twins, on the rows of ``python -m simdnn bench`` (simdnn.bench).

Each case is benchmarked twice, ``native`` and ``numpy``, in the same group, so the report shows
them side by side. Results are compared before timing.
"""

from __future__ import annotations

import numpy as np
import pytest

from simdnn import bench

CASES = bench.pool_cases()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("side", ["native", "numpy"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c.group} {c.name}" for c in CASES])
def test_pool(benchmark, case, side, dtype):
    dt = np.dtype(dtype)
    args = case.make(np.random.default_rng(0), dt)
    bench._check_close(case, case.native(*args), case.numpy(*args), dt)
    fn = case.native if side == "native" else case.numpy
    benchmark.group = f"{case.group} {case.name} {dtype}"
    benchmark.extra_info["gbytes"] = case.nbytes * dt.itemsize / 4 / 1e9
    benchmark(fn, *args)
