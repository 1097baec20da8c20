// sgemm_ukernel_4x8_scalar: 4x8 float GEMM micro-kernel for scalar (contract and register budget in
// gemm_ukernel.h).
#include "gemm/gemm_ukernel.h"
#include "gemm/gemm_ukernels.h"
#include "simd/simd_scalar.h"

namespace simdnn::scalar {

void sgemm_ukernel_4x8_scalar(SIMDNN_GEMM_UKERNEL_PARAMS(float)) {
  gemm_detail::ukernel<F32, 4, 8>(k, a, rs_a, cs_a, b, rs_b, c, rs_c, m, n, alpha, beta);
}

}  // namespace simdnn::scalar
