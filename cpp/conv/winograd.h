// Winograd F(4x4, 3x3) and F(2x2, 3x3) convolution (Lavin & Gray, "Fast Algorithms for
// Convolutional Neural Networks", 2016) for stride-1, undilated, ungrouped 3x3 layers: forward and
// both backward passes. For the per-ISA convolution files; the shape legend is conv.cpp's, and
// T = N * TH * TW tiles, TH = ceil(P/4), TW = ceil(Q/4). Described below for F(4x4); F(2x2) (the
// tile structs F4x4 and F2x2) is the same with 2x2 output tiles from 4x4 patches, 16 points.
//
// Each 4x4 output tile is y = AT [ sum over c of U[k, c] (.) V[c] ] AT^T, where U = G g G^T is the
// 6x6 transform of the 3x3 filter g and V = BT d BT^T that of the 6x6 input patch d. The 36 points
// xi = (a, b) of the element-wise product are independent, and over channels each is a GEMM:
//   forward          M[xi] (K x T) = U[xi] (K x C) . V[xi] (C x T), then y = AT M AT^T per tile
//   backward-data    the same with dY as the input and the flipped, transposed filters (C rows)
//   backward-weights dU[xi] (K x C) = dM[xi] (K x T) . V[xi]^T (T x C), dM = AT^T dY AT per tile
//                    (the exact transpose of the forward algorithm), then dw = G^T dU G
// 36 GEMMs of C*K*T multiply-adds replace 9*16 = 144 per tile: 4x fewer FMAs than direct
// convolution, paid for by the transforms (about 2x(C + K) x 100 adds per tile, vectorised along
// the tiles of a row) and by the round trip of V and M through memory. A batch is cut into chunks
// of images (kChunkBytes); with at least an image per thread each chunk is one thread's task from
// input to output (winograd_buffers), otherwise each pass of a chunk is split over the threads.
//
// The transforms vectorise along TW: W consecutive tiles of a tile row are W lanes, their input
// columns 4j + o read as four stride-4 phases by two levels of the deinterleaving loads the pooling
// kernels use (permutes: no gathers, which are slow on AMD).
//
// Rounding: the transforms mix values of magnitude up to 100x the inputs (BT row 0 is 4, -5, 1; AT
// row 3 has 8), so float32 errors are several times direct convolution's; README, "Convolution
// algorithms", gives the measured ratios per layer size. A non-finite value anywhere (an Inf in x
// spreads NaN over its tiles, an overflow in the transforms) makes the caller recompute with the
// direct method: every Winograd result is scanned once.
#pragma once

#include <cstdint>
#include <cstring>

#include "common/cpu.h"
#include "common/int_math.h"
#include "common/parallel.h"
#include "conv/conv.h"
#include "conv/im2col.h"
#include "gemm/gemm_driver.h"
#include "gemm/gemm_isa.h"
#include "simd/simd.h"

#ifndef SIMDNN_ISA_NS
#error "compile with -DSIMDNN_ISA_NS=<isa>"
#endif

namespace simdnn::SIMDNN_ISA_NS {
namespace {

namespace wino {
// V and M of the images transformed at once (by one thread, where chunks are tasks) stay within
// kChunkBytes, so that they pass from the transforms to the GEMMs and on through the caches instead
// of memory, but a chunk has at least kMinChunkTiles tiles, the GEMMs' N. Measured on Zen 5 (2
// threads, float32, forward ms, before chunks were tasks):
//                  64->64 32x32 N32   128->128 28x28 N16   256->256 14x14 N16
//   32 MiB, -            4.3                 4.7                  5.0
//    4 MiB, -            2.7                 3.6                  6.8   (3 images: T = 48)
//    4 MiB, 256 tiles    2.8                 3.8                  4.4
//    8 MiB, 256 tiles    3.0                 3.9                  4.4
constexpr int64_t kChunkBytes = int64_t(4) << 20;
constexpr int64_t kMinChunkTiles = 256;
// ... or, where chunks are tasks and fit in L2 (winograd_buffers), at least this many: 64 x 64
// GEMMs over 64 tiles (one 32x32 image) ran 64->64 32x32 N32 faster than over 256 tiles from L3.
constexpr int64_t kL2ChunkMinTiles = 64;

// Elements between two points' blocks (U[xi], V[xi], M[xi]): an odd number of 64-byte lines. The
// transforms read or write all 36 blocks at once; with a stride of a multiple of 4 KiB (C * T =
// 64 x 1728 floats, K * C = 128 x 128) the 36 streams fall into one L1 set (12 ways) and evict
// each other, and the input transform of 64 channels of 32x32, batch 32, took 2 ms instead of
// a fraction of the GEMMs' time.
template <typename T>
int64_t point_stride(int64_t elems) {
  constexpr int64_t line = 64 / static_cast<int64_t>(sizeof(T));
  int64_t lines = ceil_div(elems, line);
  if (lines % 2 == 0) ++lines;
  return lines * line;
}
}  // namespace wino

// ------------------------------------------------------------------------------------------------
// The tiles: F(4x4, 3x3) (m = 4, alpha = 6, 36 points) and F(2x2, 3x3) (m = 2, alpha = 4, 16
// points). Each tile type names its sizes (kM: output tile; kAlpha: input tile, m + r - 1;
// kPoints: alpha^2 GEMMs) and its five 1-D transforms: G (3 -> alpha, filters), G^T (alpha -> 3,
// filter gradients), BT (alpha -> alpha, inputs), AT (alpha -> m, outputs) and AT^T (m -> alpha,
// dY in backward-weights). Column 1 of both ATs is all ones, so point (1, 1) of a tile's dM is the
// sum of its dY values (db).

struct F4x4 {
  static constexpr int64_t kM = 4, kAlpha = 6, kPoints = 36;

  // G (3 -> 6), the filters': [1 0 0; 1/3 1/3 1/3; -1/3 1/3 -1/3;
  // -16/15 -8/15 -4/15; 1/15 -2/15 4/15; 0 0 1].
  template <class V>
  static void g(const typename V::V* f, typename V::V* o) {
    using T = typename V::T;
    const auto s02 = V::add(f[0], f[2]);
    const auto third = V::set1(T(1.0 / 3)), fifteenth = V::set1(T(1.0 / 15));
    o[0] = f[0];
    o[1] = V::mul(third, V::add(s02, f[1]));
    o[2] = V::mul(third, V::sub(f[1], s02));
    // -(16 g0 + 8 g1 + 4 g2) / 15 and (g0 - 2 g1 + 4 g2) / 15
    o[3] = V::mul(V::set1(T(-4.0 / 15)),
                  V::fma(V::set1(T(4)), f[0], V::fma(V::set1(T(2)), f[1], f[2])));
    o[4] = V::mul(fifteenth, V::fma(V::set1(T(4)), f[2], V::fnma(V::set1(T(2)), f[1], f[0])));
    o[5] = f[2];
  }

  // G^T (6 -> 3), the transpose of g (backward-weights).
  template <class V>
  static void gt(const typename V::V* d, typename V::V* o) {
    using T = typename V::T;
    const auto third = V::set1(T(1.0 / 3));
    const auto s12 = V::add(d[1], d[2]), d12 = V::sub(d[1], d[2]);
    o[0] = V::fma(third, d12,
                  V::fma(V::set1(T(-16.0 / 15)), d[3], V::fma(V::set1(T(1.0 / 15)), d[4], d[0])));
    o[1] = V::fma(third, s12,
                  V::fma(V::set1(T(-8.0 / 15)), d[3], V::mul(V::set1(T(-2.0 / 15)), d[4])));
    o[2] = V::fma(third, d12, V::fma(V::set1(T(4.0 / 15)), V::sub(d[4], d[3]), d[5]));
  }

  // BT (6 -> 6), the input's:
  //   [1 -3/2 -2 3/2 1 0; 0 -1 1/2 5/2 1 0; 0 1 -5/2 1/2 1 0; 0 -2 -1 2 1 0; 0 1/2 -1 -1/2 1 0;
  //    0 1 -3/2 -2 3/2 1]
  template <class V>
  static void bt(const typename V::V* d, typename V::V* o) {
    using T = typename V::T;
    const auto half = V::set1(T(0.5)), c15 = V::set1(T(1.5)), c2 = V::set1(T(2)),
               c25 = V::set1(T(2.5));
    const auto d31 = V::sub(d[3], d[1]), d42 = V::sub(d[4], d[2]);
    o[0] = V::fma(c15, d31, V::fnma(c2, d[2], V::add(d[0], d[4])));
    o[1] = V::fma(c25, d[3], V::fma(half, d[2], V::sub(d[4], d[1])));
    o[2] = V::fma(half, d[3], V::fnma(c25, d[2], V::add(d[4], d[1])));
    o[3] = V::fma(c2, d31, d42);
    o[4] = V::fnma(half, d31, d42);
    o[5] = V::fma(c15, d42, V::fnma(c2, d[3], V::add(d[1], d[5])));
  }

  // AT (6 -> 4), the output's: [1 1 1 1 1 0; 0 1 -1 1/2 -2 0; 0 1 1 1/4 4 0; 0 1 -1 1/8 -8 1].
  template <class V>
  static void at(const typename V::V* m, typename V::V* o) {
    using T = typename V::T;
    const auto s12 = V::add(m[1], m[2]), d12 = V::sub(m[1], m[2]);
    o[0] = V::add(V::add(m[0], s12), V::add(m[3], m[4]));
    o[1] = V::fma(V::set1(T(0.5)), m[3], V::fnma(V::set1(T(2)), m[4], d12));
    o[2] = V::fma(V::set1(T(0.25)), m[3], V::fma(V::set1(T(4)), m[4], s12));
    o[3] = V::fma(V::set1(T(0.125)), m[3], V::fnma(V::set1(T(8)), m[4], V::add(d12, m[5])));
  }

  // AT^T (4 -> 6), dY's in backward-weights: the transpose of at.
  template <class V>
  static void att(const typename V::V* d, typename V::V* o) {
    using T = typename V::T;
    const auto s02 = V::add(d[0], d[2]), s13 = V::add(d[1], d[3]);
    o[0] = d[0];
    o[1] = V::add(s02, s13);
    o[2] = V::sub(s02, s13);
    // d0 + d1/2 + d2/4 + d3/8 and d0 - 2 d1 + 4 d2 - 8 d3
    o[3] = V::fma(V::set1(T(0.5)),
                  V::fma(V::set1(T(0.5)), V::fma(V::set1(T(0.5)), d[3], d[2]), d[1]), d[0]);
    o[4] = V::fnma(V::set1(T(2)), V::fnma(V::set1(T(2)), V::fnma(V::set1(T(2)), d[3], d[2]), d[1]),
                   d[0]);
    o[5] = d[3];
  }
};

// F(2x2, 3x3) (Lavin & Gray; points 0, 1, -1 and infinity): 16 GEMMs of C*K*T multiply-adds
// replace 9*4 = 36 per tile, 2.25x fewer FMAs than direct convolution against F(4x4)'s 4x, but
// its transforms hold only 0, +-1 and 1/2, so its float32 error stays near direct convolution's
// at any channel count, where F(4x4)'s is 2-6x it (README, "Convolution algorithms"); "auto"
// takes it for wide layers with too few 4x4 tiles (winograd_profitable).
struct F2x2 {
  static constexpr int64_t kM = 2, kAlpha = 4, kPoints = 16;

  // G (3 -> 4): [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1].
  template <class V>
  static void g(const typename V::V* f, typename V::V* o) {
    using T = typename V::T;
    const auto half = V::set1(T(0.5));
    const auto s02 = V::add(f[0], f[2]);
    o[0] = f[0];
    o[1] = V::mul(half, V::add(s02, f[1]));
    o[2] = V::mul(half, V::sub(s02, f[1]));
    o[3] = f[2];
  }

  // G^T (4 -> 3): [1 1/2 1/2 0; 0 1/2 -1/2 0; 0 1/2 1/2 1].
  template <class V>
  static void gt(const typename V::V* d, typename V::V* o) {
    using T = typename V::T;
    const auto half = V::set1(T(0.5));
    const auto s12 = V::add(d[1], d[2]);
    o[0] = V::fma(half, s12, d[0]);
    o[1] = V::mul(half, V::sub(d[1], d[2]));
    o[2] = V::fma(half, s12, d[3]);
  }

  // BT (4 -> 4): [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1].
  template <class V>
  static void bt(const typename V::V* d, typename V::V* o) {
    o[0] = V::sub(d[0], d[2]);
    o[1] = V::add(d[1], d[2]);
    o[2] = V::sub(d[2], d[1]);
    o[3] = V::sub(d[1], d[3]);
  }

  // AT (4 -> 2): [1 1 1 0; 0 1 -1 -1].
  template <class V>
  static void at(const typename V::V* m, typename V::V* o) {
    o[0] = V::add(V::add(m[0], m[1]), m[2]);
    o[1] = V::sub(V::sub(m[1], m[2]), m[3]);
  }

  // AT^T (2 -> 4): the transpose of at.
  template <class V>
  static void att(const typename V::V* d, typename V::V* o) {
    o[0] = d[0];
    o[1] = V::add(d[0], d[1]);
    o[2] = V::sub(d[0], d[1]);
    o[3] = V::sub(V::zero(), d[1]);
  }
};

// ------------------------------------------------------------------------------------------------
// Data transforms, vectorised along the tiles of a tile row

// Four stride-4 phases of 4W contiguous elements: q_o[j] = p[4j + o].
template <class V>
inline void load4(const typename V::T* p, typename V::V& q0, typename V::V& q1, typename V::V& q2,
                  typename V::V& q3) {
  typename V::V e0, o0, e1, o1;
  V::load2(p, e0, o0);
  V::load2(p + 2 * V::W, e1, o1);
  V::deinterleave(e0, e1, q0, q2);
  V::deinterleave(o0, o1, q1, q3);
}

// The M stride-M phases of M * W contiguous elements: q[o][j] = p[M j + o] (M = 2 or 4).
template <class V, int64_t M>
inline void load_phases(const typename V::T* p, typename V::V* q) {
  if constexpr (M == 4) {
    load4<V>(p, q[0], q[1], q[2], q[3]);
  } else {
    static_assert(M == 2, "tiles of 2 or 4 outputs");
    V::load2(p, q[0], q[1]);
  }
}

// ------------------------------------------------------------------------------------------------
// Choice (winograd_eligible, the geometry it needs, is in conv.h for the bindings)

// Whether `automatic` takes Winograd. Each tile costs about 2 x 100 adds per input and output
// channel in the transforms against 36 x C x K multiply-adds in the GEMMs, and the GEMMs need
// channels and tiles (their K and N). Measured on Zen 5 (2 threads, float32), Winograd's speed-up
// over the direct implicit GEMM, forward / backward-data / backward-weights (runs on this VM
// differ by up to 2x for the small layers: 32->32 32x32 gave 0.9 and 2.0 forward):
//   N16 64->64 8x8       2.2 / 2.4 / 2.5       N16 16->16 32x32            0.7 / 0.7 / 0.8
//   N16 128->128 7x7     2.4 / 2.7 / 2.3       N64 32->64 14x14            0.8 / 1.1 / 0.9
//   N16 64->64 56x56     1.3 / 1.3 / 1.3       N1 128->128 28x28 (T = 49)  0.8 / 0.9 / 0.7
//   N1 64->64 56x56      1.1 / 1.1 / 1.1       N16 3->64 32x32             0.2 / 0.3 / 0.4
// So: at least 32 channels in and out and C x K >= 4096 (64 x 64), and T x min(C, K) >= 8192.
// On an AMD EPYC Zen 4 VM (2 threads, float32, medians of 5 alternating blocks, ms, direct /
// F(4x4), forward | backward-data | backward-weights) narrow layers won below that, two runs each
// where given:
//   N1 128->128 28x28 (6272)  1.35-1.57 / 0.61-0.83 | 1.41-1.68 / 0.63-0.83 | 1.40-1.65 / 0.52-1.28
//   N1 96->96 28x28 (4704)    0.75 / 0.40 | 0.86 / 0.41 | 0.81 / 0.29
//   N2 128->128 14x14 (4096)  0.72 / 0.40 | 0.81 / 0.41 | 0.76 / 0.40
//   N1 64->64 32x32 (4096)    0.50 / 0.18 | 0.70 / 0.45 | 0.59 / 0.51
//   N1 64->64 28x28 (3136)    0.36 / 0.21 | 0.41 / 0.21 | 0.42 / 0.22
//   N2 64->64 14x14 (2048)    0.19 / 0.15 | 0.24 / 0.14 | 0.22 / 0.17
//   N1 128->128 14x14 (2048)  0.37 / 0.25 | 0.79 / 0.68 | 0.58 / 0.80 (the one loss)
//   N1 64->64 14x14 (1024)    0.11 / 0.21 | 0.15 / 0.09 | 0.16 / 0.12
// so there layers of at most 128 channels take F(4x4) from 2048 (CpuInfo::
// winograd_narrow_tile_channels). Wider layers with few tiles measured mixed there (N1 256->256
// 14x14: F(4x4) 2.72-3.06 against 1.47-1.71 direct forward, F(2x2) 1.30-2.26 against 2.10-3.17
// backward-data) and keep the bound.
// Accuracy bounds the choice too: the library promises at most 10x the direct method's float32
// error for it. Winograd's error comes from the GEMMs' running sums over the channels, whose
// terms the output transform then weights by up to 8 x 8 (F(4x4)); the transforms' own rounding
// is negligible (a NumPy model with every stage but the GEMMs in float64 kept it all). Summed
// in one run of C terms, F(4x4)'s error grew past the bound (the largest error over the output's
// largest magnitude, against the direct method's, N2 layers, seeds 1-5, AVX-512, AMD EPYC Zen 4
// VM, forward / backward-data): 128->128 28x28 5.3-8.6x / 5.9-7.7x, 192->192 14x14 7.3-8.6x /
// 8.2-10.4x, 256->256 14x14 9.7-13.1x / 9.1-10.9x, 512->512 7x7 9.0-10.4x / 8.4-10.7x; so wider
// layers ran F(2x2), or direct. In runs of kWinogradSumDepth terms, each run's sum then added to
// M, it stays within 6.3x at any width (same runs; AVX2 and scalar in brackets):
//   128: 3.9-5.5x / 3.6-5.8x (2.3-3.2x)   192: 3.7-5.5x / 3.8-6.3x (2.3-3.5x)
//   256: 3.8-5.1x / 3.7-4.7x (2.2-3.7x)   384: 4.1-6.0x / 4.5-5.2x (2.4-3.7x)
//   512 (7x7): 4.0-4.9x / 4.3-4.7x (1.9-3.5x)
// and F(2x2)'s at 0.55-0.91x (F(2x2) 0.83-1.72x in one run). Backward-weights sums over tiles, in
// chunks, and stays at 2.0-5.0x without it. Runs of 32 terms gave 2.4-5.2x; 64 cost F(4x4)'s
// 256->256 14x14 N16 about 1% (10.29 -> 10.41 ms forward, 11.10 -> 11.06 backward-data) and
// 128->128 28x28 N16 about 5% (7.78 -> 8.21, 7.94 -> 8.46), 2 threads, medians of alternating runs.
//
// Layers over 128 channels take F(4x4) where the batch has at least kMinF4WideTiles of its
// tiles, else F(2x2), which needs kMinF2Tiles tiles of 2x2: with few tiles F(4x4)'s GEMMs stream
// 36 C x K blocks of U for a narrow N, and F(2x2) has 2.25x the tiles and 16 such blocks. Zen 4,
// 2 threads, float32, ms, direct / F(4x4) / F(2x2), forward | backward-data | backward-weights
// (F(4x4) tiles in brackets):
//   N16 256->256 14x14 (256)  19.2 / 9.8 / 11.7 | 19.8 / 9.7 / 10.7 | 18.9 / 10.4 / 11.6
//   N4 256->256 14x14 (64)     5.2 / 4.0 / 4.2  |  5.5 / 2.6 / 3.4  |  5.0 / 2.8 / 3.0
//   N4 256->256 56x56 (784)   74.1 / 29.3 / 41.1 | 73.9 / 28.9 / 41.3 | 76.0 / 28.0 / 47.3
//   N16 512->512 7x7 (64)     23.7 / 12.8 / 15.3 | 25.2 / 12.5 / 14.2 | 20.3 / 11.4 / 14.1
//   N4 384->384 14x14 (64)    11.1 / 7.8 / 8.3  | 12.1 / 7.4 / 7.8  | 10.9 / 6.5 / 6.6
//   N16 64->256 28x28 (784)   18.9 / 9.1 / 10.8 | 18.9 / 9.0 / 11.3 | 19.4 / 8.7 / 11.6
//   N2 256->256 14x14 (32)     2.5 / 1.4 / 1.5  |  2.8 / 1.4 / 1.6  |  2.5 / 1.3 / 1.3
//   N8 512->512 7x7 (32)      12.1 / 9.5 / 7.7  | 13.6 / 9.1 / 8.2  | 10.8 / 7.8 / 7.8
//   N2 512->512 14x14 (32)    10.2 / 9.0 / 7.3  | 11.5 / 9.1 / 7.0  |  9.7 / 7.1 / 6.1
//   N2 384->384 14x14 (32)     5.5 / 5.6 / 3.8  |  7.0 / 5.8 / 5.1  |  6.1 / 5.2 / 4.6
//   N1 512->512 14x14 (16)     5.2 / 7.3 / 4.3  |  7.2 / 9.0 / 5.3  |  5.8 / 7.2 / 4.0
// (The last one has 49 tiles of 2x2 and runs direct: on the Zen 5 and an earlier Zen 4 run F(2x2)
// measured 7.5 / 7.9 / 6.6 there, against 5.6 / 8.4 / 5.8 direct.)
enum class WinogradPass { forward, backward_data, backward_weights };
enum class WinogradTile { none, f4x4, f2x2 };

// The terms of each running sum in the forward and backward-data GEMMs (above).
constexpr int64_t kWinogradSumDepth = 64;

// The same rule for every pass.
static inline WinogradTile winograd_profitable(const Conv2d& cv) {
  constexpr int64_t kMinChannels = 32, kMinChannelPairs = 4096, kMinTileChannels = 8192;
  constexpr int64_t kNarrowChannels = 128, kMinF4WideTiles = 64, kMinF2Tiles = 64;
  // Counted in 4x4 tiles for both tile sizes: the bound is on the work, not the GEMMs' N.
  const int64_t tiles = cv.n * ceil_div(cv.p, int64_t(4)) * ceil_div(cv.q, int64_t(4));
  const bool narrow = max64(cv.c, cv.k) <= kNarrowChannels;
  const int64_t min_tile_channels =
      narrow ? cpu_info().winograd_narrow_tile_channels : kMinTileChannels;
  if (cv.c < kMinChannels || cv.k < kMinChannels || cv.c * cv.k < kMinChannelPairs ||
      tiles * min64(cv.c, cv.k) < min_tile_channels) {
    return WinogradTile::none;
  }
  if (narrow || tiles >= kMinF4WideTiles) return WinogradTile::f4x4;
  const int64_t tiles2 = cv.n * ceil_div(cv.p, int64_t(2)) * ceil_div(cv.q, int64_t(2));
  return tiles2 >= kMinF2Tiles ? WinogradTile::f2x2 : WinogradTile::none;
}

// The tile a pass runs, or none (direct).
static inline WinogradTile winograd_tile(const Conv2d& cv, WinogradPass pass) {
  if (!winograd_eligible(cv, pass == WinogradPass::backward_data)) return WinogradTile::none;
  switch (cv.algorithm) {
    case ConvAlgorithm::direct:
      return WinogradTile::none;
    case ConvAlgorithm::winograd:
      return WinogradTile::f4x4;
    case ConvAlgorithm::winograd_2x2:
      return WinogradTile::f2x2;
    case ConvAlgorithm::automatic:
      break;
  }
  return winograd_profitable(cv);
}

// ------------------------------------------------------------------------------------------------
// Filter transforms (once per call)

// u[xi * plane + i * cols + j] = (G g G^T)[xi] for the rows x cols filters g: forward, rows = K,
// cols = C, g = w[k, c]; flipped (backward-data), rows = C, cols = K, g = w[k, c] rotated by 180
// degrees. Vectorised along j (u's contiguous index) over a transposed copy of row i's filters;
// 65,536 filters (256 -> 256) took 2.5 ms on two threads in scalar double, about a quarter of the
// layer.
template <class F, class V>
void winograd_filters(const typename V::T* w, int64_t k, int64_t c, bool flipped, typename V::T* u,
                      int64_t plane, int nthreads) {
  using T = typename V::T;
  using R = typename V::V;
  constexpr int W = V::W;
  const int64_t rows = flipped ? c : k, cols = flipped ? k : c;
  const int64_t ldt = round_up(cols, W);
  parallel_ranges(rows, 1, 1, nthreads, [&](int64_t r0, int64_t r1) {
    T* gt = static_cast<T*>(workspace(WorkspaceSlot::pack_aux, 9 * ldt * sizeof(T)));
    for (int64_t i = r0; i < r1; ++i) {
      // gt[rs][j]: tap rs of filter (i, j).
      for (int64_t j = 0; j < cols; ++j) {
        const T* g = flipped ? w + (j * c + i) * 9 : w + (i * c + j) * 9;
        for (int t = 0; t < 9; ++t) gt[t * ldt + j] = flipped ? g[8 - t] : g[t];
      }
      for (int64_t j = 0; j < cols; j += W) {
        const int live = static_cast<int>(min64(W, cols - j));
        constexpr int A = F::kAlpha;
        R cols3[3][A];  // (G g) column s, for s = 0..2
        for (int s = 0; s < 3; ++s) {
          R g[3];
          for (int r = 0; r < 3; ++r) g[r] = V::load(gt + (r * 3 + s) * ldt + j);
          F::template g<V>(g, cols3[s]);
        }
        for (int a = 0; a < A; ++a) {
          R g[3] = {cols3[0][a], cols3[1][a], cols3[2][a]}, o[A];
          F::template g<V>(g, o);
          for (int b = 0; b < A; ++b) {
            T* dst = u + (a * A + b) * plane + i * cols + j;
            if (live == W) {
              V::store(dst, o[b]);
            } else {
              V::storen(dst, o[b], live);
            }
          }
        }
      }
    }
  });
}

// dw[k, c] = G^T dU[k, c] G, from du[xi * plane + k * C + c]: vectorised along c, through a [9][C]
// scratch.
template <class F, class V>
void winograd_filters_backward(const typename V::T* du, int64_t k, int64_t c, int64_t plane,
                               typename V::T* dw, int nthreads) {
  using T = typename V::T;
  using R = typename V::V;
  constexpr int W = V::W;
  const int64_t ldt = round_up(c, W);
  parallel_ranges(k, 1, 1, nthreads, [&](int64_t k0, int64_t k1) {
    T* gt = static_cast<T*>(workspace(WorkspaceSlot::pack_aux, 9 * ldt * sizeof(T)));
    for (int64_t i = k0; i < k1; ++i) {
      for (int64_t j = 0; j < c; j += W) {
        const int live = static_cast<int>(min64(W, c - j));
        constexpr int A = F::kAlpha;
        R rows3[3][A];  // (G^T dU) row r, for r = 0..2
        for (int b = 0; b < A; ++b) {
          R d[A], o[3];
          for (int a = 0; a < A; ++a) {
            const T* src = du + (a * A + b) * plane + i * c + j;
            d[a] = live == W ? V::load(src) : V::loadn(src, live);
          }
          F::template gt<V>(d, o);
          for (int r = 0; r < 3; ++r) rows3[r][b] = o[r];
        }
        for (int r = 0; r < 3; ++r) {
          R o[3];
          F::template gt<V>(rows3[r], o);
          for (int s = 0; s < 3; ++s) V::store(gt + (r * 3 + s) * ldt + j, o[s]);
        }
      }
      for (int64_t j = 0; j < c; ++j) {
        for (int t = 0; t < 9; ++t) dw[(i * c + j) * 9 + t] = gt[t * ldt + j];
      }
    }
  });
}

// Tiles per block of a transform task: the block's vertical results and flattened phase rows (up
// to about 100 x 4 x 512 elements, 800 KiB in float32) stay in L2. Lanes run over the block's
// tiles flattened across tile rows and images, so every vector is full but the block's last:
// vectorised along a tile row instead, 28x28 planes (7 tiles a row) filled 7 of 16 lanes.
constexpr int64_t kBlockTiles = 512;

// The images of a block: enough for kBlockTiles tiles, at least one.
inline int64_t block_images(int64_t per) { return max64(1, kBlockTiles / per); }

// The two passes of a data transform over one block, for `rows_in` source rows per tile row
// (6 with overlap for the input, 4 for dY) and the 1-D transform F (rows_in -> 6):
//   stage       the block's planes copied with their zero padding (see below)
//   vertical    every tile row's source rows combined into 6 rows of 4 TW + 4 columns (tv)
//   flatten     tv copied into flattened rows, f0[a][4l + o] = column 4tj + o of tile l, and (input
//               only) f1[a][4l + o] = column 4tj + 4 + o, its right neighbour's first columns
//   horizontal  F again, W tiles at a time, their columns read as four stride-4 phases
// Each pass runs over the whole block before the next reads its output: a store read back at once
// through a shifted or masked load misses store-to-load forwarding (a stall of about 20 cycles),
// and per tile row that made the transform as slow as the GEMMs (2 ms for 128 channels of 28x28,
// batch 16, on Zen 5). Full vectors everywhere but at the plane's edges; a copy's spill past its
// row lands where the next row's copy overwrites it.
template <class Tile, class V, int RowsIn, class F>
void transform_block(const typename V::T* planes, int64_t plane_stride, int64_t readable,
                     int64_t nimg_blk, int64_t h, int64_t w, int64_t row0, int64_t pw, int64_t th,
                     int64_t tw, bool second, typename V::T* out, int64_t ld, const F& fn) {
  using T = typename V::T;
  using R = typename V::V;
  constexpr int W = V::W;
  constexpr int64_t M = Tile::kM;
  constexpr int A = static_cast<int>(Tile::kAlpha);
  const int64_t per = th * tw, tiles = nimg_blk * per;
  const int64_t wb = round_up(M * tw + M, W);  // tv row: columns up to M TW + M - 1
  const int64_t nrows = nimg_blk * th;
  const int64_t srows = M * th + RowsIn - M;  // staged rows per plane
  // Copies spill up to W past M * tiles; the alpha rows apart by an odd number of lines.
  const int64_t flat = wino::point_stride<T>(round_up(M * tiles + W, W) + M * W);
  const int nf = second ? 2 : 1;
  T* stage = static_cast<T*>(workspace(
      WorkspaceSlot::pack_aux, (nimg_blk * srows * wb + W + nrows * A * wb + W + A * nf * flat) *
                                   static_cast<int64_t>(sizeof(T))));
  T* tv = stage + nimg_blk * srows * wb + W;
  T* f0 = tv + nrows * A * wb + W;
  T* f1 = f0 + A * flat;
  // Stage: each plane's rows row0 .. row0 + srows - 1, zero-padded, `pw` zeros on the left, in
  // rows of wb. Whole-vector loads and stores: masked loads cost about 25 cycles each on Zen 5,
  // and read at the left and right edge of every row they made the vertical pass 5x slower. A
  // load runs past its row into the next (zeroed afterwards), masked only where it would run past
  // `readable`, the end of the source.
  for (int64_t n = 0; n < nimg_blk; ++n) {
    const T* plane = planes + n * plane_stride;
    const int64_t avail = readable - n * plane_stride;
    for (int64_t r = 0; r < srows; ++r) {
      const int64_t y = row0 + r;
      T* d = stage + (n * srows + r) * wb;
      if (y < 0 || y >= h) {
        for (int64_t x = 0; x < wb; x += W) V::store(d + x, V::zero());
        continue;
      }
      for (int64_t x = 0; x < pw; ++x) d[x] = T(0);
      const T* src = plane + y * w;
      for (int64_t x = 0; x < w; x += W) {
        if (y * w + x + W <= avail) {
          V::store(d + pw + x, V::load(src + x));
        } else {
          V::store(d + pw + x, V::loadn(src + x, static_cast<int>(min64(W, w - x))));
        }
      }
      for (int64_t x = pw + w; x < wb; x += W) V::store(d + x, V::zero());
    }
  }
  // Vertical.
  for (int64_t row = 0; row < nrows; ++row) {
    const int64_t n = row / th, ti = row % th;
    const T* src = stage + (n * srows + ti * M) * wb;
    T* t = tv + row * A * wb;
    for (int64_t x0 = 0; x0 < wb; x0 += W) {
      R d[RowsIn], o[A];
      for (int rr = 0; rr < RowsIn; ++rr) d[rr] = V::load(src + rr * wb + x0);
      fn(d, o);
      for (int a = 0; a < A; ++a) V::store(t + a * wb + x0, o[a]);
    }
  }
  // Flatten.
  const int64_t len = round_up(M * tw, W);
  for (int64_t row = 0; row < nrows; ++row) {
    const T* t = tv + row * A * wb;
    const int64_t l = row * tw;
    for (int a = 0; a < A; ++a) {
      for (int64_t x = 0; x < len; x += W) {
        V::store(f0 + a * flat + M * l + x, V::load(t + a * wb + x));
      }
      if (second) {
        for (int64_t x = 0; x < len; x += W) {
          V::store(f1 + a * flat + M * l + x, V::load(t + a * wb + M + x));
        }
      }
    }
  }
  // Horizontal (the lanes past the block read what the spills left: finite values of this block,
  // or stale ones: their results are not stored).
  for (int64_t l0 = 0; l0 < tiles; l0 += W) {
    const int live = static_cast<int>(min64(W, tiles - l0));
    for (int a = 0; a < A; ++a) {
      R d[2 * M], o[A];  // alpha <= 2 M: F(4x4) leaves the second load's last two phases unused
      load_phases<V, M>(f0 + a * flat + M * l0, d);
      if (second) load_phases<V, M>(f1 + a * flat + M * l0, d + M);
      fn(d, o);
      for (int b = 0; b < A; ++b) {
        T* q = out + (a * A + b) * ld + l0;
        if (live == W) {
          V::store(q, o[b]);
        } else {
          V::storen(q, o[b], live);
        }
      }
    }
  }
}

// out[xi * ld + c * T + t] = (BT d BT^T)[xi] for the 6x6 patches of the chunk's planes (h x w, C
// channels) with zero padding (ph, pw); t = n * TH*TW + ti * TW + tj. One task per channel and
// block.
template <class F, class V>
void winograd_input(const typename V::T* src, int64_t nimg, int64_t c, int64_t h, int64_t w,
                    int64_t ph, int64_t pw, int64_t th, int64_t tw, typename V::T* out, int64_t ld,
                    int nthreads) {
  const int64_t per = th * tw, ttot = nimg * per;
  const int64_t bimg = block_images(per), nblk = ceil_div(nimg, bimg);
  parallel_for(c * nblk, nthreads, [&](int64_t task) {
    const int64_t ch = task / nblk, n0 = (task % nblk) * bimg, n1 = min64(nimg, n0 + bimg);
    const int64_t first = (n0 * c + ch) * h * w;
    transform_block<F, V, F::kAlpha>(
        src + first, c * h * w, nimg * c * h * w - first, n1 - n0, h, w, -ph, pw, th, tw, true,
        out + ch * ttot + n0 * per, ld,
        [](const typename V::V* d, typename V::V* o) { F::template bt<V>(d, o); });
  });
}

// out[xi * ld + k * T + t] = (AT^T dY AT)[xi] for the 4x4 tiles of dY planes (P x Q), zero beyond P
// and Q.
template <class F, class V>
void winograd_grad_input(const typename V::T* dy, int64_t nimg, int64_t k, int64_t p, int64_t q,
                         int64_t th, int64_t tw, typename V::T* out, int64_t ld, int nthreads) {
  const int64_t per = th * tw, ttot = nimg * per;
  const int64_t bimg = block_images(per), nblk = ceil_div(nimg, bimg);
  parallel_for(k * nblk, nthreads, [&](int64_t task) {
    const int64_t ch = task / nblk, n0 = (task % nblk) * bimg, n1 = min64(nimg, n0 + bimg);
    const int64_t first = (n0 * k + ch) * p * q;
    transform_block<F, V, F::kM>(
        dy + first, k * p * q, nimg * k * p * q - first, n1 - n0, p, q, 0, 0, th, tw, false,
        out + ch * ttot + n0 * per, ld,
        [](const typename V::V* d, typename V::V* o) { F::template att<V>(d, o); });
  });
}

// y planes (P x Q) of the chunk's images, K channels = AT M AT^T per tile (+ bias), cropped to
// P x Q; m[xi * ld + k * T + t]. Per task (a channel, a block of images): W tiles at a time, the
// 4x4 results are interleaved into four flattened output rows (row i of tile l at 4l), then each
// tile row's stretch is copied into the plane.
template <class F, class V>
void winograd_output(const typename V::T* m, int64_t ld, int64_t nimg, int64_t k, int64_t p,
                     int64_t q, int64_t th, int64_t tw, const typename V::T* bias, typename V::T* y,
                     int nthreads) {
  using T = typename V::T;
  using R = typename V::V;
  constexpr int W = V::W;
  constexpr int M = static_cast<int>(F::kM), A = static_cast<int>(F::kAlpha);
  const int64_t per = th * tw, ttot = nimg * per;
  const int64_t bimg = block_images(per), nblk = ceil_div(nimg, bimg);
  const int64_t flat = M * round_up(bimg * per, W) + W;  // row copies read up to W - 1 past
  parallel_for(k * nblk, nthreads, [&](int64_t task) {
    const int64_t ch = task / nblk, n0 = (task % nblk) * bimg, n1 = min64(nimg, n0 + bimg);
    T* f = static_cast<T*>(
        workspace(WorkspaceSlot::pack_aux, M * flat * static_cast<int64_t>(sizeof(T))));
    const int64_t tiles = (n1 - n0) * per;
    const T* src = m + ch * ttot + n0 * per;
    const R b = V::set1(bias != nullptr ? bias[ch] : T(0));
    for (int64_t l0 = 0; l0 < tiles; l0 += W) {
      const int live = static_cast<int>(min64(W, tiles - l0));
      // Vertical first: s[i][b] = sum over a of AT[i][a] * M[a][b], column by column.
      R s[M][A];
      for (int bb = 0; bb < A; ++bb) {
        R col[A], o[M];
        for (int a = 0; a < A; ++a) {
          const T* at = src + (a * A + bb) * ld + l0;
          col[a] = live == W ? V::load(at) : V::loadn(at, live);
        }
        F::template at<V>(col, o);
        for (int i = 0; i < M; ++i) s[i][bb] = o[i];
      }
      for (int i = 0; i < M; ++i) {
        R o[M], z[M];
        F::template at<V>(s[i], o);
        if constexpr (M == 4) {
          R lo02, hi02, lo13, hi13;
          V::interleave(V::add(o[0], b), V::add(o[2], b), lo02, hi02);
          V::interleave(V::add(o[1], b), V::add(o[3], b), lo13, hi13);
          V::interleave(lo02, lo13, z[0], z[1]);
          V::interleave(hi02, hi13, z[2], z[3]);
        } else {
          V::interleave(V::add(o[0], b), V::add(o[1], b), z[0], z[1]);
        }
        T* row = f + i * flat + M * l0;
        for (int v = 0; v < M; ++v) V::store(row + v * W, z[v]);
      }
    }
    // Rows in order, each copied in whole vectors whose spill the next rows overwrite; exactly
    // where the spill would leave the plane (the next plane may be another task's).
    const int64_t len = round_up(q, W);
    for (int64_t n = n0; n < n1; ++n) {
      T* plane = y + (n * k + ch) * p * q;
      for (int64_t ti = 0; ti < th; ++ti) {
        const int64_t l = (n - n0) * per + ti * tw;
        const int64_t rows = min64(M, p - ti * M);
        for (int64_t i = 0; i < rows; ++i) {
          const T* from = f + i * flat + M * l;
          T* to = plane + (ti * M + i) * q;
          if ((ti * M + i) * q + len > p * q) {
            copy_run<V>(from, to, q);
          } else {
            for (int64_t x = 0; x < len; x += W) V::store(to + x, V::load(from + x));
          }
        }
      }
    }
  });
}

// ------------------------------------------------------------------------------------------------
// The passes

// 36 independent GEMMs, C_xi = A_xi . B_xi (+ beta C_xi), one task each: with 2 threads 36 tasks
// split evenly, and a single-threaded GEMM needs no barrier inside. The GEMM's scratch is in its
// own slots (gemm_pack, gemm_shared), never in the op_scratch that holds U, V and M.
template <typename T>
void winograd_gemms(GemmArgs<T> g, int64_t points, int64_t a_step, int64_t b_step, int64_t c_step,
                    int nthreads) {
  using UK = typename UkernelFor<T>::type;
  parallel_for(points, nthreads, [&](int64_t xi) {
    GemmArgs<T> a = g;
    a.a += xi * a_step;
    a.b += xi * b_step;
    a.c += xi * c_step;
    a.nthreads = 1;
    gemm_detail::gemm<UK>(a);
  });
}

// The workspace of a pass: U (or dU) and one chunk's V and M, each point's block apart by
// point_stride. With `tasks`, each chunk is one task that a thread runs from end to end (input
// transform, 36 GEMMs, output transform) in V and M of its own (WorkspaceSlot::task_data), and
// v and m are null here.
template <typename T>
struct WinogradBuffers {
  int64_t points, chunk, u_stride, v_stride, m_stride;
  T *u, *v, *m;
  T* db_part;  // u_per_task: nthreads rows of cout partial bias sums, else null
  bool tasks;

  // With tasks: the calling thread's V (returned) and M (in *task_m), from its task_data slot.
  T* task_v(T** task_m) const {
    T* tv = static_cast<T*>(
        workspace(WorkspaceSlot::task_data, points * (v_stride + m_stride) * int64_t(sizeof(T))));
    *task_m = tv + points * v_stride;
    return tv;
  }
};

// Chunks as tasks: where the batch gives every thread at least one image, each chunk is one task
// that a thread runs from end to end, so that V and M pass from the transforms to the GEMMs and
// on in that core's caches; the chunks are evened out to a multiple of the thread count.
// Backward-weights then gives each thread a partial dU (u_per_task: task t's at u + t * kPoints *
// u_stride, and its db in db_part), added in thread order at the end. Split by phase instead
// (each phase a parallel loop over all threads), half of what a phase reads was written by the
// other core, and a line written by one core costs the other several L2 reads: on the Intel Xeon a
// 64 x 784 . 784 x 256 GEMM took 129-136 us right after its B was rewritten, 93-97 us otherwise.
// Intel Xeon (Sapphire Rapids class), 2 threads, float32, forward / backward-data /
// backward-weights ms, two alternating runs each, phases -> tasks:
//   64->64 32x32 N32      6.15-6.33 / 6.17-6.38 / 6.17-6.36  ->  4.45-4.72 / 4.30-4.68 / 4.89-5.24
//   128->128 28x28 N16    7.93-8.38 / 7.72-8.40 / 7.94-8.46  ->  5.76-5.98 / 5.79-5.80 / 5.43-5.49
//   256->256 14x14 N16    7.11-7.49 / 7.36-8.04 / 7.24-7.27  ->  5.48-5.68 / 5.64-5.91 / 5.94-6.02
//   64->64 56x56 N4       2.34-2.46 / 2.35-2.42 / 2.37-2.43  ->  1.80 / 1.85 / 1.81-1.82
//   64->64 8x8 N16, 128->128 7x7 N16 (one chunk of 4 and 6 images a thread): even.
// On an AMD EPYC Zen 4 VM (1 MiB L2, 32 MiB L3 shared by the cores) the phases won instead, so
// there CpuInfo::winograd_chunk_tasks is false. 2 threads, float32, ms, median of 5 alternating
// rounds in one process, tasks -> phases, forward / backward-data / backward-weights:
//   64->64 32x32 N32, F(4x4)     7.04 / 6.79 / 8.31   ->  5.98 / 5.49 / 6.19
//   128->128 28x28 N16, F(4x4)  11.40 / 10.66 / 12.41  ->  8.89 / 9.58 / 9.59
//   256->256 14x14 N16          13.34 / 13.00 (F(2x2)) / 12.22 (F(4x4))  ->  12.11 / 11.95 / 11.37
//   512->512 7x7 N8, F(2x2)     10.37 / 10.59 / 11.44  ->  7.77 / 8.51 / 9.51
//   64->64 56x56 N16, F(4x4)    12.59 / 12.00 / 14.03  ->  8.43 / 8.49 / 10.18
//   256->256 14x14 N2           1.88 / 1.79 / 2.46     ->  1.46 / 1.49 / 2.14
//   backward-weights 256->256 56x56 N4 (F(2x2)) 47.8 -> 47.7 and 64->64 8x8 N16 0.31 -> 0.32:
//   even; F(4x4) forced on 512->512 7x7 N8 38.8-45.7 -> 8.0-9.7 (two 37.7 MB partial dUs).
// Tasks hold twice the data at once (each thread a chunk of V and M, and its own dU), and here
// the L3 that catches it is shared with other tenants; a line the other core wrote comes from the
// shared L3 instead of across a mesh. (Both are likely causes, not measured apart.)
// The chunk size is kChunkBytes per thread (2 MiB and 8 MiB measured even or slower), except
// where the L2 rule below applies: chunks of one image (1.2 MB) everywhere ran 64->64 32x32 N32
// forward in 3.74-3.85 ms but 64->64 56x56 N4 in 2.27 and backward-weights of the former in
// 5.38-5.52, so one-image chunks are taken only where they fit in L2, forward and backward-data.
template <class F, typename T>
WinogradBuffers<T> winograd_buffers(int64_t n, int64_t cin, int64_t cout, int64_t per, int nthreads,
                                    bool allow_tasks, bool u_per_task = false) {
  const int64_t per_image = F::kPoints * (cin + cout) * per * static_cast<int64_t>(sizeof(T));
  WinogradBuffers<T> b;
  b.points = F::kPoints;
  b.chunk = max64(1, min64(n, max64(wino::kChunkBytes / max64(1, per_image),
                                    ceil_div(wino::kMinChunkTiles, per))));
  b.tasks = allow_tasks && winograd_chunk_tasks() && nthreads > 1 && n >= nthreads;
  // Forward and backward-data tasks: chunks small enough to stay in the core's L2 beside U, where
  // that still gives the GEMMs kL2ChunkMinTiles tiles. Intel Xeon (2 MiB L2), 2 threads, float32,
  // forward / backward-data ms, two alternating runs: 64->64 32x32 N32 (one image of 1.2 MB a
  // chunk instead of 4) 4.58-4.61 / 4.59-4.65 -> 3.64-3.72 / 3.81-3.82. No other benchmark layer
  // qualifies (128 and 256 channels: U alone fills L2; 56x56 planes: one image is 3.6 MB), nor
  // any on a 1 MiB L2 (Zen 5).
  // Backward-weights keeps the larger chunks: each chunk adds into all of dU, and one-image chunks
  // took its 64->64 32x32 N32 from 4.89-5.24 to 5.38-5.52 ms.
  if (b.tasks && !u_per_task) {
    const int64_t u_bytes = F::kPoints * cin * cout * static_cast<int64_t>(sizeof(T));
    const int64_t fit = (cpu_info().l2 - u_bytes) / max64(1, per_image);
    if (fit >= 1 && fit * per >= wino::kL2ChunkMinTiles) b.chunk = min64(b.chunk, fit);
  }
  if (b.tasks) {
    const int64_t ntasks = round_up(ceil_div(n, b.chunk), nthreads);
    b.chunk = ceil_div(n, ntasks);
  }
  b.u_stride = wino::point_stride<T>(cin * cout);
  b.v_stride = wino::point_stride<T>(cin * b.chunk * per);
  b.m_stride = wino::point_stride<T>(cout * b.chunk * per);
  const int64_t u_copies = b.tasks && u_per_task ? nthreads : 1;
  const int64_t db_elems = u_copies > 1 ? round_up(nthreads * cout, 16) : 0;
  const int64_t total =
      F::kPoints * (u_copies * b.u_stride + (b.tasks ? 0 : b.v_stride + b.m_stride)) + db_elems;
  b.u = static_cast<T*>(
      workspace(WorkspaceSlot::op_scratch, total * static_cast<int64_t>(sizeof(T))));
  b.v = b.tasks ? nullptr : b.u + F::kPoints * b.u_stride;
  b.m = b.tasks ? nullptr : b.v + F::kPoints * b.v_stride;
  b.db_part = db_elems > 0 ? b.u + total - db_elems : nullptr;
  return b;
}

// One chunk of nimg images: V (in v) from src, the 36 GEMMs into m, y from m, on `nthreads`.
template <class F, typename T>
void winograd_chunk(const T* src, int64_t nimg, int64_t cin, int64_t hin, int64_t win, int64_t ph,
                    int64_t pw, const WinogradBuffers<T>& bf, T* v, T* m, int64_t cout,
                    const T* bias, T* dst, int64_t ho, int64_t wo, int nthreads) {
  using V = typename VecOf<T>::type;
  const int64_t th = ceil_div(ho, F::kM), tw = ceil_div(wo, F::kM);
  const int64_t ttot = nimg * th * tw;
  winograd_input<F, V>(src, nimg, cin, hin, win, ph, pw, th, tw, v, bf.v_stride, nthreads);
  GemmArgs<T> g;
  g.m = cout;
  g.n = ttot;
  g.k = cin;
  g.a = bf.u;
  g.rs_a = cin;
  g.cs_a = 1;
  g.b = v;
  g.rs_b = ttot;
  g.cs_b = 1;
  g.c = m;
  g.rs_c = ttot;
  g.sum_depth = kWinogradSumDepth;  // the error bound (winograd_profitable)
  winograd_gemms(g, F::kPoints, bf.u_stride, bf.v_stride, bf.m_stride, nthreads);
  winograd_output<F, V>(m, bf.m_stride, nimg, cout, ho, wo, th, tw, bias, dst, nthreads);
}

// dst (N, cout, ho, wo) = the stride-1 3x3 convolution of src (N, cin, hin, win) with the
// transformed filters in bf.u (u[xi][cout][cin]) and padding (ph, pw) [+ bias];
// ho = hin + 2 ph - 2.
template <class F, typename T>
void winograd_conv(const T* src, int64_t n, int64_t cin, int64_t hin, int64_t win, int64_t ph,
                   int64_t pw, const WinogradBuffers<T>& bf, int64_t cout, const T* bias, T* dst,
                   int64_t ho, int64_t wo, int nthreads) {
  const int64_t in_img = cin * hin * win, out_img = cout * ho * wo;
  if (bf.tasks) {
    parallel_for(ceil_div(n, bf.chunk), nthreads, [&](int64_t task) {
      const int64_t n0 = task * bf.chunk, nimg = min64(bf.chunk, n - n0);
      T* m = nullptr;
      T* v = bf.task_v(&m);
      winograd_chunk<F>(src + n0 * in_img, nimg, cin, hin, win, ph, pw, bf, v, m, cout, bias,
                        dst + n0 * out_img, ho, wo, 1);
    });
    return;
  }
  for (int64_t n0 = 0; n0 < n; n0 += bf.chunk) {
    winograd_chunk<F>(src + n0 * in_img, min64(bf.chunk, n - n0), cin, hin, win, ph, pw, bf, bf.v,
                      bf.m, cout, bias, dst + n0 * out_img, ho, wo, nthreads);
  }
}

// Forward: false (y unspecified) when the result is not all finite; the caller then runs direct.
template <class F, typename T>
bool winograd_forward(const Conv2d& cv, const T* x, const T* w, const T* b, T* y) {
  using V = typename VecOf<T>::type;
  const int64_t per = ceil_div(cv.p, F::kM) * ceil_div(cv.q, F::kM);
  const WinogradBuffers<T> bf = winograd_buffers<F, T>(cv.n, cv.c, cv.k, per, cv.nthreads, true);
  winograd_filters<F, V>(w, cv.k, cv.c, false, bf.u, bf.u_stride, cv.nthreads);
  winograd_conv<F>(x, cv.n, cv.c, cv.h, cv.w, cv.ph, cv.pw, bf, cv.k, b, y, cv.p, cv.q,
                   cv.nthreads);
  return all_finite(y, cv.n * cv.k * cv.p * cv.q);
}

// Backward-data: the forward Winograd of dY with the flipped filters and padding 2 - pad.
template <class F, typename T>
bool winograd_backward_data(const Conv2d& cv, const T* dy, const T* w, T* dx) {
  using V = typename VecOf<T>::type;
  const int64_t per = ceil_div(cv.h, F::kM) * ceil_div(cv.w, F::kM);
  const WinogradBuffers<T> bf = winograd_buffers<F, T>(cv.n, cv.k, cv.c, per, cv.nthreads, true);
  winograd_filters<F, V>(w, cv.k, cv.c, true, bf.u, bf.u_stride, cv.nthreads);
  winograd_conv<F>(dy, cv.n, cv.k, cv.p, cv.q, 2 - cv.ph, 2 - cv.pw, bf, cv.c,
                   static_cast<const T*>(nullptr), dx, cv.h, cv.w, cv.nthreads);
  return all_finite(dx, cv.n * cv.c * cv.h * cv.w);
}

// One chunk of backward-weights: V of x and dM of dy (in v and m), then du[xi] (+)= dM[xi] .
// V[xi]^T (beta 0 for the first chunk of du), and db += the tile sums of dM at xi = (1, 1).
template <class F, typename T>
void winograd_weights_chunk(const Conv2d& cv, const T* x, const T* dy, int64_t nimg,
                            const WinogradBuffers<T>& bf, T* v, T* m, T* du, bool first, T* db,
                            int nthreads) {
  using V = typename VecOf<T>::type;
  const int64_t th = ceil_div(cv.p, F::kM), tw = ceil_div(cv.q, F::kM);
  const int64_t ttot = nimg * th * tw;
  winograd_input<F, V>(x, nimg, cv.c, cv.h, cv.w, cv.ph, cv.pw, th, tw, v, bf.v_stride, nthreads);
  winograd_grad_input<F, V>(dy, nimg, cv.k, cv.p, cv.q, th, tw, m, bf.m_stride, nthreads);
  GemmArgs<T> g;
  g.m = cv.k;
  g.n = cv.c;
  g.k = ttot;
  g.a = m;
  g.rs_a = ttot;
  g.cs_a = 1;
  g.b = v;  // V[xi]^T: element (t, c) at c * T + t
  g.rs_b = 1;
  g.cs_b = ttot;
  g.c = du;
  g.rs_c = cv.c;
  g.beta = first ? T(0) : T(1);
  winograd_gemms(g, F::kPoints, bf.m_stride, bf.v_stride, bf.u_stride, nthreads);
  if (db != nullptr) {
    const T* sums = m + (1 * F::kAlpha + 1) * bf.m_stride;
    for (int64_t k = 0; k < cv.k; ++k) {
      T acc = T(0);
      for (int64_t t = 0; t < ttot; ++t) acc += sums[k * ttot + t];
      db[k] += acc;
    }
  }
}

// Backward-weights: dU[xi] = sum over chunks of dM[xi] . V[xi]^T, then dw = G^T dU G; db is the
// sum over tiles of dM at xi = (1, 1) (AT's column 1, the point 1, is all ones, so that point of a
// tile is the sum of its 16 dY values). With tasks (winograd_buffers), thread t sums chunks t,
// t + threads, ... into a dU and db of its own, added in thread order at the end.
template <class F, typename T>
bool winograd_backward_weights(const Conv2d& cv, const T* x, const T* dy, T* dw, T* db) {
  using V = typename VecOf<T>::type;
  const int64_t per = ceil_div(cv.p, F::kM) * ceil_div(cv.q, F::kM);
  const WinogradBuffers<T> bf =
      winograd_buffers<F, T>(cv.n, cv.c, cv.k, per, cv.nthreads, true, true);
  const int64_t x_img = cv.c * cv.h * cv.w, dy_img = cv.k * cv.p * cv.q;
  if (db != nullptr) {
    for (int64_t k = 0; k < cv.k; ++k) db[k] = T(0);
  }
  if (bf.tasks) {
    const int nt = cv.nthreads;
    const int64_t chunks = ceil_div(cv.n, bf.chunk), u_size = F::kPoints * bf.u_stride;
    T* db_part = bf.db_part;  // not pack_aux: the transforms take that slot
    for (int64_t i = 0; i < nt * cv.k; ++i) db_part[i] = T(0);
    parallel_for(nt, nt, [&](int64_t t) {
      T* du = bf.u + t * u_size;
      T* m = nullptr;
      T* v = bf.task_v(&m);
      bool first = true;
      for (int64_t j = t; j < chunks; j += nt, first = false) {
        const int64_t n0 = j * bf.chunk;
        winograd_weights_chunk<F>(cv, x + n0 * x_img, dy + n0 * dy_img, min64(bf.chunk, cv.n - n0),
                                  bf, v, m, du, first, db != nullptr ? db_part + t * cv.k : nullptr,
                                  1);
      }
      if (first) std::memset(du, 0, u_size * sizeof(T));  // no chunk: adds nothing
    });
    parallel_for(F::kPoints, nt, [&](int64_t xi) {
      T* d0 = bf.u + xi * bf.u_stride;
      for (int t = 1; t < nt; ++t) {
        const T* dt = d0 + t * u_size;
        for (int64_t i = 0; i < cv.k * cv.c; ++i) d0[i] += dt[i];
      }
    });
    if (db != nullptr) {
      for (int t = 0; t < nt; ++t) {
        for (int64_t k = 0; k < cv.k; ++k) db[k] += db_part[t * cv.k + k];
      }
    }
  } else {
    for (int64_t n0 = 0; n0 < cv.n; n0 += bf.chunk) {
      winograd_weights_chunk<F>(cv, x + n0 * x_img, dy + n0 * dy_img, min64(bf.chunk, cv.n - n0),
                                bf, bf.v, bf.m, bf.u, n0 == 0, db, cv.nthreads);
    }
  }
  winograd_filters_backward<F, V>(bf.u, cv.k, cv.c, bf.u_stride, dw, cv.nthreads);
  return all_finite(dw, cv.k * cv.c * 9) && (db == nullptr || all_finite(db, cv.k));
}

// The passes for a tile chosen at run time (winograd_tile; not none).
template <typename T>
bool winograd_forward(WinogradTile tile, const Conv2d& cv, const T* x, const T* w, const T* b,
                      T* y) {
  return tile == WinogradTile::f2x2 ? winograd_forward<F2x2>(cv, x, w, b, y)
                                    : winograd_forward<F4x4>(cv, x, w, b, y);
}

template <typename T>
bool winograd_backward_data(WinogradTile tile, const Conv2d& cv, const T* dy, const T* w, T* dx) {
  return tile == WinogradTile::f2x2 ? winograd_backward_data<F2x2>(cv, dy, w, dx)
                                    : winograd_backward_data<F4x4>(cv, dy, w, dx);
}

template <typename T>
bool winograd_backward_weights(WinogradTile tile, const Conv2d& cv, const T* x, const T* dy, T* dw,
                               T* db) {
  return tile == WinogradTile::f2x2 ? winograd_backward_weights<F2x2>(cv, x, dy, dw, db)
                                    : winograd_backward_weights<F4x4>(cv, x, dy, dw, db);
}

}  // namespace
}  // namespace simdnn::SIMDNN_ISA_NS
