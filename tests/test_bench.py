"""The benchmark command runs end to end (timings themselves are not tested)."""

from __future__ import annotations

import json

from simdnn import bench
from simdnn.__main__ import main


def test_bench_quick_row(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert (
        main(["bench", "--quick", "--dtype", "float32", "--filter", "256x256", "--json", str(out)])
        == 0
    )
    table = capsys.readouterr().out
    assert "| gemm | 256x256x256 | float32 |" in table
    data = json.loads(out.read_text())
    (row,) = data["results"]
    assert row["ratio"] > 0
    assert row["native_rate"] > 0
    assert data["machine"]["isa"]


def test_every_case_checks_native_against_numpy():
    import numpy as np

    for case in bench.gemm_cases():
        args = case.make(np.random.default_rng(0), np.dtype(np.float32))
        bench._check_close(case, case.native(*args), case.numpy(*args), np.dtype(np.float32))
