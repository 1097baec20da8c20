// Average pooling for the per-ISA pooling files: the forward reduction (AvgOp), the backward terms
// (AvgBwd) and the entry points over the generic loops of forward.h and backward.h.
#pragma once

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/int_math.h"
#include "common/parallel.h"
#include "pool/backward.h"
#include "pool/compact.h"
#include "pool/forward.h"
#include "pool/geometry.h"
#include "pool/pool.h"
#include "simd/simd.h"

#ifndef SIMDNN_ISA_NS
#error "compile with -DSIMDNN_ISA_NS=<isa>"
#endif

namespace simdnn::SIMDNN_ISA_NS {
namespace {

// Average: the sum of the in-bounds taps (padding adds 0) over the divisor.
template <class V>
struct AvgOp {
  using T = typename V::T;
  using R = typename V::V;
  static constexpr bool kIndex = false;
  static constexpr bool kS2k3 = true;  // on every ISA (see MaxOp::kS2k3)
  using Fast = AvgOp;                  // no NaN rule to skip (MaxOp)
  static constexpr bool kNanCheck = false;
  // The 3x3/s2 path adds the taps one by one in window order, as the generic loops and the NumPy
  // twin do (the same bits); sums of row sums differed in the last bit (0.2% of the outputs of
  // an 8x16x32x32 float32 pool past rtol 1e-5 near 0), and cost ~ the same (2 threads, 64x64x32x32:
  // 0.25 ms either way).
  static constexpr bool kShareRows = false;
  struct State {
    R sum;
  };
  static T fill() { return T(0); }
  static void first(State& st, R v, int64_t) { st.sum = v; }
  static void next(State& st, R v, int64_t) { st.sum = V::add(st.sum, v); }
  // Whole window rows combined: never called (kShareRows), compiled with the max path's loop.
  static void vfirst(State& st, const State& h, int64_t) { st.sum = h.sum; }
  static void vnext(State& st, const State& h) { st.sum = V::add(st.sum, h.sum); }
  static void keep(State& dst, const State& h) { dst.sum = h.sum; }
  struct Out {
    T* y;
  };
  static Out out_at(void* y, void*, int64_t off) { return {static_cast<T*>(y) + off}; }
  // Edge blocks without the padding in the divisor divide each window by its own column count.
  static void store(const Out& o, int64_t off, const State& st, const RowCtx<T>& c, int64_t q0,
                    int n, bool edge) {
    R div = V::set1(c.div);
    if (edge && !c.include_pad) {
      // A whole vector (16 elements of slack follow the table; lanes past n are not stored).
      div = V::mul(V::load(c.tab.cols + q0), V::set1(static_cast<T>(c.rs.r1 - c.rs.r0)));
    }
    store_n<V>(o.y + off, V::div(st.sum, div), n);
  }
  static void window(const Geom& g, const RowSpan& rs, const ColSpan& cs, const T* x,
                     bool include_pad, const Out& o, int64_t off) {
    T sum = 0;
    for (int64_t r = rs.r0; r < rs.r1; ++r) {
      const T* xr = x + (r - rs.r0) * g.w + cs.iw0;
      for (int64_t s = cs.s0; s < cs.s1; ++s) sum += xr[s];
    }
    const int64_t div = include_pad ? g.r * g.s : (rs.r1 - rs.r0) * (cs.s1 - cs.s0);
    o.y[off] = sum / static_cast<T>(div);
  }
};

// Average: window (p, q) gives dy[p, q] / divisor to each of its input pixels. In clean blocks
// every window spans S input columns, so the divisor is one number per window row and divides
// the sum of that row's terms; in edge blocks without the padding in the divisor each term is
// divided by its window's own divisor.
template <class V>
struct AvgBwd {
  using T = typename V::T;
  using R = typename V::V;
  static constexpr bool kDirect = false;
  // Gathered wherever sw <= 3: every tap adds a term, so a scatter saves no compares.
  static constexpr bool kPrefersScatter = false;
  static constexpr bool kS2k3 = true;
  struct Plane {
    const T* dy;
    bool include_pad;
    ColTables<T> tab;
    Plane at_offset(int64_t off) const { return {dy + off, include_pad, tab}; }
  };
  const T* dy;  // row p of dy
  T rows;       // input rows in window row p
  T div;        // divisor of the windows spanning S input columns
  bool include_pad;
  const T* cols;
  static AvgBwd at(const Plane& pl, const Geom& g, int64_t p) {
    const RowSpan rs = row_span(g, p);
    const int64_t rows = rs.r1 - rs.r0;
    return {pl.dy + p * g.q, static_cast<T>(rows),
            static_cast<T>(pl.include_pad ? g.r * g.s : rows * g.s), pl.include_pad, pl.tab.cols};
  }
  template <int kMode>
  int add(R& acc, int64_t q, int64_t, int lo, int hi) const {
    R d = load_mode<V, kMode>(shifted(dy, q), lo, hi, T(0));
    if (kMode == kEdge && !include_pad) {
      d = V::div(d, V::mul(V::loadr(shifted(cols, q), lo, hi, T(1)), V::set1(rows)));
    }
    acc = V::add(acc, d);
    return 0;
  }
  template <int kMode>
  R finish(R v) const {
    return kMode == kEdge && !include_pad ? v : V::div(v, V::set1(div));
  }
  // The 3x3/s2 and tiled paths (backward.h): dy / divisor of windows q0 .. q0 + W - 1, the term
  // of each of their taps (see MaxBwd::terms3).
  template <int kRead>
  int terms3(const Geom& g, int64_t q0, int64_t, const BwdTail<V>& tl, R t[3]) const {
    R d, c = V::set1(T(1));
    if (kRead == kCopy) {
      copy_tail<V>(dy, g.q, q0, tl.dy);
      d = V::load(tl.dy);
      if (!include_pad) {
        copy_tail<V>(cols, g.q, q0, tl.cols);
        c = V::load(tl.cols);
      }
    } else {
      d = V::load(dy + q0);
      if (!include_pad) c = V::load(cols + q0);  // the table has W entries of slack
    }
    d = include_pad ? V::div(d, V::set1(div)) : V::div(d, V::mul(c, V::set1(rows)));
    if (kRead == kOver) d = V::blend(tl.valid, V::zero(), d);
    t[0] = t[1] = t[2] = d;
    return 0;
  }
  // The scatter path (strides of 3 and more, backward.h): dy / divisor of each window of row p
  // added at each of its in-bounds taps in dx rows [ha, hb).
  int64_t scatter(const Geom& g, int64_t p, const TapTable&, T* dx, int64_t ha, int64_t hb) const {
    const RowSpan rs = row_span(g, p);
    const int64_t r0 = max64(rs.r0, ha - rs.ih0), r1 = min64(rs.r1, hb - rs.ih0);
    for (int64_t q = 0; r0 < r1 && q < g.q; ++q) {
      const ColSpan cs = col_span(g, q);
      const T t = scalar(g, q, 0, nullptr);
      for (int64_t r = r0; r < r1; ++r) {
        T* d = dx + (rs.ih0 + r) * g.w;
        for (int64_t s = cs.iw0 + cs.s0; s < cs.iw0 + cs.s1; ++s) d[s] += t;
      }
    }
    return 0;
  }
  T scalar(const Geom& g, int64_t q, int64_t, int64_t*) const {
    const ColSpan cs = col_span(g, q);
    return dy[q] / (include_pad ? static_cast<T>(g.r * g.s) : rows * static_cast<T>(cs.s1 - cs.s0));
  }
};

// y (N, C, P, Q) = mean over each R x S window of x (N, C, H, W); padding adds 0 and counts in
// the divisor when count_include_pad.
template <typename T>
void avg_forward(const Pool2d& pl, bool count_include_pad, const T* x, T* y) {
  using V = typename VecOf<T>::type;
  if (compact_fits(pl)) {
    compact_forward<V, AvgOp<V>>(pl, x, y, nullptr);  // no padding: the divisor is 4 either way
    return;
  }
  fwd_planes<V, AvgOp<V>>(pl, count_include_pad, x, y, nullptr);
}

// dx (N, C, H, W) from dy (N, C, P, Q): each window's dy / divisor to each of its input pixels.
template <typename T>
void avg_backward(const Pool2d& pl, bool count_include_pad, const T* dy, T* dx) {
  using V = typename VecOf<T>::type;
  if (compact_fits(pl)) {
    compact_backward<V, void>(pl, dy, nullptr, dx);
    return;
  }
  const Geom g = make_geom(pl);
  const typename AvgBwd<V>::Plane plane{dy, count_include_pad, make_col_tables<T>(g)};
  // Without the padding in the divisor, clean blocks hold only windows spanning S columns.
  bwd_planes<V, AvgBwd<V>>(pl, plane, count_include_pad ? 0 : g.qi_lo,
                           count_include_pad ? g.q : g.qi_hi, dx);
}

}  // namespace
}  // namespace simdnn::SIMDNN_ISA_NS
