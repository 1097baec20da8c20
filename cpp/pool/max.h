// Max pooling for the per-ISA pooling files: the forward reduction (MaxOp), the backward terms
// (MaxBwd) and the entry points over the generic loops of forward.h and backward.h.
#pragma once

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

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

// Best values and their window positions, and where they go: one type for both MaxOp rules.
template <class V>
struct MaxState {
  typename V::V best, idx;
};
template <class V, typename I>
struct MaxOut {
  typename V::T* y;
  I* idx;
};

// Max: best value and its window position; ties keep the first, a NaN always takes over (the
// update rule of PyTorch's CPU kernel, so the last NaN's position wins).
//
// kOrdered: the update ignores NaN (one ordered compare where the rule takes two compares and an
// or). Only the 3x3/s2 path uses it, as Fast: it watches its inputs for NaN (kNanCheck) and
// computes a task again with the full rule when it saw one. Measured on a 2x64x32x32 float32
// 3x3/s2 padding 1 pool (in cache), one AMD EPYC Zen 3 core (AVX2): 14.2 -> 12.3-13.1 ns per 8
// outputs (11.6 without the watch, which no result may skip).
template <class V, typename I, bool kOrdered = false>
struct MaxOp {
  using T = typename V::T;
  using R = typename V::V;
  using Fast = MaxOp<V, I, true>;
  static constexpr bool kIndex = true;
  static constexpr bool kNanCheck = kOrdered;
  // The 3x3/s2 path combines whole window rows and reuses the row shared by two windows.
  static constexpr bool kShareRows = true;
  // The 3x3/s2 path (forward.h) takes uint8 indices only: 9 window positions always give them
  // (pool_index_is_u8). Not on 1-lane "vectors" (the scalar ISA): there it took 11.2 ms against
  // 10.8 ms for the generic loops (64x64x32x32 float32, 3x3/s2 padding 1, 2 threads; a branch
  // on every compare either way), while average pooling took 0.73 ms against 1.5 ms.
  static constexpr bool kS2k3 = V::W > 1 && std::is_same_v<I, uint8_t>;
  static typename V::M gt(R a, R b) {
    if constexpr (kOrdered) {
      return V::gt(a, b);
    } else {
      return V::gt_or_nan(a, b);
    }
  }
  using State = MaxState<V>;
  static T fill() { return neg_inf<T>(); }  // padding
  // The first tap needs no compare: with best = -inf it would be taken unless it is -inf, and
  // then the index is the first position anyway (edge blocks fix that up on store).
  static void first(State& st, R v, int64_t k) {
    st.best = v;
    st.idx = V::set1(static_cast<T>(k));
  }
  static void next(State& st, R v, int64_t k) {
    const typename V::M m = gt(v, st.best);
    st.best = V::blend(m, st.best, v);
    st.idx = V::blend(m, st.idx, V::set1(static_cast<T>(k)));
  }
  // Whole window rows combined (the separable 3x3/s2 path, forward.h): h is a row's reduction,
  // its positions dk off (the row result kept for the next window: -6). Combining rows by the
  // same update rule gives the same value and index as the taps one by one: the first maximum,
  // or the last NaN.
  static void vfirst(State& st, const State& h, int64_t dk) {
    st.best = h.best;
    st.idx = dk == 0 ? h.idx : V::add(h.idx, V::set1(static_cast<T>(dk)));
  }
  // The row result kept for the next window, member by member: the whole-struct copy compiled to
  // 8-byte pieces through the stack (the same pool as above: 17.1 -> 14.2 ns per 8 outputs).
  static void keep(State& dst, const State& h) {
    dst.best = h.best;
    dst.idx = h.idx;
  }
  static void vnext(State& st, const State& h) {
    const typename V::M m = gt(h.best, st.best);
    st.best = V::blend(m, st.best, h.best);
    st.idx = V::blend(m, st.idx, h.idx);
  }
  using Out = MaxOut<V, I>;
  static Out out_at(void* y, void* idx, int64_t off) {
    return {static_cast<T*>(y) + off, static_cast<I*>(idx) + off};
  }
  // Outputs q0 .. q0 + n - 1 of the row at o + off. In an edge block a window whose in-bounds
  // inputs are all -inf must report its first in-bounds position, not the padding tap where the
  // first-tap shortcut left the index.
  static void store(const Out& o, int64_t off, const State& st, const RowCtx<T>& c, int64_t q0,
                    int n, bool edge) {
    R idx = st.idx;
    if (edge) {
      // A whole vector: the table is followed by others and 16 elements of slack
      // (make_col_tables); the lanes past n are not stored.
      const R first_in = V::add(V::load(c.tab.s0 + q0), V::set1(static_cast<T>(c.rs.r0 * c.s)));
      idx = V::blend(V::eq(st.best, V::set1(neg_inf<T>())), idx, first_in);
    }
    store_n<V>(o.y + off, st.best, n);
    store_idx<V>(o.idx + off, idx, n);
  }
  // One window, scalar. x points at input row ih0 + r0, column 0.
  static void window(const Geom& g, const RowSpan& rs, const ColSpan& cs, const T* x, bool,
                     const Out& o, int64_t off) {
    T best = neg_inf<T>();
    int64_t bi = rs.r0 * g.s + cs.s0;
    for (int64_t r = rs.r0; r < rs.r1; ++r) {
      const T* xr = x + (r - rs.r0) * g.w + cs.iw0;
      for (int64_t s = cs.s0; s < cs.s1; ++s) {
        const T v = xr[s];
        if (v > best || v != v) {
          best = v;
          bi = r * g.s + s;
        }
      }
    }
    o.y[off] = best;
    o.idx[off] = static_cast<I>(bi);
  }
};

// Max: window (p, q) gives dy[p, q] to its arg-max position k only; the indices are compared as
// integers (no conversion), and the matches are counted.
template <class V, typename I>
struct MaxBwd {
  using T = typename V::T;
  using R = typename V::V;
  // The terms of all window rows go straight into one sum (no per-row divisor).
  static constexpr bool kDirect = true;
  // Scattered (one add per window), not gathered, at column stride 3 (but for the tiled 3-wide
  // windows) and where windows of more than 4 taps overlap (backward.h says why).
  static constexpr bool kPrefersScatter = true;
  // The 3x3/s2 and tiled paths (backward.h, terms3) take uint8 indices only: 9 window positions
  // always give them, and the tiled 3-wide windows up to 85 rows.
  static constexpr bool kS2k3 = std::is_same_v<I, uint8_t>;
  struct Plane {
    const T* dy;
    const I* idx;
    Plane at_offset(int64_t off) const { return {dy + off, idx + off}; }
  };
  const T* dy;  // row p of dy and of the indices
  const I* idx;
  static MaxBwd at(const Plane& pl, const Geom& g, int64_t p) {
    return {pl.dy + p * g.q, pl.idx + p * g.q};
  }
  static typename V::M eq_idx(const uint8_t* p, int lo, int hi, int64_t k) {
    return V::eq_u8r(p, lo, hi, k);
  }
  static typename V::M eq_idx(const int32_t* p, int lo, int hi, int64_t k) {
    return V::eq_i32r(p, lo, hi, k);
  }
  // acc += the terms of windows q .. q + W - 1 at window position k; lanes [lo, hi) by mode.
  // Returns the number of indices that matched.
  template <int kMode>
  int add(R& acc, int64_t q, int64_t k, int lo, int hi) const {
    const typename V::M m = eq_idx(shifted(idx, q), lo, hi, k);
    acc = V::mask_add(acc, m, load_mode<V, kMode>(shifted(dy, q), lo, hi, T(0)));
    return V::count(m);
  }
  template <int kMode>
  R finish(R v) const {
    return v;
  }
  // The 3x3/s2 and tiled paths (backward.h): the terms of taps k0, k0 + 1, k0 + 2 of windows
  // q0 .. q0 + W - 1 (dy where the index is that tap, 0 elsewhere); lanes past Q, or not the
  // block's own (kOver, kCopy: see S2k3Read), are no tap. Returns the index matches.
  template <int kRead>
  int terms3(const Geom& g, int64_t q0, int64_t k0, const BwdTail<V>& tl, R t[3]) const {
    static_assert(kS2k3);
    // The indices compared as bytes (eq_u8_run) and the matches counted once: the three taps'
    // masks are disjoint. Against indices converted to float lanes, a float compare and a
    // count per tap, on one AMD EPYC Zen 3 core, 16x64 planes: padding 1 on 32x32 3-5% faster
    // (float64 848-857 -> 817-827 us, float32 560-569 -> 539-551 us), padding 0 on 33x33
    // even (float64 1033-1040 vs 1047-1084 us).
    R d;
    typename V::M m[3];
    if (kRead == kCopy) {
      copy_tail<V>(dy, g.q, q0, tl.dy);
      d = V::in_register(V::load(tl.dy));
      uint8_t* ti = static_cast<uint8_t*>(tl.idx);
      for (int64_t q = q0; q < g.q; ++q) ti[q - q0] = idx[q];
      V::template eq_u8_run<3>(ti, k0, m);
    } else {
      d = V::in_register(V::load(dy + q0));  // not 3 masked loads
      V::template eq_u8_run<3>(idx + q0, k0, m);
      if (kRead == kOver) {
        for (int s = 0; s < 3; ++s) m[s] = V::mask_and(m[s], tl.valid);  // the rest: no tap
      }
    }
    for (int s = 0; s < 3; ++s) t[s] = V::keep(d, m[s]);
    return V::count(V::mask_or(V::mask_or(m[0], m[1]), m[2]));
  }
  // The scatter path (backward.h: strides of 3 and more, and overlapping windows of more than 4
  // taps): dy of each window of row p added at the tap its index names, where that tap lies in dx
  // rows [ha, hb). An index out of range or into the padding is no match; a tap in another task's
  // rows is matched there.
  int64_t scatter(const Geom& g, int64_t p, const TapTable& taps, T* dx, int64_t ha,
                  int64_t hb) const {
    const int64_t ih0 = p * g.sh - g.ph, positions = g.r * g.s;
    int64_t matches = 0;
    for (int64_t q = 0; q < g.q; ++q) {
      const int64_t k = static_cast<int64_t>(idx[q]);
      if (k < 0 || k >= positions) continue;
      int64_t r, s;
      taps.at(g, k, &r, &s);
      const int64_t ih = ih0 + r, iw = q * g.sw - g.pw + s;
      if (ih < ha || ih >= hb || iw < 0 || iw >= g.w) continue;
      dx[ih * g.w + iw] += dy[q];
      ++matches;
    }
    return matches;
  }
  // The term of window q at position k, scalar; counts a match.
  T scalar(const Geom&, int64_t q, int64_t k, int64_t* matches) const {
    if (static_cast<int64_t>(idx[q]) != k) return T(0);
    ++*matches;
    return dy[q];
  }
};

// y, indices (N, C, P, Q) = max over each R x S window of x (N, C, H, W); padding is -inf.
template <typename T>
void max_forward(const Pool2d& pl, const T* x, T* y, void* idx) {
  using V = typename VecOf<T>::type;
  if (compact_fits(pl)) {
    compact_forward<V, MaxOp<V, uint8_t>>(pl, x, y, idx);  // 4 window positions: uint8 indices
    return;
  }
  if (pool_index_is_u8(pl)) {
    fwd_planes<V, MaxOp<V, uint8_t>>(pl, false, x, y, idx);
  } else {
    fwd_planes<V, MaxOp<V, int32_t>>(pl, false, x, y, idx);
  }
}

// dx (N, C, H, W) from dy and indices (N, C, P, Q); returns how many indices are bad.
template <typename T, typename I>
int64_t max_backward_t(const Pool2d& pl, const T* dy, const I* idx, T* dx) {
  using V = typename VecOf<T>::type;
  const Geom g = make_geom(pl);
  if constexpr (std::is_same_v<I, uint8_t>) {  // 2x2 windows: always uint8 indices
    if (compact_fits(pl)) return pl.n * pl.c * g.p * g.q - compact_backward<V>(pl, dy, idx, dx);
  }
  const typename MaxBwd<V, I>::Plane plane{dy, idx};
  const int64_t matches = bwd_planes<V, MaxBwd<V, I>>(pl, plane, 0, g.q, dx);
  return pl.n * pl.c * g.p * g.q - matches;
}

template <typename T>
int64_t max_backward(const Pool2d& pl, const T* dy, const void* idx, T* dx) {
  if (pool_index_is_u8(pl)) return max_backward_t(pl, dy, static_cast<const uint8_t*>(idx), dx);
  return max_backward_t(pl, dy, static_cast<const int32_t*>(idx), dx);
}

}  // namespace
}  // namespace simdnn::SIMDNN_ISA_NS
