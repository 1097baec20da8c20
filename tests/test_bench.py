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
        # Ratios of timings: only their sign and how each is derived are checked, not their size.
        # A quick run's 1-thread and all-thread timings on a loaded machine (CI runs shards side
        # by side) once read 2.23 for the parallel efficiency of 2 threads.
        assert row["vs_numpy"] == pytest.approx(row["numpy_s"] / row["native_s"])
        assert row["of_peak"] == pytest.approx(row["native_rate"] / row["peak"])
        assert row["scaling"] == pytest.approx(row["native_1_s"] / row["native_s"] / row["threads"])
        assert all(row[k] > 0 for k in ("vs_numpy", "of_peak", "scaling", "native_1_rate"))
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


# ------------------------------------------------------------------------------------------------
# The convolution sweep


def test_conv_sweep_shapes_cover_the_ranges():
    from simdnn.bench import sweep

    shapes = sweep.sweep_shapes()
    assert shapes == sweep.sweep_shapes()  # a fixed draw
    assert len(shapes) == 48
    assert len({s.name for s in shapes}) == 48
    kinds = [s.name.split()[0] for s in shapes]
    assert kinds.count("dense") == 24
    assert kinds.count("grouped") == kinds.count("depthwise") == 12
    assert {s.r for s in shapes} == set(sweep.KERNELS)
    assert {s.stride for s in shapes} == {1, 2}
    assert {s.padding for s in shapes} == {0, 1, 2, 3}
    assert min(s.c for s in shapes) <= 4
    assert max(s.c for s in shapes) == 512
    assert {s.n for s in shapes} >= {1, 64}
    assert {s.h for s in shapes} >= {7, 112}
    for s in shapes:
        assert sweep.MIN_FLOPS <= s.flops <= sweep.MAX_FLOPS
        assert s.c % s.groups == 0
        assert s.k % s.groups == 0
        assert min(s.out) >= 1
        if s.name.startswith("depthwise"):
            assert s.c == s.k == s.groups


def test_conv_sweep_summary():
    from simdnn.bench import sweep

    rows = [
        sweep.SweepRow("conv2d", "a", 1e6, 1.0, 2.0),  # 2x
        sweep.SweepRow("conv2d", "b", 1e6, 2.0, 1.0),  # 0.5x
        sweep.SweepRow("conv2d_backward_data", "a", 1e6, 1.0, 1.0),  # 1x counts as at or above
    ]
    s = sweep.summary(rows)
    assert s["all"]["rows"] == 3
    assert s["all"]["median"] == 1.0
    assert s["all"]["worst"] == "conv2d b"
    assert s["all"]["worst_ratio"] == 0.5
    assert s["all"]["share_at_or_above"] == pytest.approx(2 / 3)
    assert s["conv2d"]["median"] == pytest.approx(1.25)
    assert "conv2d_backward_weights" not in s
    table = sweep.format_table(rows)
    assert "| all | 3 | 0.50x (conv2d b) | 1.00x | 67% |" in table


def test_conv_sweep_runs_against_pytorch(tmp_path, capsys):
    pytest.importorskip("torch")  # PyTorch is never a dependency; where it is installed:
    from simdnn.bench import sweep

    shapes = [s for s in sweep.sweep_shapes() if s.flops < 5e6][:2]
    rows = sweep.run(1, True, __import__("torch"), shapes=shapes, progress=False)
    assert [r.op for r in rows[:3]] == [
        "conv2d",
        "conv2d_backward_data",
        "conv2d_backward_weights",
    ]
    assert all(r.native_s > 0 and r.torch_s > 0 for r in rows)


def test_conv_sweep_needs_pytorch(capsys):
    assert main(["bench", "--conv-sweep", "--no-torch"]) == 2
    assert "PyTorch" in capsys.readouterr().err
