// Runtime glue: cpu_info, ISA selection and thread count.
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>

#include "bindings/common.h"
#include "common/cpu.h"
#include "common/parallel.h"
#include "common/process.h"
#include "dispatch.h"

namespace simdnn::bind {

void warn_runtime(const std::string& message);

namespace {

py::dict blocking_dict(const GemmBlocking& bl) {
  py::dict d;
  d["mr"] = bl.mr;
  d["nr"] = bl.nr;
  d["kc"] = bl.kc;
  d["nc"] = bl.nc;
  return d;
}

py::dict cpu_info_dict() {
  const CpuInfo& cpu = cpu_info();
  py::dict d;
  d["isa"] = isa_name(active_isa());
  py::list available, compiled;
  for (int i = 0; i < kNumIsas; ++i) {
    if (isa_available(static_cast<Isa>(i))) available.append(isa_name(static_cast<Isa>(i)));
    if (cpu.compiled[i]) compiled.append(isa_name(static_cast<Isa>(i)));
  }
  d["available"] = available;
  d["compiled"] = compiled;
  d["num_threads"] = get_num_threads();
  // Built with OpenMP: the kernels run on simdnn's own pool either way; with OpenMP linked, a
  // threadpoolctl limit on the OpenMP runtime lowers the thread count of the calling thread.
  d["openmp"] = have_openmp();
  d["threading"] = "simdnn";
  d["thread_cap"] = thread_cap();
  if (const int quota = cgroup_cpu_quota(); quota > 0) {
    d["cpu_quota"] = quota;
  } else {
    d["cpu_quota"] = py::none();
  }
  d["pool_threads"] = pool_workers();
  d["workspace_bytes"] = workspace_bytes();
  d["vendor"] = cpu.vendor;
  d["l1d_cache"] = cpu.l1d;
  d["l2_cache"] = cpu.l2;
  d["l3_cache"] = cpu.l3;
  if (cpu.in_place_stride_bytes == INT64_MAX) {
    d["in_place_stride_bytes"] = py::none();
  } else {
    d["in_place_stride_bytes"] = cpu.in_place_stride_bytes;
  }
  if (cpu.in_place_span_bytes == INT64_MAX) {
    d["in_place_span_bytes"] = py::none();
  } else {
    d["in_place_span_bytes"] = cpu.in_place_span_bytes;
  }
  if (cpu.pointwise_plane_bytes == INT64_MAX) {
    d["pointwise_plane_bytes"] = py::none();
  } else {
    d["pointwise_plane_bytes"] = cpu.pointwise_plane_bytes;
  }
  d["winograd_chunk_tasks"] = cpu.winograd_chunk_tasks;
  d["winograd_narrow_tile_channels"] = cpu.winograd_narrow_tile_channels;
  const KernelTable& kt = kernels();
  py::dict blocking;
  blocking["float32"] = blocking_dict(kt.get<float>().gemm_blocking);
  blocking["float64"] = blocking_dict(kt.get<double>().gemm_blocking);
  d["gemm_blocking"] = blocking;
  return d;
}

std::string available_list() {
  std::string s;
  for (int i = 0; i < kNumIsas; ++i) {
    if (!isa_available(static_cast<Isa>(i))) continue;
    if (!s.empty()) s += ", ";
    s += isa_name(static_cast<Isa>(i));
  }
  return s;
}

void set_isa(const std::string& name) {
  Isa isa;
  if (!parse_isa(name.c_str(), &isa)) {
    value_error("unknown ISA '" + name + "'; expected one of scalar, avx2, avx512");
  }
  if (!set_active_isa(isa)) {
    value_error("ISA '" + name +
                "' is not available on this CPU/build (available: " + available_list() + ")");
  }
}

void set_threads(const py::object& n) {
  // Any int, NumPy ints included (np.int64(2) used to be refused with a TypeError).
  if (!is_int(n)) {
    type_error("set_num_threads: n must be an int, got " +
               py::str(py::type::of(n)).cast<std::string>());
  }
  const int64_t v = int64_of(n, "set_num_threads", "n", n);
  if (v < 1) value_error("set_num_threads: n must be >= 1, got " + std::to_string(v));
  const int cap = thread_cap();
  set_num_threads(v > cap ? cap : static_cast<int>(v));
  if (v > cap) {
    warn_runtime("simdnn: set_num_threads(" + std::to_string(v) + ") clamped to " +
                 std::to_string(cap) + ", the CPUs this process may run on");
  }
}

// A RuntimeWarning from the runtime (a refused thread), raised in the thread that called the
// kernel: it holds no GIL there. Warnings turned into errors become the kernel call's exception.
void warning_from_runtime(const char* message) {
  py::gil_scoped_acquire gil;
  if (PyErr_WarnEx(PyExc_RuntimeWarning, message, 1) != 0) throw py::error_already_set();
}

// The op registry (cpp/ops.inc) as the tests see it: one {op, family, isa, dtype} per filled
// entry of each available ISA's table (a missing entry is a missing dict).
py::list kernel_registry() {
  py::list out;
  auto add = [&out](const char* family, const char* op, Isa isa, const char* dtype, bool filled) {
    if (!filled) return;
    py::dict d;
    d["op"] = op;
    d["family"] = family;
    d["isa"] = isa_name(isa);
    d["dtype"] = dtype;
    out.append(d);
  };
  for (int i = 0; i < kNumIsas; ++i) {
    const Isa isa = static_cast<Isa>(i);
    if (!isa_available(isa)) continue;
    const KernelTable& kt = kernels_for(isa);
#define SIMDNN_OP(family, name, FnType)                                 \
  add(#family, #name, isa, "float32", kt.get<float>().name != nullptr); \
  add(#family, #name, isa, "float64", kt.get<double>().name != nullptr);
#include "ops.inc"
  }
  return out;
}

// A tests' switch `name(arg)`: True -> set(1), False -> set(0), None -> set(-1) (the library's
// own choice); anything else, an int included, is a TypeError naming what it got.
void def_test_switch(py::module_& m, const char* name, const char* arg, TestSwitch sw) {
  const std::string prefix = std::string(name) + ": " + arg + " must be True, False or None, got ";
  m.def(
      name,
      [prefix, sw](const py::object& value) {
        if (!value.is_none() && !py::isinstance<py::bool_>(value)) {
          type_error(prefix + std::string(py::repr(value)));
        }
        set_test_switch(sw, value.is_none() ? -1 : (value.cast<bool>() ? 1 : 0));
      },
      py::arg(arg));
}

}  // namespace

std::string available_isas() { return available_list(); }

void warn_runtime(const std::string& message) {
  if (PyErr_WarnEx(PyExc_RuntimeWarning, message.c_str(), 1) != 0) throw py::error_already_set();
}

void bind_runtime(py::module_& m) {
  set_warning_handler(&warning_from_runtime);
  if (const int asked = env_threads_clamped_from(); asked > 0) {
    warn_runtime("simdnn: OMP_NUM_THREADS=" + std::to_string(asked) + " clamped to " +
                 std::to_string(thread_cap()) + ", the CPUs this process may run on");
  }
  m.def("cpu_info", &cpu_info_dict);
  m.def("kernel_registry", &kernel_registry);
  m.def("empty_cache", []() {
    py::gil_scoped_release release;
    release_workspaces();
  });
  m.def("workspace_bytes", &workspace_bytes);
  // Test hook: runs parallel_for `repeat` times back to back, call r over 1 + r % ntasks tasks
  // (ntasks when repeat == 1); each task adds its index + 1 to a sum, so a task run twice or not at
  // all changes the result. Varying counts back to back are what once let a worker late from one
  // call claim a task of the next. The task raise_at throws (RuntimeError) when >= 0.
  m.def(
      "_parallel_check",
      [](int64_t ntasks, int nthreads, int64_t raise_at, int64_t repeat) {
        if (repeat < 1) value_error("_parallel_check: repeat must be >= 1");
        std::atomic<int64_t> sum{0};
        {
          py::gil_scoped_release release;
          for (int64_t r = 0; r < repeat; ++r) {
            const int64_t n = repeat == 1 || ntasks <= 0 ? ntasks : 1 + r % ntasks;
            parallel_for(n, nthreads, [&](int64_t t) {
              if (t == raise_at) throw std::runtime_error("task " + std::to_string(t) + " failed");
              sum.fetch_add(t + 1);
            });
          }
        }
        return sum.load();
      },
      py::arg("ntasks"), py::arg("nthreads"), py::arg("raise_at") = -1, py::arg("repeat") = 1);
  // Test hook for the claim order: one call of ntasks tasks on nthreads threads, each task
  // sleeping task_us; returns per task 1 when a pool worker ran it, 0 when the caller did.
  m.def(
      "_claim_order",
      [](int64_t ntasks, int nthreads, int64_t task_us) {
        if (ntasks < 0 || task_us < 0) value_error("_claim_order: ntasks and task_us must be >= 0");
        std::vector<std::atomic<int>> by(static_cast<size_t>(ntasks));
        {
          py::gil_scoped_release release;
          parallel_for(ntasks, nthreads, [&](int64_t t) {
            by[static_cast<size_t>(t)].store(in_pool_worker() ? 1 : 0);
            if (task_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(task_us));
          });
        }
        py::list out;
        for (auto& v : by) out.append(v.load());
        return out;
      },
      py::arg("ntasks"), py::arg("nthreads"), py::arg("task_us"));
  // Test hook for the stall back-off: a call of 8 tasks where the first task a pool worker runs
  // sleeps stall_us (a worker preempted mid-task), and the caller's first task waits (up to 5 s)
  // until a worker has started one; then at once a call of 8 empty tasks. Returns the change in
  // pool_stats() (calls, solo, stalls) and gap_us, the time from the end of the first call to the
  // end of the second.
  m.def(
      "_stall_check",
      [](int64_t stall_us) {
        const PoolStats before = pool_stats();
        std::chrono::steady_clock::time_point t_first;
        {
          py::gil_scoped_release release;
          std::atomic<bool> worker_started{false}, caller_waited{false};
          parallel_for(8, 2, [&](int64_t) {
            if (in_pool_worker()) {
              if (!worker_started.exchange(true)) {
                std::this_thread::sleep_for(std::chrono::microseconds(stall_us));
              }
              return;
            }
            // Only the caller's first task waits, and only when a stall is asked for (a call the
            // back-off runs in the caller alone has no worker to wait for).
            if (stall_us == 0 || caller_waited.exchange(true)) return;
            const auto limit = std::chrono::steady_clock::now() + std::chrono::seconds(5);
            while (!worker_started.load() && std::chrono::steady_clock::now() < limit) {
              std::this_thread::sleep_for(std::chrono::microseconds(50));
            }
          });
          t_first = std::chrono::steady_clock::now();
          parallel_for(8, 2, [&](int64_t) {});
        }
        const PoolStats after = pool_stats();
        py::dict d;
        // The gap between the calls (a caller preempted there may miss the back-off window).
        d["gap_us"] = std::chrono::duration_cast<std::chrono::microseconds>(
                          std::chrono::steady_clock::now() - t_first)
                          .count();
        d["calls"] = after.calls - before.calls;
        d["solo"] = after.solo - before.solo;
        d["stalls"] = after.stalls - before.stalls;
        return d;
      },
      py::arg("stall_us"));
  m.def("_pool_stats", []() {
    const PoolStats s = pool_stats();
    py::dict d;
    d["calls"] = s.calls;
    d["solo"] = s.solo;
    d["stalls"] = s.stalls;
    d["wait_ns"] = s.wait_ns;
    d["shed"] = s.shed;
    return d;
  });
  m.def("_set_thread_cap", [](int n) {
    if (n < 1) value_error("_set_thread_cap: n must be >= 1");
    set_thread_cap(n);
  });
  // Tests: force Winograd's chunk schedule (True: tasks, False: phases, None: the CPU's own).
  def_test_switch(m, "_set_winograd_chunk_tasks", "tasks", TestSwitch::kWinogradChunkTasks);
  // Tests: force the wide-row form of the filters-in-lanes forward (True: wherever it can run,
  // False: never, None: conv/direct.h's rule).
  def_test_switch(m, "_set_conv_lanes_wide", "wide", TestSwitch::kConvLanesWide);
  // Tests: force a product with a transposed B to be computed transposed (True: wherever it can
  // run, False: never, None: gemm_driver.h's rule).
  def_test_switch(m, "_set_gemm_swap", "swap", TestSwitch::kGemmSwap);
  // Tests: force a forward implicit GEMM's column panels across images (True: wherever they can
  // run, False: never, None: gemm_policies.h's rule).
  def_test_switch(m, "_set_conv_span_images", "span", TestSwitch::kConvSpanImages);
  // simdnn.distributed's last resort: a rank that must end the job dies (common/process.h).
  m.def(
      "_kill_self_after",
      [](double seconds) {
        // The upper bound keeps the sleep's conversion to nanoseconds inside int64.
        if (!(seconds >= 0 && seconds <= 1e9)) {
          value_error("_kill_self_after: seconds must be in [0, 1e9], got " +
                      std::to_string(seconds));
        }
        return kill_self_after(seconds);
      },
      py::arg("seconds"));
  m.def("_cancel_kill_self", &cancel_kill_self);
  m.def("_set_flush_denormal", [](bool on) { return set_flush_denormal(on); }, py::arg("mode"));
  m.def("_get_flush_denormal", &flush_denormal);
  m.def("get_num_threads", &get_num_threads);
  m.def("set_num_threads", &set_threads, py::arg("n"));
  m.def("get_isa", []() { return std::string(isa_name(active_isa())); });
  m.def("set_isa", &set_isa, py::arg("name"));
  m.def(
      "set_thread_isa",
      [](const py::object& name) {
        if (name.is_none()) {
          set_thread_isa(nullptr);
          return;
        }
        const std::string s = name.cast<std::string>();
        Isa isa;
        if (!parse_isa(s.c_str(), &isa)) {
          value_error("unknown ISA '" + s + "'; expected one of scalar, avx2, avx512");
        }
        if (!set_thread_isa(&isa)) {
          value_error("ISA '" + s +
                      "' is not available on this CPU/build (available: " + available_list() + ")");
        }
      },
      py::arg("name"));
  m.def("get_thread_isa", []() -> py::object {
    const Isa* isa = thread_isa();
    if (isa == nullptr) return py::none();
    return py::str(isa_name(*isa));
  });
  // Machine-limit probes for the benchmark report (active ISA).
  m.def(
      "probe_fma_peak",
      [](int nthreads, double seconds) {
        if (nthreads < 1 || seconds <= 0)
          value_error("probe_fma_peak: need nthreads >= 1, seconds > 0");
        auto fn = probes().fma;
        py::gil_scoped_release release;
        return fn(nthreads, seconds);
      },
      py::arg("nthreads"), py::arg("seconds") = 0.2);
  m.def(
      "probe_stream_bandwidth",
      [](int nthreads, int64_t bytes) {
        if (nthreads < 1 || bytes < 3 * 64 * 4)
          value_error("probe_stream_bandwidth: need nthreads >= 1, bytes >= 768");
        auto fn = probes().stream;
        py::gil_scoped_release release;
        return fn(nthreads, bytes);
      },
      py::arg("nthreads"), py::arg("bytes") = int64_t(384) << 20);
}

}  // namespace simdnn::bind
