// AVX-512 (F/BW/VL/DQ) vector traits. Include only from sources compiled with the avx512 flags.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace simdnn::avx512 {

// Full-mask, zero-masking forms of the shuffles used by the transposes. The plain intrinsics pass
// _mm512_undefined_*() as the merge source, which GCC 12 reports as maybe-uninitialized once
// inlined (GCC bug 105593); with an all-ones mask the compiler emits the same unmasked instruction.
static inline __m512 unpacklo(__m512 a, __m512 b) { return _mm512_maskz_unpacklo_ps(0xffff, a, b); }
static inline __m512 unpackhi(__m512 a, __m512 b) { return _mm512_maskz_unpackhi_ps(0xffff, a, b); }
static inline __m512d unpacklo(__m512d a, __m512d b) {
  return _mm512_maskz_unpacklo_pd(0xff, a, b);
}
static inline __m512d unpackhi(__m512d a, __m512d b) {
  return _mm512_maskz_unpackhi_pd(0xff, a, b);
}
#define SIMDNN_SHUF_F32X4(a, b, imm) _mm512_maskz_shuffle_f32x4(0xffff, a, b, imm)
#define SIMDNN_SHUF_F64X2(a, b, imm) _mm512_maskz_shuffle_f64x2(0xff, a, b, imm)

struct F32 {
  using T = float;
  using V = __m512;
  static constexpr int W = 16;
  static __mmask16 mask(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
  static V zero() { return _mm512_setzero_ps(); }
  static V set1(T x) { return _mm512_set1_ps(x); }
  static V load(const T* p) { return _mm512_loadu_ps(p); }
  static V loadn(const T* p, int n) { return _mm512_maskz_loadu_ps(mask(n), p); }
  static void store(T* p, V v) { _mm512_storeu_ps(p, v); }
  static void storen(T* p, V v, int n) { _mm512_mask_storeu_ps(p, mask(n), v); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  // In-register 16x16 transpose: afterwards r[q][i] is the old r[i][q]. 64 shuffles (4 stages:
  // unpack ps, unpack pd, two 128-bit lane shuffles) for 256 elements.
  static void transpose(V r[16]) {
    V t[16], u[16];
    for (int m = 0; m < 8; ++m) {
      t[2 * m] = unpacklo(r[2 * m], r[2 * m + 1]);
      t[2 * m + 1] = unpackhi(r[2 * m], r[2 * m + 1]);
    }
    // u[4g + c], lane L = rows 4g..4g+3 of column 4L + c.
    for (int g = 0; g < 4; ++g) {
      const __m512d a0 = _mm512_castps_pd(t[4 * g]), a1 = _mm512_castps_pd(t[4 * g + 1]);
      const __m512d b0 = _mm512_castps_pd(t[4 * g + 2]), b1 = _mm512_castps_pd(t[4 * g + 3]);
      u[4 * g + 0] = _mm512_castpd_ps(unpacklo(a0, b0));
      u[4 * g + 1] = _mm512_castpd_ps(unpackhi(a0, b0));
      u[4 * g + 2] = _mm512_castpd_ps(unpacklo(a1, b1));
      u[4 * g + 3] = _mm512_castpd_ps(unpackhi(a1, b1));
    }
    // Row 4L + c of the result gathers lane L of u[c], u[4 + c], u[8 + c], u[12 + c].
    for (int c = 0; c < 4; ++c) {
      const V v01 = SIMDNN_SHUF_F32X4(u[c], u[4 + c], 0x44);
      const V v23 = SIMDNN_SHUF_F32X4(u[c], u[4 + c], 0xee);
      const V w01 = SIMDNN_SHUF_F32X4(u[8 + c], u[12 + c], 0x44);
      const V w23 = SIMDNN_SHUF_F32X4(u[8 + c], u[12 + c], 0xee);
      r[c] = SIMDNN_SHUF_F32X4(v01, w01, 0x88);
      r[4 + c] = SIMDNN_SHUF_F32X4(v01, w01, 0xdd);
      r[8 + c] = SIMDNN_SHUF_F32X4(v23, w23, 0x88);
      r[12 + c] = SIMDNN_SHUF_F32X4(v23, w23, 0xdd);
    }
  }
};

struct F64 {
  using T = double;
  using V = __m512d;
  static constexpr int W = 8;
  static __mmask8 mask(int n) { return static_cast<__mmask8>((1u << n) - 1u); }
  static V zero() { return _mm512_setzero_pd(); }
  static V set1(T x) { return _mm512_set1_pd(x); }
  static V load(const T* p) { return _mm512_loadu_pd(p); }
  static V loadn(const T* p, int n) { return _mm512_maskz_loadu_pd(mask(n), p); }
  static void store(T* p, V v) { _mm512_storeu_pd(p, v); }
  static void storen(T* p, V v, int n) { _mm512_mask_storeu_pd(p, mask(n), v); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static V mul(V a, V b) { return _mm512_mul_pd(a, b); }
  static V add(V a, V b) { return _mm512_add_pd(a, b); }
  static V max(V a, V b) { return _mm512_max_pd(a, b); }
  // In-register 8x8 transpose (same scheme as F32::transpose, on pairs of doubles).
  static void transpose(V r[8]) {
    V t[8];
    for (int m = 0; m < 4; ++m) {
      t[2 * m] = unpacklo(r[2 * m], r[2 * m + 1]);
      t[2 * m + 1] = unpackhi(r[2 * m], r[2 * m + 1]);
    }
    // t[2m + c], lane L = rows 2m, 2m+1 of column 2L + c.
    for (int c = 0; c < 2; ++c) {
      const V v01 = SIMDNN_SHUF_F64X2(t[c], t[2 + c], 0x44);
      const V v23 = SIMDNN_SHUF_F64X2(t[c], t[2 + c], 0xee);
      const V w01 = SIMDNN_SHUF_F64X2(t[4 + c], t[6 + c], 0x44);
      const V w23 = SIMDNN_SHUF_F64X2(t[4 + c], t[6 + c], 0xee);
      r[c] = SIMDNN_SHUF_F64X2(v01, w01, 0x88);
      r[2 + c] = SIMDNN_SHUF_F64X2(v01, w01, 0xdd);
      r[4 + c] = SIMDNN_SHUF_F64X2(v23, w23, 0x88);
      r[6 + c] = SIMDNN_SHUF_F64X2(v23, w23, 0xdd);
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

}  // namespace simdnn::avx512
