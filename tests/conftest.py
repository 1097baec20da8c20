"""Shared fixtures: every kernel test runs on every instruction set this machine has (the one
ISA matrix of the suite: the ``isa`` fixture, over helpers.ISAS).

The kernel tests are grouped by op in tests/ops/ (forward, backward, properties, non-finite
values, limits and regressions of one op in one file). Hypothesis profiles (the property tests
there, strategies in tests/strategies.py): ``ci``, the default, is derandomized (the same
examples on every run), writes no example database into the checkout and keeps the property tests
well under a minute on 2 cores; ``long`` runs 20x as many examples from fresh random seeds:

    HYPOTHESIS_PROFILE=long pytest tests -m property
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import simdnn
from helpers import ISAS

CI_EXAMPLES = 40
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=CI_EXAMPLES,
    deadline=None,
    print_blob=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long",
    max_examples=20 * CI_EXAMPLES,
    deadline=None,
    print_blob=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The thread cap is the CPUs this process may run on; tests that check how work splits over 3-8
# threads raise it so that they run on a 2-core machine too (tests/test_runtime_real.py checks the
# cap itself, in subprocesses).
simdnn._core._set_thread_cap(max(8, simdnn.cpu_info()["thread_cap"]))

DTYPES = [np.float32, np.float64]


# The whole-program test files: the README's blocks, the demo's training, the deep lab, the MPI
# jobs and the benchmark's quick rows. They drive the same kernels as the op tests, through the
# Python layers, on realistic sizes, and take most of a run on a narrow ISA (an Emerald Rapids
# class Xeon VM, 2 cores, 2026-12-02: 157 of the 205 s that the scalar run's tests took, 101 of
# 140 s on AVX2), while the op, layer and autograd tests check every kernel on every ISA against
# its twin.
WHOLE_PROGRAM_FILES = frozenset(
    {"test_readme.py", "test_training.py", "test_distributed.py", "test_bench.py", "test_deep.py"}
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--no-isa-matrix",
        action="store_true",
        help="deselect the tests that run on every ISA through the isa or each_isa fixture: they "
        "set the ISA themselves, so a run with SIMDNN_ISA forced repeats them unchanged "
        "(tools/test_each_isa.py passes it to every run after the first)",
    )
    parser.addoption(
        "--no-whole-programs",
        action="store_true",
        help="deselect the whole-program test files (README blocks, demo, deep lab, MPI jobs, "
        "bench), which run once on the default ISA in a full run (tools/test_each_isa.py passes "
        "it to every run after the first, tools/build_wheels.sh to the build without OpenMP)",
    )
    parser.addoption(
        "--shard",
        metavar="I/N",
        default=None,
        help="keep every N-th of the selected tests, from the I-th (0 <= I < N), so that N "
        "processes share a run (tools/memcheck.sh runs one valgrind process per core)",
    )


def _shard(config: pytest.Config) -> tuple[int, int] | None:
    """--shard I/N as (I, N); UsageError unless 0 <= I < N."""
    value = config.getoption("--shard")
    if value is None:
        return None
    part, _, total = value.partition("/")
    if not (part.isdigit() and total.isdigit() and int(part) < int(total)):
        raise pytest.UsageError(f"--shard: expected I/N with 0 <= I < N, got {value!r}")
    return int(part), int(total)


# Last, after -m and -k have deselected theirs: the shards split what is left, evenly.
@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    no_matrix = config.getoption("--no-isa-matrix")
    no_programs = config.getoption("--no-whole-programs")
    shard = _shard(config)
    if not (no_matrix or no_programs or shard):
        return
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        names = getattr(item, "fixturenames", ())
        matrix = "isa" in names or "each_isa" in names
        program = item.path.name in WHOLE_PROGRAM_FILES
        (drop if (no_matrix and matrix) or (no_programs and program) else keep).append(item)
    if shard:
        # Interleaved, not in blocks: neighbouring tests (one op's file, one ISA's cases) cost
        # alike, so every shard gets a like share of each file.
        part, total = shard
        drop += [item for i, item in enumerate(keep) if i % total != part]
        keep = keep[part::total]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(params=ISAS)
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test with each available ISA forced for the whole process (the same switch as
    SIMDNN_ISA), so that threads the test starts use it too."""
    previous = simdnn.get_isa()
    simdnn.set_isa(request.param)
    try:
        yield request.param
    finally:
        simdnn.set_isa(previous)


@pytest.fixture
def each_isa() -> Iterator[Callable[[], Iterator[str]]]:
    """For a test whose operands cost more than its kernel call (the large-tensor tests: first
    touching 8-11 GB took 1-180 s a test on the CI VM, the call itself about a second): call the
    fixture to loop over the available ISAs in one test, each forced for the whole process as the
    isa fixture does, so that the operands are built once. The outputs too: a fresh multi-GB
    output per call faults in as slowly as the first, so these tests pass one (out=, or gemm's c)
    and refill it before each ISA. Deselected with the isa-fixture tests by --no-isa-matrix,
    since it covers every ISA itself."""
    previous = simdnn.get_isa()

    def loop() -> Iterator[str]:
        for name in ISAS:
            simdnn.set_isa(name)
            yield name

    try:
        yield loop
    finally:
        simdnn.set_isa(previous)


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
def quiet_numpy() -> Iterator[None]:
    """NumPy warns of the invalid operations the non-finite tests make on purpose (in the twins)."""
    with np.errstate(all="ignore"):
        yield


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261125)
