// dgemm_ukernel_12x16_avx512: 12x16 double GEMM micro-kernel for avx512 (contract and register
// budget in gemm_ukernel.h).
#include "gemm/gemm_ukernel.h"
#include "gemm/gemm_ukernels.h"
#include "simd/simd_avx512.h"

namespace simdnn::avx512 {

void dgemm_ukernel_12x16_avx512(SIMDNN_GEMM_UKERNEL_PARAMS(double)) {
  gemm_detail::ukernel<F64, 12, 16>(k, a, rs_a, cs_a, b, rs_b, c, rs_c, m, n, alpha, beta);
}

}  // namespace simdnn::avx512
