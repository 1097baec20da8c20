// Convolution geometry and im2col gathering, for the per-ISA convolution files (everything in an
// unnamed namespace inside the ISA's namespace). The shape legend is conv.cpp's. im2col never
// exists as a whole: the GEMM policies (gemm_policies.h) gather it panel by panel while packing.
#pragma once

#include <cstdint>
#include <cstring>

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

// Splits the pixels [j0, j0 + width) of a P x Q output plane into row segments.
static inline int segments(const Im2col& g, int64_t j0, int64_t width, Segment* seg) {
  int n = 0;
  for (int64_t pix = j0; pix < j0 + width;) {
    const int64_t p = pix / g.q, q = pix % g.q;
    const int64_t len = min64(g.q - q, j0 + width - pix);
    seg[n++] = Segment{p, q, len, pix - j0};
    pix += len;
  }
  return n;
}

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
  } else {
    // Strided: the in-bounds outputs [lo, hj) by deinterleaving loads (stride 2) or gathers.
    const int64_t lo = w0 >= 0 ? 0 : min64(sg.len, ceil_div(-w0, g.sw));
    const int64_t hj = w0 >= g.w ? lo : max64(lo, min64(sg.len, ceil_div(g.w - w0, g.sw)));
    constexpr int W = V::W;
    if (lo > 0) zero_run<V>(d, lo);
    for (int64_t j = lo; j < hj; j += W) {
      const int cnt = static_cast<int>(min64(W, hj - j));
      const T* src = row + w0 + j * g.sw;
      typename V::V v;
      if (g.sw == 2) {
        typename V::V odd;
        // 2*cnt - 1 elements: the odd lane after the last output may lie past the plane, so a
        // whole-vector load only where it stays inside (masked loads cost about 25 cycles on
        // Zen 5, and this one ran for every segment of a stride-2 layer: 64->128 3x3/s2 32x32,
        // 16-pixel rows, spent more time packing than in the micro-kernel).
        if (cnt == W && (hi * g.w + w0 + 2 * (j + cnt)) <= g.h * g.w) {
          V::load2(src, v, odd);
        } else {
          V::load2n(src, 2 * cnt - 1, v, odd);
        }
      } else {
        v = V::gathern(src, static_cast<int>(g.sw), cnt);
      }
      if (cnt == W) {
        V::store(d + j, v);
      } else {
        V::storen(d + j, v, cnt);
      }
    }
    if (hj < sg.len) zero_run<V>(d + hj, sg.len - hj);
  }
}

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

static inline bool is_depthwise(const Conv2d& cv) {
  return cv.groups > 1 && cv.groups == cv.c && cv.groups == cv.k;
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
