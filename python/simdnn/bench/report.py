"""Timing, machine limits and the report of ``python -m simdnn bench``.

Fair by construction:

- every side runs on the same number of threads: simdnn's OpenMP team, NumPy's BLAS pool
  (pinned with threadpoolctl) and PyTorch's intra-op pool (``torch.set_num_threads``);
- each side is timed in its own block after a warm-up of at least ``WARMUP_S`` seconds: a BLAS
  pool keeps spinning for about 0.1 s after its last call and takes a core from whatever runs
  next, so interleaving single calls would charge one side for the other's idle threads;
- every call is timed on its own and the median is reported, so a stray stall of the machine
  (10 ms pauses were seen under virtualisation) does not move the figure;
- inputs are rotated among copies so that neither side runs from caches a real workload would
  not give it;
- the sides' results are compared before anything is timed.

Each row is reported at all threads and at one thread (the native side), with the parallel
efficiency, and as a fraction of this machine's limit: the FMA peak measured at start-up by a
small probe kernel for compute-bound rows, the streaming bandwidth (also measured) for
memory-bound ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from .. import _core, _runtime
from .cases import Args, Case, all_cases

# A BLAS pool that was just used spins for ~0.1 s (measured: OpenBLAS 0.3.31 here); warm up
# longer than that before timing a block.
WARMUP_S = 0.15
# Rotate inputs until the copies together exceed this many bytes (above a 2 MiB L2).
ROTATE_BYTES = 8 << 20


def torch_module() -> Any | None:
    """PyTorch when importable (never a dependency of simdnn)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


@contextlib.contextmanager
def threads(n: int, torch: Any | None = None) -> Iterator[None]:
    """simdnn, NumPy's BLAS and (if given) PyTorch limited to n threads inside the block."""
    previous = _runtime.get_num_threads()
    previous_torch = torch.get_num_threads() if torch is not None else None
    _runtime.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is in the bench extra
        limiter: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        print(
            "warning: threadpoolctl is not installed; NumPy's BLAS thread count is not pinned",
            file=sys.stderr,
        )
    else:
        limiter = threadpool_limits(limits=n, user_api="blas")
    try:
        with limiter:
            yield
    finally:
        _runtime.set_num_threads(previous)
        if torch is not None:
            torch.set_num_threads(previous_torch)


def time_block(
    fn: Callable[..., Any], args: Sequence[Args], min_time: float, min_calls: int
) -> list[float]:
    """Per-call seconds of fn over rotated args, after a warm-up of WARMUP_S."""
    clock = time.perf_counter
    i = 0
    t_end = clock() + WARMUP_S
    while True:
        fn(*args[i % len(args)])
        i += 1
        if clock() >= t_end and i >= 2:
            break
    out: list[float] = []
    t_end = clock() + min_time
    while len(out) < min_calls or clock() < t_end:
        a = args[i % len(args)]
        t0 = clock()
        fn(*a)
        out.append(clock() - t0)
        i += 1
    return out


@dataclasses.dataclass
class Limits:
    """This machine's measured limits at one thread and at all threads."""

    threads: int
    fma_gflops_1: float  # float32 FMA peak, one thread
    fma_gflops_n: float
    stream_gbs_1: float  # streaming bandwidth, bytes read + written
    stream_gbs_n: float

    @classmethod
    def measure(cls, n: int, quick: bool) -> Limits:
        seconds = 0.1 if quick else 0.3
        # A 48 MB working set: the size of the memory-bound rows' data (the pooling rows move
        # 16-36 MB), above any L2. (384 MB measured DRAM here: 30 GB/s against 56 on 2 threads.)
        size = 48 << 20
        return cls(
            threads=n,
            fma_gflops_1=max(_core.probe_fma_peak(1, seconds) for _ in range(2)),
            fma_gflops_n=max(_core.probe_fma_peak(n, seconds) for _ in range(2)),
            stream_gbs_1=_core.probe_stream_bandwidth(1, size),
            stream_gbs_n=_core.probe_stream_bandwidth(n, size),
        )


@dataclasses.dataclass
class Result:
    group: str
    name: str
    dtype: str
    threads: int
    native_s: float
    native_1_s: float
    numpy_s: float
    torch_s: float | None
    flops: float
    nbytes: float
    peak: float  # the limit for this row at all threads (GFLOP/s or GB/s)

    @property
    def unit(self) -> str:
        return "GFLOP/s" if self.flops else "GB/s"

    def rate(self, seconds: float) -> float:
        return (self.flops if self.flops else self.nbytes) / seconds / 1e9

    @property
    def vs_numpy(self) -> float:
        return self.numpy_s / self.native_s

    @property
    def vs_torch(self) -> float | None:
        return None if self.torch_s is None else self.torch_s / self.native_s

    @property
    def of_peak(self) -> float:
        return self.rate(self.native_s) / self.peak

    @property
    def scaling(self) -> float:
        """Parallel efficiency: speed-up from 1 thread to all, divided by the thread count."""
        return self.native_1_s / self.native_s / self.threads

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(
            unit=self.unit,
            native_rate=self.rate(self.native_s),
            native_1_rate=self.rate(self.native_1_s),
            numpy_rate=self.rate(self.numpy_s),
            torch_rate=None if self.torch_s is None else self.rate(self.torch_s),
            vs_numpy=self.vs_numpy,
            vs_torch=self.vs_torch,
            of_peak=self.of_peak,
            scaling=self.scaling,
        )
        return d


def check_close(case: Case, got: Any, want: Any, dtype: np.dtype, what: str = "NumPy") -> None:
    """Raise when the native result and another side's differ beyond rounding."""
    got_t = got if isinstance(got, tuple) else (got,)
    want_t = want if isinstance(want, tuple) else (want,)
    if what == "PyTorch" and case.torch_outputs is not None:
        got_t, want_t = got_t[: case.torch_outputs], want_t[: case.torch_outputs]
    rtol = case.rtol if np.dtype(dtype) == np.float32 else 1e-10
    for g, w in zip(got_t, want_t):
        g = np.asarray(g.detach().numpy() if hasattr(g, "detach") else g, dtype=np.float64)
        w = np.asarray(w.detach().numpy() if hasattr(w, "detach") else w, dtype=np.float64)
        if g.shape != w.shape:
            raise AssertionError(f"{case.label}: native and {what} shapes differ")
        if not w.size:
            continue
        scale = max(float(np.max(np.abs(w))), 1.0)
        err = float(np.max(np.abs(g - w)))
        if err > rtol * scale * 10:
            raise AssertionError(
                f"{case.label}: native and {what} results differ (max error {err:.3g})"
            )


def run_case(
    case: Case, dtype: np.dtype, n_threads: int, limits: Limits, quick: bool, torch: Any | None
) -> Result:
    rng = np.random.default_rng(1234)
    first = case.make(rng, dtype)
    per_copy = sum(x.nbytes for x in first if isinstance(x, np.ndarray))
    copies = case.copies or max(1, min(8, -(-ROTATE_BYTES // max(per_copy, 1))))
    args = [first] + [case.make(rng, dtype) for _ in range(copies - 1)]
    use_torch = torch is not None and case.torch is not None and dtype == np.float32
    min_time = 0.05 if quick else 0.3
    min_calls = 3 if quick else 7
    rounds = 1 if quick else 3
    with threads(n_threads, torch):
        # PyTorch's side first: a training row copies the model's weights before any step.
        torch_pairs = [case.torch(a) for a in args] if use_torch and case.torch else []
        got = case.native(*args[0])
        check_close(case, got, case.numpy(*args[0]), dtype)
        if torch_pairs:
            fn, targs = torch_pairs[0]
            check_close(case, got, fn(*targs), dtype, "PyTorch")
        samples: dict[str, list[float]] = {"native": [], "numpy": [], "torch": []}

        def torch_call(i: int) -> Any:
            f, targs_i = torch_pairs[i]
            return f(*targs_i)

        for r in range(rounds):
            sides = ["native", "numpy"] + (["torch"] if torch_pairs else [])
            if r % 2:
                sides.reverse()
            for side in sides:
                if side == "torch":
                    samples[side] += time_block(
                        torch_call, [(i,) for i in range(len(torch_pairs))], min_time, min_calls
                    )
                else:
                    fn_side = case.native if side == "native" else case.numpy
                    samples[side] += time_block(fn_side, args, min_time, min_calls)
    with threads(1, torch):
        native_1 = time_block(case.native, args, min_time, min_calls if not quick else 2)
    itemsize_scale = np.dtype(dtype).itemsize / 4
    peak_flops = limits.fma_gflops_n / (2 if np.dtype(dtype) == np.float64 else 1)
    return Result(
        group=case.group,
        name=case.name,
        dtype=np.dtype(dtype).name,
        threads=n_threads,
        native_s=statistics.median(samples["native"]),
        native_1_s=statistics.median(native_1),
        numpy_s=statistics.median(samples["numpy"]),
        torch_s=statistics.median(samples["torch"]) if samples["torch"] else None,
        flops=case.flops,
        nbytes=case.nbytes * itemsize_scale,
        peak=peak_flops if case.flops else limits.stream_gbs_n,
    )


# ------------------------------------------------------------------------------------------------
# Report


def machine_description() -> dict[str, Any]:
    info = _runtime.cpu_info()
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    desc: dict[str, Any] = {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "isa": info["isa"],
        "caches": {k: info[k] for k in ("l1d_cache", "l2_cache", "l3_cache")},
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_info

        blas = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        if blas:
            desc["numpy_blas"] = (
                f"{blas[0].get('internal_api')} {blas[0].get('version')} "
                f"({blas[0].get('architecture')})"
            )
    torch = torch_module()
    if torch is not None:
        desc["torch"] = torch.__version__
    return desc


def _fmt_time(seconds: float) -> str:
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.0f} us"


def format_table(results: Sequence[Result], with_torch: bool) -> str:
    threads_n = results[0].threads if results else 1
    head = ["op", "shape", "dtype", "simdnn", "rate", "of peak", "vs NumPy"]
    if with_torch:
        head.append("vs PyTorch")
    head += ["1 thread", f"scaling on {threads_n}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
    for r in results:
        cells = [
            r.group,
            r.name,
            r.dtype,
            _fmt_time(r.native_s),
            f"{r.rate(r.native_s):.0f} {r.unit}",
            f"{100 * r.of_peak:.0f}%",
            f"{r.vs_numpy:.2f}x",
        ]
        if with_torch:
            cells.append("-" if r.vs_torch is None else f"{r.vs_torch:.2f}x")
        cells += [f"{r.rate(r.native_1_s):.0f} {r.unit}", f"{100 * r.scaling:.0f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: Sequence[Result], path: str, with_torch: bool) -> None:
    """A horizontal bar chart of the speed-ups over NumPy (and PyTorch), log scale."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise SystemExit("bench --plot needs matplotlib: pip install matplotlib") from err
    labels = [f"{r.group} {r.name} ({r.dtype})" for r in results]
    y = np.arange(len(results))
    fig, ax = plt.subplots(figsize=(9, 0.26 * len(results) + 1.5))
    height = 0.4 if with_torch else 0.7
    ax.barh(
        y - (height / 2 if with_torch else 0),
        [r.vs_numpy for r in results],
        height,
        label="vs NumPy",
        color="#3a78b5",
    )
    if with_torch:
        ax.barh(
            y + height / 2,
            [r.vs_torch or 0 for r in results],
            height,
            label="vs PyTorch",
            color="#e08a2c",
        )
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("speed-up of simdnn (time of the other / time of simdnn)")
    ax.set_title(
        f"simdnn against NumPy{' and PyTorch' if with_torch else ''}, {results[0].threads} threads"
        if results
        else "simdnn"
    )
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(True, axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m simdnn bench",
        description="Time every simdnn kernel and two training steps against pure NumPy "
        "(and PyTorch when it is installed), on the same thread count.",
    )
    parser.add_argument("--quick", action="store_true", help="short runs, about a minute")
    parser.add_argument(
        "--threads", type=int, default=None, help="threads for every side (default: all)"
    )
    parser.add_argument(
        "--dtype", choices=["float32", "float64", "both"], default="float32", help="element type"
    )
    parser.add_argument("--filter", default=None, help="only rows whose 'op shape' matches REGEX")
    parser.add_argument("--json", default=None, metavar="FILE", help="write every figure as JSON")
    parser.add_argument("--plot", default=None, metavar="FILE.png", help="bar chart of ratios")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--real-machine",
        action="store_true",
        help="add the real-machine section: the training rows quiet, beside a busy core, after "
        "numpy.matmul calls and in a forked child (simdnn.bench.realmachine)",
    )
    parser.add_argument(
        "--real-machine-only", action="store_true", help="only the real-machine section"
    )
    parser.add_argument(
        "--conv-sweep",
        action="store_true",
        help="only the convolution sweep: 48 layer shapes (24 with --quick), each pass against "
        "PyTorch, summarised by the worst row, the median and the share at or above PyTorch",
    )
    opts = parser.parse_args(argv)
    if opts.conv_sweep:
        return _conv_sweep(opts)
    if opts.real_machine_only:
        from . import realmachine

        torch = None if opts.no_torch else torch_module()
        print(f"simdnn bench, real machine: {realmachine.describe()}", flush=True)
        rm = realmachine.run(opts.quick, torch, opts.filter, progress=not opts.no_progress)
        print()
        print(realmachine.format_table(rm))
        return 0

    n_threads = opts.threads or _runtime.get_num_threads()
    dtypes = ["float32", "float64"] if opts.dtype == "both" else [opts.dtype]
    cases = all_cases()
    if opts.filter:
        pattern = re.compile(opts.filter)
        cases = [c for c in cases if pattern.search(c.label)]
    torch = None if opts.no_torch else torch_module()
    machine = machine_description()
    limits = Limits.measure(n_threads, opts.quick)
    print(
        f"simdnn bench: {machine['cpu']}, {n_threads} thread(s), ISA {machine['isa']}, "
        f"NumPy {machine['numpy']} ({machine.get('numpy_blas', 'BLAS unknown')})"
        + (f", PyTorch {machine['torch']}" if torch is not None else "")
    )
    print(
        f"machine limits (measured): FP32 FMA peak {limits.fma_gflops_n:.0f} GFLOP/s on "
        f"{n_threads} thread(s) ({limits.fma_gflops_1:.0f} on one); streaming bandwidth over "
        f"48 MB {limits.stream_gbs_n:.1f} GB/s ({limits.stream_gbs_1:.1f} on one)",
        flush=True,
    )
    jobs = [(case, dtype) for dtype in dtypes for case in cases]
    bar: Any = None
    if not opts.no_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="bench", file=sys.stderr, leave=False)
    results = []
    for case, dtype in jobs:
        if bar is not None:
            bar.set_postfix_str(f"{case.label} {dtype}"[:60])
        results.append(run_case(case, np.dtype(dtype), n_threads, limits, opts.quick, torch))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    with_torch = any(r.torch_s is not None for r in results)
    print()
    print(format_table(results, with_torch))
    rm_results = None
    if opts.real_machine:
        from . import realmachine

        rm_results = realmachine.run(opts.quick, torch, None, progress=not opts.no_progress)
        print()
        print(
            f"Real machine ({realmachine.describe()}): mean time per call, ratio to quiet 1 thread"
        )
        print()
        print(realmachine.format_table(rm_results))
    if opts.json:
        payload = {
            "machine": machine,
            "threads": n_threads,
            "limits": dataclasses.asdict(limits),
            "results": [r.as_dict() for r in results],
        }
        if rm_results is not None:
            payload["real_machine"] = [
                {"row": name, "lib": lib, "seconds": r} for name, lib, r in rm_results
            ]
        with open(opts.json, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)
    if opts.plot and results:
        plot(results, opts.plot, with_torch)
    return 0


def _conv_sweep(opts: Any) -> int:
    from . import sweep

    torch = None if opts.no_torch else torch_module()
    if torch is None:
        print("the convolution sweep compares with PyTorch: install it", file=sys.stderr)
        return 2
    n_threads = opts.threads or _runtime.get_num_threads()
    machine = machine_description()
    print(
        f"simdnn conv sweep: {machine['cpu']}, {n_threads} thread(s), ISA {machine['isa']}, "
        f"PyTorch {machine['torch']}, float32",
        flush=True,
    )
    rows = sweep.run(n_threads, opts.quick, torch, progress=not opts.no_progress)
    print()
    print(sweep.format_table(rows))
    if opts.json:
        payload = {
            "machine": machine,
            "threads": n_threads,
            "rows": [dataclasses.asdict(r) | {"vs_torch": r.vs_torch} for r in rows],
            "summary": sweep.summary(rows),
        }
        with open(opts.json, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)
    return 0
