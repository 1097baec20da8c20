// Portable "vector" traits of width 1: plain C++ that any 64-bit compiler builds. The micro-kernel
// unrolls over the tile, so the compiler is free to vectorise it with the baseline ISA.
#pragma once

#include <cmath>
#include <cstdint>

namespace simdnn::scalar {

template <typename Tp>
struct Lane1 {
  using T = Tp;
  using V = Tp;
  static constexpr int W = 1;
  static V zero() { return T(0); }
  static V set1(T x) { return x; }
  static V load(const T* p) { return *p; }
  static V loadn(const T* p, int n) { return n > 0 ? *p : T(0); }
  static void store(T* p, V v) { *p = v; }
  static void storen(T* p, V v, int n) {
    if (n > 0) *p = v;
  }
  // a * b + c with two roundings, as the compiler would emit without -ffp-contract; results differ
  // from the FMA paths in the last bit only.
  static V fma(V a, V b, V c) { return a * b + c; }
  static V mul(V a, V b) { return a * b; }
  static V add(V a, V b) { return a + b; }
  static V sub(V a, V b) { return a - b; }
  static V fnma(V a, V b, V c) { return c - a * b; }
  static V sqrt(V a) { return std::sqrt(a); }
  static V max(V a, V b) { return (a > b || a != a) ? a : b; }
  static void transpose(V*) {}  // a 1 x 1 block is its own transpose

  // --- Added for pooling (cpp/pool); the same contracts as the vector ISAs, on one lane.
  using M = bool;
  static M gt_or_nan(V a, V b) { return a > b || a != a; }
  static M eq(V a, V b) { return a == b; }
  static M gt(V a, V b) { return a > b; }  // ordered: false where either is NaN
  static M unord(V a, V b) { return a != a || b != b; }
  static M mask_or(M a, M b) { return a || b; }
  static V blend(M m, V a, V b) { return m ? b : a; }
  static int count(M m) { return m ? 1 : 0; }
  static V div(V a, V b) { return a / b; }
  static V mask_add(V a, M m, V b) { return m ? a + b : a; }
  static V loadr(const T* p, int lo, int hi, T fill) { return lo <= 0 && 0 < hi ? *p : fill; }
  // lanes(lo, hi): whether lane 0 is in [lo, hi); keep: v there, zero otherwise.
  static M lanes(int lo, int hi) { return lo <= 0 && 0 < hi; }
  static V keep(V v, M m) { return m ? v : V(0); }
  static void load2(const T* p, V& even, V& odd) {
    even = p[0];
    odd = p[1];
  }
  static void load2n(const T* p, int n, V& even, V& odd) {
    even = n > 0 ? p[0] : T(0);
    odd = n > 1 ? p[1] : T(0);
  }
  static void load2r(const T* p, int lo, int hi, T fill, V& even, V& odd) {
    even = lo <= 0 && 0 < hi ? p[0] : fill;
    odd = lo <= 1 && 1 < hi ? p[1] : fill;
  }
  // Three elements by 3 (see load3 in simd.h): one lane each, as they are.
  static void deinterleave3(V a, V b, V c, V& v0, V& v1, V& v2) {
    v0 = a;
    v1 = b;
    v2 = c;
  }
  static void interleave3(V v0, V v1, V v2, V& a, V& b, V& c) {
    a = v0;
    b = v1;
    c = v2;
  }
  static void store2(T* p, V even, V odd) {
    p[0] = even;
    p[1] = odd;
  }
  static void store2n(T* p, V even, V odd, int n) {
    if (n > 0) p[0] = even;
    if (n > 1) p[1] = odd;
  }
  static void deinterleave(V a, V b, V& even, V& odd) {
    even = a;
    odd = b;
  }
  static void interleave(V even, V odd, V& lo, V& hi) {
    lo = even;
    hi = odd;
  }
  static V gathern(const T* p, int, int n) { return n > 0 ? *p : T(0); }
  static M first_n(int n) { return n > 0; }
  static V in_register(V v) { return v; }
  static V shift_up(V, T in) { return in; }  // the one lane is the one shifted in
  static V shift_down(V, T in) { return in; }
  static V shift_down_from(V, V next) { return next; }
  static V shift_up_from(V, V prev) { return prev; }
  static M eq_u8r(const uint8_t* p, int lo, int hi, int64_t k) {
    return lo <= 0 && 0 < hi && *p == k;
  }
  template <int N>
  static void eq_u8_run(const uint8_t* p, int64_t k0, M m[N]) {
    for (int s = 0; s < N; ++s) m[s] = *p == k0 + s;
  }
  static M mask_and(M a, M b) { return a && b; }
  static M eq_i32r(const int32_t* p, int lo, int hi, int64_t k) {
    return lo <= 0 && 0 < hi && *p == k;
  }
  static void store_u8n(uint8_t* p, V v, int n) {
    if (n > 0) *p = static_cast<uint8_t>(v);
  }
  static void store_i32n(int32_t* p, V v, int n) {
    if (n > 0) *p = static_cast<int32_t>(v);
  }
};

using F32 = Lane1<float>;
using F64 = Lane1<double>;

template <typename T>
struct VecOf {
  using type = Lane1<T>;
};

}  // namespace simdnn::scalar
