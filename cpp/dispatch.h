// Runtime dispatch: one table of kernel entry points per compiled ISA, filled from the registry
// (kernels.inc) by each ISA's translation units; one of them is active, chosen at import from the
// CPU (or SIMDNN_ISA) and switchable for tests.
#pragma once

#include <cstdint>

#include "common/cpu.h"
#include "conv/conv.h"
#include "elementwise/elementwise.h"
#include "gemm/gemm.h"
#include "norm/batch_norm.h"
#include "pool/pool.h"
#include "probe/probe.h"

namespace simdnn {

struct KernelTable {
  Isa isa = Isa::scalar;
  GemmFn<float> sgemm = nullptr;
  GemmFn<double> dgemm = nullptr;
  GemmBlocking sgemm_blocking{}, dgemm_blocking{};  // for cpu_info()

  template <typename T>
  struct Conv {
    ConvForwardFn<T> forward = nullptr;
    ConvBackwardDataFn<T> backward_data = nullptr;
    ConvBackwardWeightsFn<T> backward_weights = nullptr;
  };
  Conv<float> sconv;
  Conv<double> dconv;

  template <typename T>
  struct Pool {
    MaxPoolForwardFn<T> max_forward = nullptr;
    MaxPoolBackwardFn<T> max_backward = nullptr;
    AvgPoolForwardFn<T> avg_forward = nullptr;
    AvgPoolBackwardFn<T> avg_backward = nullptr;
  };
  Pool<float> spool;
  Pool<double> dpool;

  ReluFn<float> srelu = nullptr;
  ReluFn<double> drelu = nullptr;
  ReluBackwardFn<float> srelu_backward = nullptr;
  ReluBackwardFn<double> drelu_backward = nullptr;
  SgdUpdateFn<float> ssgd = nullptr;
  SgdUpdateFn<double> dsgd = nullptr;
  AdamUpdateFn<float> sadam = nullptr;
  AdamUpdateFn<double> dadam = nullptr;
  ReluFn<float> relu(float) const { return srelu; }
  ReluFn<double> relu(double) const { return drelu; }
  ReluBackwardFn<float> relu_backward(float) const { return srelu_backward; }
  ReluBackwardFn<double> relu_backward(double) const { return drelu_backward; }
  SgdUpdateFn<float> sgd(float) const { return ssgd; }
  SgdUpdateFn<double> sgd(double) const { return dsgd; }
  AdamUpdateFn<float> adam(float) const { return sadam; }
  AdamUpdateFn<double> adam(double) const { return dadam; }

  template <typename T>
  struct BatchNorm {
    BatchNormForwardFn<T> forward = nullptr;
    BatchNormBackwardFn<T> backward = nullptr;
  };
  BatchNorm<float> sbatch_norm;
  BatchNorm<double> dbatch_norm;
  const BatchNorm<float>& batch_norm(float) const { return sbatch_norm; }
  const BatchNorm<double>& batch_norm(double) const { return dbatch_norm; }

  ProbeFmaFn probe_fma = nullptr;
  ProbeStreamFn probe_stream = nullptr;

  const Conv<float>& conv(float) const { return sconv; }
  const Conv<double>& conv(double) const { return dconv; }
  const Pool<float>& pool(float) const { return spool; }
  const Pool<double>& pool(double) const { return dpool; }
};

// Filled by gemm.cpp, conv.cpp, pool.cpp, probe.cpp, elementwise.cpp and batch_norm.cpp of each
// ISA.
#define SIMDNN_DECLARE_REGISTER(isa)             \
  namespace isa {                                \
  void register_gemm(KernelTable* table);        \
  void register_conv(KernelTable* table);        \
  void register_pool(KernelTable* table);        \
  void register_probe(KernelTable* table);       \
  void register_elementwise(KernelTable* table); \
  void register_norm(KernelTable* table);        \
  }
SIMDNN_DECLARE_REGISTER(scalar)
#ifdef SIMDNN_HAVE_AVX2
SIMDNN_DECLARE_REGISTER(avx2)
#endif
#ifdef SIMDNN_HAVE_AVX512
SIMDNN_DECLARE_REGISTER(avx512)
#endif
#undef SIMDNN_DECLARE_REGISTER

// The active table. Never null.
const KernelTable& kernels();
// The table of one ISA; the ISA must be available (isa_available).
const KernelTable& kernels_for(Isa isa);
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
