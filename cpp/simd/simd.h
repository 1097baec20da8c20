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

// Column stride 3 (pooling): 3W contiguous elements deinterleaved by 3, vt = p[t], p[t + 3], ...
// (taps t, t + 1, t + 2 of W windows), and back; the shuffles are each ISA's (V::deinterleave3,
// V::interleave3). load3n and store3n touch only the first n elements (loads give 0 past them),
// load3r only elements [lo, hi) (the others `fill`, as V::loadr).
template <class V>
static inline int part3(int n, int k) {  // how many of the first n fall in vector k (0..W)
  const int m = n - k * V::W;
  return m < 0 ? 0 : (m > V::W ? V::W : m);
}
template <class V>
static inline void load3(const typename V::T* p, typename V::V& v0, typename V::V& v1,
                         typename V::V& v2) {
  V::deinterleave3(V::load(p), V::load(p + V::W), V::load(p + 2 * V::W), v0, v1, v2);
}
template <class V>
static inline void load3n(const typename V::T* p, int n, typename V::V& v0, typename V::V& v1,
                          typename V::V& v2) {
  V::deinterleave3(V::loadn(p, part3<V>(n, 0)), V::loadn(p + V::W, part3<V>(n, 1)),
                   V::loadn(p + 2 * V::W, part3<V>(n, 2)), v0, v1, v2);
}
template <class V>
static inline void load3r(const typename V::T* p, int lo, int hi, typename V::T fill,
                          typename V::V& v0, typename V::V& v1, typename V::V& v2) {
  constexpr int W = V::W;
  V::deinterleave3(V::loadr(p, lo, hi, fill), V::loadr(p + W, lo - W, hi - W, fill),
                   V::loadr(p + 2 * W, lo - 2 * W, hi - 2 * W, fill), v0, v1, v2);
}
template <class V>
static inline void store3(typename V::T* p, typename V::V v0, typename V::V v1, typename V::V v2) {
  typename V::V a, b, c;
  V::interleave3(v0, v1, v2, a, b, c);
  V::store(p, a);
  V::store(p + V::W, b);
  V::store(p + 2 * V::W, c);
}
template <class V>
static inline void store3n(typename V::T* p, typename V::V v0, typename V::V v1, typename V::V v2,
                           int n) {
  typename V::V a, b, c;
  V::interleave3(v0, v1, v2, a, b, c);
  V::storen(p, a, part3<V>(n, 0));
  if (n > V::W) V::storen(p + V::W, b, part3<V>(n, 1));
  if (n > 2 * V::W) V::storen(p + 2 * V::W, c, part3<V>(n, 2));
}

}  // namespace simdnn::SIMDNN_ISA_NS
#endif
