"""Benchmarks: every native kernel against its pure-NumPy twin, same thread count on both sides.

``python -m simdnn bench`` runs them and prints a Markdown table; ``benchmarks/`` holds the
pytest-benchmark files over the same cases.

How the timing is kept fair:

- both sides get the same number of threads (simdnn's OpenMP team, NumPy's BLAS pool pinned with
  threadpoolctl);
- each side is timed in its own block, after a warm-up of at least ``WARMUP_S`` seconds: a BLAS
  pool keeps spinning for about 0.1 s after its last call and takes a core from whatever runs
  next, so interleaving single calls would charge one side for the other's idle threads;
- every call is timed on its own and the median is reported, so that a stray stall of the
  machine (seen here: 10 ms pauses under virtualisation) does not move the figure;
- small inputs are rotated among several copies so that neither side runs from a warm L1/L2 that a
  real workload would not give it;
- both sides' results are compared before anything is timed.
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

from . import _runtime, ops, reference

# A BLAS pool that was just used spins for ~0.1 s (measured: OpenBLAS 0.3.31 here); warm up
# longer than that before timing a block.
WARMUP_S = 0.15
# Rotate inputs until the copies together exceed this many bytes (above a 2 MiB L2).
ROTATE_BYTES = 8 << 20


@dataclasses.dataclass
class Case:
    """One benchmark row: an op on fixed shapes, native against the NumPy twin."""

    group: str
    name: str
    flops: float  # floating-point operations of one call (0 for memory-bound ops)
    nbytes: float  # bytes read + written by one call
    # make(rng, dtype) -> list of argument tuples (rotated copies)
    make: Callable[[np.random.Generator, np.dtype], tuple[Any, ...]]
    native: Callable[..., Any]
    numpy: Callable[..., Any]
    rtol: float = 1e-4


def _gemm_case(
    name: str, m: int, k: int, n: int, trans_a: bool = False, trans_b: bool = False
) -> Case:
    def make(rng: np.random.Generator, dtype: np.dtype) -> tuple[Any, ...]:
        a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
        b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
        return (a, b)

    def native(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return ops.gemm(a, b, trans_a=trans_a, trans_b=trans_b)

    # The strongest NumPy formulation: one BLAS call on transposed views (no copies).
    if trans_a and trans_b:

        def numpy_fn(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return a.T @ b.T
    elif trans_a:

        def numpy_fn(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return a.T @ b
    elif trans_b:

        def numpy_fn(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return a @ b.T
    else:
        numpy_fn = reference.matmul  # type: ignore[assignment]

    return Case(
        group="gemm",
        name=name,
        flops=2.0 * m * n * k,
        nbytes=4.0 * (m * k + k * n + m * n),
        make=make,
        native=native,
        numpy=numpy_fn,
    )


def gemm_cases() -> list[Case]:
    """Squares 256-2048 and the products of training an MLP layer and a wide classifier."""
    cases = [_gemm_case(f"{s}x{s}x{s}", s, s, s) for s in (256, 512, 1024, 2048)]
    cases += [
        # Linear(784 -> 256) on a batch of 64: forward Y = X.W, then dX = dY.W^T and dW = X^T.dY.
        _gemm_case("mlp fwd 64x784 . 784x256", 64, 784, 256),
        _gemm_case("mlp dX 64x256 . (784x256)^T", 64, 256, 784, trans_b=True),
        _gemm_case("mlp dW (64x784)^T . 64x256", 784, 64, 256, trans_a=True),
        _gemm_case("wide 128x4096 . 4096x1000", 128, 4096, 1000),
    ]
    return cases


@dataclasses.dataclass(frozen=True)
class ConvShape:
    """One convolution layer: x (N, C, H, W), w (K, C/groups, R, S)."""

    name: str
    n: int
    c: int
    h: int
    w: int
    k: int
    r: int
    stride: int = 1
    padding: int = 0
    groups: int = 1

    def kwargs(self) -> dict[str, int]:
        return {"stride": self.stride, "padding": self.padding, "groups": self.groups}

    @property
    def out(self) -> tuple[int, int]:
        p = (self.h + 2 * self.padding - self.r) // self.stride + 1
        q = (self.w + 2 * self.padding - self.r) // self.stride + 1
        return p, q

    @property
    def flops(self) -> float:
        p, q = self.out
        return 2.0 * self.n * self.k * (self.c // self.groups) * self.r * self.r * p * q


CONV_SHAPES = [
    ConvShape("lenet1 1->20 5x5 28x28 N64", 64, 1, 28, 28, 20, 5),
    ConvShape("lenet2 20->50 5x5 12x12 N64", 64, 20, 12, 12, 50, 5),
    ConvShape("3x3 64->64 32x32 N32", 32, 64, 32, 32, 64, 3, padding=1),
    ConvShape("3x3 128->128 28x28 N16", 16, 128, 28, 28, 128, 3, padding=1),
    ConvShape("3x3/s2 64->128 32x32 N16", 16, 64, 32, 32, 128, 3, stride=2, padding=1),
    ConvShape("1x1 128->128 28x28 N16", 16, 128, 28, 28, 128, 1),
    ConvShape("dw3x3 128 28x28 N16", 16, 128, 28, 28, 128, 3, padding=1, groups=128),
]


def _conv_cases(shape: ConvShape) -> list[Case]:
    p, q = shape.out
    x_shape = (shape.n, shape.c, shape.h, shape.w)
    w_shape = (shape.k, shape.c // shape.groups, shape.r, shape.r)
    y_shape = (shape.n, shape.k, p, q)
    kw = shape.kwargs()
    x_elems, w_elems, y_elems = (int(np.prod(s)) for s in (x_shape, w_shape, y_shape))

    def make_fwd(rng: np.random.Generator, dtype: np.dtype) -> tuple[Any, ...]:
        return (
            rng.standard_normal(x_shape).astype(dtype),
            rng.standard_normal(w_shape).astype(dtype),
            rng.standard_normal(shape.k).astype(dtype),
        )

    def make_bwd_data(rng: np.random.Generator, dtype: np.dtype) -> tuple[Any, ...]:
        return (
            rng.standard_normal(y_shape).astype(dtype),
            rng.standard_normal(w_shape).astype(dtype),
        )

    def make_bwd_weights(rng: np.random.Generator, dtype: np.dtype) -> tuple[Any, ...]:
        return (
            rng.standard_normal(x_shape).astype(dtype),
            rng.standard_normal(y_shape).astype(dtype),
        )

    return [
        Case(
            group="conv2d",
            name=shape.name,
            flops=shape.flops,
            nbytes=4.0 * (x_elems + w_elems + y_elems),
            make=make_fwd,
            native=lambda x, w, b: ops.conv2d(x, w, b, **kw),
            numpy=lambda x, w, b: reference.conv2d(x, w, b, **kw),
        ),
        Case(
            group="conv2d_backward_data",
            name=shape.name,
            flops=shape.flops,
            nbytes=4.0 * (x_elems + w_elems + y_elems),
            make=make_bwd_data,
            native=lambda dy, w: ops.conv2d_backward_data(dy, w, x_shape, **kw),
            numpy=lambda dy, w: reference.conv2d_backward_data(dy, w, x_shape, **kw),
        ),
        Case(
            group="conv2d_backward_weights",
            name=shape.name,
            flops=shape.flops,
            nbytes=4.0 * (x_elems + w_elems + y_elems),
            make=make_bwd_weights,
            native=lambda x, dy: ops.conv2d_backward_weights(x, dy, w_shape, **kw),
            numpy=lambda x, dy: reference.conv2d_backward_weights(x, dy, w_shape, **kw),
        ),
    ]


def conv_cases() -> list[Case]:
    """LeNet's two layers, 3x3 convolutions of 64-128 channels, a stride-2 down-sampling, a 1x1
    and a depthwise 3x3; forward, backward-data and backward-weights each."""
    return [case for shape in CONV_SHAPES for case in _conv_cases(shape)]


def _pool_case(op: str, backward: bool, k: int, padding: int, shape: tuple[int, ...]) -> Case:
    """One pooling row: op "max" or "avg", a k x k window with stride 2, float32 byte counts.

    run_case scales the bytes by itemsize / 4, the uint8 indices included: float64 max-pool rows
    count them twice, which overstates their rate by about 2%.
    """
    n, c, h, w = shape
    p = (h + 2 * padding - k) // 2 + 1
    q = (w + 2 * padding - k) // 2 + 1
    x_elems, y_elems = n * c * h * w, n * c * p * q
    idx_bytes = y_elems * (1 if k * k <= 256 else 4)
    window = f"{k}x{k}/s2" + (f" p{padding}" if padding else "")
    name = f"{window} {'x'.join(map(str, shape))}"
    fwd_native = ops.max_pool2d if op == "max" else ops.avg_pool2d
    fwd_numpy = reference.max_pool2d if op == "max" else reference.avg_pool2d

    if not backward:

        def make(rng: np.random.Generator, dtype: np.dtype) -> tuple[Any, ...]:
            return (rng.standard_normal(shape).astype(dtype), k, 2, padding)

        # Read x, write y (and the indices).
        nbytes = 4.0 * (x_elems + y_elems) + (idx_bytes if op == "max" else 0)
        return Case(f"{op}_pool2d", name, 0, nbytes, make, fwd_native, fwd_numpy)

    if op == "max":

        def make(rng: np.random.Generator, dtype: np.dtype) -> tuple[Any, ...]:
            x = rng.standard_normal(shape).astype(dtype)
            _, idx = ops.max_pool2d(x, k, 2, padding)
            dy = rng.standard_normal(idx.shape).astype(dtype)
            return (dy, idx, shape, k, 2, padding)

        # Read dy and the indices, write dx.
        nbytes = 4.0 * (y_elems + x_elems) + idx_bytes
        return Case(
            "max_pool2d_backward",
            name,
            0,
            nbytes,
            make,
            ops.max_pool2d_backward,
            reference.max_pool2d_backward,
        )

    def make(rng: np.random.Generator, dtype: np.dtype) -> tuple[Any, ...]:
        dy = rng.standard_normal((n, c, p, q)).astype(dtype)
        return (dy, shape, k, 2, padding)

    return Case(
        "avg_pool2d_backward",
        name,
        0,
        4.0 * (y_elems + x_elems),
        make,
        ops.avg_pool2d_backward,
        reference.avg_pool2d_backward,
    )


def pool_cases() -> list[Case]:
    """Max and average pooling of a ConvNet's feature maps (batch 64, 64 channels, 32 x 32), the
    2x2/s2 and 3x3/s2 padding 1 windows, forward and backward. Memory-bound: rated in GB/s of x,
    y (and indices) moved."""
    shape = (64, 64, 32, 32)
    return [
        _pool_case(op, backward, k, padding, shape)
        for op in ("max", "avg")
        for backward in (False, True)
        for k, padding in ((2, 0), (3, 1))
    ]


def all_cases() -> list[Case]:
    return gemm_cases() + conv_cases() + pool_cases()


# ------------------------------------------------------------------------------------------------
# Timing


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """simdnn and NumPy's BLAS both limited to n threads inside the block."""
    previous = _runtime.get_num_threads()
    _runtime.set_num_threads(n)
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


def _time_block(
    fn: Callable[..., Any], args: Sequence[tuple[Any, ...]], min_time: float, min_calls: int
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
    times: list[float] = []
    t_end = clock() + min_time
    while len(times) < min_calls or clock() < t_end:
        a = args[i % len(args)]
        t0 = clock()
        fn(*a)
        times.append(clock() - t0)
        i += 1
    return times


@dataclasses.dataclass
class Result:
    group: str
    name: str
    dtype: str
    threads: int
    native_s: float
    numpy_s: float
    flops: float
    nbytes: float

    @property
    def ratio(self) -> float:
        return self.numpy_s / self.native_s

    def rate(self, seconds: float) -> float:
        """GFLOP/s for compute-bound rows, GB/s for memory-bound ones."""
        return (self.flops if self.flops else self.nbytes) / seconds / 1e9


def run_case(case: Case, dtype: np.dtype, threads: int, quick: bool = False) -> Result:
    rng = np.random.default_rng(1234)
    first = case.make(rng, dtype)
    per_copy = sum(x.nbytes for x in first if isinstance(x, np.ndarray))
    copies = max(1, min(8, -(-ROTATE_BYTES // max(per_copy, 1))))
    args = [first] + [case.make(rng, dtype) for _ in range(copies - 1)]
    with _threads(threads):
        got = case.native(*args[0])
        want = case.numpy(*args[0])
        _check_close(case, got, want, dtype)
        min_time = 0.1 if quick else 0.4
        min_calls = 3 if quick else 7
        rounds = 1 if quick else 3
        native_t: list[float] = []
        numpy_t: list[float] = []
        for r in range(rounds):
            order = (True, False) if r % 2 == 0 else (False, True)
            for is_native in order:
                fn = case.native if is_native else case.numpy
                (native_t if is_native else numpy_t).extend(
                    _time_block(fn, args, min_time, min_calls)
                )
    return Result(
        group=case.group,
        name=case.name,
        dtype=np.dtype(dtype).name,
        threads=threads,
        native_s=statistics.median(native_t),
        numpy_s=statistics.median(numpy_t),
        flops=case.flops,
        nbytes=case.nbytes * np.dtype(dtype).itemsize / 4,
    )


def _check_close(case: Case, got: Any, want: Any, dtype: np.dtype) -> None:
    got_t = got if isinstance(got, tuple) else (got,)
    want_t = want if isinstance(want, tuple) else (want,)
    rtol = case.rtol if np.dtype(dtype) == np.float32 else 1e-10
    for g, w in zip(got_t, want_t):
        scale = max(float(np.max(np.abs(w))), 1.0) if np.size(w) else 1.0
        err = float(np.max(np.abs(np.asarray(g, np.float64) - w))) if np.size(w) else 0.0
        if err > rtol * scale * 10:
            raise AssertionError(
                f"{case.group} {case.name}: native and NumPy results differ (max error {err:.3g})"
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
    return desc


def format_table(results: Sequence[Result]) -> str:
    lines = [
        "| op | shape | dtype | threads | simdnn | rate | NumPy | rate | speed-up |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        unit = "GFLOP/s" if r.flops else "GB/s"
        lines.append(
            f"| {r.group} | {r.name} | {r.dtype} | {r.threads} | {_fmt_time(r.native_s)} | "
            f"{r.rate(r.native_s):.0f} {unit} | {_fmt_time(r.numpy_s)} | "
            f"{r.rate(r.numpy_s):.0f} {unit} | {r.ratio:.2f}x |"
        )
    return "\n".join(lines)


def _fmt_time(seconds: float) -> str:
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m simdnn bench",
        description="Time every simdnn kernel against its pure-NumPy twin.",
    )
    parser.add_argument("--quick", action="store_true", help="one short round per row")
    parser.add_argument(
        "--threads", type=int, default=None, help="threads for both sides (default: all)"
    )
    parser.add_argument(
        "--dtype", choices=["float32", "float64", "both"], default="both", help="element type"
    )
    parser.add_argument("--filter", default=None, help="only rows whose 'op shape' matches REGEX")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write results as JSON")
    opts = parser.parse_args(argv)

    threads = opts.threads or _runtime.get_num_threads()
    dtypes = ["float32", "float64"] if opts.dtype == "both" else [opts.dtype]
    cases = all_cases()
    if opts.filter:
        pattern = re.compile(opts.filter)
        cases = [c for c in cases if pattern.search(f"{c.group} {c.name}")]
    machine = machine_description()
    print(
        f"simdnn bench: {machine['cpu']}, {threads} thread(s), ISA {machine['isa']}, "
        f"NumPy {machine['numpy']} ({machine.get('numpy_blas', 'BLAS unknown')})",
        flush=True,
    )
    results = []
    for dtype in dtypes:
        for case in cases:
            res = run_case(case, np.dtype(dtype), threads, quick=opts.quick)
            results.append(res)
            print(
                f"  {res.group} {res.name} {res.dtype}: {res.ratio:.2f}x",
                file=sys.stderr,
                flush=True,
            )
    print()
    print(format_table(results))
    if opts.json:
        payload = {
            "machine": machine,
            "threads": threads,
            "results": [
                dataclasses.asdict(r) | {"ratio": r.ratio, "native_rate": r.rate(r.native_s)}
                for r in results
            ],
        }
        with open(opts.json, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)
    return 0
