// AVX2 + FMA vector traits. Include only from sources compiled with the avx2 flags.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace simdnn::avx2 {

// Lane masks for vmaskmov: lane i is active when i < n.
static inline __m256i lane_mask32(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline __m256i lane_mask64(int n) {
  return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
}

struct F32 {
  using T = float;
  using V = __m256;
  static constexpr int W = 8;
  static V zero() { return _mm256_setzero_ps(); }
  static V set1(T x) { return _mm256_set1_ps(x); }
  static V load(const T* p) { return _mm256_loadu_ps(p); }
  static V loadn(const T* p, int n) { return _mm256_maskload_ps(p, lane_mask32(n)); }
  static void store(T* p, V v) { _mm256_storeu_ps(p, v); }
  static void storen(T* p, V v, int n) { _mm256_maskstore_ps(p, lane_mask32(n), v); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  // In-register 8x8 transpose: afterwards r[q][i] is the old r[i][q].
  static void transpose(V r[8]) {
    V t[8], u[8];
    for (int m = 0; m < 4; ++m) {
      t[2 * m] = _mm256_unpacklo_ps(r[2 * m], r[2 * m + 1]);
      t[2 * m + 1] = _mm256_unpackhi_ps(r[2 * m], r[2 * m + 1]);
    }
    for (int g = 0; g < 2; ++g) {
      const __m256d a0 = _mm256_castps_pd(t[4 * g]), a1 = _mm256_castps_pd(t[4 * g + 1]);
      const __m256d b0 = _mm256_castps_pd(t[4 * g + 2]), b1 = _mm256_castps_pd(t[4 * g + 3]);
      u[4 * g + 0] = _mm256_castpd_ps(_mm256_unpacklo_pd(a0, b0));
      u[4 * g + 1] = _mm256_castpd_ps(_mm256_unpackhi_pd(a0, b0));
      u[4 * g + 2] = _mm256_castpd_ps(_mm256_unpacklo_pd(a1, b1));
      u[4 * g + 3] = _mm256_castpd_ps(_mm256_unpackhi_pd(a1, b1));
    }
    for (int c = 0; c < 4; ++c) {
      r[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
      r[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
    }
  }
};

struct F64 {
  using T = double;
  using V = __m256d;
  static constexpr int W = 4;
  static V zero() { return _mm256_setzero_pd(); }
  static V set1(T x) { return _mm256_set1_pd(x); }
  static V load(const T* p) { return _mm256_loadu_pd(p); }
  static V loadn(const T* p, int n) { return _mm256_maskload_pd(p, lane_mask64(n)); }
  static void store(T* p, V v) { _mm256_storeu_pd(p, v); }
  static void storen(T* p, V v, int n) { _mm256_maskstore_pd(p, lane_mask64(n), v); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static V mul(V a, V b) { return _mm256_mul_pd(a, b); }
  static V add(V a, V b) { return _mm256_add_pd(a, b); }
  static V max(V a, V b) { return _mm256_max_pd(a, b); }
  // In-register 4x4 transpose.
  static void transpose(V r[4]) {
    V t[4];
    for (int m = 0; m < 2; ++m) {
      t[2 * m] = _mm256_unpacklo_pd(r[2 * m], r[2 * m + 1]);
      t[2 * m + 1] = _mm256_unpackhi_pd(r[2 * m], r[2 * m + 1]);
    }
    for (int c = 0; c < 2; ++c) {
      r[c] = _mm256_permute2f128_pd(t[c], t[2 + c], 0x20);
      r[2 + c] = _mm256_permute2f128_pd(t[c], t[2 + c], 0x31);
    }
  }
};

template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  using type = F32;
};
template <>
struct VecOf<double> {
  using type = F64;
};

}  // namespace simdnn::avx2
