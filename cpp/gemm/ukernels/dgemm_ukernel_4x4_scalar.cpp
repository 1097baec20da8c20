// dgemm_ukernel_4x4_scalar: 4x4 double GEMM micro-kernel for scalar (contract and register budget
// in gemm_ukernel.h).
#include "gemm/gemm_ukernel.h"
#include "gemm/gemm_ukernels.h"
#include "simd/simd_scalar.h"

namespace simdnn::scalar {

void dgemm_ukernel_4x4_scalar(SIMDNN_GEMM_UKERNEL_PARAMS(double)) {
  gemm_detail::ukernel<F64, 4, 4>(k, a, rs_a, cs_a, b, rs_b, c, rs_c, m, n, alpha, beta);
}

}  // namespace simdnn::scalar
