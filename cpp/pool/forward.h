// Pooling forward loops, generic over the window reduction Op (MaxOp in max.h, AvgOp in avg.h).
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
#pragma once

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>

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

}  // namespace
}  // namespace simdnn::SIMDNN_ISA_NS
