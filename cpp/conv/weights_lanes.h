// Backward-weights with the input channels in the vector lanes, for layers with few filters a
// group (up to 64; 128 at stride 1 with 32 registers) and whole vectors of input channels, or
// short output rows. For the per-ISA convolution files; the shape legend is conv.cpp's.
//
// The GEMM path (dW = dY . im2col^T) packs im2col^T a pixel at a time there: each reduction row
// of a block is one output pixel's C/G x R x S taps, picked element by element, and half of the
// time went to that packing (grouped 128->96 g2 2x2/s2 p1 7x7 N16, 4-pixel rows: 0.73x PyTorch
// 2.13 on an Intel Xeon, Sapphire Rapids class, 2 threads, float32). The direct kernel
// (direct.h) vectorises along output rows, which such rows fill a quarter of.
// Here each image of a task is first copied into a zero-padded, channels-last buffer:
//   xt[n][i][j][c] = x[n, group's channel c, i - ph, j - pw]   (0 outside; c up to a multiple of W)
// so that one tap of one output pixel is one vector load of W channels. Then, per block of KB
// filters, NT taps and one vector of channels, KB x NT accumulators run over every pixel of the
// task's images:
//   acc[k][t] += dy[n, k, p, q] (broadcast) * xt[n][p*sh + r_t*dh][q*sw + s_t*dw][c..c+W)
// Each pixel costs KB broadcasts and NT vector loads for KB x NT FMAs, every lane useful (but the
// channel padding). The sums are written out per group, lanes to dw[k, c, r, s].
#pragma once

#include <cstdint>
#include <cstring>

#include "common/compiler.h"
#include "common/int_math.h"
#include "common/parallel.h"
#include "conv/conv.h"
#include "conv/depthwise.h"
#include "simd/simd.h"
#include "simd/transpose.h"

namespace simdnn::SIMDNN_ISA_NS {
namespace {

// Filters and taps per register block: as direct_weights_kb (AVX-512: 4 x 5 accumulators, 4 dy
// broadcasts and one x vector = 25 of 32 registers; AVX2 and scalar: 2 x 5 + 2 + 1 = 13 of 16).
template <class V>
constexpr int lanes_weights_kb() {
  return sizeof(typename V::V) >= 64 ? 4 : 2;
}
constexpr int kLanesWeightsNt = 5;
// Channels-last images per chunk: up to this many bytes of them (each chunk's sums are added
// once, so a chunk need only stay in L2).
constexpr int64_t kLanesWeightsChunkBytes = int64_t(512) << 10;

// Geometry of the channels-last copy of one group of one image.
struct LanesWeightsGeometry {
  int64_t hp, wp, cgp;  // padded rows and columns read, channels rounded up to a vector
  int64_t image() const { return hp * wp * cgp; }
};

inline LanesWeightsGeometry lanes_weights_geometry(const Conv2d& cv, int64_t w) {
  LanesWeightsGeometry lg;
  lg.hp = padded_extent(cv.p, cv.sh, cv.r, cv.dh);
  lg.wp = padded_extent(cv.q, cv.sw, cv.s, cv.dw);
  lg.cgp = round_up(cv.c / cv.groups, w);
  return lg;
}

// Where the channels-in-lanes form replaces the GEMM and the direct kernel: at least half a
// vector of input channels a group, at most kLanesWeightsMaxFilters filters a group (or
// kLanesWeightsMaxFiltersStride1, below; the GEMM's packing feeds that many FMAs an element, and
// beyond it amortises better than this form's broadcasts), a batch that gives every thread an
// image, one image's copy within the chunk budget, and either output rows under half a vector (the
// GEMM's im2col^T is then packed pixel by pixel, and the direct kernel's row vectors run under half
// full) or channel vectors at least three-quarters full. Intel Xeon (Sapphire Rapids class), 2
// threads, float32, AVX-512, the sweep's backward-weights rows, before -> this form (no eligible
// row slower beyond the noise):
//   short rows: grouped 7x7/s2 p1 32->64 g4 7x7 N16 (16 filters a group) 128-133 -> 70-76 us,
//     0.84x -> 1.5x PyTorch; grouped 2x2/s2 p1 128->96 g2 7x7 N16 (48) 207-224 -> 126-138 us,
//     0.71x -> 1.1-1.2x;
//   full lanes: 4x4 p3 16->24 14x14 N32 (GEMM) 693-760 -> 311-346 us, 0.8x -> 1.6-1.8x; 4x4 p2
//     16->16 14x14 N8 (direct) 124-137 -> 52-54 us; 5x5 p3 24->8 7x7 N16 (direct) 121-124 -> 62-64
//     us; 7x7 64->3 14x14 N16 (direct) 321-323 -> 116-128 us; 5x5/s2 p2 32->8 g2 28x28 N16 313-325
//     -> 101-107 us; 4x4/s2 p2 32->64 28x28 N8 (GEMM) 474-536 -> 413-442 us; and off the sweep,
//     3x3 p1 32->32 56x56 N8 2.31-2.40 -> 1.26-1.33 ms, 5x5 p2 32->64 28x28 N16 5.03 -> 3.27 ms.
// Where it lost: 128 filters a group (4x4 p2 16->128 7x7 N16 224-228 -> 228-250 us), 512 (7x7 p3
// 24->512 7x7 N2 520 -> 1,053 us), and LeNet's 20->50 5x5 12x12 N64, whose 20 channels fill 20
// of 32 lanes (1.01 -> 1.13 ms). With 16 registers (AVX2: two filters a block against four)
// full lanes lost at 32 filters and more (20->50 5x5 12x12 N64 1.25 -> 2.05 ms with 20 of 24
// lanes; 3x3 p1 32->32 56x56 N8 3.29 -> 3.67 ms) and won below (4x4 p3 16->24 14x14 N32 1.03 ->
// 0.98 ms, 5x5 p3 24->8 7x7 N16 212 -> 152 us, 7x7 64->3 14x14 N16 314 -> 260 us), hence
// kLanesWeightsMaxFiltersNarrow there. Not measured on AMD.
constexpr int64_t kLanesWeightsMaxFilters = 64;
constexpr int64_t kLanesWeightsMaxFiltersNarrow = 24;
// With 32 registers at stride 1, full lanes up to 128 filters a group. Intel Xeon VM (AVX-512), 2
// threads, float32, the "direct" algorithm (the GEMM before), min/median of 18 calls, two
// alternating runs, GEMM -> this form: 3x3 p1 128->128 28x28 N16 (the benchmark's row, 0.88x
// PyTorch) 13.5-14.0 / 13.8-14.3 -> 11.1-11.4 / 11.3-11.6 ms; 64->128 28x28 N16 6.5-6.8 -> 5.5-5.8
// ms, 32->128 28x28 N16 3.41-3.42 -> 2.84-2.86 ms, 96->96 28x28 N16 7.4-7.9 -> 6.1-6.4 ms, 128->128
// 14x14 N16 3.38-3.54 -> 3.07-3.10 ms, 128->128 7x7 N16 1.17-1.19 -> 0.94-0.96 ms, 64->128 7x7
// N32 1.17-1.19 -> 0.88-0.89 ms, 5x5 p2 32->96 14x14 N16 1.86-1.97 -> 1.48-1.55 ms, 4x4 p2 16->128
// 7x7 N16 276-281 -> 270-272 us, 5x5 p2 128->128 14x14 N16 9.5-9.7 -> 8.2 ms, 7x7 p3 64->128
// 14x14 N8 4.69-4.74 -> 4.05-4.21 ms, 512->128 7x7 N16 4.39-4.42 -> 4.08-4.13 ms; 128->256 28x28
// N8 and 256->128 14x14 N16 even or better. Lost:
// 256 filters (3x3 p1 256->256 14x14 N16 12.2 -> 12.5-12.7 ms; 128->256 14x14 N16 even) and
// stride 2 (3x3/s2 p1 64->128 32x32 N16 2.23-2.25 -> 2.39-2.46 ms; 128->128 28x28 N8 1.79-1.81
// -> 1.89-2.06 ms). And few pixels a thread: past 64 filters a task's fixed costs (zeroing the
// group's sums, writing them to dw: K/G x C/G x R x S each) outweigh the gain below
// kLanesWeightsMinPixels output pixels a thread (images a thread x P x Q). With the sums written
// element by element: 3x3 p0 384->96 14x14 N2 (144) 802-827 -> 1016-1032 us (the sweep's row,
// 1.21x -> 0.91x PyTorch), N4 (288) 1488-1545 -> 1705-1708 us, 256->96 N2 (144) 522-554 ->
// 675-720 us, 3x3 p1 128->128 14x14 N2 (196) 492-507 -> 529-545 us; won at 392 (128->128 7x7 N16
// above, 512->128 7x7 N16). Register transposes (lanes_weights_task) cut that write, but two
// alternating runs still had 384->96 N2 737-759 -> 856-892 us, N4 1317-1370 -> 1486-1510 us,
// 256->96 N2 477-504 -> 551-575 us. AMD not measured.
constexpr int64_t kLanesWeightsMaxFiltersStride1 = 128;
constexpr int64_t kLanesWeightsMinPixels = 384;

template <typename T>
bool lanes_weights_eligible(const Conv2d& cv) {
  using V = typename VecOf<T>::type;
  if (V::W == 1 || cv.groups == 0) return false;
  const int64_t cg = cv.c / cv.groups;
  const LanesWeightsGeometry lg = lanes_weights_geometry(cv, V::W);
  const int64_t kg = cv.k / cv.groups;
  const bool short_rows = 2 * cv.q < V::W;
  const bool full_lanes =
      4 * cg >= 3 * lg.cgp && (sizeof(typename V::V) >= 64 || kg <= kLanesWeightsMaxFiltersNarrow);
  const bool wide_stride1 = full_lanes && sizeof(typename V::V) >= 64 && cv.sh == 1 && cv.sw == 1 &&
                            cv.n / max64(1, cv.nthreads) * cv.p * cv.q >= kLanesWeightsMinPixels;
  const int64_t max_filters =
      wide_stride1 ? kLanesWeightsMaxFiltersStride1 : kLanesWeightsMaxFilters;
  return (short_rows || full_lanes) && 2 * cg >= V::W && kg <= max_filters && cv.r * cv.s >= 2 &&
         cv.n >= cv.nthreads &&
         lg.image() * static_cast<int64_t>(sizeof(T)) <= kLanesWeightsChunkBytes;
}

// sums[(k * rs + t) * cgp + c..] += the KB x NT products over the chunk's nimg images, for
// filters k0.. (dyk: dy of image 0 of the chunk, filter k0), taps t0.. (toff: their offsets in
// the copy) and the vector of channels at xc (in image 0 of the copy).
template <class V, int KB, int NT>
inline void lanes_weights_block(const Conv2d& cv, const LanesWeightsGeometry& lg,
                                const typename V::T* xc, const typename V::T* dyk,
                                const int64_t* toff, int64_t nimg, int64_t rs,
                                typename V::T* sums) {
  using T = typename V::T;
  using R = typename V::V;
  const int64_t pq = cv.p * cv.q, img_dy = cv.k * pq, img_x = lg.image();
  const int64_t col_step = cv.sw * lg.cgp, row_step = cv.sh * lg.wp * lg.cgp;
  R acc[KB][NT];
  SIMDNN_UNROLL for (int k = 0; k < KB; ++k) {
    SIMDNN_UNROLL for (int t = 0; t < NT; ++t) acc[k][t] = V::zero();
  }
  for (int64_t n = 0; n < nimg; ++n) {
    const T* gn = dyk + n * img_dy;
    for (int64_t p = 0; p < cv.p; ++p) {
      const T* xrow = xc + n * img_x + p * row_step;
      for (int64_t q = 0; q < cv.q; ++q) {
        const T* xs = xrow + q * col_step;
        R g[KB];
        SIMDNN_UNROLL for (int k = 0; k < KB; ++k) g[k] = V::set1(gn[k * pq + p * cv.q + q]);
        SIMDNN_UNROLL for (int t = 0; t < NT; ++t) {
          const R xv = V::load(xs + toff[t]);
          SIMDNN_UNROLL for (int k = 0; k < KB; ++k) acc[k][t] = V::fma(g[k], xv, acc[k][t]);
        }
      }
    }
  }
  SIMDNN_UNROLL for (int k = 0; k < KB; ++k) {
    SIMDNN_UNROLL for (int t = 0; t < NT; ++t) {
      T* s = sums + (k * rs + t) * lg.cgp;
      V::store(s, V::add(V::load(s), acc[k][t]));
    }
  }
}

// Images [n0, n1): dw (K x C/G*R*S) and db (K, or null), written (not accumulated).
template <typename T>
void lanes_weights_task(const Conv2d& cv, const T* x, const T* dy, int64_t n0, int64_t n1, T* dw,
                        T* db) {
  using V = typename VecOf<T>::type;
  constexpr int W = V::W;
  constexpr int KB = lanes_weights_kb<V>();
  const LanesWeightsGeometry lg = lanes_weights_geometry(cv, W);
  const int64_t cg = cv.c / cv.groups, kg = cv.k / cv.groups, rs = cv.r * cv.s;
  const int64_t pq = cv.p * cv.q, plane = cv.h * cv.w, crs = cg * rs;
  const int64_t img = lg.image();
  const int64_t chunk =
      max64(1, min64(n1 - n0, kLanesWeightsChunkBytes / (img * static_cast<int64_t>(sizeof(T)))));
  // Scratch: the chunk's channels-last images, the group's sums (Kg x RS x cgp), tap offsets.
  const int64_t nbuf = round_up(chunk * img, 16), nsum = round_up(kg * rs * lg.cgp, 16);
  char* base = static_cast<char*>(workspace(
      WorkspaceSlot::pack_aux, static_cast<size_t>((nbuf + nsum) * static_cast<int64_t>(sizeof(T)) +
                                                   rs * static_cast<int64_t>(sizeof(int64_t)))));
  T* xt = reinterpret_cast<T*>(base);
  T* sums = xt + nbuf;
  int64_t* toff = reinterpret_cast<int64_t*>(sums + nsum);
  for (int64_t t = 0; t < rs; ++t) {
    toff[t] = ((t / cv.s) * cv.dh * lg.wp + (t % cv.s) * cv.dw) * lg.cgp;
  }
  // Padded rows [i0, i1) and columns [j0, j1) hold input pixels (the rest of the copy is 0).
  const int64_t i0 = min64(lg.hp, cv.ph), i1 = max64(i0, min64(lg.hp, cv.h + cv.ph));
  const int64_t j0 = min64(lg.wp, cv.pw), j1 = max64(j0, min64(lg.wp, cv.w + cv.pw));
  // The padding (border pixels, channels past cg) is zeroed once: the copies below rewrite only
  // the pixels inside the input, every lane of them.
  std::memset(xt, 0, static_cast<size_t>(chunk * img) * sizeof(T));
  for (int64_t grp = 0; grp < cv.groups; ++grp) {
    for (int64_t i = 0; i < kg * rs * lg.cgp; ++i) sums[i] = T(0);
    for (int64_t c0 = n0; c0 < n1; c0 += chunk) {
      const int64_t nimg = min64(chunk, n1 - c0);
      // W channels x W columns at a time, transposed in registers (element by element, with a
      // store every C/G elements apart, the copy took a third of the time).
      for (int64_t n = 0; n < nimg; ++n) {
        const T* src = x + ((c0 + n) * cv.c + grp * cg) * plane;
        for (int64_t cb = 0; cb < lg.cgp; cb += W) {
          for (int64_t i = i0; i < i1; ++i) {
            const int64_t srow = (i - cv.ph) * cv.w - cv.pw;
            T* drow = xt + n * img + i * lg.wp * lg.cgp + cb;
            for (int64_t jb = j0; jb < j1; jb += W) {
              const int live = static_cast<int>(min64(W, j1 - jb));
              typename V::V blk[W];
              for (int l = 0; l < W; ++l) {
                blk[l] =
                    cb + l < cg ? V::loadn(src + (cb + l) * plane + srow + jb, live) : V::zero();
              }
              V::transpose(blk);
              for (int m = 0; m < live; ++m) V::store(drow + (jb + m) * lg.cgp, blk[m]);
            }
          }
        }
      }
      const T* dyc = dy + (c0 * cv.k + grp * kg) * pq;
      for (int64_t k0 = 0; k0 < kg; k0 += KB) {
        for (int64_t cvec = 0; cvec < lg.cgp; cvec += W) {
          const T* xc = xt + cvec;
          const T* dyk = dyc + k0 * pq;
          T* s = sums + k0 * rs * lg.cgp + cvec;
          // KB filters (fewer in a group's last block) and NT taps at a time.
          with_width<KB>(min64(KB, kg - k0), [&](auto kbc) {
            constexpr int KBC = decltype(kbc)::value;
            for (int64_t t = 0; t < rs; t += kLanesWeightsNt) {
              with_width<kLanesWeightsNt>(min64(kLanesWeightsNt, rs - t), [&](auto ntc) {
                lanes_weights_block<V, KBC, decltype(ntc)::value>(cv, lg, xc, dyk, toff + t, nimg,
                                                                  rs, s + t * lg.cgp);
              });
            }
          });
        }
      }
    }
    // Lanes to dw[k, c, t]: sums[k][t][c], each filter's RS x Cg sums transposed in registers.
    // Element by element (a strided read each), 3x3 p0 384->96 14x14 N2 with this form forced
    // took 1016-1032 us against 856-892 us (Intel Xeon VM, 2 threads, float32, two runs).
    for (int64_t k = 0; k < kg; ++k) {
      transpose_block<V>(sums + k * rs * lg.cgp, lg.cgp, rs, cg, dw + (grp * kg + k) * crs, rs);
    }
  }
  if (db != nullptr) {
    for (int64_t k = 0; k < cv.k; ++k) {
      db[k] = vector_sum_runs<V>(dy + (n0 * cv.k + k) * pq, n1 - n0, cv.k * pq, pq);
    }
  }
}

}  // namespace
}  // namespace simdnn::SIMDNN_ISA_NS
