// Pooling backward loops, generic over the window terms Op (MaxBwd in max.h, AvgBwd in avg.h).
//
// Backward, written as a gather over dx so that every dx element is written exactly once, with
// no scatter and no atomics, and the same sums in the same order whatever the thread count:
//   dx[ih, iw] = sum over the windows (p, q) that contain (ih, iw) of dy[p, q] * weight,
// where weight is [indices[p, q] == r*S + s] for max pooling ((r, s) = (ih, iw)'s position in the
// window) and 1 / divisor[p, q] for average pooling. The windows containing a row are a short
// run of p (ceil(R / sh) at most), those containing a column a short run of q; with sw == 2 the
// even and odd input columns each see a fixed set of taps whose q run is contiguous, so dy and the
// indices are read with plain vector loads at a shifted q and the two halves are interleaved on
// store (sw == 3: three phases, interleaved by 3). When stride >= kernel (windows do not overlap,
// e.g. 2x2/s2) each dx element gets at most one term and each row at most one window row: dx is
// written in one pass, pixels outside every window get 0. Overlapping windows (3x3/s2) add their
// 2-4 terms in registers (columns) and into the dx row just written, still in L1 (rows), plane by
// plane. Max pooling counts the indices that matched a position as it goes: every valid index
// matches exactly once, so the bad ones (out of range, or in the padding) are the rest, without a
// separate validation pass. 3-wide windows at column stride 3 that do not overlap (R <= sh)
// write each dx row once (tiled3_bwd_rows, below). The exceptions are scattered instead
// (scatter_rows, below), still without atomics: column strides of 4 and more, whose taps of a dx
// column no vector load reaches; max pooling's other windows at column stride 3; and max
// pooling's overlapping windows of more than 4 taps.
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
  } else if (KSW == 3) {
    // Column iw0 + 3j + t (iw0 a multiple of 3) takes tap s = 3m + k where t = (k - pw) mod 3,
    // from window q = iw0 / 3 + j - m + (t + pw - k) / 3: per tap, one phase and a contiguous run
    // of q. The sums are kept per k (u[k], k known at compile time, in registers) and rotated
    // into phases on store.
    const int rot = static_cast<int>(g.pw % 3);
    int ph[3], nk[3];
    int64_t qk[3];
    for (int k = 0; k < 3; ++k) {
      ph[k] = (k - rot + 3) % 3;
      qk[k] = iw0 / 3 + (ph[k] + g.pw - k) / 3;
      nk[k] = kMode == kFull ? W : (cnt - ph[k] + 2) / 3;
    }
    R u[3] = {V::zero(), V::zero(), V::zero()};
    wr.for_each(g, [&](int64_t p, int64_t r) {
      const Op op = Op::at(plane, g, p);
      R e[3] = {V::zero(), V::zero(), V::zero()};
      const auto tap = [&](auto kc, int64_t s0) {
        constexpr int k = decltype(kc)::value;
        if (s0 + k < S && nk[k] > 0) {
          found += bwd_add<V, Op, kMode>(op, Op::kDirect ? u[k] : e[k], g, qk[k] - s0 / 3,
                                         r * S + s0 + k, nk[k]);
        }
      };
      for (int64_t s0 = 0; s0 < S; s0 += 3) {
        tap(std::integral_constant<int, 0>(), s0);
        tap(std::integral_constant<int, 1>(), s0);
        tap(std::integral_constant<int, 2>(), s0);
      }
      if (!Op::kDirect) {
        u[0] = V::add(u[0], op.template finish<kMode>(e[0]));
        u[1] = V::add(u[1], op.template finish<kMode>(e[1]));
        u[2] = V::add(u[2], op.template finish<kMode>(e[2]));
      }
    });
    // Phase t holds u[(t + rot) % 3].
    const R v0 = rot == 0 ? u[0] : (rot == 1 ? u[1] : u[2]);
    const R v1 = rot == 0 ? u[1] : (rot == 1 ? u[2] : u[0]);
    const R v2 = rot == 0 ? u[2] : (rot == 1 ? u[0] : u[1]);
    if (kMode == kFull) {
      store3<V>(dxr + iw0, v0, v1, v2);
    } else {
      store3n<V>(dxr + iw0, v0, v1, v2, cnt);
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

// Scratch rows for the last block of a row of dy (and of the indices, the column counts) when
// it would read past the row's end (the 3x3/s2 path): see copy_tail in forward.h.
template <class V>
struct BwdTail {
  typename V::T* dy;    // at the origin of a kTailLen row; 0 past the row's end
  typename V::T* cols;  // the same; 1 past the end
  void* idx;            // W indices (uint8_t or int32_t); 255 past the end
  typename V::M valid;  // kOver: the lanes of the last block that are windows
  int64_t avail;        // elements of dy (and of the indices) from the plane's start on
  // Whether W windows from q0 of row p can be read in place (kOver): they end inside dy.
  bool reads_in_place(const Geom& g, int64_t p, int64_t q0) const {
    return p * g.q + q0 + V::W <= avail;
  }
};

// The scratch rows of a BwdTail in this thread's workspace, their fill set past fill_from
// elements (the copies stop before it: copy_tail), for a block that may read past Q.
template <class V>
BwdTail<V> bwd_tail(int64_t fill_from, typename V::M valid, int64_t avail) {
  using T = typename V::T;
  constexpr int64_t L = kTailLen<V>;
  T* buf = static_cast<T*>(
      workspace(WorkspaceSlot::pack_aux, static_cast<size_t>(2 * L + V::W) * sizeof(T)));
  const BwdTail<V> tl{buf + V::W, buf + L + V::W, buf + 2 * L, valid, avail};
  if (fill_from < V::W) {
    for (int64_t k = fill_from; k < V::W; ++k) {
      tl.dy[k] = T(0);
      tl.cols[k] = T(1);
    }
    std::memset(tl.idx, 255, static_cast<size_t>(V::W) * sizeof(T));
  }
  return tl;
}

// Input rows [ha, hb) of one plane (KSW 1 or 2): every column is in a vector block, clean inside
// [iv_lo, iv_hi), edge outside. Returns the number of index matches (max pooling).
template <class V, class Op, int KS, int KSW>
int64_t bwd_rows(const Geom& g, const typename Op::Plane& plane, int64_t iv_lo, int64_t iv_hi,
                 typename V::T* dx, int64_t ha, int64_t hb) {
  using T = typename V::T;
  static_assert(KSW >= 1 && KSW <= 3, "strides of 4 and more are scattered (scatter_rows)");
  constexpr int64_t kStep = KSW * V::W;
  int64_t matches = 0;
  WindowRows wr(g, ha);
  for (int64_t ih = ha; ih < hb; ++ih, wr.next_row(g)) {
    T* dxr = dx + ih * g.w;
    if (wr.for_each(g, [](int64_t, int64_t) {}) == 0) {  // a row no window reaches
      std::memset(dxr, 0, static_cast<size_t>(g.w) * sizeof(T));
      continue;
    }
    for (int64_t iw0 = 0; iw0 < g.w; iw0 += kStep) {
      const int cnt = static_cast<int>(min64(kStep, g.w - iw0));
      if (iw0 < iv_lo || iw0 + cnt > iv_hi) {
        matches += bwd_block<V, Op, KS, KSW, kEdge>(plane, g, wr, dxr, iw0, cnt);
      } else if (cnt == kStep) {
        matches += bwd_block<V, Op, KS, KSW, kFull>(plane, g, wr, dxr, iw0, cnt);
      } else {
        matches += bwd_block<V, Op, KS, KSW, kTail>(plane, g, wr, dxr, iw0, cnt);
      }
    }
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

// ---------------------------------------------------------------------------------------------
// 3x3 windows at stride 2, padding 0 or 1: dx row by dx row, from the 1 or 2 window rows that
// contain it, W column pairs (2j, 2j + 1) at a time. Window q's taps s = 0, 1, 2 lie at columns
// 2q - pw + s, so with pw == 1 column 2j takes tap 1 of window j and column 2j + 1 taps 2 of j and
// 0 of j + 1; with pw == 0 column 2j takes taps 0 of j and 2 of j - 1, column 2j + 1 tap 1 of j.
// The terms of the 3 taps of a window row come from one load of dy (and of the indices); the
// neighbouring window's term is a lane shifted in. Measured on a 64x64x32x32 float32 3x3/s2
// padding 1 pool, one Zen 5 core: max 2.87 ms -> 1.03 ms, average 3.05 ms -> 0.81 ms against the
// generic loops above (2 threads: 1.1 -> 0.5 ms, 1.05 -> 0.39 ms). That lane comes from the
// neighbouring block's sums (shift_down_from, shift_up_from), not from a scalar term per window
// row and block; with the byte compares (MaxBwd::terms3) and the count in a register (below), on
// one AMD EPYC Zen 3 core (AVX2), 64x64x32x32 float32: max 2991-3051 -> 2301-2486 us, average
// 2493-2649 -> 2000-2129 us; padding 0 on 33x33, max 5012-5044 -> 3399-3571 us.

// Input rows [ha, hb) of one plane; returns the index matches (max pooling). A tap that lands in
// the padding columns (tap 0 of window 0, tap 2 of the last window when pw == 1 and W is odd) is
// no match: its terms go to no lane, and its count is taken back.
template <class V, class Op, int PW>
int64_t s2k3_bwd_rows(const Geom& g, const typename Op::Plane& plane, const BwdTail<V>& tl,
                      typename V::T* dx, int64_t ha, int64_t hb) {
  using T = typename V::T;
  using R = typename V::V;
  constexpr int W = V::W;
  const int64_t pairs = ceil_div(g.w, 2);  // column pairs of dx
  const int64_t nb = ceil_div(pairs, W);
  const bool right_pad = PW == 1 && 2 * g.q - 1 >= g.w;  // tap 2 of the last window in padding
  int64_t found = 0;
  for (int64_t ih = ha; ih < hb; ++ih) {
    T* dxr = dx + ih * g.w;
    // Window rows (p, r) with 2p - ph + r == ih: (p_top, r_top) and, for r_top 0, (p_top - 1, 2).
    const int64_t p_top = (ih + g.ph) / 2, r_top = (ih + g.ph) % 2;
    int64_t wp[2], wk[2];
    int nw = 0;
    if (p_top < g.p) {
      wp[nw] = p_top;
      wk[nw++] = 3 * r_top;
    }
    if (r_top == 0 && p_top >= 1 && p_top - 1 < g.p) {
      wp[nw] = p_top - 1;
      wk[nw++] = 6;
    }
    if (nw == 0) {  // a row no window reaches
      std::memset(dxr, 0, static_cast<size_t>(g.w) * sizeof(T));
      continue;
    }
    for (int i = 0; i < nw; ++i) {
      if (PW == 1) {
        int64_t gone = 0;
        const Op op = Op::at(plane, g, wp[i]);
        op.scalar(g, 0, wk[i], &gone);
        if (right_pad) op.scalar(g, g.q - 1, wk[i] + 2, &gone);
        found -= gone;
      }
    }
    const auto store = [&](int64_t q0, R even, R odd) {
      const int64_t cnt = g.w - 2 * q0;
      if (cnt >= 2 * W) {
        V::store2(dxr + 2 * q0, even, odd);
      } else {
        V::store2n(dxr + 2 * q0, even, odd, static_cast<int>(cnt));
      }
    };
    const Op op0 = Op::at(plane, g, wp[0]), op1 = Op::at(plane, g, wp[nw - 1]);
    // The terms of each tap summed over the window rows; the neighbouring window's term comes
    // from the neighbouring block's sums: PW 1 takes tap 0 of the next block's lane 0, so each
    // block is stored one block late; PW 0 tap 2 of the previous block's last lane. The number
    // of window rows is a compile-time constant (NW), so that the loop keeps its sums and its
    // count in registers: with a loop over them the count lived on the stack, and its chain of
    // memory adds took 15% of the samples (Zen 3).
    const auto row = [&](auto nw_c) {
      constexpr int NW = decltype(nw_c)::value;
      int row_found = 0;
      const auto add_terms = [&](auto read, const Op& op, int64_t q0, int64_t k, R ts[3]) {
        R t[3];
        row_found += op.template terms3<decltype(read)::value>(g, q0, k, tl, t);
        for (int s = 0; s < 3; ++s) ts[s] = V::add(ts[s], t[s]);
      };
      const auto any_read = [&](const Op& op, int64_t p, int64_t q0, int64_t k, R ts[3]) {
        if (q0 + W <= g.q) {
          add_terms(std::integral_constant<int, kInside>(), op, q0, k, ts);
        } else if (tl.reads_in_place(g, p, q0)) {
          add_terms(std::integral_constant<int, kOver>(), op, q0, k, ts);
        } else {
          add_terms(std::integral_constant<int, kCopy>(), op, q0, k, ts);
        }
      };
      R tp[3] = {V::zero(), V::zero(), V::zero()};  // the sums of the previous block
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t q0 = b * W;
        R ts[3] = {V::zero(), V::zero(), V::zero()};
        any_read(op0, wp[0], q0, wk[0], ts);
        if constexpr (NW == 2) any_read(op1, wp[1], q0, wk[1], ts);
        if (PW == 1) {
          if (b > 0) store(q0 - W, tp[1], V::add(tp[2], V::shift_down_from(tp[0], ts[0])));
        } else {
          store(q0, V::add(ts[0], V::shift_up_from(ts[2], tp[2])), ts[1]);
        }
        for (int s = 0; s < 3; ++s) tp[s] = ts[s];
      }
      if (PW == 1) store((nb - 1) * W, tp[1], V::add(tp[2], V::shift_down_from(tp[0], V::zero())));
      found += row_found;
    };
    if (nw == 2) {
      row(std::integral_constant<int, 2>());
    } else {
      row(std::integral_constant<int, 1>());
    }
  }
  return found;
}

// ---------------------------------------------------------------------------------------------
// Windows 3 wide at column stride 3 that do not overlap in rows either (R <= sh: MaxPool2d(3),
// AvgPool2d(3), PyTorch's default stride being the kernel size): each dx element lies in one
// window at most, so each dx row is written once, from one window row, with no sums. Window q
// covers columns 3q - pw .. 3q - pw + 2, its taps k0 .. k0 + 2 (k0 = 3r, r the window row of dx
// row ih), so W windows' terms (Op::terms3, as on the 3x3/s2 path) are stored interleaved by 3
// (store3). The windows wholly inside the row, [qa, qb), go in vector blocks; when their count
// is not a multiple of W, the last block is the row's last W of them, stored first with only its
// own lanes (kOver: the other lanes 0 and not counted), which the block before it then
// overwrites. The windows cut by the row's ends are scalar (Op::scalar); columns past the last
// window are 0. Measured on an AMD EPYC Zen 3, float32, alternating processes, before (max
// scattered, average gathered in three phases) -> after. One core, max | average: 64x64x32x32
// 3x3/s3 1.9-2.2 -> 1.6-1.7 | 4.5-4.6 -> 1.4 ms, 64x64x33x33 3x3/s3 p1 2.4-2.7 -> 2.3-2.4 |
// 5.5-5.6 -> 1.8-1.9 ms; max 16x64x56x56 1.3-1.5 -> 0.9 ms, 16x32x112x112 3.5-4.6 -> 2.0-2.2 ms.
// Two threads: 64x64x32x32 0.83-1.02 -> 0.79-0.84 | 2.3-2.6 -> 0.70-0.85 ms, but max 64x64x33x33
// p1 1.0-1.3 -> 1.15-1.22 ms. The overlapped last block costs a quarter of the average's time
// on 32-wide rows (10 windows: 8 + 2); as its own 2 windows, storing only the vector they reach
// (loads past the row's end where dy goes on), it saved 3% (1.36 -> 1.32 ms), and as scalar
// windows it lost (max 1.6 -> 2.3 ms), so it stays overlapped.
// Rows of fewer whole windows than lanes (short rows: AVX-512's 16 float lanes against the 10
// windows of a 32-wide map) are one masked block (tiled3_fits). On an Intel Xeon (AVX-512),
// float32, one core, average pooling gathered in three phases -> one block a row: 64x64x32x32
// 3x3/s3 2.90-2.92 -> 1.17-1.20 ms (2 threads 1.47 -> 0.59 ms), 64x64x33x33 p1 3.05-3.09 ->
// 1.47-1.56 ms, 64x64x16x16 1.40-1.42 -> 0.54-0.55 ms, 64x64x8x8 0.56-0.58 -> 0.29 ms. Max
// pooling's short rows stay scattered: there the block lost (64x64x32x32 0.97-1.04 -> 1.16-1.18
// ms, 64x64x8x8 0.08 -> 0.26 ms). Its rows of at least W windows are tiled on every machine,
// though on that Xeon the scatter was faster where they hold under 2W (AVX2 forced: 64x64x32x32
// 0.98-1.03 against 1.38 ms, 64x64x33x33 p1 1.15-1.18 against 1.95-1.96 ms), and slower from 16
// on (AVX-512: 64x64x48x48 6.4 against 4.6-5.4 ms; AVX2: 16x32x112x112 2.1 against 1.3 ms),
// while the Zen 3 numbers above favour the tiled rows at 10 windows.
struct Tiled3 {
  int64_t qa, qb;  // the windows wholly inside a row
};
inline Tiled3 tiled3_windows(const Geom& g) {
  return {ceil_div(g.pw, 3), min64(g.q, (g.w + g.pw) / 3)};
}
// Whether the tiled path takes this geometry (t: its tiled3_windows): at least one vector block
// of whole windows a row, or for average pooling one whole window. Rows of fewer than W of them
// (a short row: 10 windows on a 32-wide map against AVX-512's 16 float lanes) are one block, read
// past its windows (kOver, or kCopy at the end of dy) and stored with masks (store3n). Max
// pooling's short rows stay scattered, which measured faster (see above).
template <class V, class Op>
bool tiled3_fits(const Geom& g, const Tiled3& t) {
  return g.s == 3 && g.sw == 3 && g.r <= g.sh && t.qb - t.qa >= (Op::kPrefersScatter ? V::W : 1);
}

// The BwdTail of a task of the tiled path (avail: dy's elements from its plane on). A short row's
// block reads from window qa to Q (its windows, and one cut by the right end) where it copies, its
// valid lanes the first n; otherwise only the overlapped last block's lanes are set.
template <class V>
BwdTail<V> tiled3_tail(const Geom& g, const Tiled3& t, int64_t avail) {
  const int64_t n = t.qb - t.qa;
  if (n < V::W) return bwd_tail<V>(g.q - t.qa, V::first_n(static_cast<int>(n)), avail);
  return {nullptr, nullptr, nullptr, V::lanes(V::W - static_cast<int>(n % V::W), V::W), 0};
}

// Input rows [ha, hb) of one plane; returns the index matches (max pooling). tl: tiled3_tail's.
template <class V, class Op>
int64_t tiled3_bwd_rows(const Geom& g, const typename Op::Plane& plane, const Tiled3& t,
                        const BwdTail<V>& tl, typename V::T* dx, int64_t ha, int64_t hb) {
  using T = typename V::T;
  constexpr int W = V::W;
  const int64_t n = t.qb - t.qa;
  // Windows of the overlapped last block's own lanes (a short row: all of them).
  const int64_t own = n % W;
  const int64_t zero_from = min64(max64(3 * g.q - g.pw, 0), g.w);
  int64_t found = 0;
  WindowRows wr(g, ha);  // with R <= sh, the one window row (p_top, r_top) of row ih, if any
  for (int64_t ih = ha; ih < hb; ++ih, wr.next_row(g)) {
    T* dxr = dx + ih * g.w;
    if (wr.p_top >= g.p || wr.r_top >= g.r) {  // a row no window reaches
      std::memset(dxr, 0, static_cast<size_t>(g.w) * sizeof(T));
      continue;
    }
    const Op op = Op::at(plane, g, wr.p_top);
    const int64_t k0 = 3 * wr.r_top;
    const auto block = [&](auto read, int64_t q0) {
      typename V::V v[3];
      found += op.template terms3<decltype(read)::value>(g, q0, k0, tl, v);
      if (n < W) {
        store3n<V>(dxr + 3 * q0 - g.pw, v[0], v[1], v[2], static_cast<int>(3 * n));
      } else {
        store3<V>(dxr + 3 * q0 - g.pw, v[0], v[1], v[2]);
      }
    };
    if (n < W) {
      if (tl.reads_in_place(g, wr.p_top, t.qa)) {
        block(std::integral_constant<int, kOver>(), t.qa);
      } else {
        block(std::integral_constant<int, kCopy>(), t.qa);
      }
    } else {
      if (own > 0) block(std::integral_constant<int, kOver>(), t.qb - W);
      for (int64_t q0 = t.qa; q0 + W <= t.qb; q0 += W) {
        block(std::integral_constant<int, kInside>(), q0);
      }
    }
    const auto window = [&](int64_t q) {
      for (int64_t s = 0; s < 3; ++s) {
        const int64_t iw = 3 * q - g.pw + s;
        if (iw >= 0 && iw < g.w) dxr[iw] = op.scalar(g, q, k0 + s, &found);
      }
    };
    for (int64_t q = 0; q < t.qa; ++q) window(q);
    for (int64_t q = t.qb; q < g.q; ++q) window(q);
    for (int64_t iw = zero_from; iw < g.w; ++iw) dxr[iw] = T(0);
  }
  return found;
}

// ---------------------------------------------------------------------------------------------
// Column strides of 3 and more (MaxPool2d(3), MaxPool2d(4), AvgPool2d(7): PyTorch's default
// stride is the kernel size): scattered, not gathered. With sw > 2 the taps of a dx column belong
// to windows that no vector load reaches, and the gather took a scalar loop per dx element with
// two divisions in it: 64x64x32x32 float32 3x3/s3, 2 threads, AMD EPYC Zen 3, max 15.7 ms and
// average 14.9 ms against PyTorch's 1.7 and 3.3 ms. Here each task zeroes its dx rows [ha, hb),
// then every window that reaches them adds its terms there (MaxBwd::scatter, AvgBwd::scatter):
// still no atomics, and each dx element still sums its windows in one order, (p, q), whatever
// the thread count and the split into row blocks.
//
// Average pooling at column stride 3 is gathered again since bwd_block reads its three phases
// with plain loads (Op::kPrefersScatter false), max pooling is not: one Zen 3 core, float32,
// scattered -> gathered, max | average: 64x64x32x32 3x3/s3 2.1-2.2 -> 8.1-8.2 | 6.2-6.3 -> 4.5
// ms; 64x64x33x33 3x3/s3 p1 2.8-3.3 -> 9.2-9.3 | 7.5-8.0 -> 5.5-5.6 ms; 16x64x56x56 5x5/s3 p2
// 1.7-1.9 -> 1.7-1.9 | 6.9-7.2 -> 4.5-4.7 ms; 64x64x32x32 2x2/s3 2.5 -> 5.0 | 5.4-5.6 -> 3.1 ms.
// (The max gather compares an index per tap; its scatter adds one term per window.) The 3x3/s3
// windows have since taken the tiled path (tiled3_bwd_rows), both ops.
//
// Max pooling is scattered as well wherever windows of more than 4 taps overlap (stride 1 or 2,
// other than the 3x3/s2 path): the gather compares an index per tap that covers a dx element,
// R * S / (sh * sw) of them, where the scatter costs one add per window. Same pool, 2 threads,
// float32, 32x64x56x56 max backward, gathered -> scattered: 3x3/s1 p1 12.4-15.3 -> 9.4-9.7 ms,
// 5x5/s1 p2 30.8-31.8 -> 9.7-10.4 ms, 4x4/s2 p1 12.5-12.9 -> 3.0-3.1 ms, 5x5/s2 p2 18.2-18.5 ->
// 3.1-3.2 ms (PyTorch: 5.3, 6.1, 2.8, 2.7 ms); but 2x2/s1 on 8x64x112x112 5.7-7.0 -> 9.3-11.2 ms,
// so 2x2 windows (4 taps) keep the gather. (Scattered, each window's add waits on the store of
// the one before it when both chose the same input, as overlapping windows often do.)

// Window position k -> (row r, column s) for windows of at most 256 taps (uint8 indices): a table
// instead of a division per window.
struct TapTable {
  uint8_t r[256], s[256];
  bool ok;  // whether the window fits the table
  explicit TapTable(const Geom& g) : ok(g.r * g.s <= 256) {
    if (!ok) return;
    int k = 0;
    for (int64_t i = 0; i < g.r; ++i) {
      for (int64_t j = 0; j < g.s; ++j, ++k) {
        r[k] = static_cast<uint8_t>(i);
        s[k] = static_cast<uint8_t>(j);
      }
    }
  }
  void at(const Geom& g, int64_t k, int64_t* i, int64_t* j) const {
    if (ok) {
      *i = r[k];
      *j = s[k];
    } else {
      *i = k / g.s;
      *j = k % g.s;
    }
  }
};

// Input rows [ha, hb) of one plane; returns the index matches (max pooling).
template <class V, class Op>
int64_t scatter_rows(const Geom& g, const typename Op::Plane& plane, const TapTable& taps,
                     typename V::T* dx, int64_t ha, int64_t hb) {
  using T = typename V::T;
  std::memset(dx + ha * g.w, 0, static_cast<size_t>((hb - ha) * g.w) * sizeof(T));
  // The window rows p that reach [ha, hb): p * sh - ph < hb and p * sh - ph + R > ha (all of
  // them, without a division, for a whole plane).
  const int64_t below = ha + g.ph - g.r + 1;
  const int64_t p0 = below <= 0 ? 0 : ceil_div(below, g.sh);
  const int64_t p1 = hb == g.h ? g.p : min64(g.p, (hb - 1 + g.ph) / g.sh + 1);
  int64_t matches = 0;
  for (int64_t p = p0; p < p1; ++p) matches += Op::at(plane, g, p).scatter(g, p, taps, dx, ha, hb);
  return matches;
}

// All planes of a backward pass; returns the index matches. Picks the unrolled 2x2/s2 and 3x3/s2
// bodies and the tiled 3-wide windows at stride 3, then the generic ones by stride (scattered:
// see scatter_rows).
template <class V, class Op>
int64_t bwd_planes(const Pool2d& pl, const typename Op::Plane& plane0, int64_t qv_lo, int64_t qv_hi,
                   typename V::T* dx) {
  const Geom g = make_geom(pl);
  const int64_t planes = pl.n * pl.c;
  if (planes == 0) return 0;
  const int64_t plane_out = g.p * g.q;
  const Split sp = make_split(planes, g.h, planes * g.h * g.w, pl.nthreads);
  if constexpr (Op::kS2k3) {  // (which ops the 3x3/s2 path serves: Op::kS2k3)
    if (s2k3_fits(g)) {
      // One block a row at most reads past Q (the last: the column pairs are Q + 1 at most), with
      // fill_from windows of its own (0 when it lies past Q).
      const int64_t nb = ceil_div(ceil_div(g.w, 2), V::W), fill_from = g.q - (nb - 1) * V::W;
      auto rows3 = g.pw == 1 ? s2k3_bwd_rows<V, Op, 1> : s2k3_bwd_rows<V, Op, 0>;
      return parallel_tasks(sp, [&](int64_t i, int64_t b) -> int64_t {
        const BwdTail<V> tl = bwd_tail<V>(fill_from, V::first_n(static_cast<int>(fill_from)),
                                          (planes - i) * plane_out);
        return rows3(g, plane0.at_offset(i * plane_out), tl, dx + i * g.h * g.w,
                     block_begin(g.h, sp.blocks, b), block_begin(g.h, sp.blocks, b + 1));
      });
    }
    // The tiled 3-wide windows at stride 3 take terms3 as well.
    if (const Tiled3 t = tiled3_windows(g); tiled3_fits<V, Op>(g, t)) {
      return parallel_tasks(sp, [&](int64_t i, int64_t b) -> int64_t {
        const BwdTail<V> tl = tiled3_tail<V>(g, t, (planes - i) * plane_out);
        return tiled3_bwd_rows<V, Op>(g, plane0.at_offset(i * plane_out), t, tl, dx + i * g.h * g.w,
                                      block_begin(g.h, sp.blocks, b),
                                      block_begin(g.h, sp.blocks, b + 1));
      });
    }
  }
  // Max pooling is scattered at column stride 3 and where windows of more than 4 taps overlap
  // (Op::kPrefersScatter; scatter_rows says why).
  if (g.sw > 3 || (g.sw == 3 && Op::kPrefersScatter) ||
      (Op::kPrefersScatter && g.r * g.s > 4 && g.r * g.s > g.sh * g.sw)) {
    const TapTable taps(g);
    return parallel_tasks(sp, [&](int64_t i, int64_t b) -> int64_t {
      return scatter_rows<V, Op>(g, plane0.at_offset(i * plane_out), taps, dx + i * g.h * g.w,
                                 block_begin(g.h, sp.blocks, b),
                                 block_begin(g.h, sp.blocks, b + 1));
    });
  }
  int64_t iv_lo = 0, iv_hi = 0;
  clean_columns(g, qv_lo, qv_hi, &iv_lo, &iv_hi);
  auto rows = bwd_rows<V, Op, 0, 1>;  // sw == 1
  if (g.sw == 2 && g.s == 2) {
    rows = bwd_rows<V, Op, 2, 2>;
  } else if (g.sw == 2 && g.s == 3) {
    rows = bwd_rows<V, Op, 3, 2>;
  } else if (g.sw == 2) {
    rows = bwd_rows<V, Op, 0, 2>;
  } else if (g.sw == 3 && g.s == 3) {
    rows = bwd_rows<V, Op, 3, 3>;
  } else if (g.sw == 3) {
    rows = bwd_rows<V, Op, 0, 3>;
  }
  return parallel_tasks(sp, [&](int64_t i, int64_t b) -> int64_t {
    return rows(g, plane0.at_offset(i * plane_out), iv_lo, iv_hi, dx + i * g.h * g.w,
                block_begin(g.h, sp.blocks, b), block_begin(g.h, sp.blocks, b + 1));
  });
}

}  // namespace
}  // namespace simdnn::SIMDNN_ISA_NS
