"""The suite's own options (tests/conftest.py), which tools/test_each_isa.py and
tools/build_wheels.sh use to leave tests out of their later runs: each must leave out what it
names and nothing else."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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
        m = re.match(r"(?:.*/)?tests/(\S+\.py)::(\S+)$", line.strip())
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
