// dgemm_ukernel_6x8_avx2: 6x8 double GEMM micro-kernel for avx2 (contract and register budget in
// gemm_ukernel.h).
#include "gemm/gemm_ukernel.h"
#include "gemm/gemm_ukernels.h"
#include "simd/simd_avx2.h"

namespace simdnn::avx2 {

void dgemm_ukernel_6x8_avx2(SIMDNN_GEMM_UKERNEL_PARAMS(double)) {
  gemm_detail::ukernel<F64, 6, 8>(k, a, rs_a, cs_a, b, rs_b, c, rs_c, m, n, alpha, beta);
}

}  // namespace simdnn::avx2
