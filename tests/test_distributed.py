"""simdnn.distributed: data-parallel fit under mpiexec equals one process with the same global
batch; failures end the job; the sampler and the argument checks.

The MPI tests start ``mpiexec -n N python tests/dist_worker.py ...`` (MPICH from the ``test``
extra), each in its own process group with a timeout that kills the whole group. They are
skipped only when mpi4py is not installed. This process never joins an MPI job itself.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import simdnn
from simdnn import distributed, nn, optim

HERE = Path(__file__).resolve().parent
WORKER = HERE / "dist_worker.py"
HAS_MPI4PY = importlib.util.find_spec("mpi4py") is not None
needs_mpi = pytest.mark.skipif(
    not HAS_MPI4PY, reason="mpi4py is not installed (pip install mpi4py mpich)"
)
# Tolerances of the issue: final weights of N ranks against one process.
TOL = {"float64": 1e-10, "float32": 1e-5}


def mpiexec() -> str:
    """The mpiexec of this environment (the MPICH wheel puts it beside python), else PATH's."""
    found = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if found is None:
        pytest.fail("mpi4py is installed but no mpiexec was found: pip install mpich")
    return found


def launch(
    args: list[str],
    ranks: int | None,
    timeout: float = 300.0,
    env: dict[str, str | None] | None = None,
) -> tuple[int, str, float]:
    """Run the worker (under mpiexec -n `ranks`, or alone when None) in its own process group;
    kill the whole group if it outlives `timeout` (generous: a loaded machine may start and run
    the ranks slowly; a real hang is still killed). env: variables to set, None to remove.
    Returns (exit status, stdout and stderr, seconds)."""
    cmd = [sys.executable, str(WORKER), *args]
    if ranks is not None:
        cmd = [mpiexec(), "-n", str(ranks), *cmd]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        processes = snapshot_and_dump_stacks(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(
            f"{' '.join(cmd)} still ran after {timeout} s (killed). Its processes then:\n"
            f"{processes}\nIts output (with the stacks of the workers still alive):\n{out}\n{err}"
        )
    return proc.returncode, out + err, time.perf_counter() - t0


def snapshot_and_dump_stacks(root: int) -> str:
    """Before a hung job is killed: `ps` of the launcher and its descendants (which process
    lives, in what state and kernel wait; the launcher's proxy may start a session of its own),
    and SIGUSR1 to each worker still alive, whose faulthandler then prints every thread's stack
    into the job's output (a hang once outlived 300 s in CI, and the log showed only the last
    messages). Linux's ps; whatever fails here only shortens the report."""
    try:
        ps = subprocess.run(
            ["ps", "-e", "-o", "pid,ppid,stat,wchan:32,etimes,args"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError) as err:
        return f"(ps failed: {err})"
    lines = ps.splitlines()
    rows = [(int(f[0]), int(f[1]), line) for line in lines[1:] if (f := line.split())[1].isdigit()]
    family, grew = {root}, True
    while grew:
        grew = False
        for pid, ppid, _ in rows:
            if ppid in family and pid not in family:
                family.add(pid)
                grew = True
    mine = [(pid, line) for pid, _, line in rows if pid in family]
    for pid, line in mine:
        # The ranks themselves (mpiexec's command line names the worker too, and it would
        # forward the signal to every rank). A rank past its Python finalisation (in
        # MPI_Finalize) has no handler left and dies of it, after the ps above recorded it.
        if pid != root and line.split()[5:6] == [sys.executable]:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGUSR1)
    time.sleep(2)  # the stacks reach mpiexec's output through its proxy
    return "\n".join([lines[0], *(line for _, line in mine)])


@pytest.fixture
def keep_generator():
    """dist_worker.run_case reseeds simdnn's generator: put the previous one back."""
    from simdnn import init

    before = init._generator
    yield
    init._generator = before


# ------------------------------------------------------------------------------------------------
# Under mpiexec


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_fit_on_ranks_equals_one_process(ranks, tmp_path, keep_generator):
    """MLP and ConvNet, SGD with momentum and Adam, float64 and float32, n = 37 (not divisible
    by the ranks, a short last batch), global batches of 2 to 8 (some smaller than the ranks:
    empty shares), with and without validation, with and without a fit seed (other ranks start
    from other weights and generators): the final weights equal one process's fit with the same
    global batch, and are identical on every rank."""
    import dist_worker

    rc, log, _ = launch(["equality", str(tmp_path)], ranks)
    assert rc == 0, log
    # The NaN case's warning comes from rank 0 only (every rank records the stop_reason).
    assert log.count("loss became nan") == 1, log
    results = [dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(ranks)]
    for case in dist_worker.CASES:
        if case.get("nan"):
            with pytest.warns(RuntimeWarning, match="loss became nan at epoch 1, batch 3"):
                reference = dist_worker.run_case(case, distributed=False)
        else:
            reference = dist_worker.run_case(case, distributed=False)
        name, tol = case["name"], TOL[case["dtype"]]
        for key, want in reference.items():
            got = results[0][f"{name}/{key}"]
            assert got.shape == want.shape, (name, key)
            if key == "stop_reason":
                assert str(got) == str(want)
            elif key.startswith("w:"):
                assert got.dtype == want.dtype
                np.testing.assert_allclose(got, want, rtol=0, atol=tol, err_msg=f"{name} {key}")
            else:  # history: the same figures, to the precision of the loss itself
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)
            for r in range(1, ranks):
                np.testing.assert_array_equal(
                    results[r][f"{name}/{key}"], got, err_msg=f"{name} {key}: rank {r} != rank 0"
                )


@needs_mpi
def test_fit_distributed_without_mpiexec_equals_fit(tmp_path):
    """A job of one rank: fit(distributed=True) gives fit()'s weights and history, bit for bit."""
    rc, log, _ = launch(["single", str(tmp_path)], ranks=None)
    assert rc == 0, log
    with np.load(tmp_path / "single.npz") as data:
        assert int(data["size"]) == 1
        keys = [k for k in data.files if k.startswith("dist/")]
        assert keys
        for key in keys:
            np.testing.assert_array_equal(data[key], data["plain/" + key[len("dist/") :]], key)


@needs_mpi
def test_collectives_and_broadcasts(tmp_path):
    """broadcast_parameters, broadcast_optimizer_state, allreduce_gradients (flat buffer, mean
    and weighted), allreduce, broadcast, save on rank 0 only, the agreement check of fit and the
    split validation, asserted on 3 ranks (dist_worker.api_checks)."""
    rc, log, _ = launch(["api", str(tmp_path)], ranks=3)
    assert rc == 0, log


def seconds_since(log: str, *markers: str) -> float:
    """Seconds from the latest of the workers' `markers` (dist_worker.mark: FAILS_AT from the
    failing rank, WAITS_AT from a rank about to wait for it) to now: how long the job outlived
    the failure, whatever the launch and start-up cost on a loaded machine."""
    times = []
    for marker in markers:
        found = re.findall(rf"{marker}=([0-9.]+)", log)
        assert len(found) == 1, f"expected one {marker} marker from the workers:\n{log}"
        times.append(float(found[0]))
    return time.time() - max(times)


# The watchdog's deadline in these tests, and the slack allowed after it for the abort to reach
# every rank and the launcher to end the job.
DEADLINE, SLACK = 5, 10


@needs_mpi
def test_rank_that_raises_ends_the_job(tmp_path):
    rc, log, _ = launch(["raise"], ranks=2, env={"SIMDNN_DIST_TIMEOUT": str(DEADLINE)})
    assert rc != 0, log
    assert "rank 1 raised RuntimeError; aborting the job" in log
    after = seconds_since(log, "FAILS_AT")
    assert after < DEADLINE + SLACK, f"the job ended {after:.1f} s after rank 1 raised"
    # The exception hook aborted the job, not the watchdog after the deadline.
    assert "waited more than" not in log, log


@needs_mpi
@pytest.mark.parametrize("abort", [None, "returns", "hangs", "stuck"])
def test_rank_that_exits_early_is_caught_by_the_watchdog(abort):
    """abort: None, MPI_Abort as it is; "returns" or "hangs", rank 0's MPI_Abort made to return
    at once or never (both allowed by MPICH, pmodels/mpich#7716): rank 0's own death must end
    the job then, at once or ABORT_GRACE_S + DUMP_TO_KILL_S later (its stacks printed first);
    "stuck", the stack dump cancelled: the kill alone. In the three, the launcher is made to reap
    rank 0 before it sees rank 0's PMI connection close (dist_worker.hold_pmi_connection), the
    order in which an exit with a status (the fallback before) left rank 1 running for ever."""
    args = ["exit"] if abort is None else ["exit", abort]
    rc, log, _ = launch(args, ranks=2, env={"SIMDNN_DIST_TIMEOUT": str(DEADLINE)})
    assert rc != 0, log
    # Without the marker, rank 1 never reached the exit: a start-up slow enough to trip the
    # watchdog, not the case under test.
    assert "FAILS_AT=" in log, f"rank 1 did not reach its exit:\n{log}"
    assert f"waited more than {DEADLINE} s" in log, log
    # No lower bound: rank 0 may have started waiting before rank 1 printed its marker.
    after = seconds_since(log, "FAILS_AT")
    assert after < DEADLINE + SLACK, f"the job ended {after:.1f} s after rank 1 exited"
    # Which end it was: the stack dump is printed only by the rank whose MPI_Abort never
    # returned; MPI_Abort itself and the kill after a returning one come before it.
    dumped = "Timeout (0:00:03)!" in log and "_abort_job" in log
    assert dumped == (abort == "hangs"), log
    if abort is not None and "PMI_HOLDER=started" in log:  # MPICH's launcher
        # The holder outlived rank 0 (the order was as meant), and rank 0 died of a signal.
        assert "PMI_HOLDER: rank 0 is gone" in log, log
        assert "(signal 9)" in log, log


def run_python(code: str, timeout: float = 60.0) -> tuple[int, str, float]:
    """`code` in a Python process of its own: (exit status, stdout and stderr, seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, check=False
    )
    return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - t0


DEATH = """
import sys, time
from simdnn import _core, distributed
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
def test_die_after_prints_the_stacks_then_kills_and_cancel_stops_both():
    """_die_after, the last resort of a rank that must end the job (an init past its deadline,
    an MPI_Abort that has not ended the job): the stacks at `seconds`, SIGKILL DUMP_TO_KILL_S
    later (a death by a signal, which MPICH's launcher always answers by killing the other
    ranks); _cancel_death stops both, and arming again replaces the earlier death."""
    rc, log, took = run_python(
        DEATH
        + """
distributed._die_after(0.2)
distributed._cancel_death()
time.sleep(1.5)
print("alive after the cancelled death", flush=True)
distributed._die_after(60)
distributed._die_after(0.2)
time.sleep(30)
print("not reached", flush=True)
"""
    )
    assert rc == -signal.SIGKILL, log
    assert "alive after the cancelled death" in log, log
    assert "not reached" not in log, log
    assert log.count("Timeout (0:00:00.200000)!") == 1, log  # faulthandler's dump, once
    assert took < 20, f"the death came {took:.1f} s after the start"


def test_die_after_falls_back_to_an_exit_when_no_thread_can_start():
    """Where the OS refuses the kill's thread, faulthandler's timer (its exit status) is all that
    is left: the stacks, then exit status 1."""
    rc, log, _ = run_python(
        DEATH
        + """
_core._kill_self_after = lambda seconds: False
distributed._die_after(0.2)
time.sleep(30)
print("not reached", flush=True)
"""
    )
    assert rc == 1, log
    assert "Timeout (0:00:00.200000)!" in log, log
    assert "not reached" not in log, log


@pytest.mark.parametrize("seconds", [-1.0, float("nan"), float("inf"), 2e9])
def test_kill_self_after_rejects_bad_seconds(seconds):
    with pytest.raises(ValueError, match=r"seconds must be in \[0, 1e9\]"):
        simdnn._core._kill_self_after(seconds)


@needs_mpi
@pytest.mark.parametrize("mode", ["raise_before_init", "exit_before_init"])
def test_rank_that_fails_before_init_ends_the_job(mode):
    """Rank 1 raises or exits before it joins: rank 0 waits in init (MPI_Init and the
    collectives of joining, the GIL held) and the launcher would wait for it forever; init's own
    timeout ends the job with a non-zero status."""
    rc, log, _ = launch([mode], ranks=2, env={"SIMDNN_DIST_TIMEOUT": str(DEADLINE)})
    assert rc != 0, log
    assert "Timeout (" in log, log  # faulthandler's stack dump from rank 0's init
    assert "distributed.py" in log, log
    # From the later of rank 1's failure and rank 0's entry into init, where its clock starts
    # (rank 0's start-up may take longer than rank 1's on a loaded machine).
    after = seconds_since(log, "FAILS_AT", "WAITS_AT")
    assert after < DEADLINE + SLACK, f"the job ended {after:.1f} s after rank 0 started waiting"


@needs_mpi
def test_set_num_threads_before_init_is_kept():
    """simdnn.set_num_threads before init wins over init's cores-per-rank default (asserted on
    both ranks by dist_worker; OMP_NUM_THREADS unset, as the default then divides the cores)."""
    rc, log, _ = launch(["threads"], ranks=2, env={"OMP_NUM_THREADS": None})
    assert rc == 0, log
    assert log.count("set by simdnn.set_num_threads()") == 2, log


@needs_mpi
def test_batchnorm_buffers_are_the_same_on_every_rank(tmp_path):
    """Each rank's BatchNorm statistics come from its shares of the batches: fit broadcasts rank
    0's buffers first and averages the running statistics over the ranks, so both ranks end
    with identical buffers and weights (and the statistics moved from their start)."""
    rc, log, _ = launch(["batchnorm", str(tmp_path)], ranks=2)
    assert rc == 0, log
    first, second = (dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(2))
    assert sorted(first) == sorted(second)
    assert {"1.running_mean", "1.running_var", "1.num_batches_tracked"} <= set(first)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    # 3 epochs of ceil(37 / 8) = 5 steps, counted as one process counts them (from rank 0's 0).
    assert int(first["1.num_batches_tracked"]) == 15
    assert not np.allclose(first["1.running_mean"], 0)
    assert not np.allclose(first["1.running_var"], 1)


@needs_mpi
def test_distributed_check_command():
    cmd = [mpiexec(), "-n", "2", sys.executable, "-m", "simdnn", "distributed-check"]
    proc = subprocess.run(
        [*cmd, "--repeats", "3"],
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("ranks: 2 on 1 host(s)") == 1  # rank 0 prints
    assert "threads per rank: [1, 1]" in proc.stdout
    assert "allreduce of    53,002 float32" in proc.stdout


# ------------------------------------------------------------------------------------------------
# In this process (no MPI)


def test_sampler_splits_every_epoch_like_pytorch():
    n, p = 10, 3
    samplers = [distributed.DistributedSampler(n, num_replicas=p, rank=r, seed=7) for r in range(p)]
    for epoch in (0, 1):
        for s in samplers:
            s.set_epoch(epoch)
        parts = [s.indices() for s in samplers]
        assert [len(q) for q in parts] == [4, 4, 4] == [len(s) for s in samplers]
        joined = np.concatenate(parts)
        assert set(joined.tolist()) == set(range(n))  # padded by repeating 2 indices
        assert list(samplers[0]) == parts[0].tolist()
    s = samplers[0]
    s.set_epoch(0)
    first = s.indices()
    s.set_epoch(1)
    assert not np.array_equal(first, s.indices())
    dropped = [
        distributed.DistributedSampler(n, p, r, shuffle=False, drop_last=True).indices()
        for r in range(p)
    ]
    assert [d.tolist() for d in dropped] == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]
    assert len(distributed.DistributedSampler(np.zeros(5), 8, 7)) == 1


def test_shard_splits_contiguously_larger_first():
    parts = [distributed.shard(np.arange(10), 4, r).tolist() for r in range(4)]
    assert parts == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    assert [len(distributed.shard(2, 4, r)) for r in range(4)] == [1, 1, 0, 0]
    assert distributed.shard(list("abcde"), 2, 1) == ["d", "e"]


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: distributed.init(threads=0), ValueError, "threads must be >= 1, got 0"),
        (lambda: distributed.init(threads=2.0), TypeError, "threads must be an int or None"),
        (lambda: distributed.init(timeout="5"), TypeError, "timeout must be a number"),
        (lambda: distributed.init(timeout=-1.0), ValueError, "timeout must be finite and >= 0"),
        (lambda: distributed.allreduce(1.0, op="avg"), ValueError, "op must be one of"),
        (lambda: distributed.shard(10, 2, 2), ValueError, r"rank must be in \[0, 2\), got 2"),
        (lambda: distributed.shard(10, 0, 0), ValueError, "num_replicas must be >= 1, got 0"),
        (lambda: distributed.shard(1.5, 2, 0), TypeError, "expected an array, a sequence"),
        (lambda: distributed.DistributedSampler(5, 2, 0, seed=1.0), TypeError, "seed must be"),
        (lambda: distributed.DistributedSampler(-1, 2, 0), ValueError, "n must be >= 0"),
        (
            lambda: distributed.DistributedSampler(5, 2, 0).set_epoch(-1),
            ValueError,
            "epoch must be an int >= 0",
        ),
    ],
)
def test_bad_arguments_raise(call, error, match):
    with pytest.raises(error, match=match):
        call()
    assert not distributed.is_initialized()


def test_bad_timeout_variable(monkeypatch):
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match=r"SIMDNN_DIST_TIMEOUT='soon': expected a number"):
        distributed.init()
    assert not distributed.is_initialized()


def test_fit_distributed_must_be_a_bool():
    model = nn.Sequential(nn.Linear(2, 2))
    x, y = np.zeros((4, 2), np.float32), np.zeros(4, np.int64)
    opt = optim.SGD(model.parameters())
    with pytest.raises(TypeError, match="fit: distributed must be True or False, got 'yes'"):
        simdnn.fit(model, nn.CrossEntropyLoss(), opt, x, y, distributed="yes")


def test_missing_mpi4py_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now raises ImportError
    hint = r'pip install mpi4py mpich \(or pip install "\.\[distributed\]" in a clone'
    with pytest.raises(ImportError, match=hint):
        distributed.rank()
    model = nn.Sequential(nn.Linear(2, 2))
    x, y = np.zeros((4, 2), np.float32), np.zeros(4, np.int64)
    with pytest.raises(ImportError, match="pip install mpi4py mpich"):
        simdnn.fit(
            model, nn.CrossEntropyLoss(), optim.SGD(model.parameters()), x, y, distributed=True
        )
    assert not distributed.is_initialized()


def test_waiting_ranks_sleep_only_when_the_launcher_oversubscribes(monkeypatch):
    monkeypatch.delenv(distributed.HEAVY_YIELD, raising=False)
    monkeypatch.delenv("OMPI_COMM_WORLD_LOCAL_SIZE", raising=False)
    monkeypatch.setenv("MPI_LOCALNRANKS", "1")
    distributed._yield_when_oversubscribed()
    assert distributed.HEAVY_YIELD not in os.environ
    monkeypatch.setenv("MPI_LOCALNRANKS", str(os.cpu_count() * 2))
    distributed._yield_when_oversubscribed()
    assert os.environ[distributed.HEAVY_YIELD] == "1"
    monkeypatch.setenv(distributed.HEAVY_YIELD, "0")  # the user's choice stays
    distributed._yield_when_oversubscribed()
    assert os.environ[distributed.HEAVY_YIELD] == "0"
