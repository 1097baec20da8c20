// The parallel runtime every kernel uses: the thread count and its cap, one thread pool with the
// one primitive that splits work over it (parallel_for), and the per-thread workspaces that kernels
// pack into.
//
// Why a pool of our own rather than OpenMP regions (docs/runtime.md has the numbers): an OpenMP
// region ends at a barrier that every team thread must reach, so a worker without a core (a busy
// core, OpenBLAS's threads spinning after numpy.matmul) stalls the caller for a scheduler time
// slice; libgomp has no fork handler (a child hangs in its first region) and exits the process when
// the OS refuses a thread. parallel_for instead hands out tasks from an atomic counter: the caller
// runs tasks too, a worker joins only while tasks are left, and the caller waits only for tasks
// already started. A worker that never gets a core costs nothing; one preempted mid-task costs that
// task.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <mutex>

namespace simdnn {

// ---------------------------------------------------------------------------------------------
// Thread count

// Threads a kernel may use: set_num_threads, else OMP_NUM_THREADS, else the CPUs this process may
// run on; never above thread_cap(). A threadpoolctl limit on the OpenMP runtime
// (omp_set_num_threads in the calling thread) lowers it for that thread when the build links
// OpenMP.
int get_num_threads();
// Stores min(n, thread_cap()) (n >= 1); returns true when it clamped. Takes effect for the next
// kernel call; safe to call while other threads run kernels.
bool set_num_threads(int n);
// The one cap for every source of the thread count: the CPUs in this process's affinity mask
// (sched_getaffinity), lowered to a cgroup CPU quota, at least 1. More threads than CPUs only add
// context switches (and, past a quota, throttling).
int thread_cap();
// The CPUs a cgroup CPU quota allows this process (rounded up), read once at import; 0 when no
// quota is set (or not on Linux). thread_cap() is at most this.
int cgroup_cpu_quota();
// Tests raise the cap to exercise splits wider than the test machine (not a user setting).
void set_thread_cap(int n);
// The value OMP_NUM_THREADS asked for when it was clamped at start-up (0 when it was not): the
// bindings warn about it at import. The first call also reads the OpenMP runtime's default.
int env_threads_clamped_from();
bool have_openmp();

// ---------------------------------------------------------------------------------------------
// Warnings from the runtime (a refused thread): delivered through a handler the bindings install
// (a Python RuntimeWarning); the handler may throw (warnings turned into errors). Called only from
// a thread that called into a kernel, never from a pool worker.
using WarningHandler = void (*)(const char* message);
void set_warning_handler(WarningHandler handler);

// ---------------------------------------------------------------------------------------------
// The minimum work per thread of each op family: below it a second thread's wake-up and the
// cross-core traffic of the split cost more than the thread gives back. Each is the value the
// kernel used with OpenMP, where it was measured as noted.
namespace grain {
// GEMM multiply-adds per thread: 2^17 take about 1.5 us on one AVX-512 core, which repays a wake-up
// and the thread's share of packing (the GEMM below 64^3 runs unthreaded, gemm_driver.h).
constexpr int64_t kGemmMacs = int64_t(1) << 17;
// Elementwise elements per thread: a 64K-element ReLU is about 10 us of memory traffic on one
// core, in the range of a wake-up plus the cross-core cache traffic.
constexpr int64_t kElementwise = int64_t(1) << 16;
// Pooling input elements per thread: float32 2x2 max pool forward / backward, 1 thread against 2:
// 16K elements 3.3 / 5.0 us against 3.6 / 4.9 us (break-even), 32K 5.9 / 8.1 against 4.8 / 6.3 us.
constexpr int64_t kPoolElems = int64_t(16) << 10;
// Convolution backward-weights multiply-adds per thread: each thread must repay its share of the
// final sum of partial dW (K * CgRS additions); 2^21 is about 10 us on one core.
constexpr int64_t kConvWeightMacs = int64_t(1) << 21;
// Tasks per thread for splits that can be cut finely (elementwise, pooling planes, conv images
// and planes): with 4 a worker that loses its core mid-call holds up at most a quarter of its
// share; more tasks only add counter traffic (each task is >= the grain above, several us).
constexpr int kTasksPerThread = 4;
}  // namespace grain

// ---------------------------------------------------------------------------------------------
// parallel_for

// Type-erased task body: fn(ctx, task).
using TaskFn = void (*)(const void* ctx, int64_t task);

// Runs fn(ctx, t) for every t in [0, ntasks) on up to nthreads threads, the calling thread
// included, and returns when all have run. Tasks are claimed from a shared counter, so a thread
// that is slow to start or loses its core leaves its tasks to the others; the call never waits for
// a thread that has not started a task. The first exception a task throws is rethrown here (the
// remaining tasks are skipped); bodies must not wait for each other (no barriers). Runs every task
// in the caller when nthreads <= 1, ntasks <= 1, when called from inside a task (no nesting), or
// when another thread's parallel_for holds the pool (no waiting behind it).
void parallel_run(int64_t ntasks, int nthreads, TaskFn fn, const void* ctx);

template <class F>
void parallel_for(int64_t ntasks, int nthreads, const F& body) {
  parallel_run(
      ntasks, nthreads, [](const void* ctx, int64_t t) { (*static_cast<const F*>(ctx))(t); },
      &body);
}

// body(begin, end) over [0, count) cut into about nthreads * kTasksPerThread ranges of at least
// `min_per_task` items, aligned to `align` items (the last range excepted).
template <class F>
void parallel_ranges(int64_t count, int64_t min_per_task, int64_t align, int nthreads,
                     const F& body) {
  if (count <= 0) return;
  if (min_per_task < 1) min_per_task = 1;
  if (align < 1) align = 1;
  const int64_t units = (count + align - 1) / align;
  int64_t tasks = count / min_per_task;
  const int64_t most = static_cast<int64_t>(nthreads) * grain::kTasksPerThread;
  if (tasks > most) tasks = most;
  if (tasks > units) tasks = units;
  // A multiple of the thread count where there are enough: 3 equal tasks on 2 threads put 2/3 of
  // the work on one (an SGD update of 784 x 256 parameters took 17% longer than in halves).
  if (tasks > nthreads) tasks -= tasks % nthreads;
  if (tasks < 1 || nthreads <= 1) tasks = 1;
  parallel_for(tasks, nthreads, [&](int64_t t) {
    const int64_t base = units / tasks, extra = units % tasks;
    const int64_t u0 = t * base + (t < extra ? t : extra);
    const int64_t u1 = u0 + base + (t < extra ? 1 : 0);
    const int64_t b = u0 * align < count ? u0 * align : count;
    const int64_t e = u1 * align < count ? u1 * align : count;
    if (b < e) body(b, e);
  });
}

// Threads the pool holds now (workers, the caller not counted), for cpu_info.
int pool_workers();

// Counters since start: parallel calls (ntasks > 1 on > 1 thread), those run in the caller alone
// by the stall back-off (parallel.cpp, kStallWait), the stalls that started a back-off, and the
// time callers spent waiting for tasks that workers had started.
struct PoolStats {
  int64_t calls, solo, stalls, wait_ns;
  int64_t shed;  // calls run on fewer threads, leaving cores to other processes' busy threads
};
PoolStats pool_stats();
// Whether the calling thread is one of the pool's workers (for the tests' hooks).
bool in_pool_worker();

// ---------------------------------------------------------------------------------------------
// Bytes of packed A a GEMM holds at once (default 32 MiB). Tests lower it to reach the blocked
// code paths of huge inputs with small ones; it is not a user setting.
int64_t gemm_a_pack_bytes();
void set_gemm_a_pack_bytes(int64_t bytes);

// A 64-byte-aligned scratch buffer owned by the calling thread, one per slot. Kernels take it
// before their parallel work or inside a task, so a call never allocates once the buffer has grown
// to its size (an allocation of a packing buffer per call costs page faults that are comparable
// with a whole small GEMM). Throws std::bad_alloc when it cannot grow. The pointer stays valid
// until the same thread asks for the same slot again, or until the kernel call ends
// (KernelCallScope).
// Slots: gemm_pack for the GEMM engine's packed panels, op_scratch for an op's own buffers (col
// matrices, padded planes, partial sums), pack_aux for temporaries of a packing policy, task_data
// for what one task of an op keeps through the kernels it calls (a Winograd chunk's transformed
// tiles, while the caller's op_scratch holds the filters), gemm_shared for what a GEMM's tasks
// share (the GEMV's partial rows and copied rows of A; gemv.h): a slot of its own, because the
// ops that call the GEMM hold op_scratch through the call. It was op_scratch, and backward-data's
// col2im GEMM (at most 4 rows when C/groups * R * S <= 4) then summed its partial rows into the
// col matrix it was computing: 1 -> 600 2x2 40x40 N2 backward-data gave errors of 207 against
// values of 151.
enum class WorkspaceSlot : int {
  gemm_pack = 0,
  op_scratch = 1,
  pack_aux = 2,
  task_data = 3,
  gemm_shared = 4,
  count = 5
};
void* workspace(WorkspaceSlot slot, std::size_t bytes);

// Bounded retention: a thread keeps at most this many bytes of workspace between kernel calls
// (the LeNet and demo ConvNet training steps use under 4 MiB per thread; a strided
// conv2d_backward_data of a large batch used 460 MB and kept it). Larger buffers are freed when
// the kernel call that grew them ends; re-growing costs page faults (about 0.25 ms per MiB), small
// next to the compute that needs that much scratch.
constexpr std::size_t kWorkspaceKeepBytes = std::size_t(64) << 20;

// Denormal flushing for simdnn's kernels (set_flush_denormal in Python): when on, every kernel
// call runs with the x86 MXCSR's flush-to-zero and denormals-are-zero bits set, on the calling
// thread for the call and on the pool workers for its tasks (a job carries its caller's control
// bits). Off by default: results then keep IEEE denormals, as NumPy's. Denormal operands cost a
// microcode assist per instruction on Intel cores (an SGD update of 431,080 parameters whose
// velocities were 30% denormal took 1,131-1,165 us instead of 90-110; with flushing 96-100 us, on
// an Intel Xeon). set_flush_denormal returns false, and changes nothing, where the CPU has no such
// mode (non-x86 builds).
bool set_flush_denormal(bool on);
bool flush_denormal();

// Put one on the stack of every kernel entry point (the bindings do): for the call it applies the
// denormal mode above to the calling thread (restored at the end); when the call ends it frees the
// calling thread's and the pool workers' workspace above kWorkspaceKeepBytes.
class KernelCallScope {
 public:
  KernelCallScope();
  ~KernelCallScope();
  KernelCallScope(const KernelCallScope&) = delete;
  KernelCallScope& operator=(const KernelCallScope&) = delete;

 private:
  uint32_t saved_fp_ = 0;  // the caller's MXCSR, when this scope changed it
  bool restore_fp_ = false;
};

// Frees every idle workspace now: the calling thread's, the pool workers', and that of other
// threads when they next finish a kernel call; then returns free heap pages to the OS (glibc
// malloc_trim).
void release_workspaces();
// Bytes of workspace every thread holds now.
int64_t workspace_bytes();

}  // namespace simdnn
