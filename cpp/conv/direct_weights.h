// Backward-weights of dense layers with few reduction rows (C/groups * R * S <= 32, such as
// LeNet's first layer, 1 -> 20 5x5): a direct kernel, without im2col. For the per-ISA
// convolution files; the shape legend is conv.cpp's.
//
// The GEMM path (dW = dY . im2col^T) packs, for every pixel, a 32-wide row of im2col^T (one
// micro-panel), and then runs only K filter rows of FMAs over it: with 20 filters and 25 taps the
// packing took about three quarters of the time (lenet1 backward-weights 371 us, 0.89x PyTorch
// 2.13; AMD EPYC Zen 5, 2 threads, float32). Here, per image and input channel:
//   dw[k, c, r, s] += sum over p, q of dy[n, k, p, q] * xpad[n, c, p*sh + r*dh, q*sw + s*dw]
// with xpad the zero-padded (and, for strides, phase-split) plane of depthwise.h, so that every
// tap of a row of dy is a plain vector load at a fixed offset. A block of KB filters and NT taps
// keeps KB x NT vector accumulators over the rows of dy: each dy vector feeds NT FMAs, each x
// vector KB. The accumulators are added to per-task vector sums, whose lanes are summed once at
// the end of the task.
#pragma once

#include <cstdint>

#include "common/int_math.h"
#include "conv/conv.h"
#include "conv/depthwise.h"
#include "simd/simd.h"

#ifndef SIMDNN_ISA_NS
#error "compile with -DSIMDNN_ISA_NS=<isa>"
#endif

namespace simdnn::SIMDNN_ISA_NS {
namespace {

// Filters and taps per register block: KB x NT accumulators, KB dy vectors and one x vector.
// AVX-512 (32 registers): 4 x 5 + 4 + 1 = 25; AVX2 and scalar (16): 2 x 5 + 2 + 1 = 13.
template <class V>
constexpr int direct_weights_kb() {
  return sizeof(typename V::V) >= 64 ? 4 : 2;
}
constexpr int kDirectWeightsNt = 5;
// Reduction rows (C/groups * R * S) up to one GEMM micro-panel of im2col^T: beyond it the GEMM's
// packing is shared by more FMAs per pixel.
constexpr int64_t kDirectWeightsMaxRows = 32;
// Per-task vector sums (K * C/groups * R * S vectors) up to half of L2 on the machines measured.
constexpr int64_t kDirectWeightsMaxSumBytes = int64_t(512) << 10;

template <typename T>
bool direct_weights_eligible(const Conv2d& cv) {
  using V = typename VecOf<T>::type;
  const int64_t crs = cv.c / cv.groups * cv.r * cv.s;
  // Output rows of at least half a vector (fewer leave most lanes empty), one group, and a batch
  // that gives every thread an image (tasks take whole images). At least 4 taps: each dy vector
  // then feeds several FMAs; 1x1 layers, one FMA per dy load and dy read again for every input
  // channel, ran slower than the GEMM, which needs no im2col for them (sweep rows, AMD EPYC Zen
  // 5, 2 threads: 1x1 24->256 56x56 N8 3.05 ms GEMM, 5.25 ms direct; 3x3/s2 p2 3->16 56x56 N32
  // 345 -> 132 us; 2x2 8->128 28x28 N16 613 -> 432 us; LeNet's 5x5 1->20 371 -> 179 us).
  return cv.groups == 1 && crs <= kDirectWeightsMaxRows && cv.r * cv.s >= 4 && 2 * cv.q >= V::W &&
         cv.n >= cv.nthreads &&
         (cv.k * crs + cv.k) * V::W * static_cast<int64_t>(sizeof(T)) <= kDirectWeightsMaxSumBytes;
}

// sums[k * crs + t] += the KB x NT products of filters k0.. and taps t0.. over image n's rows.
// dyk: dy of the image's filter k0; off: the NT taps' offsets in the padded plane.
template <class V, int KB, int NT>
inline void direct_weights_block(const Conv2d& cv, const PadPlane& pp, const typename V::T* buf,
                                 const typename V::T* dyk, const int64_t* off, int64_t crs,
                                 typename V::T* sums) {
  using T = typename V::T;
  using R = typename V::V;
  constexpr int W = V::W;
  const int64_t pq = cv.p * cv.q;
  R acc[KB][NT];
  for (int k = 0; k < KB; ++k) {
    for (int t = 0; t < NT; ++t) acc[k][t] = V::zero();
  }
  for (int64_t p = 0; p < cv.p; ++p) {
    const T* grow = dyk + p * cv.q;
    const T* brow = buf + p * cv.sh * pp.ld;
    int64_t q = 0;
    for (; q + W <= cv.q; q += W) {
      R g[KB];
      for (int k = 0; k < KB; ++k) g[k] = V::load(grow + k * pq + q);
      for (int t = 0; t < NT; ++t) {
        const R xv = V::load(brow + off[t] + q);
        for (int k = 0; k < KB; ++k) acc[k][t] = V::fma(g[k], xv, acc[k][t]);
      }
    }
    if (q < cv.q) {
      // Masked loads of the plane too: a NaN past the row would otherwise reach the sum.
      const int live = static_cast<int>(cv.q - q);
      R g[KB];
      for (int k = 0; k < KB; ++k) g[k] = V::loadn(grow + k * pq + q, live);
      for (int t = 0; t < NT; ++t) {
        const R xv = V::loadn(brow + off[t] + q, live);
        for (int k = 0; k < KB; ++k) acc[k][t] = V::fma(g[k], xv, acc[k][t]);
      }
    }
  }
  for (int k = 0; k < KB; ++k) {
    for (int t = 0; t < NT; ++t) {
      T* s = sums + (k * crs + t) * W;
      V::store(s, V::add(V::load(s), acc[k][t]));
    }
  }
}

// The taps [t0, t1) of channel c for filters [k0, k0 + KB), NT at a time.
template <class V, int KB>
inline void direct_weights_taps(const Conv2d& cv, const PadPlane& pp, const typename V::T* buf,
                                const typename V::T* dyk, const int64_t* off, int64_t rs,
                                int64_t crs, typename V::T* sums) {
  constexpr int W = V::W;
  for (int64_t t = 0; t < rs; t += kDirectWeightsNt) {
    typename V::T* s = sums + t * W;
    switch (min64(kDirectWeightsNt, rs - t)) {
      case 5:
        direct_weights_block<V, KB, 5>(cv, pp, buf, dyk, off + t, crs, s);
        break;
      case 4:
        direct_weights_block<V, KB, 4>(cv, pp, buf, dyk, off + t, crs, s);
        break;
      case 3:
        direct_weights_block<V, KB, 3>(cv, pp, buf, dyk, off + t, crs, s);
        break;
      case 2:
        direct_weights_block<V, KB, 2>(cv, pp, buf, dyk, off + t, crs, s);
        break;
      default:
        direct_weights_block<V, KB, 1>(cv, pp, buf, dyk, off + t, crs, s);
        break;
    }
  }
}

// Images [n0, n1): dw (K x C*R*S) and db (K, or null) of this task, written (not accumulated).
template <typename T>
void direct_weights_task(const Conv2d& cv, const T* x, const T* dy, int64_t n0, int64_t n1, T* dw,
                         T* db) {
  using V = typename VecOf<T>::type;
  using R = typename V::V;
  constexpr int W = V::W;
  constexpr int KB = direct_weights_kb<V>();
  const Im2col g{cv.c,  0,     cv.c,  cv.h,  cv.w,  cv.r, cv.s, cv.sh,
                 cv.sw, cv.ph, cv.pw, cv.dh, cv.dw, cv.p, cv.q};
  const PadPlane pp = pad_plane_geometry(g, W);
  const int64_t rs = cv.r * cv.s, crs = cv.c * rs, pq = cv.p * cv.q;
  // Scratch: the padded plane, the per-task vector sums (K x CRS, then K for db), tap offsets.
  const int64_t plane = plane_scratch<T>(pp), nsum = (cv.k * crs + cv.k) * W;
  char* base = static_cast<char*>(
      workspace(WorkspaceSlot::pack_aux,
                static_cast<size_t>((plane + nsum) * static_cast<int64_t>(sizeof(T)) +
                                    rs * static_cast<int64_t>(sizeof(int64_t)))));
  T* buf = reinterpret_cast<T*>(base);
  T* sums = buf + plane;
  int64_t* off = reinterpret_cast<int64_t*>(sums + nsum);
  for (int64_t i = 0; i < rs; ++i) off[i] = pp.tap(i / cv.s, i % cv.s, cv.dh, cv.dw);
  for (int64_t i = 0; i < nsum; ++i) sums[i] = T(0);
  T* dbsum = sums + cv.k * crs * W;
  for (int64_t n = n0; n < n1; ++n) {
    const T* dyn = dy + n * cv.k * pq;
    for (int64_t c = 0; c < cv.c; ++c) {
      fill_padded(x + (n * cv.c + c) * cv.h * cv.w, g, pp, buf);
      for (int64_t k0 = 0; k0 < cv.k; k0 += KB) {
        T* s = sums + (k0 * crs + c * rs) * W;
        const T* dyk = dyn + k0 * pq;
        switch (min64(KB, cv.k - k0)) {
          case 4:
            direct_weights_taps<V, (KB >= 4 ? 4 : 1)>(cv, pp, buf, dyk, off, rs, crs, s);
            break;
          case 3:
            direct_weights_taps<V, (KB >= 3 ? 3 : 1)>(cv, pp, buf, dyk, off, rs, crs, s);
            break;
          case 2:
            direct_weights_taps<V, 2>(cv, pp, buf, dyk, off, rs, crs, s);
            break;
          default:
            direct_weights_taps<V, 1>(cv, pp, buf, dyk, off, rs, crs, s);
            break;
        }
      }
    }
    if (db != nullptr) {
      for (int64_t k = 0; k < cv.k; ++k) {
        const T* gp = dyn + k * pq;
        R acc = V::load(dbsum + k * W);
        int64_t j = 0;
        for (; j + W <= pq; j += W) acc = V::add(acc, V::load(gp + j));
        if (j < pq) acc = V::add(acc, V::loadn(gp + j, static_cast<int>(pq - j)));
        V::store(dbsum + k * W, acc);
      }
    }
  }
  for (int64_t i = 0; i < cv.k * crs; ++i) dw[i] = lane_sum<V>(V::load(sums + i * W));
  if (db != nullptr) {
    for (int64_t k = 0; k < cv.k; ++k) db[k] = lane_sum<V>(V::load(dbsum + k * W));
  }
}

}  // namespace
}  // namespace simdnn::SIMDNN_ISA_NS
