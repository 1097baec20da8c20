// The small-M path of the GEMM (M == 1 is a GEMV): C[0:M, 0:N] = alpha * A . B + beta * C for
// M <= kGemvMaxM, without packing. Part of the portable framework (included by gemm_driver.h,
// compiled once per ISA, templated on the vector traits V; no intrinsics here).
//
// A one-row product reads each element of B once, so it is bound by streaming B from memory: the
// blocked engine packs all of B (a copy as long as the product itself) for one row of A, and ran
// 1 x 4096 . 4096 x 4096 fp32 at 7.1 GFLOP/s (14 GB/s of B) against OpenBLAS's 17.4. Here B is read
// in place, once, sequentially:
//  - Row-major B (unit column stride, X . W): y[0:N] += x[p] * B[p, 0:N], KB rows of B at a time
//    (KB concurrent sequential streams) into an accumulator row held in L1, so that y is loaded and
//    stored once per KB rows instead of once per row. A long K is cut into chunks of whole rows
//    (each a contiguous block of B) summed into partial rows, added at the end.
//  - Transposed B (unit row stride, X . W^T as in nn.Linear): y[j] = dot(x, B[:, j]), NC columns
//    at a time (NC concurrent streams, x loaded once for NC columns), reduced at the end.
//  - Anything else goes to the blocked engine (gemv() returns false).
#pragma once

#include <cstdint>

#include "common/int_math.h"
#include "common/parallel.h"
#include "gemm/gemm.h"

namespace simdnn::gemm_detail {

// Rows of A that take the GEMV path. M x 4096 . 4096 x 4096 fp32, one thread (AVX-512; a shared,
// noisy machine), B plain / transposed: here M = 1 1.9-2.1 / 1.8-2.0 ms, M = 2 2.2-2.8 / 2.2-2.6,
// M = 3 2.8-3.3 / 2.8, M = 4 3.1-3.4 / 3.2-3.8 ms; the blocked engine, which packs all of B
// whatever M, 4.6-5.3 ms from M = 1 to 6 (5.6 at M = 8). AVX2: M = 4 3.1 / 4.6 ms here against
// 8.1 / 4.7 ms blocked at M = 5, so the transposed case breaks even at M = 4: the bound.
constexpr int64_t kGemvMaxM = 4;

// Rows of row-major B per chunk: a product with K above it is summed chunk by chunk into partial
// rows of C, added in chunk order at the end, so that a task streams whole rows of B, one block of
// memory, instead of a strip of columns (2 KB of each 16 KB row: 8 tasks on 2 threads), and the
// result does not depend on the thread count. 1 x 4096 . 4096 x 4096 fp32, 2 threads, AVX-512, an
// Intel Xeon (Sapphire Rapids class), four copies of B in turn (256 MB, from DRAM) / two (128 MB):
// columns split 29.5-29.7 / 43.7-44.4 GB/s; chunks of 128 rows 36.6-36.7 / 45.7-50.4, 256 rows
// 37.4-37.7 / 48.9-50.0, 512 rows 36.8-37.2 / 50.9-51.0, 1024 rows 37.5-37.9 / 50.9-51.0; NumPy
// (OpenBLAS) 33.3-34.1 / 43.3-46.9. 512: the partial rows add 1/512 of B's traffic per row of A.
constexpr int64_t kGemvChunkRows = 512;
// ... where B has at least this many bytes. Smaller Bs stay in the cores' caches between calls
// (repeated inference with the same weights), where chunks measured no faster with 2 threads and
// up to 15% slower with one (same machine, B read from L2; mean of two runs each, columns / chunks,
// 2 threads | 1 thread): 1 x 600 . 600 x 1000 (2.4 MB) 27 / 24 | 55 / 60 us, 4 x 1024 . 1024 x 512
// (2 MB) 48 / 57 | 54 / 62 us; from 4 MB they win: 1 x 1024 . 1024 x 1000 88 / 65 | 142 / 143 us,
// 1 x 2048 . 2048 x 512 125 / 82 | 146 / 146 us, 4 x 4096 . 4096 x 1000 508 / 338 | 584 / 594 us.
constexpr int64_t kGemvChunkMinBytes = int64_t(3) << 20;

// Accumulator row kept in L1 by the row-major path: 16 KiB of the 32-48 KiB L1 for all M rows, so
// that the KB streaming rows of B and the accumulators do not evict each other (fp32, M = 1:
// 4096 columns per block, the whole of 1 x 4096 . 4096 x 4096).
constexpr int64_t kGemvAccBytes = 16 << 10;

// c[j] = alpha * acc[j] + beta * c[j] for j < n (beta == 0: c is not read).
template <class V>
static void gemv_store(typename V::T* c, const typename V::T* acc, int64_t n, typename V::T alpha,
                       typename V::T beta) {
  using R = typename V::V;
  constexpr int W = V::W;
  const R va = V::set1(alpha), vb = V::set1(beta);
  int64_t j = 0;
  if (beta == typename V::T(0)) {
    for (; j + W <= n; j += W) V::store(c + j, V::mul(va, V::load(acc + j)));
    if (j < n) {
      const int r = static_cast<int>(n - j);
      V::storen(c + j, V::mul(va, V::loadn(acc + j, r)), r);
    }
    return;
  }
  for (; j + W <= n; j += W)
    V::store(c + j, V::fma(va, V::load(acc + j), V::mul(vb, V::load(c + j))));
  if (j < n) {
    const int r = static_cast<int>(n - j);
    V::storen(c + j, V::fma(va, V::loadn(acc + j, r), V::mul(vb, V::loadn(c + j, r))), r);
  }
}

// Row-major B: acc[i * lda + j] (+)= sum_{q < KB} a[i * rs_a + q * cs_a] * b[q * rs_b + j] for
// i < MM, j < nb. `first`: acc is not read (the first rows of a block).
template <class V, int MM, int KB>
static void gemv_n_rows(const typename V::T* a, int64_t rs_a, int64_t cs_a, const typename V::T* b,
                        int64_t rs_b, int64_t nb, typename V::T* acc, int64_t lda, bool first) {
  using T = typename V::T;
  using R = typename V::V;
  constexpr int W = V::W;
  R x[MM][KB];
  for (int i = 0; i < MM; ++i) {
    for (int q = 0; q < KB; ++q) x[i][q] = V::set1(a[i * rs_a + q * cs_a]);
  }
  const T* bq[KB];
  for (int q = 0; q < KB; ++q) bq[q] = b + q * rs_b;
  int64_t j = 0;
  // Two chains per row (even and odd q), so that a vector's KB FMAs are not one dependent chain
  // of KB * 4 cycles.
  for (; j + W <= nb; j += W) {
    R s0[MM], s1[MM];
    for (int i = 0; i < MM; ++i) {
      s0[i] = first ? V::zero() : V::load(acc + i * lda + j);
      s1[i] = V::zero();
    }
    for (int q = 0; q < KB; ++q) {
      const R bv = V::load(bq[q] + j);
      for (int i = 0; i < MM; ++i) {
        if (q % 2 == 0) {
          s0[i] = V::fma(x[i][q], bv, s0[i]);
        } else {
          s1[i] = V::fma(x[i][q], bv, s1[i]);
        }
      }
    }
    for (int i = 0; i < MM; ++i) V::store(acc + i * lda + j, V::add(s0[i], s1[i]));
  }
  if (j < nb) {
    const int r = static_cast<int>(nb - j);
    R s[MM];
    for (int i = 0; i < MM; ++i) s[i] = first ? V::zero() : V::loadn(acc + i * lda + j, r);
    for (int q = 0; q < KB; ++q) {
      const R bv = V::loadn(bq[q] + j, r);
      for (int i = 0; i < MM; ++i) s[i] = V::fma(x[i][q], bv, s[i]);
    }
    for (int i = 0; i < MM; ++i) V::storen(acc + i * lda + j, s[i], r);
  }
}

// Row-major B, rows [p0, p1) of B and columns [jb, jb + nb): acc[i * lda + j] = sum over those p
// of A(i, p) * B(p, jb + j), kGemvRowsPerPass rows of B at a time.
// 8 rows of B at a time (8 sequential streams; the accumulator row is loaded and stored once per 8
// rows of B). 1 x 4096 . 4096 x 4096 fp32, AVX-512, one thread (a shared, noisy machine): 4 rows
// of B for M = 3 took 3.3 ms, 8 rows 2.8-3.2 ms. For M > 1 the MM x 8 broadcasts exceed the
// registers; the spilled ones are broadcast loads from the stack, as cheap as from A.
constexpr int kGemvRowsPerPass = 8;

template <class V, int MM>
static void gemv_n_block(const GemmArgs<typename V::T>& g, int64_t p0, int64_t p1, int64_t jb,
                         int64_t nb, typename V::T* acc, int64_t lda) {
  constexpr int KB = kGemvRowsPerPass;
  const auto* b = g.b + jb;
  int64_t p = p0;
  for (; p + KB <= p1; p += KB) {
    gemv_n_rows<V, MM, KB>(g.a + p * g.cs_a, g.rs_a, g.cs_a, b + p * g.rs_b, g.rs_b, nb, acc, lda,
                           p == p0);
  }
  for (; p < p1; ++p) {
    gemv_n_rows<V, MM, 1>(g.a + p * g.cs_a, g.rs_a, g.cs_a, b + p * g.rs_b, g.rs_b, nb, acc, lda,
                          p == p0);
  }
}

// Row-major B, columns [j0, j1) of all MM rows.
template <class V, int MM>
static void gemv_n_range(const GemmArgs<typename V::T>& g, int64_t j0, int64_t j1) {
  using T = typename V::T;
  const int64_t nb_max = max64(V::W, round_down(kGemvAccBytes / (MM * int64_t(sizeof(T))), V::W));
  const int64_t lda = nb_max;
  T* acc = static_cast<T*>(workspace(WorkspaceSlot::gemm_pack, MM * lda * sizeof(T)));
  for (int64_t jb = j0; jb < j1; jb += nb_max) {
    const int64_t nb = min64(nb_max, j1 - jb);
    gemv_n_block<V, MM>(g, 0, g.k, jb, nb, acc, lda);
    for (int i = 0; i < MM; ++i) {
      gemv_store<V>(g.c + i * g.rs_c + jb, acc + i * lda, nb, g.alpha, g.beta);
    }
  }
}

// Transposed B: for the NC columns at b + c * cs_b (contiguous in k), the dot products with the MM
// rows of A at a + i * lda (contiguous), k long; out[i * NC + c].
template <class V, int MM, int NC>
static void gemv_t_cols(const typename V::T* a, int64_t lda, const typename V::T* b, int64_t cs_b,
                        int64_t k, typename V::T* out) {
  using T = typename V::T;
  using R = typename V::V;
  constexpr int W = V::W;
  // One row of A: two accumulators per column (K unrolled by 2W), 8 in all, so that each chain
  // has 4-cycle FMAs spaced by 8 others; more rows of A give independent chains of their own.
  constexpr int KU = MM == 1 ? 2 : 1;
  R s[KU][MM][NC];
  for (int u = 0; u < KU; ++u) {
    for (int i = 0; i < MM; ++i) {
      for (int c = 0; c < NC; ++c) s[u][i][c] = V::zero();
    }
  }
  int64_t p = 0;
  for (; p + KU * W <= k; p += KU * W) {
    for (int u = 0; u < KU; ++u) {
      R x[MM];
      for (int i = 0; i < MM; ++i) x[i] = V::load(a + i * lda + p + u * W);
      for (int c = 0; c < NC; ++c) {
        const R bv = V::load(b + c * cs_b + p + u * W);
        for (int i = 0; i < MM; ++i) s[u][i][c] = V::fma(x[i], bv, s[u][i][c]);
      }
    }
  }
  for (; p < k; p += W) {
    const int r = static_cast<int>(min64(W, k - p));
    R x[MM];
    for (int i = 0; i < MM; ++i) x[i] = V::loadn(a + i * lda + p, r);
    for (int c = 0; c < NC; ++c) {
      const R bv = V::loadn(b + c * cs_b + p, r);
      for (int i = 0; i < MM; ++i) s[0][i][c] = V::fma(x[i], bv, s[0][i][c]);
    }
  }
  alignas(64) T lanes[W];
  for (int i = 0; i < MM; ++i) {
    for (int c = 0; c < NC; ++c) {
      R v = s[0][i][c];
      for (int u = 1; u < KU; ++u) v = V::add(v, s[u][i][c]);
      V::store(lanes, v);
      T sum = T(0);
      for (int l = 0; l < W; ++l) sum += lanes[l];
      out[i * NC + c] = sum;
    }
  }
}

// Transposed B, columns [j0, j1) of all MM rows; A rows contiguous at a + i * lda.
template <class V, int MM>
static void gemv_t_range(const GemmArgs<typename V::T>& g, const typename V::T* a, int64_t lda,
                         int64_t j0, int64_t j1) {
  using T = typename V::T;
  // 4 columns per pass (4 streams of B; one load of x per 4 FMAs). Fewer streams starve the
  // memory system: 4 x 4096 . (4096 x 4096)^T, AVX-512, one thread, took 4.9 ms with 2 columns and
  // 3.2-3.8 ms with 4. Within the 16 registers of AVX2 (and scalar code) MM x 4 accumulators do
  // not fit for MM > 2: 2 columns there.
  constexpr int NC = (MM <= 2 || sizeof(typename V::V) >= 64) ? 4 : 2;
  T out[MM * NC];
  auto emit = [&](int64_t j, int nc) {
    for (int i = 0; i < MM; ++i) {
      T* c = g.c + i * g.rs_c + j;
      for (int q = 0; q < nc; ++q) {
        const T v = g.alpha * out[i * NC + q];
        c[q] = g.beta == T(0) ? v : v + g.beta * c[q];
      }
    }
  };
  int64_t j = j0;
  for (; j + NC <= j1; j += NC) {
    gemv_t_cols<V, MM, NC>(a, lda, g.b + j * g.cs_b, g.cs_b, g.k, out);
    emit(j, NC);
  }
  for (; j < j1; ++j) {
    T one[MM];
    gemv_t_cols<V, MM, 1>(a, lda, g.b + j * g.cs_b, g.cs_b, g.k, one);
    for (int i = 0; i < MM; ++i) out[i * NC] = one[i];
    emit(j, 1);
  }
}

// Row-major B, K > kGemvChunkRows (and B of kGemvChunkMinBytes): partial[ch] (MM rows of N, row
// stride ldp) = A[:, chunk ch] . B[chunk ch, :] for chunks of kGemvChunkRows rows; the partials are
// then added into partial[0] in chunk order and C = alpha * partial[0] + beta * C. Tasks are
// (chunk, column range) pairs, chunk-major, so consecutive tasks of a thread read consecutive
// memory; the column ranges may follow the thread count (a column's sums do not depend on them),
// the chunks may not.
template <class V, int MM>
static void gemv_n_chunked(const GemmArgs<typename V::T>& g) {
  using T = typename V::T;
  constexpr int W = V::W;
  const int64_t kc = kGemvChunkRows, nch = ceil_div(g.k, kc);
  // Column blocks within a task: the accumulator rows (in the partial buffer) stay in L1.
  const int64_t nb = max64(W, round_down(kGemvAccBytes / (MM * int64_t(sizeof(T))), W));
  // Column ranges: enough tasks for the threads, each at least grain::kGemmMacs, 16-aligned.
  const int64_t min_cols = max64(16, ceil_div(grain::kGemmMacs, kc * MM));
  const int64_t want = ceil_div(int64_t(g.nthreads) * grain::kTasksPerThread, nch);
  const int64_t ncr = max64(1, min64(want, g.n / min_cols));
  const int64_t span = round_up(ceil_div(g.n, ncr), 16);
  const int64_t ldp = round_up(g.n, 16);  // partial rows on 64-byte boundaries
  T* part = static_cast<T*>(workspace(WorkspaceSlot::gemm_shared, nch * MM * ldp * sizeof(T)));
  parallel_ranges(nch * ncr, 1, 1, g.nthreads, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t ch = t / ncr, j0 = (t % ncr) * span, j1 = min64(g.n, j0 + span);
      const int64_t p0 = ch * kc, p1 = min64(g.k, p0 + kc);
      for (int64_t jb = j0; jb < j1; jb += nb) {
        gemv_n_block<V, MM>(g, p0, p1, jb, min64(nb, j1 - jb), part + ch * MM * ldp + jb, ldp);
      }
    }
  });
  parallel_ranges(g.n, max64(16, grain::kGemmMacs / (nch * MM)), 16, g.nthreads,
                  [&](int64_t j0, int64_t j1) {
                    for (int i = 0; i < MM; ++i) {
                      T* sum = part + i * ldp;
                      for (int64_t ch = 1; ch < nch; ++ch) {
                        const T* pc = sum + ch * MM * ldp;
                        for (int64_t j = j0; j < j1; ++j) sum[j] += pc[j];
                      }
                      gemv_store<V>(g.c + i * g.rs_c + j0, sum + j0, j1 - j0, g.alpha, g.beta);
                    }
                  });
}

template <class V, int MM>
static void gemv_m(const GemmArgs<typename V::T>& g, bool row_major_b) {
  using T = typename V::T;
  // Columns per task: at least grain::kGemmMacs multiply-adds (2^17: 512 KiB of fp32 B, ~15 us of
  // streaming on one core), so that a small N stays on one thread.
  const int64_t min_cols = max64(1, ceil_div(grain::kGemmMacs, g.k * MM));
  if (row_major_b && g.k > kGemvChunkRows && g.k * g.n * int64_t(sizeof(T)) >= kGemvChunkMinBytes) {
    gemv_n_chunked<V, MM>(g);
    return;
  }
  if (row_major_b) {
    // Ranges aligned to 16 columns (a 64-byte line of fp32 C: no line written by two threads).
    parallel_ranges(g.n, min_cols, 16, g.nthreads,
                    [&](int64_t j0, int64_t j1) { gemv_n_range<V, MM>(g, j0, j1); });
    return;
  }
  // The dot products need the rows of A contiguous: copied when they are not (MM x K, next to the
  // K x N of B).
  const T* a = g.a;
  int64_t lda = g.rs_a;
  if (g.cs_a != 1) {
    T* buf = static_cast<T*>(workspace(WorkspaceSlot::gemm_shared, MM * g.k * sizeof(T)));
    for (int i = 0; i < MM; ++i) {
      for (int64_t p = 0; p < g.k; ++p) buf[i * g.k + p] = g.a[i * g.rs_a + p * g.cs_a];
    }
    a = buf;
    lda = g.k;
  }
  parallel_ranges(g.n, min_cols, 16, g.nthreads,
                  [&](int64_t j0, int64_t j1) { gemv_t_range<V, MM>(g, a, lda, j0, j1); });
}

// The GEMV path for M <= kGemvMaxM; false (nothing done) for a B with neither unit stride.
template <class V>
static bool gemv(const GemmArgs<typename V::T>& g) {
  if (g.m > kGemvMaxM) return false;
  // A B with both unit strides (one row or one column) goes by its shape: N < W columns would be
  // all tail in the row-major loop, so such a B is read as columns (dot products along K).
  const bool row_major_b = g.cs_b == 1 && !(g.rs_b == 1 && g.n < V::W);
  if (!row_major_b && g.rs_b != 1) return false;
  switch (g.m) {
    case 1:
      gemv_m<V, 1>(g, row_major_b);
      break;
    case 2:
      gemv_m<V, 2>(g, row_major_b);
      break;
    case 3:
      gemv_m<V, 3>(g, row_major_b);
      break;
    default:
      gemv_m<V, 4>(g, row_major_b);
      break;
  }
  return true;
}

}  // namespace simdnn::gemm_detail
