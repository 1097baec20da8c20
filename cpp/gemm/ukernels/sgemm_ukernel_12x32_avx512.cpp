// sgemm_ukernel_12x32_avx512: 12x32 float GEMM micro-kernel for avx512 (contract and register
// budget in gemm_ukernel.h).
#include "gemm/gemm_ukernel.h"
#include "gemm/gemm_ukernels.h"
#include "simd/simd_avx512.h"

namespace simdnn::avx512 {

void sgemm_ukernel_12x32_avx512(SIMDNN_GEMM_UKERNEL_PARAMS(float)) {
  gemm_detail::ukernel<F32, 12, 32>(k, a, rs_a, cs_a, b, rs_b, c, rs_c, m, n, alpha, beta);
}

}  // namespace simdnn::avx512
