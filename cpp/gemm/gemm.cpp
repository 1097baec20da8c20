// The GEMM entry points of one ISA: compiled once per ISA with that ISA's flags and
// -DSIMDNN_ISA_NS=<isa>, instantiating gemm_driver.h with this ISA's micro-kernels from the
// registry (gemm_isa.h).
#include "dispatch.h"
#include "gemm/gemm_driver.h"
#include "gemm/gemm_isa.h"

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

void register_gemm(KernelTable* table) {
  table->sgemm = &gemm_entry<float>;
  table->dgemm = &gemm_entry<double>;
  table->sgemm_blocking = blocking<float>();
  table->dgemm_blocking = blocking<double>();
}

}  // namespace simdnn::SIMDNN_ISA_NS
