// Convolution backward-data, dX = the transposed convolution of dY with W: the GEMM strategies
// and the one function that chooses between them and the depthwise kernels,
// backward_data_strategy(). For the per-ISA convolution files; the shape legend is conv.cpp's.
#pragma once

#include <cstdint>

#include "common/int_math.h"
#include "common/parallel.h"
#include "conv/conv.h"
#include "conv/gemm_policies.h"
#include "conv/im2col.h"
#include "gemm/gemm_driver.h"
#include "gemm/gemm_isa.h"

#ifndef SIMDNN_ISA_NS
#error "compile with -DSIMDNN_ISA_NS=<isa>"
#endif

namespace simdnn::SIMDNN_ISA_NS {
namespace {

// ------------------------------------------------------------------------------------------------
// Strategy "flipped": dX = a forward convolution of dY with the flipped, transposed filters.
// dx = conv(dy, w'), w'[c, k, r', s'] = w[k, c, R-1-r', S-1-s'] per group, padding
// dh*(R-1) - ph (negative: the output is a crop). Stride 1 only; no scatter-add.
template <typename T>
void backward_data_flipped(const Conv2d& cv, const T* dy, const T* w, T* dx) {
  const int64_t cg = cv.c / cv.groups, kg = cv.k / cv.groups, rs = cv.r * cv.s;
  const int64_t krs = kg * rs;
  T* flipped =
      static_cast<T*>(workspace(WorkspaceSlot::op_scratch, cv.groups * cg * krs * sizeof(T)));
  for (int64_t grp = 0; grp < cv.groups; ++grp) {
    for (int64_t c = 0; c < cg; ++c) {
      for (int64_t k = 0; k < kg; ++k) {
        const T* src = w + ((grp * kg + k) * cg + c) * rs;
        T* dst = flipped + ((grp * cg + c) * kg + k) * rs;
        for (int64_t t = 0; t < rs; ++t) dst[t] = src[rs - 1 - t];
      }
    }
  }
  for (int64_t grp = 0; grp < cv.groups; ++grp) {
    const Im2col g{cv.k,
                   grp * kg,
                   kg,
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
    implicit_gemm<T>(g, cv.n, dy, flipped + grp * cg * krs, nullptr, cg, dx, cv.c, grp * cg,
                     cv.nthreads);
  }
}

// ------------------------------------------------------------------------------------------------
// Strategy "col2im": col (CgRS x PQ) = W_g^T . dY_g[n] on the GEMM engine, then col2im adds col
// into dX (a scatter-add over the taps).

template <typename T>
void col2im_add(const Conv2d& cv, const T* col, int64_t c0, T* dx_img, int64_t cb, int64_t ce) {
  const int64_t pq = cv.p * cv.q;
  for (int64_t c = cb; c < ce; ++c) {
    T* plane = dx_img + (c0 + c) * cv.h * cv.w;
    for (int64_t r = 0; r < cv.r; ++r) {
      for (int64_t s = 0; s < cv.s; ++s) {
        const T* src = col + ((c * cv.r + r) * cv.s + s) * pq;
        for (int64_t p = 0; p < cv.p; ++p) {
          const int64_t hi = p * cv.sh - cv.ph + r * cv.dh;
          if (hi < 0 || hi >= cv.h) continue;
          T* row = plane + hi * cv.w;
          const T* sp = src + p * cv.q;
          // Columns q with 0 <= q*sw - pw + s*dw < W.
          const int64_t w0 = -cv.pw + s * cv.dw;
          const int64_t qa = w0 >= 0 ? 0 : ceil_div(-w0, cv.sw);
          const int64_t qb = min64(cv.q, w0 >= cv.w ? 0 : ceil_div(cv.w - w0, cv.sw));
          if (cv.sw == 1) {
            for (int64_t q = qa; q < qb; ++q) row[w0 + q] += sp[q];
          } else {
            for (int64_t q = qa; q < qb; ++q) row[w0 + q * cv.sw] += sp[q];
          }
        }
      }
    }
  }
}

template <typename T>
void backward_data_col2im(const Conv2d& cv, const T* dy, const T* w, T* dx) {
  using UK = typename UkernelFor<T>::type;
  const int64_t x_size = cv.n * cv.c * cv.h * cv.w;
  const int64_t cg = cv.c / cv.groups, kg = cv.k / cv.groups;
  const int64_t crs = cg * cv.r * cv.s;
  // col (CgRS x PQ) = W_g^T (CgRS x Kg) . dY_g[n] (Kg x PQ), then col2im. Images in parallel when
  // there are enough of them (each thread its own images and col buffer: no sharing at all),
  // otherwise one image at a time with a threaded GEMM and a col2im split over channels.
  const int64_t pq = cv.p * cv.q;
  const int64_t col_elems = round_up(crs * pq, 16);
  auto gemm_col = [&](int64_t n, int64_t grp, T* col, int threads) {
    GemmArgs<T> a;
    a.m = crs;
    a.n = pq;
    a.k = kg;
    a.a = w + grp * kg * crs;  // W_g^T: element (crs, k) at k*crs + crs
    a.rs_a = 1;
    a.cs_a = crs;
    a.b = dy + (n * cv.k + grp * kg) * pq;
    a.rs_b = pq;
    a.cs_b = 1;
    a.c = col;
    a.rs_c = pq;
    a.nthreads = threads;
    gemm_detail::gemm<UK>(a);
  };
  for (int64_t i = 0; i < x_size; ++i) dx[i] = T(0);
  const int64_t img_size = cv.c * cv.h * cv.w;
  if (cv.n >= cv.nthreads) {
    parallel_ranges(cv.n, 1, 1, cv.nthreads, [&](int64_t n0, int64_t n1) {
      T* col = static_cast<T*>(workspace(WorkspaceSlot::op_scratch, col_elems * sizeof(T)));
      for (int64_t n = n0; n < n1; ++n) {
        for (int64_t grp = 0; grp < cv.groups; ++grp) {
          gemm_col(n, grp, col, 1);
          col2im_add(cv, col, grp * cg, dx + n * img_size, 0, cg);
        }
      }
    });
  } else {
    T* col = static_cast<T*>(workspace(WorkspaceSlot::op_scratch, col_elems * sizeof(T)));
    for (int64_t n = 0; n < cv.n; ++n) {
      for (int64_t grp = 0; grp < cv.groups; ++grp) {
        gemm_col(n, grp, col, cv.nthreads);
        parallel_ranges(cg, 1, 1, cv.nthreads, [&](int64_t cb, int64_t ce) {
          col2im_add(cv, col, grp * cg, dx + n * img_size, cb, ce);
        });
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// The chooser

enum class BackwardData { depthwise, flipped, col2im };

// Which strategy computes dX for this geometry and these weights, and why.
template <typename T>
BackwardData backward_data_strategy(const Conv2d& cv, const T* w) {
  // Depthwise convolutions (G = C = K) are not GEMMs (one row per group): direct kernels, which
  // choose between their own flipped and scatter forms (depthwise.h).
  if (is_depthwise(cv)) return BackwardData::depthwise;
  const int64_t cg = cv.c / cv.groups;
  // Flipped only with stride 1 (the flipped convolution of a strided dY would need a dilated dY).
  const bool unit_stride = cv.sh == 1 && cv.sw == 1;
  // The flipped convolution needs Cg output rows per group; below kFlipMinChannels the GEMM has
  // too few rows for the micro-tile (LeNet's first layer, C = 1, would use 1 of 12 rows) and the
  // col2im form, whose GEMM has CgRS rows, is faster.
  constexpr int64_t kFlipMinChannels = 8;
  const bool enough_rows = cg >= kFlipMinChannels;
  // The flipped convolution computes every output pixel over all R x S taps, also where the taps
  // fall into dY's zero border: H*W / (P*Q) times the FLOPs that matter; col2im does only those.
  // So it is used only up to a ratio of 1.25: LeNet's second layer (12x12 from 8x8, ratio 2.25)
  // ran at 1.08x the NumPy twin flipped and faster with col2im.
  const bool little_border = cv.h * cv.w * 4 <= cv.p * cv.q * 5;
  // Inf weights times dY's zero border would give NaN where dX is finite (all_finite, im2col.h);
  // checked last, since it reads every weight.
  if (unit_stride && enough_rows && little_border && all_finite(w, cv.k * cg * cv.r * cv.s)) {
    return BackwardData::flipped;
  }
  return BackwardData::col2im;
}

}  // namespace
}  // namespace simdnn::SIMDNN_ISA_NS
