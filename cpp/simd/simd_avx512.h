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
// Set bits of a lane mask (pooling counts matching indices with it).
static inline int popcount(unsigned m) {
#if defined(_MSC_VER) && !defined(__clang__)
  return static_cast<int>(_mm_popcnt_u32(m));
#else
  return __builtin_popcount(m);
#endif
}

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
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V fnma(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }    // c - a * b
  static V sqrt(V a) { return _mm512_maskz_sqrt_ps(0xffff, a); }        // see store_u8n
  static V max(V a, V b) { return _mm512_maskz_max_ps(0xffff, a, b); }  // see unpacklo
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

  // --- Added for pooling (cpp/pool). Masks are k-registers; index vectors hold small integers
  // as floats (exact below 2^24), so selecting an index costs the same blend as a value.
  using M = __mmask16;
  // Lanes where a > b or a is NaN: the max-pool update rule (a NaN always takes over).
  static M gt_or_nan(V a, V b) {
    return static_cast<M>(_mm512_cmp_ps_mask(a, b, _CMP_GT_OQ) |
                          _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q));
  }
  static M eq(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
  static M gt(V a, V b) {
    return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ);
  }  // ordered: false where either is NaN
  static M unord(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q); }  // a or b is NaN
  static M mask_or(M a, M b) { return static_cast<M>(a | b); }
  // m ? b : a, lane by lane.
  static V blend(M m, V a, V b) { return _mm512_mask_blend_ps(m, a, b); }
  static int count(M m) { return popcount(static_cast<unsigned>(m)); }
  static V div(V a, V b) { return _mm512_div_ps(a, b); }
  // a + b in the lanes of m, a elsewhere.
  static V mask_add(V a, M m, V b) { return _mm512_mask_add_ps(a, m, a, b); }
  // Lanes lo <= i < hi; lo and hi may lie outside [0, W].
  static M range_mask(int lo, int hi) {
    lo = lo < 0 ? 0 : (lo > W ? W : lo);
    hi = hi < 0 ? 0 : (hi > W ? W : hi);
    return static_cast<M>(mask(hi) & ~mask(lo));
  }
  // Lanes [lo, hi) from p[lo..hi), the others `fill`. Only p[lo..hi) is read, so p itself may
  // point outside the array (a window reaching into the padding).
  // lanes(lo, hi): the mask of lanes [lo, hi); keep: v in the mask's lanes, zero elsewhere (in
  // registers: no memory access).
  static M lanes(int lo, int hi) { return range_mask(lo, hi); }
  static V keep(V v, M m) { return _mm512_maskz_mov_ps(m, v); }
  static V loadr(const T* p, int lo, int hi, T fill) {
    return _mm512_mask_loadu_ps(set1(fill), range_mask(lo, hi), p);
  }
  // Lane i = element idx[i] of the 2W elements lo:hi (vpermt2ps, one shuffle), in the lanes of
  // m; zero elsewhere. AVX-512 only (the window form of im2col.h asks for it).
  using I = __m512i;
  static constexpr bool kPermute2 = true;
  static I index(const int32_t* idx) { return _mm512_loadu_si512(idx); }
  static V permute2z(M m, V lo, I idx, V hi) {
    return _mm512_maskz_permutex2var_ps(m, lo, idx, hi);
  }
  // Deinterleave 2W contiguous elements: even = p[0], p[2], ..., odd = p[1], p[3], ...
  static void load2(const T* p, V& even, V& odd) { deinterleave(load(p), load(p + W), even, odd); }
  // The same reading only the first n <= 2W elements (the rest are 0).
  static void load2n(const T* p, int n, V& even, V& odd) {
    deinterleave(loadn(p, n < W ? n : W), loadn(p + W, n > W ? n - W : 0), even, odd);
  }
  // The same reading only elements [lo, hi) of the 2W, the others `fill` (see loadr).
  static void load2r(const T* p, int lo, int hi, T fill, V& even, V& odd) {
    deinterleave(loadr(p, lo, hi, fill), loadr(p + W, lo - W, hi - W, fill), even, odd);
  }
  static void deinterleave(V a, V b, V& even, V& odd) {
    const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    even = _mm512_permutex2var_ps(a, ie, b);
    odd = _mm512_permutex2var_ps(a, io, b);
  }
  // The 3W elements a:b:c by 3: vt[j] = element 3j + t (load3 in simd.h); interleave3 inverts it.
  static void deinterleave3(V a, V b, V c, V& v0, V& v1, V& v2) {
    // Lane j takes element e = 3j + t of a:b:c. vpermt2ps reads e's low 5 bits from a:b; the lanes
    // with e >= 32 then take c[e - 32] (vpermps reads the low 4 bits, and e - 32 = e mod 16).
    const __m512i i0 =
        _mm512_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 36, 39, 42, 45);
    const __m512i i1 = _mm512_add_epi32(i0, _mm512_set1_epi32(1));
    const __m512i i2 = _mm512_add_epi32(i0, _mm512_set1_epi32(2));
    v0 = _mm512_mask_permutexvar_ps(_mm512_permutex2var_ps(a, i0, b), 0xF800, i0, c);  // j >= 11
    v1 = _mm512_mask_permutexvar_ps(_mm512_permutex2var_ps(a, i1, b), 0xF800, i1, c);  // j >= 11
    v2 = _mm512_mask_permutexvar_ps(_mm512_permutex2var_ps(a, i2, b), 0xFC00, i2, c);  // j >= 10
  }
  static void interleave3(V v0, V v1, V v2, V& a, V& b, V& c) {
    // Output element e = 3j + t is vt[j]: vpermt2ps takes v0[j] (index j) and v1[j] (16 + j),
    // then the lanes with t = 2 take v2[j] (vpermps, index j).
    const __m512i ia = _mm512_setr_epi32(0, 16, 0, 1, 17, 1, 2, 18, 2, 3, 19, 3, 4, 20, 4, 5);
    const __m512i ib = _mm512_setr_epi32(21, 5, 6, 22, 6, 7, 23, 7, 8, 24, 8, 9, 25, 9, 10, 26);
    const __m512i ic =
        _mm512_setr_epi32(10, 11, 27, 11, 12, 28, 12, 13, 29, 13, 14, 30, 14, 15, 31, 15);
    a = _mm512_mask_permutexvar_ps(_mm512_permutex2var_ps(v0, ia, v1), 0x4924, ia, v2);
    b = _mm512_mask_permutexvar_ps(_mm512_permutex2var_ps(v0, ib, v1), 0x2492, ib, v2);
    c = _mm512_mask_permutexvar_ps(_mm512_permutex2var_ps(v0, ic, v1), 0x9249, ic, v2);
  }
  // Interleave and store 2W contiguous elements p[2i] = even[i], p[2i+1] = odd[i] (first n only).
  static void store2(T* p, V even, V odd) {
    V lo, hi;
    interleave(even, odd, lo, hi);
    store(p, lo);
    store(p + W, hi);
  }
  static void store2n(T* p, V even, V odd, int n) {
    V lo, hi;
    interleave(even, odd, lo, hi);
    storen(p, lo, n < W ? n : W);
    if (n > W) storen(p + W, hi, n - W);
  }
  static void interleave(V even, V odd, V& lo, V& hi) {
    const __m512i il = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i ih =
        _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    lo = _mm512_permutex2var_ps(even, il, odd);
    hi = _mm512_permutex2var_ps(even, ih, odd);
  }
  // n lanes p[0], p[stride], ..., p[(n-1) * stride] (the rest 0); (n-1) * stride fits in int32.
  static V gathern(const T* p, int stride, int n) {
    const __m512i off =
        _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                           _mm512_set1_epi32(stride));
    return _mm512_mask_i32gather_ps(zero(), mask(n), off, p, 4);
  }
  // v as it is, computed into a register: a load passed through this is not folded into the
  // masked (zeroing) loads of later blends. GCC turned blend(m, 0, load(p)) into masked loads,
  // which stream from memory ~5x slower on Zen 5 (the 3x3/s2 max-pool backward: 20% of its time
  // on one such load).
  // Lanes [0, n); n may lie outside [0, W].
  static M first_n(int n) { return range_mask(0, n); }
  static V in_register(V v) {
#if defined(__GNUC__)
    __asm__("" : "+v"(v));
#endif
    return v;
  }
  // One lane shifted in: shift_up gives [in, v0, ..., v(W-2)], shift_down [v1, ..., v(W-1), in]
  // (the tap one column left or right of a deinterleaved stride-2 vector). Masked forms: see
  // unpacklo.
  static V shift_up(V v, T in) {
    return _mm512_castsi512_ps(_mm512_maskz_alignr_epi32(0xffff, _mm512_castps_si512(v),
                                                         _mm512_castps_si512(set1(in)), 15));
  }
  static V shift_down(V v, T in) {
    return _mm512_castsi512_ps(_mm512_maskz_alignr_epi32(0xffff, _mm512_castps_si512(set1(in)),
                                                         _mm512_castps_si512(v), 1));
  }
  // The same with the lane shifted in taken from a neighbouring vector: shift_down_from gives
  // [v1, ..., v(W-1), next0], shift_up_from [prev(W-1), v0, ..., v(W-2)].
  static V shift_down_from(V v, V next) {
    return _mm512_castsi512_ps(
        _mm512_maskz_alignr_epi32(0xffff, _mm512_castps_si512(next), _mm512_castps_si512(v), 1));
  }
  static V shift_up_from(V v, V prev) {
    return _mm512_castsi512_ps(
        _mm512_maskz_alignr_epi32(0xffff, _mm512_castps_si512(v), _mm512_castps_si512(prev), 15));
  }
  // Index lanes (max-pool positions as integers): the lanes i in [lo, hi) where p[i] == k.
  static M eq_u8r(const uint8_t* p, int lo, int hi, int64_t k) {
    const M m = range_mask(lo, hi);
    return _mm_mask_cmpeq_epi8_mask(m, _mm_maskz_loadu_epi8(m, p),
                                    _mm_set1_epi8(static_cast<char>(k)));
  }
  // The lanes of W uint8 indices p[0..W) (all inside) equal to k0, ..., k0 + N - 1 (k0 + N <= 256).
  template <int N>
  static void eq_u8_run(const uint8_t* p, int64_t k0, M m[N]) {
    const __m128i d = _mm_sub_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)),
                                   _mm_set1_epi8(static_cast<char>(k0)));
    for (int s = 0; s < N; ++s) m[s] = _mm_cmpeq_epi8_mask(d, _mm_set1_epi8(static_cast<char>(s)));
  }
  static M mask_and(M a, M b) { return static_cast<M>(a & b); }
  static M eq_i32r(const int32_t* p, int lo, int hi, int64_t k) {
    const M m = range_mask(lo, hi);
    return _mm512_mask_cmpeq_epi32_mask(m, _mm512_maskz_loadu_epi32(m, p),
                                        _mm512_set1_epi32(static_cast<int>(k)));
  }
  // Index stores: the first n lanes, small non-negative integers, converted. The conversions use
  // their mask forms: the same instructions, but GCC 12 warns (falsely) about the
  // _mm512_undefined_* operand of the plain forms (GCC bug 105593).
  // A whole vector narrows in a register and goes out as one plain 16-byte store: the masked
  // narrowing store (vpmovdb to memory) stalled the 3x3/s2 max pool on Zen 5 (5% of its samples
  // on the next instruction; 64x64x32x32 float32 on 2 threads, 384 -> 366 us).
  static void store_u8n(uint8_t* p, V v, int n) {
    const __m512i i = _mm512_maskz_cvttps_epi32(0xffff, v);
    if (n == W) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_maskz_cvtepi32_epi8(0xffff, i));
    } else {
      _mm512_mask_cvtepi32_storeu_epi8(p, mask(n), i);
    }
  }
  static void store_i32n(int32_t* p, V v, int n) {
    _mm512_mask_storeu_epi32(p, mask(n), _mm512_maskz_cvttps_epi32(0xffff, v));
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
  static V sub(V a, V b) { return _mm512_sub_pd(a, b); }
  static V fnma(V a, V b, V c) { return _mm512_fnmadd_pd(a, b, c); }  // c - a * b
  static V sqrt(V a) { return _mm512_maskz_sqrt_pd(0xff, a); }        // see store_u8n
  static V max(V a, V b) { return _mm512_maskz_max_pd(0xff, a, b); }  // see unpacklo
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

  // --- Added for pooling (cpp/pool); see F32.
  using M = __mmask8;
  static M gt_or_nan(V a, V b) {
    return static_cast<M>(_mm512_cmp_pd_mask(a, b, _CMP_GT_OQ) |
                          _mm512_cmp_pd_mask(a, a, _CMP_UNORD_Q));
  }
  static M eq(V a, V b) { return _mm512_cmp_pd_mask(a, b, _CMP_EQ_OQ); }
  static M gt(V a, V b) {
    return _mm512_cmp_pd_mask(a, b, _CMP_GT_OQ);
  }  // ordered: false where either is NaN
  static M unord(V a, V b) { return _mm512_cmp_pd_mask(a, b, _CMP_UNORD_Q); }  // a or b is NaN
  static M mask_or(M a, M b) { return static_cast<M>(a | b); }
  static V blend(M m, V a, V b) { return _mm512_mask_blend_pd(m, a, b); }
  static int count(M m) { return popcount(static_cast<unsigned>(m)); }
  static V div(V a, V b) { return _mm512_div_pd(a, b); }
  static V mask_add(V a, M m, V b) { return _mm512_mask_add_pd(a, m, a, b); }
  static M range_mask(int lo, int hi) {
    lo = lo < 0 ? 0 : (lo > W ? W : lo);
    hi = hi < 0 ? 0 : (hi > W ? W : hi);
    return static_cast<M>(mask(hi) & ~mask(lo));
  }
  static M lanes(int lo, int hi) { return range_mask(lo, hi); }
  static V keep(V v, M m) { return _mm512_maskz_mov_pd(m, v); }
  static V loadr(const T* p, int lo, int hi, T fill) {
    return _mm512_mask_loadu_pd(set1(fill), range_mask(lo, hi), p);
  }
  // See F32::permute2z; the indices widen to 64 bits (maskz: see unpacklo).
  using I = __m512i;
  static constexpr bool kPermute2 = true;
  static I index(const int32_t* idx) {
    return _mm512_maskz_cvtepi32_epi64(0xff,
                                       _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx)));
  }
  static V permute2z(M m, V lo, I idx, V hi) {
    return _mm512_maskz_permutex2var_pd(m, lo, idx, hi);
  }
  static void load2(const T* p, V& even, V& odd) { deinterleave(load(p), load(p + W), even, odd); }
  static void load2n(const T* p, int n, V& even, V& odd) {
    deinterleave(loadn(p, n < W ? n : W), loadn(p + W, n > W ? n - W : 0), even, odd);
  }
  static void load2r(const T* p, int lo, int hi, T fill, V& even, V& odd) {
    deinterleave(loadr(p, lo, hi, fill), loadr(p + W, lo - W, hi - W, fill), even, odd);
  }
  static void deinterleave(V a, V b, V& even, V& odd) {
    even = _mm512_permutex2var_pd(a, _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14), b);
    odd = _mm512_permutex2var_pd(a, _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15), b);
  }
  static void deinterleave3(V a, V b, V c, V& v0, V& v1, V& v2) {
    // As F32's with 8 lanes: e = 3j + t, low 4 bits from a:b, then c[e - 16] (low 3 bits) where
    // e >= 16.
    const __m512i i0 = _mm512_setr_epi64(0, 3, 6, 9, 12, 15, 18, 21);
    const __m512i i1 = _mm512_add_epi64(i0, _mm512_set1_epi64(1));
    const __m512i i2 = _mm512_add_epi64(i0, _mm512_set1_epi64(2));
    v0 = _mm512_mask_permutexvar_pd(_mm512_permutex2var_pd(a, i0, b), 0xC0, i0, c);  // j >= 6
    v1 = _mm512_mask_permutexvar_pd(_mm512_permutex2var_pd(a, i1, b), 0xE0, i1, c);  // j >= 5
    v2 = _mm512_mask_permutexvar_pd(_mm512_permutex2var_pd(a, i2, b), 0xE0, i2, c);  // j >= 5
  }
  static void interleave3(V v0, V v1, V v2, V& a, V& b, V& c) {
    // As F32's with 8 lanes: v0[j] is index j, v1[j] 8 + j, then v2[j] where t = 2.
    const __m512i ia = _mm512_setr_epi64(0, 8, 0, 1, 9, 1, 2, 10);
    const __m512i ib = _mm512_setr_epi64(2, 3, 11, 3, 4, 12, 4, 5);
    const __m512i ic = _mm512_setr_epi64(13, 5, 6, 14, 6, 7, 15, 7);
    a = _mm512_mask_permutexvar_pd(_mm512_permutex2var_pd(v0, ia, v1), 0x24, ia, v2);
    b = _mm512_mask_permutexvar_pd(_mm512_permutex2var_pd(v0, ib, v1), 0x49, ib, v2);
    c = _mm512_mask_permutexvar_pd(_mm512_permutex2var_pd(v0, ic, v1), 0x92, ic, v2);
  }
  static void store2(T* p, V even, V odd) {
    V lo, hi;
    interleave(even, odd, lo, hi);
    store(p, lo);
    store(p + W, hi);
  }
  static void store2n(T* p, V even, V odd, int n) {
    V lo, hi;
    interleave(even, odd, lo, hi);
    storen(p, lo, n < W ? n : W);
    if (n > W) storen(p + W, hi, n - W);
  }
  static void interleave(V even, V odd, V& lo, V& hi) {
    lo = _mm512_permutex2var_pd(even, _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11), odd);
    hi = _mm512_permutex2var_pd(even, _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15), odd);
  }
  static V gathern(const T* p, int stride, int n) {
    const __m256i off =
        _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(stride));
    return _mm512_mask_i32gather_pd(zero(), mask(n), off, p, 8);
  }
  static M first_n(int n) { return range_mask(0, n); }
  static V in_register(V v) {
#if defined(__GNUC__)
    __asm__("" : "+v"(v));
#endif
    return v;
  }
  static V shift_up(V v, T in) {
    return _mm512_castsi512_pd(
        _mm512_maskz_alignr_epi64(0xff, _mm512_castpd_si512(v), _mm512_castpd_si512(set1(in)), 7));
  }
  static V shift_down(V v, T in) {
    return _mm512_castsi512_pd(
        _mm512_maskz_alignr_epi64(0xff, _mm512_castpd_si512(set1(in)), _mm512_castpd_si512(v), 1));
  }
  static V shift_down_from(V v, V next) {
    return _mm512_castsi512_pd(
        _mm512_maskz_alignr_epi64(0xff, _mm512_castpd_si512(next), _mm512_castpd_si512(v), 1));
  }
  static V shift_up_from(V v, V prev) {
    return _mm512_castsi512_pd(
        _mm512_maskz_alignr_epi64(0xff, _mm512_castpd_si512(v), _mm512_castpd_si512(prev), 7));
  }
  static M eq_u8r(const uint8_t* p, int lo, int hi, int64_t k) {
    const M m = range_mask(lo, hi);
    return static_cast<M>(_mm_mask_cmpeq_epi8_mask(m, _mm_maskz_loadu_epi8(m, p),
                                                   _mm_set1_epi8(static_cast<char>(k))));
  }
  template <int N>
  static void eq_u8_run(const uint8_t* p, int64_t k0, M m[N]) {
    const __m128i d = _mm_sub_epi8(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)),
                                   _mm_set1_epi8(static_cast<char>(k0)));
    for (int s = 0; s < N; ++s) {
      m[s] = static_cast<M>(_mm_cmpeq_epi8_mask(d, _mm_set1_epi8(static_cast<char>(s))));
    }
  }
  static M mask_and(M a, M b) { return static_cast<M>(a & b); }
  static M eq_i32r(const int32_t* p, int lo, int hi, int64_t k) {
    const M m = range_mask(lo, hi);
    return _mm256_mask_cmpeq_epi32_mask(m, _mm256_maskz_loadu_epi32(m, p),
                                        _mm256_set1_epi32(static_cast<int>(k)));
  }
  static void store_u8n(uint8_t* p, V v, int n) {
    _mm256_mask_cvtepi32_storeu_epi8(p, mask(n), _mm512_maskz_cvttpd_epi32(0xff, v));
  }
  static void store_i32n(int32_t* p, V v, int n) {
    _mm256_mask_storeu_epi32(p, mask(n), _mm512_maskz_cvttpd_epi32(0xff, v));
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
