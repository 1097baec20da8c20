// A block transposed through W x W register transposes, for any ISA's vector traits V (simd_*.h).
// Not in an ISA namespace: the GEMM framework (gemm_driver.h), compiled once per ISA outside those
// namespaces, calls it too. `static`, like the framework's helpers, so that no copy compiled with
// wide-ISA flags can be merged by the linker into code that runs on a narrower CPU; V, a type of
// the ISA's namespace, makes every instantiation a distinct symbol.
#pragma once

#include <cstdint>

namespace simdnn {

// dst[j * ldd + i] = src[i * lds + j] for i < rows, j < cols, through W x W register transposes
// (a transposed GEMM's C^T tile into C; the filters-in-lanes forward's pixel-major block back to
// planes). Lanes past `cols` are not loaded, rows past `rows` are zeros, neither is stored.
template <class V>
static inline void transpose_block(const typename V::T* src, int64_t lds, int64_t rows,
                                   int64_t cols, typename V::T* dst, int64_t ldd) {
  using R = typename V::V;
  constexpr int W = V::W;
  for (int64_t i0 = 0; i0 < rows; i0 += W) {
    const int ni = static_cast<int>(rows - i0 < W ? rows - i0 : W);
    for (int64_t j0 = 0; j0 < cols; j0 += W) {
      const int nj = static_cast<int>(cols - j0 < W ? cols - j0 : W);
      R r[W];
      for (int i = 0; i < W; ++i) {
        const typename V::T* s = src + (i0 + i) * lds + j0;
        r[i] = i >= ni ? V::zero() : (nj == W ? V::load(s) : V::loadn(s, nj));
      }
      V::transpose(r);
      for (int j = 0; j < nj; ++j) {
        typename V::T* d = dst + (j0 + j) * ldd + i0;
        if (ni == W) {
          V::store(d, r[j]);
        } else {
          V::storen(d, r[j], ni);
        }
      }
    }
  }
}

}  // namespace simdnn
