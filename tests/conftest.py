"""Shared fixtures: every kernel test runs on every instruction set this machine has."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

import simdnn

ISAS = simdnn.cpu_info()["available"]
DTYPES = [np.float32, np.float64]


@pytest.fixture(params=ISAS)
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test with each available ISA forced (the same switch as SIMDNN_ISA)."""
    with simdnn.use_isa(request.param):
        yield request.param


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dtype(request: pytest.FixtureRequest) -> type:
    return request.param


@pytest.fixture
def threads() -> Iterator[None]:
    """Restore the thread count after a test that changes it."""
    before = simdnn.get_num_threads()
    yield
    simdnn.set_num_threads(before)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261125)
