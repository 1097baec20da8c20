// For per-ISA translation units (compiled with -DSIMDNN_ISA_NS=<isa>): this ISA's registered GEMM
// micro-kernel for each element type, as the descriptor gemm_driver.h is templated on.
//   UkernelFor<float>::type, UkernelFor<double>::type
#pragma once

#include "common/isa_macros.h"
#include "gemm/gemm.h"
#include "gemm/gemm_ukernels.h"
#include "simd/simd.h"

#ifndef SIMDNN_ISA_NS
#error "compile with -DSIMDNN_ISA_NS=<isa>"
#endif

namespace simdnn::SIMDNN_ISA_NS {

template <typename Tp, int kMr, int kNr, GemmUkernelFn<Tp> kFn>
struct Ukernel {
  using T = Tp;
  using V = typename VecOf<Tp>::type;
  static constexpr int MR = kMr, NR = kNr;
  static void run(SIMDNN_GEMM_UKERNEL_PARAMS(T)) {
    kFn(k, a, rs_a, cs_a, b, rs_b, c, rs_c, m, n, alpha, beta);
  }
};

template <typename T>
struct UkernelFor;

#define SIMDNN_GEMM_UKERNEL(isa, T, MR, NR, name) \
  SIMDNN_THIS_##isa(template <> struct UkernelFor<T> { using type = Ukernel<T, MR, NR, &name>; };)
#include "kernels.inc"
#undef SIMDNN_GEMM_UKERNEL

}  // namespace simdnn::SIMDNN_ISA_NS
