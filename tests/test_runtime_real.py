"""The parallel runtime on a machine in use: fork, refused threads, the thread cap from every
source, workspace release, exceptions from inside parallel work.

Each case runs in its own Python process with a timeout, so that a hang (a forked child waiting
for threads that do not exist) fails the test instead of blocking the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import simdnn

TIMEOUT_S = 120
LINUX = sys.platform.startswith("linux")


def run_child(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **env}
    # Under AddressSanitizer (tools/sanitize.sh) a failed allocation must return null, as libc's
    # does, instead of ending the process with a report.
    full_env["ASAN_OPTIONS"] = full_env.get("ASAN_OPTIONS", "") + ":allocator_may_return_null=1"
    try:
        return subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            capture_output=True,
            text=True,
            env=full_env,
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as e:  # pragma: no cover - the failure being tested
        pytest.fail(f"the child hung for {TIMEOUT_S} s; output so far:\n{e.stdout}\n{e.stderr}")


def check(proc: subprocess.CompletedProcess[str], *expect: str) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    for text in expect:
        assert text in proc.stdout, f"{text!r} not in\n{proc.stdout}\n{proc.stderr}"


# ------------------------------------------------------------------------------------------------
# fork


@pytest.mark.skipif(not LINUX, reason="the 'fork' start method")
def test_fork_child_runs_a_kernel_after_threaded_parent():
    proc = run_child(
        """
        import multiprocessing as mp, warnings
        import numpy as np
        import simdnn
        from simdnn import ops

        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12: fork of a threaded process
        simdnn._core._set_thread_cap(4)
        simdnn.set_num_threads(2)
        a = np.ones((512, 512), np.float32)
        ops.matmul(a, a)  # the parent's pool threads exist now
        p = mp.get_context("fork").Process(target=ops.matmul, args=(a, a))
        p.start()
        p.join(60)
        print("child exit", p.exitcode)

        def child(q):
            q.put(float(ops.matmul(a, a)[3, 5]))
        q = mp.get_context("fork").Queue()
        p = mp.get_context("fork").Process(target=child, args=(q,))
        p.start()
        print("child result", q.get(timeout=60))
        p.join(60)
        assert float(ops.matmul(a, a)[0, 0]) == 512.0  # the parent is unaffected
        print("parent ok", simdnn.cpu_info()["pool_threads"])
        """
    )
    check(proc, "child exit 0", "child result 512.0", "parent ok 1")


@pytest.mark.skipif(not LINUX, reason="the 'fork' start method")
def test_fork_pool_map_predict_after_fit():
    proc = run_child(
        """
        import multiprocessing as mp, warnings
        import numpy as np
        import simdnn
        from simdnn import demos, nn, optim

        warnings.simplefilter("ignore", DeprecationWarning)
        simdnn._core._set_thread_cap(4)
        simdnn.set_num_threads(2)
        rng = np.random.default_rng(0)
        x = rng.random((256, 1, 8, 8)).astype(np.float32)
        y = rng.integers(0, 10, 256)
        model = demos.build_convnet(0)
        simdnn.fit(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters()), x, y,
                   epochs=1, batch_size=32, progress=False, seed=0)

        def predict(chunk):
            return simdnn.predict(model, chunk)

        chunks = np.array_split(x, 4)
        with mp.get_context("fork").Pool(2) as pool:
            got = pool.map(predict, chunks)
        want = [predict(c) for c in chunks]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
        print("pool.map ok")
        """
    )
    check(proc, "pool.map ok")


# ------------------------------------------------------------------------------------------------
# A thread the OS refuses


@pytest.mark.skipif(not LINUX, reason="RLIMIT_AS and /proc are Linux's")
def test_refused_thread_means_fewer_threads_and_one_warning():
    # The address space is capped a few MiB above what the process has mapped: a new thread's
    # stack (8 MiB by default) cannot be mapped, the GEMM's workspace can. libgomp exited the
    # process here ("Thread creation failed").
    proc = run_child(
        """
        import resource, warnings
        import numpy as np
        import simdnn
        from simdnn import ops

        simdnn._core._set_thread_cap(4)
        simdnn.set_num_threads(4)
        a = np.ones((256, 256), np.float32)
        out = np.empty((256, 256), np.float32)
        with open("/proc/self/status") as f:
            vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (vm + (3 << 20), hard))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ops.matmul(a, a, out=out)
            ops.matmul(a, a, out=out)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        assert np.all(out == 256.0)
        texts = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        print("warnings", len(texts))
        print(texts[0] if texts else "")
        print("pool", simdnn.cpu_info()["pool_threads"])
        """
    )
    check(proc, "warnings 1", "the OS refused a thread", "pool 0")


@pytest.mark.skipif(not LINUX, reason="RLIMIT_AS and /proc are Linux's")
def test_refused_thread_as_error_is_a_python_exception():
    proc = run_child(
        """
        import resource, warnings
        import numpy as np
        import simdnn
        from simdnn import ops

        simdnn._core._set_thread_cap(4)
        simdnn.set_num_threads(4)
        a = np.ones((256, 256), np.float32)
        out = np.empty((256, 256), np.float32)
        with open("/proc/self/status") as f:
            vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (vm + (3 << 20), hard))
        warnings.simplefilter("error", RuntimeWarning)
        try:
            ops.matmul(a, a, out=out)
        except RuntimeWarning as e:
            print("raised", e)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        ops.matmul(a, a, out=out)  # one thread now, no second warning
        assert np.all(out == 256.0)
        print("afterwards ok")
        """
    )
    check(proc, "raised simdnn: the OS refused a thread", "afterwards ok")


# ------------------------------------------------------------------------------------------------
# The thread cap


def _cpus() -> int:
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = simdnn.cpu_info()["cpu_quota"]
    return min(n, quota) if quota else n


def _cap_with(tmp_path, cgroup_self: str, files: dict[str, str]) -> str:
    """The thread cap a child reports with a fake cgroup hierarchy under tmp_path."""
    for rel, text in files.items():
        f = tmp_path / "fs" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    (tmp_path / "self").write_text(cgroup_self)
    proc = run_child(
        """
        import simdnn
        info = simdnn.cpu_info()
        print("cap", info["thread_cap"], "quota", info["cpu_quota"], "threads",
              simdnn.get_num_threads())
        """,
        SIMDNN_CGROUP_ROOT=str(tmp_path / "fs"),
        SIMDNN_CGROUP_SELF=str(tmp_path / "self"),
    )
    check(proc)
    return proc.stdout.strip()


@pytest.mark.skipif(not LINUX, reason="cgroups are Linux's")
@pytest.mark.parametrize(
    ("cgroup_self", "files", "quota"),
    [
        # v2: 1.5 CPUs on the container's own cgroup, nothing above it: rounded up to 2.
        ("0::/box\n", {"box/cpu.max": "150000 100000\n", "cpu.max": "max 100000\n"}, 2),
        # v2: no limit on the leaf, 1 CPU on its parent: the tightest on the way up counts.
        ("0::/a/b\n", {"a/b/cpu.max": "max 100000\n", "a/cpu.max": "100000 100000\n"}, 1),
        # v2 without any quota.
        ("0::/\n", {"cpu.max": "max 100000\n"}, None),
        # v1, cpu and cpuacct mounted together, a path that exists only from the host's view
        # (a container without a cgroup namespace): its mount root holds the quota.
        (
            "5:memory:/docker/x\n3:cpu,cpuacct:/docker/x\n",
            {
                "cpu,cpuacct/cpu.cfs_quota_us": "50000\n",
                "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
            },
            1,
        ),
        # v1 with quota -1 (none).
        ("1:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ],
)
def test_thread_cap_follows_a_cgroup_cpu_quota(tmp_path, cgroup_self, files, quota):
    cpus = len(os.sched_getaffinity(0))
    cap = min(cpus, quota) if quota else cpus
    out = _cap_with(tmp_path, cgroup_self, files)
    assert out == f"cap {cap} quota {quota} threads {cap}", out


@pytest.mark.skipif(not LINUX, reason="cgroups are Linux's")
def test_thread_cap_in_a_real_cgroup_with_a_quota():
    """A real cgroup v1 cpu hierarchy with a 1-CPU quota (needs root and a writable
    /sys/fs/cgroup/cpu: skipped elsewhere; the fake hierarchies above run everywhere)."""
    base = "/sys/fs/cgroup/cpu"
    if not (os.path.isfile(f"{base}/cpu.cfs_quota_us") and os.access(base, os.W_OK)):
        pytest.skip("no writable cgroup v1 cpu hierarchy here")
    group = f"{base}/simdnn-test-{os.getpid()}"
    try:
        os.mkdir(group)
    except OSError as e:
        pytest.skip(f"cannot create a cgroup here: {e}")
    try:
        period = Path(f"{group}/cpu.cfs_period_us").read_text().strip()
        Path(f"{group}/cpu.cfs_quota_us").write_text(period)
        proc = run_child(
            f"""
            import os, pathlib
            pathlib.Path("{group}/cgroup.procs").write_text(str(os.getpid()))
            import simdnn
            print("cap", simdnn.cpu_info()["thread_cap"], "quota", simdnn.cpu_info()["cpu_quota"])
            """
        )
        check(proc, "cap 1 quota 1")
    finally:
        os.rmdir(group)


def test_thread_cap_omp_num_threads():
    proc = run_child(
        """
        import os, warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import simdnn
        import numpy as np
        print("warned", any("OMP_NUM_THREADS=5000 clamped" in str(w.message) for w in caught))
        print("threads", simdnn.get_num_threads())
        a = np.ones((1024, 1024), np.float32)
        simdnn.ops.matmul(a, a)
        tasks = "/proc/self/task"
        n = len(os.listdir(tasks)) if os.path.isdir(tasks) else 0
        print("os threads bounded", n <= LIMIT)
        """.replace("LIMIT", str(2 * _cpus() + 1)),  # the pool's, the BLAS's, Python's
        OMP_NUM_THREADS="5000",
    )
    check(proc, "warned True", f"threads {_cpus()}", "os threads bounded True")


def test_thread_cap_set_num_threads(threads):
    cap = simdnn.cpu_info()["thread_cap"]
    with pytest.warns(RuntimeWarning, match=f"clamped to {cap}"):
        simdnn.set_num_threads(10**6)
    assert simdnn.get_num_threads() == cap
    proc = run_child(
        """
        import warnings
        import simdnn
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            simdnn.set_num_threads(5000)
        print("warned", len(caught), "threads", simdnn.get_num_threads())
        """
    )
    check(proc, f"warned 1 threads {_cpus()}")


def test_thread_count_threadpoolctl():
    if not simdnn.cpu_info()["openmp"]:
        pytest.skip("built without OpenMP: threadpoolctl has no runtime to limit")
    threadpoolctl = pytest.importorskip("threadpoolctl")
    proc = run_child(
        """
        import numpy as np
        import simdnn
        from threadpoolctl import threadpool_limits
        simdnn._core._set_thread_cap(4)
        simdnn.set_num_threads(3)
        with threadpool_limits(1, user_api="openmp"):
            print("inside", simdnn.get_num_threads())
            a = np.ones((300, 300), np.float32)
            assert float(simdnn.ops.matmul(a, a)[0, 0]) == 300.0
        print("after", simdnn.get_num_threads())
        """
    )
    assert threadpoolctl is not None
    check(proc, "inside 1", "after 3")


# ------------------------------------------------------------------------------------------------
# Workspaces


def test_workspace_release_and_empty_cache():
    proc = run_child(
        """
        import os
        import numpy as np
        import simdnn
        from simdnn import ops

        def rss():
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))

        simdnn._core._set_thread_cap(4)
        simdnn.set_num_threads(2)
        # Strided backward-data: one (C R S) x (P Q) column buffer of 128 * 9 * 128 * 128 floats
        # (75 MB), above what a thread keeps between calls.
        dy = np.ones((1, 8, 128, 128), np.float32)
        w = np.ones((8, 128, 3, 3), np.float32)
        before = rss()
        dx = ops.conv2d_backward_data(dy, w, (1, 128, 256, 256), stride=2, padding=1)
        held = simdnn.cpu_info()["workspace_bytes"]
        print("kept after the big call <= 64 MiB per thread", held <= 2 * (64 << 20))
        del dx
        # AddressSanitizer (tools/sanitize.sh) keeps freed memory in its quarantine.
        asan = "libasan" in os.environ.get("LD_PRELOAD", "")
        print("rss returned", asan or rss() - before < (60 << 20))
        small = np.ones((2, 8, 32, 32), np.float32)
        ops.conv2d(small, np.ones((8, 8, 3, 3), np.float32), padding=1)
        print("small kept", simdnn.cpu_info()["workspace_bytes"] > 0)
        simdnn.empty_cache()
        print("after empty_cache", simdnn.cpu_info()["workspace_bytes"])
        """
    )
    check(
        proc,
        "kept after the big call <= 64 MiB per thread True",
        "rss returned True",
        "small kept True",
        "after empty_cache 0",
    )


# ------------------------------------------------------------------------------------------------
# parallel_for itself


@pytest.mark.parametrize("nthreads", [1, 2, 3, 8])
@pytest.mark.parametrize("ntasks", [0, 1, 2, 7, 1000, 65534, 65535, 70001])
def test_parallel_for_runs_every_task_once(ntasks, nthreads):
    """Up to 65,534 tasks the claim word counts the caller's tasks from the front and the
    workers' from the back in two 16-bit halves; from 65,535 on it counts from the front in 32
    bits: both ways every task runs once."""
    assert simdnn._core._parallel_check(ntasks, nthreads) == ntasks * (ntasks + 1) // 2


@pytest.mark.parametrize("nthreads", [2, 3])
def test_caller_runs_the_first_tasks_and_workers_the_last(nthreads):
    """The caller claims tasks from the front, the workers from the back, so on two threads the
    caller's share of every call is a prefix and the worker's the rest: ops split alike keep their
    data on one core. Tasks of 300 us give a woken worker time to join (it must in some call)."""
    joined = 0
    for _ in range(10):
        by = simdnn._core._claim_order(16, nthreads, 300)
        k = by.count(0)
        assert by == [0] * k + [1] * (16 - k), by
        joined += k < 16
    assert joined > 0


@pytest.mark.parametrize("nthreads", [2, 3, 8])
def test_parallel_for_back_to_back_calls_of_growing_size(nthreads):
    """Calls of 1, 2, ..., 13 tasks back to back, 200,000 of them: a worker still leaving one call
    must not claim a task of the next (that ran a task twice and then hung the caller, waiting for
    a count it had passed). Run in a child so that a regression fails on the timeout, not by
    hanging the suite."""
    repeat, ntasks = 200_000, 13
    expect = sum((1 + r % ntasks) * (2 + r % ntasks) // 2 for r in range(repeat))
    proc = run_child(
        f"""
        import simdnn
        simdnn._core._set_thread_cap(8)
        print("sum", simdnn._core._parallel_check({ntasks}, {nthreads}, repeat={repeat}))
        """
    )
    check(proc, f"sum {expect}")


def test_a_worker_preempted_mid_task_sends_the_next_calls_to_the_caller():
    """A worker that sleeps 1 s in its task (as one preempted by a busy neighbour) makes the
    caller wait far longer than it worked: that is a stall, and the call right after it runs in
    the caller alone instead of waiting on the worker again. (1 s: under load the caller's own
    work includes waiting for the worker to start, which must stay well below it.)"""
    proc = run_child(
        """
        import simdnn
        simdnn._core._set_thread_cap(2)
        s = simdnn._core._stall_check(1_000_000)
        # The back-off window is 2 ms from the end of the first call: a caller preempted between
        # the two calls for longer may run the second in parallel.
        print("stall", s["calls"], s["stalls"], s["solo"] == 1 or s["gap_us"] > 2000)
        s = simdnn._core._stall_check(0)
        print("quiet", s["calls"], s["stalls"])
        """
    )
    check(proc, "stall 2 1 True", "quiet 2 0")


@pytest.mark.skipif(not LINUX, reason="/proc/loadavg")
@pytest.mark.parametrize("ignore", [False, True])
def test_busy_neighbours_leave_the_calls_fewer_threads(ignore):
    """With every CPU taken by a busy process, parallel calls run on fewer threads (shed) instead
    of sharing cores with them; SIMDNN_IGNORE_NEIGHBOURS=1 turns the check off."""
    cpus = len(os.sched_getaffinity(0))
    if cpus != os.cpu_count() or simdnn.cpu_info()["cpu_quota"]:
        pytest.skip("the check applies only where every CPU of the machine is this process's")
    busy = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
        for _ in range(cpus)
    ]
    try:
        env = {"SIMDNN_IGNORE_NEIGHBOURS": "1"} if ignore else {}
        proc = run_child(
            f"""
            import time
            import simdnn
            time.sleep(0.5)  # the busy processes get going
            simdnn._core._parallel_check(1000, {cpus}, repeat=3000)
            print("shed", simdnn._core._pool_stats()["shed"] > 0)
            """,
            **env,
        )
    finally:
        for b in busy:
            b.kill()
            b.wait()
    check(proc, f"shed {not ignore}")


def test_exception_from_inside_parallel_work():
    proc = run_child(
        """
        import simdnn
        simdnn._core._set_thread_cap(4)
        for raise_at in (0, 1, 63, 999):
            try:
                simdnn._core._parallel_check(1000, 4, raise_at)
            except RuntimeError as e:
                print("raised", e)
        print("sum", simdnn._core._parallel_check(1000, 4))
        """
    )
    check(
        proc,
        "raised task 0 failed",
        "raised task 1 failed",
        "raised task 999 failed",
        "sum 500500",
    )


def test_threaded_kernels_from_several_python_threads():
    """Calls that find the pool busy run on their own thread instead of waiting behind it."""
    import threading

    a = np.ones((200, 300), np.float32)
    b = np.ones((300, 100), np.float32)
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            for _ in range(50):
                assert float(simdnn.ops.matmul(a, b)[0, 0]) == 300.0
        except BaseException as e:  # pragma: no cover - the failure being tested
            errors.append(e)

    ts = [threading.Thread(target=loop) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(TIMEOUT_S)
    assert not errors


# ------------------------------------------------------------------------------------------------
# The benchmark's real-machine section


@pytest.mark.skipif(not LINUX, reason="the 'fork' start method")
def test_bench_real_machine_section(capsys):
    from simdnn.__main__ import main

    argv = ["bench", "--real-machine-only", "--quick", "--no-torch", "--no-progress"]
    assert main([*argv, "--filter", "gemm"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| gemm 64x784x256 | simdnn"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 7
    assert "hang" not in row  # the forked child answered
    assert all(c.endswith("ms") or "x)" in c for c in cells[2:])
