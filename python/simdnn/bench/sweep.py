"""The convolution sweep: many layer shapes against PyTorch, summarised by the worst row, the
median and the share of rows at or above PyTorch.

    python -m simdnn bench --conv-sweep [--quick] [--threads N] [--json FILE]

The fixed rows of ``cases.py`` are the layers people benchmark; a library can be tuned to them
and still lose elsewhere. The sweep draws, from a fixed seed, layers over kernel sizes 1-7
(odd, and 2 and 4), strides 1-2, padding 0-3, dense, grouped and depthwise layers, 3-512
channels, batches 1-64 and planes 7-112 (kept to 2 to 400 MFLOP a call so that the sweep takes a
few minutes), and times the forward, backward-data and backward-weights pass of each against
PyTorch's (oneDNN) on the same thread count, each side in its own block after its own warm-up.
Shape legend: x (N, C, H, W), w (K, C/groups, R, R), y (N, K, P, Q).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .cases import Case, ConvShape, _conv_cases

KERNELS = (1, 2, 3, 4, 5, 7)
STRIDES = (1, 2)
CHANNELS = (3, 8, 16, 24, 32, 64, 96, 128, 192, 256, 384, 512)
BATCHES = (1, 2, 4, 8, 16, 32, 64)
PLANES = (7, 14, 28, 56, 112)
# Each call between these many FLOPs: big enough to time, small enough for a few minutes in all.
MIN_FLOPS, MAX_FLOPS = 2e6, 4e8


def sweep_shapes(count: int = 48, seed: int = 2026) -> list[ConvShape]:
    """`count` layers drawn from the ranges above: half dense, a quarter grouped, a quarter
    depthwise, rejecting draws outside [MIN_FLOPS, MAX_FLOPS] or with an empty output."""
    rng = np.random.default_rng(seed)
    out: list[ConvShape] = []
    seen: set[tuple[int, ...]] = set()
    while len(out) < count:
        kind = ("dense", "dense", "grouped", "depthwise")[len(out) % 4]
        r = int(rng.choice(KERNELS))
        stride = int(rng.choice(STRIDES))
        padding = int(rng.integers(0, min(3, r - 1) + 1)) if r > 1 else 0
        n = int(rng.choice(BATCHES))
        h = int(rng.choice(PLANES))
        c = int(rng.choice(CHANNELS))
        if kind == "depthwise":
            k = groups = c
        elif kind == "grouped":
            groups = int(rng.choice((2, 4, 8, 32)))
            c = max(groups, c - c % groups)
            k = int(rng.choice(CHANNELS))
            k = max(groups, k - k % groups)
        else:
            groups, k = 1, int(rng.choice(CHANNELS))
        shape = ConvShape("", n, c, h, h, k, r, stride=stride, padding=padding, groups=groups)
        if h + 2 * padding < r or min(shape.out) < 1:
            continue
        if not MIN_FLOPS <= shape.flops <= MAX_FLOPS:
            continue
        key = (n, c, h, k, r, stride, padding, groups)
        if key in seen:
            continue
        seen.add(key)
        name = (
            f"{kind} {r}x{r}/s{stride} p{padding} {c}->{k}"
            + (f" g{groups}" if kind == "grouped" else "")
            + f" {h}x{h} N{n}"
        )
        out.append(dataclasses.replace(shape, name=name))
    return out


@dataclasses.dataclass
class SweepRow:
    op: str
    shape: str
    flops: float
    native_s: float
    torch_s: float

    @property
    def vs_torch(self) -> float:
        return self.torch_s / self.native_s


def _time(fn: Callable[..., Any], args: Sequence[Any], quick: bool) -> float:
    from .report import time_block

    return statistics.median(time_block(fn, args, 0.05 if quick else 0.15, 3 if quick else 5))


def run_case(case: Case, n_threads: int, quick: bool, torch: Any) -> SweepRow:
    """One row, float32: native and PyTorch, each in its own block after its own warm-up; the
    results checked against each other first."""
    from .report import check_close, threads

    rng = np.random.default_rng(7)
    args = [case.make(rng, np.dtype(np.float32)) for _ in range(2)]
    assert case.torch is not None
    with threads(n_threads, torch):
        pairs = [case.torch(a) for a in args]
        got, want = case.native(*args[0]), pairs[0][0](*pairs[0][1])
        check_close(case, got, want, np.dtype("float32"), "PyTorch")
        native_s = _time(case.native, args, quick)
        torch_s = _time(lambda i: pairs[i][0](*pairs[i][1]), [(0,), (1,)], quick)
    return SweepRow(case.group, case.name, case.flops, native_s, torch_s)


def run(
    n_threads: int,
    quick: bool,
    torch: Any,
    shapes: Sequence[ConvShape] | None = None,
    progress: bool = True,
) -> list[SweepRow]:
    shapes = sweep_shapes(24 if quick else 48) if shapes is None else shapes
    cases = [c for s in shapes for c in _conv_cases(s)]
    bar: Any = None
    if progress:
        import sys

        from tqdm.auto import tqdm

        bar = tqdm(total=len(cases), desc="conv sweep", file=sys.stderr, leave=False)
    rows = []
    for case in cases:
        rows.append(run_case(case, n_threads, quick, torch))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return rows


def summary(rows: Sequence[SweepRow]) -> dict[str, Any]:
    """The worst row, the median ratio and the share of rows at or above PyTorch, overall and
    per pass."""
    out: dict[str, Any] = {}
    for op in (None, "conv2d", "conv2d_backward_data", "conv2d_backward_weights"):
        sel = [r for r in rows if op is None or r.op == op]
        if not sel:
            continue
        worst = min(sel, key=lambda r: r.vs_torch)
        out[op or "all"] = {
            "rows": len(sel),
            "median": statistics.median(r.vs_torch for r in sel),
            "share_at_or_above": sum(r.vs_torch >= 1.0 for r in sel) / len(sel),
            "worst": f"{worst.op} {worst.shape}",
            "worst_ratio": worst.vs_torch,
        }
    return out


def format_table(rows: Sequence[SweepRow]) -> str:
    from .report import _fmt_time

    lines = [
        "| op | layer | simdnn | GFLOP/s | PyTorch | vs PyTorch |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.op} | {r.shape} | {_fmt_time(r.native_s)} | {r.flops / r.native_s / 1e9:.0f} "
            f"| {_fmt_time(r.torch_s)} | {r.vs_torch:.2f}x |"
        )
    lines.append("")
    lines.append("| pass | rows | worst | median | at or above PyTorch |")
    lines.append("|---|---:|---|---:|---:|")
    for op, s in summary(rows).items():
        lines.append(
            f"| {op} | {s['rows']} | {s['worst_ratio']:.2f}x ({s['worst']}) | "
            f"{s['median']:.2f}x | {100 * s['share_at_or_above']:.0f}% |"
        )
    return "\n".join(lines)
