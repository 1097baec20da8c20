"""Scaling of data-parallel training (simdnn.distributed) against one process with all cores.

    python benchmarks/distributed_scaling.py [--epochs 6] [--repeat 3] [--ranks 1,2,4]

For p ranks it runs ``mpiexec -n p`` with cores / p kernel threads per rank (1 when p exceeds
the cores: oversubscribed, marked so), and two single processes without MPI: all cores as
OpenMP threads (the baseline "1 x C") and one thread ("1 x 1"). Each trains the digits demo's
models (ConvNet and MLP, global batch 32). Reported: the time per epoch (the median of a run's
epochs after a warm-up one; the fastest of the interleaved runs, the least disturbed on a shared
machine, with every run listed), the speed-up against 1 x C, the classic efficiency
T(1 x 1) / (p * T(p ranks x 1 thread)), and the fraction of each epoch spent in the collectives
(the allreduce plus waiting for the slowest rank), with the allreduce alone estimated as
steps x its median latency measured in the same job. Needs mpi4py, an MPI runtime, scikit-learn
and matplotlib (``pip install ".[distributed,examples]"`` in the clone).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from typing import Any

import numpy as np

HERE = os.path.abspath(__file__)
BATCH = 32


def worker(epochs: int, distributed: bool) -> None:
    """One configuration: prints one JSON line per model on rank 0."""
    import simdnn
    from simdnn import demos, nn, optim

    dist = None
    if distributed:
        from simdnn import distributed as dist

        dist.init()
    x, y, _, _ = demos.load_digits_split()
    for name, build in (("ConvNet", demos.build_convnet), ("MLP", demos.build_mlp)):
        model = build(seed=1)
        comm: list[float] = []

        class CommTime(simdnn.Callback):
            def __init__(self, comm: list[float]) -> None:
                self.comm = comm

            def on_epoch_end(self, epoch: int, logs: dict[str, float], model: Any) -> bool:
                if dist is not None:
                    self.comm.append(dist.comm_stats(reset=True)["seconds"])
                return False

        if dist is not None:
            dist.comm_stats(reset=True)
        history = simdnn.fit(
            model,
            nn.CrossEntropyLoss(),
            optim.Adam(model.parameters(), lr=1e-3),
            x,
            y,
            epochs=epochs,
            batch_size=BATCH,
            seed=2,
            progress=False,
            callbacks=[CommTime(comm)],
            distributed=distributed,
        )
        times = history["epoch_time"][1:]
        row = {
            "model": name,
            "ranks": 1 if dist is None else dist.size(),
            "threads": simdnn.get_num_threads(),
            "epoch_s": statistics.median(times),
            "steps": -(-len(x) // BATCH),
        }
        if dist is not None and dist.size() > 1:
            # The slowest rank's in-collective time per epoch, and the allreduce alone.
            row["comm_s"] = dist.allreduce(statistics.median(comm[1:]), op="max")
            n = sum(p.data.size for p in model.parameters()) + 4
            check = dist.check(sizes=(n,), repeats=100)
            row["allreduce_s"] = check["allreduce"][0]["seconds"]
        if dist is None or dist.is_main():
            print(json.dumps(row), flush=True)


def run(cmd: list[str], env: dict[str, str]) -> list[dict[str, Any]]:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=6, help="epochs per run, the first a warm-up")
    parser.add_argument("--repeat", type=int, default=3, help="runs of every configuration")
    parser.add_argument("--ranks", default="1,2,4", help="rank counts, comma-separated")
    parser.add_argument("--worker", choices=["plain", "mpi"], help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.epochs < 2:
        parser.error("--epochs must be >= 2 (the first is a warm-up)")
    if opts.worker:
        worker(opts.epochs, distributed=opts.worker == "mpi")
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or "mpiexec"
    base = [sys.executable, HERE, "--epochs", str(opts.epochs)]
    configs: list[tuple[str, list[str], dict[str, str]]] = [
        (f"1 x {cores} (OpenMP)", [*base, "--worker", "plain"], {"OMP_NUM_THREADS": str(cores)}),
        ("1 x 1", [*base, "--worker", "plain"], {"OMP_NUM_THREADS": "1"}),
    ]
    for p in (int(v) for v in opts.ranks.split(",")):
        threads = max(1, cores // p)
        label = f"{p} rank{'s' if p > 1 else ''} x {threads}"
        label += " (oversubscribed)" if p * threads > cores else ""
        cmd = [mpiexec, "-n", str(p), *base, "--worker", "mpi"]
        configs.append((label, cmd, {"OMP_NUM_THREADS": str(threads)}))
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rep in range(opts.repeat):
        for label, cmd, extra in configs:
            env = {**os.environ, **extra}
            for row in run(cmd, env):
                results.setdefault((label, row["model"]), []).append(row)
            print(f"run {rep + 1}/{opts.repeat}: {label} done", file=sys.stderr, flush=True)

    import simdnn

    cpu = _cpu_name()
    # On a shared machine other processes slow whole runs down: the fastest of the runs (each
    # the median of its epochs) is the least disturbed; every run is listed.
    print(f"\n{cpu}, {cores} cores; best of {opts.repeat} interleaved runs, each the median of "
          f"{opts.epochs - 1} epochs after a warm-up; global batch {BATCH}\n")  # fmt: skip
    print("| model | ranks x threads | ms per epoch | every run | vs 1 x C | T1/(p Tp) "
          "| in collectives | allreduce alone |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for model in ("ConvNet", "MLP"):
        base_t = _best(results[(configs[0][0], model)])["epoch_s"]
        t1 = _best(results[("1 x 1", model)])["epoch_s"]
        for label, _, _ in configs:
            rows = results[(label, model)]
            best = _best(rows)
            t = best["epoch_s"]
            p = best["ranks"]
            eff = f"{100 * t1 / (p * t):.0f}%" if best["threads"] == 1 else "-"
            spread = ", ".join(f"{1e3 * r['epoch_s']:.0f}" for r in rows)
            comm = alone = "-"
            if "comm_s" in best:
                comm = f"{100 * best['comm_s'] / t:.0f}%"
                alone = f"{100 * best['steps'] * best['allreduce_s'] / t:.1f}%"
            print(
                f"| {model} | {label} | {1e3 * t:.1f} | {spread} | {base_t / t:.2f}x | {eff} "
                f"| {comm} | {alone} |"
            )
    print(f"\nsimdnn {simdnn.__version__}, ISA {simdnn.get_isa()}, NumPy {np.__version__}")


def _best(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return min(rows, key=lambda r: r["epoch_s"])


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
