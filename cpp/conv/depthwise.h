// Depthwise convolution (G = C = K), forward and both backward passes: direct kernels, per plane,
// vectorised along the output row (one row per group is no GEMM). For the per-ISA convolution
// files; the shape legend is conv.cpp's.
#pragma once

#include <cstdint>
#include <cstring>

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

// Zero-padded copy of a source plane covering the rows and columns that the taps can reach:
// rows [h_lo, h_lo + hp), columns [w_lo, w_lo + wp), with `extra` columns of slack for vector
// loads past the end of a row.
struct PadPlane {
  int64_t h_lo, hp, w_lo, wp, ld;
};

static inline PadPlane pad_plane_geometry(const Im2col& g, int64_t extra) {
  PadPlane pp;
  pp.h_lo = -g.ph;
  pp.hp = (g.p - 1) * g.sh + (g.r - 1) * g.dh + 1;
  pp.w_lo = -g.pw;
  pp.wp = (g.q - 1) * g.sw + (g.s - 1) * g.dw + 1;
  pp.ld = pp.wp + extra;
  return pp;
}

template <typename T>
static void fill_padded(const T* plane, const Im2col& g, const PadPlane& pp, T* dst) {
  for (int64_t i = 0; i < pp.hp; ++i) {
    const int64_t hi = pp.h_lo + i;
    T* d = dst + i * pp.ld;
    if (hi < 0 || hi >= g.h) {
      for (int64_t j = 0; j < pp.ld; ++j) d[j] = T(0);
      continue;
    }
    const T* row = plane + hi * g.w;
    for (int64_t j = 0; j < pp.ld; ++j) {
      const int64_t wi = pp.w_lo + j;
      d[j] = (wi >= 0 && wi < g.w && j < pp.wp) ? row[wi] : T(0);
    }
  }
}

// out plane (P x Q) = sum over taps of taps[r, s] * padded input; plus `bias`.
template <class V>
static void depthwise_plane(const Im2col& g, const PadPlane& pp, const typename V::T* padded,
                            const typename V::T* taps, typename V::T bias, typename V::T* out) {
  using T = typename V::T;
  using R = typename V::V;
  constexpr int W = V::W;
  for (int64_t p = 0; p < g.p; ++p) {
    T* o = out + p * g.q;
    if (g.sw == 1) {
      for (int64_t q0 = 0; q0 < g.q; q0 += W) {
        const int live = static_cast<int>(min64(W, g.q - q0));
        R acc = V::set1(bias);
        for (int64_t r = 0; r < g.r; ++r) {
          const T* row = padded + (p * g.sh + r * g.dh) * pp.ld + q0;
          for (int64_t s = 0; s < g.s; ++s) {
            // The padded rows have W elements of slack, so a full load never leaves the buffer.
            acc = V::fma(V::set1(taps[r * g.s + s]), V::load(row + s * g.dw), acc);
          }
        }
        if (live == W) {
          V::store(o + q0, acc);
        } else {
          V::storen(o + q0, acc, live);
        }
      }
    } else {
      for (int64_t q = 0; q < g.q; ++q) {
        T acc = bias;
        for (int64_t r = 0; r < g.r; ++r) {
          const T* row = padded + (p * g.sh + r * g.dh) * pp.ld + q * g.sw;
          for (int64_t s = 0; s < g.s; ++s) acc += taps[r * g.s + s] * row[s * g.dw];
        }
        o[q] = acc;
      }
    }
  }
}

template <typename T>
static int64_t plane_scratch(const PadPlane& pp) {
  return round_up(pp.hp * pp.ld, 16);
}

// y[n, c] = conv(x[n, c], w[c]) + b[c] for every plane, in parallel over planes.
template <typename T>
void depthwise_forward(const Im2col& g, int64_t n_img, const T* x, const T* w, const T* b, T* y,
                       int nthreads) {
  using V = typename VecOf<T>::type;
  const PadPlane pp = pad_plane_geometry(g, V::W);
  const int64_t planes = n_img * g.c_total, in_plane = g.h * g.w, out_plane = g.p * g.q;
  const int64_t rs = g.r * g.s;
  [[maybe_unused]] const int nt = static_cast<int>(min64(nthreads, planes));
  parallel_ranges(planes, 1, 1, nt, [&](int64_t i0, int64_t i1) {
    T* buf =
        static_cast<T*>(workspace(WorkspaceSlot::op_scratch, plane_scratch<T>(pp) * sizeof(T)));
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t c = i % g.c_total;
      fill_padded(x + i * in_plane, g, pp, buf);
      depthwise_plane<V>(g, pp, buf, w + c * rs, b != nullptr ? b[c] : T(0), y + i * out_plane);
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
    const PadPlane pp = pad_plane_geometry(g, V::W);
    parallel_ranges(planes, 1, 1, nt, [&](int64_t i0, int64_t i1) {
      T* buf = static_cast<T*>(workspace(WorkspaceSlot::op_scratch,
                                         (plane_scratch<T>(pp) + round_up(rs, 16)) * sizeof(T)));
      T* flipped = buf + plane_scratch<T>(pp);
      for (int64_t i = i0; i < i1; ++i) {
        const T* taps = w + (i % cv.c) * rs;
        for (int64_t t = 0; t < rs; ++t) flipped[t] = taps[rs - 1 - t];
        fill_padded(dy + i * cv.p * cv.q, g, pp, buf);
        depthwise_plane<V>(g, pp, buf, flipped, T(0), dx + i * cv.h * cv.w);
      }
    });
    return;
  }
  // Strided (or weights that are not all finite): each real dy term scattered into a padded dx
  // plane covering every position a tap can reach.
  const int64_t hp = (cv.p - 1) * cv.sh + (cv.r - 1) * cv.dh + 1;
  const int64_t wp = (cv.q - 1) * cv.sw + (cv.s - 1) * cv.dw + 1;
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

// dw[c, r, s] = sum over n, p, q of dy[n, c, p, q] * x_pad[n, c, p*sh + r*dh, q*sw + s*dw];
// db[c] = sum of dy[n, c]. Parallel over channels: each thread owns whole channels, so there are
// no partial sums.
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
    T* buf =
        static_cast<T*>(workspace(WorkspaceSlot::op_scratch, plane_scratch<T>(pp) * sizeof(T)));
    for (int64_t c = i0; c < i1; ++c) {
      T* dwc = dw + c * rs;
      for (int64_t t = 0; t < rs; ++t) dwc[t] = T(0);
      T bsum = T(0);
      for (int64_t n = 0; n < cv.n; ++n) {
        const int64_t i = n * cv.c + c;
        const T* gp = dy + i * cv.p * cv.q;
        fill_padded(x + i * cv.h * cv.w, g, pp, buf);
        for (int64_t r = 0; r < cv.r; ++r) {
          for (int64_t s = 0; s < cv.s; ++s) {
            R acc = V::zero();
            T tail = T(0);
            for (int64_t p = 0; p < cv.p; ++p) {
              const T* row = buf + (p * cv.sh + r * cv.dh) * pp.ld + s * cv.dw;
              const T* grow = gp + p * cv.q;
              if (cv.sw == 1) {
                int64_t q = 0;
                for (; q + W <= cv.q; q += W)
                  acc = V::fma(V::load(grow + q), V::load(row + q), acc);
                if (q < cv.q) {
                  const int live = static_cast<int>(cv.q - q);
                  acc = V::fma(V::loadn(grow + q, live), V::loadn(row + q, live), acc);
                }
              } else {
                for (int64_t q = 0; q < cv.q; ++q) tail += grow[q] * row[q * cv.sw];
              }
            }
            T lanes[W];
            V::store(lanes, acc);
            for (int l = 0; l < W; ++l) tail += lanes[l];
            dwc[r * cv.s + s] += tail;
          }
        }
        if (db != nullptr) {
          for (int64_t j = 0; j < cv.p * cv.q; ++j) bsum += gp[j];
        }
      }
      if (db != nullptr) db[c] = bsum;
    }
  });
}

}  // namespace
}  // namespace simdnn::SIMDNN_ISA_NS
