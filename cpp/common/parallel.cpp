#include "common/parallel.h"

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <new>

#ifdef _WIN32
#include <malloc.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

namespace simdnn {

namespace {

int default_threads() {
#ifdef _OPENMP
  const int n = omp_get_max_threads();
  return n > 0 ? n : 1;
#else
  return 1;
#endif
}

std::atomic<int>& thread_setting() {
  static std::atomic<int> n{default_threads()};
  return n;
}

void* aligned_malloc(std::size_t size) {
#ifdef _WIN32
  return _aligned_malloc(size, 64);
#else
  return std::aligned_alloc(64, size);
#endif
}

void aligned_free(void* p) {
#ifdef _WIN32
  _aligned_free(p);
#else
  std::free(p);
#endif
}

// std::bad_alloc (pybind11 turns it into MemoryError) whose message says how much was asked for.
class WorkspaceError : public std::bad_alloc {
 public:
  explicit WorkspaceError(std::size_t bytes) {
    std::snprintf(what_, sizeof(what_),
                  "simdnn: cannot allocate %.3g GiB of kernel workspace (%zu bytes); use smaller "
                  "inputs or a smaller batch",
                  static_cast<double>(bytes) / (1 << 30), bytes);
  }
  const char* what() const noexcept override { return what_; }

 private:
  char what_[160];
};

struct Buffer {
  void* ptr = nullptr;
  std::size_t size = 0;
  ~Buffer() { aligned_free(ptr); }
};

}  // namespace

int get_num_threads() { return thread_setting().load(std::memory_order_relaxed); }

void set_num_threads(int n) { thread_setting().store(n < 1 ? 1 : n, std::memory_order_relaxed); }

bool have_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

namespace {
std::atomic<int64_t>& a_pack_setting() {
  static std::atomic<int64_t> bytes{int64_t(32) << 20};
  return bytes;
}
}  // namespace

void ThreadErrors::record() noexcept {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!first_) first_ = std::current_exception();
}

void ThreadErrors::rethrow() {
  if (first_) std::rethrow_exception(first_);
}

int64_t gemm_a_pack_bytes() { return a_pack_setting().load(std::memory_order_relaxed); }
void set_gemm_a_pack_bytes(int64_t bytes) {
  a_pack_setting().store(bytes < 1 ? 1 : bytes, std::memory_order_relaxed);
}

void* workspace(WorkspaceSlot slot, std::size_t bytes) {
  thread_local Buffer buffers[static_cast<int>(WorkspaceSlot::count)];
  Buffer& buf = buffers[static_cast<int>(slot)];
  if (bytes > buf.size) {
    // Grow to the next multiple of 64 KiB so that slowly growing requests do not reallocate often.
    constexpr std::size_t kGrain = 65536;
    if (bytes > SIZE_MAX - kGrain) throw WorkspaceError(bytes);
    const std::size_t size = (bytes + kGrain - 1) & ~(kGrain - 1);
    void* p = aligned_malloc(size);
    if (p == nullptr) throw WorkspaceError(bytes);
    aligned_free(buf.ptr);
    buf.ptr = p;
    buf.size = size;
  }
  return buf.ptr;
}

}  // namespace simdnn
