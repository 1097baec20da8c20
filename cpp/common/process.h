// Ending this process when Python cannot: what simdnn.distributed falls back on when a rank must
// end the job (a join past its deadline, an MPI_Abort that has not ended the job).
#pragma once

namespace simdnn {

// Kills this process with SIGKILL (TerminateProcess on Windows) `seconds` from now unless
// cancel_kill_self() comes first; arming again replaces the earlier kill (as faulthandler's one
// timer is replaced). The kill comes from a detached thread that holds no lock and needs no GIL,
// so neither a Python signal handler nor a thread stuck with the GIL (MPI_Init holds it) can stop
// it. A death by a signal, not an exit status: MPICH's launcher kills every other rank when one
// dies of a signal, but a rank that exits with a status may be reaped before the launcher sees
// its PMI connection close, and then no other rank is ended (Hydra's proxy, MPICH 5.0.2: a job
// left running for ever). Returns false when the thread could not be started (the OS refused it).
// seconds: finite and >= 0.
bool kill_self_after(double seconds) noexcept;
// Cancels the armed kill, if any (its thread wakes at its time and does nothing).
void cancel_kill_self() noexcept;

}  // namespace simdnn
