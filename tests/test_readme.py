"""Every Python block of README.md runs as written (each in a fresh interpreter, in an empty
folder), and the outputs the README shows for the concept commands are what they print, so an
example can never drift from the API."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _text() -> str:
    if not README.exists():  # the tests copied beside an installed wheel without the README
        pytest.fail(f"{README} is missing: copy README.md beside tests/ to run these tests")
    return README.read_text()


def python_blocks() -> list[tuple[int, str]]:
    """(line number, code) of every ```python block."""
    if not README.exists():
        return []
    out = []
    lines = README.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i + 1
            j = start
            while lines[j].strip() != "```":
                j += 1
            out.append((start + 1, "\n".join(lines[start:j])))
            i = j
        i += 1
    return out


def shown_output(command: str) -> list[str]:
    """The lines of the ``` block that follows the README's mention of `command`."""
    text = _text()
    at = text.index(f"`{command}")
    block = re.search(r"```\n(.*?)```", text[at:], re.S)
    assert block is not None, command
    return block.group(1).strip().splitlines()


def test_readme_has_python_examples():
    assert len(python_blocks()) >= 3


@pytest.mark.parametrize(("line", "code"), python_blocks(), ids=lambda v: str(v)[:12])
def test_readme_python_block_runs(line, code, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"README.md line {line}:\n{proc.stderr[-3000:]}"


def test_readme_shows_what_equivariance_prints():
    from simdnn import demos

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        demos.equivariance()
    assert buf.getvalue().strip().splitlines() == shown_output("python -m simdnn equivariance")


def test_readme_shows_what_vanishing_prints():
    from simdnn import demos

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        demos.vanishing()
    printed = buf.getvalue().strip().splitlines()
    shown = shown_output("python -m simdnn vanishing")
    assert printed[:2] == shown[:2]
    # Each relative norm to the 3 digits shown (the last digit may differ with the ISA's
    # rounding of sums).
    for got, want in zip(printed[2:], shown[2:]):
        g, w = got.split(), want.split()
        assert g[0] == w[0]
        if not w[0].isdigit():
            assert got == want
            continue
        for a, b in zip(g[1:], w[1:]):
            assert float(a) == pytest.approx(float(b), rel=5e-3), (got, want)


def test_readme_shows_what_the_deep_lab_prints():
    """The lab's table: the same arms and the same story. Accuracies within 5 points (an ISA's
    rounding moves them by about one), except plain ReLU + He, whose loss jumps about at this
    learning rate, so rounding alone moves it (63.2% on AVX-512 and AVX2, 65.7% on the scalar
    kernels; 86.1% and 93.6% before the bias and the loss changed their rounding; 63-94% over
    seeds 0-3): 15 points for that row."""
    from simdnn import deep

    shown = shown_output("python -m simdnn deep")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        deep.deep_lab()
    printed = buf.getvalue()
    for row in shown[1:]:
        name, acc = re.match(r"(.+?)\s+([0-9.]+)%", row).groups()
        got = re.search(re.escape(name) + r"\s+([0-9.]+)%", printed)
        assert got is not None, name
        slack = 15 if name == "ReLU + He" else 5
        assert abs(float(got.group(1)) - float(acc)) <= slack, (name, got.group(1), acc)


def test_readme_installs_no_extra_of_an_unreleased_package():
    """simdnn has no release on the package index, so `pip install "simdnn[...]"` would find
    nothing: install lines name the packages, or the extra of the clone (`".[...]"`)."""
    text = _text()
    bad = [line for line in text.splitlines() if re.search(r"pip install\s+[\"']?simdnn\[", line)]
    assert not bad, bad
