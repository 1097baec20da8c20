// The vector traits of the ISA this translation unit is compiled for (-DSIMDNN_ISA_IS_<ISA>).
#pragma once

#include <cstdint>

#if defined(SIMDNN_ISA_IS_AVX512)
#include "simd/simd_avx512.h"
#elif defined(SIMDNN_ISA_IS_AVX2)
#include "simd/simd_avx2.h"
#elif defined(SIMDNN_ISA_IS_SCALAR)
#include "simd/simd_scalar.h"
#else
#error "simd/simd.h is for per-ISA translation units (compile with -DSIMDNN_ISA_IS_<ISA>)"
#endif

#ifdef SIMDNN_ISA_NS
namespace simdnn::SIMDNN_ISA_NS {

// The sum of v's lanes, in lane order (through memory: rare enough that a shuffle tree per ISA
// would not pay for itself).
template <class V>
static inline typename V::T lane_sum(typename V::V v) {
  typename V::T lanes[V::W], sum = 0;
  V::store(lanes, v);
  for (int l = 0; l < V::W; ++l) sum += lanes[l];
  return sum;
}

// The sum of p[0, n): W partial sums (vector lanes), then their lanes. A scalar sum is one chain
// of dependent adds, 3-4 cycles each.
template <class V>
static inline typename V::T vector_sum(const typename V::T* p, int64_t n) {
  typename V::V acc = V::zero();
  int64_t j = 0;
  for (; j + V::W <= n; j += V::W) acc = V::add(acc, V::load(p + j));
  if (j < n) acc = V::add(acc, V::loadn(p + j, static_cast<int>(n - j)));
  return lane_sum<V>(acc);
}

// The sum of `count` runs of n elements, `stride` apart from p (a bias gradient: one channel's
// planes of dy over a range of images), in one set of W partial sums: run by run, element order.
template <class V>
static inline typename V::T vector_sum_runs(const typename V::T* p, int64_t count, int64_t stride,
                                            int64_t n) {
  typename V::V acc = V::zero();
  for (int64_t i = 0; i < count; ++i, p += stride) {
    int64_t j = 0;
    for (; j + V::W <= n; j += V::W) acc = V::add(acc, V::load(p + j));
    if (j < n) acc = V::add(acc, V::loadn(p + j, static_cast<int>(n - j)));
  }
  return lane_sum<V>(acc);
}

}  // namespace simdnn::SIMDNN_ISA_NS
#endif
