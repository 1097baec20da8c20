"""The benchmark command runs end to end (timings themselves are not tested) and every row's
sides agree before anything is timed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from simdnn import bench
from simdnn.__main__ import main


def test_bench_quick_rows(tmp_path, capsys):
    out = tmp_path / "bench.json"
    png = tmp_path / "bench.png"
    argv = [
        "bench",
        "--quick",
        "--no-progress",
        "--no-torch",
        "--filter",
        "gemm 256x|max_pool2d 2x2",
    ]
    assert main([*argv, "--json", str(out), "--plot", str(png)]) == 0
    text = capsys.readouterr().out
    assert "| gemm | 256x256x256 | float32 |" in text
    assert "| max_pool2d | 2x2/s2 64x64x32x32 | float32 |" in text
    assert "machine limits (measured)" in text
    data = json.loads(out.read_text())
    rows = {r["group"]: r for r in data["results"]}
    assert set(rows) == {"gemm", "max_pool2d"}
    for row in rows.values():
        assert row["vs_numpy"] > 0
        assert 0 < row["of_peak"] < 5
        assert 0 < row["scaling"] < 2
        assert row["native_1_rate"] > 0
    assert rows["gemm"]["unit"] == "GFLOP/s"
    assert rows["max_pool2d"]["unit"] == "GB/s"
    assert data["limits"]["fma_gflops_n"] > 0
    assert data["machine"]["isa"]
    assert png.stat().st_size > 1000


@pytest.mark.parametrize("case", bench.all_cases(), ids=lambda c: c.label)
def test_every_row_checks_native_against_numpy(case):
    dtype = np.dtype(np.float32)
    args = case.make(np.random.default_rng(0), dtype)
    bench.check_close(case, case.native(*args), case.numpy(*args), dtype)


def test_check_close_catches_a_wrong_result():
    case = bench.gemm_cases()[0]
    args = case.make(np.random.default_rng(0), np.dtype(np.float32))
    got = case.native(*args)
    with pytest.raises(AssertionError, match="results differ"):
        bench.check_close(case, got + 1.0, case.numpy(*args), np.dtype(np.float32))
