// AVX2 + FMA vector traits. Include only from sources compiled with the avx2 flags.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace simdnn::avx2 {

// Set bits of a lane mask (pooling counts matching indices with it).
static inline int popcount(unsigned m) {
#if defined(_MSC_VER) && !defined(__clang__)
  return static_cast<int>(_mm_popcnt_u32(m));
#else
  return __builtin_popcount(m);
#endif
}

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
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V fnma(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }  // c - a * b
  static V sqrt(V a) { return _mm256_sqrt_ps(a); }
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

  // --- Added for pooling (cpp/pool). Masks are all-ones lanes; index vectors hold small
  // integers as floats (exact below 2^24), so selecting an index costs the same blend as a value.
  using M = V;
  // Lanes where a > b or a is NaN: the max-pool update rule (a NaN always takes over).
  static M gt_or_nan(V a, V b) {
    return _mm256_or_ps(_mm256_cmp_ps(a, b, _CMP_GT_OQ), _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
  }
  static M eq(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
  static M gt(V a, V b) {
    return _mm256_cmp_ps(a, b, _CMP_GT_OQ);
  }  // ordered: false where either is NaN
  static M unord(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_UNORD_Q); }  // a or b is NaN
  static M mask_or(M a, M b) { return _mm256_or_ps(a, b); }
  // m ? b : a, lane by lane.
  static V blend(M m, V a, V b) { return _mm256_blendv_ps(a, b, m); }
  static int count(M m) { return popcount(static_cast<unsigned>(_mm256_movemask_ps(m))); }
  static V div(V a, V b) { return _mm256_div_ps(a, b); }
  // a + b in the lanes of m, a elsewhere.
  static V mask_add(V a, M m, V b) { return _mm256_add_ps(a, _mm256_and_ps(m, b)); }
  // Lanes lo <= i < hi; lo and hi may lie outside [0, W].
  static __m256i range_mask(int lo, int hi) {
    return _mm256_andnot_si256(lane_mask32(lo), lane_mask32(hi));
  }
  // Lanes [lo, hi) from p[lo..hi), the others `fill`. Only p[lo..hi) is read, so p itself may
  // point outside the array (a window reaching into the padding).
  // lanes(lo, hi): the mask of lanes [lo, hi); keep: v in the mask's lanes, zero elsewhere (in
  // registers: no memory access).
  static M lanes(int lo, int hi) { return _mm256_castsi256_ps(range_mask(lo, hi)); }
  static V keep(V v, M m) { return _mm256_and_ps(v, m); }
  static V loadr(const T* p, int lo, int hi, T fill) {
    const __m256i m = range_mask(lo, hi);
    return _mm256_blendv_ps(set1(fill), _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m));
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
    // In-lane shuffles give 0 2 8 10 | 4 6 12 14; a 64-bit permute puts the pairs in order.
    const V e = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
    const V o = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
    even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), _MM_SHUFFLE(3, 1, 2, 0)));
    odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), _MM_SHUFFLE(3, 1, 2, 0)));
  }
  // The 3W elements a:b:c by 3: vt[j] = element 3j + t (load3 in simd.h); interleave3 inverts it.
  static void deinterleave3(V a, V b, V c, V& v0, V& v1, V& v2) {
    // Element 3j + t (j < 8) sits in lane (3j + t) % 8 of a, b or c, and those lanes differ for
    // the 8 values of j (3 and 8 are coprime): two blends gather them into one vector, and one
    // vpermps (index 3j + t, of which it reads the low 3 bits) puts them in order.
    // t = 0: b gives lanes 1 4 7, c lanes 2 5; t = 1: b 2 5, c 0 3 6; t = 2: b 0 3 6, c 1 4 7.
    const __m256i i0 = _mm256_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21);
    const __m256i one = _mm256_set1_epi32(1);
    v0 = _mm256_permutevar8x32_ps(_mm256_blend_ps(_mm256_blend_ps(a, b, 0x92), c, 0x24), i0);
    v1 = _mm256_permutevar8x32_ps(_mm256_blend_ps(_mm256_blend_ps(a, b, 0x24), c, 0x49),
                                  _mm256_add_epi32(i0, one));
    v2 = _mm256_permutevar8x32_ps(_mm256_blend_ps(_mm256_blend_ps(a, b, 0x49), c, 0x92),
                                  _mm256_add_epi32(i0, _mm256_add_epi32(one, one)));
  }
  static void interleave3(V v0, V v1, V v2, V& a, V& b, V& c) {
    // deinterleave3 backwards: vt's lane j goes to lane (3j + t) % 8 (vpermps, index 3 (i - t)
    // mod 8 for lane i), then two blends pick each output lane's t.
    const V m0 = _mm256_permutevar8x32_ps(v0, _mm256_setr_epi32(0, 3, 6, 1, 4, 7, 2, 5));
    const V m1 = _mm256_permutevar8x32_ps(v1, _mm256_setr_epi32(5, 0, 3, 6, 1, 4, 7, 2));
    const V m2 = _mm256_permutevar8x32_ps(v2, _mm256_setr_epi32(2, 5, 0, 3, 6, 1, 4, 7));
    a = _mm256_blend_ps(_mm256_blend_ps(m0, m1, 0x92), m2, 0x24);
    b = _mm256_blend_ps(_mm256_blend_ps(m0, m1, 0x24), m2, 0x49);
    c = _mm256_blend_ps(_mm256_blend_ps(m0, m1, 0x49), m2, 0x92);
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
    const V l = _mm256_unpacklo_ps(even, odd), h = _mm256_unpackhi_ps(even, odd);
    lo = _mm256_permute2f128_ps(l, h, 0x20);
    hi = _mm256_permute2f128_ps(l, h, 0x31);
  }
  // n lanes p[0], p[stride], ..., p[(n-1) * stride] (the rest 0); (n-1) * stride fits in int32.
  static V gathern(const T* p, int stride, int n) {
    const __m256i off =
        _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(stride));
    return _mm256_mask_i32gather_ps(zero(), p, off, _mm256_castsi256_ps(lane_mask32(n)), 4);
  }
  // v as it is, computed into a register (see the AVX-512 traits; vmaskmov from memory is slow on
  // AMD too).
  // Lanes [0, n); n may lie outside [0, W].
  static M first_n(int n) { return _mm256_castsi256_ps(lane_mask32(n)); }
  static V in_register(V v) {
#if defined(__GNUC__)
    __asm__("" : "+x"(v));
#endif
    return v;
  }
  // One lane shifted in: shift_up gives [in, v0, ..., v(W-2)], shift_down [v1, ..., v(W-1), in]
  // (the tap one column left or right of a deinterleaved stride-2 vector).
  static V shift_up(V v, T in) {
    const V t = _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(7, 0, 1, 2, 3, 4, 5, 6));
    return _mm256_blend_ps(t, set1(in), 0x01);
  }
  static V shift_down(V v, T in) {
    const V t = _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(1, 2, 3, 4, 5, 6, 7, 0));
    return _mm256_blend_ps(t, set1(in), 0x80);
  }
  // The same with the lane shifted in taken from a neighbouring vector: shift_down_from gives
  // [v1, ..., v(W-1), next0], shift_up_from [prev(W-1), v0, ..., v(W-2)].
  static V shift_down_from(V v, V next) {
    const V t = _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(1, 2, 3, 4, 5, 6, 7, 0));
    return _mm256_blend_ps(t, _mm256_broadcastss_ps(_mm256_castps256_ps128(next)), 0x80);
  }
  static V shift_up_from(V v, V prev) {
    const V t = _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(7, 0, 1, 2, 3, 4, 5, 6));
    return _mm256_blend_ps(t, _mm256_permutevar8x32_ps(prev, _mm256_set1_epi32(7)), 0x01);
  }
  // Index lanes (max-pool positions as integers): the lanes i in [lo, hi) where p[i] == k.
  static M eq_u8r(const uint8_t* p, int lo, int hi, int64_t k) {
    lo = lo < 0 ? 0 : lo;
    hi = hi > W ? W : hi;
    long long bytes = 0;
    if (lo == 0 && hi == W) {
      std::memcpy(&bytes, p, W);  // a fixed-size copy is one 8-byte load
    } else if (hi > lo) {
      std::memcpy(reinterpret_cast<unsigned char*>(&bytes) + lo, p + lo,
                  static_cast<size_t>(hi - lo));
    }
    const __m128i eq =
        _mm_cmpeq_epi8(_mm_cvtsi64_si128(bytes), _mm_set1_epi8(static_cast<char>(k)));
    return _mm256_castsi256_ps(_mm256_and_si256(_mm256_cvtepi8_epi32(eq), range_mask(lo, hi)));
  }
  // The lanes of W uint8 indices p[0..W) (all inside) equal to k0, k0 + 1, ..., k0 + N - 1
  // (k0 + N <= 256): one subtract, then a byte compare and a widening each, never float lanes.
  template <int N>
  static void eq_u8_run(const uint8_t* p, int64_t k0, M m[N]) {
    long long bytes;
    std::memcpy(&bytes, p, 8);
    const __m128i d = _mm_sub_epi8(_mm_cvtsi64_si128(bytes), _mm_set1_epi8(static_cast<char>(k0)));
    for (int s = 0; s < N; ++s) {
      m[s] = _mm256_castsi256_ps(
          _mm256_cvtepi8_epi32(_mm_cmpeq_epi8(d, _mm_set1_epi8(static_cast<char>(s)))));
    }
  }
  static M mask_and(M a, M b) { return _mm256_and_ps(a, b); }
  static M eq_i32r(const int32_t* p, int lo, int hi, int64_t k) {
    const __m256i m = range_mask(lo, hi);
    const __m256i eq =
        _mm256_cmpeq_epi32(_mm256_maskload_epi32(p, m), _mm256_set1_epi32(static_cast<int>(k)));
    return _mm256_castsi256_ps(_mm256_and_si256(eq, m));
  }
  // Index stores: the first n lanes, small non-negative integers, converted.
  static void store_u8n(uint8_t* p, V v, int n) {
    const __m256i i = _mm256_cvttps_epi32(v);
    const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
    const long long bytes = _mm_cvtsi128_si64(_mm_packus_epi16(w, w));
    if (n >= W) {
      std::memcpy(p, &bytes, W);
    } else {
      std::memcpy(p, &bytes, static_cast<size_t>(n));
    }
  }
  static void store_i32n(int32_t* p, V v, int n) {
    _mm256_maskstore_epi32(p, lane_mask32(n), _mm256_cvttps_epi32(v));
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
  static V sub(V a, V b) { return _mm256_sub_pd(a, b); }
  static V fnma(V a, V b, V c) { return _mm256_fnmadd_pd(a, b, c); }  // c - a * b
  static V sqrt(V a) { return _mm256_sqrt_pd(a); }
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

  // --- Added for pooling (cpp/pool); see F32.
  using M = V;
  static M gt_or_nan(V a, V b) {
    return _mm256_or_pd(_mm256_cmp_pd(a, b, _CMP_GT_OQ), _mm256_cmp_pd(a, a, _CMP_UNORD_Q));
  }
  static M eq(V a, V b) { return _mm256_cmp_pd(a, b, _CMP_EQ_OQ); }
  static M gt(V a, V b) {
    return _mm256_cmp_pd(a, b, _CMP_GT_OQ);
  }  // ordered: false where either is NaN
  static M unord(V a, V b) { return _mm256_cmp_pd(a, b, _CMP_UNORD_Q); }  // a or b is NaN
  static M mask_or(M a, M b) { return _mm256_or_pd(a, b); }
  static V blend(M m, V a, V b) { return _mm256_blendv_pd(a, b, m); }
  static int count(M m) { return popcount(static_cast<unsigned>(_mm256_movemask_pd(m))); }
  static V div(V a, V b) { return _mm256_div_pd(a, b); }
  static V mask_add(V a, M m, V b) { return _mm256_add_pd(a, _mm256_and_pd(m, b)); }
  static __m256i range_mask(int lo, int hi) {
    return _mm256_andnot_si256(lane_mask64(lo), lane_mask64(hi));
  }
  // The same lanes as 4 x int32 (for the int32 index loads).
  static __m128i range_mask32(int lo, int hi) {
    const __m128i i = _mm_setr_epi32(0, 1, 2, 3);
    return _mm_andnot_si128(_mm_cmpgt_epi32(_mm_set1_epi32(lo), i),
                            _mm_cmpgt_epi32(_mm_set1_epi32(hi), i));
  }
  static M lanes(int lo, int hi) { return _mm256_castsi256_pd(range_mask(lo, hi)); }
  static V keep(V v, M m) { return _mm256_and_pd(v, m); }
  static V loadr(const T* p, int lo, int hi, T fill) {
    const __m256i m = range_mask(lo, hi);
    return _mm256_blendv_pd(set1(fill), _mm256_maskload_pd(p, m), _mm256_castsi256_pd(m));
  }
  static void load2(const T* p, V& even, V& odd) { deinterleave(load(p), load(p + W), even, odd); }
  static void load2n(const T* p, int n, V& even, V& odd) {
    deinterleave(loadn(p, n < W ? n : W), loadn(p + W, n > W ? n - W : 0), even, odd);
  }
  static void load2r(const T* p, int lo, int hi, T fill, V& even, V& odd) {
    deinterleave(loadr(p, lo, hi, fill), loadr(p + W, lo - W, hi - W, fill), even, odd);
  }
  static void deinterleave(V a, V b, V& even, V& odd) {
    // unpack gives 0 4 | 2 6 and 1 5 | 3 7; a 64-bit permute puts them in order.
    even = _mm256_permute4x64_pd(_mm256_unpacklo_pd(a, b), _MM_SHUFFLE(3, 1, 2, 0));
    odd = _mm256_permute4x64_pd(_mm256_unpackhi_pd(a, b), _MM_SHUFFLE(3, 1, 2, 0));
  }
  static void deinterleave3(V a, V b, V c, V& v0, V& v1, V& v2) {
    // As F32's with 4 lanes: element 3j + t sits in lane (3j + t) % 4 of a, b or c. t = 0: b gives
    // lane 2, c lane 1, order 0 3 2 1; t = 1: b 0 3, c 2, order 1 0 3 2; t = 2: b 1, c 0 3, order
    // 2 1 0 3.
    v0 = _mm256_permute4x64_pd(_mm256_blend_pd(_mm256_blend_pd(a, b, 0x4), c, 0x2),
                               _MM_SHUFFLE(1, 2, 3, 0));
    v1 = _mm256_permute4x64_pd(_mm256_blend_pd(_mm256_blend_pd(a, b, 0x9), c, 0x4),
                               _MM_SHUFFLE(2, 3, 0, 1));
    v2 = _mm256_permute4x64_pd(_mm256_blend_pd(_mm256_blend_pd(a, b, 0x2), c, 0x9),
                               _MM_SHUFFLE(3, 0, 1, 2));
  }
  static void interleave3(V v0, V v1, V v2, V& a, V& b, V& c) {
    // As F32's with 4 lanes (the permutes are deinterleave3's: they are their own inverses).
    const V m0 = _mm256_permute4x64_pd(v0, _MM_SHUFFLE(1, 2, 3, 0));
    const V m1 = _mm256_permute4x64_pd(v1, _MM_SHUFFLE(2, 3, 0, 1));
    const V m2 = _mm256_permute4x64_pd(v2, _MM_SHUFFLE(3, 0, 1, 2));
    a = _mm256_blend_pd(_mm256_blend_pd(m0, m1, 0x2), m2, 0x4);
    b = _mm256_blend_pd(_mm256_blend_pd(m0, m1, 0x9), m2, 0x2);
    c = _mm256_blend_pd(_mm256_blend_pd(m0, m1, 0x4), m2, 0x9);
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
    const V l = _mm256_unpacklo_pd(even, odd), h = _mm256_unpackhi_pd(even, odd);
    lo = _mm256_permute2f128_pd(l, h, 0x20);
    hi = _mm256_permute2f128_pd(l, h, 0x31);
  }
  static V gathern(const T* p, int stride, int n) {
    const __m128i off = _mm_mullo_epi32(_mm_setr_epi32(0, 1, 2, 3), _mm_set1_epi32(stride));
    return _mm256_mask_i32gather_pd(zero(), p, off, _mm256_castsi256_pd(lane_mask64(n)), 8);
  }
  static M first_n(int n) { return _mm256_castsi256_pd(lane_mask64(n)); }
  static V in_register(V v) {
#if defined(__GNUC__)
    __asm__("" : "+x"(v));
#endif
    return v;
  }
  static V shift_up(V v, T in) {
    return _mm256_blend_pd(_mm256_permute4x64_pd(v, _MM_SHUFFLE(2, 1, 0, 3)), set1(in), 0x1);
  }
  static V shift_down(V v, T in) {
    return _mm256_blend_pd(_mm256_permute4x64_pd(v, _MM_SHUFFLE(0, 3, 2, 1)), set1(in), 0x8);
  }
  static V shift_down_from(V v, V next) {
    return _mm256_blend_pd(_mm256_permute4x64_pd(v, _MM_SHUFFLE(0, 3, 2, 1)),
                           _mm256_broadcastsd_pd(_mm256_castpd256_pd128(next)), 0x8);
  }
  static V shift_up_from(V v, V prev) {
    return _mm256_blend_pd(_mm256_permute4x64_pd(v, _MM_SHUFFLE(2, 1, 0, 3)),
                           _mm256_permute4x64_pd(prev, _MM_SHUFFLE(3, 3, 3, 3)), 0x1);
  }
  static M eq_u8r(const uint8_t* p, int lo, int hi, int64_t k) {
    lo = lo < 0 ? 0 : lo;
    hi = hi > W ? W : hi;
    int bytes = 0;
    if (lo == 0 && hi == W) {
      std::memcpy(&bytes, p, W);
    } else if (hi > lo) {
      std::memcpy(reinterpret_cast<unsigned char*>(&bytes) + lo, p + lo,
                  static_cast<size_t>(hi - lo));
    }
    const __m128i eq =
        _mm_cmpeq_epi8(_mm_cvtsi32_si128(bytes), _mm_set1_epi8(static_cast<char>(k)));
    return _mm256_castsi256_pd(_mm256_and_si256(_mm256_cvtepi8_epi64(eq), range_mask(lo, hi)));
  }
  template <int N>
  static void eq_u8_run(const uint8_t* p, int64_t k0, M m[N]) {
    int bytes;
    std::memcpy(&bytes, p, 4);
    const __m128i d = _mm_sub_epi8(_mm_cvtsi32_si128(bytes), _mm_set1_epi8(static_cast<char>(k0)));
    for (int s = 0; s < N; ++s) {
      m[s] = _mm256_castsi256_pd(
          _mm256_cvtepi8_epi64(_mm_cmpeq_epi8(d, _mm_set1_epi8(static_cast<char>(s)))));
    }
  }
  static M mask_and(M a, M b) { return _mm256_and_pd(a, b); }
  static M eq_i32r(const int32_t* p, int lo, int hi, int64_t k) {
    const __m128i eq = _mm_cmpeq_epi32(_mm_maskload_epi32(p, range_mask32(lo, hi)),
                                       _mm_set1_epi32(static_cast<int>(k)));
    return _mm256_castsi256_pd(_mm256_and_si256(_mm256_cvtepi32_epi64(eq), range_mask(lo, hi)));
  }
  static void store_u8n(uint8_t* p, V v, int n) {
    const __m128i i = _mm256_cvttpd_epi32(v);
    const __m128i w = _mm_packs_epi32(i, i);
    const int bytes = _mm_cvtsi128_si32(_mm_packus_epi16(w, w));
    if (n >= W) {
      std::memcpy(p, &bytes, W);
    } else {
      std::memcpy(p, &bytes, static_cast<size_t>(n));
    }
  }
  static void store_i32n(int32_t* p, V v, int n) {
    _mm_maskstore_epi32(p, range_mask32(0, n), _mm256_cvttpd_epi32(v));
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
