// Convolution geometry and im2col gathering, for the per-ISA convolution files (everything in an
// unnamed namespace inside the ISA's namespace). The shape legend is conv.cpp's. im2col never
// exists as a whole: the GEMM policies (gemm_policies.h) gather it panel by panel while packing.
#pragma once

#include <climits>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common/int_math.h"
#include "conv/conv.h"
#include "simd/simd.h"

#ifndef SIMDNN_ISA_NS
#error "compile with -DSIMDNN_ISA_NS=<isa>"
#endif

namespace simdnn::SIMDNN_ISA_NS {
namespace {

// Geometry of one im2col: which source planes, and how output pixels map to them.
//   source pixel of output (p, q) and tap (r, s): (p*sh - ph + r*dh, q*sw - pw + s*dw)
// Padding may be negative (the flipped backward-data convolution crops instead of padding).
struct Im2col {
  int64_t c_total;  // channels per image of the source tensor
  int64_t c0, cg;   // this group's first channel and channel count
  int64_t h, w;     // source plane
  int64_t r, s, sh, sw, ph, pw, dh, dw;
  int64_t p, q;  // output plane
  int64_t rows() const { return cg * r * s; }
};

// A run of output pixels of one output row inside a column panel.
struct Segment {
  int64_t p, q, len, off;
  int64_t img = 0;  // image of the segment (backward-weights ranges span images)
};

// d[0, len) = src[0, len) and d[0, len) = 0, a vector at a time with a masked tail: im2col
// segments are often shorter than a vector (LeNet's 8-pixel rows), where a scalar loop with its
// bounds spent more cycles per element than the micro-kernel's FMAs on it.
template <class V>
static inline void copy_run(const typename V::T* src, typename V::T* d, int64_t len) {
  constexpr int W = V::W;
  int64_t j = 0;
  for (; j + W <= len; j += W) V::store(d + j, V::load(src + j));
  if (j < len) {
    const int live = static_cast<int>(len - j);
    V::storen(d + j, V::loadn(src + j, live), live);
  }
}

template <class V>
static inline void zero_run(typename V::T* d, int64_t len) {
  constexpr int W = V::W;
  int64_t j = 0;
  for (; j + W <= len; j += W) V::store(d + j, V::zero());
  if (j < len) V::storen(d + j, V::zero(), static_cast<int>(len - j));
}

// Writes the pixels of one segment for tap (r, s) of one source plane into d[0, len).
template <class V>
static inline void gather_segment(const Im2col& g, const typename V::T* plane, int64_t r, int64_t s,
                                  const Segment& sg, typename V::T* d) {
  using T = typename V::T;
  const int64_t hi = sg.p * g.sh - g.ph + r * g.dh;
  if (hi < 0 || hi >= g.h) {
    zero_run<V>(d, sg.len);
    return;
  }
  const T* row = plane + hi * g.w;
  const int64_t w0 = sg.q * g.sw - g.pw + s * g.dw;
  if (g.sw == 1) {
    // In bounds for j in [lo, hj): zeros, a contiguous copy, zeros.
    const int64_t lo = min64(sg.len, max64(0, -w0));
    const int64_t hj = max64(lo, min64(sg.len, g.w - w0));
    if (lo > 0) zero_run<V>(d, lo);
    copy_run<V>(row + w0 + lo, d + lo, hj - lo);
    if (hj < sg.len) zero_run<V>(d + hj, sg.len - hj);
  } else if (g.sw == 2) {
    // Stride 2: output j reads column w0 + 2j, in bounds for j in [lo, hj). Each vector of W
    // outputs is one deinterleaving load of 2W elements wherever those stay inside the plane,
    // including the columns left and right of the row (the neighbouring rows' pixels), whose lanes
    // are then zeroed in registers (V::keep). Only at the plane's first and last elements does a
    // masked load remain (they cost about 25 cycles on Zen 5). Before, every segment that touched
    // the padding (the s = 0 tap of a padding-1 layer: a third of them) took masked loads. On
    // 64->128 3x3/s2 p1 32x32 N16 forward, AMD EPYC Zen 5, 2 threads: 1.65-1.69 ms either way with
    // the input in cache; the benchmark row (inputs rotated) 2.28 ms before, 1.75 ms after.
    const int64_t lo = w0 >= 0 ? 0 : min64(sg.len, ceil_div(-w0, 2));
    const int64_t hj = w0 >= g.w ? lo : max64(lo, min64(sg.len, ceil_div(g.w - w0, 2)));
    constexpr int W = V::W;
    const int64_t base = hi * g.w + w0, plane_end = g.h * g.w;  // flat offset of output 0's column
    for (int64_t j = 0; j < sg.len; j += W) {
      const int cnt = static_cast<int>(min64(W, sg.len - j));
      const int a = clamp_int(lo - j, 0, cnt);
      const int b = clamp_int(hj - j, 0, cnt);
      typename V::V v, odd;
      if (a >= b) {
        v = V::zero();
      } else if (base + 2 * j >= 0 && base + 2 * j + 2 * W <= plane_end) {
        V::load2(row + w0 + 2 * j, v, odd);
        if (a > 0 || b < W) v = V::keep(v, V::lanes(a, b));
      } else {
        // Elements [2a, 2b - 1) of the 2W: the even ones are the valid outputs.
        V::load2r(shifted(row, w0 + 2 * j), 2 * a, 2 * b - 1, typename V::T(0), v, odd);
      }
      if (cnt == W) {
        V::store(d + j, v);
      } else {
        V::storen(d + j, v, cnt);
      }
    }
  } else {
    // Larger strides: the in-bounds outputs [lo, hj) by gathers.
    const int64_t lo = w0 >= 0 ? 0 : min64(sg.len, ceil_div(-w0, g.sw));
    const int64_t hj = w0 >= g.w ? lo : max64(lo, min64(sg.len, ceil_div(g.w - w0, g.sw)));
    constexpr int W = V::W;
    if (lo > 0) zero_run<V>(d, lo);
    for (int64_t j = lo; j < hj; j += W) {
      const int cnt = static_cast<int>(min64(W, hj - j));
      const typename V::V v = V::gathern(row + w0 + j * g.sw, static_cast<int>(g.sw), cnt);
      if (cnt == W) {
        V::store(d + j, v);
      } else {
        V::storen(d + j, v, cnt);
      }
    }
    if (hj < sg.len) zero_run<V>(d + hj, sg.len - hj);
  }
}

// The vector form of an im2col row (strides 1 and 2). A run of output pixels, split into row
// segments, is written W lanes at a time: each vector is put together in registers from
// whole-vector loads of the source plane, one per segment it overlaps, each kept on its live lanes
// (those of the segment whose source row and column lie inside the plane) and blended into place,
// then stored once. The entries depend on the tap (r, s) and the vector, not on the channel, so
// they are tabulated once per run and reused by every channel. Before, each row was written
// segment by segment (zeros, a copy with a masked tail, zeros), about one cycle per element: on
// 3x3 128->128 28x28 N16 that pack took 21% of the forward's samples against 56% for the
// micro-kernels. AMD EPYC Zen 5, 2 threads, two alternating runs, segment copies -> vector form:
//   forward (Im2colB)  3x3 128->128 28x28 N16 (im2col forced) 9.09-9.49 -> 8.60-8.65 ms,
//                      256->256 14x14 N16 9.32-9.63 -> 8.63-8.70 ms, 3x3/s2 64->128 32x32 N16
//                      1.60-1.66 -> 1.39-1.41 ms, 7x7/s2 3->64 112x112 N8 1.55-1.57 -> 1.47-1.49
//                      ms, LeNet's second layer 0.66-0.67 -> 0.64-0.66 ms; 64->64 32x32 N32 (one
//                      segment a panel) even.
//   backward-weights (Im2colTB, padded or strided layers; rows then transposed)  3x3 128->128
//                      28x28 N16 (im2col forced) 9.47-9.69 -> 8.92-9.23 ms, 256->256 14x14 N16
//                      9.15-9.18 -> 8.07-8.17 ms, 64->64 32x32 N32 7.42-7.49 -> 6.81-6.99 ms,
//                      3x3/s2 64->128 32x32 N16 1.69 -> 1.43-1.47 ms.
template <class V>
struct VecTable {
  using T = typename V::T;
  // At most this many segments a vector (a vector of 16 spans 3 rows of 7 or more pixels); `cap`
  // entries in all (taps x vectors x kEntries: a forward panel of 2 vectors, 3x3 taps, needs 54; a
  // 4x4 backward-weights block of 464 pixels, 29 vectors, needs 1,392).
  static constexpr int kEntries = 3;
  struct Entry {
    int64_t off;         // offset of lane 0 from the source plane: lane l reads off + l * sw
    typename V::M live;  // lanes [a, b)
    int a, b;
  };
  // Bytes of storage for `cap` entries and their counts (entries first, aligned as an Entry).
  static constexpr int64_t bytes(int64_t cap) {
    return cap * static_cast<int64_t>(sizeof(Entry)) +
           (cap / kEntries) * static_cast<int64_t>(sizeof(int));
  }
  Entry* ent;  // cap entries
  int* count;  // cap / kEntries: per tap and vector
  int64_t cap;
  VecTable(void* storage, int64_t cap_)
      : ent(static_cast<Entry*>(storage)),
        count(reinterpret_cast<int*>(static_cast<Entry*>(storage) + cap_)),
        cap(cap_) {}
  int64_t nvec = 0;
  int64_t lo = 0, hi = 0;  // extremes of all entries' reads, as offsets

  // Tabulates the pixels seg[0, nseg) (nvec vectors) for every tap of g; img_stride: elements
  // between the planes of consecutive images (segments of several images). False where the table
  // does not fit or a vector spans more than kEntries segments.
  bool build(const Im2col& g, int64_t img_stride, const Segment* seg, int64_t nseg,
             int64_t vectors) {
    constexpr int W = V::W;
    const int64_t taps = g.r * g.s;
    if (!(g.sw == 1 || g.sw == 2) || nseg <= 0 || taps * vectors * kEntries > cap) return false;
    nvec = vectors;
    lo = INT64_MAX;
    hi = INT64_MIN;
    for (int64_t i = 0; i < taps * vectors; ++i) count[i] = 0;
    for (int64_t tap = 0; tap < taps; ++tap) {
      const int64_t r = tap / g.s, s = tap % g.s;
      for (int64_t i = 0; i < nseg; ++i) {
        const Segment& sg = seg[i];
        const int64_t hr = sg.p * g.sh - g.ph + r * g.dh;
        for (int64_t jv = sg.off / W; jv * W < sg.off + sg.len; ++jv) {
          int& n = count[tap * vectors + jv];
          if (n == kEntries) return false;
          if (hr < 0 || hr >= g.h) continue;
          const int64_t la = max64(0, sg.off - jv * W), lb = min64(W, sg.off + sg.len - jv * W);
          // Lane l is output column q = sg.q + l - (sg.off - jv * W), source column
          // q * sw - pw + s * dw = col0 + l * sw; in the plane for l in [ca, cb).
          const int64_t col0 = (sg.q - (sg.off - jv * W)) * g.sw - g.pw + s * g.dw;
          const int64_t ca = col0 >= 0 ? 0 : ceil_div(-col0, g.sw);
          const int64_t cb = col0 >= g.w ? 0 : ceil_div(g.w - col0, g.sw);
          const int a = static_cast<int>(max64(la, ca)), b = static_cast<int>(min64(lb, cb));
          if (a >= b) continue;
          const int64_t off = sg.img * img_stride + hr * g.w + col0;
          ent[(tap * vectors + jv) * kEntries + n++] = Entry{off, V::lanes(a, b), a, b};
          lo = min64(lo, off);
          hi = max64(hi, off + g.sw * W);
        }
      }
    }
    if (lo > hi) lo = hi = 0;  // no entries (every tap on padding): nothing is read
    return true;
  }

  // Writes vectors [0, nv) of tap `tap` for the source plane at `plane` (at elements from the start
  // of the readable memory, of which there are `readable`) to d. Whole-vector loads wherever all
  // of the table's reads stay inside the readable memory (all planes but the first and last);
  // elsewhere each entry reads only its live lanes.
  void row(const T* plane, int64_t at, int64_t readable, int64_t tap, int64_t nv, int64_t sw,
           T* d) const {
    const bool safe = at + lo >= 0 && at + hi <= readable;
    for (int64_t jv = 0; jv < nv; ++jv) {
      typename V::V acc = V::zero();
      const Entry* e = ent + (tap * nvec + jv) * kEntries;
      const int n = count[tap * nvec + jv];
      for (int i = 0; i < n; ++i) acc = V::blend(e[i].live, acc, load(plane, e[i], sw, safe));
      V::store(d + jv * V::W, acc);
    }
  }

  static typename V::V load(const T* plane, const Entry& e, int64_t sw, bool safe) {
    typename V::V even, odd;
    if (sw == 1) {
      if (safe) return V::load(plane + e.off);
      return V::loadr(shifted(plane, e.off), e.a, e.b, T(0));
    }
    if (safe) {
      V::load2(plane + e.off, even, odd);
    } else {
      V::load2r(shifted(plane, e.off), 2 * e.a, 2 * e.b - 1, T(0), even, odd);
    }
    return even;
  }
};

// Whether V has the two-source permute of the window form (AVX-512).
template <class V, class = void>
struct HasPermute2 : std::false_type {
  using Index = int;  // a placeholder where there is no permute
};
template <class V>
struct HasPermute2<V, std::void_t<decltype(V::kPermute2)>> : std::true_type {
  using Index = typename V::I;
};

// The window form of a forward panel's im2col rows (AVX-512's two-source permute): output pixel
// (p, q) reads, for tap (r, s), the plane element base + tap_off with base = p*sh*w + q*sw and
// tap_off = (r*dh - ph)*w + s*dw - pw. Where each vector's lanes have bases within 2W of one
// another, a vector of a row is two loads at base_min + tap_off and one permute by the fixed
// indices base - base_min, zeroing by a per-tap mask the lanes on padding; the rows of a plane
// run in one loop without branches. The vector form above instead loads and blends once per
// output row a vector spans, from a table entry each, a call per row: on LeNet's 20->50 5x5 12x12
// (8-pixel rows, two a vector) that packing took 38% of the forward's samples against 48% for the
// micro-kernel, about 17 cycles a vector (Intel Xeon, 1 thread). Used only for panels with a
// vector across output rows: within one row the vector form's one load and blend is as cheap
// (the window form everywhere measured 3x3 128->128 28x28 N16 forward, the implicit GEMM forced,
// at 5.33 -> 5.72 ms).
// Intel Xeon (Sapphire Rapids class), 2 threads, float32, forward, best of three runs against
// best of two: LeNet's 20->50 5x5 12x12 N64 0.877 -> 0.724 ms; sweep rows 3x3 384->96 14x14 N2
// 0.890 -> 0.692 ms, 5x5/s2 p2 32->8 g2 28x28 N16 0.316 -> 0.271, 7x7 p3 24->512 7x7 N2 0.555 ->
// 0.476, 3x3 p2 24->128 7x7 N4 0.078 -> 0.072; no row of the sweep or the benchmark slower by
// more than 7% (this machine's noise). AMD: not measured (vpermt2ps is one shuffle on Zen 4 and
// 5 as on Intel; no gathers).
// A vector whose bases need two windows (stride 2 across output rows) takes two permutes and a
// blend: 4x4/s2 p2 32->64 28x28 N8 forward 0.575-0.599 -> 0.501-0.532 ms, 3x3/s2 p0 192->32 28x28
// N4 0.510-0.545 -> 0.453-0.472 ms (three alternating runs; before, those panels took the vector
// form); one-window layers even.
template <class V, int NV, bool = HasPermute2<V>::value>
struct WindowTable {  // without the permute (AVX2, scalar): never built
  bool build(const Im2col&, int64_t, int64_t, int64_t) { return false; }
  void pack(const typename V::T*, int64_t, int64_t, int64_t, int64_t, int64_t,
            typename V::T*) const {}
};
template <class V, int NV>
struct WindowTable<V, NV, true> {
  using T = typename V::T;
  static constexpr int W = V::W;
  static constexpr int64_t kMaxTaps = 128;  // kernels up to 11x11
  // Up to two windows a vector (slot jv * 2 + k), the second for the lanes whose bases lie 2W or
  // more past the first lane's (a stride-2 vector across output rows).
  typename V::I idx[NV * 2];
  // Per tap and slot ((tap * NV + jv) * 2 + k): the slot's lanes on the plane, and its window's
  // offset from the plane (for a slot without live lanes, one that is read elsewhere: every load
  // stays in lo:hi).
  typename V::M live[kMaxTaps * NV * 2];
  int64_t off[kMaxTaps * NV * 2];
  int64_t lo = 0, hi = 0;  // extremes of all reads, as offsets from the plane
  bool any = false;        // some lane is on the plane
  bool two = false;        // some vector has a second window
  const Im2col* g = nullptr;

  // Tabulates the pixels [j0, j0 + width) of a P x Q plane (width <= NV * W); pixels past the
  // plane's last are the next image's first, img_stride elements on (a panel across two images).
  // False where a vector's bases need more than two windows of 2W, or the kernel has more than
  // kMaxTaps taps.
  bool build(const Im2col& geo, int64_t j0, int64_t width, int64_t img_stride) {
    g = &geo;
    const int64_t taps = geo.r * geo.s;
    if (taps > kMaxTaps) return false;
    // Only panels with a vector across output rows: within one row the vector form's single
    // load and blend per vector is as cheap.
    bool across = false;
    for (int jv = 0; jv < NV && jv * W < width; ++jv) {
      across = across || (j0 + jv * W) / geo.q != (j0 + min64(width, (jv + 1) * W) - 1) / geo.q;
    }
    if (!across) return false;
    // Source row and column of each lane at offset 0, its slot, and each slot's first base.
    int64_t row0[NV * W], col0[NV * W], base[NV * 2];
    int slot[NV * W];
    two = false;
    for (int jv = 0; jv < NV; ++jv) {
      const int n = static_cast<int>(max64(0, min64(W, width - jv * W)));
      alignas(64) int32_t ix[2][W] = {};
      int64_t b[W];
      for (int l = 0; l < n; ++l) {
        const int64_t pix = j0 + jv * W + l, img = pix / (geo.p * geo.q);
        const int64_t p = pix / geo.q - img * geo.p, q = pix % geo.q;
        row0[jv * W + l] = p * geo.sh;
        col0[jv * W + l] = q * geo.sw;
        b[l] = img * img_stride + p * geo.sh * geo.w + q * geo.sw;
      }
      // Window 0 from the least base; lanes 2W or more past it go to window 1, from the least of
      // theirs (with padding, a row's bases may pass the next row's).
      int64_t b0 = 0, b1 = 0, b1max = 0;
      for (int l = 0; l < n; ++l) b0 = l == 0 ? b[l] : min64(b0, b[l]);
      bool second = false;
      for (int l = 0; l < n; ++l) {
        if (b[l] - b0 < 2 * W) continue;
        b1 = second ? min64(b1, b[l]) : b[l];
        b1max = second ? max64(b1max, b[l]) : b[l];
        second = true;
      }
      if (second && b1max - b1 >= 2 * W) return false;
      two = two || second;
      base[jv * 2] = b0;
      base[jv * 2 + 1] = b1;
      for (int l = 0; l < n; ++l) {
        const int k = b[l] - b0 < 2 * W ? 0 : 1;
        slot[jv * W + l] = k;
        ix[k][l] = static_cast<int32_t>(b[l] - base[jv * 2 + k]);
      }
      idx[jv * 2] = V::index(ix[0]);
      idx[jv * 2 + 1] = V::index(ix[1]);
    }
    any = false;
    for (int64_t tap = 0; tap < taps; ++tap) {
      const int64_t dr = (tap / geo.s) * geo.dh - geo.ph, dc = (tap % geo.s) * geo.dw - geo.pw;
      for (int jv = 0; jv < NV; ++jv) {
        const int n = static_cast<int>(max64(0, min64(W, width - jv * W)));
        unsigned m[2] = {0, 0};
        for (int l = 0; l < n; ++l) {
          const int64_t hr = row0[jv * W + l] + dr, wc = col0[jv * W + l] + dc;
          if (hr >= 0 && hr < geo.h && wc >= 0 && wc < geo.w) m[slot[jv * W + l]] |= 1u << l;
        }
        for (int k = 0; k < 2; ++k) {
          const int64_t i = (tap * NV + jv) * 2 + k;
          live[i] = static_cast<typename V::M>(m[k]);
          off[i] = dr * geo.w + dc + base[jv * 2 + k];
          if (m[k] != 0) {
            lo = any ? min64(lo, off[i]) : off[i];
            hi = any ? max64(hi, off[i] + 2 * W) : off[i] + 2 * W;
            any = true;
          }
        }
      }
    }
    for (int64_t i = 0; i < taps * NV * 2; ++i) {
      if (live[i] == 0) off[i] = lo;
    }
    return true;
  }

  // Reduction rows [t0, t1) (t = c * R * S + tap, all below g->rows()) of the panel, NR = NV * W
  // elements a row, into d, from the group's first plane `img`, at `at` elements from the start of
  // the readable memory, of which there are `readable`. Where a plane's windows would reach
  // outside it (the first and last planes), each load reads only the part inside.
  void pack(const T* img, int64_t at, int64_t readable, int64_t t0, int64_t t1, int64_t plane,
            T* d) const {
    if (two) {
      pack_rows<true>(img, at, readable, t0, t1, plane, d);
    } else {
      pack_rows<false>(img, at, readable, t0, t1, plane, d);
    }
  }

  template <bool kTwo>
  void pack_rows(const T* img, int64_t at, int64_t readable, int64_t t0, int64_t t1, int64_t plane,
                 T* d) const {
    const int64_t rs = g->r * g->s;
    typename V::I ix[NV * 2];
    for (int i = 0; i < NV * 2; ++i) ix[i] = idx[i];
    for (int64_t t = t0; t < t1;) {
      const int64_t c = t / rs, tap0 = t % rs, tap1 = min64(rs, tap0 + (t1 - t));
      const T* pl = img + c * plane;
      const int64_t pat = at + c * plane;
      if (!any) {
        for (int64_t i = 0; i < (tap1 - tap0) * NV; ++i) V::store(d + i * W, V::zero());
      } else if (pat + lo >= 0 && pat + hi <= readable) {
        for (int64_t tap = tap0; tap < tap1; ++tap) {
          SIMDNN_UNROLL for (int jv = 0; jv < NV; ++jv) {
            const int64_t i = (tap * NV + jv) * 2;
            const T* p = pl + off[i];
            typename V::V v = V::permute2z(live[i], V::load(p), ix[jv * 2], V::load(p + W));
            if constexpr (kTwo) {
              const T* p1 = pl + off[i + 1];
              v = V::blend(live[i + 1], v,
                           V::permute2z(live[i + 1], V::load(p1), ix[jv * 2 + 1], V::load(p1 + W)));
            }
            V::store(d + (tap - tap0) * NV * W + jv * W, v);
          }
        }
      } else {
        const auto clip = [](int64_t x) { return static_cast<int>(max64(-W, min64(W, x))); };
        for (int64_t tap = tap0; tap < tap1; ++tap) {
          for (int jv = 0; jv < NV; ++jv) {
            typename V::V v = V::zero();
            for (int k = 0; k < 2; ++k) {
              const int64_t i = (tap * NV + jv) * 2 + k;
              const int64_t o = off[i], e = pat + o;  // window lanes [-e, readable - e)
              const typename V::V a = V::loadr(pl + o, clip(-e), clip(readable - e), T(0));
              const typename V::V b =
                  V::loadr(pl + o + W, clip(-e - W), clip(readable - e - W), T(0));
              v = V::blend(live[i], v, V::permute2z(live[i], a, ix[jv * 2 + k], b));
            }
            V::store(d + (tap - tap0) * NV * W + jv * W, v);
          }
        }
      }
      d += (tap1 - tap0) * NV * W;
      t += tap1 - tap0;
    }
  }
};

// Splits the pixels [u0, u0 + len) of the flattened (image, p, q) index space into row segments,
// with offsets relative to u0. Returns their number (at most len + 1... never more than len).
static inline int64_t range_segments(const Im2col& g, int64_t u0, int64_t len, Segment* seg) {
  const int64_t pq = g.p * g.q;
  int64_t n = u0 / pq, p = (u0 % pq) / g.q, q = u0 % g.q, count = 0;
  for (int64_t off = 0; off < len;) {
    const int64_t run = min64(g.q - q, len - off);
    seg[count++] = Segment{p, q, run, off, n};
    off += run;
    q = 0;
    if (++p == g.p) {
      p = 0;
      ++n;
    }
  }
  return count;
}

// The same where the source of a pixel run is linear in the pixel index (stride 1 and rows as
// long as the input's, i.e. 1-wide kernels without column padding, such as 1x1 layers): one
// segment per image. With a segment per output row (28-pixel runs), 1x1 128->128 28x28 N16's
// backward-weights took 1.71 ms, 1.52 ms this way (AMD EPYC Zen 5, 2 threads).
static inline int64_t image_segments(const Im2col& g, int64_t u0, int64_t len, Segment* seg) {
  const int64_t pq = g.p * g.q;
  int64_t n = u0 / pq, pix = u0 % pq, count = 0;
  for (int64_t off = 0; off < len;) {
    const int64_t run = min64(pq - pix, len - off);
    seg[count++] = Segment{pix / g.q, pix % g.q, run, off, n};
    off += run;
    pix = 0;
    ++n;
  }
  return count;
}

static inline bool is_depthwise(const Conv2d& cv) {
  return cv.groups > 1 && cv.groups == cv.c && cv.groups == cv.k;
}

// 1x1 at stride 1 without padding: output pixel j of a plane is input pixel j.
static inline bool pointwise_unpadded(const Conv2d& cv) {
  return cv.r == 1 && cv.s == 1 && cv.sh == 1 && cv.sw == 1 && cv.ph == 0 && cv.pw == 0 &&
         cv.p == cv.h && cv.q == cv.w;
}

static inline Im2col forward_geometry(const Conv2d& cv, int64_t group) {
  const int64_t cg = cv.c / cv.groups;
  return Im2col{cv.c,  group * cg, cg,    cv.h,  cv.w,  cv.r, cv.s, cv.sh,
                cv.sw, cv.ph,      cv.pw, cv.dh, cv.dw, cv.p, cv.q};
}

// The same geometry with each stride at most what the output size needs. A stride larger than
// the padded input minus the kernel gives one output row (column), exactly as that bound does,
// and with it every product p * stride and every rounding-up division stays within the padded
// input: a valid stride of 2**63 - 1 overflowed ceil_div in col2im and gave dx = 0.
static Conv2d canonical(const Conv2d& in) {
  Conv2d cv = in;
  if (cv.p == 1) cv.sh = min64(cv.sh, cv.h + 2 * cv.ph - (cv.dh * (cv.r - 1) + 1) + 1);
  if (cv.q == 1) cv.sw = min64(cv.sw, cv.w + 2 * cv.pw - (cv.dw * (cv.s - 1) + 1) + 1);
  return cv;
}

// Whether all n values are finite. Backward-data as a convolution of the zero-padded dY with the
// flipped weights multiplies weights by dY's border zeros, terms that dX does not have: with an
// Inf weight they give Inf * 0 = NaN where the true gradient (the twin's, PyTorch's) is finite.
// Such weights take the paths that add only the real terms. The scan is K*C*R*S reads, N*P*Q
// times fewer than the convolution.
// Winograd (winograd.h) scans its whole result with it too, so it runs a vector at a time: the
// compiler does not vectorise a floating-point sum by itself (it would reorder the additions).
template <typename T>
bool all_finite(const T* v, int64_t n) {
  // x - x is 0 for finite x and NaN for Inf and NaN: sums with no branches.
  using V = typename VecOf<T>::type;
  using R = typename V::V;
  constexpr int W = V::W;
  R acc0 = V::zero(), acc1 = V::zero();
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    const R a = V::load(v + i), b = V::load(v + i + W);
    acc0 = V::add(acc0, V::sub(a, a));
    acc1 = V::add(acc1, V::sub(b, b));
  }
  T lanes[W];
  V::store(lanes, V::add(acc0, acc1));
  T acc = T(0);
  for (int j = 0; j < W; ++j) acc += lanes[j];
  for (; i < n; ++i) acc += v[i] - v[i];
  return acc == T(0);
}

}  // namespace
}  // namespace simdnn::SIMDNN_ISA_NS
