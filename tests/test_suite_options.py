"""The suite's own options (tests/conftest.py), which tools/test_each_isa.py and
tools/build_wheels.sh use to leave tests out of their later runs: each must leave out what it
names and nothing else."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import WHOLE_PROGRAM_FILES

HERE = Path(__file__).parent
# A whole-program file, a file whose tests use the isa fixture, and a file with neither.
FILES = ["test_bench.py", "ops/test_relu.py", "test_trust.py"]


def collected(*options: str) -> dict[str, set[str]]:
    """The test ids that pytest collects from FILES with `options`, by file."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         *options, *(str(HERE / f) for f in FILES)],
        cwd=HERE.parent, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    ids: dict[str, set[str]] = {f: set() for f in FILES}
    for line in out.stdout.splitlines():
        # The id runs to the end of the line: parametrised ids may hold spaces.
        m = re.match(r"(?:.*/)?tests/(\S+?\.py)::(.+)$", line.strip())
        if m:
            ids[m[1]].add(m[2])
    return ids


def test_options_leave_out_what_they_name_and_nothing_else():
    assert set(FILES[:1]) <= WHOLE_PROGRAM_FILES
    assert not set(FILES[1:]) & WHOLE_PROGRAM_FILES
    full = collected()
    assert all(full.values()), full
    no_programs = collected("--no-whole-programs")
    assert no_programs == {**full, "test_bench.py": set()}
    both = collected("--no-isa-matrix", "--no-whole-programs")
    assert both["test_bench.py"] == set()
    assert both["test_trust.py"] == full["test_trust.py"]
    # The relu kernel's tests run on every ISA through the isa fixture; some do not need to.
    assert set() < both["ops/test_relu.py"] < full["ops/test_relu.py"]
    assert not any(
        i.startswith("test_relu_and_backward_match_twins[") for i in both["ops/test_relu.py"]
    )


@pytest.mark.parametrize(
    ("select", "n"), [([], 3), (["-k", "not float64"], 2)], ids=["all-3", "k-2"]
)
def test_shards_split_a_run_into_disjoint_parts_that_cover_it(select, n):
    # With -k: the shards split what -k leaves. (Split before -k, the float32 and float64 cases,
    # which alternate, went to different shards: "not float64" then left 26 of relu's tests in
    # one shard and 20 in the other, and tools/memcheck.sh's subset was split 361 / 537 here,
    # 244 / 357 under valgrind.)
    full = collected("--no-whole-programs", *select)
    everything = {(f, i) for f, ids in full.items() for i in ids}
    parts = [collected("--no-whole-programs", *select, f"--shard={k}/{n}") for k in range(n)]
    sets = [{(f, i) for f, ids in part.items() for i in ids} for part in parts]
    assert set().union(*sets) == everything
    assert sum(map(len, sets)) == len(everything)  # disjoint
    # Interleaved: each shard holds a like share of each file (a file's tests are consecutive).
    for f in full:
        sizes = [len(part[f]) for part in parts]
        assert max(sizes) - min(sizes) <= 1, (f, sizes)
    totals = [len(s) for s in sets]
    assert max(totals) - min(totals) <= 1, totals


def test_a_bad_shard_is_a_usage_error():
    for bad in ["2/2", "1", "a/2", "-1/2", "1/0"]:
        out = subprocess.run(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
             f"--shard={bad}", str(HERE / "test_trust.py")],
            cwd=HERE.parent, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert out.returncode == 4, (bad, out.stdout, out.stderr)
        assert f"--shard: expected I/N with 0 <= I < N, got {bad!r}" in out.stderr, bad
