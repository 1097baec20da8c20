#include "common/parallel.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#ifdef _WIN32
#include <malloc.h>
#else
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <unistd.h>
#endif
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64)
#include <immintrin.h>
#define SIMDNN_PAUSE() _mm_pause()
#define SIMDNN_HAVE_MXCSR 1
#elif defined(__aarch64__)
#define SIMDNN_PAUSE() __asm__ __volatile__("yield")
#else
#define SIMDNN_PAUSE() ((void)0)
#endif

namespace simdnn {
namespace {
// MXCSR control bits (the exception flags, bits 0-5, are left out of comparisons and copies):
// DAZ (bit 6), the exception masks (7-12), rounding (13-14), FTZ (15).
constexpr uint32_t kFpControl = 0xffc0u;
constexpr uint32_t kFpFlushBits = (1u << 15) | (1u << 6);  // FTZ | DAZ
std::atomic<bool> g_flush_denormal{false};

uint32_t fp_control() {
#ifdef SIMDNN_HAVE_MXCSR
  return _mm_getcsr() & kFpControl;
#else
  return 0;
#endif
}

void set_fp_control(uint32_t bits) {
#ifdef SIMDNN_HAVE_MXCSR
  _mm_setcsr((_mm_getcsr() & ~kFpControl) | (bits & kFpControl));
#else
  (void)bits;
#endif
}
}  // namespace

bool set_flush_denormal(bool on) {
#ifdef SIMDNN_HAVE_MXCSR
  g_flush_denormal.store(on, std::memory_order_relaxed);
  return true;
#else
  (void)on;
  return false;
#endif
}

bool flush_denormal() { return g_flush_denormal.load(std::memory_order_relaxed); }

KernelCallScope::KernelCallScope() {
  if (g_flush_denormal.load(std::memory_order_relaxed)) {
    const uint32_t now = fp_control();
    if ((now & kFpFlushBits) != kFpFlushBits) {
      saved_fp_ = now;
      restore_fp_ = true;
      set_fp_control(now | kFpFlushBits);
    }
  }
}
}  // namespace simdnn

namespace simdnn {

namespace {

// ---------------------------------------------------------------------------------------------
// Thread count

int affinity_cpus() {
#if defined(__linux__)
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
#endif
  const unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? static_cast<int>(n) : 1;
}

#if defined(__linux__)
bool read_file(const std::string& path, std::string* out) {
  std::FILE* f = std::fopen(path.c_str(), "r");
  if (f == nullptr) return false;
  char buf[4096];
  const std::size_t n = std::fread(buf, 1, sizeof(buf) - 1, f);
  std::fclose(f);
  out->assign(buf, n);
  return true;
}

// CPUs a quota of `quota` microseconds per `period` allows, rounded up (1.5 CPUs: 2 threads, as
// the JVM and .NET do: both threads are throttled together at the end of the period, and one
// thread would leave half a CPU unused); 0 when there is no quota.
int quota_cpus(double quota, double period) {
  if (!(quota > 0) || !(period > 0)) return 0;
  const double cpus = quota / period;
  if (cpus >= 1e6) return 0;
  const int n = static_cast<int>(cpus);
  return n < cpus ? n + 1 : (n < 1 ? 1 : n);
}

// The tightest CPU quota (cgroup v2 cpu.max, or v1 cpu.cfs_quota_us / cpu.cfs_period_us) on the
// way from this process's cgroup up to the hierarchy's root: a container runtime sets it on the
// container's cgroup, often seen as "/" from inside. 0: none. SIMDNN_CGROUP_ROOT replaces
// "/sys/fs/cgroup" and SIMDNN_CGROUP_SELF "/proc/self/cgroup" (the tests' fake hierarchies).
int cgroup_quota_cpus() {
  const char* root_env = std::getenv("SIMDNN_CGROUP_ROOT");
  const char* self_env = std::getenv("SIMDNN_CGROUP_SELF");
  const std::string root = root_env != nullptr ? root_env : "/sys/fs/cgroup";
  std::string self;
  if (!read_file(self_env != nullptr ? self_env : "/proc/self/cgroup", &self)) return 0;
  int best = 0;
  auto take = [&](int n) {
    if (n > 0 && (best == 0 || n < best)) best = n;
  };
  // Each line: hierarchy-ID:controllers:path ("0::/path" for v2).
  std::size_t pos = 0;
  while (pos < self.size()) {
    std::size_t eol = self.find('\n', pos);
    if (eol == std::string::npos) eol = self.size();
    const std::string line = self.substr(pos, eol - pos);
    pos = eol + 1;
    const std::size_t c1 = line.find(':');
    const std::size_t c2 = c1 == std::string::npos ? c1 : line.find(':', c1 + 1);
    if (c2 == std::string::npos) continue;
    const std::string ctrl = line.substr(c1 + 1, c2 - c1 - 1);
    std::string path = line.substr(c2 + 1);
    bool v1 = false;
    std::string dir;
    if (ctrl.empty()) {
      dir = root;  // v2 unified hierarchy
    } else {
      // v1: the hierarchy whose controller list holds "cpu" (mounted as cpu or cpu,cpuacct).
      std::size_t b = 0;
      bool has_cpu = false;
      while (b <= ctrl.size()) {
        std::size_t e = ctrl.find(',', b);
        if (e == std::string::npos) e = ctrl.size();
        if (ctrl.compare(b, e - b, "cpu") == 0) has_cpu = true;
        b = e + 1;
      }
      if (!has_cpu) continue;
      v1 = true;
      std::string probe;
      dir = root + "/cpu";
      if (!read_file(dir + "/cpu.cfs_period_us", &probe)) dir = root + "/" + ctrl;
    }
    for (;;) {
      std::string text;
      if (v1) {
        std::string period;
        if (read_file(dir + path + "/cpu.cfs_quota_us", &text) &&
            read_file(dir + path + "/cpu.cfs_period_us", &period)) {
          take(quota_cpus(std::atof(text.c_str()), std::atof(period.c_str())));
        }
      } else if (read_file(dir + path + "/cpu.max", &text)) {
        // "max 100000" or "150000 100000"
        if (text.compare(0, 3, "max") != 0) {
          char* end = nullptr;
          const double quota = std::strtod(text.c_str(), &end);
          take(quota_cpus(quota, std::strtod(end, nullptr)));
        }
      }
      if (path.empty() || path == "/") break;
      const std::size_t slash = path.find_last_of('/');
      path = slash == 0 || slash == std::string::npos ? "/" : path.substr(0, slash);
    }
  }
  return best;
}
#endif

// The CPUs this process may run on: its affinity mask, lowered to a cgroup CPU quota (a container
// given 2 CPUs of a 64-core host runs 2 threads, not 64 that the quota then throttles).
int quota_setting() {
#if defined(__linux__)
  static const int n = cgroup_quota_cpus();
  return n;
#else
  return 0;
#endif
}

int default_cap() {
  int n = affinity_cpus();
  const int quota = quota_setting();
  if (quota > 0 && quota < n) n = quota;
  return n;
}

std::atomic<int>& cap_setting() {
  static std::atomic<int> cap{default_cap()};
  return cap;
}

int clamped_from = 0;

// OMP_NUM_THREADS read here (the first entry of a nested list), so that it is capped like every
// other source and also holds in builds without OpenMP. Invalid values are ignored, as libgomp
// does.
int default_threads() {
  const int cap = cap_setting().load();
  const char* env = std::getenv("OMP_NUM_THREADS");
  if (env == nullptr) return cap;
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(env, &end, 10);
  if (end == env || errno != 0 || v < 1 || (*end != '\0' && *end != ',' && *end != ' ')) return cap;
  if (v > cap) {
    clamped_from = v > 1000000 ? 1000000 : static_cast<int>(v);
    return cap;
  }
  return static_cast<int>(v);
}

std::atomic<int>& thread_setting() {
  static std::atomic<int> n{default_threads()};
  return n;
}

#ifdef _OPENMP
// omp_get_max_threads() of the importing thread before anyone limited it: a lower value in a
// calling thread is a threadpoolctl (omp_set_num_threads) limit.
int omp_baseline() {
  static const int n = omp_get_max_threads();
  return n;
}
#endif

std::atomic<WarningHandler>& warning_handler() {
  static std::atomic<WarningHandler> h{nullptr};
  return h;
}

void warn(const std::string& msg) {
  WarningHandler h = warning_handler().load();
  if (h != nullptr) {
    h(msg.c_str());
  } else {
    std::fprintf(stderr, "%s\n", msg.c_str());
  }
}

// ---------------------------------------------------------------------------------------------
// The pool

// How long an idle thread spins before it sleeps on a condition variable, and how long the caller
// spins for in-flight tasks. Long enough to cover the gaps between the kernel calls of a training
// step (Python between the layers): with 30 us the MLP training step of the benchmark took 0.51 ms
// on 2 threads against 0.47 ms with libgomp (its workers spin for milliseconds), with 200 us
// 0.46 ms, because a sleeping worker needs a futex wake-up (tens of us on this virtual machine).
// Short enough not to hold a core a neighbour needs for long: OpenBLAS's own spin (~0.1 s) is what
// made numpy.matmul beside a parallel loop 10x slower (OpenBLAS #3187).
constexpr auto kSpin = std::chrono::microseconds(200);

thread_local bool tls_in_task = false;
thread_local bool tls_is_worker = false;

// Stall back-off. A worker that a busy neighbour (another process, NumPy's spinning BLAS threads)
// preempts in the middle of a task holds the call for the rest of the scheduler's slice (about
// 3 ms with two runnable threads on a core) while the caller waits: on the 2-core project machine
// with one core busy, the 64 x 784 x 256 GEMM then averaged 1.53x its quiet 1-thread time, most of
// it in rare calls of milliseconds. A caller that waited much longer than it worked (kStallWait
// past twice its own work) runs the calls of the next window alone, in the caller, doubling the
// window on each further stall (kSoloMin to kSoloMax) and halving it again after a stall-free
// parallel call. A quiet machine never waits that long: the longest wait there is the last task
// another thread started, at most the caller's own work.
constexpr auto kStallWait = std::chrono::microseconds(100);
constexpr auto kSoloMin = std::chrono::milliseconds(2);
constexpr auto kSoloMax = std::chrono::milliseconds(64);
std::atomic<int64_t> g_solo_until_ns{0};   // steady-clock ns; calls before it run in the caller
std::atomic<int64_t> g_solo_window_ns{0};  // the current back-off window
std::atomic<int64_t> g_stat_calls{0}, g_stat_solo{0}, g_stat_stalls{0};
std::atomic<int64_t> g_stat_wait_ns{0};  // the callers' waits for started tasks, summed

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Neighbours. A thread of another process that keeps a core (a busy process, NumPy's OpenBLAS
// threads spinning for a while after each call) leaves our second thread sharing a core: on the
// 2-core project machine, the 64 x 784 x 256 GEMM after each numpy.matmul took 0.175 ms on 2
// threads against 0.123 ms on 1, without any wait the stall back-off could see (the caller itself
// shared a core). So the caller looks at the runnable threads of the machine (/proc/loadavg's
// fourth field), at most every kLoadEvery, subtracts its own (itself and the workers that are not
// asleep) and runs on the CPUs the others leave: the fewest of the last kLoadSamples readings, so
// that one kernel thread waking does not cost a parallel call (one reading in six showed an extra
// runnable thread on the quiet machine). Only where the machine's CPUs are all ours to use (the
// affinity mask covers every online CPU, no cgroup quota): a container sees the host's count.
constexpr auto kLoadEvery = std::chrono::milliseconds(2);
constexpr int kLoadSamples = 3;
std::atomic<int64_t> g_stat_shed{0};  // calls run on fewer threads for a neighbour

#if defined(__linux__)
// Runnable threads of the machine now; -1 when it cannot be read.
int machine_runnable() {
  const int fd = ::open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  char buf[128];
  const ssize_t n = ::read(fd, buf, sizeof(buf) - 1);
  ::close(fd);
  if (n <= 0) return -1;
  buf[n] = '\0';
  // "0.50 0.40 0.30 3/512 12345": the field after the third space.
  const char* q = buf;
  for (int spaces = 0; *q != '\0' && spaces < 3; ++q) spaces += *q == ' ';
  if (*q < '0' || *q > '9') return -1;
  return static_cast<int>(std::strtol(q, nullptr, 10));
}

bool load_check_applies() {
  static const bool applies = [] {
    if (std::getenv("SIMDNN_IGNORE_NEIGHBOURS") != nullptr) return false;
    const long online = sysconf(_SC_NPROCESSORS_ONLN);
    return online > 1 && affinity_cpus() == online && quota_setting() == 0 &&
           machine_runnable() >= 0;
  }();
  return applies;
}
#endif

// After a parallel call that started at t_call: the caller ran out of tasks at t_wait and the
// workers' last task ended at t_end (both 0: it did not wait).
void note_wait(int64_t t_call, int64_t t_wait, int64_t t_end) {
  using ns = std::chrono::nanoseconds;
  const int64_t waited = t_end - t_wait, worked = t_wait - t_call;
  int64_t w = g_solo_window_ns.load(std::memory_order_relaxed);
  if (t_wait != 0) g_stat_wait_ns.fetch_add(waited, std::memory_order_relaxed);
  if (t_wait != 0 && waited > 2 * worked + ns(kStallWait).count()) {
    g_stat_stalls.fetch_add(1, std::memory_order_relaxed);
    w = w < ns(kSoloMin).count() ? ns(kSoloMin).count() : std::min(2 * w, ns(kSoloMax).count());
    g_solo_until_ns.store(t_end + w, std::memory_order_relaxed);
  } else {
    w /= 2;
  }
  g_solo_window_ns.store(w, std::memory_order_relaxed);
}

struct Pool {
  std::mutex dispatch;  // held by the caller of the running job
  std::mutex mu;        // for the condition variables
  std::condition_variable wake_cv, done_cv;
  std::vector<std::thread*> workers;  // never joined: the pool lives as long as the process
  int spawn_limit = -1;               // workers the OS allowed, after it refused one (-1: no limit)
  uint32_t next_gen = 0;              // the caller's counter, under dispatch

  std::atomic<uint32_t> gen{0};  // the job being published; workers wake on a change
  std::atomic<int> sleepers{0};
  // The job: written before gen is published, read after a worker's claim of a task of that gen.
  std::atomic<TaskFn> fn{nullptr};
  std::atomic<const void*> ctx{nullptr};
  std::atomic<int64_t> ntasks{0};
  std::atomic<uint32_t> fp{0};  // the caller's MXCSR control bits, which the workers take on
  std::atomic<int> max_seats{0};
  std::atomic<uint64_t> seats{0};  // gen << 32 | workers seated
  std::atomic<uint64_t> claim{0};  // gen << 32 | next task
  std::atomic<int64_t> done{0};
  std::atomic<bool> failed{false};
  std::mutex error_mu;
  std::exception_ptr error;
  Pool* abandoned = nullptr;  // a forked child's parent pool: kept reachable, never used
  // Neighbour readings (leave_to_neighbours), under dispatch.
  int64_t load_sampled_ns = 0;
  int load_others[kLoadSamples] = {};
  int load_next = 0;
};

Pool* g_pool = nullptr;

Pool& pool() {
  static const bool init = [] {
    g_pool = new Pool;  // leaked on purpose: worker threads may outlive static destructors
    return true;
  }();
  (void)init;
  return *g_pool;
}

// The thread count that leaves the neighbours' cores to them (see kLoadEvery); the caller holds
// the dispatch lock.
int leave_to_neighbours(Pool& p, int nthreads, int64_t now) {
#if defined(__linux__)
  if (!load_check_applies()) return nthreads;
  using ns = std::chrono::nanoseconds;
  if (now - p.load_sampled_ns >= ns(kLoadEvery).count()) {
    p.load_sampled_ns = now;
    const int runnable = machine_runnable();
    const int awake =
        1 + static_cast<int>(p.workers.size()) - p.sleepers.load(std::memory_order_relaxed);
    const int others = runnable < 0 ? 0 : std::max(0, runnable - awake);
    p.load_others[p.load_next] = others;
    p.load_next = (p.load_next + 1) % kLoadSamples;
  }
  int others = p.load_others[0];
  for (int i = 1; i < kLoadSamples; ++i) others = std::min(others, p.load_others[i]);
  const int free_cpus = std::max(1, thread_cap() - others);
  if (free_cpus < nthreads) {
    g_stat_shed.fetch_add(1, std::memory_order_relaxed);
    return free_cpus;
  }
#else
  (void)p;
  (void)now;
#endif
  return nthreads;
}

// Claims a task of job g; false when the job is over or another job is published. The claim word
// is gen << 32 | the tasks claimed. When the job has fewer than kTwoEnded tasks, its low half is
// rear << 16 | front: the caller claims from the front (tasks 0, 1, ...) and the workers from the
// back (ntasks - 1, ntasks - 2, ...) until the two meet. With two threads the caller then runs the
// first tasks of every call and the worker the last ones, so an op that reads what the previous op
// wrote (a ReLU after a convolution over the same images, split alike) finds most of it in its
// own core's cache; from one counter the two threads took tasks in whatever order they woke, and
// half of the data crossed cores on average. LeNet's training step (batch 64, 2 threads, Intel
// Xeon VM): 5.91-6.08 ms -> 5.56-5.77 ms; the MLP step even (0.74-0.87 ms both). Larger jobs
// count in all 32 bits, from the front only.
constexpr int64_t kTwoEnded = 0xffff;
bool claim_task(Pool& p, uint32_t g, int64_t* task, bool from_back) {
  uint64_t c = p.claim.load(std::memory_order_acquire);
  for (;;) {
    if (static_cast<uint32_t>(c >> 32) != g) return false;
    // Acquire: a worker still in job g that reads the next job's (larger) ntasks also sees that
    // job's claim word, stored before it, so the CAS below fails instead of claiming a task of
    // the next job under job g's name (which ran a task twice and left the caller waiting for a
    // count it had passed: the hang of a CI run).
    const int64_t n = p.ntasks.load(std::memory_order_acquire);
    int64_t idx;
    uint64_t step = 1;
    if (n < kTwoEnded) {
      const int64_t front = static_cast<int64_t>(c & 0xffffu);
      const int64_t rear = static_cast<int64_t>((c >> 16) & 0xffffu);
      if (front + rear >= n) return false;
      idx = from_back ? n - 1 - rear : front;
      if (from_back) step = uint64_t{1} << 16;
    } else {
      idx = static_cast<int64_t>(c & 0xffffffffu);
      if (idx >= n) return false;
    }
    if (p.claim.compare_exchange_weak(c, c + step, std::memory_order_acq_rel)) {
      *task = idx;
      return true;
    }
  }
}

void run_task(Pool& p, int64_t task) {
  if (!p.failed.load(std::memory_order_relaxed)) {
    try {
      p.fn.load(std::memory_order_relaxed)(p.ctx.load(std::memory_order_relaxed), task);
    } catch (...) {
      std::lock_guard<std::mutex> lock(p.error_mu);
      if (!p.error) p.error = std::current_exception();
      p.failed.store(true, std::memory_order_relaxed);
    }
  }
  const int64_t n = p.ntasks.load(std::memory_order_relaxed);
  if (p.done.fetch_add(1, std::memory_order_acq_rel) + 1 == n) {
    std::lock_guard<std::mutex> lock(p.mu);
    p.done_cv.notify_all();
  }
}

void trim_own_workspace();

// condition_variable::wait(lock) is an out-of-line libstdc++ symbol versioned GLIBCXX_3.4.30 in
// GCC 12, newer than manylinux_2_34 allows (tools/build_wheels.sh checks the tag); wait_for on the
// steady clock is inline (pthread_cond_clockwait, GLIBC_2.30). The timeout only bounds one wait:
// the loop re-checks the condition, so a wake-up is never missed and a spurious one is harmless.
template <class Pred>
void wait_until_true(std::condition_variable& cv, std::unique_lock<std::mutex>& lock,
                     const Pred& done) {
  while (!done()) cv.wait_for(lock, std::chrono::seconds(1));
}

// seen: the last job published before the worker was created. Read at creation, not when the
// thread starts: a new thread can start after the caller has published the job it was created
// for, and would then sit that job out (the first call after a fork ran on the caller alone).
void worker_main(Pool* pp, uint32_t seen) {
  Pool& p = *pp;
  tls_in_task = true;  // a kernel called from a task runs serially
  tls_is_worker = true;
  for (;;) {
    const auto t0 = std::chrono::steady_clock::now();
    int spins = 0;
    while (p.gen.load(std::memory_order_acquire) == seen) {
      SIMDNN_PAUSE();
      if ((++spins & 63) == 0 && std::chrono::steady_clock::now() - t0 > kSpin) {
        std::unique_lock<std::mutex> lock(p.mu);
        p.sleepers.fetch_add(1, std::memory_order_seq_cst);
        wait_until_true(p.wake_cv, lock,
                        [&] { return p.gen.load(std::memory_order_seq_cst) != seen; });
        p.sleepers.fetch_sub(1, std::memory_order_relaxed);
        break;
      }
    }
    const uint32_t g = p.gen.load(std::memory_order_acquire);
    seen = g;
    // A seat: at most nthreads - 1 workers join a job.
    uint64_t s = p.seats.load(std::memory_order_acquire);
    bool seated = false;
    while (static_cast<uint32_t>(s >> 32) == g &&
           static_cast<int>(s & 0xffffffffu) < p.max_seats.load(std::memory_order_relaxed)) {
      if (p.seats.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel)) {
        seated = true;
        break;
      }
    }
    if (!seated) continue;
    // The caller's floating-point mode (denormal flushing, set_flush_denormal): a task computes
    // as it would on the caller. Stored before gen = g, so the acquire load that saw g sees it.
    const uint32_t fp = p.fp.load(std::memory_order_relaxed);
    if (fp_control() != fp) set_fp_control(fp);
    int64_t task;
    bool ran = false;
    while (claim_task(p, g, &task, /*from_back=*/true)) {
      run_task(p, task);
      ran = true;
    }
    if (ran) trim_own_workspace();
  }
}

// Grows the pool to `want` workers (the caller holds dispatch). A refused thread (EAGAIN from a
// pids limit, RLIMIT_NPROC, no address space for its stack) is retried three times over 7 ms,
// then the pool stays at what it has; the warning is returned in *warning, for the caller to give
// once it has released the dispatch lock (the warning handler takes the GIL, and a thread holding
// the GIL may be forking, which waits for the dispatch lock).
void grow_pool(Pool& p, int want, std::string* warning) {
  if (p.spawn_limit >= 0 && want > p.spawn_limit) want = p.spawn_limit;
  while (static_cast<int>(p.workers.size()) < want) {
    std::thread* t = nullptr;
    std::string why;
    for (int attempt = 0; attempt < 4 && t == nullptr; ++attempt) {
      if (attempt > 0) std::this_thread::sleep_for(std::chrono::milliseconds(1 << (attempt - 1)));
      try {
        t = new std::thread(worker_main, &p, p.gen.load(std::memory_order_relaxed));
      } catch (const std::system_error& e) {
        why = e.what();
      } catch (const std::bad_alloc&) {
        why = "out of memory";
      }
    }
    if (t == nullptr) {
      p.spawn_limit = static_cast<int>(p.workers.size());
      *warning =
          ("simdnn: the OS refused a thread (" + why + "); kernels run on " +
           std::to_string(p.spawn_limit + 1) + " thread(s) instead of " + std::to_string(want + 1));
      return;
    }
    p.workers.push_back(t);
  }
}

// fork: prepare holds the dispatch lock (no job runs while the process forks) and the condition
// variables' mutex; the parent releases them; the child, whose workers do not exist, abandons the
// old pool and starts an empty one that spawns workers again on its first parallel call.
void registry_lock();
void registry_unlock();
void registry_child();

void atfork_prepare() {
  Pool& p = pool();
  p.dispatch.lock();
  p.mu.lock();
  registry_lock();
}
void atfork_parent() {
  registry_unlock();
  g_pool->mu.unlock();
  g_pool->dispatch.unlock();
}
void atfork_child() {
  registry_child();
  Pool* old = g_pool;
  g_pool = new Pool;  // the old one's mutexes stay locked and its threads are gone: abandon it
  g_pool->abandoned = old;
  tls_in_task = false;
}

bool install_fork_handlers() {
#if !defined(_WIN32)
  pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
#endif
  return true;
}

struct Seat {
  Seat() { tls_in_task = true; }
  ~Seat() { tls_in_task = false; }
  Seat(const Seat&) = delete;
  Seat& operator=(const Seat&) = delete;
};

}  // namespace

int get_num_threads() {
  int n = thread_setting().load(std::memory_order_relaxed);
#ifdef _OPENMP
  const int omp = omp_get_max_threads();
  if (omp < omp_baseline() && omp < n) n = omp < 1 ? 1 : omp;
#endif
  return n;
}

bool set_num_threads(int n) {
  const int cap = thread_cap();
  const bool clamped = n > cap;
  thread_setting().store(n < 1 ? 1 : (clamped ? cap : n), std::memory_order_relaxed);
  return clamped;
}

int cgroup_cpu_quota() { return quota_setting(); }

int thread_cap() { return cap_setting().load(std::memory_order_relaxed); }

void set_thread_cap(int n) { cap_setting().store(n < 1 ? 1 : n); }

int env_threads_clamped_from() {
  thread_setting();
#ifdef _OPENMP
  omp_baseline();  // at import, before anyone limits the importing thread
#endif
  return clamped_from;
}

bool have_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

void set_warning_handler(WarningHandler handler) { warning_handler().store(handler); }

void parallel_run(int64_t ntasks, int nthreads, TaskFn fn, const void* ctx) {
  if (ntasks <= 0) return;
  if (nthreads <= 1 || ntasks <= 1 || tls_in_task || ntasks > 0xffffffffLL) {
    for (int64_t t = 0; t < ntasks; ++t) fn(ctx, t);
    return;
  }
  static const bool handlers = install_fork_handlers();
  (void)handlers;
  g_stat_calls.fetch_add(1, std::memory_order_relaxed);
  const int64_t t_call = now_ns();
  if (t_call < g_solo_until_ns.load(std::memory_order_relaxed)) {
    g_stat_solo.fetch_add(1, std::memory_order_relaxed);
    for (int64_t t = 0; t < ntasks; ++t) fn(ctx, t);
    return;
  }
  Pool& p = pool();
  std::unique_lock<std::mutex> dispatch(p.dispatch, std::try_to_lock);
  if (!dispatch.owns_lock()) {
    // Another thread's job holds the pool: run serially rather than wait behind it.
    for (int64_t t = 0; t < ntasks; ++t) fn(ctx, t);
    return;
  }
  nthreads = leave_to_neighbours(p, nthreads, t_call);
  if (nthreads <= 1) {
    dispatch.unlock();
    for (int64_t t = 0; t < ntasks; ++t) fn(ctx, t);
    return;
  }
  const int64_t want = std::min<int64_t>(nthreads, ntasks) - 1;
  std::string warning;
  if (static_cast<int64_t>(p.workers.size()) < want) {
    grow_pool(p, static_cast<int>(want), &warning);
  }
  const int seats =
      static_cast<int>(std::min<int64_t>(want, static_cast<int64_t>(p.workers.size())));
  if (seats == 0) {
    dispatch.unlock();
    if (!warning.empty()) warn(warning);
    for (int64_t t = 0; t < ntasks; ++t) fn(ctx, t);
    return;
  }
  Seat seat;
  const uint32_t g = ++p.next_gen;
  // The claim and seat words move to job g first: a worker that is still looping in the previous
  // job (its last claim failing) can read the fields below at any moment, and must find its CAS
  // on a word of job g, not of its own job. ntasks is stored with release to pair with the
  // acquire in claim_task.
  p.claim.store(static_cast<uint64_t>(g) << 32, std::memory_order_relaxed);
  p.seats.store(static_cast<uint64_t>(g) << 32, std::memory_order_relaxed);
  p.fn.store(fn, std::memory_order_relaxed);
  p.ctx.store(ctx, std::memory_order_relaxed);
  p.fp.store(fp_control(), std::memory_order_relaxed);
  p.max_seats.store(seats, std::memory_order_relaxed);
  p.done.store(0, std::memory_order_relaxed);
  p.failed.store(false, std::memory_order_relaxed);
  p.error = nullptr;
  p.ntasks.store(ntasks, std::memory_order_release);
  p.gen.store(g, std::memory_order_seq_cst);
  if (p.sleepers.load(std::memory_order_seq_cst) > 0) {
    {
      std::lock_guard<std::mutex> lock(p.mu);
    }
    p.wake_cv.notify_all();
  }
  int64_t task;
  while (claim_task(p, g, &task, /*from_back=*/false)) run_task(p, task);
  // Wait only for the tasks that workers started.
  if (p.done.load(std::memory_order_acquire) != ntasks) {
    const int64_t t_wait = now_ns();
    const auto t0 = std::chrono::steady_clock::now();
    int spins = 0;
    while (p.done.load(std::memory_order_acquire) != ntasks) {
      SIMDNN_PAUSE();
      if ((++spins & 63) == 0 && std::chrono::steady_clock::now() - t0 > kSpin) {
        std::unique_lock<std::mutex> lock(p.mu);
        wait_until_true(p.done_cv, lock,
                        [&] { return p.done.load(std::memory_order_acquire) == ntasks; });
        break;
      }
    }
    note_wait(t_call, t_wait, now_ns());
  } else {
    note_wait(t_call, 0, 0);  // no wait
  }
  std::exception_ptr error = p.error;
  p.error = nullptr;
  dispatch.unlock();
  if (!warning.empty()) warn(warning);
  if (error) std::rethrow_exception(error);
}

PoolStats pool_stats() {
  return PoolStats{g_stat_calls.load(), g_stat_solo.load(), g_stat_stalls.load(),
                   g_stat_wait_ns.load(), g_stat_shed.load()};
}

bool in_pool_worker() { return tls_is_worker; }

int pool_workers() {
  if (g_pool == nullptr) return 0;
  std::lock_guard<std::mutex> lock(g_pool->dispatch);
  return static_cast<int>(g_pool->workers.size());
}

// ---------------------------------------------------------------------------------------------
// GEMM A-pack setting

namespace {
std::atomic<int64_t>& a_pack_setting() {
  static std::atomic<int64_t> bytes{int64_t(32) << 20};
  return bytes;
}
}  // namespace

int64_t gemm_a_pack_bytes() { return a_pack_setting().load(std::memory_order_relaxed); }
void set_gemm_a_pack_bytes(int64_t bytes) {
  a_pack_setting().store(bytes < 1 ? 1 : bytes, std::memory_order_relaxed);
}

// ---------------------------------------------------------------------------------------------
// Workspaces

namespace {

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

std::atomic<int64_t> g_workspace_bytes{0};
std::atomic<uint64_t> g_release_epoch{0};

constexpr int kSlots = static_cast<int>(WorkspaceSlot::count);

struct ThreadWorkspace {
  std::mutex mu;  // the owner's growth and trims, against release_workspaces from another thread
  void* ptr[kSlots] = {};
  std::size_t size[kSlots] = {};
  uint64_t epoch = 0;
  bool worker = tls_is_worker;  // a pool worker's (idle outside tasks)
  ThreadWorkspace();
  ~ThreadWorkspace();
  std::size_t total() const {
    std::size_t t = 0;
    for (int i = 0; i < kSlots; ++i) t += size[i];
    return t;
  }
  void free_slot(int i) {
    aligned_free(ptr[i]);
    g_workspace_bytes.fetch_sub(static_cast<int64_t>(size[i]), std::memory_order_relaxed);
    ptr[i] = nullptr;
    size[i] = 0;
  }
  void free_all() {
    for (int i = 0; i < kSlots; ++i) free_slot(i);
  }
  // Frees the largest buffers until at most kWorkspaceKeepBytes remain.
  void trim() {
    while (total() > kWorkspaceKeepBytes) {
      int big = 0;
      for (int i = 1; i < kSlots; ++i) {
        if (size[i] > size[big]) big = i;
      }
      free_slot(big);
    }
  }
};

struct Registry {
  std::mutex mu;
  std::vector<ThreadWorkspace*> list;
};

Registry& registry() {
  static Registry* r = new Registry;  // leaked: threads may register after static destruction
  return *r;
}

ThreadWorkspace::ThreadWorkspace() : epoch(g_release_epoch.load()) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.list.push_back(this);
}

ThreadWorkspace::~ThreadWorkspace() {
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    r.list.erase(std::remove(r.list.begin(), r.list.end(), this), r.list.end());
  }
  free_all();
}

thread_local ThreadWorkspace* tls_ws = nullptr;

ThreadWorkspace& own_workspace() {
  thread_local ThreadWorkspace ws;
  tls_ws = &ws;
  return ws;
}

void trim_own_workspace() {
  ThreadWorkspace* ws = tls_ws;
  if (ws == nullptr) return;
  std::lock_guard<std::mutex> lock(ws->mu);
  const uint64_t epoch = g_release_epoch.load(std::memory_order_relaxed);
  if (ws->epoch != epoch) {
    ws->epoch = epoch;
    ws->free_all();
  } else if (ws->total() > kWorkspaceKeepBytes) {
    ws->trim();
  }
}

void registry_lock() { registry().mu.lock(); }
void registry_unlock() { registry().mu.unlock(); }
// In a forked child only the forking thread exists: free the other threads' workspaces (their
// memory is the child's copy) and forget them.
void registry_child() {
  Registry& r = registry();
  for (ThreadWorkspace* ws : r.list) {
    if (ws != tls_ws) ws->free_all();
  }
  r.list.clear();
  if (tls_ws != nullptr) r.list.push_back(tls_ws);
  r.mu.unlock();
}

}  // namespace

void* workspace(WorkspaceSlot slot, std::size_t bytes) {
  ThreadWorkspace& ws = own_workspace();
  const int i = static_cast<int>(slot);
#if defined(SIMDNN_FRESH_WORKSPACE)
  // Checking builds (the AddressSanitizer build of tools/sanitize.sh): every request frees the
  // slot's buffer and takes a new one, filled with NaN bytes, so that a pointer used after the next
  // request of its slot (a callee taking the slot its caller still writes to) is a use after free
  // that ASan reports, and content expected to survive a request reads as NaN. Release builds keep
  // the buffer, and such a bug there is silent.
  if (ws.size[i] > 0) {
    std::lock_guard<std::mutex> lock(ws.mu);
    std::memset(ws.ptr[i], 0xff, ws.size[i]);
    ws.free_slot(i);
  }
#endif
  if (bytes > ws.size[i]) {
    // Grow to the next multiple of 64 KiB so that slowly growing requests do not reallocate often.
    constexpr std::size_t kGrain = 65536;
    if (bytes > SIZE_MAX - kGrain) throw WorkspaceError(bytes);
    const std::size_t size = (bytes + kGrain - 1) & ~(kGrain - 1);
    std::lock_guard<std::mutex> lock(ws.mu);
    ws.free_slot(i);  // first, so that the old and new buffers are not held at once
    void* p = aligned_malloc(size);
    if (p == nullptr) throw WorkspaceError(bytes);
#if defined(SIMDNN_FRESH_WORKSPACE)
    std::memset(p, 0xff, size);
#endif
    ws.ptr[i] = p;
    ws.size[i] = size;
    g_workspace_bytes.fetch_add(static_cast<int64_t>(size), std::memory_order_relaxed);
  }
  return ws.ptr[i];
}

KernelCallScope::~KernelCallScope() {
  if (restore_fp_) set_fp_control(saved_fp_);
  trim_own_workspace();
}

void release_workspaces() {
  g_release_epoch.fetch_add(1);
  trim_own_workspace();
  // Pool workers touch their workspaces only inside tasks and in their own trim (under ws->mu):
  // with the dispatch lock held no task runs, so theirs can be freed here. Other threads free
  // theirs at the end of their next kernel call (the epoch changed).
  if (g_pool != nullptr) {
    std::lock_guard<std::mutex> dispatch(g_pool->dispatch);
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    for (ThreadWorkspace* ws : r.list) {
      if (ws == tls_ws || !ws->worker) continue;
      std::lock_guard<std::mutex> ws_lock(ws->mu);
      ws->epoch = g_release_epoch.load();
      ws->free_all();
    }
  }
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}

int64_t workspace_bytes() { return g_workspace_bytes.load(std::memory_order_relaxed); }

}  // namespace simdnn
