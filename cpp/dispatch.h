// Runtime dispatch: one table of kernel entry points per compiled ISA, built from the op registry
// (ops.inc; the per-ISA entries are declared in registry.h); one of them is active, chosen at
// import from the CPU (or SIMDNN_ISA) and switchable for tests. Only dispatch.cpp and the bindings
// include this header; the kernels include registry.h.
#pragma once

#include <type_traits>

#include "common/cpu.h"
#include "registry.h"

namespace simdnn {

// One ISA's kernels for one dtype: a field per op of the registry (ops.inc), named as the op.
template <typename T>
struct OpTable {
#define SIMDNN_OP(family, name, FnType) FnType<T> name = nullptr;
#include "ops.inc"
  GemmBlocking gemm_blocking{};  // the blocking `gemm` uses on this CPU (cpu_info)
};

// One ISA's kernels. The one accessor for every op: kernels().get<T>().<op>.
struct KernelTable {
  Isa isa = Isa::scalar;
  OpTable<float> f32;
  OpTable<double> f64;

  template <typename T>
  const OpTable<T>& get() const {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "float or double");
    if constexpr (std::is_same_v<T, float>) {
      return f32;
    } else {
      return f64;
    }
  }
};

// One ISA's benchmark probes (not ops; the probe section of ops.inc): probes().<name>.
struct ProbeTable {
#define SIMDNN_PROBE(family, name, FnType) FnType name = nullptr;
#include "ops.inc"
};

// The active table. Never null.
const KernelTable& kernels();
// The table of one ISA; the ISA must be available (isa_available).
const KernelTable& kernels_for(Isa isa);
// The probes of the active ISA / of one available ISA.
const ProbeTable& probes();
const ProbeTable& probes_for(Isa isa);
Isa active_isa();
Isa best_isa();
// Switches the active table of the process; returns false (and changes nothing) when the ISA is
// not available.
bool set_active_isa(Isa isa);
// The calling thread's own choice over the process's (nullptr: none, follow the process).
bool set_thread_isa(const Isa* isa);
const Isa* thread_isa();

// One micro-kernel of the registry, for the tests that run each kernel on its own.
struct UkernelInfo {
  const char* op;  // "gemm"
  Isa isa;
  const char* dtype;  // "float32" / "float64"
  int mr, nr;
  const char* name;
  void* fn;  // GemmUkernelFn<float> or <double>, by dtype
};
const UkernelInfo* ukernels(int* count);

}  // namespace simdnn
