"""Threads: every kernel from many Python threads at once, thread counts changed between and
during calls, and bitwise determinism for a fixed thread count.

The kernels release the GIL, so Python threads really run them concurrently, each kernel with its
own OpenMP team; per-thread workspaces and the kernel table must not be shared in a way that one
call can see another's data. For a fixed thread count every kernel splits its work the same way
on every call, so its result is identical bit for bit run to run (the backward-weights partial
sums are added in a fixed order); across thread counts results agree within rounding.

Shape legend: x (N, C, H, W), w (K, C/groups, R, S), y and dy (N, K, P, Q).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import pytest

import simdnn
from helpers import ISAS
from simdnn import ops, reference

Call = tuple[str, Callable[[], object]]


def calls(rng: np.random.Generator, dtype: type) -> list[Call]:
    """One call of every op on fresh data; each returns arrays (in-place updates return their
    updated arrays, on copies made per call, so that repeated calls see the same input)."""

    def arr(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(dtype)

    a, b, c = arr(97, 130), arr(130, 75), arr(97, 75)
    x, w, bias = arr(2, 6, 19, 23), arr(8, 3, 3, 3), arr(8)
    conv = {"stride": 1, "padding": 1, "groups": 2}
    dy = arr(2, 8, 19, 23)
    xs, ws = arr(3, 16, 14, 14), arr(32, 16, 3, 3)  # big enough for the threaded GEMM paths
    dys = arr(3, 32, 12, 12)
    xd, wd = arr(2, 12, 16, 16), arr(12, 1, 3, 3)  # depthwise
    big_a, big_b = arr(300, 257), arr(257, 290)  # packed, blocked and threaded
    pool_x = arr(2, 5, 33, 34)
    _, idx = ops.max_pool2d(pool_x, 2)
    pdy = arr(2, 5, 16, 17)
    p, g, v, m = arr(1000), arr(1000), arr(1000), np.abs(arr(1000))
    bn_rm, bn_rv = arr(5), np.abs(arr(5)) + 0.5
    _, bn_mean, bn_invstd = ops.batch_norm(pool_x, None, None, None, None, True)

    def sgd() -> tuple[np.ndarray, np.ndarray]:
        pc, vc = p.copy(), v.copy()
        ops.sgd_update(pc, g, vc, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
        return pc, vc

    def adam() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pc, vc, mc = p.copy(), v.copy(), m.copy()
        ops.adam_update(pc, g, vc, mc, lr=1e-3, step=7)
        return pc, vc, mc

    def batch_norm() -> tuple[np.ndarray, ...]:
        rm, rv = bn_rm.copy(), bn_rv.copy()
        return (*ops.batch_norm(pool_x, bias[:5], bias[3:], rm, rv, True), rm, rv)

    return [
        ("matmul", lambda: ops.matmul(a, b)),
        ("gemm", lambda: ops.gemm(a.T, b, c.copy(), alpha=0.5, beta=2.0, trans_a=True)),
        ("gemm-large", lambda: ops.matmul(big_a, big_b)),
        ("conv2d", lambda: ops.conv2d(x, w, bias, **conv)),
        ("conv2d-large", lambda: ops.conv2d(xs, ws, None, stride=1)),
        ("conv2d-depthwise", lambda: ops.conv2d(xd, wd, None, padding=1, groups=12)),
        ("conv2d_backward_data", lambda: ops.conv2d_backward_data(dy, w, x.shape, **conv)),
        ("conv2d_backward_data-large", lambda: ops.conv2d_backward_data(dys, ws, xs.shape)),
        ("conv2d_backward_weights", lambda: ops.conv2d_backward_weights(x, dy, w.shape, **conv)),
        ("conv2d_backward_weights-large", lambda: ops.conv2d_backward_weights(xs, dys, ws.shape)),
        ("max_pool2d", lambda: ops.max_pool2d(pool_x, 2)),
        ("max_pool2d-3s2", lambda: ops.max_pool2d(pool_x, 3, 2, 1)),
        ("max_pool2d_backward", lambda: ops.max_pool2d_backward(pdy, idx, pool_x.shape, 2)),
        ("avg_pool2d", lambda: ops.avg_pool2d(pool_x, 3, 2, 1, False)),
        ("avg_pool2d_backward", lambda: ops.avg_pool2d_backward(pdy, pool_x.shape, 2)),
        ("relu", lambda: ops.relu(pool_x)),
        ("relu_backward", lambda: ops.relu_backward(pool_x[::-1], pool_x)),
        ("sgd_update", sgd),
        ("adam_update", adam),
        ("batch_norm", batch_norm),
        ("batch_norm-columns", lambda: ops.batch_norm(a, None, None, None, None, True)),
        (
            "batch_norm_backward",
            lambda: ops.batch_norm_backward(
                pool_x[::-1], pool_x, bias[:5], bn_mean, bn_invstd, True
            ),
        ),
    ]


def flat(result: object) -> list[np.ndarray]:
    return [np.asarray(r) for r in result] if isinstance(result, tuple) else [np.asarray(result)]


def assert_identical(got: object, want: object, what: str) -> None:
    assert len(flat(got)) == len(flat(want)), what
    for g, w in zip(flat(got), flat(want)):
        assert g.dtype == w.dtype, what
        assert g.shape == w.shape, what
        # Bit for bit: the same bytes, NaN payloads and signed zeros included.
        assert g.tobytes() == w.tobytes(), f"{what}: not bitwise identical"


def run_concurrently(n_threads: int, work: Callable[[int], None]) -> None:
    """work(i) in n_threads Python threads started together; re-raises the first failure."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(n_threads)

    def body(i: int) -> None:
        try:
            barrier.wait()
            work(i)
        except BaseException as e:  # handed to the main thread
            errors.append(e)

    workers = [threading.Thread(target=body, args=(i,)) for i in range(n_threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    if errors:
        raise errors[0]


@pytest.mark.parametrize("n_threads", [1, 2])
def test_many_python_threads_match_serial_calls(isa, dtype, threads, n_threads):
    """8 Python threads, each running every op in its own order 3 times, with the kernels' own
    thread count n_threads: every result is bitwise the serial one."""
    simdnn.set_num_threads(n_threads)
    todo = calls(np.random.default_rng(1), dtype)
    want = {name: fn() for name, fn in todo}
    got: dict[tuple[int, int, str], object] = {}

    def work(i: int) -> None:
        order = np.random.default_rng(100 + i).permutation(len(todo))
        for rep in range(3):
            for j in order:
                name, fn = todo[j]
                got[i, rep, name] = fn()

    run_concurrently(8, work)
    assert len(got) == 8 * 3 * len(todo)
    for (i, rep, name), result in got.items():
        assert_identical(result, want[name], f"{name} (thread {i}, repeat {rep})")


def test_every_op_is_deterministic_for_a_fixed_thread_count(isa, dtype, threads):
    """The same call gives the same bits every time, for 1, 2 and 3 (more than the cores)
    threads; across thread counts the results agree within rounding."""
    todo = calls(np.random.default_rng(2), dtype)
    first: dict[str, object] = {}
    for nt in (1, 2, 3):
        simdnn.set_num_threads(nt)
        for name, fn in todo:
            results = [fn() for _ in range(3)]
            for r in results[1:]:
                assert_identical(r, results[0], f"{name} with {nt} threads")
            if name not in first:
                first[name] = results[0]
                continue
            rtol = 1e-4 if dtype == np.float32 else 1e-12
            for g, w in zip(flat(results[0]), flat(first[name])):
                np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol, err_msg=f"{name} {nt}")


def test_thread_count_changed_between_and_during_calls(isa, threads):
    """set_num_threads between calls, and from another Python thread while calls run: each call
    uses one count throughout (no torn state, no crash) and matches the twin."""
    dtype = np.float32
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((200, 150)).astype(dtype), rng.standard_normal((150, 170))
    b = b.astype(dtype)
    x, w = rng.standard_normal((2, 16, 15, 15)).astype(dtype), rng.standard_normal((24, 16, 3, 3))
    w = w.astype(dtype)
    want_mm = reference.matmul(a.astype(np.float64), b.astype(np.float64))
    want_conv = reference.conv2d(x.astype(np.float64), w.astype(np.float64), padding=1)
    for nt in (1, 2, 4, 1, 3, 2):
        simdnn.set_num_threads(nt)
        assert simdnn.get_num_threads() == nt
        np.testing.assert_allclose(ops.matmul(a, b), want_mm, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(ops.conv2d(x, w, padding=1), want_conv, rtol=1e-4, atol=1e-3)

    stop = threading.Event()

    def work(i: int) -> None:
        if i == 0:  # the changer
            for k in range(200):
                simdnn.set_num_threads(1 + k % 4)
            stop.set()
            return
        while not stop.is_set():
            np.testing.assert_allclose(ops.matmul(a, b), want_mm, rtol=1e-4, atol=1e-3)
            got = ops.conv2d(x, w, padding=1)
            np.testing.assert_allclose(got, want_conv, rtol=1e-4, atol=1e-3)
            dw, _ = ops.conv2d_backward_weights(x, got, w.shape, padding=1)
            assert np.isfinite(dw).all()

    run_concurrently(4, work)


def test_isa_switch_is_per_process_and_safe_between_calls(threads):
    """Forcing each ISA in turn (the SIMDNN_ISA switch) between calls from several threads gives
    results within rounding of each other."""
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((64, 80)), rng.standard_normal((80, 48))
    results = []
    for isa in ISAS:
        with simdnn.use_isa(isa):
            got: list[np.ndarray] = []

            def work(i: int, got: list[np.ndarray] = got) -> None:
                got.append(ops.matmul(a, b))

            run_concurrently(4, work)
            for g in got[1:]:
                assert_identical(g, got[0], isa)
            results.append(got[0])
    for r in results:
        np.testing.assert_allclose(r, results[0], rtol=1e-12, atol=1e-12)
