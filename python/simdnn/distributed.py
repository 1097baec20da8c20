"""Data-parallel training over MPI: the same model on several processes and machines.

Every rank (one process each, started by ``mpiexec``) holds a full copy of the model and of the
training data, draws the same shuffled order, and takes its share of each global batch; after
backward the gradients are averaged over the ranks, weighted by each rank's share of the batch,
in one in-place allreduce, so every rank applies the same update and N ranks give the weights one
process would reach with the same global batch (up to float rounding)::

    mpiexec -n 4 python train.py          # train.py calls simdnn.fit(..., distributed=True)

The engine is MPI through mpi4py (``pip install mpi4py mpich`` installs mpi4py and the MPICH
runtime as wheels, as does ``pip install ".[distributed]"`` in a clone of simdnn); nothing here
imports mpi4py until it is used, and the compiled extension does not depend on MPI.

- :func:`init` joins the job (:func:`simdnn.fit` with ``distributed=True`` calls it), sets the
  kernel threads per rank to the cores of the node divided by the ranks on it, and starts a
  watchdog; :func:`rank`, :func:`size`, :func:`local_rank`, :func:`local_size`, :func:`is_main`
  and :func:`hosts` describe the job; :func:`barrier`, :func:`allreduce` and :func:`broadcast`
  are the collectives a custom loop needs.
- :func:`broadcast_parameters` and :func:`broadcast_optimizer_state` copy rank 0's weights and
  optimiser state to every rank; :func:`allreduce_gradients` averages ``.grad`` over the ranks in
  one fused allreduce of a flat buffer that the gradients are views of.
- :class:`DistributedSampler` (PyTorch's semantics) and :func:`shard` split data for custom loops.
- Failures end the job instead of hanging it: an unhandled exception on any rank aborts every
  rank (non-zero exit), and a watchdog aborts the job when a collective waits longer than
  ``SIMDNN_DIST_TIMEOUT`` seconds (300 by default; 0 turns it off), which is what happens when
  another rank has exited early or hangs. Joining the job is covered too: a rank whose init
  waits that long for a rank that failed before joining exits (status 1) with a stack dump.
"""

from __future__ import annotations

import contextlib
import faulthandler
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from . import _core, _runtime
from .nn.module import Module, Parameter

if TYPE_CHECKING:
    from .nn.losses import Loss
    from .optim import Optimizer

__all__ = [
    "DEFAULT_TIMEOUT",
    "TIMEOUT_ENV",
    "DistributedSampler",
    "allreduce",
    "allreduce_gradients",
    "barrier",
    "broadcast",
    "broadcast_optimizer_state",
    "broadcast_parameters",
    "check",
    "comm_stats",
    "format_check",
    "hosts",
    "init",
    "is_initialized",
    "is_main",
    "local_rank",
    "local_size",
    "rank",
    "shard",
    "size",
]

TIMEOUT_ENV = "SIMDNN_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 300.0
# simdnn has no release on the package index yet, so "simdnn[distributed]" would find nothing:
# the hint names the packages themselves, and the extra for those installing from a clone.
INSTALL_HINT = 'pip install mpi4py mpich (or pip install ".[distributed]" in a clone of simdnn)'
# The exit status of a job that the watchdog or an unhandled exception aborted.
ABORT_CODE = 1
# Seconds that MPI_Abort gets to end the job before this rank's own fallback (_abort_job). The
# launcher's kill normally lands well within a second (the watchdog tests end 5.6-6.8 s after
# rank 1 exits, 5 s of it the deadline); 3 s keeps the fallback inside those tests' 10 s slack.
ABORT_GRACE_S = 3.0
# Seconds from the stack dump of a rank that must end the job to its kill (_die_after): time for
# the dump, a few kilobytes, to reach the launcher's output before the process is gone.
DUMP_TO_KILL_S = 0.5


def _die_after(seconds: float) -> None:
    """This process prints every thread's stack (faulthandler's timer) in `seconds` and dies of
    SIGKILL DUMP_TO_KILL_S later, unless _cancel_death() comes first.

    Both come from C threads (faulthandler's, and simdnn's own in _core), which need neither the
    GIL nor a Python thread: MPI_Init holds the GIL, an MPI_Abort that never returns may too, and
    a Python signal handler runs only when the main thread gets the GIL. A death by a signal, not
    an exit status: MPICH's launcher (Hydra) kills every other rank when one dies of a signal,
    but when a rank exits with a status it may reap the rank before it sees its PMI connection
    close, and then it ends no other rank (MPICH 5.0.2's proxy; a CI job hung so past 300 s,
    with rank 0 gone and rank 1 left waiting in MPI_Finalize). faulthandler's own exit is such a
    status (_exit(1)), so it is used only where the OS refused simdnn's thread."""
    faulthandler.dump_traceback_later(seconds, exit=False, file=_stderr_for_faulthandler())
    if not _core._kill_self_after(seconds + DUMP_TO_KILL_S):
        faulthandler.dump_traceback_later(seconds, exit=True, file=_stderr_for_faulthandler())


def _cancel_death() -> None:
    faulthandler.cancel_dump_traceback_later()
    _core._cancel_kill_self()


def _mpi_abort(comm: Any) -> None:
    """MPI_Abort on `comm` (a function of its own so that the tests can make it return or hang)."""
    comm.Abort(ABORT_CODE)


def _abort_job(comm: Any) -> NoReturn:
    """End the whole job from this rank: MPI_Abort, and this process's death by SIGKILL if that
    has not ended the job. MPI_Abort asks the launcher to kill every rank, and MPICH documents a
    gap before the kill in which MPI_Abort can even return (pmodels/mpich#7716), or the kill may
    never come. So this rank dies of SIGKILL at once when MPI_Abort returns, and otherwise
    ABORT_GRACE_S + DUMP_TO_KILL_S after calling it, its stacks printed first (_die_after): a
    death by a signal, which the launcher answers by killing the other ranks."""
    for stream in (sys.stdout, sys.stderr):
        # A closed or broken stream must not stop the abort.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    # Replaces any earlier timer (the join's is cancelled by now): the process ends.
    _die_after(ABORT_GRACE_S)
    _mpi_abort(comm)
    os.kill(os.getpid(), signal.SIGKILL)
    os._exit(ABORT_CODE)  # not reached: a platform without SIGKILL has no MPI wheel either


def _mpi() -> Any:
    """mpi4py's MPI module (importing it initialises MPI), or ImportError naming the extra."""
    try:
        from mpi4py import MPI
    except ImportError as err:
        raise ImportError(
            "simdnn.distributed needs mpi4py and an MPI runtime; install them (mpi4py and the "
            f"MPICH wheel) with {INSTALL_HINT}"
        ) from err
    return MPI


# ------------------------------------------------------------------------------------------------
# The job: communicators, threads, watchdog


class _Watchdog:
    """A daemon thread that aborts the whole job when one collective outlasts the deadline.

    A rank that has exited early, crashed without taking the job down, or hangs leaves the others
    blocked in their next collective forever; MPI itself never times out. ``arm`` before each
    collective and ``disarm`` after cost two attribute writes.
    """

    def __init__(self, comm: Any, timeout: float, rank: int) -> None:
        self.comm, self.timeout, self.rank = comm, timeout, rank
        self._deadline: float | None = None
        self._what = ""
        self._period = min(1.0, max(0.05, timeout / 20))
        self._thread = threading.Thread(target=self._run, name="simdnn-dist-watchdog", daemon=True)
        self._thread.start()

    def arm(self, what: str) -> None:
        self._what = what
        self._deadline = time.monotonic() + self.timeout

    def disarm(self) -> None:
        self._deadline = None

    def _run(self) -> None:
        while True:
            time.sleep(self._period)
            deadline = self._deadline
            if deadline is not None and time.monotonic() > deadline:
                sys.stderr.write(
                    f"simdnn.distributed: rank {self.rank} waited more than {self.timeout:g} s in "
                    f"{self._what}: another rank has exited early, crashed or hangs. Aborting "
                    f"the job (set {TIMEOUT_ENV} to change the deadline, 0 to wait forever).\n"
                )
                _abort_job(self.comm)


class _Job:
    """What init() found: the communicators, this rank's place, the watchdog, counters."""

    def __init__(self, threads: int | None, timeout: float) -> None:
        _yield_when_oversubscribed()
        # Joining waits for every rank: a rank that raised or exited before its init leaves the
        # others in MPI_Init (or the collectives below) forever, and the launcher does not end
        # the job for it. The _Watchdog thread cannot help there (it starts after, and MPI_Init
        # holds the GIL), so C threads cover the join (_die_after): past the deadline this rank
        # prints its stacks and dies of SIGKILL 0.5 s later, which ends the job. It replaces
        # an earlier dump_traceback_later (faulthandler has one timer).
        if timeout > 0:
            _die_after(timeout)
        try:
            MPI = _mpi()
            self.MPI = MPI
            # A private duplicate: collectives here never match a user's on COMM_WORLD.
            self.comm = MPI.COMM_WORLD.Dup()
            self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
            self.local = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
            self.local_rank, self.local_size = self.local.Get_rank(), self.local.Get_size()
            self.hosts: list[str] = self.comm.allgather(MPI.Get_processor_name())
            self.timeout = timeout
            self.comm_seconds = 0.0
            self.comm_calls = 0
            self.threads_set_by = self._set_threads(threads)
        finally:
            if timeout > 0:
                _cancel_death()
        self.watchdog = _Watchdog(self.comm, timeout, self.rank) if timeout > 0 else None
        if self.size > 1:
            self._abort_on_exception()

    def _set_threads(self, threads: int | None) -> str:
        """Kernel threads per rank: `threads` if given; else the count simdnn.set_num_threads
        set before init; else OMP_NUM_THREADS if set; else the cores this rank may run on,
        divided among the ranks of the node. Warns (local rank 0) when the node's ranks x
        threads exceed its cores: a 10-100x collapse, measured."""
        cpus = _affinity()
        node_cpus = set().union(*self.local.allgather(cpus))
        # _core, not _runtime.set_num_threads: init's own choice is not the user's.
        if threads is not None:
            _core.set_num_threads(threads)
            how = "init(threads=...)"
        elif _runtime._set_by_user:
            how = "simdnn.set_num_threads()"
        elif os.environ.get("OMP_NUM_THREADS"):
            how = "OMP_NUM_THREADS"
        elif self.local_size > 1:
            # Bound by mpiexec to fewer cores than the node has: use exactly those.
            mine = len(cpus) if len(cpus) < len(node_cpus) else len(node_cpus) // self.local_size
            _core.set_num_threads(max(1, mine))
            how = "cores per node / ranks per node"
        else:
            how = "default (all cores)"
        total = self.local.allreduce(_runtime.get_num_threads())
        if total > len(node_cpus) and self.local_rank == 0:
            warnings.warn(
                f"simdnn.distributed: {self.local_size} ranks on host {self.hosts[self.rank]!r} "
                f"run {total} kernel threads in all on {len(node_cpus)} cores; oversubscribed "
                "cores slow training 10-100x. Start fewer ranks per host or set fewer threads "
                "(init(threads=...) or OMP_NUM_THREADS)",
                RuntimeWarning,
                stacklevel=4,
            )
        return how

    def _abort_on_exception(self) -> None:
        """An unhandled exception on one rank aborts every rank (MPI would otherwise hang in
        finalisation while the other ranks wait in their next collective)."""
        previous = sys.excepthook
        comm, rank = self.comm, self.rank

        def hook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
            previous(exc_type, exc, tb)
            sys.stderr.write(
                f"simdnn.distributed: rank {rank} raised {exc_type.__name__}; aborting the job\n"
            )
            _abort_job(comm)

        sys.excepthook = hook


_job: _Job | None = None

HEAVY_YIELD = "MPIR_CVAR_ENABLE_HEAVY_YIELD"


def _yield_when_oversubscribed() -> None:
    """Before MPI starts: when the launcher put more ranks on this host than this process has
    cores, let MPICH's waiting ranks sleep instead of spinning (they would steal the cores of
    the ranks still computing). Measured with 4 ranks on 2 cores: the ConvNet epoch 1.5x and the
    MLP's 2.6x faster; not set otherwise, since it costs latency (unless the user set it)."""
    local = os.environ.get("MPI_LOCALNRANKS") or os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE")
    if HEAVY_YIELD in os.environ or not local or not local.isdigit():
        return
    if int(local) > len(_affinity()):
        os.environ[HEAVY_YIELD] = "1"


def _stderr_for_faulthandler() -> Any:
    """sys.stderr if it has a file descriptor (faulthandler writes to one), else descriptor 2:
    a replaced stderr (a test's capture, a notebook) may have none."""
    try:
        sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):
        return 2
    return sys.stderr


def _affinity() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return set(range(os.cpu_count() or 1))


def _timeout_from_env() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(
            f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds (0 turns the watchdog off)"
        ) from None
    if not value >= 0 or math.isinf(value):
        raise ValueError(f"{TIMEOUT_ENV}={raw!r}: expected a finite number of seconds >= 0")
    return value


def init(threads: int | None = None, timeout: float | None = None) -> None:
    """Join the MPI job (MPI_Init through mpi4py); does nothing when already joined.

    threads: kernel threads for this rank. By default the count :func:`simdnn.set_num_threads`
    set before this call, else ``OMP_NUM_THREADS`` if set, else the cores this rank may use
    divided by the ranks on its node (all cores for a single rank); a RuntimeWarning says when
    the node's ranks x threads exceed its cores.
    timeout: seconds a collective may wait before the watchdog aborts the whole job; default
    ``SIMDNN_DIST_TIMEOUT`` or 300; 0 turns the watchdog off. This call itself waits for every
    rank to join: past the same timeout it prints the stacks (faulthandler's "Timeout" dump) and
    exits with status 1, which ends the job when another rank failed before its init.

    Run without ``mpiexec`` it forms a job of one rank, and everything here works unchanged.
    Raises ImportError saying what to install (``pip install mpi4py mpich``) when mpi4py is not
    installed.
    """
    global _job
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)):
            raise TypeError(f"init: threads must be an int or None, got {type(threads).__name__}")
        if threads < 1:
            raise ValueError(f"init: threads must be >= 1, got {threads}")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float, np.number)):
            raise TypeError(
                f"init: timeout must be a number of seconds, got {type(timeout).__name__}"
            )
        if not timeout >= 0 or math.isinf(timeout):
            raise ValueError(f"init: timeout must be finite and >= 0 seconds, got {timeout!r}")
    if _job is not None:
        return
    _job = _Job(
        None if threads is None else int(threads),
        _timeout_from_env() if timeout is None else float(timeout),
    )


def is_initialized() -> bool:
    """Whether :func:`init` has run in this process."""
    return _job is not None


def _get() -> _Job:
    if _job is None:
        init()
    assert _job is not None
    return _job


def rank() -> int:
    """This process's rank in the job, 0 to size() - 1 (joins the job first if needed)."""
    return _get().rank


def size() -> int:
    """The number of ranks in the job (1 without mpiexec)."""
    return _get().size


def local_rank() -> int:
    """This process's rank among the ranks on its host."""
    return _get().local_rank


def local_size() -> int:
    """The number of ranks on this process's host."""
    return _get().local_size


def is_main() -> bool:
    """True on rank 0: the rank that prints, shows progress bars and saves."""
    return _get().rank == 0


def hosts() -> list[str]:
    """The host name of every rank, indexed by rank."""
    return list(_get().hosts)


def _main_or_single() -> bool:
    """True unless this process is a rank other than 0 of a joined job (never joins one)."""
    return _job is None or _job.rank == 0


def comm_stats(reset: bool = False) -> dict[str, float]:
    """Seconds spent inside this module's collectives (transfer plus waiting for the slowest
    rank) and their number, since init or the last reset."""
    job = _get()
    stats = {"seconds": job.comm_seconds, "calls": float(job.comm_calls)}
    if reset:
        job.comm_seconds, job.comm_calls = 0.0, 0
    return stats


class _Collective:
    """Guard one collective: watchdog armed, time counted."""

    __slots__ = ("job", "t0", "what")

    def __init__(self, job: _Job, what: str) -> None:
        self.job, self.what = job, what

    def __enter__(self) -> None:
        if self.job.watchdog is not None:
            self.job.watchdog.arm(self.what)
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.job.comm_seconds += time.perf_counter() - self.t0
        self.job.comm_calls += 1
        if self.job.watchdog is not None:
            self.job.watchdog.disarm()


# ------------------------------------------------------------------------------------------------
# Collectives


def barrier() -> None:
    """Wait until every rank has reached this call."""
    job = _get()
    with _Collective(job, "barrier()"):
        job.comm.Barrier()


_OPS = ("mean", "sum", "max", "min")


def allreduce(value: Any, op: str = "mean") -> Any:
    """Combine a number or an array over the ranks: ``"mean"`` (default), ``"sum"``, ``"max"``
    or ``"min"``. Returns a new float (for a number) or array; the input is unchanged."""
    if op not in _OPS:
        raise ValueError(f"allreduce: op must be one of {_OPS}, got {op!r}")
    scalar = np.isscalar(value)
    arr = np.array(value, dtype=np.float64 if scalar else None, copy=True, order="C")
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"allreduce: expected a number or a numeric array, got dtype {arr.dtype}")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.int64)
    if op == "mean" and arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    job = _get()
    if job.size > 1:
        mpi_op = {"mean": job.MPI.SUM, "sum": job.MPI.SUM, "max": job.MPI.MAX, "min": job.MPI.MIN}
        with _Collective(job, f"allreduce({op!r})"):
            job.comm.Allreduce(job.MPI.IN_PLACE, arr.reshape(-1), op=mpi_op[op])
    if op == "mean":
        arr /= job.size
    return float(arr) if scalar else arr


def broadcast(obj: Any, root: int = 0) -> Any:
    """Rank `root`'s picklable object, on every rank."""
    job = _get()
    _check_root(root, job, "broadcast")
    if job.size == 1:
        return obj
    with _Collective(job, "broadcast()"):
        return job.comm.bcast(obj, root=root)


def _check_root(root: Any, job: _Job, what: str) -> None:
    if isinstance(root, bool) or not isinstance(root, (int, np.integer)):
        raise TypeError(f"{what}: root must be an int, got {type(root).__name__}")
    if not 0 <= root < job.size:
        raise ValueError(
            f"{what}: root must be in [0, {job.size}) for {job.size} ranks, got {root}"
        )


def _agree(job: _Job, what: str, description: Any, root: int | None = None) -> None:
    """Every rank checks that its `description` equals rank `root`'s (or that all are equal);
    all raise the same ValueError if one differs, instead of hanging in mismatched collectives."""
    if job.size == 1:
        return
    with _Collective(job, f"{what} (agreement check)"):
        every = job.comm.allgather(description)
    reference = every[0 if root is None else root]
    bad = [r for r, d in enumerate(every) if d != reference]
    if bad:
        details = "; ".join(f"rank {r}: {every[r]!r}" for r in bad[:3])
        raise ValueError(
            f"{what}: ranks {bad} differ from rank {0 if root is None else root} "
            f"({reference!r}): {details}"
        )


def _as_params(params: Any, what: str) -> list[Parameter]:
    if isinstance(params, Module):
        return params.parameters()
    if isinstance(params, Parameter):
        return [params]
    try:
        items = list(params)
    except TypeError:
        raise TypeError(
            f"{what}: expected a Module or an iterable of Parameters, got {type(params).__name__}"
        ) from None
    for i, p in enumerate(items):
        if not isinstance(p, Parameter):
            raise TypeError(f"{what}: item {i} is {type(p).__name__}, expected a Parameter")
    return items


def _bcast_arrays(job: _Job, arrays: Sequence[np.ndarray], root: int, what: str) -> None:
    """Overwrite `arrays` with rank root's, one fused broadcast per dtype."""
    by_dtype: dict[np.dtype, list[np.ndarray]] = {}
    for a in arrays:
        by_dtype.setdefault(a.dtype, []).append(a)
    for dtype, group in by_dtype.items():
        flat = np.empty(sum(a.size for a in group), dtype)
        if job.rank == root:
            np.concatenate([a.ravel() for a in group], out=flat)
        with _Collective(job, what):
            job.comm.Bcast(flat, root=root)
        if job.rank != root:
            offset = 0
            for a in group:
                a[...] = flat[offset : offset + a.size].reshape(a.shape)
                offset += a.size


def broadcast_parameters(params: Module | Iterable[Parameter], root: int = 0) -> None:
    """Copy rank `root`'s parameter values into every rank's (in place), so all ranks start from
    the same weights. Takes a Module or its parameters; every rank must pass the same shapes
    and dtypes (ValueError on every rank otherwise)."""
    job = _get()
    _check_root(root, job, "broadcast_parameters")
    plist = _as_params(params, "broadcast_parameters")
    if job.size == 1:
        return
    _agree(
        job,
        "broadcast_parameters",
        [(p.shape, str(p.dtype)) for p in plist],
        root,
    )
    _bcast_arrays(job, [p.data for p in plist], root, "broadcast_parameters")


def _optimizer_state(opt: Any) -> tuple[dict[str, Any], list[np.ndarray], list[Any]]:
    """(plain attributes, state arrays, structure) of an optimiser: every ndarray attribute and
    every list or tuple of ndarrays (None allowed) except the parameters, plus the attributes that
    are numbers, strings, bools, None or tuples of those (learning rate, step count ``_t``...)."""
    plain: dict[str, Any] = {}
    arrays: list[np.ndarray] = []
    structure: list[Any] = []
    for name in sorted(vars(opt)):
        if name == "params":
            continue
        value = vars(opt)[name]
        if isinstance(value, np.ndarray):
            arrays.append(value)
            structure.append((name, value.shape, str(value.dtype)))
        elif isinstance(value, (list, tuple)) and any(isinstance(v, np.ndarray) for v in value):
            if not all(v is None or isinstance(v, np.ndarray) for v in value):
                raise TypeError(
                    f"broadcast_optimizer_state: {type(opt).__name__}.{name} mixes arrays with "
                    "other objects; expected arrays (or None) only"
                )
            arrays.extend(v for v in value if v is not None)
            structure.append(
                (name, [None if v is None else (v.shape, str(v.dtype)) for v in value])
            )
        elif _is_plain(value):
            plain[name] = value
            structure.append((name, type(value).__name__))
    return plain, arrays, structure


def _is_plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str, np.number)):
        return True
    return isinstance(value, tuple) and all(_is_plain(v) for v in value)


def broadcast_optimizer_state(optimizer: Optimizer, root: int = 0) -> None:
    """Copy rank `root`'s optimiser state into every rank's: its state arrays in place (SGD's
    ``_velocity``, Adam's ``_m`` and ``_v``: any ndarray attribute or list of them) and its
    scalar settings (``lr``, the step count ``_t``...). Call it after broadcast_parameters when
    resuming from a checkpoint that only rank 0 loaded."""
    job = _get()
    _check_root(root, job, "broadcast_optimizer_state")
    if not hasattr(optimizer, "params"):
        raise TypeError(
            "broadcast_optimizer_state: expected a simdnn optimiser (with .params), got "
            f"{type(optimizer).__name__}"
        )
    plain, arrays, structure = _optimizer_state(optimizer)
    if job.size == 1:
        return
    _agree(job, "broadcast_optimizer_state", (type(optimizer).__name__, structure), root)
    _bcast_arrays(job, arrays, root, "broadcast_optimizer_state")
    with _Collective(job, "broadcast_optimizer_state"):
        plain = job.comm.bcast(plain, root=root)
    for name, value in plain.items():
        setattr(optimizer, name, value)


# ------------------------------------------------------------------------------------------------
# Gradients in one flat buffer


class _GradBuffer:
    """Every parameter's gradient as a view of one flat array (plus `extra` trailing scalars for
    figures that travel in the same allreduce), so the allreduce runs in place, without a copy.

    It sets ``p.grad = view`` through the Parameter's setter; backward passes write into the
    gradient buffer in place, so the views stay the gradients. ``sync`` checks that, and copies
    back and re-points any gradient that was rebound since (or rebuilds after a dtype change).
    """

    def __init__(self, params: Sequence[Parameter], extra: int = 0) -> None:
        dtypes = {p.dtype for p in params}
        if len(dtypes) != 1:
            raise TypeError(
                "distributed: every parameter must have the same dtype to share one gradient "
                f"buffer, got {sorted(str(d) for d in dtypes)}; convert the model with "
                "model.astype(...)"
            )
        self.params = list(params)
        self.extra = extra
        self.dtype = dtypes.pop()
        total = sum(p.data.size for p in params)
        self.flat = np.zeros(total + extra, self.dtype)
        self.grads = self.flat[:total]
        self.tail = self.flat[total:]
        self.views: list[np.ndarray] = []
        offset = 0
        for p in self.params:
            view = self.flat[offset : offset + p.data.size].reshape(p.shape)
            view[...] = p.grad  # keeps what was accumulated (zeros when stale)
            p.grad = view
            self.views.append(view)
            offset += p.data.size

    def sync(self) -> _GradBuffer:
        """Materialise every gradient into the buffer; returns the buffer to use (self, or a
        rebuilt one after a parameter changed shape or dtype)."""
        for p, view in zip(self.params, self.views):
            g = p.grad  # zero-fills a gradient no backward wrote this step
            if g is view:
                continue
            if g.shape != view.shape or p.dtype != self.dtype or g.dtype != self.dtype:
                return _GradBuffer(self.params, self.extra)
            view[...] = g
            p.grad = view
        return self


_buffers: dict[tuple[int, ...], _GradBuffer] = {}


def allreduce_gradients(params: Module | Iterable[Parameter], weight: float | None = None) -> None:
    """Combine every parameter's ``.grad`` over the ranks, in place, in one fused allreduce.

    weight None: the mean over the ranks (each rank's gradient came from a batch of the same
    size). A number: this rank's gradient is multiplied by it and the results summed, e.g.
    ``local_batch / global_batch`` when the ranks' batches differ in size. The first call makes
    the gradients views of one flat buffer (kept for the next calls), so the allreduce needs no
    copy. Every rank must call it, with the same parameters.
    """
    job = _get()
    plist = _as_params(params, "allreduce_gradients")
    if weight is not None:
        if isinstance(weight, bool) or not isinstance(weight, (int, float, np.number)):
            raise TypeError(
                f"allreduce_gradients: weight must be a number, got {type(weight).__name__}"
            )
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"allreduce_gradients: weight must be finite and >= 0, got {weight}")
    if not plist:
        return
    key = tuple(id(p) for p in plist)
    buf = _buffers.get(key)
    if buf is None:
        if len(_buffers) >= 8:
            _buffers.pop(next(iter(_buffers)))
        buf = _GradBuffer(plist)
    buf = _buffers[key] = buf.sync()
    scale = 1.0 / job.size if weight is None else float(weight)
    if scale == 0.0:
        buf.grads.fill(0)  # a rank without examples contributes zeros (even over NaN or Inf)
    elif scale != 1.0:
        buf.grads *= buf.dtype.type(scale)
    if job.size > 1:
        with _Collective(job, "allreduce_gradients"):
            job.comm.Allreduce(job.MPI.IN_PLACE, buf.flat, op=job.MPI.SUM)


# ------------------------------------------------------------------------------------------------
# Splitting data


def _bounds(n: int, parts: int, index: int) -> tuple[int, int]:
    """[lo, hi) of part `index` of n items split into `parts` contiguous parts whose sizes differ
    by at most one, the larger ones first (numpy.array_split's split)."""
    base, extra = divmod(n, parts)
    lo = index * base + min(index, extra)
    return lo, lo + base + (index < extra)


def shard(data: Any, num_replicas: int | None = None, rank: int | None = None) -> Any:
    """This rank's contiguous share of `data` (an array, a sequence, or an int n for range(n)):
    parts differ in size by at most one, larger first, and may be empty. Default num_replicas
    and rank: the job's."""
    num_replicas, rank = _replicas(num_replicas, rank, "shard")
    if isinstance(data, (int, np.integer)) and not isinstance(data, bool):
        if data < 0:
            raise ValueError(f"shard: n must be >= 0, got {data}")
        lo, hi = _bounds(int(data), num_replicas, rank)
        return range(lo, hi)
    try:
        n = len(data)
    except TypeError:
        raise TypeError(
            f"shard: expected an array, a sequence or an int, got {type(data).__name__}"
        ) from None
    lo, hi = _bounds(n, num_replicas, rank)
    return data[lo:hi]


def _replicas(num_replicas: Any, rank_: Any, what: str) -> tuple[int, int]:
    if num_replicas is None or rank_ is None:
        job = _get()
        num_replicas = job.size if num_replicas is None else num_replicas
        rank_ = job.rank if rank_ is None else rank_
    for name, value in (("num_replicas", num_replicas), ("rank", rank_)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{what}: {name} must be an int, got {type(value).__name__}")
    if num_replicas < 1:
        raise ValueError(f"{what}: num_replicas must be >= 1, got {num_replicas}")
    if not 0 <= rank_ < num_replicas:
        raise ValueError(f"{what}: rank must be in [0, {num_replicas}), got {rank_}")
    return int(num_replicas), int(rank_)


class DistributedSampler:
    """The indices of a data set that this rank trains on each epoch, as PyTorch's
    ``DistributedSampler``: every rank draws the same permutation of range(n) from
    (seed, epoch), pads it by repeating its start to a multiple of the ranks (or drops the tail,
    drop_last=True), and takes every num_replicas-th index from its rank on. Every rank then
    gets ``len(sampler)`` indices, so equal local batches make the plain mean of the gradients
    exact. Call ``set_epoch(e)`` before each epoch for a new order.

    For ``simdnn.fit(..., distributed=True)`` no sampler is needed: fit splits each global
    batch itself.
    """

    def __init__(
        self,
        n: int | Any,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool):
            try:
                n = len(n)
            except TypeError:
                raise TypeError(
                    f"DistributedSampler: n must be an int or have a length, got {type(n).__name__}"
                ) from None
        if n < 0:
            raise ValueError(f"DistributedSampler: n must be >= 0, got {n}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"DistributedSampler: seed must be an int, got {type(seed).__name__}")
        self.num_replicas, self.rank = _replicas(num_replicas, rank, "DistributedSampler")
        self.n, self.shuffle, self.seed, self.drop_last = int(n), shuffle, int(seed), drop_last
        self.epoch = 0
        if drop_last:
            self.num_samples = self.n // self.num_replicas
        else:
            self.num_samples = math.ceil(self.n / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose permutation the next iteration draws (the same on all ranks)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(
                f"DistributedSampler.set_epoch: epoch must be an int >= 0, got {epoch!r}"
            )
        self.epoch = int(epoch)

    def indices(self) -> np.ndarray:
        """This rank's indices for the current epoch, as an int64 array."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        else:
            order = np.arange(self.n)
        if self.drop_last:
            order = order[: self.total_size]
        elif self.total_size > self.n and self.n:
            order = np.resize(order, self.total_size)  # repeats from the start
        return order[self.rank : self.total_size : self.num_replicas].astype(np.int64)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples


# ------------------------------------------------------------------------------------------------
# What simdnn.fit(..., distributed=True) calls


class _FitRun:
    """One distributed fit: shares of each global batch, the per-step reduction, validation."""

    # The figures that travel at the end of the gradient buffer, in the same allreduce.
    _LOSS, _CORRECT, _HAS_ACC, _NONFINITE = range(4)

    def __init__(
        self,
        job: _Job,
        params: Sequence[Parameter],
        broadcast_order: bool,
        model: Module | None = None,
    ) -> None:
        self.job = job
        self.params = list(params)
        self.model = model
        self.is_main = job.rank == 0
        self.broadcast_order = broadcast_order and job.size > 1
        self._buffer: _GradBuffer | None = None

    def order(self, order: np.ndarray) -> np.ndarray:
        """The epoch's shuffled order, rank 0's (broadcast when fit had no seed, since the
        ranks' generators may differ)."""
        if not self.broadcast_order:
            return order
        order = np.ascontiguousarray(order, dtype=np.int64)
        with _Collective(self.job, "the epoch's order broadcast"):
            self.job.comm.Bcast(order, root=0)
        return order

    def share(self, idx: np.ndarray) -> np.ndarray:
        """This rank's contiguous share of a global batch's indices (possibly empty)."""
        lo, hi = _bounds(len(idx), self.job.size, self.job.rank)
        return idx[lo:hi]

    def reduce_step(
        self, value: float, acc: float | None, local_n: int, global_n: int
    ) -> tuple[float, float | None]:
        """Average the gradients over the ranks, weighted by local_n / global_n, and combine the
        batch's figures, all in one in-place allreduce. value and acc are this rank's mean loss
        and accuracy over its local_n examples (ignored when local_n is 0); returns the global
        batch's mean loss (NaN or Inf when any rank's was) and accuracy (None if not defined).
        """
        job = self.job
        if job.size == 1:
            return value, acc
        buf = self._buffer
        buf = self._buffer = _GradBuffer(self.params, extra=4) if buf is None else buf.sync()
        w = local_n / global_n
        tail = buf.tail
        if local_n == 0:
            buf.grads.fill(0)
            tail.fill(0)
        else:
            if w != 1.0:
                buf.grads *= buf.dtype.type(w)
            tail[self._LOSS] = value * w
            tail[self._CORRECT] = 0.0 if acc is None else acc * local_n
            tail[self._HAS_ACC] = acc is not None
            tail[self._NONFINITE] = not math.isfinite(value)
        with _Collective(job, "the gradient allreduce of a training step"):
            job.comm.Allreduce(job.MPI.IN_PLACE, buf.flat, op=job.MPI.SUM)
        loss = float(tail[self._LOSS])
        if tail[self._NONFINITE] and math.isfinite(loss):
            loss = math.nan
        return loss, (float(tail[self._CORRECT]) / global_n if tail[self._HAS_ACC] else None)

    def sync_buffers(self) -> None:
        """Make the model's buffers (BatchNorm's running statistics) the same on every rank:
        floating-point ones averaged over the ranks, integer ones (BatchNorm's batch count) the
        largest. Each rank's statistics come from its own shares of the batches, so they differ;
        an exponential average is linear, so averaging at any point gives what averaging at the
        end would. One small allreduce per dtype; fit calls it after each epoch's steps."""
        if self.model is None or self.job.size == 1:
            return
        job = self.job
        by_dtype: dict[np.dtype, list[np.ndarray]] = {}
        for b in _buffers_of(self.model):
            if b.dtype.kind in "fiu":
                by_dtype.setdefault(b.dtype, []).append(b)
        for dtype, group in by_dtype.items():
            flat = np.concatenate([b.ravel() for b in group])
            op = job.MPI.SUM if dtype.kind == "f" else job.MPI.MAX
            with _Collective(job, "the buffer allreduce (BatchNorm statistics)"):
                job.comm.Allreduce(job.MPI.IN_PLACE, flat, op=op)
            if dtype.kind == "f":
                flat /= job.size
            offset = 0
            for b in group:
                b[...] = flat[offset : offset + b.size].reshape(b.shape)
                offset += b.size

    def evaluate(
        self, model: Module, loss: Loss, x: np.ndarray, y: np.ndarray, batch_size: int
    ) -> dict[str, float | None]:
        """evaluate() with the examples split across the ranks and the sums reduced: every rank
        gets the same figures."""
        from .training import evaluate

        n = len(x)
        lo, hi = _bounds(n, self.job.size, self.job.rank)
        sums = np.zeros(3)
        if hi > lo:
            scores = evaluate(model, loss, x[lo:hi], y[lo:hi], batch_size=batch_size)
            sums[0] = scores["loss"] * (hi - lo)
            if scores["accuracy"] is not None:
                sums[1], sums[2] = scores["accuracy"] * (hi - lo), 1
        if self.job.size > 1:
            with _Collective(self.job, "the validation allreduce"):
                self.job.comm.Allreduce(self.job.MPI.IN_PLACE, sums, op=self.job.MPI.SUM)
        return {"loss": sums[0] / max(n, 1), "accuracy": sums[1] / max(n, 1) if sums[2] else None}


def _start_fit(
    model: Module,
    optimizer: Optimizer,
    n: int,
    batch_size: int,
    epochs: int,
    shuffle: bool,
    seed: int | None,
    validation_n: int | None,
) -> _FitRun:
    """Join the job, check that every rank runs the same fit (ValueError on all ranks instead of
    a hang), and start every rank from rank 0's weights and optimiser state."""
    job = _get()
    params = model.parameters()
    _agree(
        job,
        "fit(distributed=True): every rank must call fit with the same data sizes, settings and "
        "model",
        {
            "n": n,
            "batch_size": batch_size,
            "epochs": epochs,
            "shuffle": bool(shuffle),
            "seed": None if seed is None else str(seed),
            "validation_n": validation_n,
            "parameters": [(p.shape, str(p.dtype)) for p in params],
            "buffers": [(b.shape, str(b.dtype)) for b in _buffers_of(model)],
            "optimizer": type(optimizer).__name__,
        },
    )
    broadcast_parameters(params)
    broadcast_optimizer_state(optimizer)
    if job.size > 1:
        # Buffers too (BatchNorm's running statistics and batch count), as one process starts.
        _bcast_arrays(job, _buffers_of(model), 0, "the buffer broadcast of fit")
    return _FitRun(job, params, broadcast_order=seed is None and bool(shuffle), model=model)


def _buffers_of(model: Module) -> list[np.ndarray]:
    """The model's numeric buffers, each once (a buffer may be shared by two modules)."""
    seen: set[int] = set()
    out = []
    for _, b in model.named_buffers():
        if b.dtype.kind in "fiub" and id(b) not in seen:
            seen.add(id(b))
            out.append(b)
    return out


# ------------------------------------------------------------------------------------------------
# python -m simdnn distributed-check


def check(sizes: Sequence[int] = (1, 53_002, 1 << 20), repeats: int = 50) -> dict[str, Any]:
    """Measure the job: ranks, hosts, threads per rank, and the allreduce's time for float32
    arrays of `sizes` elements (median of `repeats`, after a warm-up) with the bandwidth it
    implies (bytes / time). Every rank must call it; returns the same figures on every rank."""
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise ValueError(f"check: repeats must be an int >= 1, got {repeats!r}")
    job = _get()
    per_rank = job.comm.allgather(
        {"host": job.hosts[job.rank], "threads": _runtime.get_num_threads()}
    )
    result: dict[str, Any] = {
        "ranks": job.size,
        "hosts": sorted({r["host"] for r in per_rank}),
        "ranks_per_host": {h: sum(r["host"] == h for r in per_rank) for h in job.hosts},
        "threads_per_rank": [r["threads"] for r in per_rank],
        "threads_set_by": job.threads_set_by,
        "cores_on_this_host": len(_affinity()),
        "mpi": job.MPI.Get_library_version().splitlines()[0].strip(),
        "timeout_s": job.timeout,
        "allreduce": [],
    }
    for count in sizes:
        buf = np.ones(int(count), np.float32)
        times = []
        with _Collective(job, f"check(): allreduces of {count} floats"):
            for i in range(repeats + 5):
                job.comm.Barrier()
                t0 = time.perf_counter()
                job.comm.Allreduce(job.MPI.IN_PLACE, buf, op=job.MPI.SUM)
                if i >= 5:
                    times.append(time.perf_counter() - t0)
            # The slowest rank's median: what a training step waits for.
            seconds = job.comm.allreduce(float(np.median(times)), op=job.MPI.MAX)
        result["allreduce"].append(
            {"floats": int(count), "seconds": seconds, "bytes_per_s": 4 * count / seconds}
        )
    return result


def format_check(result: dict[str, Any]) -> str:
    """The figures of :func:`check` as lines of text."""
    lines = [
        f"ranks: {result['ranks']} on {len(result['hosts'])} host(s): "
        + ", ".join(f"{h} ({k} ranks)" for h, k in result["ranks_per_host"].items()),
        f"threads per rank: {result['threads_per_rank']} (set by {result['threads_set_by']}); "
        f"{result['cores_on_this_host']} cores on rank 0's host",
        f"MPI: {result['mpi']}; watchdog timeout {result['timeout_s']:g} s",
    ]
    if result["ranks"] == 1:
        lines.append("one rank: an allreduce has nothing to exchange (start it under mpiexec -n 2)")
        return "\n".join(lines)
    for row in result["allreduce"]:
        lines.append(
            f"allreduce of {row['floats']:>9,} float32: {1e6 * row['seconds']:9.1f} us, "
            f"{row['bytes_per_s'] / 1e9:6.2f} GB/s"
        )
    return "\n".join(lines)
