// The 2-D pooling kernels of one ISA (max and average, forward and backward): compiled once per
// ISA with that ISA's flags and -DSIMDNN_ISA_NS=<isa>, written once over the vector traits
// (cpp/simd/simd_<isa>.h; the scalar ISA is the same code on 1-lane "vectors"). Everything lives
// in an unnamed namespace inside the ISA's namespace, so nothing compiled with wide-ISA flags can
// be merged by the linker into code that runs on a narrower CPU.
//
// Shape legend (every kernel): x (N, C, H, W), window R x S, stride sh x sw, padding ph x pw,
// y (N, C, P, Q) with P = (H + 2*ph - R) / sh + 1, Q = (W + 2*pw - S) / sw + 1. All tensors are
// C-contiguous; a "plane" is one (n, c) image of H x W (or P x Q) elements.
//
// Threads take whole planes, or row blocks of planes when there are too few planes to share.
//
// Forward: each output row is vectorised along q, W outputs per vector. The window rows are
// clipped to the input once per output row, so padding rows cost nothing. Window columns: a block
// of W outputs whose windows all lie inside the input columns is "clean" (plain loads); a block
// with windows that reach into the padding is an "edge" block: its loads are ranged (the lanes
// outside the input get -inf for max, 0 for average) and the store fixes up what depends on the
// window's in-bounds part. Loads per window tap:
//   sw == 1   a plain vector load;
//   sw == 2   a deinterleaving load of 2W contiguous inputs: the even lanes are tap s, the odd
//             lanes tap s + 1 of the same W windows (no gathers: 2 loads + 2 permutes, 2 taps);
//   otherwise a strided gather for the clean blocks and a scalar loop for the few edge windows
//             (rare strides).
// 2x2/s2 and 3x3/s2 windows (the ones CNNs use) get the tap loop unrolled at compile time.
// Measured on a 64x64x32x32 float32 max pool 3x3/s2 padding 1 on one AVX-512 core: scalar edge
// windows (1 per row) took as long as the whole vector body (2.3 ms against 1.2 ms without
// padding); as ranged loads they cost what a clean block costs.
//
// Backward, written as a gather over dx so that every dx element is written exactly once, with
// no scatter and no atomics, and the same sums in the same order whatever the thread count:
//   dx[ih, iw] = sum over the windows (p, q) that contain (ih, iw) of dy[p, q] * weight,
// where weight is [indices[p, q] == r*S + s] for max pooling ((r, s) = (ih, iw)'s position in the
// window) and 1 / divisor[p, q] for average pooling. The windows containing a row are a short
// run of p (ceil(R / sh) at most), those containing a column a short run of q; with sw == 2 the
// even and odd input columns each see a fixed set of taps whose q run is contiguous, so dy and the
// indices are read with plain vector loads at a shifted q and the two halves are interleaved on
// store. When stride >= kernel (windows do not overlap, e.g. 2x2/s2) each dx element gets at most
// one term and each row at most one window row: dx is written in one pass, pixels outside every
// window get 0. Overlapping windows (3x3/s2) add their 2-4 terms in registers (columns) and into
// the dx row just written, still in L1 (rows), plane by plane. Max pooling counts the indices
// that matched a position as it goes: every valid index matches exactly once, so the bad ones
// (out of range, or in the padding) are the rest, without a separate validation pass.
#include "pool/pool.h"

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/int_math.h"
#include "common/parallel.h"
#include "registry.h"
#include "simd/simd.h"

#ifndef SIMDNN_ISA_NS
#error "compile with -DSIMDNN_ISA_NS=<isa>"
#endif

namespace simdnn::SIMDNN_ISA_NS {

namespace {

// v clamped to [lo, hi], as an int (lane counts and ranges).
int clamp_int(int64_t v, int lo, int hi) {
  return static_cast<int>(v < lo ? lo : (v > hi ? hi : v));
}

template <typename T>
T neg_inf() {
  return -static_cast<T>(HUGE_VAL);
}

// p + k for a ranged load: the result may point before the row (a window reaching into the left
// padding); the ranged loads read only elements that are inside. Integer arithmetic, because
// forming an out-of-array pointer is undefined in C++ even when nothing is read through it.
template <typename P>
P* shifted(P* p, int64_t k) {
  return reinterpret_cast<P*>(reinterpret_cast<uintptr_t>(p) +
                              static_cast<uintptr_t>(k) * sizeof(P));
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
  T* t = static_cast<T*>(
      workspace(WorkspaceSlot::op_scratch, static_cast<size_t>(2 * g.q) * sizeof(T)));
  for (int64_t q = 0; q < g.q; ++q) {
    const ColSpan cs = col_span(g, q);
    t[q] = static_cast<T>(cs.s0);
    t[g.q + q] = static_cast<T>(cs.s1 - cs.s0);
  }
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
  if (sp.nthreads <= 1) {
    int64_t total = 0;
    for (int64_t t = 0; t < sp.tasks; ++t) total += f(t / sp.blocks, t % sp.blocks);
    return total;
  }
  std::atomic<int64_t> total{0};
  parallel_ranges(sp.tasks, 1, 1, sp.nthreads, [&](int64_t t0, int64_t t1) {
    int64_t sum = 0;
    for (int64_t t = t0; t < t1; ++t) sum += f(t / sp.blocks, t % sp.blocks);
    total.fetch_add(sum, std::memory_order_relaxed);
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

// ---------------------------------------------------------------------------------------------
// Forward: the window reductions

// What a store needs to know about the row and the columns of its windows.
template <typename T>
struct RowCtx {
  RowSpan rs;
  int64_t s;         // S
  bool include_pad;  // average: padding counts in the divisor
  T div;             // average: divisor of windows spanning S input columns
  ColTables<T> tab;
};

// Max: best value and its window position; ties keep the first, a NaN always takes over (the
// update rule of PyTorch's CPU kernel, so the last NaN's position wins).
template <class V, typename I>
struct MaxOp {
  using T = typename V::T;
  using R = typename V::V;
  static constexpr bool kIndex = true;
  struct State {
    R best, idx;
  };
  static T fill() { return neg_inf<T>(); }  // padding
  // The first tap needs no compare: with best = -inf it would be taken unless it is -inf, and
  // then the index is the first position anyway (edge blocks fix that up on store).
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
  // Outputs q0 .. q0 + n - 1 of the row at o + off. In an edge block a window whose in-bounds
  // inputs are all -inf must report its first in-bounds position, not the padding tap where the
  // first-tap shortcut left the index.
  static void store(const Out& o, int64_t off, const State& st, const RowCtx<T>& c, int64_t q0,
                    int n, bool edge) {
    R idx = st.idx;
    if (edge) {
      const R first_in =
          V::add(V::loadr(c.tab.s0 + q0, 0, n, T(0)), V::set1(static_cast<T>(c.rs.r0 * c.s)));
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

// Average: the sum of the in-bounds taps (padding adds 0) over the divisor.
template <class V>
struct AvgOp {
  using T = typename V::T;
  using R = typename V::V;
  static constexpr bool kIndex = false;
  struct State {
    R sum;
  };
  static T fill() { return T(0); }
  static void first(State& st, R v, int64_t) { st.sum = v; }
  static void next(State& st, R v, int64_t) { st.sum = V::add(st.sum, v); }
  struct Out {
    T* y;
  };
  static Out out_at(void* y, void*, int64_t off) { return {static_cast<T*>(y) + off}; }
  // Edge blocks without the padding in the divisor divide each window by its own column count.
  static void store(const Out& o, int64_t off, const State& st, const RowCtx<T>& c, int64_t q0,
                    int n, bool edge) {
    R div = V::set1(c.div);
    if (edge && !c.include_pad) {
      div =
          V::mul(V::loadr(c.tab.cols + q0, 0, n, T(1)), V::set1(static_cast<T>(c.rs.r1 - c.rs.r0)));
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

// The taps of one window row for a block of n outputs (n == W for kFull). row: the input row,
// column 0; c0: the input column of tap 0 of the block's first window (negative in a left edge
// block); k0 = r * S. kFirst: the window's first row, whose first tap initialises the state.
template <class V, class Op, int KS, int KSW, int kMode, bool kFirst>
inline void fwd_row_taps(typename Op::State& st, const typename V::T* row, int64_t c0,
                         const Geom& g, int64_t k0, int n) {
  constexpr int W = V::W;
  using R = typename V::V;
  const int64_t S = KS ? KS : g.s;
  if (KSW == 2) {
    // Tap pairs (s, s + 1) from one deinterleaving load; a last unpaired tap reads 2n - 1
    // elements so that it never touches the element after the last window.
    for (int64_t s = 0; s < S; s += 2) {
      const bool pair = s + 1 < S;
      const int cnt = (kMode == kFull ? 2 * W : 2 * n) - (pair ? 0 : 1);
      const int64_t b = c0 + s;
      R e, o;
      if (kMode == kFull && pair) {
        V::load2(row + b, e, o);
      } else if (kMode != kEdge) {
        V::load2n(row + b, cnt, e, o);
      } else {
        V::load2r(shifted(row, b), clamp_int(-b, 0, cnt), clamp_int(g.w - b, 0, cnt), Op::fill(), e,
                  o);
      }
      if (kFirst && s == 0) {
        Op::first(st, e, k0);
      } else {
        Op::next(st, e, k0 + s);
      }
      if (pair) Op::next(st, o, k0 + s + 1);
    }
  } else {
    for (int64_t s = 0; s < S; ++s) {
      const int64_t b = c0 + s;
      R v;
      if (KSW == 1) {
        v = kMode == kEdge ? V::loadr(shifted(row, b), clamp_int(-b, 0, n),
                                      clamp_int(g.w - b, 0, n), Op::fill())
                           : load_mode<V, kMode>(row + b, 0, n, Op::fill());
      } else {
        v = V::gathern(row + b, static_cast<int>(g.sw), n);  // clean blocks only
      }
      if (kFirst && s == 0) {
        Op::first(st, v, k0);
      } else {
        Op::next(st, v, k0 + s);
      }
    }
  }
}

// One block of n outputs starting at column q0 of output row p (all rows of its windows).
template <class V, class Op, int KS, int KSW, int kMode>
inline void fwd_block(const Geom& g, const RowCtx<typename V::T>& c, const typename V::T* row0,
                      const typename Op::Out& out, int64_t off, int64_t q0, int n) {
  typename Op::State st{};
  const int64_t c0 = q0 * g.sw - g.pw;
  fwd_row_taps<V, Op, KS, KSW, kMode, true>(st, row0, c0, g, c.rs.r0 * g.s, n);
  for (int64_t r = c.rs.r0 + 1; r < c.rs.r1; ++r) {
    fwd_row_taps<V, Op, KS, KSW, kMode, false>(st, row0 + (r - c.rs.r0) * g.w, c0, g, r * g.s, n);
  }
  Op::store(out, off + q0, st, c, q0, n, kMode == kEdge);
}

// Output rows [pa, pb) of one plane. KS: window width when fixed at compile time (0: g.s); KSW:
// 1, 2, or 0 for any stride (gathers). vec: whether the vector path may be used at all.
template <class V, class Op, int KS, int KSW>
void fwd_rows(const Geom& g, bool include_pad, bool vec, const ColTables<typename V::T>& tab,
              const typename V::T* x, const typename Op::Out& out, int64_t pa, int64_t pb) {
  using T = typename V::T;
  constexpr int W = V::W;
  // Vector blocks cover [va, vb): every column when edge blocks can be vectorised (sw 1 or 2),
  // the interior columns otherwise; the rest are scalar windows.
  int64_t va = g.q, vb = g.q;
  if (vec) {
    va = KSW ? 0 : g.qi_lo;
    vb = KSW ? g.q : g.qi_hi;
  }
  for (int64_t p = pa; p < pb; ++p) {
    RowCtx<T> c{row_span(g, p), g.s, include_pad, T(0), tab};
    c.div = static_cast<T>(include_pad ? g.r * g.s : (c.rs.r1 - c.rs.r0) * g.s);
    const T* row0 = x + (c.rs.ih0 + c.rs.r0) * g.w;  // first in-bounds row of the windows
    const int64_t off = p * g.q;
    for (int64_t q = 0; q < va; ++q) {
      Op::window(g, c.rs, col_span(g, q), row0, include_pad, out, off + q);
    }
    for (int64_t q0 = va; q0 < vb; q0 += W) {
      const int n = static_cast<int>(min64(W, vb - q0));
      if (q0 < g.qi_lo || q0 + n > g.qi_hi) {
        fwd_block<V, Op, KS, KSW, kEdge>(g, c, row0, out, off, q0, n);
      } else if (n == W) {
        fwd_block<V, Op, KS, KSW, kFull>(g, c, row0, out, off, q0, n);
      } else {
        fwd_block<V, Op, KS, KSW, kTail>(g, c, row0, out, off, q0, n);
      }
    }
    for (int64_t q = vb; q < g.q; ++q) {
      Op::window(g, c.rs, col_span(g, q), row0, include_pad, out, off + q);
    }
  }
}

// All planes: picks the unrolled 2x2/s2 and 3x3/s2 bodies, then the generic ones by stride.
template <class V, class Op>
void fwd_planes(const Pool2d& pl, bool include_pad, const typename V::T* x, void* y, void* idx) {
  using T = typename V::T;
  const Geom g = make_geom(pl);
  const int64_t planes = pl.n * pl.c;
  if (planes == 0 || g.p == 0 || g.q == 0) return;
  // The vector path needs exact float index lanes (max pooling) and int32 gather offsets (which a
  // row shorter than 2^31 elements implies).
  const bool vec = (!Op::kIndex || index_fits_lanes<T>(g.r * g.s)) && g.w < (int64_t(1) << 31);
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
  const ColTables<T> tab = make_col_tables<T>(g);
  const Split sp = make_split(planes, g.p, planes * g.h * g.w, pl.nthreads);
  parallel_tasks(sp, [&](int64_t plane, int64_t b) -> int64_t {
    rows(g, include_pad, vec, tab, x + plane * g.h * g.w, Op::out_at(y, idx, plane * g.p * g.q),
         block_begin(g.p, sp.blocks, b), block_begin(g.p, sp.blocks, b + 1));
    return 0;
  });
}

// y, indices (N, C, P, Q) = max over each R x S window of x (N, C, H, W); padding is -inf.
template <typename T>
void max_forward(const Pool2d& pl, const T* x, T* y, void* idx) {
  using V = typename VecOf<T>::type;
  if (pool_index_is_u8(pl)) {
    fwd_planes<V, MaxOp<V, uint8_t>>(pl, false, x, y, idx);
  } else {
    fwd_planes<V, MaxOp<V, int32_t>>(pl, false, x, y, idx);
  }
}

// y (N, C, P, Q) = mean over each R x S window of x (N, C, H, W); padding adds 0 and counts in
// the divisor when count_include_pad.
template <typename T>
void avg_forward(const Pool2d& pl, bool count_include_pad, const T* x, T* y) {
  using V = typename VecOf<T>::type;
  fwd_planes<V, AvgOp<V>>(pl, count_include_pad, x, y, nullptr);
}

// ---------------------------------------------------------------------------------------------
// Backward: the terms of one window row p

// Max: window (p, q) gives dy[p, q] to its arg-max position k only; the indices are compared as
// integers (no conversion), and the matches are counted.
template <class V, typename I>
struct MaxBwd {
  using T = typename V::T;
  using R = typename V::V;
  // The terms of all window rows go straight into one sum (no per-row divisor).
  static constexpr bool kDirect = true;
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
  // The term of window q at position k, scalar; counts a match.
  T scalar(const Geom&, int64_t q, int64_t k, int64_t* matches) const {
    if (static_cast<int64_t>(idx[q]) != k) return T(0);
    ++*matches;
    return dy[q];
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
  T scalar(const Geom& g, int64_t q, int64_t, int64_t*) const {
    const ColSpan cs = col_span(g, q);
    return dy[q] / (include_pad ? static_cast<T>(g.r * g.s) : rows * static_cast<T>(cs.s1 - cs.s0));
  }
};

// The window rows that contain input row ih: p = p_top, p_top - 1, ... with r = r_top,
// r_top + sh, ... while r < R (and p >= 0), skipping p >= P. Advanced row by row without a
// division.
struct WindowRows {
  int64_t p_top, r_top;
  WindowRows(const Geom& g, int64_t ih) : p_top((ih + g.ph) / g.sh), r_top((ih + g.ph) % g.sh) {}
  void next_row(const Geom& g) {
    if (++r_top == g.sh) {
      r_top = 0;
      ++p_top;
    }
  }
  // f(p, r) for each window row, bottom-up; returns how many.
  template <class F>
  int for_each(const Geom& g, const F& f) const {
    int count = 0;
    if (r_top >= g.r) return 0;
    for (int64_t p = p_top, r = r_top; p >= 0; --p, r += g.sh) {
      if (p < g.p) {
        f(p, r);
        ++count;
      }
      if (g.r - r <= g.sh) break;  // the next r would be >= R
    }
    return count;
  }
};

// The terms of tap s of row p (k = r*S + s) for n lanes of windows from q, into acc; an edge
// block excludes the windows outside [0, Q).
template <class V, class Op, int kMode>
inline int bwd_add(const Op& op, typename V::V& acc, const Geom& g, int64_t q, int64_t k, int n) {
  if (kMode == kEdge) {
    const int lo = clamp_int(-q, 0, n), hi = clamp_int(g.q - q, 0, n);
    return lo < hi ? op.template add<kEdge>(acc, q, k, lo, hi) : 0;
  }
  return op.template add<kMode>(acc, q, k, 0, n);
}

// One block of cnt dx columns from iw0 (kStep of them for kFull) of input row ih, from all the
// window rows that contain it, summed in registers and stored once. Returns the index matches.
//   sw == 2: even and odd columns each take the taps s of their parity, whose windows are
//            q = (iw + pw - s) / 2: a contiguous run of q per tap, so dy and the indices come in
//            with plain loads at a shifted q; the halves are interleaved on store.
//   sw == 1: tap s reads windows q = iw + pw - s.
template <class V, class Op, int KS, int KSW, int kMode>
inline int64_t bwd_block(const typename Op::Plane& plane, const Geom& g, const WindowRows& wr,
                         typename V::T* dxr, int64_t iw0, int cnt) {
  using R = typename V::V;
  constexpr int W = V::W;
  const int64_t S = KS ? KS : g.s;
  R even = V::zero(), odd = V::zero();
  int64_t found = 0;
  if (KSW == 2) {
    const int n_even = kMode == kFull ? W : (cnt + 1) / 2, n_odd = kMode == kFull ? W : cnt / 2;
    const int64_t parity = (iw0 + g.pw) & 1;
    wr.for_each(g, [&](int64_t p, int64_t r) {
      const Op op = Op::at(plane, g, p);
      R e = V::zero(), o = V::zero();
      R& ea = Op::kDirect ? even : e;
      R& oa = Op::kDirect ? odd : o;
      for (int64_t s = 0; s < S; ++s) {
        if ((s & 1) == parity) {
          found += bwd_add<V, Op, kMode>(op, ea, g, (iw0 + g.pw - s) / 2, r * S + s, n_even);
        } else if (n_odd > 0) {
          found += bwd_add<V, Op, kMode>(op, oa, g, (iw0 + 1 + g.pw - s) / 2, r * S + s, n_odd);
        }
      }
      if (!Op::kDirect) {
        even = V::add(even, op.template finish<kMode>(e));
        odd = V::add(odd, op.template finish<kMode>(o));
      }
    });
    if (kMode == kFull) {
      V::store2(dxr + iw0, even, odd);
    } else {
      V::store2n(dxr + iw0, even, odd, cnt);
    }
  } else {
    wr.for_each(g, [&](int64_t p, int64_t r) {
      const Op op = Op::at(plane, g, p);
      R e = V::zero();
      R& ea = Op::kDirect ? even : e;
      for (int64_t s = 0; s < S; ++s) {
        found += bwd_add<V, Op, kMode>(op, ea, g, iw0 + g.pw - s, r * S + s, cnt);
      }
      if (!Op::kDirect) even = V::add(even, op.template finish<kMode>(e));
    });
    store_n<V>(dxr + iw0, even, cnt);
  }
  return found;
}

// dx[ih, iw] for one input column, scalar: the windows q that contain iw, of every window row.
template <class Op>
typename Op::T bwd_col(const typename Op::Plane& plane, const Geom& g, const WindowRows& wr,
                       int64_t iw, int64_t* matches) {
  const int64_t num = iw + g.pw;
  const int64_t q_lo = max64(0, ceil_div(num - g.s + 1, g.sw));
  const int64_t q_hi = min64(g.q - 1, num / g.sw);
  typename Op::T sum = 0;
  wr.for_each(g, [&](int64_t p, int64_t r) {
    const Op op = Op::at(plane, g, p);
    for (int64_t q = q_lo; q <= q_hi; ++q) {
      sum += op.scalar(g, q, r * g.s + num - q * g.sw, matches);
    }
  });
  return sum;
}

// Input rows [ha, hb) of one plane. With KSW 1 or 2 (and vec) every column is in a vector block,
// clean inside [iv_lo, iv_hi), edge outside; otherwise all columns are scalar. Returns the
// number of index matches (max pooling).
template <class V, class Op, int KS, int KSW>
int64_t bwd_rows(const Geom& g, const typename Op::Plane& plane, bool vec, int64_t iv_lo,
                 int64_t iv_hi, typename V::T* dx, int64_t ha, int64_t hb) {
  using T = typename V::T;
  constexpr int64_t kStep = KSW == 2 ? 2 * V::W : V::W;
  const int64_t vw = vec && KSW ? g.w : 0;  // columns [0, vw) in vector blocks
  int64_t matches = 0;
  WindowRows wr(g, ha);
  for (int64_t ih = ha; ih < hb; ++ih, wr.next_row(g)) {
    T* dxr = dx + ih * g.w;
    if (wr.for_each(g, [](int64_t, int64_t) {}) == 0) {  // a row no window reaches
      std::memset(dxr, 0, static_cast<size_t>(g.w) * sizeof(T));
      continue;
    }
    for (int64_t iw0 = 0; iw0 < vw; iw0 += kStep) {
      const int cnt = static_cast<int>(min64(kStep, vw - iw0));
      if (iw0 < iv_lo || iw0 + cnt > iv_hi) {
        matches += bwd_block<V, Op, KS, KSW, kEdge>(plane, g, wr, dxr, iw0, cnt);
      } else if (cnt == kStep) {
        matches += bwd_block<V, Op, KS, KSW, kFull>(plane, g, wr, dxr, iw0, cnt);
      } else {
        matches += bwd_block<V, Op, KS, KSW, kTail>(plane, g, wr, dxr, iw0, cnt);
      }
    }
    for (int64_t iw = vw; iw < g.w; ++iw) dxr[iw] = bwd_col<Op>(plane, g, wr, iw, &matches);
  }
  return matches;
}

// The input columns whose windows all lie in output columns [qv_lo, qv_hi): the windows of iw
// are q = ceil((iw + pw - S + 1) / sw) .. floor((iw + pw) / sw). Empty: 0, 0.
void clean_columns(const Geom& g, int64_t qv_lo, int64_t qv_hi, int64_t* lo, int64_t* hi) {
  *lo = max64(0, (qv_lo - 1) * g.sw - g.pw + g.s);
  *hi = min64(g.w, qv_hi * g.sw - g.pw);
  if (qv_lo >= qv_hi || *lo >= *hi) *lo = *hi = 0;
}

// All planes of a backward pass; returns the index matches. Picks the unrolled 2x2/s2 and 3x3/s2
// bodies, then the generic ones by stride (sw > 2: scalar columns).
template <class V, class Op>
int64_t bwd_planes(const Pool2d& pl, const typename Op::Plane& plane0, int64_t qv_lo, int64_t qv_hi,
                   bool vec, typename V::T* dx) {
  const Geom g = make_geom(pl);
  const int64_t planes = pl.n * pl.c;
  if (planes == 0) return 0;
  int64_t iv_lo = 0, iv_hi = 0;
  clean_columns(g, qv_lo, qv_hi, &iv_lo, &iv_hi);
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
  const int64_t plane_out = g.p * g.q;
  const Split sp = make_split(planes, g.h, planes * g.h * g.w, pl.nthreads);
  return parallel_tasks(sp, [&](int64_t i, int64_t b) -> int64_t {
    return rows(g, plane0.at_offset(i * plane_out), vec, iv_lo, iv_hi, dx + i * g.h * g.w,
                block_begin(g.h, sp.blocks, b), block_begin(g.h, sp.blocks, b + 1));
  });
}

// dx (N, C, H, W) from dy and indices (N, C, P, Q); returns how many indices are bad.
template <typename T, typename I>
int64_t max_backward_t(const Pool2d& pl, const T* dy, const I* idx, T* dx) {
  using V = typename VecOf<T>::type;
  const Geom g = make_geom(pl);
  const typename MaxBwd<V, I>::Plane plane{dy, idx};
  const int64_t matches = bwd_planes<V, MaxBwd<V, I>>(pl, plane, 0, g.q, true, dx);
  return pl.n * pl.c * g.p * g.q - matches;
}

template <typename T>
int64_t max_backward(const Pool2d& pl, const T* dy, const void* idx, T* dx) {
  if (pool_index_is_u8(pl)) return max_backward_t(pl, dy, static_cast<const uint8_t*>(idx), dx);
  return max_backward_t(pl, dy, static_cast<const int32_t*>(idx), dx);
}

// dx (N, C, H, W) from dy (N, C, P, Q): each window's dy / divisor to each of its input pixels.
template <typename T>
void avg_backward(const Pool2d& pl, bool count_include_pad, const T* dy, T* dx) {
  using V = typename VecOf<T>::type;
  const Geom g = make_geom(pl);
  const typename AvgBwd<V>::Plane plane{dy, count_include_pad, make_col_tables<T>(g)};
  // Without the padding in the divisor, clean blocks hold only windows spanning S columns.
  bwd_planes<V, AvgBwd<V>>(pl, plane, count_include_pad ? 0 : g.qi_lo,
                           count_include_pad ? g.q : g.qi_hi, true, dx);
}

}  // namespace

SIMDNN_REGISTER_OP(max_pool_forward, max_forward)
SIMDNN_REGISTER_OP(max_pool_backward, max_backward)
SIMDNN_REGISTER_OP(avg_pool_forward, avg_forward)
SIMDNN_REGISTER_OP(avg_pool_backward, avg_backward)

}  // namespace simdnn::SIMDNN_ISA_NS
