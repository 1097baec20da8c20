// The GEMM drivers of one ISA: compiled once per ISA with that ISA's flags and
// -DSIMDNN_ISA_NS=<isa>, instantiating gemm_driver.h with this ISA's micro-kernels from the
// registry.
#include "common/isa_macros.h"
#include "dispatch.h"
#include "gemm/gemm_driver.h"
#include "gemm/gemm_ukernels.h"
#include "simd/simd.h"

#ifndef SIMDNN_ISA_NS
#error "compile with -DSIMDNN_ISA_NS=<isa>"
#endif

namespace simdnn::SIMDNN_ISA_NS {

namespace {

template <typename Tp, int kMr, int kNr, GemmUkernelFn<Tp> kFn>
struct Ukernel {
  using T = Tp;
  using V = typename VecOf<Tp>::type;
  static constexpr int MR = kMr, NR = kNr;
  static void run(SIMDNN_GEMM_UKERNEL_PARAMS(T)) {
    kFn(k, a, rs_a, cs_a, b, rs_b, c, rs_c, m, n, alpha, beta);
  }
};

template <class UK>
void gemm_entry(const GemmArgs<typename UK::T>& args) {
  gemm_detail::gemm<UK>(args);
}

GemmFn<float>& gemm_slot(KernelTable* t, float) { return t->sgemm; }
GemmFn<double>& gemm_slot(KernelTable* t, double) { return t->dgemm; }
GemmBlocking& blocking_slot(KernelTable* t, float) { return t->sgemm_blocking; }
GemmBlocking& blocking_slot(KernelTable* t, double) { return t->dgemm_blocking; }

}  // namespace

void register_gemm(KernelTable* table) {
#define SIMDNN_GEMM_UKERNEL(isa, T, MR, NR, name)                                   \
  SIMDNN_THIS_##isa(gemm_slot(table, T()) = &gemm_entry<Ukernel<T, MR, NR, &name>>; \
                    blocking_slot(table, T()) = gemm_detail::make_blocking(MR, NR, sizeof(T), 0);)
#include "kernels.inc"
#undef SIMDNN_GEMM_UKERNEL
}

}  // namespace simdnn::SIMDNN_ISA_NS
