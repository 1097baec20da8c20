"""The "real machine" section of ``python -m simdnn bench``: the training rows under the
conditions of a machine in use, for simdnn and (when installed) PyTorch side by side.

Conditions, each timed in the same run:

1. quiet, 1 thread (the reference of the ratios) and quiet, 2 threads;
2. 2 threads with one core taken by a busy process that the benchmark starts and stops itself;
3. 2 threads, each call following a ``numpy.matmul`` on 2 BLAS threads (OpenBLAS's threads then
   spin for a while after each call);
4. the first call in a child made by ``fork`` after the parent ran the row on 2 threads.

The figures are the mean time per call (a collapse shows in the mean, not in the median); the
ratios are to the quiet 1-thread mean of the same library.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .. import _runtime, nn, ops, optim
from ..training import fit

Step = Callable[[], Any]

# Timing window per row and condition (quick / full) and the warm-up before it.
WINDOW_S = (0.4, 1.5)
WARMUP_S = 0.1
# A forked child that has not answered by then is reported as hung.
FORK_TIMEOUT_S = 20.0


@dataclasses.dataclass
class Row:
    name: str
    simdnn: Callable[[], Step]  # builds the inputs, returns the step
    torch: Callable[[Any], Step] | None


def _gemm_row() -> Row:
    def make() -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(0)
        a = rng.standard_normal((64, 784)).astype(np.float32)
        b = rng.standard_normal((784, 256)).astype(np.float32)
        return a, b

    def native() -> Step:
        a, b = make()
        return lambda: ops.matmul(a, b)

    def torch_step(torch: Any) -> Step:
        a, b = (torch.from_numpy(v) for v in make())
        return lambda: torch.mm(a, b)

    return Row("gemm 64x784x256", native, torch_step)


def _conv_row() -> Row:
    def make() -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((32, 64, 32, 32)).astype(np.float32)
        w = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
        return x, w

    def native() -> Step:
        x, w = make()
        return lambda: ops.conv2d(x, w, padding=1)

    def torch_step(torch: Any) -> Step:
        x, w = (torch.from_numpy(v) for v in make())
        return lambda: torch.nn.functional.conv2d(x, w, padding=1)

    return Row("conv 3x3 64->64 32x32 N32", native, torch_step)


def _fit_row() -> Row:
    """One epoch of fit: the demo ConvNet, 1,024 8x8 images, batches of 32, Adam."""
    from ..demos import build_convnet
    from .cases import _torch_model

    def make() -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(0)
        x = rng.random((1024, 1, 8, 8)).astype(np.float32)
        y = rng.integers(0, 10, 1024)
        return x, y

    def native() -> Step:
        x, y = make()
        model = build_convnet(0)
        opt = optim.Adam(model.parameters(), lr=1e-3)
        loss = nn.CrossEntropyLoss()

        def step() -> Any:
            return fit(model, loss, opt, x, y, epochs=1, batch_size=32, progress=False, seed=0)

        return step

    def torch_step(torch: Any) -> Step:
        x, y = make()
        tm = _torch_model(build_convnet(0))
        opt = torch.optim.Adam(tm.parameters(), lr=1e-3)
        loss_fn = torch.nn.CrossEntropyLoss()
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)
        rng = np.random.default_rng(0)

        def step() -> Any:
            order = torch.from_numpy(rng.permutation(len(x)))
            for i in range(0, len(x), 32):
                idx = order[i : i + 32]
                opt.zero_grad()
                value = loss_fn(tm(tx[idx]), ty[idx])
                value.backward()
                opt.step()
            return float(value.detach())

        return step

    return Row("fit epoch, demo ConvNet (1,024 x 8x8, batch 32)", native, torch_step)


def _train_rows() -> list[Row]:
    from .cases import TrainStep, _torch_model, build_lenet, build_mlp

    def row(name: str, build: Callable[..., nn.Sequential], shape: tuple[int, ...]) -> Row:
        def make() -> tuple[np.ndarray, np.ndarray]:
            rng = np.random.default_rng(0)
            return rng.standard_normal(shape).astype(np.float32), rng.integers(0, 10, shape[0])

        def native() -> Step:
            x, y = make()
            step = TrainStep(build(np.dtype(np.float32)), "native")
            return lambda: step(x, y)

        def torch_step(torch: Any) -> Step:
            x, y = make()
            tm = _torch_model(build(np.dtype(np.float32)))
            opt = torch.optim.SGD(tm.parameters(), lr=0.01, momentum=0.9)
            loss_fn = torch.nn.CrossEntropyLoss()
            tx, ty = torch.from_numpy(x), torch.from_numpy(y)

            def step() -> Any:
                opt.zero_grad()
                value = loss_fn(tm(tx), ty)
                value.backward()
                opt.step()
                return value

            return step

        return Row(name, native, torch_step)

    return [
        row("lenet train step, batch 64", build_lenet, (64, 1, 28, 28)),
        row("mlp 784-256-256-10 train step, batch 64", build_mlp, (64, 784)),
    ]


def rows() -> list[Row]:
    return [_gemm_row(), _conv_row(), _fit_row(), *_train_rows()]


# ------------------------------------------------------------------------------------------------
# Conditions


@contextlib.contextmanager
def thread_count(n: int, torch: Any | None) -> Iterator[None]:
    before = _runtime.get_num_threads()
    before_torch = torch.get_num_threads() if torch is not None else None
    _runtime.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        _runtime.set_num_threads(before)
        if torch is not None:
            torch.set_num_threads(before_torch)


@contextlib.contextmanager
def busy_core() -> Iterator[None]:
    """A single-threaded process spinning on one core for the duration of the block."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "while True: pass"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.2)  # let it get going
        yield
    finally:
        proc.kill()
        proc.wait()


def numpy_neighbour() -> Callable[[], Any]:
    """numpy.matmul on the training GEMM shape, with NumPy's BLAS on 2 threads."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((64, 784)).astype(np.float32)
    b = rng.standard_normal((784, 256)).astype(np.float32)
    return lambda: np.matmul(a, b)


def time_mean(step: Step, window: float, before: Callable[[], Any] | None = None) -> float:
    """Mean seconds of step() over a window (after a warm-up); before() runs untimed first."""
    clock = time.perf_counter
    t_end = clock() + WARMUP_S
    while clock() < t_end:
        if before is not None:
            before()
        step()
    total, calls = 0.0, 0
    t_end = clock() + window
    while calls < 3 or clock() < t_end:
        if before is not None:
            before()
        t0 = clock()
        step()
        total += clock() - t0
        calls += 1
    return total / calls


def _first_call_in_child(conn: Any, step: Step) -> None:
    t0 = time.perf_counter()
    step()
    conn.send(time.perf_counter() - t0)
    conn.close()


def fork_first_call(step: Step) -> float | None:
    """Seconds of the first call of step in a forked child; None when the child hangs or dies."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_first_call_in_child, args=(child, step), daemon=True)
    proc.start()
    child.close()
    result: float | None = None
    if parent.poll(FORK_TIMEOUT_S):
        with contextlib.suppress(EOFError):
            result = float(parent.recv())
    if proc.is_alive():
        proc.kill()
    proc.join()
    return result


CONDITIONS = ("quiet 1t", "quiet 2t", "busy core", "numpy next door", "fork child")


def measure_row(step: Step, torch: Any | None, window: float) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    with thread_count(1, torch):
        out["quiet 1t"] = time_mean(step, window)
    with thread_count(2, torch):
        out["quiet 2t"] = time_mean(step, window)
        with busy_core():
            out["busy core"] = time_mean(step, window)
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover - threadpoolctl is in the bench extra
            limiter: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        else:
            limiter = threadpool_limits(limits=2, user_api="blas")
        with limiter:
            out["numpy next door"] = time_mean(step, window, before=numpy_neighbour())
        step()  # the parent's threads are in use when it forks
        with contextlib.suppress(Exception), _quiet_fork_warning():
            out["fork child"] = fork_first_call(step)
    return out


@contextlib.contextmanager
def _quiet_fork_warning() -> Iterator[None]:
    # Python 3.12+ warns when a multi-threaded process forks: that is the condition measured.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _ms(v: float | None) -> str:
    return "hang" if v is None else f"{v * 1e3:.3g} ms"


def _ratio(v: float | None, ref: float | None) -> str:
    if v is None or ref is None:
        return "-"
    return f"{v / ref:.2f}x"


def format_table(results: list[tuple[str, str, dict[str, float | None]]]) -> str:
    head = (
        "| row | lib | quiet 1 thread | quiet 2 threads | busy core (2 thr) | numpy next door "
        "(2 thr) | fork child, first call |"
    )
    lines = [head, "|---|---|---:|---:|---:|---:|---:|"]
    for name, lib, r in results:
        ref = r["quiet 1t"]
        cells = [
            _ms(ref),
            f"{_ms(r['quiet 2t'])} ({_ratio(r['quiet 2t'], ref)})",
            f"{_ms(r['busy core'])} ({_ratio(r['busy core'], ref)})",
            f"{_ms(r['numpy next door'])} ({_ratio(r['numpy next door'], ref)})",
            f"{_ms(r['fork child'])} ({_ratio(r['fork child'], ref)})",
        ]
        lines.append(f"| {name} | {lib} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(
    quick: bool, torch: Any | None, pattern: str | None = None, progress: bool = True
) -> list[tuple[str, str, dict[str, float | None]]]:
    import re

    window = WINDOW_S[0] if quick else WINDOW_S[1]
    results: list[tuple[str, str, dict[str, float | None]]] = []
    for row in rows():
        if pattern is not None and not re.search(pattern, row.name):
            continue
        libs: list[tuple[str, Callable[[], Step]]] = [("simdnn", row.simdnn)]
        if torch is not None and row.torch is not None:
            make_torch = row.torch
            libs.append(("PyTorch", lambda make_torch=make_torch: make_torch(torch)))
        for lib, make in libs:
            if progress:
                print(f"  real machine: {row.name}, {lib}", file=sys.stderr, flush=True)
            results.append((row.name, lib, measure_row(make(), torch, window)))
    return results


def describe() -> str:
    info = _runtime.cpu_info()
    text = f"{os.cpu_count()} CPUs, simdnn {info['isa']} on its own thread pool"
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover
        return text
    blas = [
        f"{d.get('internal_api')} {d.get('version')} ({d.get('architecture')})"
        for d in threadpool_info()
        if d.get("user_api") == "blas"
    ]
    return text + (f"; NumPy BLAS {', '.join(blas)}" if blas else "")
