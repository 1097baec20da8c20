// Portable "vector" traits of width 1: plain C++ that any 64-bit compiler builds. The micro-kernel
// unrolls over the tile, so the compiler is free to vectorise it with the baseline ISA.
#pragma once

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
  static V max(V a, V b) { return (a > b || a != a) ? a : b; }
  static void transpose(V*) {}  // a 1 x 1 block is its own transpose
};

using F32 = Lane1<float>;
using F64 = Lane1<double>;

template <typename T>
struct VecOf {
  using type = Lane1<T>;
};

}  // namespace simdnn::scalar
