// The GEMM micro-kernel, written once over a vector-traits type V (cpp/simd/simd_<isa>.h) and
// instantiated per kernel of the registry (cpp/kernels.inc) in
// cpp/gemm/ukernels/<s|d>gemm_ukernel_<MR>x<NR>_<isa>.cpp. It holds only registers and FMAs:
// blocking, packing and threading live in gemm_driver.h.
//
// Contract (one MR x NR tile of C, row-major):
//   C[0:m, 0:n] = alpha * A[0:m, 0:k] . B[0:k, 0:n] + beta * C[0:m, 0:n]
//   1 <= m <= MR, 1 <= n <= NR, k >= 0; beta == 0 means C is not read (it may hold NaN).
//   A(i, p) = a[i*rs_a + p*cs_a] with cs_a == 1 ("row" A: rows of A, k contiguous) or rs_a == 1
//   ("column" A: MR values per k step contiguous, the layout of a packed A panel and of a
//   transposed row-major matrix). B(p, j) = b[p*rs_b + j]: unit column stride, any row stride (a
//   packed B panel has rs_b == NR). C(i, j) = c[i*rs_c + j]. Columns j >= n of B and C are never
//   touched (masked loads and stores), so edge tiles need no padding and no bounce buffer.
//
// Register budget. AVX-512 fp32 12x32: 24 zmm accumulators + 2 B vectors + 1 broadcast = 27 of
// 32 zmm. One k step is 24 FMAs against 2 vector loads and 12 broadcasts; with 2 FMA pipes of
// latency 4, at least 8 independent accumulators are needed to stay busy, and 24 leaves slack for
// load latency. AVX2 6x16: 12 ymm accumulators + 2 + 1 = 15 of 16 ymm.
#pragma once

#include <cstdint>

#include "common/compiler.h"

namespace simdnn::gemm_detail {

// One M x (NV vectors) tile. kRowA picks the A addressing, kFullN whether all NV*W columns are
// live (plain loads and stores) or only the first n (masked).
template <class V, int M, int NV, bool kRowA, bool kFullN>
static inline void tile(int64_t k, const typename V::T* a, int64_t sa, const typename V::T* b,
                        int64_t rs_b, typename V::T* c, int64_t rs_c, int n, typename V::T alpha,
                        typename V::T beta) {
  using T = typename V::T;
  using R = typename V::V;
  constexpr int W = V::W;
  int nj[NV];  // live lanes of each column vector
  SIMDNN_UNROLL for (int j = 0; j < NV; ++j) {
    const int live = n - j * W;
    nj[j] = live < 0 ? 0 : (live > W ? W : live);
  }

  R acc[M][NV];
  SIMDNN_UNROLL for (int i = 0; i < M; ++i) {
    SIMDNN_UNROLL for (int j = 0; j < NV; ++j) acc[i][j] = V::zero();
  }
  // The tile of C is read (beta != 0) or written only after the whole k loop; start bringing it in
  // now so that the stores do not wait for it.
  SIMDNN_UNROLL for (int i = 0; i < M; ++i) {
    SIMDNN_PREFETCH(c + i * rs_c);
    SIMDNN_PREFETCH(c + i * rs_c + NV * W - 1);
  }

  // Row A: one pointer per row, k contiguous. Column A: one pointer, M values per step.
  const T* arow[kRowA ? M : 1];
  if constexpr (kRowA) {
    SIMDNN_UNROLL for (int i = 0; i < M; ++i) arow[i] = a + i * sa;
  }
  // Unrolled twice: 12x32 AVX-512 went from 217 to 221-228 GFLOP/s per core (best of 15, B
  // streaming from L2, KC = 512); four times was no better.
  SIMDNN_UNROLL2 for (int64_t p = 0; p < k; ++p) {
    R bv[NV];
    SIMDNN_UNROLL for (int j = 0; j < NV; ++j) {
      bv[j] = kFullN ? V::load(b + j * W) : V::loadn(b + j * W, nj[j]);
    }
    SIMDNN_UNROLL for (int i = 0; i < M; ++i) {
      const R ai = V::set1(kRowA ? arow[i][p] : a[i]);
      SIMDNN_UNROLL for (int j = 0; j < NV; ++j) acc[i][j] = V::fma(ai, bv[j], acc[i][j]);
    }
    if constexpr (!kRowA) a += sa;
    b += rs_b;
  }

  const R va = V::set1(alpha);
  const R vb = V::set1(beta);
  SIMDNN_UNROLL for (int i = 0; i < M; ++i) {
    T* ci = c + i * rs_c;
    SIMDNN_UNROLL for (int j = 0; j < NV; ++j) {
      R r = V::mul(acc[i][j], va);
      if (beta != T(0)) {
        const R old = kFullN ? V::load(ci + j * W) : V::loadn(ci + j * W, nj[j]);
        r = V::fma(vb, old, r);
      }
      if (kFullN) {
        V::store(ci + j * W, r);
      } else {
        V::storen(ci + j * W, r, nj[j]);
      }
    }
  }
}

// Picks the tile height at run time: one compiled tile per m in 1..MR, so a partial row panel
// costs only its own rows (no zero-padded FMAs).
template <class V, int M, int NV, bool kRowA, bool kFullN>
static inline void tile_m(int m, int64_t k, const typename V::T* a, int64_t sa,
                          const typename V::T* b, int64_t rs_b, typename V::T* c, int64_t rs_c,
                          int n, typename V::T alpha, typename V::T beta) {
  if constexpr (M > 1) {
    if (m < M) {
      tile_m<V, M - 1, NV, kRowA, kFullN>(m, k, a, sa, b, rs_b, c, rs_c, n, alpha, beta);
      return;
    }
  }
  tile<V, M, NV, kRowA, kFullN>(k, a, sa, b, rs_b, c, rs_c, n, alpha, beta);
}

// Picks the number of live column vectors at run time (ceil(n / W)), so that a narrow tile does
// not pay for masked-off FMAs: 64 x 128 . 128 x 10 on the 12x32 AVX-512 tile used a third of its
// lanes with both vectors and ran at half NumPy's speed.
template <class V, int MR, int NV, bool kRowA>
static inline void tile_n(int m, int64_t k, const typename V::T* a, int64_t sa,
                          const typename V::T* b, int64_t rs_b, typename V::T* c, int64_t rs_c,
                          int n, typename V::T alpha, typename V::T beta) {
  if constexpr (NV > 1) {
    if (n <= (NV - 1) * V::W) {
      tile_n<V, MR, NV - 1, kRowA>(m, k, a, sa, b, rs_b, c, rs_c, n, alpha, beta);
      return;
    }
  }
  if (n == NV * V::W) {
    tile_m<V, MR, NV, kRowA, true>(m, k, a, sa, b, rs_b, c, rs_c, n, alpha, beta);
  } else {
    tile_m<V, MR, NV, kRowA, false>(m, k, a, sa, b, rs_b, c, rs_c, n, alpha, beta);
  }
}

template <class V, int MR, int NR>
static inline void ukernel(int64_t k, const typename V::T* a, int64_t rs_a, int64_t cs_a,
                           const typename V::T* b, int64_t rs_b, typename V::T* c, int64_t rs_c,
                           int64_t m, int64_t n, typename V::T alpha, typename V::T beta) {
  static_assert(NR % V::W == 0, "NR must be a whole number of vectors");
  constexpr int NV = NR / V::W;
  const int mi = static_cast<int>(m), ni = static_cast<int>(n);
  if (cs_a == 1) {
    tile_n<V, MR, NV, true>(mi, k, a, rs_a, b, rs_b, c, rs_c, ni, alpha, beta);
  } else {
    tile_n<V, MR, NV, false>(mi, k, a, cs_a, b, rs_b, c, rs_c, ni, alpha, beta);
  }
}

}  // namespace simdnn::gemm_detail
