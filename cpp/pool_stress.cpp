// simdnn_pool_stress: the thread pool without Python, for ThreadSanitizer (tools/tsan.sh) and as a
// quick check of its protocol. Two caller threads each run parallel_for calls back to back with a
// task count that changes on every call (1 to 13 tasks, 2 to 8 threads): the pattern that once let
// a worker late from one call claim a task of the next. Every task of every call must run exactly
// once; one call in 97 throws from a task and must rethrow it in its caller. Exit status 0 when all
// checks hold.
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <thread>
#include <vector>

#include "common/parallel.h"

namespace {

// Runs `calls` parallel calls; returns the number of wrong task counts or missing exceptions.
int64_t hammer(int64_t calls, int seed) {
  int64_t bad = 0;
  std::vector<std::atomic<int>> hits(16);
  for (int64_t i = 0; i < calls; ++i) {
    const int64_t n = 1 + (i * 7919 + seed) % 13;
    const int nthreads = 2 + static_cast<int>((i + seed) % 3) * 3;
    const bool raise = (i + seed) % 97 == 0;
    for (int64_t t = 0; t < n; ++t) hits[t].store(0, std::memory_order_relaxed);
    bool raised = false;
    try {
      simdnn::parallel_for(n, nthreads, [&](int64_t t) {
        hits[t].fetch_add(1, std::memory_order_relaxed);
        if (raise && t == n - 1) throw std::runtime_error("task failed");
      });
    } catch (const std::runtime_error&) {
      raised = true;
    }
    if (raised != raise) ++bad;
    for (int64_t t = 0; t < n; ++t) {
      // A failed call may skip the tasks after the failing one, never run one twice.
      const int h = hits[t].load(std::memory_order_relaxed);
      if (h > 1 || (!raise && h != 1)) ++bad;
    }
  }
  return bad;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t calls = argc > 1 ? std::atoll(argv[1]) : 20000;
  simdnn::set_thread_cap(8);
  std::atomic<int64_t> bad{0};
  std::thread other([&] { bad += hammer(calls, 1); });
  bad += hammer(calls, 0);
  other.join();
  const simdnn::PoolStats s = simdnn::pool_stats();
  std::printf(
      "simdnn_pool_stress: %lld calls on 2 caller threads, %lld wrong (%lld parallel, "
      "%lld in the caller after a stall)\n",
      static_cast<long long>(2 * calls), static_cast<long long>(bad.load()),
      static_cast<long long>(s.calls), static_cast<long long>(s.solo));
  return bad.load() == 0 ? 0 : 1;
}
