#include "common/process.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <thread>

#ifdef _WIN32
#include <windows.h>
#else
#include <unistd.h>

#include <csignal>
#endif

namespace simdnn {

namespace {

// Each arm or cancel takes the next number; a kill thread kills only if its own arm is still the
// latest. A cancelled thread just sleeps out its time: no lock, no wake-up to get wrong.
std::atomic<std::uint64_t> g_latest{0};

}  // namespace

bool kill_self_after(double seconds) noexcept {
  const std::uint64_t mine = g_latest.fetch_add(1) + 1;
  try {
    std::thread([seconds, mine] {
      std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
      if (g_latest.load() != mine) return;
#ifdef _WIN32
      TerminateProcess(GetCurrentProcess(), 9);
#else
      kill(getpid(), SIGKILL);
#endif
    }).detach();
    return true;
  } catch (const std::exception&) {  // std::system_error: no thread for this process
    return false;
  }
}

void cancel_kill_self() noexcept { g_latest.fetch_add(1); }

}  // namespace simdnn
