"""The rank side of tests/test_distributed.py, run under ``mpiexec -n N python dist_worker.py``.

Modes (first argument):
    equality OUT   train every CASE with fit(distributed=True); each rank writes OUT/rank{r}.npz
    single OUT     without mpiexec: fit(distributed=True) and fit() on every CASE, both written
    raise          rank 1 raises in the middle of training
    exit [ABORT]   rank 1 exits (status 0) in the middle of training; ABORT, if given, makes
                   rank 0's MPI_Abort return at once ("returns") or never ("hangs"), so that
                   only the rank's own death can end the job; "stuck" is "hangs" with the stack
                   dump before that death cancelled (the kill does not wait for it). Each
                   stand-in first makes the launcher reap rank 0 before it sees its PMI
                   connection close (hold_pmi_connection)
    raise_before_init  rank 1 raises before it joins the job (rank 0 waits in init)
    exit_before_init   rank 1 exits (status 0) before it joins the job
    batchnorm OUT  train a BatchNorm model; each rank writes OUT/rank{r}.npz
    threads        simdnn.set_num_threads before init: init keeps it (asserted on every rank)
    api OUT        the collectives of simdnn.distributed, checked on every rank
The failing rank of raise, exit, raise_before_init and exit_before_init prints
``FAILS_AT=<time.time()>`` just before it fails (and in the *_before_init modes rank 0 prints
``WAITS_AT=...`` as it enters init): the test times the end of the job from there, not from the
launch, which a loaded machine may slow down by any amount.
The test process computes the single-process references with :func:`run_case` itself.
Every rank prints all its threads' stacks on SIGUSR1 (faulthandler): the test sends it to a job
that outlives its limit before killing it, so that a hang leaves a record of where each rank was.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import subprocess
import sys
import time
import warnings
from typing import Any

import numpy as np

import simdnn
from simdnn import nn, optim


def data(n: int, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n examples of three classes, inputs of `shape`, learnable from their mean."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.standard_normal((n, *shape)) + (y - 1).reshape(-1, *([1] * len(shape)))
    return x, y


def build(kind: str, seed: int) -> nn.Sequential:
    rng = np.random.default_rng(seed)
    if kind == "mlp":
        return nn.Sequential(
            nn.Linear(4, 12, rng=rng), nn.Tanh(), nn.Linear(12, 8, rng=rng), nn.ReLU(),
            nn.Linear(8, 3, rng=rng),
        )  # fmt: skip
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, rng=rng), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(4 * 3 * 3, 3, rng=rng),
    )  # fmt: skip


# name, model, optimiser, dtype, n, global batch, epochs, seed (None: simdnn.seed per rank),
# validation. n = 37 is not divisible by 2, 3 or 4 and leaves a short last batch for every batch
# size here; batch 2 is smaller than 3 and 4 ranks, so some ranks have empty shares.
CASES: list[dict[str, Any]] = [
    dict(name="mlp-sgd-f64", kind="mlp", opt="sgd", dtype="float64", batch=8, seed=3, val=True),
    dict(name="mlp-sgd-f32", kind="mlp", opt="sgd", dtype="float32", batch=8, seed=3, val=False),
    dict(name="mlp-adam-f64", kind="mlp", opt="adam", dtype="float64", batch=2, seed=None,
         val=False),
    dict(name="mlp-adam-f32", kind="mlp", opt="adam", dtype="float32", batch=5, seed=4, val=True),
    dict(name="cnn-sgd-f64", kind="cnn", opt="sgd", dtype="float64", batch=5, seed=5, val=True),
    dict(name="cnn-sgd-f32", kind="cnn", opt="sgd", dtype="float32", batch=2, seed=5, val=False),
    dict(name="cnn-adam-f64", kind="cnn", opt="adam", dtype="float64", batch=8, seed=None,
         val=True),
    dict(name="cnn-adam-f32", kind="cnn", opt="adam", dtype="float32", batch=3, seed=6, val=False),
    # A NaN in example 20 (one rank's share): every rank stops at its batch and restores the
    # weights from before the last step, as one process does.
    dict(name="mlp-nan-f64", kind="mlp", opt="sgd", dtype="float64", batch=8, seed=3, val=False,
         nan=True),
    # EarlyStopping decides on the reduced validation loss, identically everywhere.
    dict(name="mlp-early-f64", kind="mlp", opt="adam", dtype="float64", batch=4, seed=7, val=True,
         early=True, epochs=12),
]  # fmt: skip
N, EPOCHS = 37, 3


def run_case(case: dict[str, Any], distributed: bool, rank: int = 0) -> dict[str, np.ndarray]:
    """Train one case; returns its final weights and history figures. Ranks other than 0 start
    from other weights and (without a fit seed) other generators: fit must broadcast rank 0's."""
    shape = (4,) if case["kind"] == "mlp" else (1, 6, 6)
    x, y = data(N, shape, seed=1)
    model = build(case["kind"], seed=10 + rank).astype(case["dtype"])
    if case["opt"] == "sgd":
        opt = optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    else:
        opt = optim.Adam(model.parameters(), lr=0.01)
    simdnn.seed(100 + rank)
    vd = data(11, shape, seed=2) if case["val"] else None
    if case.get("nan"):
        x[20] = np.nan
    callbacks = [simdnn.EarlyStopping(patience=0)] if case.get("early") else []
    history = simdnn.fit(
        model,
        nn.CrossEntropyLoss(),
        opt,
        x.astype(case["dtype"]),
        y,
        epochs=case.get("epochs", EPOCHS),
        batch_size=case["batch"],
        validation_data=vd,
        seed=case["seed"],
        progress=False,
        distributed=distributed,
        callbacks=callbacks,
    )
    out = {f"w:{k}": v for k, v in model.state_dict().items()}
    out["stop_reason"] = np.array(str(history.stop_reason))
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        out[f"h:{key}"] = np.asarray(history[key], np.float64)
    return out


def mark(what: str) -> None:
    """Print a marker the test times the job's end from (see the module docstring)."""
    print(f"{what}={time.time()!r}", flush=True)


def launcher_rank() -> int:
    """This process's rank as the launcher set it, readable before MPI is initialised."""
    for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    raise SystemExit("dist_worker: no rank in the environment (not started by mpiexec?)")


def train_batchnorm(rank: int) -> dict[str, np.ndarray]:
    """A BatchNorm1d MLP trained with fit(distributed=True), with validation. Every rank starts
    from other weights and other running statistics: fit must broadcast rank 0's."""
    x, y = data(N, (4,), seed=1)
    rng = np.random.default_rng(10 + rank)
    model = nn.Sequential(
        nn.Linear(4, 8, rng=rng), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3, rng=rng),
    ).astype("float64")  # fmt: skip
    bn = model[1]
    bn.running_mean[...] = rank
    bn.running_var[...] = 1 + rank
    bn.num_batches_tracked[...] = rank
    simdnn.fit(
        model,
        nn.CrossEntropyLoss(),
        optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
        x,
        y,
        epochs=EPOCHS,
        batch_size=8,
        validation_data=data(11, (4,), seed=2),
        seed=3,
        progress=False,
        distributed=True,
    )
    return model.state_dict()


def flat(result: dict[str, np.ndarray], case: str) -> dict[str, np.ndarray]:
    return {f"{case}/{k}": v for k, v in result.items()}


# The child of hold_pmi_connection: once its parent (argv[1]) is gone, it closes its copies of
# the rank's stdout and stderr (an event that wakes the launcher, which then reaps the rank), and
# 1 s later the rank's PMI connection with its own exit.
PMI_HOLDER = """
import os, sys, time
while os.getppid() == int(sys.argv[1]):
    time.sleep(0.02)
time.sleep(0.2)
print("PMI_HOLDER: rank 0 is gone", flush=True)
os.close(1)
os.close(2)
time.sleep(1.0)
os._exit(0)
"""


def hold_pmi_connection() -> None:
    """Makes MPICH's launcher see this rank's end in the order that hung a CI job: a child holds
    the rank's PMI connection (PMI_FD) open until 1 s after the rank is gone, and wakes the
    launcher before that, so that the launcher reaps the rank before it sees that connection
    close. After an exit with a status it then ends no other rank (Hydra's proxy, MPICH 5.0.2);
    after a death by a signal it kills them all. Prints PMI_HOLDER=started, or =none without
    MPICH's PMI_FD (another launcher)."""
    fd = os.environ.get("PMI_FD")
    if fd is None:
        print("PMI_HOLDER=none", flush=True)
        return
    subprocess.Popen(
        [sys.executable, "-c", PMI_HOLDER, str(os.getpid())],
        stdin=subprocess.DEVNULL,
        pass_fds=(int(fd),),
    )
    print("PMI_HOLDER=started", flush=True)


def main(argv: list[str]) -> int:
    mode = argv[0]
    if mode == "single":
        out = argv[1]
        arrays: dict[str, np.ndarray] = {}
        for case in CASES:
            arrays.update(flat(run_case(case, True), "dist/" + case["name"]))
            arrays.update(flat(run_case(case, False), "plain/" + case["name"]))
        from simdnn import distributed

        arrays["size"] = np.array(distributed.size())
        np.savez(os.path.join(out, "single.npz"), **arrays)
        return 0
    if mode in ("raise_before_init", "exit_before_init") and launcher_rank() == 1:
        # The others wait in init for a rank that never joins: init's own timeout must end
        # the job (the launcher does not).
        mark("FAILS_AT")
        if mode == "raise_before_init":
            raise RuntimeError("rank 1 fails before init on purpose")
        sys.exit(0)
    from simdnn import distributed

    if mode == "threads":
        # A count the default (cores per node / ranks per node) does not give on 2 ranks, and
        # that set_num_threads does not clamp (the cap counts a cgroup CPU quota too).
        wanted = simdnn.cpu_info()["thread_cap"]
        simdnn.set_num_threads(wanted)
        with warnings.catch_warnings():  # wanted x 2 ranks oversubscribes: init says so
            warnings.simplefilter("ignore", RuntimeWarning)
            distributed.init()
        got = (simdnn.get_num_threads(), distributed._get().threads_set_by)
        assert got == (wanted, "simdnn.set_num_threads()"), got
        print(f"rank {distributed.rank()} threads {got[0]} set by {got[1]}", flush=True)
        return 0
    if mode in ("raise_before_init", "exit_before_init"):
        mark("WAITS_AT")  # init's clock starts now
    distributed.init(threads=1)
    rank = distributed.rank()
    if mode in ("raise_before_init", "exit_before_init"):
        raise AssertionError("init returned although rank 1 never joined")
    if mode == "batchnorm":
        np.savez(os.path.join(argv[1], f"rank{rank}.npz"), **train_batchnorm(rank))
        return 0
    if mode == "equality":
        arrays = {}
        for case in CASES:
            arrays.update(flat(run_case(case, True, rank), case["name"]))
        np.savez(os.path.join(argv[1], f"rank{rank}.npz"), **arrays)
        return 0
    if mode in ("raise", "exit"):
        if len(argv) > 1:
            # What MPICH allows (pmodels/mpich#7716): an MPI_Abort that returns before the launcher
            # kills the job, or that the kill never follows; each in the launcher's harder order.
            def stand_in(comm: Any) -> None:
                hold_pmi_connection()
                if argv[1] == "stuck":
                    faulthandler.cancel_dump_traceback_later()
                if argv[1] != "returns":
                    time.sleep(3600)

            distributed._mpi_abort = stand_in

        class Fail(simdnn.Callback):
            def on_epoch_end(self, epoch: int, logs: dict[str, float], model: Any) -> bool:
                if rank == 1 and epoch == 1:
                    mark("FAILS_AT")
                    if mode == "raise":
                        raise RuntimeError("rank 1 fails on purpose")
                    sys.exit(0)
                return False

        x, y = data(64, (4,), seed=1)
        model = build("mlp", 0)
        simdnn.fit(
            model,
            nn.CrossEntropyLoss(),
            optim.SGD(model.parameters(), lr=0.05),
            x,
            y,
            epochs=1000,
            batch_size=8,
            seed=0,
            progress=False,
            callbacks=[Fail()],
            distributed=True,
        )
        return 0
    if mode == "api":
        api_checks(rank, distributed.size(), argv[1])
        return 0
    raise SystemExit(f"unknown mode {mode!r}")


def api_checks(rank: int, size: int, out: str) -> None:
    """The collectives a custom training loop uses, on every rank; AssertionError if wrong."""
    from simdnn import distributed

    assert distributed.is_initialized()
    assert size >= 2
    assert distributed.is_main() == (rank == 0)
    assert len(distributed.hosts()) == size
    assert distributed.local_size() == size
    assert distributed.broadcast({"rank": rank})["rank"] == 0
    assert distributed.allreduce(rank, op="sum") == sum(range(size))
    assert distributed.allreduce(float(rank)) == (size - 1) / 2
    assert distributed.allreduce(np.array([rank, -rank]), op="max").tolist() == [size - 1, 0]

    # Parameters and optimiser state: rank 0's everywhere.
    model = build("mlp", seed=rank)
    opt = optim.Adam(model.parameters(), lr=0.01 * (rank + 1))
    opt._t = 5 + rank
    for m in opt._m:
        m[...] = rank
    distributed.broadcast_parameters(model)
    distributed.broadcast_optimizer_state(opt)
    reference = build("mlp", seed=0)
    for p, q in zip(model.parameters(), reference.parameters()):
        assert np.array_equal(p.data, q.data)
    assert opt._t == 5
    assert opt.lr == 0.01
    assert all(np.all(m == 0) for m in opt._m)
    sgd = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for v in sgd._velocity:
        v[...] = rank + 1
    distributed.broadcast_optimizer_state(sgd, root=size - 1)
    assert all(np.all(v == size) for v in sgd._velocity)

    # Gradients: the mean, in place, as views of one flat buffer; then weighted.
    params = model.parameters()
    for p in params:
        p.grad = np.full(p.shape, float(rank), p.dtype)
    distributed.allreduce_gradients(model)
    views = [p.grad for p in params]
    assert all(np.all(g == (size - 1) / 2) for g in views)
    assert all(g.base is views[0].base is not None for g in views)  # one buffer
    model.zero_grad()  # a stale gradient reads as zeros and is still reduced
    params[0].grad[...] = 1.0
    distributed.allreduce_gradients(params, weight=1.0 if rank == 0 else 0.0)
    assert np.all(params[0].grad == 1.0)
    assert np.all(params[1].grad == 0.0)
    assert params[0].grad is views[0]  # still the same buffer

    # A mismatch raises the same ValueError on every rank instead of hanging.
    x, y = data(20 + (rank == size - 1), (4,), seed=1)
    message = ""
    try:
        simdnn.fit(model, nn.CrossEntropyLoss(), opt, x, y, progress=False, distributed=True)
    except ValueError as err:
        message = str(err)
    assert "every rank must call fit with the same" in message, message

    # save writes on rank 0 only.
    path = os.path.join(out, "model.npz")
    simdnn.save(model, path)
    distributed.barrier()
    assert os.path.exists(path)
    distributed.barrier()
    if rank == 0:
        os.remove(path)
    distributed.barrier()
    simdnn.save(model, os.path.join(out, f"model{rank}.npz"))
    distributed.barrier()
    assert os.path.exists(os.path.join(out, f"model{rank}.npz")) == (rank == 0)

    # Validation split across the ranks gives evaluate()'s figures on every rank.
    vx, vy = data(13, (4,), seed=2)
    run = distributed._FitRun(distributed._get(), params, broadcast_order=False)
    split = run.evaluate(model, nn.CrossEntropyLoss(), vx, vy, batch_size=4)
    whole = simdnn.evaluate(model, nn.CrossEntropyLoss(), vx, vy)
    assert abs(split["loss"] - whole["loss"]) < 1e-6
    assert split["accuracy"] == whole["accuracy"]
    assert distributed.comm_stats()["calls"] > 0


if __name__ == "__main__":
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    sys.exit(main(sys.argv[1:]))
