// The GEMM entry points of one ISA: compiled once per ISA with that ISA's flags and
// -DSIMDNN_ISA_NS=<isa>, instantiating gemm_driver.h with this ISA's micro-kernels from the
// registry (gemm_isa.h).
#include "gemm/gemm_driver.h"
#include "gemm/gemm_isa.h"
#include "registry.h"

namespace simdnn::SIMDNN_ISA_NS {

namespace {

template <typename T>
void gemm_entry(const GemmArgs<T>& args) {
  gemm_detail::gemm<typename UkernelFor<T>::type>(args);
}

template <typename T>
GemmBlocking blocking() {
  using UK = typename UkernelFor<T>::type;
  return gemm_detail::make_blocking(UK::MR, UK::NR, sizeof(T), 0);
}

}  // namespace

SIMDNN_REGISTER_OP(gemm, gemm_entry)

GemmBlocking gemm_blocking_f32() { return blocking<float>(); }
GemmBlocking gemm_blocking_f64() { return blocking<double>(); }

}  // namespace simdnn::SIMDNN_ISA_NS
