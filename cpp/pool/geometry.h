// Pooling geometry for the per-ISA pooling files: window math (the in-bounds rows and columns of a
// window, the interior output columns), per-column lane tables, the split of planes x rows into
// thread tasks, and the lane helpers (load modes, partial stores) the loops share. Shape legend in
// pool.cpp.
#pragma once

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/int_math.h"
#include "common/parallel.h"
#include "pool/pool.h"
#include "simd/simd.h"

#ifndef SIMDNN_ISA_NS
#error "compile with -DSIMDNN_ISA_NS=<isa>"
#endif

namespace simdnn::SIMDNN_ISA_NS {
namespace {

template <typename T>
T neg_inf() {
  return -static_cast<T>(HUGE_VAL);
}

// Index vectors hold window positions as floating-point lanes; float32 is exact up to 2^24
// positions. Larger windows (4097 x 4097 and up, never seen in practice) take the scalar path.
template <typename T>
bool index_fits_lanes(int64_t positions) {
  return sizeof(T) == 8 || positions <= (int64_t(1) << 24);
}

// ---------------------------------------------------------------------------------------------
// Geometry, tables and work split

struct Geom {
  int64_t h, w, r, s, p, q, sh, sw, ph, pw;
  // Output columns whose window lies inside the input columns.
  int64_t qi_lo, qi_hi;
};

Geom make_geom(const Pool2d& pl) {
  Geom g{pl.h, pl.w, pl.r, pl.s, pl.p, pl.q, pl.sh, pl.sw, pl.ph, pl.pw, 0, 0};
  // With a single window row the stride does not matter; bounding it by the padded input keeps
  // every stride product below in range whatever the caller passed (stride=2**62 is valid).
  if (g.p == 1) g.sh = min64(g.sh, g.h + 2 * g.ph);
  if (g.q == 1) g.sw = min64(g.sw, g.w + 2 * g.pw);
  g.qi_lo = min64(g.q, ceil_div(g.pw, g.sw));
  const int64_t last = g.w + g.pw - g.s;  // interior iff q * sw <= last
  g.qi_hi = last < 0 ? g.qi_lo : max64(g.qi_lo, min64(g.q, last / g.sw + 1));
  return g;
}

// Rows [r0, r1) of output row p's window that lie inside the input; ih0 = p*sh - ph.
struct RowSpan {
  int64_t ih0, r0, r1;
};
RowSpan row_span(const Geom& g, int64_t p) {
  const int64_t ih0 = p * g.sh - g.ph;
  return {ih0, max64(0, -ih0), min64(g.r, g.h - ih0)};
}
// Columns [s0, s1) of output column q's window that lie inside the input; iw0 = q*sw - pw.
struct ColSpan {
  int64_t iw0, s0, s1;
};
ColSpan col_span(const Geom& g, int64_t q) {
  const int64_t iw0 = q * g.sw - g.pw;
  return {iw0, max64(0, -iw0), min64(g.s, g.w - iw0)};
}

// Per output column q, as lanes for the edge blocks: the first in-bounds tap s0 and the number of
// in-bounds columns s1 - s0. Filled once per call, in the calling thread's scratch buffer.
template <typename T>
struct ColTables {
  const T* s0;
  const T* cols;
};
template <typename T>
ColTables<T> make_col_tables(const Geom& g) {
  // Slack after the column counts: the forward stores and the 3x3/s2 backward load whole vectors
  // (16 lanes at most) from any block start up to Q, not masked ones.
  constexpr int64_t kSlack = 16;
  T* t = static_cast<T*>(
      workspace(WorkspaceSlot::op_scratch, static_cast<size_t>(2 * g.q + kSlack) * sizeof(T)));
  for (int64_t q = 0; q < g.q; ++q) {
    const ColSpan cs = col_span(g, q);
    t[q] = static_cast<T>(cs.s0);
    t[g.q + q] = static_cast<T>(cs.s1 - cs.s0);
  }
  for (int64_t k = 2 * g.q; k < 2 * g.q + kSlack; ++k) t[k] = T(1);
  return {t, t + g.q};
}

// Each thread gets at least this many input elements (the measurement is at grain::kPoolElems).
constexpr int64_t kMinElemsPerThread = grain::kPoolElems;

// The planes x rows of a call cut into tasks: whole planes when there are at least 8 per thread
// (static scheduling is then balanced to within 1/8), otherwise row blocks of the planes so that
// a batch of one image still uses every core.
struct Split {
  int nthreads;
  int64_t blocks;  // row blocks per plane
  int64_t tasks;   // planes * blocks
};
Split make_split(int64_t planes, int64_t rows, int64_t elems, int nthreads) {
  Split sp{1, 1, planes};
  if (nthreads > 1 && elems >= 2 * kMinElemsPerThread) {
    sp.nthreads = static_cast<int>(min64(nthreads, elems / kMinElemsPerThread));
    if (planes < 8 * sp.nthreads) {
      sp.blocks = min64(max64(rows, 1), ceil_div(8 * sp.nthreads, planes));
    }
  }
  sp.tasks = planes * sp.blocks;
  return sp;
}

// Row block b of `blocks` over [0, rows).
int64_t block_begin(int64_t rows, int64_t blocks, int64_t b) { return rows * b / blocks; }

// f(plane, block) for every task; returns the sum of what f returns. The tasks are handed out in
// ranges (parallel_ranges), so that a thread without a core leaves its share to the others.
template <class F>
int64_t parallel_tasks(const Split& sp, const F& f) {
  // Tasks [t0, t1): plane and block stepped, not divided out of t per task (a 64-bit division
  // per task is a measurable share of a small plane's, 7x7 for instance).
  const auto run = [&](int64_t t0, int64_t t1) {
    int64_t sum = 0;
    if (t0 >= t1) return sum;
    int64_t plane = t0 / sp.blocks, b = t0 % sp.blocks;
    for (int64_t t = t0; t < t1; ++t) {
      sum += f(plane, b);
      if (++b == sp.blocks) {
        b = 0;
        ++plane;
      }
    }
    return sum;
  };
  if (sp.nthreads <= 1) return run(0, sp.tasks);
  std::atomic<int64_t> total{0};
  parallel_ranges(sp.tasks, 1, 1, sp.nthreads, [&](int64_t t0, int64_t t1) {
    total.fetch_add(run(t0, t1), std::memory_order_relaxed);
  });
  return total.load();
}

// ---------------------------------------------------------------------------------------------
// Vector helpers

// How a block of lanes is loaded: all W lanes inside (plain loads), the first n lanes inside
// (tail), or lanes [lo, hi) inside and the others filled (edge: windows reaching the padding).
enum Mode { kFull, kTail, kEdge };

template <class V>
void store_idx(uint8_t* p, typename V::V v, int n) {
  V::store_u8n(p, v, n);
}
template <class V>
void store_idx(int32_t* p, typename V::V v, int n) {
  V::store_i32n(p, v, n);
}

// Lanes [lo, hi) from p[lo..hi) by mode; kFull and kTail have lo == 0 (and hi == W for kFull).
template <class V, int kMode>
typename V::V load_mode(const typename V::T* p, int lo, int hi, typename V::T fill) {
  if (kMode == kFull) return V::load(p);
  if (kMode == kTail) return V::loadn(p, hi);
  return V::loadr(p, lo, hi, fill);
}
template <class V>
void store_n(typename V::T* p, typename V::V v, int n) {
  if (n == V::W) {
    V::store(p, v);
  } else {
    V::storen(p, v, n);
  }
}

// What a store needs to know about the row and the columns of its windows.
template <typename T>
struct RowCtx {
  RowSpan rs;
  int64_t s;         // S
  bool include_pad;  // average: padding counts in the divisor
  T div;             // average: divisor of windows spanning S input columns
  ColTables<T> tab;
};

// ---------------------------------------------------------------------------------------------
// The 3x3/s2 paths (forward.h, backward.h)

// Whether the separable 3x3/s2 path takes the call.
bool s2k3_fits(const Geom& g) {
  return g.r == 3 && g.s == 3 && g.sh == 2 && g.sw == 2 && g.ph <= 1 && g.pw <= 1;
}

// How the last block of a row reads when its vectors reach past the row's end (forward: 2W + 1
// input columns; backward: W windows of dy and of the indices): plain loads that run on into the
// next rows, the lanes past the row's end then set aside by a blend (kOver), or, where those
// loads would leave the array (the last rows of the last plane), a scratch copy of the row's end
// (kCopy, copy_tail).
// Measured on 256x64 planes of 7x7 float32 (Q = 4 of 16 lanes: every row a last block), 3x3/s2
// padding 1, 2 threads: max forward 0.83 ms with the generic loops, 1.06 ms copying every row's
// end, 0.55 ms with kOver; max backward 0.55, 1.64 and 0.62 ms (one core: 1.08 and 1.10 ms).
enum S2k3Read { kInside, kOver, kCopy };

// The scratch row of copy_tail: origin at W (a copy may start up to W before it), room for the
// 2W + 1 elements a block reads and whole fill vectors past them.
template <class V>
constexpr int64_t kTailLen = 8 * V::W;

// Columns [base, w) of a row (0 < w - base < 2W) into t[0, w - base), with whole vectors that end
// at the row's end (overlapping) where the row holds at least W elements, one by one otherwise.
template <class V>
void copy_tail(const typename V::T* row, int64_t w, int64_t base, typename V::T* t) {
  constexpr int W = V::W;
  const typename V::T* src = row + base;
  int64_t j = w - base;  // t[j, w - base) copied
  while (j >= W) {
    j -= W;
    V::store(t + j, V::load(src + j));
  }
  if (j > 0 && w >= W) {
    const int64_t o = max64(j - W, -base);  // src + o stays inside the row
    V::store(t + o, V::load(src + o));
  } else {
    for (int64_t k = 0; k < j; ++k) t[k] = src[k];
  }
}

}  // namespace
}  // namespace simdnn::SIMDNN_ISA_NS
