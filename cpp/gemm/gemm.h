// GEMM entry point shared by all ISAs.
//
//   C[M, N] = act(alpha * A[M, K] . B[K, N] + beta * C[M, N] + bias[N])
//
// The epilogue (bias, a per-column vector of N, added to every row; act, the identity or ReLU
// max(0, v) that keeps NaN) is applied to each tile while it is still in L1, after its last
// K block: a Linear layer followed by a ReLU then writes its output once, where a separate bias
// pass and ReLU call read it twice more (on two threads, from the other core's cache half the
// time).
//
// Shapes: M rows of A and C, N columns of B and C, K the reduction. Strides are in elements and
// may be anything, negative included: A(i, p) = a[i*rs_a + p*cs_a], B(p, j) = b[p*rs_b + j*cs_b].
// A transpose is a swap of the two strides (the driver never materialises it). C has a unit column
// stride and row stride rs_c. beta == 0 means C is not read. All sizes are 64-bit.
#pragma once

#include <cstdint>

namespace simdnn {

template <typename T>
struct GemmArgs {
  int64_t m = 0, n = 0, k = 0;
  T alpha = T(1);
  const T* a = nullptr;
  int64_t rs_a = 0, cs_a = 0;
  const T* b = nullptr;
  int64_t rs_b = 0, cs_b = 0;
  T beta = T(0);
  T* c = nullptr;
  int64_t rs_c = 0;
  const T* bias = nullptr;  // N elements, contiguous; nullptr: none
  bool relu = false;
  int nthreads = 1;
  // > 0: the reduction is summed in runs of at most this many terms, each run's sum then added
  // to C (the cache blocking's own K blocks are larger). Fewer terms per running sum round less:
  // Winograd's GEMMs use it (conv/winograd.h, kWinogradSumDepth).
  int64_t sum_depth = 0;
};

template <typename T>
using GemmFn = void (*)(const GemmArgs<T>& args);

// Micro-kernel signature (contract in gemm_ukernel.h).
#define SIMDNN_GEMM_UKERNEL_PARAMS(T)                                                              \
  int64_t k, const T *a, int64_t rs_a, int64_t cs_a, const T *b, int64_t rs_b, T *c, int64_t rs_c, \
      int64_t m, int64_t n, T alpha, T beta

template <typename T>
using GemmUkernelFn = void (*)(SIMDNN_GEMM_UKERNEL_PARAMS(T));

// The blocking a driver uses for one micro-kernel on this CPU (reported by cpu_info()).
struct GemmBlocking {
  int64_t mr, nr;  // micro-tile
  int64_t kc;      // depth of one packed panel
  int64_t nc;      // columns of the packed B block (per thread)
  int64_t mc;      // rows of A packed at once (when A must be packed)
};

}  // namespace simdnn
