// Runtime glue: cpu_info, ISA selection and thread count.
#include <cstdlib>
#include <string>

#include "bindings/common.h"
#include "common/cpu.h"
#include "common/parallel.h"
#include "dispatch.h"

namespace simdnn::bind {
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
  d["openmp"] = have_openmp();
  d["vendor"] = cpu.vendor;
  d["l1d_cache"] = cpu.l1d;
  d["l2_cache"] = cpu.l2;
  d["l3_cache"] = cpu.l3;
  const KernelTable& kt = kernels();
  py::dict blocking;
  blocking["float32"] = blocking_dict(kt.sgemm_blocking);
  blocking["float64"] = blocking_dict(kt.dgemm_blocking);
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
  if (v < 1 || v > 4096)
    value_error("set_num_threads: n must be in [1, 4096], got " + std::to_string(v));
  set_num_threads(static_cast<int>(v));
}

}  // namespace

std::string available_isas() { return available_list(); }

void bind_runtime(py::module_& m) {
  m.def("cpu_info", &cpu_info_dict);
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
        auto fn = kernels().probe_fma;
        py::gil_scoped_release release;
        return fn(nthreads, seconds);
      },
      py::arg("nthreads"), py::arg("seconds") = 0.2);
  m.def(
      "probe_stream_bandwidth",
      [](int nthreads, int64_t bytes) {
        if (nthreads < 1 || bytes < 3 * 64 * 4)
          value_error("probe_stream_bandwidth: need nthreads >= 1, bytes >= 768");
        auto fn = kernels().probe_stream;
        py::gil_scoped_release release;
        return fn(nthreads, bytes);
      },
      py::arg("nthreads"), py::arg("bytes") = int64_t(384) << 20);
}

}  // namespace simdnn::bind
