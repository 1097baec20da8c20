// Pooling over flattened rows: 2x2 windows, stride 2, no padding (floor mode), forward and
// backward, on rows of up to kCompactElems / 2 outputs (compact_fits; compact_in_place gives the
// measurements). The row loops of forward.h and backward.h handle a short row as one partial
// vector with its own bounds, copies and masked stores: LeNet's two max pools (64x20x24x24 and
// 64x50x8x8, forward and backward) took 0.53 ms of its 4.7 ms training step, 0.21 ms this way
// (AMD EPYC Zen 5, 2 threads).
//
// Here the output rows of a chunk (across planes) are one flat run of outputs: the two input
// rows of every window row are first copied side by side into scratch rows of 2Q elements,
//   top[m][j] = x[2p][j], bot[m][j] = x[2p + 1][j]   for output row m = (plane, p), j < 2Q,
// so that output o of the chunk (row m = o / Q, column q = o % Q) reads top[2o], top[2o + 1],
// bot[2o] and bot[2o + 1]: two deinterleaving loads give the four taps of W outputs, in the
// window order of the row loops (so the same results, ties and NaN included); on rows of W
// outputs and more, the same loads come straight from the x rows. The backward pass runs the
// same map the other way: dy and the indices in flat vectors, interleaved into the scratch rows,
// copied out to the dx rows (with the columns and rows no window covers zeroed), or on those
// rows interleaved straight into the dx rows.
#pragma once

#include <atomic>
#include <cstdint>
#include <type_traits>

#include "common/int_math.h"
#include "common/parallel.h"
#include "pool/geometry.h"
#include "pool/pool.h"
#include "simd/simd.h"

#ifndef SIMDNN_ISA_NS
#error "compile with -DSIMDNN_ISA_NS=<isa>"
#endif

namespace simdnn::SIMDNN_ISA_NS {
namespace {

// Scratch elements per chunk and per scratch row set: 2 x 2048 floats = 16 KiB, in L1 with the
// input rows they were copied from.
constexpr int64_t kCompactElems = 2048;

// Whether the compact path takes this geometry: 2x2/s2 windows without padding (floor mode), on
// rows whose 2Q scratch elements fit a chunk.
bool compact_fits(const Pool2d& pl) {
  return pl.r == 2 && pl.s == 2 && pl.sh == 2 && pl.sw == 2 && pl.ph == 0 && pl.pw == 0 &&
         pl.p >= 1 && pl.q >= 1 && 2 * pl.q <= kCompactElems && 2 * pl.p <= pl.h &&
         2 * pl.q <= pl.w;
}

// Whether the rows are read (forward) and written (backward) where they lie rather than through
// the scratch rows: rows of W outputs and more. A partial last vector is the row's last W
// outputs, over lanes of the one before it (stored again, the same values), so that no load or
// store is masked. Rows shorter than W outputs go through the scratch rows, where a vector may
// straddle two output rows.
//
// Every geometry that compact_fits takes, forward and backward, takes this path. Measured:
//  - Through the scratch rows against the row loops of forward.h and backward.h (a partial vector
//    per row, each with its bounds and masked stores), AMD EPYC Zen 5, 2 threads, float32 max
//    pooling forward / backward: 64x20x24x24 (Q = 12) 159 / 135 us -> 68 / 69 us, 64x50x8x8
//    (Q = 4) 130 / 102 us -> 36 / 35 us. On longer rows the scratch copy lost to the row loops
//    forward (AMD EPYC Zen 3, 2 threads, float32 average on 64x64 planes 254 / 310 us) and won
//    backward (the same Zen 3, float32 max / average backward on 32x32 planes 1320 -> 787 / 996
//    -> 512 us, 64x64 847 -> 508 / 669 -> 302 us; the scalar path on 32x32 6057 -> 2036 / 2582
//    -> 526 us).
//  - In place on rows of whole vectors, against the row loops forward (whose window-row loop is
//    not unrolled and converts each tap's index to a float lane): the same Zen 3, medians of 7
//    blocks, alternating processes, 2 threads, float32 max / average, 64x64x32x32 770-851 ->
//    469-551 / 604-802 -> 360-532 us, 16x16x112x112 454-534 -> 304-306 / 293-316 -> 195-223 us;
//    float64 64x64x32x32 1960-3158 -> 1404-1470 / 1400-1586 -> 1219-1329 us. Backward: see
//    compact_backward.
//  - In place with an overlapping last vector, against the row loops forward and the scratch rows
//    backward, the same Zen 3, one core, max forward / average forward / max backward / average
//    backward: float32 8x64x56x56 (Q = 28) 845-874 -> 323-326 / 630-647 -> 202-210 / 525-539 ->
//    337-343 / 393-421 -> 256-277 us, 16x64x40x40 (Q = 20) 961-996 -> 355-359 / 798-904 ->
//    222-381 / 580-634 -> 367-384 / 439-449 -> 287-292 us; float64 16x64x28x28 (Q = 14)
//    784-821 -> 333-353 / 631-634 -> 203-219 / 557-585 -> 353-373 / 403-425 -> 254-263 us.
//    Masked loads and stores for the last vector instead lost backward (max 525-654 -> 912-1048
//    us at Q = 28): they cost about 25 cycles each on AMD.
//  - In place with an overlapping last vector against the scratch rows, rows of W to 2W outputs,
//    the same Zen 3, one core, the same four: float32 64x20x24x24 (Q = 12, LeNet's first pool)
//    271-293 -> 176-181 / 227-241 -> 112-122 / 299-313 -> 194-218 / 232-244 -> 159-168 us,
//    32x32x20x20 (Q = 10: 6 of 8 lanes again) 169-183 -> 118-134 / 147-158 -> 78-82 / 192-199
//    -> 136-139 / 155-163 -> 106-110 us, 64x16x28x28 (Q = 14) 300-312 -> 168-195 / 248-280 ->
//    106-129 / 332-349 -> 195-205 / 263-271 -> 159-167 us.
template <class V>
bool compact_in_place(const Pool2d& pl) {
  return pl.q >= V::W;
}

// d[0, len) = s[0, len) a whole vector at a time: the lanes past len land in d[len, len + W),
// which the caller writes afterwards or never reads, and the loads may run past len while they
// stay before s_end (a masked copy only at the very end). Masked loads and stores cost about 25
// cycles on Zen 5.
template <class V>
void copy_spill(const typename V::T* s, typename V::T* d, int64_t len, const typename V::T* s_end,
                const typename V::T* d_end) {
  constexpr int W = V::W;
  for (int64_t j = 0; j < len; j += W) {
    if (s_end - (s + j) >= W && d_end - (d + j) >= W) {
      V::store(d + j, V::load(s + j));
    } else {
      const int live = static_cast<int>(min64(W, len - j));
      V::storen(d + j, V::loadn(s + j, live), live);
    }
  }
}

// Lanes [0, n) where the window position at p equals k (2x2 windows: uint8 indices only).
template <class V>
typename V::M index_is(const uint8_t* p, int n, int64_t k) {
  return V::eq_u8r(p, 0, n, k);
}

// Threads for `rows` output rows of 4Q input elements each (the row loops' rule: kPoolElems per
// thread at least).
inline int compact_threads(const Pool2d& pl, int64_t rows) {
  const int64_t elems = rows * 4 * pl.q;
  if (pl.nthreads <= 1 || elems < 2 * kMinElemsPerThread) return 1;
  return static_cast<int>(min64(pl.nthreads, elems / kMinElemsPerThread));
}

// Output row m of the flat run as (plane, p), stepped row by row: a division per row (two with
// the remainder) cost the average backward 20% on LeNet's 64x20x24x24 maps (AMD EPYC Zen 3).
struct PlaneRow {
  int64_t plane, p;
  PlaneRow(const Pool2d& pl, int64_t m) : plane(m / pl.p), p(m % pl.p) {}
  void next(const Pool2d& pl) {
    if (++p == pl.p) {
      p = 0;
      ++plane;
    }
  }
};

// All output rows [0, N*C*P) split between threads: f(m0, m1) per thread's rows. Returns the sum
// of what f returns.
template <class F>
int64_t compact_split(const Pool2d& pl, const F& f) {
  const int64_t rows = pl.n * pl.c * pl.p;
  const int nt = compact_threads(pl, rows);
  if (nt <= 1) return f(int64_t(0), rows);
  std::atomic<int64_t> total{0};
  parallel_ranges(rows, 1, 1, nt, [&](int64_t m0, int64_t m1) {
    total.fetch_add(f(m0, m1), std::memory_order_relaxed);
  });
  return total.load();
}

// Output rows over chunks of scratch rows: f(c0, c1, top, bot) per chunk. Returns the sum of what
// f returns.
template <class V, class F>
int64_t compact_rows(const Pool2d& pl, const F& f) {
  using T = typename V::T;
  const int64_t q2 = 2 * pl.q;
  const int64_t chunk = max64(1, kCompactElems / q2);
  return compact_split(pl, [&](int64_t m0, int64_t m1) {
    // A chunk's rows, then slack for the last row's spill and the last vector's 2W-element loads.
    alignas(64) T top[kCompactElems + 4 * V::W];
    alignas(64) T bot[kCompactElems + 4 * V::W];
    int64_t sum = 0;
    for (int64_t c0 = m0; c0 < m1; c0 += chunk) {
      const int64_t c1 = min64(m1, c0 + chunk), used = (c1 - c0) * q2;
      for (int64_t i = used; i < used + 4 * V::W; ++i) top[i] = bot[i] = T(0);
      sum += f(c0, c1, top, bot);
    }
    return sum;
  });
}

// Forward, Op = MaxOp or AvgOp (their first/next give the taps' order and tie rules).
template <class V, class Op>
void compact_forward(const Pool2d& pl, const typename V::T* x, void* y, void* idx) {
  using T = typename V::T;
  constexpr int W = V::W;
  const int64_t q = pl.q, q2 = 2 * q, w = pl.w, h = pl.h;
  const T* x_end = x + pl.n * pl.c * h * w;
  const typename Op::Out out = Op::out_at(y, idx, 0);
  // The n <= W outputs from flat index o, from the 2W-element runs t (top row) and b (bottom).
  const auto windows = [out](const T* t, const T* b, int64_t o, int n) {
    typename V::V tl, tr, bl, br;
    V::load2(t, tl, tr);
    V::load2(b, bl, br);
    typename Op::State st;
    Op::first(st, tl, 0);
    Op::next(st, tr, 1);
    Op::next(st, bl, 2);
    Op::next(st, br, 3);
    if constexpr (Op::kIndex) {
      store_n<V>(out.y + o, st.best, n);
      store_idx<V>(out.idx + o, st.idx, n);
    } else {
      store_n<V>(out.y + o, V::div(st.sum, V::set1(T(4))), n);
    }
  };
  if (compact_in_place<V>(pl)) {  // straight from the x rows
    compact_split(pl, [&](int64_t m0, int64_t m1) {
      PlaneRow pr(pl, m0);
      for (int64_t m = m0; m < m1; ++m, pr.next(pl)) {
        const T* src = x + (pr.plane * h + 2 * pr.p) * w;
        for (int64_t j = 0; j < q; j += W) {
          // A partial last vector is the row's last W outputs, over the previous vector's last
          // lanes (the same values stored again): no masked loads or stores.
          const int64_t jj = j + W <= q ? j : q - W;
          windows(src + 2 * jj, src + w + 2 * jj, m * q + jj, W);
        }
      }
      return int64_t(0);
    });
    return;
  }
  compact_rows<V>(pl, [&](int64_t c0, int64_t c1, T* top, T* bot) -> int64_t {
    PlaneRow pr(pl, c0);
    for (int64_t m = c0; m < c1; ++m, pr.next(pl)) {
      const T* src = x + (pr.plane * h + 2 * pr.p) * w;
      T* t = top + (m - c0) * q2;
      T* b = bot + (m - c0) * q2;
      copy_spill<V>(src, t, q2, x_end, t + q2 + W);
      copy_spill<V>(src + w, b, q2, x_end, b + q2 + W);
    }
    const int64_t n_out = (c1 - c0) * q;
    for (int64_t o = 0; o < n_out; o += W) {
      windows(top + 2 * o, bot + 2 * o, c0 * q + o, static_cast<int>(min64(W, n_out - o)));
    }
    return 0;
  });
}

// Backward. I: the index type for max pooling (dx gets dy at the recorded tap), void for average
// pooling (dx gets dy / 4 at every tap). Returns the number of indices that matched a tap.
// Rows that compact_in_place takes store the taps straight into the dx rows, the others go
// through the scratch rows; full vectors of uint8 indices take one load and four byte compares
// (eq_u8_run) and one count of the disjoint matches. Against the scratch interleave with a
// compare and a count per tap, on rows of whole vectors, float32, AMD EPYC Zen 3 (AVX2), medians
// of 7 blocks, alternating processes, one core | 2 threads: 64x64x32x32 max 2318-2364 ->
// 1010-1095 | 944-998 -> 393-467 us, average 1720-1914 -> 979-1115 | 587-766 -> 358-465 us;
// 16x16x112x112 max 1235-1623 -> 523-632 | 587-618 -> 262-283 us; float64 64x64x32x32 max
// 8608-8754 -> 6208-6706 us (one core). Through the scratch rows, the compares and the count
// alone: max 64x20x24x24 (before it went in place) 342-352 -> 301-305 us, 64x50x8x8 140-142 ->
// 122 us, average even.
template <class V, typename I>
int64_t compact_backward(const Pool2d& pl, const typename V::T* dy, const I* idx,
                         typename V::T* dx) {
  static_assert(std::is_void_v<I> || std::is_same_v<I, uint8_t>, "2x2 windows: uint8 indices");
  using T = typename V::T;
  using R = typename V::V;
  constexpr int W = V::W;
  const int64_t q = pl.q, q2 = 2 * q, w = pl.w, h = pl.h;
  // The four taps of the n <= W outputs from flat index o (dy at its tap, or dy / 4); returns the
  // index matches; lanes [0, skip) are not counted. Captured by value: the vector stores may alias
  // anything, and through references every step reloaded dy and idx (10% of the average backward
  // on 24x24 maps). `=` rather than naming them: clang warns that average pooling leaves idx
  // unused.
  const auto taps = [=](int64_t o, int n, R tap[4], int skip = 0) -> int {
    const R g = n == W ? V::load(dy + o) : V::loadn(dy + o, n);
    if constexpr (std::is_void_v<I>) {
      tap[0] = tap[1] = tap[2] = tap[3] = V::div(g, V::set1(T(4)));
      return 0;
    } else {
      typename V::M hit[4];
      bool done = false;
      if constexpr (std::is_same_v<I, uint8_t>) {
        if (n == W) {
          V::template eq_u8_run<4>(idx + o, 0, hit);
          done = true;
        }
      }
      if (!done) {
        for (int k = 0; k < 4; ++k) hit[k] = index_is<V>(idx + o, n, k);
      }
      for (int k = 0; k < 4; ++k) tap[k] = V::mask_add(V::zero(), hit[k], g);
      // An index matches one tap at most: the masks are disjoint.
      const typename V::M any = V::mask_or(V::mask_or(hit[0], hit[1]), V::mask_or(hit[2], hit[3]));
      return V::count(any) - (skip > 0 ? V::count(V::mask_and(any, V::first_n(skip))) : 0);
    }
  };
  // What no window covers: a last column of dx rows 2p and 2p + 1 (odd W), and after a plane's
  // last window row its rows from 2P on (odd H). row: dx row 2p of the plane.
  const auto zero_uncovered = [&](T* row, T* plane_dx, int64_t p) {
    for (int64_t j = q2; j < w; ++j) row[j] = row[w + j] = T(0);
    if (p == pl.p - 1) {
      for (int64_t i = 2 * pl.p * w; i < h * w; ++i) plane_dx[i] = T(0);
    }
  };
  if (compact_in_place<V>(pl)) {
    return compact_split(pl, [&](int64_t m0, int64_t m1) {
      int64_t matches = 0;
      PlaneRow pr(pl, m0);  // output row m = (plane, p), advanced without a division
      for (int64_t m = m0; m < m1; ++m, pr.next(pl)) {
        T* const plane_dx = dx + pr.plane * h * w;
        T* const top = plane_dx + 2 * pr.p * w;
        for (int64_t j = 0; j < q; j += W) {
          // A partial last vector: the row's last W outputs, whose lanes over the previous
          // vector store the same values again and are not counted again.
          const int64_t jj = j + W <= q ? j : q - W;
          R tap[4];
          matches += taps(m * q + jj, W, tap, static_cast<int>(j - jj));
          V::store2(top + 2 * jj, tap[0], tap[1]);
          V::store2(top + w + 2 * jj, tap[2], tap[3]);
        }
        zero_uncovered(top, plane_dx, pr.p);
      }
      return matches;
    });
  }
  return compact_rows<V>(pl, [&](int64_t c0, int64_t c1, T* top, T* bot) -> int64_t {
    int64_t matches = 0;
    const int64_t n_out = (c1 - c0) * q;
    for (int64_t o = 0; o < n_out; o += W) {
      R tap[4];
      matches += taps(c0 * q + o, static_cast<int>(min64(W, n_out - o)), tap);
      R lo, hi;
      V::interleave(tap[0], tap[1], lo, hi);
      V::store(top + 2 * o, lo);
      V::store(top + 2 * o + W, hi);
      V::interleave(tap[2], tap[3], lo, hi);
      V::store(bot + 2 * o, lo);
      V::store(bot + 2 * o + W, hi);
    }
    // dx rows 2p and 2p + 1 of each output row. The copies may spill forward into what this task
    // writes next (the uncovered columns and rows, zeroed after them), never past the end of its
    // rows.
    const int64_t last = c1 - 1;
    const int64_t end_row =
        (last / pl.p) * h + (last % pl.p == pl.p - 1 ? h : 2 * (last % pl.p) + 2);
    const T* dx_end = dx + end_row * w;
    PlaneRow pr(pl, c0);
    for (int64_t m = c0; m < c1; ++m, pr.next(pl)) {
      T* const plane_dx = dx + pr.plane * h * w;
      T* const row = plane_dx + 2 * pr.p * w;
      copy_spill<V>(top + (m - c0) * q2, row, q2, top + (m - c0 + 1) * q2 + 2 * W, dx_end);
      copy_spill<V>(bot + (m - c0) * q2, row + w, q2, bot + (m - c0 + 1) * q2 + 2 * W, dx_end);
      zero_uncovered(row, plane_dx, pr.p);
    }
    return matches;
  });
}

}  // namespace
}  // namespace simdnn::SIMDNN_ISA_NS
