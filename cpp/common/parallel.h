// Thread count shared by every kernel, and the workspace that kernels pack into.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <mutex>

namespace simdnn {

// Threads a kernel may use. Defaults to OpenMP's max (which honours OMP_NUM_THREADS); 1 when the
// build has no OpenMP.
int get_num_threads();
// n >= 1. Takes effect for the next kernel call; safe to call while other threads run kernels.
void set_num_threads(int n);
bool have_openmp();

// Exceptions out of an OpenMP region. An exception may not leave a region (the process would
// terminate), so each worker runs its body through run(), which keeps the first exception (e.g.
// std::bad_alloc from a workspace that cannot grow), and the calling thread rethrows it after the
// region: a MemoryError in Python instead of a crash. The bodies must not contain barriers or
// worksharing constructs, since a worker that fails skips the rest of its body.
class ThreadErrors {
 public:
  template <class F>
  void run(const F& body) noexcept {
    try {
      body();
    } catch (...) {
      record();
    }
  }
  void record() noexcept;  // keeps std::current_exception() if it is the first
  void rethrow();          // in the calling thread, after the region

 private:
  std::mutex mutex_;
  std::exception_ptr first_;
};

// Bytes of packed A a GEMM holds at once (default 32 MiB). Tests lower it to reach the blocked
// code paths of huge inputs with small ones; it is not a user setting.
int64_t gemm_a_pack_bytes();
void set_gemm_a_pack_bytes(int64_t bytes);

// A grow-only, 64-byte-aligned scratch buffer owned by the calling thread, one per slot. Kernels
// take it before their parallel region and share it among their OpenMP workers, so a call never
// allocates once the buffer has grown to its size (an allocation of a packing buffer per call costs
// page faults that are comparable with a whole small GEMM). Throws std::bad_alloc when it cannot
// grow. The pointer stays valid until the same thread asks for the same slot again.
// Slots: gemm_pack for the GEMM engine's packed panels, op_scratch for an op's own buffers (col
// matrices, padded planes, partial sums), pack_aux for temporaries of a packing policy.
enum class WorkspaceSlot : int { gemm_pack = 0, op_scratch = 1, pack_aux = 2, count = 3 };
void* workspace(WorkspaceSlot slot, std::size_t bytes);

}  // namespace simdnn
