// The 2-D pooling kernels of one ISA (max and average, forward and backward): compiled once per
// ISA with that ISA's flags and -DSIMDNN_ISA_NS=<isa>, written once over the vector traits
// (cpp/simd/simd_<isa>.h; the scalar ISA is the same code on 1-lane "vectors"). Everything lives
// in an unnamed namespace inside the ISA's namespace, so nothing compiled with wide-ISA flags can
// be merged by the linker into code that runs on a narrower CPU.
//
// Shape legend (every kernel): x (N, C, H, W), window R x S, stride sh x sw, padding ph x pw,
// y (N, C, P, Q) with P = (H + 2*ph - R) / sh + 1, Q = (W + 2*pw - S) / sw + 1. All tensors are
// C-contiguous; an "plane" is one (n, c) image of H x W (or P x Q) elements.
//
// Forward. Threads take whole planes (or row blocks of a plane when there are fewer planes than
// threads); each output row is vectorised along q, W outputs per vector. Output columns whose
// window lies inside the input columns ("interior", qi_lo <= q < qi_hi) take the vector path; the
// rows of a window are clipped to the input once per output row, so padding rows cost nothing.
// Border columns (at most ceil(pw / sw) on each side) take a scalar path. Loads per window tap:
//   sw == 1   a plain vector load;
//   sw == 2   a deinterleaving load of 2W contiguous inputs: the even lanes are tap s, the odd
//             lanes tap s + 1 of the same W windows (no gathers: 2 loads + 2 permutes for 2 taps);
//   otherwise a strided gather (rare strides; still W windows per instruction).
// 2x2/s2 and 3x3/s2 windows (the ones CNNs use) get the tap loop unrolled at compile time.
//
// Backward, written as a gather over dx so that every dx element is written exactly once, no
// scatter, no atomics, the same sums in the same order whatever the thread count:
//   dx[ih, iw] = sum over the windows (p, q) that contain (ih, iw) of dy[p, q] * weight,
// where weight is [indices[p, q] == r*S + s] for max pooling ((r, s) = (ih, iw)'s position in the
// window) and 1 / divisor[p, q] for average pooling. The windows containing a row are a short
// run of p (ceil(R / sh) at most), those containing a column a short run of q; with sw == 2 the
// even and odd input columns each see a fixed set of taps whose q run is contiguous, so dy and the
// indices are read with plain vector loads at a shifted q and the two halves are interleaved on
// store. When stride >= kernel (windows do not overlap, e.g. 2x2/s2) each dx element gets at most
// one term and each row at most one window row: dx is written in one pass, pixels outside every
// window get 0. Overlapping windows (3x3/s2) add their 2-4 terms in registers (columns) and into
// the dx row just written, still in L1 (rows), plane by plane.
#include "pool/pool.h"

#include <cmath>
#include <cstdint>
#include <cstring>

#include "dispatch.h"
#include "simd/simd.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef SIMDNN_ISA_NS
#error "compile with -DSIMDNN_ISA_NS=<isa>"
#endif

namespace simdnn::SIMDNN_ISA_NS {

namespace {

int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
// Ceiling of a / b for b > 0 and any sign of a.
int64_t ceil_div(int64_t a, int64_t b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }

template <typename T>
T neg_inf() {
  return -static_cast<T>(HUGE_VAL);
}

// Index vectors hold window positions as floating-point lanes; float32 is exact up to 2^24
// positions. Larger windows (a 4097 x 4097 window, never seen in practice) take the scalar path.
template <typename T>
bool index_fits_lanes(int64_t positions) {
  return sizeof(T) == 8 || positions <= (int64_t(1) << 24);
}

// ---------------------------------------------------------------------------------------------
// Geometry and work split

struct Geom {
  int64_t h, w, r, s, p, q, sh, sw, ph, pw;
  // Output columns whose window lies inside the input columns.
  int64_t qi_lo, qi_hi;
};

Geom make_geom(const Pool2d& pl) {
  Geom g{pl.h, pl.w, pl.r, pl.s, pl.p, pl.q, pl.sh, pl.sw, pl.ph, pl.pw, 0, 0};
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

// Below this many input elements per thread a further thread costs more than it gives: an
// OpenMP fork/join is about 2-3 us here, and one core streams a 2x2 max pool at about 4 elements
// per ns, so 16K elements (~4 us) is where the second core starts to pay (measured: a 1x8x32x64
// float32 max pool, 16K elements, takes the same time on 1 and 2 threads).
constexpr int64_t kMinElemsPerThread = 16 * 1024;

// The planes x rows of a call cut into tasks: whole planes when there are at least 8 per thread
// (then static scheduling is balanced to within 1/8), otherwise row blocks of the planes so that
// a batch of 1 still uses every core.
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

// f(plane, block) for every task; returns the sum of what f returns.
template <class F>
int64_t parallel_tasks(const Split& sp, const F& f) {
  int64_t total = 0;
  if (sp.nthreads <= 1) {
    for (int64_t t = 0; t < sp.tasks; ++t) total += f(t / sp.blocks, t % sp.blocks);
    return total;
  }
#ifdef _OPENMP
#pragma omp parallel for num_threads(sp.nthreads) schedule(static) reduction(+ : total)
#endif
  for (int64_t t = 0; t < sp.tasks; ++t) total += f(t / sp.blocks, t % sp.blocks);
  return total;
}

// Row block b of `blocks` over [0, rows).
int64_t block_begin(int64_t rows, int64_t blocks, int64_t b) { return rows * b / blocks; }

// ---------------------------------------------------------------------------------------------
// Vector helpers

template <class V>
typename V::V load_idx(const uint8_t* p, int n) {
  return V::load_u8n(p, n);
}
template <class V>
typename V::V load_idx(const int32_t* p, int n) {
  return V::load_i32n(p, n);
}
template <class V>
void store_idx(uint8_t* p, typename V::V v, int n) {
  V::store_u8n(p, v, n);
}
template <class V>
void store_idx(int32_t* p, typename V::V v, int n) {
  V::store_i32n(p, v, n);
}

template <class V, bool kFull>
typename V::V ld(const typename V::T* p, int n) {
  if (kFull) return V::load(p);
  return V::loadn(p, n);
}
template <class V, bool kFull>
void st(typename V::T* p, typename V::V v, int n) {
  if (kFull) {
    V::store(p, v);
  } else {
    V::storen(p, v, n);
  }
}

// ---------------------------------------------------------------------------------------------
// Forward: the window reductions

// Max: best value and its window position; ties keep the first, a NaN always takes over (the
// update rule of PyTorch's CPU kernel, so the last NaN's position wins).
template <class V, typename I>
struct MaxOp {
  using T = typename V::T;
  using R = typename V::V;
  struct State {
    R best, idx;
  };
  // The first tap needs no compare: with best = -inf it would be taken unless it is -inf, and
  // then the index is the first position anyway.
  static void first(State& st, R v, int64_t k) {
    st.best = v;
    st.idx = V::set1(static_cast<T>(k));
  }
  static void next(State& st, R v, int64_t k) {
    const typename V::M m = V::gt_or_nan(v, st.best);
    st.best = V::blend(m, st.best, v);
    st.idx = V::blend(m, st.idx, V::set1(static_cast<T>(k)));
  }
  struct Out {
    T* y;
    I* idx;
  };
  static Out out_at(void* y, void* idx, int64_t off) {
    return {static_cast<T*>(y) + off, static_cast<I*>(idx) + off};
  }
  static void store(const Out& o, int64_t off, const State& st, T, int n) {
    if (n == V::W) {
      V::store(o.y + off, st.best);
    } else {
      V::storen(o.y + off, st.best, n);
    }
    store_idx<V>(o.idx + off, st.idx, n);
  }
  // One border window, scalar. x points at input row ih0 + r0, column 0.
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

// Average: the sum of the in-bounds taps (padding adds 0) over the divisor.
template <class V>
struct AvgOp {
  using T = typename V::T;
  using R = typename V::V;
  struct State {
    R sum;
  };
  static void first(State& st, R v, int64_t) { st.sum = v; }
  static void next(State& st, R v, int64_t) { st.sum = V::add(st.sum, v); }
  struct Out {
    T* y;
  };
  static Out out_at(void* y, void*, int64_t off) { return {static_cast<T*>(y) + off}; }
  static void store(const Out& o, int64_t off, const State& st, T div, int n) {
    const R y = V::div(st.sum, V::set1(div));
    if (n == V::W) {
      V::store(o.y + off, y);
    } else {
      V::storen(o.y + off, y, n);
    }
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

// The taps of one window row for W (kFull) or n output columns. xr points at the input of tap
// s = 0 of the first window; k0 = r * S. kFirst: this is the window's first row (its first tap
// initialises the state).
template <class V, class Op, int KS, int KSW, bool kFull, bool kFirst>
inline void fwd_row_taps(typename Op::State& st, const typename V::T* xr, int64_t S, int64_t sw,
                         int64_t k0, int n) {
  constexpr int W = V::W;
  using R = typename V::V;
  if (KS) S = KS;
  if (KSW == 2) {
    // Tap pairs (s, s + 1) from one deinterleaving load; a last unpaired tap reads 2W - 1
    // elements so that it never touches the element after the last window.
    for (int64_t s = 0; s < S; s += 2) {
      R e, o;
      if (s + 1 < S) {
        if (kFull) {
          V::load2(xr + s, e, o);
        } else {
          V::load2n(xr + s, 2 * n, e, o);
        }
      } else {
        V::load2n(xr + s, kFull ? 2 * W - 1 : 2 * n - 1, e, o);
      }
      if (kFirst && s == 0) {
        Op::first(st, e, k0);
      } else {
        Op::next(st, e, k0 + s);
      }
      if (s + 1 < S) Op::next(st, o, k0 + s + 1);
    }
  } else {
    for (int64_t s = 0; s < S; ++s) {
      const R v = KSW == 1 ? ld<V, kFull>(xr + s, n)
                           : V::gathern(xr + s, static_cast<int>(sw), kFull ? W : n);
      if (kFirst && s == 0) {
        Op::first(st, v, k0);
      } else {
        Op::next(st, v, k0 + s);
      }
    }
  }
}

// Output rows [pa, pb) of one plane. KS: window width when fixed at compile time (0: g.s);
// KSW: 1, 2, or 0 for any stride (gathers). vec: whether interior columns take the vector path.
template <class V, class Op, int KS, int KSW>
void fwd_rows(const Geom& g, bool include_pad, bool vec, const typename V::T* x,
              const typename Op::Out& out, int64_t pa, int64_t pb) {
  using T = typename V::T;
  constexpr int W = V::W;
  const int64_t qv_lo = vec ? g.qi_lo : g.q, qv_hi = vec ? g.qi_hi : g.q;
  for (int64_t p = pa; p < pb; ++p) {
    const RowSpan rs = row_span(g, p);
    const T* xp = x + (rs.ih0 + rs.r0) * g.w;  // first in-bounds row of the windows
    const int64_t off = p * g.q;
    const T div = static_cast<T>(include_pad ? g.r * g.s : (rs.r1 - rs.r0) * g.s);
    for (int64_t q = 0; q < qv_lo; ++q) {
      Op::window(g, rs, col_span(g, q), xp, include_pad, out, off + q);
    }
    int64_t q = qv_lo;
    for (; q + W <= qv_hi; q += W) {
      typename Op::State st{};
      const T* xq = xp + q * g.sw - g.pw;
      fwd_row_taps<V, Op, KS, KSW, true, true>(st, xq, g.s, g.sw, rs.r0 * g.s, W);
      for (int64_t r = rs.r0 + 1; r < rs.r1; ++r) {
        fwd_row_taps<V, Op, KS, KSW, true, false>(st, xq + (r - rs.r0) * g.w, g.s, g.sw, r * g.s,
                                                  W);
      }
      Op::store(out, off + q, st, div, W);
    }
    if (q < qv_hi) {
      const int n = static_cast<int>(qv_hi - q);
      typename Op::State st{};
      const T* xq = xp + q * g.sw - g.pw;
      fwd_row_taps<V, Op, KS, KSW, false, true>(st, xq, g.s, g.sw, rs.r0 * g.s, n);
      for (int64_t r = rs.r0 + 1; r < rs.r1; ++r) {
        fwd_row_taps<V, Op, KS, KSW, false, false>(st, xq + (r - rs.r0) * g.w, g.s, g.sw, r * g.s,
                                                   n);
      }
      Op::store(out, off + q, st, div, n);
    }
    for (q = qv_hi; q < g.q; ++q) {
      Op::window(g, rs, col_span(g, q), xp, include_pad, out, off + q);
    }
  }
}

// All planes: picks the unrolled 2x2/s2 and 3x3/s2 bodies, then the generic ones by stride.
template <class V, class Op>
void fwd_planes(const Pool2d& pl, bool include_pad, const typename V::T* x, void* y, void* idx) {
  const Geom g = make_geom(pl);
  const int64_t planes = pl.n * pl.c;
  if (planes == 0 || g.p == 0 || g.q == 0) return;
  // The vector path needs exact float index lanes and int32 gather offsets (a row shorter than
  // 2^31 elements; only the gather's (W-1) * sw must fit, which that implies).
  const bool vec = index_fits_lanes<typename V::T>(g.r * g.s) && g.w < (int64_t(1) << 31);
  auto rows = fwd_rows<V, Op, 0, 0>;
  if (g.sw == 2 && g.s == 2) {
    rows = fwd_rows<V, Op, 2, 2>;
  } else if (g.sw == 2 && g.s == 3) {
    rows = fwd_rows<V, Op, 3, 2>;
  } else if (g.sw == 2) {
    rows = fwd_rows<V, Op, 0, 2>;
  } else if (g.sw == 1) {
    rows = fwd_rows<V, Op, 0, 1>;
  }
  const Split sp = make_split(planes, g.p, planes * g.h * g.w, pl.nthreads);
  parallel_tasks(sp, [&](int64_t plane, int64_t b) -> int64_t {
    rows(g, include_pad, vec, x + plane * g.h * g.w, Op::out_at(y, idx, plane * g.p * g.q),
         block_begin(g.p, sp.blocks, b), block_begin(g.p, sp.blocks, b + 1));
    return 0;
  });
}

template <typename T>
void max_forward(const Pool2d& pl, const T* x, T* y, void* idx) {
  using V = typename VecOf<T>::type;
  if (pool_index_is_u8(pl)) {
    fwd_planes<V, MaxOp<V, uint8_t>>(pl, false, x, y, idx);
  } else {
    fwd_planes<V, MaxOp<V, int32_t>>(pl, false, x, y, idx);
  }
}

template <typename T>
void avg_forward(const Pool2d& pl, bool count_include_pad, const T* x, T* y) {
  using V = typename VecOf<T>::type;
  fwd_planes<V, AvgOp<V>>(pl, count_include_pad, x, y, nullptr);
}

// ---------------------------------------------------------------------------------------------
// Backward: the terms of one window row p

// Max: window (p, q) gives dy[p, q] to its arg-max position k only.
template <class V, typename I>
struct MaxBwd {
  using T = typename V::T;
  using R = typename V::V;
  struct Plane {
    const T* dy;
    const I* idx;
  };
  const T* dy;  // row p of dy and of the indices
  const I* idx;
  static MaxBwd at(const Plane& pl, const Geom& g, int64_t p) {
    return {pl.dy + p * g.q, pl.idx + p * g.q};
  }
  // Lanes q .. q + n - 1 at window position k.
  template <bool kFull>
  R term(int64_t q, int64_t k, int n) const {
    const R d = ld<V, kFull>(dy + q, n);
    const R kq = load_idx<V>(idx + q, kFull ? V::W : n);
    return V::blend(V::eq(kq, V::set1(static_cast<T>(k))), V::zero(), d);
  }
  R finish(R v) const { return v; }
  T scalar(const Geom&, int64_t q, int64_t k) const {
    return static_cast<int64_t>(idx[q]) == k ? dy[q] : T(0);
  }
};

// Average: window (p, q) gives dy[p, q] / divisor to each of its input pixels. Inside the vector
// column range every window spans S input columns, so the divisor is one number per row.
template <class V>
struct AvgBwd {
  using T = typename V::T;
  using R = typename V::V;
  struct Plane {
    const T* dy;
    bool include_pad;
  };
  const T* dy;   // row p of dy
  int64_t rows;  // input rows in window row p
  bool include_pad;
  T div;  // divisor of the windows of the vector range
  static AvgBwd at(const Plane& pl, const Geom& g, int64_t p) {
    const RowSpan rs = row_span(g, p);
    const int64_t rows = rs.r1 - rs.r0;
    return {pl.dy + p * g.q, rows, pl.include_pad,
            static_cast<T>(pl.include_pad ? g.r * g.s : rows * g.s)};
  }
  template <bool kFull>
  R term(int64_t q, int64_t, int n) const {
    return ld<V, kFull>(dy + q, n);
  }
  R finish(R v) const { return V::div(v, V::set1(div)); }
  T scalar(const Geom& g, int64_t q, int64_t) const {
    const ColSpan cs = col_span(g, q);
    return dy[q] / static_cast<T>(include_pad ? g.r * g.s : rows * (cs.s1 - cs.s0));
  }
};

// dx[ih, iw] for one input column from window row p (r = ih's row in those windows): the sum
// over the windows q that contain iw, scalar.
template <class Op>
typename Op::T bwd_col(const Op& op, const Geom& g, int64_t r, int64_t iw) {
  const int64_t num = iw + g.pw;
  const int64_t q_lo = max64(0, ceil_div(num - g.s + 1, g.sw));
  const int64_t q_hi = min64(g.q - 1, num / g.sw);
  typename Op::T sum = 0;
  for (int64_t q = q_lo; q <= q_hi; ++q) sum += op.scalar(g, q, r * g.s + num - q * g.sw);
  return sum;
}

// sw == 2: 2W input columns from iw0 (cnt of them when not kFull). Even and odd columns each
// take the taps s of their parity, whose windows are q = (iw + pw - s) / 2: a contiguous run
// of q per tap, so dy and the indices come in with plain loads at a shifted q.
template <class V, class Op, int KS, bool kFull>
inline void bwd_vec2(const Op& op, const Geom& g, typename V::T* dxr, int64_t iw0, int cnt,
                     int64_t k0, bool acc) {
  using R = typename V::V;
  constexpr int W = V::W;
  const int64_t S = KS ? KS : g.s;
  const int n_even = kFull ? W : (cnt + 1) / 2, n_odd = kFull ? W : cnt / 2;
  const int64_t parity = (iw0 + g.pw) & 1;
  R even = V::zero(), odd = V::zero();
  for (int64_t s = 0; s < S; ++s) {
    if ((s & 1) == parity) {
      even = V::add(even, op.template term<kFull>((iw0 + g.pw - s) >> 1, k0 + s, n_even));
    } else if (n_odd > 0) {
      odd = V::add(odd, op.template term<kFull>((iw0 + 1 + g.pw - s) >> 1, k0 + s, n_odd));
    }
  }
  even = op.finish(even);
  odd = op.finish(odd);
  if (acc) {
    R e, o;
    if (kFull) {
      V::load2(dxr + iw0, e, o);
    } else {
      V::load2n(dxr + iw0, cnt, e, o);
    }
    even = V::add(even, e);
    odd = V::add(odd, o);
  }
  if (kFull) {
    V::store2(dxr + iw0, even, odd);
  } else {
    V::store2n(dxr + iw0, even, odd, cnt);
  }
}

// sw == 1: W input columns from iw0; tap s reads windows q = iw + pw - s.
template <class V, class Op, int KS, bool kFull>
inline void bwd_vec1(const Op& op, const Geom& g, typename V::T* dxr, int64_t iw0, int cnt,
                     int64_t k0, bool acc) {
  using R = typename V::V;
  const int64_t S = KS ? KS : g.s;
  R sum = V::zero();
  for (int64_t s = 0; s < S; ++s) {
    sum = V::add(sum, op.template term<kFull>(iw0 + g.pw - s, k0 + s, cnt));
  }
  sum = op.finish(sum);
  if (acc) sum = V::add(sum, ld<V, kFull>(dxr + iw0, cnt));
  st<V, kFull>(dxr + iw0, sum, cnt);
}

// Input rows [ha, hb) of one plane. Columns [iv_lo, iv_hi) take the vector path (KSW 1 or 2),
// the others the scalar one. The first window row that reaches a dx row writes it, later ones
// add to it while it is still in L1.
template <class V, class Op, int KS, int KSW>
void bwd_rows(const Geom& g, const typename Op::Plane& plane, int64_t iv_lo, int64_t iv_hi,
              typename V::T* dx, int64_t ha, int64_t hb) {
  using T = typename V::T;
  constexpr int64_t kStep = KSW == 2 ? 2 * V::W : V::W;
  for (int64_t ih = ha; ih < hb; ++ih) {
    T* dxr = dx + ih * g.w;
    const int64_t num = ih + g.ph;
    const int64_t p_lo = max64(0, ceil_div(num - g.r + 1, g.sh));
    const int64_t p_hi = min64(g.p - 1, num / g.sh);
    if (p_lo > p_hi) {  // a row no window reaches
      std::memset(dxr, 0, static_cast<size_t>(g.w) * sizeof(T));
      continue;
    }
    for (int64_t p = p_lo; p <= p_hi; ++p) {
      const Op op = Op::at(plane, g, p);
      const int64_t r = num - p * g.sh;
      const bool acc = p != p_lo;
      for (int64_t iw = 0; iw < iv_lo; ++iw) {
        const T v = bwd_col(op, g, r, iw);
        dxr[iw] = acc ? dxr[iw] + v : v;
      }
      int64_t iw = iv_lo;
      if (KSW == 2) {
        for (; iw + kStep <= iv_hi; iw += kStep) {
          bwd_vec2<V, Op, KS, true>(op, g, dxr, iw, static_cast<int>(kStep), r * g.s, acc);
        }
        if (iw < iv_hi) {
          bwd_vec2<V, Op, KS, false>(op, g, dxr, iw, static_cast<int>(iv_hi - iw), r * g.s, acc);
        }
      } else if (KSW == 1) {
        for (; iw + kStep <= iv_hi; iw += kStep) {
          bwd_vec1<V, Op, KS, true>(op, g, dxr, iw, static_cast<int>(kStep), r * g.s, acc);
        }
        if (iw < iv_hi) {
          bwd_vec1<V, Op, KS, false>(op, g, dxr, iw, static_cast<int>(iv_hi - iw), r * g.s, acc);
        }
      }
      for (iw = iv_hi; iw < g.w; ++iw) {
        const T v = bwd_col(op, g, r, iw);
        dxr[iw] = acc ? dxr[iw] + v : v;
      }
    }
  }
}

// The input columns whose windows all lie in output columns [qv_lo, qv_hi): the windows of iw
// are q = ceil((iw + pw - S + 1) / sw) .. floor((iw + pw) / sw). Empty: returns W, W.
void bwd_vector_columns(const Geom& g, int64_t qv_lo, int64_t qv_hi, int64_t* lo, int64_t* hi) {
  *lo = max64(0, (qv_lo - 1) * g.sw - g.pw + g.s);
  *hi = min64(g.w, qv_hi * g.sw - g.pw);
  if (qv_lo >= qv_hi || *lo >= *hi) *lo = *hi = g.w;
}

// Counts the indices of output rows [pa, pb) that are not a position inside the input of their
// window (out of range, or in the padding).
template <class V, typename I>
int64_t count_bad_indices(const Geom& g, bool vec, const I* idx, int64_t pa, int64_t pb) {
  using T = typename V::T;
  constexpr int W = V::W;
  const int64_t qv_lo = vec ? g.qi_lo : g.q, qv_hi = vec ? g.qi_hi : g.q;
  int64_t bad = 0;
  for (int64_t p = pa; p < pb; ++p) {
    const RowSpan rs = row_span(g, p);
    const I* ir = idx + p * g.q;
    auto scalar = [&](int64_t q) {
      const int64_t k = static_cast<int64_t>(ir[q]);
      if (k < 0 || k >= g.r * g.s) return 1;
      const ColSpan cs = col_span(g, q);
      const int64_t r = k / g.s, s = k % g.s;
      return r < rs.r0 || r >= rs.r1 || s < cs.s0 || s >= cs.s1 ? 1 : 0;
    };
    for (int64_t q = 0; q < qv_lo; ++q) bad += scalar(q);
    // Interior columns: every s is inside, so k is valid iff r0 * S <= k < r1 * S.
    const typename V::V lo = V::set1(static_cast<T>(rs.r0 * g.s));
    const typename V::V hi = V::set1(static_cast<T>(rs.r1 * g.s));
    for (int64_t q = qv_lo; q < qv_hi; q += W) {
      const int n = static_cast<int>(min64(W, qv_hi - q));
      bad += V::count_outside(load_idx<V>(ir + q, n), lo, hi, n);
    }
    for (int64_t q = qv_hi; q < g.q; ++q) bad += scalar(q);
  }
  return bad;
}

// All planes of a backward pass; Op::Plane of plane i is plane_at(i). Picks the unrolled
// 2x2/s2 and 3x3/s2 bodies, then the generic ones by stride (sw > 2: scalar columns).
template <class V, class Op, class PlaneAt, class Extra>
int64_t bwd_planes(const Pool2d& pl, int64_t qv_lo, int64_t qv_hi, bool vec, typename V::T* dx,
                   const PlaneAt& plane_at, const Extra& extra) {
  const Geom g = make_geom(pl);
  const int64_t planes = pl.n * pl.c;
  if (planes == 0 || g.h == 0 || g.w == 0) return 0;
  int64_t iv_lo = g.w, iv_hi = g.w;
  if (vec && (g.sw == 1 || g.sw == 2)) bwd_vector_columns(g, qv_lo, qv_hi, &iv_lo, &iv_hi);
  auto rows = bwd_rows<V, Op, 0, 0>;
  if (g.sw == 2 && g.s == 2) {
    rows = bwd_rows<V, Op, 2, 2>;
  } else if (g.sw == 2 && g.s == 3) {
    rows = bwd_rows<V, Op, 3, 2>;
  } else if (g.sw == 2) {
    rows = bwd_rows<V, Op, 0, 2>;
  } else if (g.sw == 1) {
    rows = bwd_rows<V, Op, 0, 1>;
  }
  const Split sp = make_split(planes, g.h, planes * g.h * g.w, pl.nthreads);
  return parallel_tasks(sp, [&](int64_t plane, int64_t b) -> int64_t {
    rows(g, plane_at(plane), iv_lo, iv_hi, dx + plane * g.h * g.w, block_begin(g.h, sp.blocks, b),
         block_begin(g.h, sp.blocks, b + 1));
    return extra(plane, block_begin(g.p, sp.blocks, b), block_begin(g.p, sp.blocks, b + 1));
  });
}

template <typename T, typename I>
int64_t max_backward_t(const Pool2d& pl, const T* dy, const I* idx, T* dx) {
  using V = typename VecOf<T>::type;
  using Op = MaxBwd<V, I>;
  const Geom g = make_geom(pl);
  const bool vec = index_fits_lanes<T>(g.r * g.s);
  const int64_t plane_out = g.p * g.q;
  return bwd_planes<V, Op>(
      pl, 0, g.q, vec, dx,
      [&](int64_t i) { return typename Op::Plane{dy + i * plane_out, idx + i * plane_out}; },
      [&](int64_t i, int64_t pa, int64_t pb) {
        return count_bad_indices<V>(g, vec, idx + i * plane_out, pa, pb);
      });
}

template <typename T>
int64_t max_backward(const Pool2d& pl, const T* dy, const void* idx, T* dx) {
  if (pool_index_is_u8(pl)) return max_backward_t(pl, dy, static_cast<const uint8_t*>(idx), dx);
  return max_backward_t(pl, dy, static_cast<const int32_t*>(idx), dx);
}

template <typename T>
void avg_backward(const Pool2d& pl, bool count_include_pad, const T* dy, T* dx) {
  using V = typename VecOf<T>::type;
  using Op = AvgBwd<V>;
  const Geom g = make_geom(pl);
  const int64_t plane_out = g.p * g.q;
  // Without the padding in the divisor, only windows that span S input columns share a divisor.
  const int64_t qv_lo = count_include_pad ? 0 : g.qi_lo;
  const int64_t qv_hi = count_include_pad ? g.q : g.qi_hi;
  bwd_planes<V, Op>(
      pl, qv_lo, qv_hi, true, dx,
      [&](int64_t i) { return typename Op::Plane{dy + i * plane_out, count_include_pad}; },
      [](int64_t, int64_t, int64_t) { return int64_t(0); });
}

}  // namespace

void register_pool(KernelTable* table) {
  table->spool.max_forward = &max_forward<float>;
  table->dpool.max_forward = &max_forward<double>;
  table->spool.avg_forward = &avg_forward<float>;
  table->dpool.avg_forward = &avg_forward<double>;
  table->spool.max_backward = &max_backward<float>;
  table->dpool.max_backward = &max_backward<double>;
  table->spool.avg_backward = &avg_backward<float>;
  table->dpool.avg_backward = &avg_backward<double>;
}

}  // namespace simdnn::SIMDNN_ISA_NS
