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
//   sw == 3   a load of 3W contiguous inputs deinterleaved by 3: taps s, s + 1 and s + 2 of the
//             same W windows (3 loads; on AVX2 2 blends and a permute per tap);
//   otherwise (sw > 3) a strided gather for the whole clean blocks of max pooling, scalar windows
//             for the rest and for average pooling (fwd_rows says why).
// 2x2/s2 and 3x3/s2 windows (the ones CNNs use) get the tap loop unrolled at compile time.
// Measured on a 64x64x32x32 float32 max pool 3x3/s2 padding 1 on one AVX-512 core: scalar edge
// windows (1 per row) took as long as the whole vector body (2.3 ms against 1.2 ms without
// padding); as ranged loads they cost what a clean block costs.
#pragma once

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
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

// The taps of one window row for a block of n outputs (n == W for kFull). row: the input row,
// column 0; c0: the input column of tap 0 of the block's first window (negative in a left edge
// block); k0 = r * S. kFirst: the window's first row, whose first tap initialises the state.
template <class V, class Op, int KS, int KSW, int kMode, bool kFirst, bool kPad>
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
      if (kPad || (kMode == kFull && pair)) {
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
  } else if (KSW == 3) {
    // Tap triples (s, s + 1, s + 2) from one load of 3W elements, deinterleaved by 3; a last
    // partial triple reads 3W - 1 or 3W - 2 of them, never past the last window's last tap.
    for (int64_t s = 0; s < S; s += 3) {
      const int taps = static_cast<int>(min64(3, S - s));
      const int cnt = (kMode == kFull ? 3 * W : 3 * n) - (3 - taps);
      const int64_t b = c0 + s;
      R v[3];
      if (kPad || (kMode == kFull && taps == 3)) {
        load3<V>(row + b, v[0], v[1], v[2]);
      } else if (kMode != kEdge) {
        load3n<V>(row + b, cnt, v[0], v[1], v[2]);
      } else {
        load3r<V>(shifted(row, b), clamp_int(-b, 0, cnt), clamp_int(g.w - b, 0, cnt), Op::fill(),
                  v[0], v[1], v[2]);
      }
      for (int t = 0; t < taps; ++t) {
        if (kFirst && s == 0 && t == 0) {
          Op::first(st, v[0], k0);
        } else {
          Op::next(st, v[t], k0 + s + t);
        }
      }
    }
  } else {
    for (int64_t s = 0; s < S; ++s) {
      const int64_t b = c0 + s;
      R v;
      if (KSW == 1 && kPad) {
        v = V::load(row + b);
      } else if (KSW == 1) {
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
// kPad: the rows are padded copies (row stride ld) whose every load is a plain vector load.
template <class V, class Op, int KS, int KSW, int kMode, bool kPad>
inline void fwd_block(const Geom& g, const RowCtx<typename V::T>& c, const typename V::T* row0,
                      int64_t ld, const typename Op::Out& out, int64_t off, int64_t q0, int n) {
  typename Op::State st{};
  const int64_t c0 = q0 * g.sw - g.pw;
  fwd_row_taps<V, Op, KS, KSW, kMode, true, kPad>(st, row0, c0, g, c.rs.r0 * g.s, n);
  for (int64_t r = c.rs.r0 + 1; r < c.rs.r1; ++r) {
    fwd_row_taps<V, Op, KS, KSW, kMode, false, kPad>(st, row0 + (r - c.rs.r0) * ld, c0, g, r * g.s,
                                                     n);
  }
  Op::store(out, off + q0, st, c, q0, n, kMode == kEdge);
}

// Input rows copied into padded scratch rows: fill, the row, fill, with input column c at c + pw
// and slack for a full 2W-element load from the last block. Blocks that reach the padding or end
// in a partial vector then load like clean ones. Why: on AMD Zen 5 the ranged (masked) loads of
// those blocks cost about 5x a plain load when the input streams from memory (in L1 they cost
// the same). Measured on one core, 64x64 planes, float32, max pool:
//   3x3/s2 padding 1 on 32x32 (every block an edge block): 4.8-5.1 ms ranged, 1.8-2.0 ms copied;
//   3x3/s2 on 32x32 (15 outputs: one partial block per row): 3.1-3.3 ms, 1.7 ms;
//   3x3/s2 padding 1 on 34x34: 5.4-6.0 ms, 2.8-3.0 ms;
//   3x3/s2 on 33x33 (every block full and inside): 1.0 ms direct, 1.9 ms copied, so such rows
//   are not copied.
// AVX2 (blend-based ranged loads) gave 2.65 ms on the first shape before. The rows of a chunk
// of output rows are copied at once, each input row once per chunk.
struct PadRows {
  int64_t ld;     // elements per padded row
  int64_t chunk;  // input rows padded at a time (about 24 KiB: L1 on every AVX-512 part)
};

template <typename T>
PadRows pad_rows_geometry(const Geom& g, int w_lanes) {
  PadRows pr;
  // A 2W-element load (3W at column stride 3) from the last block.
  pr.ld = round_up((g.q - 1) * g.sw + g.s + (g.sw == 3 ? 3 : 2) * w_lanes, 16);
  pr.chunk = max64(g.r, (int64_t(24) << 10) / (pr.ld * static_cast<int64_t>(sizeof(T))));
  return pr;
}

// Row `row` into dst: the left padding, the input, then fill to the end of the padded row (the
// right padding that windows reach, and the slack that only lanes past a block's end read, so
// that no lane reads uninitialised scratch). Inline vectors and a scalar tail: a memcpy call per
// row cost about as much as the pooling of that row (33-element rows); filling a whole chunk of
// scratch per plane instead of per row cost 2 ms of the 64x64x32x32 pool.
template <class V>
void pad_row(const typename V::T* row, const Geom& g, int64_t ld, typename V::T fill,
             typename V::T* dst) {
  using T = typename V::T;
  const int64_t left = min64(g.pw, ld), mid = min64(g.w, ld - left);
  for (int64_t j = 0; j < left; ++j) dst[j] = fill;
  T* d = dst + left;
  int64_t j = 0;
  for (; j + V::W <= mid; j += V::W) V::store(d + j, V::load(row + j));
  for (; j < mid; ++j) d[j] = row[j];
  const typename V::V f = V::set1(fill);
  int64_t k = left + mid;
  for (; k + V::W <= ld; k += V::W) V::store(dst + k, f);
  for (; k < ld; ++k) dst[k] = fill;
}

// Whether the partial last block of [va, vb) runs as the full block of the last W windows
// instead (overlapping the block before it): W windows, all inside the input columns. Its loads
// then are plain loads from x, without the copies or masked loads that a partial block needs.
// One AMD EPYC Zen 3 core (AVX2, W = 8), 64x64x32x32 float32, copied -> overlapped, max |
// average: 3x3/s3 (Q = 10) 3.2-3.6 -> 1.9-2.5 | 2.7-2.8 -> 1.3-2.3 ms; 5x5/s3 6.5-6.8 -> 5.3-5.9
// | 4.1-5.0 -> 2.7-3.0 ms; 4x4/s2 (Q = 15) 6.1-8.4 -> 4.2-4.3 | 3.5-3.8 -> 2.5-2.7 ms; 3x3/s1
// (Q = 30) 9.2-9.3 -> 7.9 | 5.7 -> 4.6 ms; 2x2/s1 6.4-6.5 -> 4.8 | 4.5-4.7 -> 3.4-3.5 ms; 5x5/s1
// 20.7-21.0 -> 18.9-19.1 | 9.4-10.1 -> 8.4-8.5 ms.
template <int W>
inline bool tail_overlaps(const Geom& g, int64_t va, int64_t vb) {
  return (vb - va) % W != 0 && vb - W >= va && vb - W >= g.qi_lo && vb <= g.qi_hi;
}

// The vector blocks [va, vb) of output row p; row0 is the first in-bounds window row, ld the row
// stride (padded copies when kPad).
template <class V, class Op, int KS, int KSW, bool kPad>
void fwd_row_blocks(const Geom& g, const RowCtx<typename V::T>& c, const typename V::T* row0,
                    int64_t ld, const typename Op::Out& out, int64_t off, int64_t va, int64_t vb) {
  constexpr int W = V::W;
  const bool overlap = tail_overlaps<W>(g, va, vb);
  for (int64_t b = va; b < vb; b += W) {
    int n = static_cast<int>(min64(W, vb - b));
    int64_t q0 = b;
    if (n < W && overlap) {
      // The last W windows instead: W - n of them again (the same values, lane by lane), and
      // plain loads. (One call site per block kind: a separate kFull call for this case made GCC
      // stop inlining MaxOp::store into the row loops, 3x3/s1 max 9.4 -> 11.2 ms.)
      q0 = vb - W;
      n = W;
    }
    if (q0 < g.qi_lo || q0 + n > g.qi_hi) {
      fwd_block<V, Op, KS, KSW, kEdge, kPad>(g, c, row0, ld, out, off, q0, n);
    } else if (n == W) {
      fwd_block<V, Op, KS, KSW, kFull, kPad>(g, c, row0, ld, out, off, q0, n);
    } else {
      fwd_block<V, Op, KS, KSW, kTail, kPad>(g, c, row0, ld, out, off, q0, n);
    }
  }
}

// Output rows [pa, pb) of one plane. KS: window width when fixed at compile time (0: g.s); KSW:
// 1, 2, 3, or 0 for any stride (gathers). vec: whether the vector path may be used at all. pad:
// scratch for pad_rows_geometry's chunk of padded rows, or null (gathers, scalar windows).
// x_end: the end of the whole input (see `over`, below).
template <class V, class Op, int KS, int KSW>
void fwd_rows(const Geom& g, bool include_pad, bool vec, const ColTables<typename V::T>& tab,
              const typename V::T* x, const typename V::T* x_end, const typename Op::Out& out,
              int64_t pa, int64_t pb, typename V::T* pad) {
  using T = typename V::T;
  // Vector blocks cover [va, vb): every column when edge blocks can be vectorised (sw 1 to 3);
  // otherwise (sw > 3, gathers) the whole blocks of W interior windows for max pooling and none
  // for average pooling; the rest are scalar windows. Gathers against scalar windows, one AMD EPYC
  // Zen 3 core, float32 kernel = stride, 64x64x32x32 3x3 | 32x512x7x7 7x7 | 64x64x32x32 4x4
  // (measured before stride 3 had its deinterleaving loads, which took 3x3/s3 to 1.9-2.5 ms max
  // and 1.3-2.3 ms average):
  //  - average: 6.6-6.8 | 3.9-4.2 | 3.6-6.9 ms gathered, 3.4-4.3 | 0.85-1.2 | 3.1 ms scalar;
  //  - max, partial blocks (Q = 10: 8 + 2, Q = 1): 5.1-5.8 | 3.5-3.6 ms gathered, 4.6 | 2.1-2.8
  //    ms scalar; every window scalar (a branch per tap) took 14-15 | 2.1-2.5 | 13 ms.
  int64_t va = g.q, vb = g.q;
  if (vec && KSW) {
    va = 0;
    vb = g.q;
  } else if (vec && Op::kIndex) {
    va = g.qi_lo;
    vb = g.qi_lo + round_down(g.qi_hi - g.qi_lo, V::W);
  }
  // Only rows with an edge block, or a partial block that cannot overlap the one before it
  // (tail_overlaps), go through the copies: where every block is full and inside, plain loads
  // from x are already what the copies would give, and the copies cost
  // (64x64x33x33 3x3/s2: 1.04 ms direct, 1.9 ms copied, one core).
  const bool padded =
      KSW != 0 && vec && pad != nullptr && va < vb &&
      (g.qi_lo > va || g.qi_hi < vb || ((vb - va) % V::W != 0 && !tail_overlaps<V::W>(g, va, vb)));
  // Where no block reaches the padding and only a partial block that cannot overlap asks for the
  // copies (rows of fewer windows than lanes: 10 on a 32-wide map at stride 3 against AVX-512's
  // 16), the blocks read x as they would read the copies: plain loads that run on into the next
  // rows, whose lanes past the row's end are not stored. The rows whose loads would pass x_end
  // (the last rows of the last plane) are copied. Reads reach `reach` past the last block's
  // first tap: its last tap group's whole vectors (KSW of them). One core of an Intel Xeon
  // (AVX-512), float32, copies -> plain loads, max | average: 64x64x32x32 3x3/s3 1.68-1.69 ->
  // 1.24-1.28 | 1.50-1.60 -> 1.03-1.06 ms, 64x64x16x16 3x3/s3 0.79 -> 0.57-0.60 | 0.66-0.70 ->
  // 0.45-0.46 ms, 64x64x32x32 5x5/s3 3.16-3.41 -> 2.56-2.66 | 2.19-2.27 -> 1.54-1.63 ms; AVX2
  // forced, 64x64x16x16 3x3/s3 0.87-0.89 -> 0.61-0.67 | 0.60-0.62 -> 0.35-0.36 ms.
  const bool over = padded && g.qi_lo <= va && g.qi_hi >= vb;
  const int64_t reach = (va + round_down(vb - 1 - va, V::W)) * g.sw - g.pw + g.s + KSW * V::W;
  const PadRows pr = pad_rows_geometry<T>(g, V::W);
  // Padded input rows [pad_lo, pad_hi) are in the scratch, row i at pad + (i - pad_lo) * ld.
  int64_t pad_lo = 0, pad_hi = 0;
  for (int64_t p = pa; p < pb; ++p) {
    RowCtx<T> c{row_span(g, p), g.s, include_pad, T(0), tab};
    c.div = static_cast<T>(include_pad ? g.r * g.s : (c.rs.r1 - c.rs.r0) * g.s);
    const T* row0 = x + (c.rs.ih0 + c.rs.r0) * g.w;  // first in-bounds row of the windows
    const int64_t off = p * g.q;
    for (int64_t q = 0; q < va; ++q) {
      Op::window(g, c.rs, col_span(g, q), row0, include_pad, out, off + q);
    }
    if (over && x_end - (row0 + (c.rs.r1 - c.rs.r0 - 1) * g.w) >= reach) {
      fwd_row_blocks<V, Op, KS, KSW, true>(g, c, row0, g.w, out, off, va, vb);
    } else if (padded) {
      const int64_t first = c.rs.ih0 + c.rs.r0, last = c.rs.ih0 + c.rs.r1;
      if (first < pad_lo || last > pad_hi) {
        // The next chunk: from this row's first input row, as many rows as fit.
        pad_lo = first;
        pad_hi = min64(g.h, first + pr.chunk);
        for (int64_t i = pad_lo; i < pad_hi; ++i) {
          pad_row<V>(x + i * g.w, g, pr.ld, Op::fill(), pad + (i - pad_lo) * pr.ld);
        }
      }
      fwd_row_blocks<V, Op, KS, KSW, true>(g, c, pad + (first - pad_lo) * pr.ld + g.pw, pr.ld, out,
                                           off, va, vb);
    } else {
      fwd_row_blocks<V, Op, KS, KSW, false>(g, c, row0, g.w, out, off, va, vb);
    }
    for (int64_t q = vb; q < g.q; ++q) {
      Op::window(g, c.rs, col_span(g, q), row0, include_pad, out, off + q);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 3x3 windows at stride 2, padding 0 or 1 (the downsampling pool of most CNNs): separable. Each
// input row is reduced along the row once per block of W outputs (the 3 taps of the W windows:
// one deinterleaving load gives the even and odd columns, the third tap is one of them shifted
// by a lane with the neighbouring element shifted in), then 2 or 3 such row results make the
// window. Input row 2p + 2 - ph is the last row of window p and the first of window p + 1: its
// row result is kept (carry) and used twice. Loads are whole vectors: no masked loads and no
// copies of whole rows (the last block of a row: S2k3Read in geometry.h). Measured on a
// 64x64x32x32 float32 3x3/s2 padding 1 pool, one Zen 5 core: max 1.73 ms -> 0.75 ms, average
// 1.34 ms -> 0.52 ms against the generic loops above (padded row copies, 9 taps per window);
// 2 threads: 0.93 -> 0.35 ms, 0.70 -> 0.25 ms.

// The last block of a row when its 2W + 1 columns reach past the row's end: the even (me) and odd
// (mo) lanes that lie in the row (kOver), the scratch row of copy_tail at its origin (kCopy).
template <class V>
struct S2k3Last {
  typename V::M me, mo;
  typename V::T* tail;  // the copy_tail scratch row, at its origin
};

// The taps of input row `row` for the W windows from output column base / 2 into st: taps 0, 1, 2
// at columns base + 2i - PW + s, window positions k0, k0 + 1, k0 + 2; kFirst: the first tap
// starts st. Op::kNanCheck: the lanes that hold a NaN tap are or-ed into nan (the element shifted
// in from the left, PW 1, is the previous block's last odd lane: seen there).
template <class V, class Op, int PW, int kRead, bool kFirst>
inline void s2k3_taps(typename Op::State& st, const typename V::T* row, int64_t w, int64_t base,
                      const S2k3Last<V>& last, int64_t k0, typename V::M& nan) {
  constexpr int W = V::W;
  typename V::V e, o;
  if (kRead == kCopy) {
    copy_tail<V>(row, w, base, last.tail);
    V::load2(last.tail, e, o);
  } else {
    V::load2(row + base, e, o);
    if (kRead == kOver) {
      e = V::blend(last.me, V::set1(Op::fill()), e);
      o = V::blend(last.mo, V::set1(Op::fill()), o);
    }
  }
  // PW 1: columns 2q - 1, 2q, 2q + 1 (the odd lanes shifted up are the first tap); PW 0: 2q,
  // 2q + 1, 2q + 2 (the even lanes shifted down are the third).
  const typename V::V t0 = PW == 1 ? V::shift_up(o, base > 0 ? row[base - 1] : Op::fill()) : e;
  const typename V::V t2 =
      PW == 1 ? o : V::shift_down(e, base + 2 * W < w ? row[base + 2 * W] : Op::fill());
  if constexpr (Op::kNanCheck) {
    nan = V::mask_or(nan, V::unord(e, o));
    if (PW == 0) nan = V::mask_or(nan, V::unord(t2, t2));  // the element from the right
  }
  if (kFirst) {
    Op::first(st, t0, k0);
  } else {
    Op::next(st, t0, k0);
  }
  Op::next(st, PW == 1 ? e : o, k0 + 1);
  Op::next(st, t2, k0 + 2);
}

// The reduction along one input row (its own first tap starts it).
template <class V, class Op, int PW, int kRead>
inline typename Op::State s2k3_hrow(const typename V::T* row, int64_t w, int64_t base,
                                    const S2k3Last<V>& last, int64_t k0, typename V::M& nan) {
  typename Op::State h;
  s2k3_taps<V, Op, PW, kRead, true>(h, row, w, base, last, k0, nan);
  return h;
}

// The same for any block: kInside unless it is the last block and reaches past the row's end;
// then kOver while the loads stay before x_end.
template <class V, class Op, int PW>
inline typename Op::State s2k3_hrow_any(const typename V::T* row, int64_t w, int64_t base,
                                        bool inside, const typename V::T* x_end,
                                        const S2k3Last<V>& last, int64_t k0, typename V::M& nan) {
  if (inside) return s2k3_hrow<V, Op, PW, kInside>(row, w, base, last, k0, nan);
  if (x_end - (row + base) >= 2 * V::W) {
    return s2k3_hrow<V, Op, PW, kOver>(row, w, base, last, k0, nan);
  }
  return s2k3_hrow<V, Op, PW, kCopy>(row, w, base, last, k0, nan);
}

// Output rows [pa, pb) of one plane; x_end: the end of the input. carry: one row result per block
// of W outputs (window row 2 of the last output row, positions 6..8); tail: the scratch row of
// copy_tail (at its origin). Returns whether an input of these windows was NaN (Op::kNanCheck;
// false otherwise).
template <class V, class Op, int PW>
bool s2k3_rows(const Geom& g, bool include_pad, const ColTables<typename V::T>& tab,
               const typename V::T* x, const typename V::T* x_end, const typename Op::Out& out,
               int64_t pa, int64_t pb, typename Op::State* carry, typename V::T* tail) {
  using T = typename V::T;
  using State = typename Op::State;
  constexpr int W = V::W;
  typename V::M nan{};
  const int64_t nb = ceil_div(g.q, W);
  const int64_t last_base = 2 * (nb - 1) * W;
  const int64_t last_len = g.w - last_base;  // columns of the row from last_base
  const bool inside_last = last_len >= 2 * W;
  if (!inside_last) {  // the fill past the row's end, once: the copies stop before it
    for (int64_t k = last_len; k <= 2 * W; k += W) V::store(tail + k, V::set1(Op::fill()));
  }
  const S2k3Last<V> last{V::first_n(static_cast<int>((min64(last_len, 2 * W) + 1) / 2)),
                         V::first_n(static_cast<int>(min64(last_len, 2 * W) / 2)), tail};
  const int n_last = static_cast<int>(g.q - (nb - 1) * W);
  for (int64_t p = pa; p < pb; ++p) {
    RowCtx<T> c{row_span(g, p), 3, include_pad, T(0), tab};
    c.div = static_cast<T>(include_pad ? 9 : (c.rs.r1 - c.rs.r0) * 3);
    const T* row0 = x + (c.rs.ih0 + c.rs.r0) * g.w;  // first in-bounds row of the windows
    const int64_t off = p * g.q;
    using Inside = std::integral_constant<int, kInside>;
    if constexpr (!Op::kShareRows) {
      // Average: every tap in window order into one sum (kShareRows in avg.h).
      const T* rl = row0 + (c.rs.r1 - c.rs.r0 - 1) * g.w;  // the last row read
      const auto block = [&](auto read, int64_t b, int n) {
        constexpr int kRead = decltype(read)::value;
        const int64_t q0 = b * W, base = 2 * q0;
        State st;
        s2k3_taps<V, Op, PW, kRead, true>(st, row0, g.w, base, last, 3 * c.rs.r0, nan);
        for (int64_t r = c.rs.r0 + 1; r < c.rs.r1; ++r) {
          s2k3_taps<V, Op, PW, kRead, false>(st, row0 + (r - c.rs.r0) * g.w, g.w, base, last, 3 * r,
                                             nan);
        }
        Op::store(out, off + q0, st, c, q0, n, q0 < g.qi_lo || q0 + n > g.qi_hi);
      };
      for (int64_t b = 0; b + 1 < nb; ++b) block(Inside(), b, W);
      if (inside_last) {
        block(Inside(), nb - 1, n_last);
      } else if (x_end - (rl + last_base) >= 2 * W) {
        block(std::integral_constant<int, kOver>(), nb - 1, n_last);
      } else {
        block(std::integral_constant<int, kCopy>(), nb - 1, n_last);
      }
      continue;
    } else if (p > pa && c.rs.r0 == 0 && c.rs.r1 == 3) {
      // The rows inside the plane after the first: window row 0 is the previous window's row 2,
      // in carry; rows 1 and 2 are new. Straight-line blocks (every loop and branch of the
      // general case below cost about 1/3 of the time of this loop, 2 rows per window).
      const T* r1 = row0 + g.w;
      const T* r2 = r1 + g.w;
      // kRead as a type (a generic lambda): each way of reading is its own straight-line code.
      const auto block = [&](auto read, int64_t b, int n) {
        constexpr int kRead = decltype(read)::value;
        const int64_t q0 = b * W, base = 2 * q0;
        const State h1 = s2k3_hrow<V, Op, PW, kRead>(r1, g.w, base, last, 3, nan);
        const State h2 = s2k3_hrow<V, Op, PW, kRead>(r2, g.w, base, last, 6, nan);
        State st;
        Op::vfirst(st, carry[b], -6);
        Op::vnext(st, h1);
        Op::vnext(st, h2);
        Op::keep(carry[b], h2);
        Op::store(out, off + q0, st, c, q0, n, q0 < g.qi_lo || q0 + n > g.qi_hi);
      };
      for (int64_t b = 0; b + 1 < nb; ++b) block(Inside(), b, W);
      if (inside_last) {
        block(Inside(), nb - 1, n_last);
      } else if (x_end - (r2 + last_base) >= 2 * W) {  // r1's loads end before r2's
        block(std::integral_constant<int, kOver>(), nb - 1, n_last);
      } else {
        block(std::integral_constant<int, kCopy>(), nb - 1, n_last);
      }
      continue;
    }
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t q0 = b * W, base = 2 * q0;
      const int n = static_cast<int>(min64(W, g.q - q0));
      const bool inside = b + 1 < nb || inside_last;
      State st;
      if (p > pa && c.rs.r0 == 0) {
        Op::vfirst(st, carry[b], -6);
      } else {
        Op::vfirst(st,
                   s2k3_hrow_any<V, Op, PW>(row0, g.w, base, inside, x_end, last, 3 * c.rs.r0, nan),
                   0);
      }
      for (int64_t r = c.rs.r0 + 1; r < c.rs.r1; ++r) {
        const State h = s2k3_hrow_any<V, Op, PW>(row0 + (r - c.rs.r0) * g.w, g.w, base, inside,
                                                 x_end, last, 3 * r, nan);
        Op::vnext(st, h);
        if (r == 2) Op::keep(carry[b], h);
      }
      Op::store(out, off + q0, st, c, q0, n, q0 < g.qi_lo || q0 + n > g.qi_hi);
    }
  }
  return V::count(nan) > 0;
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
  if (g.sw == 3 && g.s == 3) {
    rows = fwd_rows<V, Op, 3, 3>;
  } else if (g.sw == 3) {
    rows = fwd_rows<V, Op, 0, 3>;
  } else if (g.sw == 2 && g.s == 2) {
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
  if constexpr (Op::kS2k3) {  // (Op::kS2k3: which ops the 3x3/s2 path serves, and why)
    if (vec && s2k3_fits(g)) {
      using State = typename Op::State;
      const int64_t nb = ceil_div(g.q, V::W);
      const size_t bytes =
          static_cast<size_t>(nb) * sizeof(State) + static_cast<size_t>(kTailLen<V>) * sizeof(T);
      // Op::Fast first (max: NaN ignored, NaN inputs noted); a task that saw a NaN is computed
      // again with Op's full rule, from its first row (no carry crosses tasks).
      using Fast = typename Op::Fast;
      static_assert(std::is_same_v<typename Fast::State, State> &&
                    std::is_same_v<typename Fast::Out, typename Op::Out>);
      auto fast = g.pw == 1 ? s2k3_rows<V, Fast, 1> : s2k3_rows<V, Fast, 0>;
      auto full = g.pw == 1 ? s2k3_rows<V, Op, 1> : s2k3_rows<V, Op, 0>;
      parallel_tasks(sp, [&](int64_t plane, int64_t b) -> int64_t {
        State* carry = static_cast<State*>(workspace(WorkspaceSlot::pack_aux, bytes));
        T* tail = reinterpret_cast<T*>(carry + nb) + V::W;
        const int64_t pa = block_begin(g.p, sp.blocks, b), pb = block_begin(g.p, sp.blocks, b + 1);
        const T* xp = x + plane * g.h * g.w;
        const T* x_end = x + planes * g.h * g.w;
        const typename Op::Out out = Op::out_at(y, idx, plane * g.p * g.q);
        if (fast(g, include_pad, tab, xp, x_end, out, pa, pb, carry, tail)) {
          full(g, include_pad, tab, xp, x_end, out, pa, pb, carry, tail);
        }
        return 0;
      });
      return;
    }
  }
  // Padded rows (R of them) for the vector paths of strides 1 to 3, in the task's thread's
  // scratch (pack_aux: op_scratch holds the calling thread's column tables). Windows over 64 rows
  // keep the ranged loads instead of a large buffer.
  const bool pad_ok = vec && g.sw <= 3 && g.r <= 64;
  const size_t pad_bytes = pad_ok ? static_cast<size_t>(pad_rows_geometry<T>(g, V::W).chunk *
                                                        pad_rows_geometry<T>(g, V::W).ld) *
                                        sizeof(T)
                                  : 0;
  parallel_tasks(sp, [&](int64_t plane, int64_t b) -> int64_t {
    T* pad = pad_ok ? static_cast<T*>(workspace(WorkspaceSlot::pack_aux, pad_bytes)) : nullptr;
    rows(g, include_pad, vec, tab, x + plane * g.h * g.w, x + planes * g.h * g.w,
         Op::out_at(y, idx, plane * g.p * g.q), block_begin(g.p, sp.blocks, b),
         block_begin(g.p, sp.blocks, b + 1), pad);
    return 0;
  });
}

}  // namespace
}  // namespace simdnn::SIMDNN_ISA_NS
