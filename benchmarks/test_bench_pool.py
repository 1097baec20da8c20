"""The pool rows of ``python -m simdnn bench`` (simdnn.bench.pool_cases) under pytest-benchmark:
each row once per side (native, numpy, and torch when installed), grouped so that the sides
appear side by side."""

from __future__ import annotations

import pytest

from conftest import SIDES, run_row
from simdnn.bench import pool_cases

CASES = pool_cases()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_pool(benchmark, case, side, dtype):
    run_row(benchmark, case, side, dtype)
