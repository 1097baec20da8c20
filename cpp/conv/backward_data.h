// Convolution backward-data, dX = the transposed convolution of dY with W: the GEMM strategies
// and the one function that chooses between them and the depthwise kernels,
// backward_data_strategy(). For the per-ISA convolution files; the shape legend is conv.cpp's.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>

#include "common/int_math.h"
#include "common/parallel.h"
#include "conv/conv.h"
#include "conv/direct.h"
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
  // Few input channels a group: the flipped convolution has that few filters, the direct
  // forward's case (direct.h). Sweep row 2x2 8->128 28x28 N16 (8 filters flipped), AMD EPYC Zen 5,
  // 2 threads: 2.56 ms on the GEMM, 0.46 ms direct (0.28x -> 1.33x PyTorch).
  Conv2d f = cv;
  f.c = cv.k;
  f.h = cv.p;
  f.w = cv.q;
  f.k = cv.c;
  f.p = cv.h;
  f.q = cv.w;
  f.sh = f.sw = 1;
  f.ph = cv.dh * (cv.r - 1) - cv.ph;
  f.pw = cv.dw * (cv.s - 1) - cv.pw;
  if (f.ph >= 0 && f.pw >= 0 && direct_forward_eligible<T>(f)) {
    direct_forward(f, dy, flipped, static_cast<const T*>(nullptr), dx);
    return;
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
// into dX. Two forms of col2im:
//  - gather (column stride 1 or 2): each dX row is computed once, as a sum of the (r, s) taps
//    that reach it, and stored, so dX needs no zeroing and no read-modify-write. With stride 1 a
//    block of a dX row is one vector of W columns, and a tap's contribution is a plain load of W
//    contiguous col elements with the lanes outside the col row zeroed in registers (V::keep):
//    the loaded run may reach into the next or previous row of col. With stride 2 a block is 2W
//    columns held as two vectors, its even and its odd columns; a tap reaches only one of them
//    (the parity of its column offset), again with W contiguous col elements, and the two are
//    interleaved on the store.
//    Measured on LeNet's second layer (20 <- 50, 5x5, 8x8 -> 12x12, AMD EPYC Zen 5): the
//    scatter form's 8-element adds (4000 per image) took about as long as the GEMM; N32 on one
//    thread 0.90 ms scatter, 0.58 ms gather (N64 on two: 1.02 ms -> 0.59 ms, 1.0x -> 1.8x PyTorch
//    2.13). Stride 2: the scalar scatter was 24% of the samples of the 3x3/s2 64 <- 128 32x32 N16
//    bench row, against 43% for its GEMM.
//  - scatter (any geometry): adds each col element into its dX element.

// col2im_gather's per-call tables: (blocks of a dX row) x S taps, and R window rows.
constexpr int64_t kGatherTable = 256;

// Elements of readable slack before and after col for col2im_gather's whole-vector loads: a tap's
// vector starts at most (S - 1) * dw elements before its col row and ends at most
// W + S * dw + 3 after it.
static inline int64_t col_slack(const Conv2d& cv, int lanes) {
  return round_up(cv.s * cv.dw + lanes + 4, 16);
}

// dX channels c0 .. c0 + nc - 1 of one image: planes computed from col (the (c, r, s) rows of
// those channels, ld >= PQ elements apart), written whole. kSw == cv.sw (1 or 2); col has
// col_slack() readable elements on each side.
template <int kSw, typename T>
void col2im_gather(const Conv2d& cv, const T* col, int64_t ld, int64_t c0, T* dx_img, int64_t nc) {
  static_assert(kSw == 1 || kSw == 2, "the gather form interleaves at most two column streams");
  using V = typename VecOf<T>::type;
  constexpr int W = V::W;
  constexpr int64_t kBlock = kSw * W;  // dX columns per block
  // Stream e (< kSw) of block b holds dX columns w = b * kBlock + e + kSw * j, lane j. Tap s
  // reaches column w from col column (w + pw - s * dw) / kSw where that divides: one stream per
  // (block, tap), whose lane j reads col column q0 + j. Per (block, tap): that stream, q0 and the
  // lanes whose column lies inside the col row (the others are zeroed). The same for every row
  // and channel, so computed once (kGatherTable entries; wider rows and kernels take the scatter
  // form).
  const int64_t blocks = ceil_div(cv.w, kBlock);
  int64_t q0[kGatherTable];
  bool odd[kGatherTable];
  typename V::M live[kGatherTable];
  for (int64_t bk = 0; bk < blocks; ++bk) {
    for (int64_t s = 0; s < cv.s; ++s) {
      const int64_t t = bk * kBlock + cv.pw - s * cv.dw;
      const int64_t e = ((-t) % kSw + kSw) % kSw;  // (t + e) % kSw == 0
      const int64_t q = (t + e) / kSw;
      q0[bk * cv.s + s] = q;
      odd[bk * cv.s + s] = e != 0;
      live[bk * cv.s + s] = V::lanes(clamp_int(-q, 0, W), clamp_int(cv.q - q, 0, W));
    }
  }
  for (int64_t c = 0; c < nc; ++c) {
    T* plane = dx_img + (c0 + c) * cv.h * cv.w;
    for (int64_t hi = 0; hi < cv.h; ++hi) {
      // The window rows r that reach dX row hi, and their dY row p.
      int64_t rows[kGatherTable], ps[kGatherTable], nr = 0;
      for (int64_t r = 0; r < cv.r; ++r) {
        const int64_t t = hi + cv.ph - r * cv.dh;  // = p * sh
        if (t < 0 || t % cv.sh != 0 || t / cv.sh >= cv.p) continue;
        rows[nr] = r;
        ps[nr++] = t / cv.sh;
      }
      T* row = plane + hi * cv.w;
      for (int64_t bk = 0; bk < blocks; ++bk) {
        typename V::V even = V::zero(), odd_acc = V::zero();
        for (int64_t i = 0; i < nr; ++i) {
          const T* src = col + (c * cv.r + rows[i]) * cv.s * ld + ps[i] * cv.q;
          for (int64_t s = 0; s < cv.s; ++s) {
            const int64_t t = bk * cv.s + s;
            const typename V::V v = V::keep(V::load(src + s * ld + q0[t]), live[t]);
            if (kSw == 2 && odd[t]) {
              odd_acc = V::add(odd_acc, v);
            } else {
              even = V::add(even, v);
            }
          }
        }
        const int64_t w0 = bk * kBlock;
        const int n = static_cast<int>(min64(kBlock, cv.w - w0));
        // A partial last block may spill into the next rows of the plane, which are written
        // after it (a masked store only where the spill would leave the plane).
        const bool whole = n == kBlock || (hi * cv.w + w0 + kBlock) <= cv.h * cv.w;
        if constexpr (kSw == 1) {
          if (whole) {
            V::store(row + w0, even);
          } else {
            V::storen(row + w0, even, n);
          }
        } else if (whole) {
          V::store2(row + w0, even, odd_acc);
        } else {
          V::store2n(row + w0, even, odd_acc, n);
        }
      }
    }
  }
}

// The same, adding each col element into its dX element (dX zeroed first).
template <typename T>
void col2im_add(const Conv2d& cv, const T* col, int64_t ld, int64_t c0, T* dx_img, int64_t nc) {
  for (int64_t c = 0; c < nc; ++c) {
    T* plane = dx_img + (c0 + c) * cv.h * cv.w;
    for (int64_t r = 0; r < cv.r; ++r) {
      for (int64_t s = 0; s < cv.s; ++s) {
        const T* src = col + ((c * cv.r + r) * cv.s + s) * ld;
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

// With images in parallel, the col of several images whose output planes are small is computed
// by one GEMM: col is then CgRS x (batch * PQ), each image's PQ columns side by side, and dY_g of
// those images is first copied side by side (Kg x batch * PQ, the GEMM's B). Images are added
// while batch * PQ stays within this many columns: the per-image GEMM of a 2x2 plane used 4 of
// the micro-tile's 32 columns (float32, AVX-512) and was a call of its own. Intel Xeon (Sapphire
// Rapids class), 2 threads, per image -> batched, medians of 5 alternating blocks in one process:
// float32 grouped 7x7/s2 p1 32->64 g4 7x7 N16 (2x2 planes, then the sweep's worst row) 104 -> 84
// us, 3x3/s2 64->128 8x8 N16 (4x4) 190 -> 169 us, 6x6 planes 144 -> 134 us, 7x7 planes 3x3 64->128
// N16 539-586 -> 494-516 us (float64 979-1009 -> 884-892 us), 128->256 1279-1323 -> 1249-1271 us.
// 8x8 planes (64 pixels, two whole micro-tiles) lost batched two at a time: 4x4 p2 16->128 7x7
// N16 238-240 -> 251-254 us; so 100 columns, which batches planes of up to 50 pixels.
constexpr int64_t kColBatchColumns = 100;

// With images in parallel, col is computed and read back in chunks of channels, each at most
// this many bytes (but at least kColChunkMinRows rows, in chunks of equal size), so that col2im
// reads it from L2 rather than from memory: 3x3 p0 384->96 14x14 N2 wrote a 2 MiB col per image.
// Each chunk's GEMM reads all of B (dY_g, Kg x batch*PQ) again, so only where B takes at most as
// much. Intel Xeon (Sapphire Rapids class), 2 threads, float32, whole col -> chunks, medians of 5
// alternating blocks in one process: 384->96 14x14 N2 810-863 -> 643-704 us (float64 1642-1704 ->
// 1455-1525 us), 3x3/s2 256->512 14x14 N4 2421-2455 -> 2262-2277 us, 3x3/s2 128->256 14x14 N16
// 2214-2303 -> 2049-2093 us, 3x3/s2 p0 192->32 28x28 N4 487-498 -> 442-460 us, 3x3/s2 64->128
// 32x32 N16 and 4x4/s2 32->64 28x28 N8 even. With 256 KiB chunks and no row minimum, chunks of
// 36-81 rows lost (3x3/s2 64->128 56x56 N16 float64 13.4 -> 15.4-17.8 ms, B of 800 KiB), and so
// did B over 256 KiB with 384 rows (the same layer 12.5-13.2 -> 12.8-13.8 ms).
constexpr int64_t kColChunkBytes = int64_t(256) << 10;
constexpr int64_t kColChunkMinRows = 384;

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
  const bool by_image = cv.n >= cv.nthreads;
  // Images whose col one GEMM computes (kColBatchColumns).
  const int64_t batch =
      by_image ? max64(1, min64(kColBatchColumns / max64(pq, 1), ceil_div(cv.n, cv.nthreads))) : 1;
  const int64_t ld = batch * pq;  // col's row stride
  const int64_t rs = cv.r * cv.s;
  // Channels whose col rows one GEMM computes before col2im reads them back (kColChunkBytes).
  int64_t chunk = cg;
  if (by_image && cg > 0 && kg * ld * int64_t(sizeof(T)) <= kColChunkBytes) {
    const int64_t want = max64(kColChunkBytes / max64(rs * ld * int64_t(sizeof(T)), 1),
                               ceil_div(kColChunkMinRows, max64(rs, 1)));
    chunk = ceil_div(cg, ceil_div(cg, min64(want, cg)));  // equal chunks
  }
  const int64_t col_elems = round_up(chunk * rs * ld, 16);
  // dY_g of `batch` images side by side (Kg x batch*PQ), the batched GEMM's B.
  const int64_t dyb_elems = batch > 1 ? round_up(kg * ld, 16) : 0;
  // dY_g of images n .. n + nb - 1 as the GEMM's B (Kg x nb*PQ): in place for one image,
  // otherwise copied side by side into dyb. Returns B and its row stride.
  auto dy_batch = [&](int64_t n, int64_t nb, int64_t grp, T* dyb) -> std::pair<const T*, int64_t> {
    if (nb == 1) return {dy + (n * cv.k + grp * kg) * pq, pq};
    for (int64_t k = 0; k < kg; ++k) {
      for (int64_t i = 0; i < nb; ++i) {
        const T* src = dy + ((n + i) * cv.k + grp * kg + k) * pq;
        std::copy(src, src + pq, dyb + k * nb * pq + i * pq);
      }
    }
    return {dyb, nb * pq};
  };
  // col rows of channels [cb, cb + nc) of group grp (rows ld apart) from B = dY_g (Kg x cols).
  auto gemm_col = [&](std::pair<const T*, int64_t> b, int64_t cols, int64_t grp, int64_t cb,
                      int64_t nc, T* col, int threads) {
    GemmArgs<T> a;
    a.m = nc * rs;
    a.n = cols;
    a.k = kg;
    a.a = w + grp * kg * crs + cb * rs;  // W_g^T: element (crs, k) at k*crs + crs
    a.rs_a = 1;
    a.cs_a = crs;
    a.b = b.first;
    a.rs_b = b.second;
    a.cs_b = 1;
    a.c = col;
    a.rs_c = ld;
    a.nthreads = threads;
    gemm_detail::gemm<UK>(a);
  };
  using V = typename VecOf<T>::type;
  const bool gather = (cv.sw == 1 || cv.sw == 2) && cv.r <= kGatherTable &&
                      ceil_div(cv.w, cv.sw * V::W) * cv.s <= kGatherTable;
  if (!gather) {
    for (int64_t i = 0; i < x_size; ++i) dx[i] = T(0);
  }
  // col2im_gather reads up to `slack` elements beyond each end of col: zeros, written once per
  // buffer. The dY batch follows.
  const int64_t slack = gather ? col_slack(cv, V::W) : 0;
  auto col_buffer = [&]() {
    T* buf = static_cast<T*>(
        workspace(WorkspaceSlot::op_scratch, (col_elems + 2 * slack + dyb_elems) * sizeof(T)));
    for (int64_t i = 0; i < slack; ++i) buf[i] = buf[slack + col_elems + i] = T(0);
    return buf + slack;
  };
  // dX channels c0 .. c0 + nc - 1 of one image from the col rows of those channels.
  auto col2im = [&](const T* col, int64_t c0, T* dx_img, int64_t nc) {
    if (gather && cv.sw == 1) {
      col2im_gather<1>(cv, col, ld, c0, dx_img, nc);
    } else if (gather) {
      col2im_gather<2>(cv, col, ld, c0, dx_img, nc);
    } else {
      col2im_add(cv, col, ld, c0, dx_img, nc);
    }
  };
  const int64_t img_size = cv.c * cv.h * cv.w;
  if (by_image) {
    parallel_ranges(cv.n, 1, 1, cv.nthreads, [&](int64_t n0, int64_t n1) {
      T* col = col_buffer();
      T* dyb = col + col_elems + slack;
      for (int64_t n = n0; n < n1; n += batch) {
        const int64_t nb = min64(batch, n1 - n);
        for (int64_t grp = 0; grp < cv.groups; ++grp) {
          const auto b = dy_batch(n, nb, grp, dyb);
          for (int64_t cb = 0; cb < cg; cb += chunk) {
            const int64_t nc = min64(chunk, cg - cb);
            gemm_col(b, nb * pq, grp, cb, nc, col, 1);
            for (int64_t i = 0; i < nb; ++i) {
              col2im(col + i * pq, grp * cg + cb, dx + (n + i) * img_size, nc);
            }
          }
        }
      }
    });
  } else {
    T* col = col_buffer();
    for (int64_t n = 0; n < cv.n; ++n) {
      for (int64_t grp = 0; grp < cv.groups; ++grp) {
        gemm_col(dy_batch(n, 1, grp, nullptr), pq, grp, 0, cg, col, cv.nthreads);
        parallel_ranges(cg, 1, 1, cv.nthreads, [&](int64_t cb, int64_t ce) {
          col2im(col + cb * rs * ld, grp * cg + cb, dx + n * img_size, ce - cb);
        });
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// The chooser

enum class BackwardData { depthwise, flipped, col2im };

// Filters per group up to which the flipped convolution is taken whatever the border. Sweep
// rows, AMD EPYC Zen 5, 2 threads: grouped 7x7 512->8 g2 28x28 N2 (4 filters a group, 1.6x the
// FLOPs flipped) 8.2 ms col2im, 0.71 ms flipped (0.22x -> 2.5x PyTorch); 64->3 7x7 14x14 N16
// 285 -> 206 us.
constexpr int64_t kFlipFewFilters = 8;

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
  // With few filters per group col2im's col (CgRS x PQ, written and read back) is as large as a
  // quarter or more of its FLOPs: writing it costs more than the border's wasted FMAs.
  const int64_t kg = cv.k / cv.groups;
  const bool few_filters = kg <= kFlipFewFilters;
  // With at least twice as many filters as channels (and at least kColMinFilters), col2im's GEMM
  // (CgRS x PQ from a reduction over Kg) is deep and wide, while the flipped convolution has only
  // Cg filters over a KgRS reduction: a GEMM of few rows, or for Cg <= 24 the direct kernels,
  // whose broadcast-per-FMA inner loops are load-bound on cores with two vector load ports
  // (direct.h). Measured with col2im forced (Intel Xeon, Sapphire Rapids class, 2 threads,
  // float32, flipped -> col2im): 24->512 7x7 p3 7x7 N2 1465 -> 594 us; 16->128 4x4 p2 7x7 N16
  // 315 -> 244 us; 8->128 2x2 28x28 N16 756 -> 480 us; 24->128 3x3 p2 7x7 N4 126 -> 74 us;
  // 32->256 3x3 7x7 N16 813 -> 507 us; 64->128 3x3 14x14 N16 2054 -> 1571 us; 48->96 1240 -> 945
  // us; 16->32 3x3 14x14 N16 170 -> 128 us; 8->32 3x3 28x28 N16 284 -> 235 us. Where Kg < 2 Cg the
  // flipped form held or won: 64->64 3x3 32x32 N32 9.5 -> 9.0 ms, 128->128 28x28 N16 13.1 -> 13.7
  // ms, 128->64 3x3 7x7 N32 1090 -> 1277 us, 64->32 3x3 28x28 N8 913 -> 1021 us; and below 32
  // filters: 16->24 4x4 p3 14x14 N32 404 -> 571 us, 16->16 4x4 p2 14x14 N8 76 -> 89 us. 1x1
  // layers keep the flipped form, a GEMM on dY in place (24->256 56x56 N8 2.2 -> 3.0 ms).
  constexpr int64_t kColMinFilters = 32;
  const bool deep_col = kg >= kColMinFilters && kg >= 2 * cg && cv.r * cv.s > 1;
  // Inf weights times dY's zero border would give NaN where dX is finite (all_finite, im2col.h);
  // checked last, since it reads every weight.
  if (unit_stride && enough_rows && (little_border || few_filters) && !deep_col &&
      all_finite(w, cv.k * cg * cv.r * cv.s)) {
    return BackwardData::flipped;
  }
  return BackwardData::col2im;
}

}  // namespace
}  // namespace simdnn::SIMDNN_ISA_NS
