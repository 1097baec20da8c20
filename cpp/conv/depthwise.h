// Depthwise convolution (G = C = K), forward and both backward passes: direct kernels, per plane,
// vectorised along the output row (one row per group is no GEMM). For the per-ISA convolution
// files; the shape legend is conv.cpp's.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common/compiler.h"
#include "common/int_math.h"
#include "common/parallel.h"
#include "conv/conv.h"
#include "conv/im2col.h"
#include "simd/simd.h"

#ifndef SIMDNN_ISA_NS
#error "compile with -DSIMDNN_ISA_NS=<isa>"
#endif

namespace simdnn::SIMDNN_ISA_NS {
namespace {

// Depthwise convolution (G = C = K): per plane, vectorised along the output row.
//
// Each source plane is first copied, zero-padded, into an L1-resident buffer. With a column stride
// sw > 1 the copy splits every row into sw phases (columns j = sw * i + phase stored at
// phase * phw + i), so that for every tap the sources of W consecutive outputs are W consecutive
// elements: tap column s of output q reads padded column q * sw + s * dw, which is element
// q + (s * dw) / sw of phase (s * dw) % sw. No gathers (slow on AMD) and no strided loads.
struct PadPlane {
  int64_t h_lo, hp, w_lo, wp;  // padded rows [h_lo, h_lo + hp), columns [w_lo, w_lo + wp)
  int64_t sw, phw, ld;         // phases, elements per phase (with slack), row pitch sw * phw
  // Offset in the buffer of the source of output (0, 0) for tap (r, s), given the row step dh.
  int64_t tap(int64_t r, int64_t s, int64_t dh, int64_t dw) const {
    return r * dh * ld + ((s * dw) % sw) * phw + (s * dw) / sw;
  }
};

// `extra` elements of slack per phase let a full vector load run past the last output column.
static inline PadPlane pad_plane_geometry(const Im2col& g, int64_t extra) {
  PadPlane pp;
  pp.h_lo = -g.ph;
  pp.hp = padded_extent(g.p, g.sh, g.r, g.dh);
  pp.w_lo = -g.pw;
  pp.wp = padded_extent(g.q, g.sw, g.s, g.dw);
  pp.sw = g.sw;
  pp.phw = ceil_div(pp.wp, g.sw) + extra;
  pp.ld = pp.sw * pp.phw;
  return pp;
}

// The copy: zeros, then each source row's columns that fall inside the padded window. Stride 1
// is a memcpy per row; the scalar per-element copy with a bounds test on every element that this
// replaces cost as much as the 3x3 arithmetic itself (the dw3x3 128-channel rows ran at 7% of
// peak).
template <typename T>
static void fill_padded(const T* plane, const Im2col& g, const PadPlane& pp, T* dst) {
  // Padded rows i and columns j whose source row h_lo + i and column w_lo + j are in the plane.
  const int64_t i0 = min64(pp.hp, max64(0, -pp.h_lo)), i1 = max64(i0, min64(pp.hp, g.h - pp.h_lo));
  const int64_t j0 = min64(pp.wp, max64(0, -pp.w_lo)), j1 = max64(j0, min64(pp.wp, g.w - pp.w_lo));
  const auto zero = [](T* d, int64_t n) {
    if (n > 0) std::memset(d, 0, static_cast<size_t>(n) * sizeof(T));
  };
  zero(dst, i0 * pp.ld);
  for (int64_t i = i0; i < i1; ++i) {
    const T* row = plane + (pp.h_lo + i) * g.w + pp.w_lo;
    T* d = dst + i * pp.ld;
    if (pp.sw == 1) {
      // In whole vectors: the left zeros (their spill overwritten by the copy), the copy (its
      // spill past j1 overwritten by the right zeros), the right zeros (the last one overlapping
      // the one before). A memset, a memcpy and a memset per row cost more than the 7x7
      // arithmetic on 7x7 planes (sweep, AMD EPYC Zen 5, 2 threads: depthwise 7x7 p3 256 14x14
      // N32 forward 1.51 -> 1.43 ms).
      using V = typename VecOf<T>::type;
      constexpr int W = V::W;
      const T* end = plane + g.h * g.w;
      if (j0 + W <= pp.ld && pp.ld - j1 >= W) {
        for (int64_t k = 0; k < j0; k += W) V::store(d + k, V::zero());
        for (int64_t j = j0; j < j1; j += W) {
          if (end - (row + j) >= W) {
            V::store(d + j, V::load(row + j));
          } else {
            const int n = static_cast<int>(min64(W, j1 - j));
            V::storen(d + j, V::loadn(row + j, n), n);
          }
        }
        int64_t k = j1;
        for (; k + W <= pp.ld; k += W) V::store(d + k, V::zero());
        if (k < pp.ld) V::store(d + pp.ld - W, V::zero());
      } else {
        zero(d, j0);
        std::memcpy(d + j0, row + j0, static_cast<size_t>(j1 - j0) * sizeof(T));
        zero(d + j1, pp.ld - j1);
      }
    } else if (pp.sw == 2) {
      // Stride 2: deinterleaving loads, 2W columns at a time into the two phases (element by
      // element this copy was the strided forward's cost: 7x7/s2, 512 channels, 14x14, N32 ran
      // at 0.26x PyTorch).
      using V = typename VecOf<T>::type;
      zero(d, pp.ld);
      int64_t j = j0;
      if (j < j1 && (j & 1) != 0) {
        d[pp.phw + (j >> 1)] = row[j];
        ++j;
      }
      for (; j + 2 * V::W <= j1; j += 2 * V::W) {
        typename V::V e, o;
        V::load2(row + j, e, o);
        V::store(d + (j >> 1), e);
        V::store(d + pp.phw + (j >> 1), o);
      }
      for (; j < j1; ++j) d[(j & 1) * pp.phw + (j >> 1)] = row[j];
    } else {
      zero(d, pp.ld);
      // Phase by phase, with no division per element (a 64-bit idiv per element made the
      // stride-2 forward 3x slower than stride 1).
      for (int64_t ph = 0; ph < pp.sw; ++ph) {
        const int64_t first = j0 + (ph - j0 % pp.sw + pp.sw) % pp.sw;
        T* dp = d + ph * pp.phw;
        for (int64_t j = first, k = first / pp.sw; j < j1; j += pp.sw, ++k) dp[k] = row[j];
      }
    }
  }
  zero(dst + i1 * pp.ld, (pp.hp - i1) * pp.ld);
}

// NR output rows x NV vectors of one row each, starting at output (p, q0): every tap is one
// broadcast and NR * NV independent FMAs. One vector alone is a chain of R * S dependent FMAs
// (4 cycles each on Zen 5 and Sapphire Rapids); 4 chains or more keep both FMA pipes busy.
template <class V, int NR, int NV>
static inline void depthwise_block(const Im2col& g, const PadPlane& pp, const typename V::T* src,
                                   const int64_t* off, const typename V::T* taps,
                                   typename V::T bias, typename V::T* out, int64_t p, int64_t q0,
                                   int last_live) {
  using T = typename V::T;
  using R = typename V::V;
  constexpr int W = V::W;
  R acc[NR][NV];
  for (int i = 0; i < NR; ++i)
    for (int j = 0; j < NV; ++j) acc[i][j] = V::set1(bias);
  const T* row0 = src + p * g.sh * pp.ld + q0;
  const int64_t rs = g.r * g.s;
  for (int64_t k = 0; k < rs; ++k) {
    const R t = V::set1(taps[k]);
    const T* base = row0 + off[k];
    for (int i = 0; i < NR; ++i)
      for (int j = 0; j < NV; ++j)
        acc[i][j] = V::fma(t, V::load(base + i * g.sh * pp.ld + j * W), acc[i][j]);
  }
  for (int i = 0; i < NR; ++i) {
    T* o = out + (p + i) * g.q + q0;
    for (int j = 0; j + 1 < NV; ++j) V::store(o + j * W, acc[i][j]);
    if (last_live == W) {
      V::store(o + (NV - 1) * W, acc[i][NV - 1]);
    } else {
      V::storen(o + (NV - 1) * W, acc[i][NV - 1], last_live);
    }
  }
}

template <class V, int NR>
static inline void depthwise_rows(const Im2col& g, const PadPlane& pp, const typename V::T* src,
                                  const int64_t* off, const typename V::T* taps, typename V::T bias,
                                  typename V::T* out, int64_t p) {
  constexpr int W = V::W;
  for (int64_t q0 = 0; q0 < g.q; q0 += 4 * W) {
    const int64_t left = g.q - q0;
    const int nv = static_cast<int>(min64(4, ceil_div(left, W)));
    const int last = static_cast<int>(left - (nv - 1) * W >= W ? W : left - (nv - 1) * W);
    switch (nv) {
      case 1:
        depthwise_block<V, NR, 1>(g, pp, src, off, taps, bias, out, p, q0, last);
        break;
      case 2:
        depthwise_block<V, NR, 2>(g, pp, src, off, taps, bias, out, p, q0, last);
        break;
      case 3:
        depthwise_block<V, NR, 3>(g, pp, src, off, taps, bias, out, p, q0, last);
        break;
      default:
        depthwise_block<V, NR, 4>(g, pp, src, off, taps, bias, out, p, q0, last);
        break;
    }
  }
}

// out plane (P x Q) = sum over taps of taps[r, s] * padded input; plus `bias`. Rows go in pairs
// when a row has under 3 vectors (Q <= 2W: 28x28 planes give 2 vectors of 16 floats), so that
// at least 4 accumulators are in flight.
template <class V>
static void depthwise_plane(const Im2col& g, const PadPlane& pp, const typename V::T* padded,
                            const int64_t* off, const typename V::T* taps, typename V::T bias,
                            typename V::T* out) {
  int64_t p = 0;
  if (g.q <= V::W) {
    // One vector a row (14x14 and 7x7 planes): 4 rows, 4 chains (depthwise 7x7 p3 256 14x14 N32
    // forward 1.70 -> 1.51 ms with pairs of rows; AMD EPYC Zen 5, 2 threads).
    for (; p + 4 <= g.p; p += 4) depthwise_rows<V, 4>(g, pp, padded, off, taps, bias, out, p);
  }
  if (g.q <= 2 * V::W) {
    for (; p + 2 <= g.p; p += 2) depthwise_rows<V, 2>(g, pp, padded, off, taps, bias, out, p);
  }
  for (; p < g.p; ++p) depthwise_rows<V, 1>(g, pp, padded, off, taps, bias, out, p);
}

template <typename T>
static int64_t plane_scratch(const PadPlane& pp) {
  return round_up(pp.hp * pp.ld, 16);
}

// One thread's scratch: the padded plane, R * S elements of T (flipped taps), and the offsets of
// the R * S taps' sources for output (0, 0) (tap() divides by the stride: once per call, not per
// tap and row as the first version did, where the 64-bit divisions cost more than the FMAs).
template <typename T>
struct DwScratch {
  T* plane;
  T* taps;
  int64_t* off;
};

template <typename T>
static DwScratch<T> dw_scratch(const PadPlane& pp, int64_t r, int64_t s, int64_t dh, int64_t dw) {
  const int64_t rs = r * s, plane = plane_scratch<T>(pp), taps = round_up(rs, 16);
  char* base = static_cast<char*>(
      workspace(WorkspaceSlot::op_scratch,
                static_cast<int64_t>((plane + taps) * sizeof(T) + rs * sizeof(int64_t))));
  DwScratch<T> ws{reinterpret_cast<T*>(base), reinterpret_cast<T*>(base) + plane,
                  reinterpret_cast<int64_t*>(base + (plane + taps) * sizeof(T))};
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < s; ++j) ws.off[i * s + j] = pp.tap(i, j, dh, dw);
  return ws;
}

// ------------------------------------------------------------------------------------------------
// Small output planes: channels in the vector lanes. A block of W channels of one image is
// transposed into a zero-padded buffer of pixels (hp x wp pixels, each W channels wide), so that
// every tap of every output pixel is one whole-vector load and one FMA with the tap's W weights,
// whatever the stride, and no lane is idle. The row-vector kernel above leaves lanes idle on rows
// narrower than a vector (a 4-wide output row used 4 of 16 lanes) and keeps too few FMA chains in
// flight on 7x7 taps. Transposes in and out cost a pass over the input and the output each.
struct DwcGeometry {
  int64_t h_lo, w_lo, hp, wp;  // padded window: source rows h_lo .. h_lo + hp - 1, columns ...
};

static inline DwcGeometry dwc_geometry(const Im2col& g) {
  return DwcGeometry{-g.ph, -g.pw, padded_extent(g.p, g.sh, g.r, g.dh),
                     padded_extent(g.q, g.sw, g.s, g.dw)};
}

// When the channel form is taken (both forms measured on depthwise layers, float32, AMD EPYC Zen 5,
// 2 threads, row form -> channel form, forward and backward-data at stride 1):
//  - kernels of 16 taps or more, any row width: 7x7 p3 256 14x14 N32 1.93 -> 0.78 ms; 7x7/s2
//    512 14x14 N32 (4-wide rows) 2.19 -> 0.95 ms; 5x5 p2 64 32x32 N16 390 -> 316-341 us; 5x5 p2
//    64 56x56 N8 600-670 -> 446 us; 7x7 p3 64 48x48 N8 740-768 -> 457-494 us;
//  - smaller kernels only on rows under two vectors: 3x3 128 28x28 N16 463 -> 331 us; 2x2 128
//    14x14 N64 367 -> 338 us (backward-data 528 -> 337 us); but 3x3 64 32x32 N16 215-262 ->
//    310-317 us and 3x3 64 48x48 N16 442-529 -> 525-714 us, rows of whole vectors, lose;
//  - channels enough to fill the lanes, and the padded block and its output within 512 KiB (half
//    of Zen 5's L2, a quarter of Sapphire Rapids'): the transposed copies stay in cache.
constexpr int64_t kDwcMinTaps = 16;
constexpr int64_t kDwcMaxCols = 64;  // kernel columns of the strided backward-data's tables
constexpr int64_t kDwcMaxBytes = int64_t(512) << 10;

template <typename T>
static bool depthwise_channels_eligible(const Im2col& g) {
  using V = typename VecOf<T>::type;
  if (V::W == 1 || g.c_total < V::W) return false;
  const DwcGeometry d = dwc_geometry(g);
  const int64_t bytes = (d.hp * d.wp + g.p * g.q) * V::W * static_cast<int64_t>(sizeof(T));
  return bytes <= kDwcMaxBytes && (g.r * g.s >= kDwcMinTaps || g.q < 2 * V::W);
}

// Calls f(std::integral_constant<int, n>{}) for n in 1..N: a block width the kernels unroll over,
// chosen at run time.
template <int N, class F>
static inline void with_width(int64_t n, const F& f) {
  if constexpr (N > 1) {
    if (n < N) {
      with_width<N - 1>(n, f);
      return;
    }
  }
  f(std::integral_constant<int, N>{});
}

// NP output rows x NQ output pixels from (p, q0): acc = bias + sum over taps of tap . pixel.
template <class V, int NP, int NQ>
static inline void dwc_block(const Im2col& g, const DwcGeometry& d, const typename V::T* xt,
                             const typename V::T* wt, typename V::V bias, typename V::T* yt,
                             int64_t p, int64_t q0) {
  using R = typename V::V;
  constexpr int W = V::W;
  R acc[NP][NQ];
  for (int i = 0; i < NP; ++i)
    for (int j = 0; j < NQ; ++j) acc[i][j] = bias;
  const int64_t ld = d.wp * W, step = g.sw * W;
  for (int64_t r = 0; r < g.r; ++r) {
    const typename V::T* row = xt + (p * g.sh + r * g.dh) * ld + q0 * step;
    for (int64_t s = 0; s < g.s; ++s) {
      const R t = V::load(wt + (r * g.s + s) * W);
      const typename V::T* src = row + s * g.dw * W;
      for (int i = 0; i < NP; ++i)
        for (int j = 0; j < NQ; ++j)
          acc[i][j] = V::fma(t, V::load(src + i * g.sh * ld + j * step), acc[i][j]);
    }
  }
  for (int i = 0; i < NP; ++i)
    for (int j = 0; j < NQ; ++j) V::store(yt + ((p + i) * g.q + q0 + j) * W, acc[i][j]);
}

template <class V, int NP>
static inline void dwc_rows(const Im2col& g, const DwcGeometry& d, const typename V::T* xt,
                            const typename V::T* wt, typename V::V bias, typename V::T* yt,
                            int64_t p) {
  // 8 pixels a block: 8 FMA chains (two pipes of latency 4) per weight vector loaded.
  for (int64_t q0 = 0; q0 < g.q; q0 += 8) {
    with_width<8>(min64(8, g.q - q0), [&](auto n) {
      dwc_block<V, NP, decltype(n)::value>(g, d, xt, wt, bias, yt, p, q0);
    });
  }
}

// The channel form's frame, shared by the forward and backward-data kernels: per unit (W channels
// of one image) the source planes (c_total a image, h x w) transposed into the padded pixel
// buffer xt (window d), the taps (flipped when `flip`) and bias transposed into wt (rs + 1
// vectors), then compute(xt, wt, bias, yt) fills yt with out_plane pixels, transposed back into
// y's planes.
template <typename T, class Compute>
void dwc_run(int64_t n_img, int64_t c_total, int64_t h, int64_t w_img, const DwcGeometry& d,
             int64_t out_plane, int64_t rs, const T* x, const T* w, bool flip, const T* b, T* y,
             int nthreads, const Compute& compute) {
  using V = typename VecOf<T>::type;
  using R = typename V::V;
  constexpr int W = V::W;
  const int64_t blocks = ceil_div(c_total, W), units = blocks * n_img;
  const int64_t x_elems = round_up(d.hp * d.wp * W, 16), y_elems = round_up(out_plane * W, 16);
  const int64_t in_plane = h * w_img;
  // Padded rows i and columns j whose source row h_lo + i and column w_lo + j are in the plane.
  const int64_t i0 = min64(d.hp, max64(0, -d.h_lo)), i1 = max64(i0, min64(d.hp, h - d.h_lo));
  const int64_t j0 = min64(d.wp, max64(0, -d.w_lo)), j1 = max64(j0, min64(d.wp, w_img - d.w_lo));
  [[maybe_unused]] const int nt = static_cast<int>(min64(nthreads, units));
  parallel_ranges(units, 1, 1, nt, [&](int64_t u0, int64_t u1) {
    T* xt = static_cast<T*>(
        workspace(WorkspaceSlot::op_scratch,
                  static_cast<int64_t>((x_elems + y_elems + (rs + 1) * W) * sizeof(T))));
    T* yt = xt + x_elems;
    T* wt = yt + y_elems;
    // Units go channel block by channel block (all images of a block together), so that a
    // thread's consecutive units share their taps and the padded buffer's zero border.
    int64_t have = -1;  // the channel block whose taps and border are in the buffers
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t cb = u / n_img, img = u % n_img, c0 = cb * W;
      const int lc = static_cast<int>(min64(W, c_total - c0));  // live channels
      if (cb != have) {
        // Taps and bias, W channels each (zeros past the last channel).
        for (int64_t t = 0; t < rs; ++t) {
          const int64_t tap = flip ? rs - 1 - t : t;
          for (int l = 0; l < lc; ++l) wt[t * W + l] = w[(c0 + l) * rs + tap];
          for (int l = lc; l < W; ++l) wt[t * W + l] = T(0);
        }
        for (int l = 0; l < W; ++l) wt[rs * W + l] = b != nullptr && l < lc ? b[c0 + l] : T(0);
        // The border of the padded buffer: zeros, never overwritten by the pixels.
        if (have < 0) {
          for (int64_t e = 0; e < x_elems; e += W) V::store(xt + e, V::zero());
        }
        have = cb;
      }
      // The plane's pixels, W columns at a time transposed (a full block's loads unconditional).
      const T* xs = x + (img * c_total + c0) * in_plane;
      // The next unit's planes (one contiguous run in NCHW) requested into L2 now, while this
      // unit computes: the transposing loads walk W planes at once, W streams at a plane's
      // stride that the hardware prefetchers did not follow. 7x7 p3 256 14x14 N32 forward with
      // inputs out of cache (two rotated): 694-932 -> 587-640 us.
      if (u + 1 < u1) {
        const int64_t nu = u + 1, ncb = nu / n_img;
        const T* next = x + ((nu % n_img) * c_total + ncb * W) * in_plane;
        const int64_t bytes =
            min64(W, c_total - ncb * W) * in_plane * static_cast<int64_t>(sizeof(T));
        for (int64_t o = 0; o < bytes; o += 64)
          SIMDNN_PREFETCH_L2(reinterpret_cast<const char*>(next) + o);
      }
      auto copy_in = [&](auto full) {
        for (int64_t i = i0; i < i1; ++i) {
          const T* src = xs + (d.h_lo + i) * w_img + d.w_lo;
          for (int64_t j = j0; j < j1; j += W) {
            const int cnt = static_cast<int>(min64(W, j1 - j));
            R v[W];
            for (int l = 0; l < W; ++l) {
              v[l] = decltype(full)::value || l < lc ? V::loadn(src + l * in_plane + j, cnt)
                                                     : V::zero();
            }
            V::transpose(v);
            for (int k = 0; k < cnt; ++k) V::store(xt + (i * d.wp + j + k) * W, v[k]);
          }
        }
      };
      if (lc == W) {
        copy_in(std::true_type{});
      } else {
        copy_in(std::false_type{});
      }
      compute(static_cast<const T*>(xt), static_cast<const T*>(wt), V::load(wt + rs * W), yt);
      // Back to planes: W pixels x W channels transposed per step.
      T* ys = y + (img * c_total + c0) * out_plane;
      for (int64_t e = 0; e < out_plane; e += W) {
        const int cnt = static_cast<int>(min64(W, out_plane - e));
        R v[W];
        for (int k = 0; k < W; ++k) v[k] = k < cnt ? V::load(yt + (e + k) * W) : V::zero();
        V::transpose(v);
        for (int l = 0; l < lc; ++l) {
          if (cnt == W) {
            V::store(ys + l * out_plane + e, v[l]);
          } else {
            V::storen(ys + l * out_plane + e, v[l], cnt);
          }
        }
      }
    }
  });
}

// y planes = depthwise conv of x planes (taps flipped when `flip`: the backward-data form) + b,
// channels in the lanes. x: n_img images of g.c_total planes g.h x g.w; y: planes g.p x g.q.
template <typename T>
void depthwise_channels(const Im2col& g, int64_t n_img, const T* x, const T* w, bool flip,
                        const T* b, T* y, int nthreads) {
  using V = typename VecOf<T>::type;
  const DwcGeometry d = dwc_geometry(g);
  dwc_run(n_img, g.c_total, g.h, g.w, d, g.p * g.q, g.r * g.s, x, w, flip, b, y, nthreads,
          [&](const T* xt, const T* wt, typename V::V bias, T* yt) {
            int64_t p = 0;
            // Rows in pairs when a row is a single short block: at least 8 chains in flight.
            if (g.q <= 4) {
              for (; p + 2 <= g.p; p += 2) dwc_rows<V, 2>(g, d, xt, wt, bias, yt, p);
            }
            for (; p < g.p; ++p) dwc_rows<V, 1>(g, d, xt, wt, bias, yt, p);
          });
}

// dx of a strided depthwise layer in the channel form: dx pixel (h, x) = sum over the taps (r, s)
// with h + ph - r * dh = p * sh (p in [0, P)) and x + pw - s * dw = q * sw of w[r, s] . dy[p, q].
// Columns go by phase b = x mod sw: the taps of a phase read dy columns q0 + j for its outputs
// x = b + sw * j, contiguous pixels of a dy row zero-padded at both ends, so NQ outputs of one
// phase are NQ FMA chains with one weight load per tap. rr: the (r, p) pairs of the output row;
// tap_s / tap_off: the phase's taps and their first source pixel's offset in a buffer row.
template <class V, int NQ>
static inline void dwct_block(const typename V::T* row0, int64_t ld, const typename V::T* wt,
                              const int64_t* rr, int64_t nr, const int64_t* tap_s,
                              const int64_t* tap_off, int64_t ntap, int64_t s_taps,
                              typename V::T* out, int64_t step) {
  using R = typename V::V;
  constexpr int W = V::W;
  R acc[NQ];
  for (int j = 0; j < NQ; ++j) acc[j] = V::zero();
  for (int64_t i = 0; i < nr; ++i) {
    const typename V::T* row = row0 + rr[2 * i + 1] * ld;
    const typename V::T* wr = wt + rr[2 * i] * s_taps * W;
    for (int64_t k = 0; k < ntap; ++k) {
      const R t = V::load(wr + tap_s[k] * W);
      const typename V::T* src = row + tap_off[k];
      for (int j = 0; j < NQ; ++j) acc[j] = V::fma(t, V::load(src + j * W), acc[j]);
    }
  }
  for (int j = 0; j < NQ; ++j) V::store(out + j * step, acc[j]);
}

// The strided backward-data's buffers: per output row its (r, p) pairs, per column phase its taps
// and their first source columns, and the dy buffer's window (all rows, columns padded so that
// every phase's block reads inside it).
struct DwcTransposed {
  std::vector<int64_t> rows, n_rows, tap_s, tap_q0, n_taps;
  DwcGeometry d;
};

static inline DwcTransposed dwc_transposed(const Conv2d& cv) {
  DwcTransposed t;
  t.rows.resize(static_cast<size_t>(2 * cv.h * cv.r));
  t.n_rows.resize(static_cast<size_t>(cv.h));
  for (int64_t h = 0; h < cv.h; ++h) {
    int64_t nr = 0;
    for (int64_t r = 0; r < cv.r; ++r) {
      const int64_t num = h + cv.ph - r * cv.dh;
      if (num < 0 || num % cv.sh != 0 || num / cv.sh >= cv.p) continue;
      t.rows[static_cast<size_t>(2 * (h * cv.r + nr))] = r;
      t.rows[static_cast<size_t>(2 * (h * cv.r + nr) + 1)] = num / cv.sh;
      ++nr;
    }
    t.n_rows[static_cast<size_t>(h)] = nr;
  }
  t.tap_s.resize(static_cast<size_t>(cv.sw * cv.s));
  t.tap_q0.resize(static_cast<size_t>(cv.sw * cv.s));
  t.n_taps.resize(static_cast<size_t>(cv.sw));
  int64_t lo = 0, hi = cv.q - 1;  // the dy columns any block reads
  for (int64_t b = 0; b < cv.sw; ++b) {
    const int64_t nj = ceil_div(cv.w - b, cv.sw);
    int64_t n = 0;
    for (int64_t s = 0; s < cv.s; ++s) {
      const int64_t num = b + cv.pw - s * cv.dw;
      if (((num % cv.sw) + cv.sw) % cv.sw != 0) continue;
      const int64_t q0 = num / cv.sw;  // exact
      t.tap_s[static_cast<size_t>(b * cv.s + n)] = s;
      t.tap_q0[static_cast<size_t>(b * cv.s + n)] = q0;
      ++n;
      if (nj > 0) {
        lo = min64(lo, q0);
        hi = max64(hi, q0 + nj - 1);
      }
    }
    t.n_taps[static_cast<size_t>(b)] = n;
  }
  t.d = DwcGeometry{0, lo, cv.p, hi - lo + 1};
  return t;
}

// Strided backward-data takes the channel form on the same terms as the forward: many taps or
// short rows (a phase's outputs, W / sw, against two vectors), and buffers within kDwcMaxBytes.
template <typename T>
static bool depthwise_transposed_eligible(const Conv2d& cv, const DwcTransposed& t) {
  using V = typename VecOf<T>::type;
  if (V::W == 1 || cv.c < V::W) return false;
  const int64_t bytes = (t.d.hp * t.d.wp + cv.h * cv.w) * V::W * static_cast<int64_t>(sizeof(T));
  return bytes <= kDwcMaxBytes && (cv.r * cv.s >= kDwcMinTaps || ceil_div(cv.w, cv.sw) < 2 * V::W);
}

template <typename T>
void depthwise_transposed(const Conv2d& cv, const DwcTransposed& t, const T* dy, const T* w,
                          T* dx) {
  using V = typename VecOf<T>::type;
  constexpr int W = V::W;
  const int64_t ld = t.d.wp * W;
  dwc_run(cv.n, cv.c, cv.p, cv.q, t.d, cv.h * cv.w, cv.r * cv.s, dy, w, false,
          static_cast<const T*>(nullptr), dx, cv.nthreads,
          [&](const T* dyt, const T* wt, typename V::V, T* yt) {
            int64_t off[kDwcMaxCols];
            for (int64_t b = 0; b < cv.sw; ++b) {
              const int64_t nj = ceil_div(cv.w - b, cv.sw), ntap = t.n_taps[b];
              const int64_t* ts = t.tap_s.data() + b * cv.s;
              for (int64_t k = 0; k < ntap; ++k) off[k] = (t.tap_q0[b * cv.s + k] - t.d.w_lo) * W;
              for (int64_t h = 0; h < cv.h; ++h) {
                const int64_t* rr = t.rows.data() + 2 * h * cv.r;
                const int64_t nr = t.n_rows[h];
                for (int64_t j0 = 0; j0 < nj; j0 += 8) {
                  const T* row0 = dyt + j0 * W;
                  T* out = yt + (h * cv.w + b + cv.sw * j0) * W;
                  const int64_t step = cv.sw * W;
                  with_width<8>(min64(8, nj - j0), [&](auto n) {
                    dwct_block<V, decltype(n)::value>(row0, ld, wt, rr, nr, ts, off, ntap, cv.s,
                                                      out, step);
                  });
                }
              }
            }
          });
}

// y[n, c] = conv(x[n, c], w[c]) + b[c] for every plane, in parallel over planes.
template <typename T>
void depthwise_forward(const Im2col& g, int64_t n_img, const T* x, const T* w, const T* b, T* y,
                       int nthreads) {
  using V = typename VecOf<T>::type;
  if (depthwise_channels_eligible<T>(g)) {
    depthwise_channels(g, n_img, x, w, false, b, y, nthreads);
    return;
  }
  const PadPlane pp = pad_plane_geometry(g, V::W);
  const int64_t planes = n_img * g.c_total, in_plane = g.h * g.w, out_plane = g.p * g.q;
  const int64_t rs = g.r * g.s;
  [[maybe_unused]] const int nt = static_cast<int>(min64(nthreads, planes));
  parallel_ranges(planes, 1, 1, nt, [&](int64_t i0, int64_t i1) {
    const DwScratch<T> ws = dw_scratch<T>(pp, g.r, g.s, g.dh, g.dw);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t c = i % g.c_total;
      fill_padded(x + i * in_plane, g, pp, ws.plane);
      depthwise_plane<V>(g, pp, ws.plane, ws.off, w + c * rs, b != nullptr ? b[c] : T(0),
                         y + i * out_plane);
    }
  });
}

// dx[n, c] for strides above 1, as a gather over dy (finite weights: dy's zero padding times an
// Inf tap would give NaN). Output column x = a + sw * j of phase a takes tap s when
// (a + pw - s * dw) is a multiple of sw, from dy column q = (a + pw - s * dw) / sw + j: a
// contiguous run of j, so every tap of a phase is a plain vector load from a zero-padded copy of
// the dy row. Output row h takes tap row r from dy row p = (h + ph - r * dh) / sh when that is
// exact and in [0, P). The phases are interleaved on store (one store2 for sw = 2). The scatter
// it replaces (a scalar += per tap and dy element, then a crop) ran at 0.18-0.35x PyTorch on the
// sweep's strided depthwise layers; this runs at 0.60-0.80x (Zen 5, 2 threads): PyTorch still
// leads on these small planes.
template <typename T>
void depthwise_backward_data_strided(const Conv2d& cv, const T* dy, const T* w, T* dx, int nt) {
  using V = typename VecOf<T>::type;
  using R = typename V::V;
  constexpr int W = V::W;
  const int64_t rs = cv.r * cv.s, planes = cv.n * cv.c;
  const int64_t sw = cv.sw, nj = ceil_div(cv.w, sw);  // outputs per phase (the first phase's)
  // dy rows padded with lq zeros on the left (q0 >= -lq) and zeros past Q up to the last vector.
  const int64_t lq = ceil_div((cv.s - 1) * cv.dw, sw) + 1;
  // Slack for two vectors past the last output (the j loop takes two blocks at a time).
  const int64_t ld = round_up(lq + (sw - 1 + cv.pw) / sw + 1 + nj + 2 * W, 16);
  const int64_t tmp_ld = round_up(nj + 2 * W, 16);
  parallel_ranges(planes, 1, 1, nt, [&](int64_t i0, int64_t i1) {
    const size_t bytes =
        static_cast<size_t>(cv.p * ld + sw * tmp_ld) * sizeof(T) +
        static_cast<size_t>(2 * sw * cv.s + 2 * cv.h * cv.r + cv.h + sw) * sizeof(int64_t);
    char* base = static_cast<char*>(workspace(WorkspaceSlot::op_scratch, bytes));
    T* pad = reinterpret_cast<T*>(base);
    T* tmp = pad + cv.p * ld;
    int64_t* taps_s = reinterpret_cast<int64_t*>(tmp + sw * tmp_ld);  // per phase: the taps s
    int64_t* taps_q0 = taps_s + sw * cv.s;                            // and their q0
    int64_t* rows = taps_q0 + sw * cv.s;  // per output row h: its (r, p) pairs
    int64_t* n_rows = rows + 2 * cv.h * cv.r;
    int64_t* n_taps = n_rows + cv.h;  // taps per phase
    // Per phase a: the taps s and their first dy column q0 (exact division: a multiple of sw).
    for (int64_t a = 0; a < sw; ++a) {
      n_taps[a] = 0;
      for (int64_t s = 0; s < cv.s; ++s) {
        const int64_t num = a + cv.pw - s * cv.dw;
        if (((num % sw) + sw) % sw == 0) {
          taps_s[a * cv.s + n_taps[a]] = s;
          taps_q0[a * cv.s + n_taps[a]++] = num / sw;  // exact
        }
      }
    }
    // Per output row h: the tap rows r whose dy row p = (h + ph - r * dh) / sh is exact and in
    // range (the same for every plane).
    for (int64_t h = 0; h < cv.h; ++h) {
      int64_t nr = 0;
      for (int64_t r = 0; r < cv.r; ++r) {
        const int64_t num = h + cv.ph - r * cv.dh;
        if (num < 0 || num % cv.sh != 0 || num / cv.sh >= cv.p) continue;
        rows[2 * (h * cv.r + nr)] = r;
        rows[2 * (h * cv.r + nr) + 1] = num / cv.sh;
        ++nr;
      }
      n_rows[h] = nr;
    }
    for (int64_t i = i0; i < i1; ++i) {
      const T* taps = w + (i % cv.c) * rs;
      const T* gp = dy + i * cv.p * cv.q;
      // Inline vector stores: three libc calls per row cost more than the arithmetic on the
      // 4x4 dy planes of a 7x7/s2 layer on 14x14.
      for (int64_t p = 0; p < cv.p; ++p) {
        T* d = pad + p * ld;
        const T* src = gp + p * cv.q;
        for (int64_t k = 0; k < ld; k += W) V::store(d + k, V::zero());  // ld: multiple of 16
        int64_t q = 0;
        for (; q + W <= cv.q; q += W) V::store(d + lq + q, V::load(src + q));
        for (; q < cv.q; ++q) d[lq + q] = src[q];
      }
      T* out = dx + i * cv.h * cv.w;
      for (int64_t h = 0; h < cv.h; ++h) {
        const int64_t nr = n_rows[h];
        const int64_t* hr = rows + 2 * h * cv.r;
        T* orow = out + h * cv.w;
        if (nr == 0) {
          std::memset(orow, 0, static_cast<size_t>(cv.w) * sizeof(T));
          continue;
        }
        for (int64_t a = 0; a < sw; ++a) {
          const int64_t len = a < cv.w ? ceil_div(cv.w - a, sw) : 0;  // outputs x = a + sw * j
          // Two vectors at a time: two independent FMA chains (a chain of R * S / (sh * sw)
          // dependent FMAs alone left the FMA pipes mostly idle). A phase of one vector or less
          // splits its taps between the two chains instead (7x7/s2, 512 channels, 14x14, N32:
          // 2.9 -> 2.5 ms).
          if (len <= W) {
            R acc0 = V::zero(), acc1 = V::zero();
            for (int64_t u = 0; u < nr; ++u) {
              const T* drow = pad + hr[2 * u + 1] * ld + lq;
              const T* trow = taps + hr[2 * u] * cv.s;
              int64_t k = 0;
              for (; k + 2 <= n_taps[a]; k += 2) {
                const int64_t t = a * cv.s + k;
                acc0 = V::fma(V::set1(trow[taps_s[t]]), V::load(drow + taps_q0[t]), acc0);
                acc1 = V::fma(V::set1(trow[taps_s[t + 1]]), V::load(drow + taps_q0[t + 1]), acc1);
              }
              if (k < n_taps[a]) {
                const int64_t t = a * cv.s + k;
                acc0 = V::fma(V::set1(trow[taps_s[t]]), V::load(drow + taps_q0[t]), acc0);
              }
            }
            V::store(tmp + a * tmp_ld, V::add(acc0, acc1));
            continue;
          }
          for (int64_t j = 0; j < len; j += 2 * W) {
            R acc0 = V::zero(), acc1 = V::zero();
            for (int64_t u = 0; u < nr; ++u) {
              const T* drow = pad + hr[2 * u + 1] * ld + lq + j;
              const T* trow = taps + hr[2 * u] * cv.s;
              for (int64_t k = 0; k < n_taps[a]; ++k) {
                const int64_t t = a * cv.s + k;
                const R tap = V::set1(trow[taps_s[t]]);
                acc0 = V::fma(tap, V::load(drow + taps_q0[t]), acc0);
                acc1 = V::fma(tap, V::load(drow + taps_q0[t] + W), acc1);
              }
            }
            V::store(tmp + a * tmp_ld + j, acc0);
            V::store(tmp + a * tmp_ld + j + W, acc1);
          }
        }
        // Interleave the phases into the dx row.
        if (sw == 2) {
          int64_t j = 0;
          for (; 2 * (j + W) <= cv.w; j += W) {
            V::store2(orow + 2 * j, V::load(tmp + j), V::load(tmp + tmp_ld + j));
          }
          if (2 * j < cv.w) {
            V::store2n(orow + 2 * j, V::load(tmp + j), V::load(tmp + tmp_ld + j),
                       static_cast<int>(cv.w - 2 * j));
          }
        } else {
          for (int64_t x = 0; x < cv.w; ++x) orow[x] = tmp[(x % sw) * tmp_ld + x / sw];
        }
      }
    }
  });
}

// dx[n, c] for stride 1: the convolution of dy[n, c] with the flipped taps, padding dh*(R-1) - ph.
// Any stride: scatter each dy pixel into a padded dx plane, then crop.
template <typename T>
void depthwise_backward_data(const Conv2d& cv, const T* dy, const T* w, T* dx) {
  using V = typename VecOf<T>::type;
  const int64_t planes = cv.n * cv.c, rs = cv.r * cv.s;
  [[maybe_unused]] const int nt = static_cast<int>(min64(cv.nthreads, max64(1, planes)));
  if (cv.sh == 1 && cv.sw == 1 && all_finite(w, cv.c * rs)) {
    // Source dy (P x Q), output dx (H x W).
    const Im2col g{cv.c,
                   0,
                   1,
                   cv.p,
                   cv.q,
                   cv.r,
                   cv.s,
                   1,
                   1,
                   cv.dh * (cv.r - 1) - cv.ph,
                   cv.dw * (cv.s - 1) - cv.pw,
                   cv.dh,
                   cv.dw,
                   cv.h,
                   cv.w};
    if (depthwise_channels_eligible<T>(g)) {
      depthwise_channels(g, cv.n, dy, w, true, static_cast<const T*>(nullptr), dx, cv.nthreads);
      return;
    }
    const PadPlane pp = pad_plane_geometry(g, V::W);
    parallel_ranges(planes, 1, 1, nt, [&](int64_t i0, int64_t i1) {
      const DwScratch<T> ws = dw_scratch<T>(pp, g.r, g.s, g.dh, g.dw);
      for (int64_t i = i0; i < i1; ++i) {
        const T* taps = w + (i % cv.c) * rs;
        for (int64_t t = 0; t < rs; ++t) ws.taps[t] = taps[rs - 1 - t];
        fill_padded(dy + i * cv.p * cv.q, g, pp, ws.plane);
        depthwise_plane<V>(g, pp, ws.plane, ws.off, ws.taps, T(0), dx + i * cv.h * cv.w);
      }
    });
    return;
  }
  if (all_finite(w, cv.c * rs)) {
    if (cv.s <= kDwcMaxCols) {
      const DwcTransposed t = dwc_transposed(cv);
      if (depthwise_transposed_eligible<T>(cv, t)) {
        depthwise_transposed(cv, t, dy, w, dx);
        return;
      }
    }
    depthwise_backward_data_strided(cv, dy, w, dx, nt);
    return;
  }
  // Weights that are not all finite: each real dy term scattered into a padded dx plane covering
  // every position a tap can reach (only real terms, so an Inf tap gives Inf, not NaN).
  const int64_t hp = padded_extent(cv.p, cv.sh, cv.r, cv.dh);
  const int64_t wp = padded_extent(cv.q, cv.sw, cv.s, cv.dw);
  parallel_ranges(planes, 1, 1, nt, [&](int64_t i0, int64_t i1) {
    T* buf = static_cast<T*>(workspace(WorkspaceSlot::op_scratch, hp * wp * sizeof(T)));
    for (int64_t i = i0; i < i1; ++i) {
      const T* taps = w + (i % cv.c) * rs;
      const T* gp = dy + i * cv.p * cv.q;
      for (int64_t j = 0; j < hp * wp; ++j) buf[j] = T(0);
      for (int64_t p = 0; p < cv.p; ++p) {
        for (int64_t r = 0; r < cv.r; ++r) {
          T* row = buf + (p * cv.sh + r * cv.dh) * wp;
          for (int64_t s = 0; s < cv.s; ++s) {
            const T t = taps[r * cv.s + s];
            T* o = row + s * cv.dw;
            for (int64_t q = 0; q < cv.q; ++q) o[q * cv.sw] += t * gp[p * cv.q + q];
          }
        }
      }
      T* out = dx + i * cv.h * cv.w;
      for (int64_t h = 0; h < cv.h; ++h) {
        const int64_t hi = h + cv.ph;
        for (int64_t x = 0; x < cv.w; ++x) {
          const int64_t wi = x + cv.pw;
          out[h * cv.w + x] = (hi < hp && wi < wp) ? buf[hi * wp + wi] : T(0);
        }
      }
    }
  });
}

// sums[t] += sum over p, q of dy[p, q] * padded[off[t] + p * sh * ld + q], for NT taps at once:
// each dy vector is loaded once and feeds NT independent accumulators. Tap by tap (the code this
// replaces) each tap was one chain of P * Q / W dependent FMAs, 4 cycles apart, and re-read dy
// R * S times: the dw3x3 128-channel backward-weights row ran at 3% of peak.
template <class V, int NT>
static inline void depthwise_dw_taps(const Conv2d& cv, const PadPlane& pp, const typename V::T* buf,
                                     const typename V::T* gp, const int64_t* off,
                                     typename V::T* sums) {
  using R = typename V::V;
  constexpr int W = V::W;
  R acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = V::zero();
  for (int64_t p = 0; p < cv.p; ++p) {
    const typename V::T* grow = gp + p * cv.q;
    const typename V::T* brow = buf + p * cv.sh * pp.ld;
    int64_t q = 0;
    for (; q + W <= cv.q; q += W) {
      const R g = V::load(grow + q);
      for (int t = 0; t < NT; ++t) acc[t] = V::fma(g, V::load(brow + off[t] + q), acc[t]);
    }
    if (q < cv.q) {
      // Masked loads of the padded plane too: a NaN past the row would otherwise reach the sum.
      const int live = static_cast<int>(cv.q - q);
      const R g = V::loadn(grow + q, live);
      for (int t = 0; t < NT; ++t) acc[t] = V::fma(g, V::loadn(brow + off[t] + q, live), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) sums[t] += lane_sum<V>(acc[t]);
}

// dw[c, r, s] = sum over n, p, q of dy[n, c, p, q] * x_pad[n, c, p*sh + r*dh, q*sw + s*dw];
// db[c] = sum of dy[n, c]. Parallel over channels: each thread owns whole channels, so there are
// no partial sums. Taps go 9 at a time (3x3 in one pass over dy), else 8, 4, 2, 1: at most 9
// accumulators, which with dy's vector and the loads fit AVX2's 16 registers.
template <typename T>
void depthwise_backward_weights(const Conv2d& cv, const T* x, const T* dy, T* dw, T* db) {
  using V = typename VecOf<T>::type;
  using R = typename V::V;
  constexpr int W = V::W;
  const Im2col g{cv.c,  0,     1,     cv.h,  cv.w,  cv.r, cv.s, cv.sh,
                 cv.sw, cv.ph, cv.pw, cv.dh, cv.dw, cv.p, cv.q};
  const PadPlane pp = pad_plane_geometry(g, V::W);
  const int64_t rs = cv.r * cv.s;
  [[maybe_unused]] const int nt = static_cast<int>(min64(cv.nthreads, max64(1, cv.c)));
  parallel_ranges(cv.c, 1, 1, nt, [&](int64_t i0, int64_t i1) {
    const DwScratch<T> ws = dw_scratch<T>(pp, cv.r, cv.s, cv.dh, cv.dw);
    T* buf = ws.plane;
    const int64_t* off = ws.off;
    for (int64_t c = i0; c < i1; ++c) {
      T* dwc = dw + c * rs;
      for (int64_t t = 0; t < rs; ++t) dwc[t] = T(0);
      R bacc = V::zero();
      for (int64_t n = 0; n < cv.n; ++n) {
        const int64_t i = n * cv.c + c;
        const T* gp = dy + i * cv.p * cv.q;
        fill_padded(x + i * cv.h * cv.w, g, pp, buf);
        int64_t t = 0;
        if (rs == 9) {
          depthwise_dw_taps<V, 9>(cv, pp, buf, gp, off, dwc);
          t = 9;
        }
        for (; t + 8 <= rs; t += 8) depthwise_dw_taps<V, 8>(cv, pp, buf, gp, off + t, dwc + t);
        if (t + 4 <= rs) {
          depthwise_dw_taps<V, 4>(cv, pp, buf, gp, off + t, dwc + t);
          t += 4;
        }
        if (t + 2 <= rs) {
          depthwise_dw_taps<V, 2>(cv, pp, buf, gp, off + t, dwc + t);
          t += 2;
        }
        if (t < rs) depthwise_dw_taps<V, 1>(cv, pp, buf, gp, off + t, dwc + t);
        if (db != nullptr) {
          const int64_t len = cv.p * cv.q;
          int64_t j = 0;
          for (; j + W <= len; j += W) bacc = V::add(bacc, V::load(gp + j));
          if (j < len) bacc = V::add(bacc, V::loadn(gp + j, static_cast<int>(len - j)));
        }
      }
      if (db != nullptr) db[c] = lane_sum<V>(bacc);
    }
  });
}

}  // namespace
}  // namespace simdnn::SIMDNN_ISA_NS
