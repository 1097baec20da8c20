// Direct convolution kernels, without im2col, for the layers the GEMM engine feeds poorly. For the
// per-ISA convolution files; the shape legend is conv.cpp's. Both work on depthwise.h's
// zero-padded (and, for strides, phase-split) planes, so that every tap of a row of outputs is a
// plain vector load at a fixed offset.
//
// Forward with few filters per group (K/G <= 24): the GEMM's rows are the filters, so its 12-row
// micro-tiles ran at most two-thirds full, and its im2col packing fed only K/G FMAs per element
// (the sweep's layers with 3-8 output channels ran at 0.3-0.6x PyTorch 2.13; AMD EPYC Zen 5, 2
// threads: 64->3 7x7 14x14 N16 0.57x -> 1.23x, 96->3 3x3 112x112 N2 0.42x -> 1.66x, 32->8 g2 5x5/s2
// 28x28 N16 0.29x -> 1.36x, 128->8 5x5/s2 56x56 N1 0.32x -> 1.82x).
// Here a block of KB filters and NQ vectors of one output row keeps KB x NQ accumulators over
// the C/G x R x S taps: each tap is KB weight broadcasts and NQ loads. With the filters in the
// vector lanes instead (one or two vectors of filters, an input broadcast per pixel and tap), the
// forward serves rows under half a vector with up to 64 filters, and longer rows where the
// filters fill their vectors (lanes_wide_pays).
//
// Backward-weights of layers with few reduction rows (C/groups * R * S <= 32, such as
// LeNet's first layer, 1 -> 20 5x5).
// The GEMM path (dW = dY . im2col^T) packs, for every pixel, a 32-wide row of im2col^T (one
// micro-panel), and then runs only K filter rows of FMAs over it: with 20 filters and 25 taps the
// packing took about three quarters of the time (lenet1 backward-weights 371 us, 0.89x PyTorch
// 2.13; AMD EPYC Zen 5, 2 threads, float32). Here, per image and input channel:
//   dw[k, c, r, s] += sum over p, q of dy[n, k, p, q] * xpad[n, c, p*sh + r*dh, q*sw + s*dw]
// A block of KB filters and NT taps keeps KB x NT vector accumulators over the rows of dy: each
// dy vector feeds NT FMAs, each x vector KB. The accumulators are added to per-task vector sums,
// whose lanes are summed once at the end of the task. Tasks take whole images, or, for one image,
// ranges of input channels. Unpadded 1x1 layers at stride 1 skip the padded copy: each plane is
// one row of P*Q pixels read in place, and the block's taps are input channels.
//
// The register blocks' loops carry SIMDNN_UNROLL: without it GCC kept the accumulators on the
// stack when the block was not inlined (lenet1 backward-weights 191 -> 345 us).
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "common/compiler.h"
#include "common/cpu.h"
#include "common/int_math.h"
#include "common/parallel.h"
#include "conv/conv.h"
#include "conv/depthwise.h"
#include "conv/im2col.h"
#include "simd/simd.h"
#include "simd/transpose.h"

#ifndef SIMDNN_ISA_NS
#error "compile with -DSIMDNN_ISA_NS=<isa>"
#endif

namespace simdnn::SIMDNN_ISA_NS {
namespace {

// ------------------------------------------------------------------------------------------------
// Forward

// Filters per register block of the direct forward (8 x 3 vectors of accumulators: the budget
// below).
constexpr int64_t kDirectForwardMaxFilters = 8;
// Filters per group up to which the direct forward is used (in blocks of 8), instead of the
// implicit GEMM, whose im2col packing then feeds few FMAs per element and whose second 12-row
// micro-tile runs partly empty. Raised from 8 (AMD EPYC Zen 5, 2 threads, float32; forward unless
// marked, before -> after): LeNet's 1->20 5x5 28x28 N64 0.24 -> 0.14 ms; sweep rows 3->16 5x5/s2
// p2 112x112 N8 0.44x -> 1.03x PyTorch, 3->16 3x3/s2 p2 56x56 N32 0.58x -> 1.17x, 16->16 4x4 p2
// 14x14 N8 0.77x -> 1.46x (backward-data, the flipped convolution: 0.96x -> 1.73x), 16->24 4x4 p3
// 14x14 N32 0.60x -> 0.67x (backward-data 0.65x -> 1.20x); 64->16 3x3 28x28 N8 589 -> 328 us,
// 256->16 3x3 14x14 N8 636 -> 418 us, 128->24 3x3 28x28 N8 1315 -> 880 us. At 32 filters
// stride 1 still gained (64->32 3x3 28x28 N8 812 -> 630 us) but a strided layer lost (192->32
// 3x3/s2 p0 28x28 N4 319 -> 461 us), so the bound is 24.
constexpr int64_t kDirectForwardEligibleFilters = 24;
// Percentage points of lanes the flat form (direct_forward_flat) must gain over the row form.
constexpr int64_t kFlatMinGain = 10;

// Layers with few filters a group on planes whose output rows are under half a vector: filters in
// the vector lanes. The row form above would fill a fraction of each vector, and the implicit
// GEMM splits every image's few pixels into partial panels; here each output pixel is one vector
// of W filters, and every tap is a weight vector (loaded once for NP x NQ pixels) times a
// broadcast input element. Two filter blocks of a group share each broadcast where the group has
// them. The results are transposed back to planes, W pixels at a time.
// Measured against the implicit GEMM (AMD EPYC Zen 5, 2 threads, float32, one block at a time;
// backward-data is the flipped convolution): 16->128 4x4 p2 7x7 N16 backward-data 368 -> 211 us;
// 24->512 7x7 p3 7x7 N2 backward-data 996 -> 744 us; 64->16 3x3 7x7 N8 forward 79 -> 36 us;
// 512->8 3x3 4x4 N16 382 -> 234 us; 96->24 5x5 7x7 N8 255 -> 187 us. There one block at a time
// lost at 32 filters (256->32 3x3 7x7 N8 276 -> 304 us), so the bound was 24. Two blocks a
// broadcast halve the loads, the limit of the one-block loop on cores with two vector load ports
// (a load per FMA): on an Intel Xeon (Sapphire Rapids class, 2 threads, float32, best of 7
// blocks, two runs), GEMM or one block -> two blocks: 256->32 3x3 7x7 N8 382-407 -> 285-298 us;
// 64->64 3x3 7x7 N16 299-308 -> 256-263 us; 96->24 5x5 7x7 N8 289-295 -> 249-256 us; 24->48 5x5
// 7x7 N16 259-269 -> 192-196 us; 32->64 3x3 7x7 N16 150-154 -> 130-140 us; 256->64 3x3 7x7 N8
// 622 -> 522 us; 64->64 5x5 7x7 N16 911 -> 575 us; grouped 128->96 g2 2x2/s2 p1 7x7 N16 (48
// filters a group) 181-190 -> 128-136 us; and backward-data (flipped) 64->32 3x3 7x7 N16 151-168
// -> 132-139 us. At 96 and 128 filters the gain narrowed (256->128 3x3 7x7 N8 1047 -> 927 us,
// 128->96 783 -> 661 us), hence 64; not re-measured on AMD. Not for 1x1 layers, whose GEMM reads
// its input in place (256->32 7x7 N16 35 -> 153 us). Grouped layers, whose GEMM has one partial
// panel per group and image: 32->64 g4 7x7/s2 p1 7x7 N16 (2x2 outputs, 8 filters a group)
// 174 -> 60 us, 0.62x -> 1.72x PyTorch (Intel).
constexpr int64_t kLanesMaxFilters = 64;
constexpr int64_t kLanesMaxBytes = int64_t(512) << 10;

template <typename T>
bool direct_lanes_eligible(const Conv2d& cv) {
  using V = typename VecOf<T>::type;
  const int64_t hp = padded_extent(cv.p, cv.sh, cv.r, cv.dh);
  const int64_t wp = padded_extent(cv.q, cv.sw, cv.s, cv.dw);
  return V::W > 1 && cv.k / cv.groups <= kLanesMaxFilters && cv.r * cv.s >= 2 && 2 * cv.q < V::W &&
         (cv.c * hp * wp + cv.p * cv.q * V::W) * static_cast<int64_t>(sizeof(T)) <= kLanesMaxBytes;
}

// Accumulators per block: KB x NQ <= 24 with 32 registers (AVX-512), 12 with 16.
template <class V>
constexpr int direct_forward_budget() {
  return sizeof(typename V::V) >= 64 ? 24 : 12;
}

// The filters-in-lanes form on rows of at least half a vector (wide rows): each task computes its
// blocks over runs of pixels of a row, the columns past the last whole run in strips of rows
// (lanes_wide_plane). Against the implicit GEMM it saves the im2col packing, which feeds only
// K/G FMAs per packed element: with 32 filters, and at stride 2, the packing took 26% of 3x3/s2
// p0 192->32 28x28 N4's forward samples against 47% for the micro-kernels. Where it pays, with
// tasks of two blocks (runs of 12 pixels), on an AMD EPYC Zen 4 VM (2 threads, float32, forward,
// GEMM (or, for 16 filters, the row form below) -> wide lanes, medians of 5 alternating blocks
// in one process), N8 28x28 p1 unless given:
//  - 16 filters: 3x3 16->16 179 -> 167 us, /s2 80 -> 59 us; 64->16 698 -> 684, /s2 313 -> 224 us;
//    192->16 2088 -> 2035, /s2 988 -> 667 us;
//  - 32 filters: 16->32 377 -> 303, /s2 115 -> 90 us; 64->32 1400 -> 1244, /s2 423 -> 378 us;
//    192->32 3872 -> 3781, /s2 1273 -> 1131 us; 3x3/s2 p0 192->32 N4 585-636 -> 488-574 us;
//    5x5 p2 32->32 2147 -> 1635 us, /s2 634 -> 471 us; 7x7/s2 p3 64->32 56x56 N4 5118 -> 3192 us;
//    16 32->32 14x14 380 -> 335 us;
//  - 48 and 64 filters from 16 or 32 channels: 3x3 16->48 517 -> 456, /s2 150 -> 129 us; 16->64
//    649 -> 589, /s2 190 -> 175 us; 4x4/s2 p2 32->64 N8 753-755 -> 648-673 us;
// and where it does not:
//  - filters that fill their last vector partly: 24 filters lost 0.81-0.85x at stride 1 (64->24
//    1011 -> 1248 us) and gained 0.99-1.11x at stride 2;
//  - 48 or 64 filters from 64 or 192 channels: 0.98-1.04x; 128 filters: 0.93-0.95x (3x3/s2
//    64->128 32x32 N16 3287-3664 -> 3552-3870 us): each task of two blocks broadcasts the input
//    again. Tasks of four blocks (lanes_blocks_per_task, AVX-512) win there, and so take up to 8
//    vectors of filters from any number of channels, where a task's weights fit in half the L2:
//    3x3 384->96 14x14 N2 (884 KB a task) ran 1084 -> 1123 us;
//  - fewer tasks than twice the threads: 2 256->32 14x14 390 -> 448 us, 1 128->32 28x28 444 ->
//    598 us, 1 128->64 /s2 220 -> 259 us (one image leaves a thread idle);
//  - rows shorter than NQ, which leave only strips: 4x4 p2 16->128 7x7 N16 (8-pixel rows) 342
//    -> 735 us, LeNet's 20->50 5x5 12x12 N64 1074 -> 2704 us.
// With AVX2's 16 registers a task takes two blocks of 8 filters. There, up to 8 vectors of filters
// (64 in float32) from any number of channels: on an AMD EPYC Zen 3 VM (AVX2, 2 threads, float32,
// medians of 6 alternating blocks in one process, the "direct" algorithm, N8 28x28 p1 unless
// given), GEMM or row form -> wide lanes, forward:
//  - 32 filters: 3x3/s2 p0 192->32 N4 1323 -> 943 us; 64->32 2356 -> 1704, /s2 618 -> 474 us;
//    256->32 14x14 2365 -> 1708 us; 384->32 14x14 3530 -> 2853 us; 7x7/s2 p3 64->32 56x56 N4
//    6446 -> 4008 us;
//  - 48 and 64 filters: 64->48 2782 -> 2478, 128->48 5638 -> 5176 us; 16->64 877 -> 741, 48->64
//    2558 -> 2293 us, 128->64 14x14 1730 -> 1571 us, 4x4/s2 p2 32->64 N8 977 -> 759 us; 3x3
//    64->64 32x32 N32 18552 -> 17926 us; but /s2 128->64 1815 -> 1863 us;
// backward-data, the flipped convolution: 64->32 (32->64 flipped) 1738 -> 1491 us, 64->64 32x32
// N32 and 128->64 14x14 even (17755 -> 17851, 1571 -> 1595 us). Past 64 filters it loses or ties:
// 128->128 N16 24895 -> 27345 us, /s2 64->128 32x32 N16 3921 -> 4790 us, 48->96 3469 -> 3448 us,
// backward-data of 256->32 14x14 (32->256 flipped) 1451 -> 1627 us; except from at most 32 channels
// with kernels of 16 taps or more, up to 16 vectors (128 filters): 7x7/s2 p3 24->96 28x28 N4 1291
// -> 1071 us, 3->96 56x56 N8 1362 -> 964 us, 5x5 p2 16->96 3215 -> 2643 us, 32->128 8537 -> 7110
// us, /s2 24->128 1619 -> 1416 us, 7x7 p3 32->128 14x14 4142 -> 3298 us, 4x4 p2 16->128 7x7 N16
// 447 -> 397 us (against 3x3 32->128 even: 2957 -> 2892 us). 512 filters read 1.15x and 0.63x in
// two runs (7x7 p3 24->512 7x7 N2). The rule before (up to 16 filters, or 32 from at most 32
// channels) came from the AVX-512 tasks of two blocks on Zen 4. Intel's AVX2 cores are not
// measured.
//
// The image's padded planes and the pixel-major results are the task's workspace (up to
// kLanesWideMaxBytes; 7x7/s2 p3 64->32 56x56 takes 1.35 MB). Intel was not measured: the loop is
// the narrow form's, measured there, and its loads (a broadcast per two FMAs) fit two load ports.
constexpr int64_t kLanesWideMaxBytes = int64_t(2) << 20;

// Filter blocks per task of direct_forward_lanes: two, or on wide rows with 32 registers four,
// each of KB x NQ = 4 x 6 accumulators, so that a broadcast input feeds 64 filters (float32) and
// the input is broadcast once per 4 blocks. Against the implicit GEMM (the "direct" algorithm
// forced), AMD EPYC Zen 4 VM, 2 threads, float32, medians of 5 alternating blocks, tasks of two
// blocks (taken only where the rule then took them) -> four, forward | backward-data (flipped):
// 3x3 64->64 28x28 N8 2486 -> 2284 | 2580 -> 2321 us, 56x56 N8 10273 -> 8943 | 10335 -> 9008 us,
// 192->64 28x28 N8 7772 -> 7392 | 7363 -> 7104 us, /s2 2224 -> 2102 us, 128->128 /s2 28x28 N8
// 2609 -> 2377 us, 64->128 4671 -> 4470 us | even, 3x3/s2 64->128 32x32 N16 3169 -> 3139 us, 7x7/s2
// p3 24->96 28x28 N4 1147 -> 900 us; 32->64 4x4/s2 (two blocks a task before) 647 -> 629 us.
template <class V>
int64_t lanes_blocks_per_task(const Conv2d& cv) {
  return direct_forward_budget<V>() >= 24 && 2 * cv.q >= V::W ? 4 : 2;
}

// Bytes of weights a task of the wide form may stream from L2 on each run of pixels. On an Intel
// Xeon VM (AVX-512, 2 MiB L2, so half of it admitted 1 MiB), 2 threads, float32, forward, 3x3,
// implicit GEMM against wide lanes, min-median of 6 alternating blocks of 10 calls in one
// process, KB a task: past 640 KB the GEMM won or tied: p0 14x14 N2 384->128 (864) 1102-1207 us
// against 1388-1548, 384->96 (864) 850-1177 against 1035-1336 and 870-924 against 1000-1202,
// 320->96 (720) 713-782 against 805-942; even: 352->64 p0 (792), 384->64 p0 N4 and p1 N2 (864),
// 384->96 p1 (864), 320->64 p1 28x28 N4 (720). Below it, lanes won or tied: 256->96 p0 14x14 N2
// (576) 864-1187 against 985-1141 us, 256->64 p1 28x28 N4 (576) 4216-4527 against 4422-4552,
// 192->64 p1 28x28 N8 (432) 6084-6341 against 6427-6644, 192->96 28x28 N4 (432) even. AMD's
// L2s of 1 MiB keep half (512 KiB).
constexpr int64_t kLanesMaxTaskWeights = int64_t(640) << 10;

// Where the GEMM beats four-block tasks (AVX-512; kLanesSpreadFilters, kLanesSpreadMinReduction):
// its im2col is cheap against the FMAs, while the lanes pay a pass over the output (pixel-major
// results transposed back to planes) whatever the reduction's length, and where a group has more
// filters than one task takes, every task broadcasts the input again. Intel Xeon VM (AVX-512), 2
// threads, float32, forward, medians of 5 alternating blocks of 12 calls in one process, wide lanes
// -> GEMM, 28x28 p1 N16 unless given:
//  - kernels of under 9 taps from 64 filters (four blocks) on: 2x2 p0 8->128 (the sweep's row,
//    0.93x PyTorch) 725 -> 500 us, 16->128 1134 -> 812 us, 32->128 1765 -> 1494 us, 16->64 541
//    -> 505 us, 32->64 886 -> 846 us, 64->64 1582 -> 1519 us, 2x2/s2 64->128 950 -> 787 us;
//    at 32 and 48 filters the lanes win or tie (8->32 170 vs 201 us, 32->32 484 vs 543 us,
//    32->48 663 vs 669 us);
//  - more than 64 filters (four blocks: several tasks an image) on 3x3 and 4x4 kernels with short
//    reductions: 3->128 3x3 56x56 (27 taps a filter) 2273 -> 1725 us, /s2 p1 112x112 N8 1196 -> 887
//    us, 8->128 (72) 1156 -> 988 us, 16->96 (144) 1500 -> 1363 us, 16->128 (144) 1747 -> 1663
//    us, /s2 56x56 1972 -> 1791 us, 20->128 (180) 2196 -> 2119 us, 12->128 4x4 (192) 2548 ->
//    2496 us; but 24->128 (216) 2336 against 2381 us and 32->128 (288) 3146 against 3271 us;
//    5x5 and 7x7 kernels keep the lanes even when short: 3->128 5x5 p2 56x56 N8 (75) 1982
//    against 2012 us, 8->128 5x5 (200) 2210 against 2451 us, 3->128 7x7 p3 56x56 N8 (147) 3057
//    against 3749 us, 7x7/s2 p3 3->96 56x56 N8 (147) 643 against 818 us.
// Up to four blocks (one task an image and group), 3x3 reductions as short as 72 keep the lanes:
// 8->64 3x3 488 against 596 us. The bounds count filters, not vectors: in float64 (8 lanes) the
// lanes won below 64 filters where a vector count would have moved the layer, 2x2 16->32 482-491
// against 581-594 us and 3x3 8->64 978-985 against 1091-1101 us, and tied at 2x2 8->64 (540-564
// against 534-557 us). AMD not measured (the rule before came from Zen 4 and Zen 5, whose
// measured layers all still take the lanes).
constexpr int64_t kLanesSpreadFilters = 64;
constexpr int64_t kLanesSpreadMinReduction = 216;

template <typename T>
bool lanes_wide_pays(const Conv2d& cv) {
  using V = typename VecOf<T>::type;
  constexpr int64_t W = V::W, NQ = direct_forward_budget<V>() / 2;
  if (W == 1 || 2 * cv.q < W) return false;  // no lanes, or the narrow form's rows
  if (const int mode = test_switch(TestSwitch::kConvLanesWide); mode >= 0) return mode == 1;
  const int64_t cg = cv.c / cv.groups, kg = cv.k / cv.groups;
  const int64_t hp = padded_extent(cv.p, cv.sh, cv.r, cv.dh);
  const int64_t wp = padded_extent(cv.q, cv.sw, cv.s, cv.dw);
  const int64_t per_task = lanes_blocks_per_task<V>(cv), bytes = sizeof(T);
  const int64_t tasks = cv.n * cv.groups * ceil_div(kg / W, per_task);
  // A task's weights, C/G x R x S vectors of each of its blocks, stay in half the L2, and within
  // kLanesMaxTaskWeights where the L2 is larger (Intel's 2 MiB).
  const bool in_l2 = cg * cv.r * cv.s * min64(kg, per_task * W) * bytes <=
                     min64(cpu_info().l2 / 2, kLanesMaxTaskWeights);
  // Four-block tasks: short reductions and small kernels left to the GEMM
  // (kLanesSpreadMinReduction).
  const int64_t rs = cv.r * cv.s, crs = cg * rs;
  const bool four_ok = kg <= 8 * W && in_l2 && (rs >= 9 || kg < kLanesSpreadFilters) &&
                       (kg <= kLanesSpreadFilters || rs >= 25 || crs >= kLanesSpreadMinReduction);
  const bool filters =
      kg % W == 0 &&
      (per_task == 4 ? four_ok : kg <= 8 * W || (kg <= 16 * W && cg <= 32 && cv.r * cv.s >= 16));
  return cv.r * cv.s >= 2 && cv.q >= NQ && filters && tasks >= 2 * cv.nthreads &&
         (cv.c * hp * wp + per_task * cv.p * cv.q * W) * bytes <= kLanesWideMaxBytes;
}

// Taps [t0, t1) (tap t = r * S + s): the kernel rows r that reach the image for at least one of
// the output rows pa..pb, which read padded row p * sh + r * dh (image row p * sh + r * dh - ph).
// The other rows read only the padding's zero rows, and a block that skips them leaves out terms
// that are exact zeros, as oneDNN does, unless a weight is Inf or NaN: padding is multiplied as
// in the twin and PyTorch (Inf * 0 = NaN), so `finite` (all_finite of the weights) false keeps
// every tap. The range is empty for rows that no tap reaches. The row, flat and filters-in-lanes
// forms take it per block of output rows (the forward, and backward-data as the flipped
// convolution); the GEMM's panels mix rows and keep every tap. AMD EPYC Zen 4 VM, 2 threads,
// float32 forward, all taps -> live taps, medians of 4-6 alternating runs of two builds:
//  - flat form: 4x4 p3 16->24 14x14 N32 (32% of its taps on padding, 18% on padding rows)
//    722-803 -> 613-697 us (five runs); 5x5 p3 24->8 7x7 N16 116-121 -> 92-103 us; 4x4 p2
//    128->16 7x7 N16 600 -> 540 us;
//  - filters in lanes: 3x3 p1 64->16 7x7 N8 72-81 -> 64-66 us; 3x3 p1 64->64 7x7 N16 439 -> 398
//    us; 7x7 p3 24->64 7x7 N2 128 -> 120 us; 7x7/s2 p1 32->64 g4 7x7 N16 89 -> 62 us;
//  - row form: 5x5/s2 p2 32->8 g2 28x28 N16 323 -> 278 us;
//  - unpadded layers even: 3x3 p0 64->16 7x7 N8 38.0 -> 38.9 us, 3x3/s2 p0 192->32 28x28 N4
//    522 -> 521 us.
struct TapRange {
  int64_t t0, t1;
};
inline TapRange live_taps(const Conv2d& cv, bool finite, int64_t pa, int64_t pb) {
  if (!finite) return TapRange{0, cv.r * cv.s};
  // Smallest r with p * sh + r * dh >= bound (0 when already there), at most R.
  const auto first_at = [&](int64_t p, int64_t bound) {
    const int64_t gap = bound - p * cv.sh;
    return gap <= 0 ? int64_t{0} : min64(cv.r, ceil_div(gap, cv.dh));
  };
  const int64_t r0 = first_at(pb, cv.ph), r1 = max64(r0, first_at(pa, cv.ph + cv.h));
  return TapRange{r0 * cv.s, r1 * cv.s};
}

// NP output rows x NQ pixels from (p, q0) of KB filter blocks of one group: acc = bias + sum over
// (c, r, s) of w[:, c, r, s] . x[c, p * sh + r * dh, q * sw + s * dw] (pad: the padded planes of
// the group, cg of them, channel c's padded row i at pad + c * plane + i * wp: planes one after
// another, or rows of every channel side by side as direct_forward_lanes lays them out; block b's
// weights at wt + b * wstep, its results at yt + b * ystep), the
// kernel rows r that read only padding rows left out where the weights are finite (live_taps).
// A task's weights, KB blocks of Cg x R x S vectors (147 KB for 3x3 64->128, four blocks), come
// from L2 on every run of pixels. On an Intel Xeon VM (AVX-512, 48 KiB L1d, 2 MiB L2), 3x3/s2 p1
// 64->128 32x32 N16's forward, 1 thread, spent 79% of its samples in lanes_wide_plane, the
// largest shares of them (8% and 7%) on the first FMAs after the weight loads. Two remedies were
// measured there and dropped (both while the padded image was still C planes; its rows now lie
// side by side, direct_forward_lanes):
//  - a prefetch of each block's weights 8 taps ahead: 5.31 -> 5.75 ms (one run each);
//  - passes over chunks of channels whose weights fit in half of L1, the accumulators reloaded
//    from the results between passes: 5.21-5.51 -> 5.67-5.93 ms (three alternating runs; 3x3/s2
//    128->128 28x28 N8 4.06-4.22 -> 4.09-4.14 ms). With one pass, the parameters the chunks need
//    alone cost 5.74-5.84 ms: the block's code is sensitive to what it carries.
template <class V, int KB, int NP, int NQ, int SW = 0, int SS = 0>
inline void lanes_block(const Conv2d& cv, bool finite, const typename V::T* pad, int64_t cg,
                        int64_t plane, int64_t wp, const typename V::T* wt, int64_t wstep,
                        const typename V::V* bias, typename V::T* yt, int64_t ystep, int64_t p,
                        int64_t q0) {
  using R = typename V::V;
  constexpr int W = V::W;
  R acc[KB][NP][NQ];
  for (int b = 0; b < KB; ++b)
    for (int i = 0; i < NP; ++i)
      for (int j = 0; j < NQ; ++j) acc[b][i][j] = bias[b];
  const int64_t row_step = cv.sh * wp;
  // SS > 0: the kernel's width, compiled in with dilation 1 (3-wide runs take SS = 3), so that
  // the taps of a kernel row unroll into one straight run of loads and FMAs without the loop's
  // counter and branch. Intel Xeon VM (AVX-512), float32, forward, min of 12-20 calls in three
  // or four alternating runs, width read at run time -> compiled in: 3x3 p1 128->128 28x28 N4
  // (1 thread) 8.3-9.8 -> 7.8-8.2 ms, N16 (2 threads) 18.9-19.7 -> 16.6-18.3 ms; 3x3/s2 p1
  // 64->128 32x32 N16 (2 threads) 2.89-3.15 -> 2.69-2.87 ms. 2x2 runs take SS = 2 (2 threads,
  // medians of 12 calls, two alternating runs): 2x2 p0 32->32 28x28 N16 508-518 -> 486-503 us,
  // 2x2/s2 16->32 56x56 N16 383-403 -> 365-372 us. AMD not measured.
  const int64_t ks = SS > 0 ? SS : cv.s, kdw = SS > 0 ? 1 : cv.dw;
  const TapRange taps = live_taps(cv, finite, p, p + NP - 1);
  const int64_t r0 = taps.t0 / ks, r1 = taps.t1 / ks;
  for (int64_t c = 0; c < cg; ++c) {
    for (int64_t r = r0; r < r1; ++r) {
      const typename V::T* row = pad + c * plane + (p * cv.sh + r * cv.dh) * wp + q0 * cv.sw;
      const typename V::T* wr = wt + (c * cv.r + r) * ks * W;
      for (int64_t s = 0; s < ks; ++s) {
        R t[KB];
        for (int b = 0; b < KB; ++b) t[b] = V::load(wr + b * wstep + s * W);
        const typename V::T* src = row + s * kdw;
        for (int i = 0; i < NP; ++i)
          for (int j = 0; j < NQ; ++j) {
            const R xv = V::set1(src[i * row_step + j * (SW > 0 ? SW : cv.sw)]);
            for (int b = 0; b < KB; ++b) acc[b][i][j] = V::fma(t[b], xv, acc[b][i][j]);
          }
      }
    }
  }
  for (int b = 0; b < KB; ++b)
    for (int i = 0; i < NP; ++i)
      for (int j = 0; j < NQ; ++j)
        V::store(yt + b * ystep + ((p + i) * cv.q + q0 + j) * W, acc[b][i][j]);
}

// A whole plane of wide rows (lanes_wide_pays) for KB blocks: runs of NQ pixels of a row, then
// the columns past the last whole run in strips of NQ rows by one column. Strides 1 and 2 are
// compiled in, so that the run's broadcasts are fixed offsets from one pointer: with the stride
// read at run time GCC kept part of the 12 pixel addresses on the stack, and 3x3/s2 p0 192->32
// 28x28 N4 ran at 1.11x the implicit GEMM instead of 1.20x (AMD EPYC Zen 4, 2 threads, float32).
template <class V, int KB>
void lanes_wide_plane(const Conv2d& cv, bool finite, const typename V::T* gpad, int64_t cg,
                      int64_t plane, int64_t wp, const typename V::T* wk, int64_t wstep,
                      const typename V::V* bias, typename V::T* yt, int64_t ystep) {
  constexpr int NQ = direct_forward_budget<V>() / (KB > 2 ? KB : 2);
  const int64_t qm = cv.q / NQ * NQ;
  auto runs = [&](auto swc, auto ssc) {
    constexpr int SW = decltype(swc)::value, SS = decltype(ssc)::value;
    for (int64_t p = 0; p < cv.p; ++p)
      for (int64_t q0 = 0; q0 < qm; q0 += NQ)
        lanes_block<V, KB, 1, NQ, SW, SS>(cv, finite, gpad, cg, plane, wp, wk, wstep, bias, yt,
                                          ystep, p, q0);
  };
  auto widths = [&](auto swc) {
    if (cv.s == 3 && cv.dw == 1) {
      runs(swc, std::integral_constant<int, 3>{});
    } else if (cv.s == 2 && cv.dw == 1) {
      runs(swc, std::integral_constant<int, 2>{});
    } else {
      runs(swc, std::integral_constant<int, 0>{});
    }
  };
  if (cv.sw == 1) {
    widths(std::integral_constant<int, 1>{});
  } else if (cv.sw == 2) {
    widths(std::integral_constant<int, 2>{});
  } else {
    widths(std::integral_constant<int, 0>{});
  }
  // The rows past the last whole strip in one shorter strip. Pixel by pixel (KB accumulators, a
  // weight load per FMA), 3x3/s2 64->128 32x32 N16's 16 corner pixels of 256 took 9% of its
  // forward's samples. AMD EPYC Zen 4 VM, 2 threads, float32, medians of 7 alternating blocks,
  // pixel by pixel -> one strip: that layer 3.55 -> 3.35 ms and 3.97 -> 3.72 ms (two runs),
  // 128->128 3x3/s2 28x28 N8 2.70 -> 2.62 ms, 7x7/s2 p3 64->32 56x56 N4 3.68 -> 3.60 ms; layers
  // with smaller corners even.
  for (int64_t q0 = qm; q0 < cv.q; ++q0) {
    int64_t p = 0;
    for (; p + NQ <= cv.p; p += NQ)
      lanes_block<V, KB, NQ, 1>(cv, finite, gpad, cg, plane, wp, wk, wstep, bias, yt, ystep, p, q0);
    if (p < cv.p) {
      with_width<NQ - 1>(cv.p - p, [&](auto np) {
        constexpr int NP = decltype(np)::value;
        lanes_block<V, KB, NP, 1>(cv, finite, gpad, cg, plane, wp, wk, wstep, bias, yt, ystep, p,
                                  q0);
      });
    }
  }
}

template <typename T>
void direct_forward_lanes(const Conv2d& cv, const T* x, const T* w, const T* b, T* y) {
  using V = typename VecOf<T>::type;
  using R = typename V::V;
  constexpr int W = V::W;
  const int64_t hp = padded_extent(cv.p, cv.sh, cv.r, cv.dh);
  const int64_t wp = padded_extent(cv.q, cv.sw, cv.s, cv.dw);
  const int64_t cg = cv.c / cv.groups, kg = cv.k / cv.groups;
  const int64_t plane = hp * wp, pq = cv.p * cv.q, crs = cg * cv.r * cv.s;
  const bool finite = all_finite(w, cv.k * crs);  // live_taps
  // Filter blocks never straddle two groups: kbg blocks a group, the last one partial. A task
  // computes two blocks of a group where it has them (each broadcast input then feeds two FMAs:
  // the single-block loop issues a load per FMA, the limit on cores with two load ports).
  const int64_t kbg = ceil_div(kg, W), kblocks = cv.groups * kbg;
  const int64_t per_task = lanes_blocks_per_task<V>(cv);
  const int64_t tasks_g = ceil_div(kbg, per_task), units = cv.n * cv.groups * tasks_g;
  // Padded rows i / columns j whose source row i - ph / column j - pw is in the plane.
  const int64_t i0 = min64(hp, cv.ph), i1 = max64(i0, min64(hp, cv.h + cv.ph));
  const int64_t j0 = min64(wp, cv.pw), j1 = max64(j0, min64(wp, cv.w + cv.pw));
  // The weights as (Cg, R, S) vectors of W filters per block, shared by the threads (gemm_pack:
  // backward-data's flipped filters, which this may be handed, are in op_scratch).
  T* wt = static_cast<T*>(workspace(WorkspaceSlot::gemm_pack,
                                    static_cast<size_t>(kblocks * (crs + 1) * W) * sizeof(T)));
  for (int64_t kb = 0; kb < kblocks; ++kb) {
    T* d = wt + kb * (crs + 1) * W;
    const int64_t k0 = kb / kbg * kg + kb % kbg * W;  // the block's first filter
    const int64_t live = min64(W, kg - kb % kbg * W);
    // d[t * W + l] = w[k0 + l, t], through W x W register transposes: element by element (a
    // strided load each) it took 3.5% of the samples of grouped 2x2/s2 p1 128->96 g2 7x7 N16's
    // forward, on one thread before the others start (Intel Xeon VM, 2 threads, float32).
    if (live < W) std::fill(d, d + crs * W, T(0));
    transpose_block<V>(w + k0 * crs, crs, live, crs, d, W);
    for (int l = 0; l < W; ++l) d[crs * W + l] = b != nullptr && l < live ? b[k0 + l] : T(0);
  }
  // The padded image row by row, each row's C channels side by side (c at cstr, padded row i at
  // i * rstr): a run of pixels then reads its R input rows of every channel from one span of
  // C x R x Wp values instead of from C planes a page or more apart. Intel Xeon VM (AVX-512), 2
  // threads, float32, medians of 20-30 calls, three to six alternating runs (one disturbed run
  // of each left out), planes -> rows:
  // 3x3/s2 p1 64->128 32x32 N16 2.43-2.59 -> 2.39-2.44 ms, 3x3/s2 p1 128->128 28x28 N8 1.94-2.01 ->
  // 1.85-1.86 ms, 3x3 p1 64->32 28x28 N8 951-993 -> 909-944 us; 7x7/s2 p3 64->32 56x56 N4, 3x3 p1
  // 64->64 7x7 N16 and 3x3/s2 p0 192->32 28x28 N4 even. AMD not measured.
  const int64_t cstr = wp, rstr = cv.c * wp;
  const int nt = static_cast<int>(min64(cv.nthreads, units));
  parallel_ranges(units, 1, 1, nt, [&](int64_t u0, int64_t u1) {
    T* pad = static_cast<T*>(
        workspace(WorkspaceSlot::pack_aux,
                  static_cast<size_t>(round_up(cv.c * plane, 16) + per_task * pq * W) * sizeof(T)));
    T* yt = pad + round_up(cv.c * plane, 16);
    int64_t padded = -1;  // the image in `pad`
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t n = u / (cv.groups * tasks_g), grp = u / tasks_g % cv.groups;
      const int64_t kb0 = grp * kbg + u % tasks_g * per_task;
      const int64_t nb = min64(per_task, (grp + 1) * kbg - kb0);
      if (n != padded) {
        // The padding is zeroed for the range's first image only: later images overwrite the
        // same interior and leave the zeros. Each interior row is copied in whole vectors, the
        // last one masked, with the geometry in locals (read through `cv`, it was reloaded after
        // every store). Zeroing every image's padding element by element (a memset call for
        // each side of each row) and copying short rows element by element took 31% of the
        // samples of grouped 2x2/s2 p1 128->96 g2 7x7 N16's forward, about as much as its FMAs.
        // Intel Xeon VM, 2 threads, float32, min / median of 60 calls, three alternating runs,
        // before -> after: that layer 164-166 / 172-175 -> 114-121 / 123-127 us; 3x3 p1 64->64
        // 7x7 N16 293-295 / 305-312 -> 260-268 / 272-279 us; 3x3 p1 256->32 7x7 N8 340-345 /
        // 357-367 -> 281-288 / 291-301 us. AMD not measured.
        const int64_t c_all = cv.c, hw = cv.h * cv.w, w_in = cv.w, len = j1 - j0;
        const int64_t rows = i1 - i0, row_step = rstr, chan_step = cstr;
        if (padded < 0) std::fill(pad, pad + c_all * plane, T(0));
        const T* src = x + n * c_all * hw + (i0 - cv.ph) * w_in + (j0 - cv.pw);
        T* dst = pad + i0 * rstr + j0;
        for (int64_t c = 0; c < c_all; ++c, src += hw, dst += chan_step) {
          for (int64_t i = 0; i < rows; ++i) copy_run<V>(src + i * w_in, dst + i * row_step, len);
        }
        padded = n;
      }
      const T* wk = wt + kb0 * (crs + 1) * W;
      const int64_t wstep = (crs + 1) * W, ystep = pq * W;
      R bias[4];
      for (int64_t blk = 0; blk < 4; ++blk)
        bias[blk] = V::load(wk + min64(blk, nb - 1) * wstep + crs * W);
      const T* gpad = pad + grp * cg * cstr;  // the group's channels
      // Rows per block: one block keeps at least 12 accumulators where the plane allows (2 FMA
      // pipes of latency 4 want 8 chains; each tap's weight vector is loaded once per block);
      // two blocks fill the accumulator budget.
      if (2 * cv.q >= V::W) {
        if (nb == 1) {
          lanes_wide_plane<V, 1>(cv, finite, gpad, cg, cstr, rstr, wk, wstep, bias, yt, ystep);
        } else if (nb == 2) {
          lanes_wide_plane<V, 2>(cv, finite, gpad, cg, cstr, rstr, wk, wstep, bias, yt, ystep);
        } else if (nb == 3) {
          lanes_wide_plane<V, 3>(cv, finite, gpad, cg, cstr, rstr, wk, wstep, bias, yt, ystep);
        } else {
          lanes_wide_plane<V, 4>(cv, finite, gpad, cg, cstr, rstr, wk, wstep, bias, yt, ystep);
        }
      } else {
        with_width<7>(cv.q, [&](auto nq) {
          constexpr int NQ = decltype(nq)::value;
          if (nb == 1) {
            constexpr int NP = NQ >= 6 ? 3 : NQ >= 4 ? 4 : NQ >= 2 ? 6 : 12;
            int64_t p = 0;
            for (; p + NP <= cv.p; p += NP)
              lanes_block<V, 1, NP, NQ>(cv, finite, gpad, cg, cstr, rstr, wk, wstep, bias, yt,
                                        ystep, p, 0);
            for (; p < cv.p; ++p)
              lanes_block<V, 1, 1, NQ>(cv, finite, gpad, cg, cstr, rstr, wk, wstep, bias, yt, ystep,
                                       p, 0);
          } else {
            constexpr int NP = direct_forward_budget<V>() / (2 * NQ) > 1
                                   ? direct_forward_budget<V>() / (2 * NQ)
                                   : 1;
            int64_t p = 0;
            for (; p + NP <= cv.p; p += NP)
              lanes_block<V, 2, NP, NQ>(cv, finite, gpad, cg, cstr, rstr, wk, wstep, bias, yt,
                                        ystep, p, 0);
            for (; p < cv.p; ++p)
              lanes_block<V, 2, 1, NQ>(cv, finite, gpad, cg, cstr, rstr, wk, wstep, bias, yt, ystep,
                                       p, 0);
          }
        });
      }
      // Back to planes: the block's pq x W (pixels x filters) transposed into lk planes.
      for (int64_t blk = 0; blk < nb; ++blk) {
        const int64_t kb = kb0 + blk;
        const int lk = static_cast<int>(min64(W, kg - kb % kbg * W));
        T* ys = y + (n * cv.k + grp * kg + kb % kbg * W) * pq;
        transpose_block<V>(yt + blk * ystep, W, pq, lk, ys, pq);
      }
    }
  });
}

template <typename T>
bool direct_forward_eligible(const Conv2d& cv) {
  using V = typename VecOf<T>::type;
  // Rows of at least half a vector.
  const int64_t kg = cv.k / cv.groups;
  // 1x1 at stride 1 unpadded, read in place (direct_forward_pointwise), where a group has at most
  // one block of filters and a plane at least 4 vectors of pixels. AMD EPYC Zen 5, 2 threads,
  // float32, against the padded direct form (or, on 7x7 planes, the GEMM): 384->24 g8 56x56 N16
  // 2.65-2.74 -> 2.26-2.33 ms; 256->32 g8 14x14 N16 144-173 -> 37-41 us; 128->16 g4 8x8 N8
  // 23 -> 3 us, 10x10 29 -> 7 us, but 7x7 (49 pixels) 4 -> 5-8 us. Dense 1x1 layers stay on the
  // GEMM, which reads their input in place too (not measured against this form).
  if (pointwise_unpadded(cv) && cv.p * cv.q >= 4 * V::W) {
    return cv.groups > 1 && kg <= kDirectForwardMaxFilters;
  }
  if (2 * cv.q < V::W) return direct_lanes_eligible<T>(cv);
  if (lanes_wide_pays<T>(cv)) return true;
  if (kg > kDirectForwardEligibleFilters) return false;
  if (cv.r * cv.s >= 2) return true;
  // 1x1 layers: their GEMM needs no im2col (it packs plain rows), and direct lost on dense ones
  // (384->16 112x112 N2 2.79 -> 5.43 ms, 256->3 56x56 N2 143 -> 152 us); with groups, whose
  // GEMMs each have kg rows and C/G reduction rows, it won where a group has few filters:
  // 384->24 g8 56x56 N16 (3 a group) 5.21 -> 2.84 ms, 0.51x -> 0.94x PyTorch (Zen 5, 2 threads).
  return cv.groups > 1 && kg <= kDirectForwardMaxFilters;
}

// Output row p, columns [q0, q0 + NQ * W) (the last vector `last` lanes) of filters k0..k0+KB-1:
// y = bias + the sum over channels c of the group and the live taps t (live_taps) of
// w[k, c, t] * xpad[c, tap t].
// Never inlined, like flat_block: when the tap range came in, GCC changed what it inlined into
// the row loop, and 7x7/s2 p3 128->32 g32 56x56 N2 (one filter a group) went from 537 to 682 us;
// out of line 523 us (AMD EPYC Zen 4 VM, 2 threads, float32, medians of 5 alternating runs).
template <class V, int KB, int NQ>
SIMDNN_NOINLINE void direct_forward_block(const Conv2d& cv, const PadPlane& pp,
                                          const typename V::T* pad, int64_t plane,
                                          const int64_t* off, const typename V::T* w, int64_t crs,
                                          const typename V::T* bias, typename V::T* y, int64_t pq,
                                          int64_t p, int64_t q0, int last, TapRange taps) {
  using T = typename V::T;
  using R = typename V::V;
  constexpr int W = V::W;
  const int64_t cg = cv.c / cv.groups, rs = cv.r * cv.s;
  R acc[KB][NQ];
  for (int k = 0; k < KB; ++k) {
    const R b = V::set1(bias != nullptr ? bias[k] : T(0));
    for (int j = 0; j < NQ; ++j) acc[k][j] = b;
  }
  const T* row0 = pad + p * cv.sh * pp.ld + q0;
  for (int64_t c = 0; c < cg; ++c) {
    const T* src = row0 + c * plane;
    const T* wc = w + c * rs;
    for (int64_t t = taps.t0; t < taps.t1; ++t) {
      // Whole vectors: the padded rows have a vector of slack past the last output column.
      R xv[NQ];
      for (int j = 0; j < NQ; ++j) xv[j] = V::load(src + off[t] + j * W);
      for (int k = 0; k < KB; ++k) {
        const R wv = V::set1(wc[k * crs + t]);
        for (int j = 0; j < NQ; ++j) acc[k][j] = V::fma(wv, xv[j], acc[k][j]);
      }
    }
  }
  for (int k = 0; k < KB; ++k) {
    T* o = y + k * pq + p * cv.q + q0;
    for (int j = 0; j + 1 < NQ; ++j) V::store(o + j * W, acc[k][j]);
    if (last == W) {
      V::store(o + (NQ - 1) * W, acc[k][NQ - 1]);
    } else {
      V::storen(o + (NQ - 1) * W, acc[k][NQ - 1], last);
    }
  }
}

// Output row p of filters k0..k0+KB-1 over its live taps, NQ vectors at a time (NQ up to the
// register budget).
template <class V, int KB>
inline void direct_forward_row(const Conv2d& cv, const PadPlane& pp, const typename V::T* pad,
                               int64_t plane, const int64_t* off, const typename V::T* w,
                               int64_t crs, const typename V::T* bias, typename V::T* y, int64_t pq,
                               int64_t p, TapRange taps) {
  constexpr int W = V::W;
  constexpr int kMaxNq = direct_forward_budget<V>() / KB < 4 ? direct_forward_budget<V>() / KB : 4;
  for (int64_t q0 = 0; q0 < cv.q; q0 += kMaxNq * W) {
    const int64_t left = cv.q - q0;
    const int nq = static_cast<int>(min64(kMaxNq, ceil_div(left, W)));
    const int last = static_cast<int>(min64(W, left - (nq - 1) * W));
    switch (nq) {
      case 4:
        direct_forward_block<V, KB, (kMaxNq >= 4 ? 4 : 1)>(cv, pp, pad, plane, off, w, crs, bias, y,
                                                           pq, p, q0, last, taps);
        break;
      case 3:
        direct_forward_block<V, KB, (kMaxNq >= 3 ? 3 : 1)>(cv, pp, pad, plane, off, w, crs, bias, y,
                                                           pq, p, q0, last, taps);
        break;
      case 2:
        direct_forward_block<V, KB, (kMaxNq >= 2 ? 2 : 1)>(cv, pp, pad, plane, off, w, crs, bias, y,
                                                           pq, p, q0, last, taps);
        break;
      default:
        direct_forward_block<V, KB, 1>(cv, pp, pad, plane, off, w, crs, bias, y, pq, p, q0, last,
                                       taps);
        break;
    }
  }
}

// direct_forward_row for kb (1 to kDirectForwardMaxFilters) filters.
template <class V>
inline void direct_forward_row_kb(int64_t kb, const Conv2d& cv, const PadPlane& pp,
                                  const typename V::T* pad, int64_t plane, const int64_t* off,
                                  const typename V::T* w, int64_t crs, const typename V::T* bias,
                                  typename V::T* y, int64_t pq, int64_t p, TapRange taps) {
  with_width<static_cast<int>(kDirectForwardMaxFilters)>(kb, [&](auto kbc) {
    direct_forward_row<V, decltype(kbc)::value>(cv, pp, pad, plane, off, w, crs, bias, y, pq, p,
                                                taps);
  });
}

// Stride-1 layers whose output rows fill their vectors poorly (a row of 17 pixels takes two
// vectors of 16: 53% of the lanes): the padded rows are laid end to end at the padded width,
// with no slack per row, and a block of output vectors runs across rows. Output (p, q) is flat
// index j = p * ld + q, and tap (r, s) reads the padded plane at j + r * dh * ld + s * dw; the
// ld - Q columns past each row's end are computed and dropped (17 of 20 lanes used instead of 17
// of 32 on 4x4 p3 14x14). The block's results go through a small buffer into y's rows.
// Never inlined: where GCC inlined it, its inlining budget went with the size of the rest of
// direct.h, and an unrelated change there (grouped layers in direct_forward_lanes) took the
// grouped 7x7 512->8 g2 28x28 N2 forward from 0.90-0.96 to 1.03-1.15 ms (Intel Xeon, 2 threads);
// out of line it is 0.93-0.96 ms whatever the rest. A call per block of 4 x 4 vectors over
// Cg x R x S taps costs nothing measurable.
template <class V, int KB, int NQ>
SIMDNN_NOINLINE void flat_block(int64_t cg, int64_t rs, const TapRange* own, TapRange all,
                                const typename V::T* pad, int64_t plane, const int64_t* off,
                                const typename V::T* w, int64_t crs, const typename V::T* bias,
                                typename V::T* out) {
  using T = typename V::T;
  using R = typename V::V;
  constexpr int W = V::W;
  R acc[KB][NQ];
  SIMDNN_UNROLL for (int k = 0; k < KB; ++k) {
    const R b = V::set1(bias != nullptr ? bias[k] : T(0));
    SIMDNN_UNROLL for (int j = 0; j < NQ; ++j) acc[k][j] = b;
  }
  // Vector j's taps [own[j].t0, all.t0) one vector at a time, the taps all vectors share together,
  // then its taps [all.t1, own[j].t1): per channel, so that each output sums its taps in the
  // same order whatever the block it falls in (own[j] == all but at the top and bottom rows).
  const auto alone = [&](const T* src, const T* wc, int j, int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const R xv = V::load(src + off[t] + j * W);
      SIMDNN_UNROLL for (int k = 0; k < KB; ++k) {
        acc[k][j] = V::fma(V::set1(wc[k * crs + t]), xv, acc[k][j]);
      }
    }
  };
  const auto shared = [&](const T* src, const T* wc) {
    for (int64_t t = all.t0; t < all.t1; ++t) {
      R xv[NQ];
      SIMDNN_UNROLL for (int j = 0; j < NQ; ++j) xv[j] = V::load(src + off[t] + j * W);
      SIMDNN_UNROLL for (int k = 0; k < KB; ++k) {
        const R wv = V::set1(wc[k * crs + t]);
        SIMDNN_UNROLL for (int j = 0; j < NQ; ++j) acc[k][j] = V::fma(wv, xv[j], acc[k][j]);
      }
    }
  };
  bool mixed = false;
  for (int j = 0; j < NQ; ++j) mixed = mixed || own[j].t0 != all.t0 || own[j].t1 != all.t1;
  if (!mixed) {
    // Every vector's taps are the block's (all blocks but those at the top and bottom rows):
    // the plain loop, without the other branch's empty ones.
    for (int64_t c = 0; c < cg; ++c) shared(pad + c * plane, w + c * rs);
  } else {
    for (int64_t c = 0; c < cg; ++c) {
      const T* src = pad + c * plane;
      const T* wc = w + c * rs;
      SIMDNN_UNROLL for (int j = 0; j < NQ; ++j) {
        alone(src, wc, j, own[j].t0, min64(own[j].t1, all.t0));
      }
      shared(src, wc);
      SIMDNN_UNROLL for (int j = 0; j < NQ; ++j) {
        alone(src, wc, j, max64(own[j].t0, all.t1), own[j].t1);
      }
    }
  }
  SIMDNN_UNROLL for (int k = 0; k < KB; ++k) {
    SIMDNN_UNROLL for (int j = 0; j < NQ; ++j) V::store(out + (k * NQ + j) * W, acc[k][j]);
  }
}

// Whether the flat form is taken: it uses kFlatMinGain percentage points more of the lanes than
// the row form, or any more where a row is one vector (the row form then also has only KB
// independent FMA chains). AMD EPYC Zen 5, 2 threads, float32 forward, row -> flat (lanes row ->
// flat): 4x4 p3 16->24 14x14 N32 450 -> 325 us (53 -> 85%); 3x3 p0 32->8 20x20 N16 104 -> 81
// us (56 -> 90%); 5x5 p3 24->8 7x7 N16 66 -> 50 us (56 -> 69%); 5x5 p2 32->16 24x24 N8 325 ->
// 294 us (75 -> 85%); 7x7 64->3 14x14 N16 221 -> 107 us (50 -> 57%, one vector a row). Lost
// with longer rows and a smaller gain: 3x3 p1 64->16 28x28 N8 301 -> 313 us (87 -> 93%), 3x3
// p1 3->16 56x56 N4 41 -> 54 us (87 -> 96%). And with few taps per output, whose results the
// copy through the buffer costs more against: LeNet's 1->20 5x5 28x28 N64 (25 taps; 75 -> 85%)
// 137-143 -> 151-161 us.
constexpr int64_t kFlatMinTaps = 64;

template <typename T>
inline bool flat_pays(const Conv2d& cv) {
  constexpr int W = VecOf<T>::type::W;
  if (cv.sh != 1 || cv.sw != 1 || cv.c / cv.groups * cv.r * cv.s < kFlatMinTaps) return false;
  const int64_t ld = cv.q + (cv.s - 1) * cv.dw;
  const int64_t flat = 100 * cv.q / ld, row = 100 * cv.q / (ceil_div(cv.q, W) * W);
  return flat >= row + kFlatMinGain || (cv.q <= W && flat > row);
}

template <typename T>
void direct_forward_flat(const Conv2d& cv, const T* x, const T* w, const T* b, T* y) {
  using V = typename VecOf<T>::type;
  constexpr int W = V::W;
  constexpr int64_t kMaxKb = kDirectForwardMaxFilters;
  const Im2col g{cv.c,  0,     1,     cv.h,  cv.w,  cv.r, cv.s, cv.sh,
                 cv.sw, cv.ph, cv.pw, cv.dh, cv.dw, cv.p, cv.q};
  const PadPlane pp = pad_plane_geometry(g, 0);  // pitch: the padded width
  const int64_t ld = pp.ld, rs = cv.r * cv.s, pq = cv.p * cv.q;
  const int64_t cg = cv.c / cv.groups, kg = cv.k / cv.groups, crs = cg * rs;
  const int64_t vecs = ceil_div(cv.p * ld, W);
  // Output rows with dead kernel rows (live_taps: rows p < ph at the top, p >= ph + H - (R - 1) *
  // dh at the bottom) skip them. Their vectors run in blocks of kMaxNq like the rest: the taps
  // live for every vector of a block together, each vector's other live taps on their own
  // (flat_block). The first version ran those vectors one at a time, each skipping its own dead
  // rows, which beat blocks that skip only the rows dead for all their vectors (AMD EPYC Zen 4
  // VM, 2 threads, float32: 4x4 p3 16->24 14x14 N32 668 -> 631 us, 5x5 p3 24->8 7x7 N16 104 ->
  // 89 us). But one at a time a vector runs KB FMAs per KB + 1 loads, and on an Intel Xeon VM
  // (Sapphire Rapids class) the 16->24 layer spent 30% of its samples in those vectors. One at a
  // time -> blocks there, 2 threads, medians of 5 blocks of 20 calls, two alternating runs:
  //  - AVX-512 float32: 16->24 445-579 -> 381-411 us, 24->8 73-79 -> 59-64 us, 4x4 p2 128->16
  //    7x7 N16 423-440 -> 349-365 us; 7x7 p0 64->3 14x14 N16 even;
  //  - AVX-512 float64: 16->24 631-673 -> 610-657 us, 24->8 129-140 -> 99-104 us;
  //  - AVX2 (one vector a block at KB = 8: unchanged) even or faster: 24->8 85-100 -> 83-85 us.
  // The larger flat_block changed what GCC inlines in this file: float64 AVX-512's
  // lanes_wide_plane now calls live_taps out of line, and its 5x5 p2 32->16 24x24 N8 forward went
  // 650-710 -> 731-782 us (its other layers measured even; float32 and AVX2 compile to the same
  // instructions as before). Forcing live_taps inline changed the float32 code instead.
  const bool finite = all_finite(w, cv.k * crs);
  // Past the last padded row, zeros for the last vector's overrun and the widest tap's columns.
  const int64_t plane = round_up(pp.hp * ld + W + (cv.s - 1) * cv.dw, 16);
  const int64_t blocks = cv.n >= cv.nthreads ? 1 : min64(vecs, ceil_div(cv.nthreads, cv.n));
  const int64_t tasks = cv.n * blocks;
  const int nt = static_cast<int>(min64(cv.nthreads, tasks));
  constexpr int kBudget = direct_forward_budget<V>();
  parallel_ranges(tasks, 1, 1, nt, [&](int64_t t0, int64_t t1) {
    // pack_aux: backward-data's flipped filters, which this may be handed, are in op_scratch.
    const int64_t out_elems = kMaxKb * 4 * W;
    char* base = static_cast<char*>(
        workspace(WorkspaceSlot::pack_aux,
                  static_cast<size_t>((cv.c * plane + out_elems) * static_cast<int64_t>(sizeof(T)) +
                                      rs * static_cast<int64_t>(sizeof(int64_t)))));
    T* pad = reinterpret_cast<T*>(base);
    T* out = pad + cv.c * plane;
    int64_t* off = reinterpret_cast<int64_t*>(out + out_elems);
    for (int64_t i = 0; i < rs; ++i) off[i] = (i / cv.s) * cv.dh * ld + (i % cv.s) * cv.dw;
    int64_t padded = -1;  // the image in `pad`
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / blocks, blk = t % blocks;
      if (n != padded) {
        for (int64_t c = 0; c < cv.c; ++c) {
          T* dst = pad + c * plane;
          fill_padded(x + (n * cv.c + c) * cv.h * cv.w, g, pp, dst);
          for (int64_t i = pp.hp * ld; i < plane; ++i) dst[i] = T(0);
        }
        padded = n;
      }
      const int64_t v0 = vecs * blk / blocks, v1 = vecs * (blk + 1) / blocks;
      for (int64_t grp = 0; grp < cv.groups; ++grp) {
        const T* gpad = pad + grp * cg * plane;
        for (int64_t k0 = 0; k0 < kg; k0 += kMaxKb) {
          const int64_t kk = grp * kg + k0, kb = min64(kg - k0, kMaxKb);
          const T* wk = w + kk * crs;
          const T* bk = b != nullptr ? b + kk : nullptr;
          T* yk = y + (n * cv.k + kk) * pq;
          with_width<static_cast<int>(kMaxKb)>(kb, [&](auto kbc) {
            constexpr int KB = decltype(kbc)::value;
            constexpr int kMaxNq = kBudget / KB < 4 ? kBudget / KB : 4;
            for (int64_t v = v0, nq = 0; v < v1; v += nq) {
              nq = min64(kMaxNq, v1 - v);
              // Each vector's live taps, and those live for all of the block's vectors.
              TapRange own[kMaxNq], all{0, rs};
              for (int64_t j = 0; j < nq; ++j) {
                const int64_t pa = (v + j) * W / ld;
                const int64_t pb = min64(cv.p - 1, ((v + j + 1) * W - 1) / ld);
                own[j] = live_taps(cv, finite, pa, pb);
                all = TapRange{max64(all.t0, own[j].t0), min64(all.t1, own[j].t1)};
              }
              if (all.t0 >= all.t1) all = TapRange{rs, rs};  // none live for all: each alone
              with_width<kMaxNq>(nq, [&](auto nqc) {
                constexpr int NQ = decltype(nqc)::value;
                flat_block<V, KB, NQ>(cg, rs, own, all, gpad + v * W, plane, off, wk, crs, bk, out);
              });
              // Flat outputs [j0, j1) into their rows' first Q columns.
              const int64_t j0 = v * W, j1 = min64(cv.p * ld, (v + nq) * W);
              for (int64_t p = j0 / ld; p * ld < j1; ++p) {
                const int64_t a = max64(j0, p * ld), e = min64(j1, p * ld + cv.q);
                if (a >= e) continue;
                for (int k = 0; k < KB; ++k) {
                  const T* src = out + k * nq * W + (a - j0);
                  T* dst = yk + k * pq + p * cv.q + (a - p * ld);
                  for (int64_t i = 0; i < e - a; i += W) {
                    const int m = static_cast<int>(min64(W, e - a - i));
                    V::storen(dst + i, V::loadn(src + i, m), m);
                  }
                }
              }
            }
          });
        }
      }
    }
  });
}

// 1x1 layers at stride 1 without padding: output pixel j of a plane is input pixel j, so each
// plane is one row of P*Q pixels read in place, with no padded copy. The copy was a write and a
// read of the whole input for a layer that does 2 * K/G FLOPs per input element (384->24 g8
// 56x56 N16: a 4.8 MB copy per image, past L2). Tasks are (image, run of pixels); whole vectors
// are read in place, the last P*Q mod W pixels of every plane from a zero-padded copy, since a
// full vector load there could run past the end of x.
constexpr int64_t kPointwiseTaskPixels = 512;

// y[k, 0:len) = bias[k] + sum over c of w[k, c] * x[c, 0:len) for kb <= kDirectForwardMaxFilters
// filters, len a multiple of W: channel by channel, two at a time, through y (which stays in L1:
// at most 8 x 512 pixels), so that each input plane is read as one sequential run.
template <class V>
void pointwise_accumulate(int64_t kb, int64_t cg, const typename V::T* x, int64_t plane,
                          const typename V::T* w, const typename V::T* bias, typename V::T* y,
                          int64_t ld_y, int64_t len) {
  using T = typename V::T;
  using R = typename V::V;
  constexpr int W = V::W;
  for (int64_t k = 0; k < kb; ++k) {
    const R b = V::set1(bias != nullptr ? bias[k] : T(0));
    for (int64_t j = 0; j < len; j += W) V::store(y + k * ld_y + j, b);
  }
  int64_t c = 0;
  for (; c + 2 <= cg; c += 2) {
    const T* x0 = x + c * plane;
    const T* x1 = x0 + plane;
    R w0[kDirectForwardMaxFilters], w1[kDirectForwardMaxFilters];
    for (int64_t k = 0; k < kb; ++k) {
      w0[k] = V::set1(w[k * cg + c]);
      w1[k] = V::set1(w[k * cg + c + 1]);
    }
    for (int64_t j = 0; j < len; j += W) {
      const R a = V::load(x0 + j), bv = V::load(x1 + j);
      for (int64_t k = 0; k < kb; ++k) {
        T* o = y + k * ld_y + j;
        V::store(o, V::fma(w1[k], bv, V::fma(w0[k], a, V::load(o))));
      }
    }
  }
  for (; c < cg; ++c) {
    const T* x0 = x + c * plane;
    R w0[kDirectForwardMaxFilters];
    for (int64_t k = 0; k < kb; ++k) w0[k] = V::set1(w[k * cg + c]);
    for (int64_t j = 0; j < len; j += W) {
      const R a = V::load(x0 + j);
      for (int64_t k = 0; k < kb; ++k) {
        T* o = y + k * ld_y + j;
        V::store(o, V::fma(w0[k], a, V::load(o)));
      }
    }
  }
}
// Inputs from this size on take pointwise_accumulate; smaller ones, read from cache, the register
// blocks (direct_forward_row), which keep y out of the loop. AMD EPYC Zen 4 VM, 2 threads,
// float32, medians of 7 alternating blocks over 3 rotated inputs, register blocks -> through y:
// grouped 1x1 384->24 g8 56x56 N16 (77 MB) 7161 -> 4663 us, N4 1409 -> 1106 us; 384->16 g8
// 112x112 N2 2325 -> 2152 us; 128->16 g4 56x56 N8 (12.8 MB) 948 -> 703 us; 256->32 g8 28x28 N16
// 937 -> 872 us; but at 6.4 MB 128->16 g4 56x56 N4 351-356 -> 269-274 us against 256->32 g8 28x28
// N8 150 -> 188 us and 64->8 g2 112x112 N2 277-280 -> 268-299 us, and at 3.2 MB 64->8 g4 56x56 N8
// 154 -> 160 us.
constexpr int64_t kPointwiseAccumulateBytes = int64_t(8) << 20;

template <typename T>
void direct_forward_pointwise(const Conv2d& cv, const T* x, const T* w, const T* b, T* y) {
  using V = typename VecOf<T>::type;
  constexpr int W = V::W;
  const int64_t pq = cv.p * cv.q, cg = cv.c / cv.groups, kg = cv.k / cv.groups;
  const int64_t whole = pq - pq % W, vecs = whole / W;
  const int64_t runs = max64(1, ceil_div(pq, kPointwiseTaskPixels)), tasks = cv.n * runs;
  const bool through_y =
      cv.n * cv.c * pq * static_cast<int64_t>(sizeof(T)) >= kPointwiseAccumulateBytes;
  const int nt = static_cast<int>(min64(cv.nthreads, tasks));
  const PadPlane pp{};  // one row (p = 0): its pitch is never used
  const int64_t off = 0;
  parallel_ranges(tasks, 1, 1, nt, [&](int64_t t0, int64_t t1) {
    T* tail = whole < pq ? static_cast<T*>(workspace(
                               WorkspaceSlot::pack_aux,
                               static_cast<size_t>(cv.c * W * static_cast<int64_t>(sizeof(T)))))
                         : nullptr;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / runs, run = t % runs;
      const int64_t qa = vecs * run / runs * W, qb = vecs * (run + 1) / runs * W;
      const bool last = run == runs - 1 && tail != nullptr;
      if (last) {
        for (int64_t c = 0; c < cv.c; ++c) {
          const T* src = x + (n * cv.c + c) * pq;
          for (int64_t j = 0; j < W; ++j) tail[c * W + j] = whole + j < pq ? src[whole + j] : T(0);
        }
      }
      // [qa, qb) in place, then the tail of the last run.
      for (int part = 0; part < (last ? 2 : 1); ++part) {
        Conv2d row = cv;
        row.p = 1;
        row.q = part == 0 ? qb - qa : pq - whole;
        if (row.q == 0) continue;
        const int64_t q0 = part == 0 ? qa : whole, plane = part == 0 ? pq : W;
        for (int64_t grp = 0; grp < cv.groups; ++grp) {
          const T* src = part == 0 ? x + (n * cv.c + grp * cg) * pq + qa : tail + grp * cg * W;
          for (int64_t k0 = 0; k0 < kg; k0 += kDirectForwardMaxFilters) {
            const int64_t kk = grp * kg + k0;
            if (part == 0 && through_y) {
              pointwise_accumulate<V>(min64(kg - k0, kDirectForwardMaxFilters), cg, src, pq,
                                      w + kk * cg, b != nullptr ? b + kk : nullptr,
                                      y + (n * cv.k + kk) * pq + q0, pq, qb - qa);
              continue;
            }
            direct_forward_row_kb<V>(min64(kg - k0, kDirectForwardMaxFilters), row, pp, src, plane,
                                     &off, w + kk * cg, cg, b != nullptr ? b + kk : nullptr,
                                     y + (n * cv.k + kk) * pq + q0, pq, 0, TapRange{0, 1});
          }
        }
      }
    }
  });
}

// y (N, K, P, Q) = conv(x, w) + b. Tasks are (image, block of output rows): each pads the
// image's C planes (once per image for consecutive blocks of one image), then computes its rows
// for every filter, KB at a time.
template <typename T>
void direct_forward(const Conv2d& cv, const T* x, const T* w, const T* b, T* y) {
  using V = typename VecOf<T>::type;
  if (pointwise_unpadded(cv) && cv.p * cv.q >= 4 * V::W) {
    direct_forward_pointwise(cv, x, w, b, y);
    return;
  }
  if (2 * cv.q < V::W || lanes_wide_pays<T>(cv)) {
    direct_forward_lanes(cv, x, w, b, y);
    return;
  }
  if (flat_pays<T>(cv)) {
    direct_forward_flat(cv, x, w, b, y);
    return;
  }
  const Im2col g{cv.c,  0,     1,     cv.h,  cv.w,  cv.r, cv.s, cv.sh,
                 cv.sw, cv.ph, cv.pw, cv.dh, cv.dw, cv.p, cv.q};
  const PadPlane pp = pad_plane_geometry(g, V::W);
  const int64_t plane = plane_scratch<T>(pp), rs = cv.r * cv.s, pq = cv.p * cv.q;
  const int64_t cg = cv.c / cv.groups, kg = cv.k / cv.groups, crs = cg * rs;
  const bool finite = all_finite(w, cv.k * crs);  // live_taps
  // Row blocks per image so that a batch smaller than the thread count still gives every thread
  // work; each block pads the whole image again, so no more of them than threads (4 per thread
  // made 128->8 5x5/s2 56x56 N1 pad its 1.6 MB input 8 times: 476 us, 0.50x PyTorch; 181 us,
  // 1.82x with one each).
  const int64_t blocks = cv.n >= cv.nthreads ? 1 : min64(cv.p, ceil_div(cv.nthreads, cv.n));
  const int64_t tasks = cv.n * blocks;
  const int nt = static_cast<int>(min64(cv.nthreads, tasks));
  parallel_ranges(tasks, 1, 1, nt, [&](int64_t t0, int64_t t1) {
    // pack_aux: backward-data's flipped filters, which this may be handed, are in op_scratch.
    char* base = static_cast<char*>(
        workspace(WorkspaceSlot::pack_aux,
                  static_cast<size_t>(cv.c * plane * static_cast<int64_t>(sizeof(T)) +
                                      rs * static_cast<int64_t>(sizeof(int64_t)))));
    T* pad = reinterpret_cast<T*>(base);
    int64_t* off = reinterpret_cast<int64_t*>(pad + cv.c * plane);
    for (int64_t i = 0; i < rs; ++i) off[i] = pp.tap(i / cv.s, i % cv.s, cv.dh, cv.dw);
    int64_t padded = -1;  // the image in `pad`
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / blocks, blk = t % blocks;
      if (n != padded) {
        for (int64_t c = 0; c < cv.c; ++c) {
          fill_padded(x + (n * cv.c + c) * cv.h * cv.w, g, pp, pad + c * plane);
        }
        padded = n;
      }
      const int64_t p0 = cv.p * blk / blocks, p1 = cv.p * (blk + 1) / blocks;
      for (int64_t grp = 0; grp < cv.groups; ++grp) {
        const T* gpad = pad + grp * cg * plane;
        for (int64_t k0 = 0; k0 < kg; k0 += kDirectForwardMaxFilters) {
          const int64_t kk = grp * kg + k0;
          const T* wk = w + kk * crs;
          const T* bk = b != nullptr ? b + kk : nullptr;
          T* yk = y + (n * cv.k + kk) * pq;
          for (int64_t p = p0; p < p1; ++p) {
            direct_forward_row_kb<V>(min64(kg - k0, kDirectForwardMaxFilters), cv, pp, gpad, plane,
                                     off, wk, crs, bk, yk, pq, p, live_taps(cv, finite, p, p));
          }
        }
      }
    }
  });
}

// ------------------------------------------------------------------------------------------------
// Backward-weights

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
// Or filters per group up to this many, whatever the reduction rows. Raised from 8 (sweep rows, AMD
// EPYC Zen 5, 2 threads, GEMM -> direct: 5x5/s2 p2 3->16 112x112 N8 433 -> 224 us, 0.48x ->
// 0.95x PyTorch; 4x4 p2 16->16 14x14 N8 137 -> 89 us). At 24, 4x4 p3 16->24 14x14 N32 lost (734
// -> 790 us).
constexpr int64_t kDirectWeightsMaxFilters = 16;
// Per-task vector sums (K * C/groups * R * S vectors) up to this, or 3/4 of the core's L2 where
// that is more. Each channel's slice of the sums is read and written once an image, against
// ceil(P * Q / W) FMAs a sum, so the sums need only stay in L2. Intel Xeon (Sapphire Rapids class,
// 2 MiB of L2), 2 threads, float32: 7x7 p0 64->3 14x14 N16 (602 KB of sums) GEMM -> direct 638-653
// -> 328-330 us, 0.69x -> 1.4x PyTorch, and no other sweep row moved beyond the noise with the
// limit at 1.5 MiB (that row now takes the channels-in-lanes form, weights_lanes.h: 116-128 us).
// On the AMD EPYC Zen 5 (1 MiB of L2) the limit is 768 KiB: not re-measured.
constexpr int64_t kDirectWeightsMaxSumBytes = int64_t(512) << 10;
// One image (fewer images than threads): tasks take ranges of input channels (conv.cpp), and each
// sum is added to once, so the sums need not stay in L2; up to 4 MiB of them (128->8 5x5/s2 p1
// 56x56 N1: 1.6 MB, GEMM -> direct 549-580 -> 232-290 us, 0.52x -> ~1.0x PyTorch; 3x3/s2 32->8
// 112x112 N1 128 -> 85 us; 5x5/s2 3->16 112x112 N1 107 -> 57 us; 3x3 16->16 g4 56x56 N1 173 ->
// 30 us; AMD EPYC Zen 5, 2 threads, float32). At least 512 output pixels: every weight costs a
// horizontal sum of its vector at the end, which outweighed the FMAs on 14x14 planes (256->16
// 3x3 N1 98 -> 225 us); 28x28 planes gained (64->16 3x3 82 -> 74 us).
constexpr int64_t kDirectWeightsMaxSumBytesOneImage = int64_t(4) << 20;
constexpr int64_t kDirectWeightsSplitMinPixels = 512;
// 1x1 layers at stride 1 unpadded (read in place, their channels as the taps) with at most this
// many filters a group. AMD EPYC Zen 5, 2 threads, float32, GEMM -> direct: 384->24 g8 56x56 N16
// 3.96-4.23 -> 1.86 ms (0.55x -> about 1.2x PyTorch); 64->8 56x56 N8 173-183 -> 95-104 us;
// 256->8 28x28 N8 166-175 -> 94-99 us; 64->4 14x14 N32 71-73 -> 30-36 us. At 16 filters (4
// blocks of 4, the input read 4 times) it was mixed: 128->16 28x28 N16 238 -> 176 us but
// 256->16 14x14 N8 58 -> 86 us and 256->64 g4 14x14 N16 236 -> 266 us.
constexpr int64_t kPointwiseWeightsMaxFilters = 8;

template <typename T>
bool direct_weights_eligible(const Conv2d& cv) {
  using V = typename VecOf<T>::type;
  const int64_t crs = cv.c / cv.groups * cv.r * cv.s;
  // Output rows of at least half a vector (fewer leave most lanes empty) and a batch that gives
  // every thread an image (tasks take whole images), or one image split by input channels (see
  // kDirectWeightsSplitMinPixels). Groups: each input channel meets only its group's filters
  // (sweep rows, AMD EPYC Zen 5, 2 threads, GEMM -> direct: 5x5/s2 16->16 g8 56x56 N8 1.13 ms ->
  // 233 us, 0.92x -> 4.5x PyTorch; 3x3/s2 4->32 g4 56x56 N8 266 -> 62 us; 4x4 32->128 g32 28x28
  // N2 447 -> 80 us). At least 4 taps: each dy vector then feeds several FMAs (3x3/s2 p2 3->16
  // 56x56 N32 345 -> 132 us; 2x2 8->128 28x28 N16 613 -> 432 us; LeNet's 5x5 1->20 371 -> 179
  // us). A 1x1 layer through the padded planes, one FMA per dy load and dy read again for every
  // input channel, ran slower than the GEMM (1x1 24->256 56x56 N8 3.05 ms GEMM, 5.25 ms direct);
  // unpadded at stride 1 with few filters it takes the in-place form instead.
  const int64_t sum_bytes = (cv.k * crs + cv.k) * V::W * static_cast<int64_t>(sizeof(T));
  const bool split_channels =
      cv.n < cv.nthreads && cv.n * cv.p * cv.q >= kDirectWeightsSplitMinPixels;
  const bool sums_fit =
      sum_bytes <= max64(kDirectWeightsMaxSumBytes, cpu_info().l2 * 3 / 4) ||
      (split_channels && cv.n == 1 && sum_bytes <= kDirectWeightsMaxSumBytesOneImage);
  if (pointwise_unpadded(cv)) {
    return cv.k / cv.groups <= kPointwiseWeightsMaxFilters && cv.n >= cv.nthreads && sums_fit;
  }
  return (crs <= kDirectWeightsMaxRows || cv.k / cv.groups <= kDirectWeightsMaxFilters) &&
         cv.r * cv.s >= 4 && 2 * cv.q >= V::W &&
         (cv.n >= cv.nthreads || (split_channels && cv.c >= cv.nthreads)) && sums_fit;
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
  SIMDNN_UNROLL for (int k = 0; k < KB; ++k) {
    SIMDNN_UNROLL for (int t = 0; t < NT; ++t) acc[k][t] = V::zero();
  }
  for (int64_t p = 0; p < cv.p; ++p) {
    const T* grow = dyk + p * cv.q;
    const T* brow = buf + p * cv.sh * pp.ld;
    int64_t q = 0;
    for (; q + W <= cv.q; q += W) {
      R g[KB];
      SIMDNN_UNROLL for (int k = 0; k < KB; ++k) g[k] = V::load(grow + k * pq + q);
      SIMDNN_UNROLL for (int t = 0; t < NT; ++t) {
        const R xv = V::load(brow + off[t] + q);
        SIMDNN_UNROLL for (int k = 0; k < KB; ++k) acc[k][t] = V::fma(g[k], xv, acc[k][t]);
      }
    }
    if (q < cv.q) {
      // Masked loads of the plane too: a NaN past the row would otherwise reach the sum.
      const int live = static_cast<int>(cv.q - q);
      R g[KB];
      SIMDNN_UNROLL for (int k = 0; k < KB; ++k) g[k] = V::loadn(grow + k * pq + q, live);
      SIMDNN_UNROLL for (int t = 0; t < NT; ++t) {
        const R xv = V::loadn(brow + off[t] + q, live);
        SIMDNN_UNROLL for (int k = 0; k < KB; ++k) acc[k][t] = V::fma(g[k], xv, acc[k][t]);
      }
    }
  }
  SIMDNN_UNROLL for (int k = 0; k < KB; ++k) {
    SIMDNN_UNROLL for (int t = 0; t < NT; ++t) {
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

// Images [n0, n1) and input channels [c0, c1) (all of them for the in-place 1x1 form): the rows of
// dw (K x C/G*R*S) that those channels reach, and db (K, or null) over the images, written (not
// accumulated).
template <typename T>
void direct_weights_task(const Conv2d& cv, const T* x, const T* dy, int64_t n0, int64_t n1,
                         int64_t c0, int64_t c1, T* dw, T* db) {
  using V = typename VecOf<T>::type;
  using R = typename V::V;
  constexpr int W = V::W;
  constexpr int KB = direct_weights_kb<V>();
  const Im2col g{cv.c,  0,     cv.c,  cv.h,  cv.w,  cv.r, cv.s, cv.sh,
                 cv.sw, cv.ph, cv.pw, cv.dh, cv.dw, cv.p, cv.q};
  const int64_t rs = cv.r * cv.s, cg = cv.c / cv.groups, kg = cv.k / cv.groups;
  const int64_t crs = cg * rs, pq = cv.p * cv.q;
  // 1x1 at stride 1 without padding: each plane is one row of P*Q pixels read in place, and
  // the "taps" of a block are the group's channels (their offsets are multiples of P*Q). The
  // partial last vector is read with masked loads.
  const bool in_place = pointwise_unpadded(cv);
  Conv2d row = cv;
  if (in_place) {
    row.p = 1;
    row.q = pq;
  }
  const PadPlane pp = in_place ? PadPlane{} : pad_plane_geometry(g, W);
  const int64_t taps = in_place ? cg : rs;
  // Scratch: the padded plane, the per-task vector sums (K x CRS, then K for db), tap offsets.
  // nsum rounded to 16 elements: the int64 offsets after the sums stay 8-byte aligned (with the
  // scalar ISA, W = 1, the sums alone may be an odd number of floats).
  const int64_t plane = in_place ? 0 : plane_scratch<T>(pp);
  const int64_t nsum = round_up((cv.k * crs + cv.k) * W, 16);
  char* base = static_cast<char*>(
      workspace(WorkspaceSlot::pack_aux,
                static_cast<size_t>((plane + nsum) * static_cast<int64_t>(sizeof(T)) +
                                    taps * static_cast<int64_t>(sizeof(int64_t)))));
  T* buf = reinterpret_cast<T*>(base);
  T* sums = buf + plane;
  int64_t* off = reinterpret_cast<int64_t*>(sums + nsum);
  for (int64_t i = 0; i < taps; ++i) {
    off[i] = in_place ? i * pq : pp.tap(i / cv.s, i % cv.s, cv.dh, cv.dw);
  }
  if (in_place) {
    c0 = 0;
    c1 = cv.c;
  }
  // Each channel's slices of the sums: rs vectors per filter of its group.
  auto slices = [&](auto&& body) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t grp = c / cg, cl = c - grp * cg;
      for (int64_t k = grp * kg; k < (grp + 1) * kg; ++k) body(k * crs + cl * rs);
    }
  };
  slices([&](int64_t i) {
    for (int64_t j = 0; j < rs * W; ++j) sums[i * W + j] = T(0);
  });
  T* dbsum = sums + cv.k * crs * W;
  for (int64_t i = 0; i < cv.k * W; ++i) dbsum[i] = T(0);
  // Filters [k0, ke) in blocks of KB against the taps of `src` (channel cl of the group on).
  auto filters = [&](const T* src, const T* dyn, int64_t k0, int64_t ke, int64_t cl) {
    for (; k0 < ke; k0 += KB) {
      T* s = sums + (k0 * crs + cl * rs) * W;
      const T* dyk = dyn + k0 * pq;
      with_width<KB>(min64(KB, ke - k0), [&](auto kbc) {
        direct_weights_taps<V, decltype(kbc)::value>(row, pp, src, dyk, off, taps, crs, s);
      });
    }
  };
  for (int64_t n = n0; n < n1; ++n) {
    const T* dyn = dy + n * cv.k * pq;
    if (in_place) {
      for (int64_t grp = 0; grp < cv.groups; ++grp) {
        filters(x + (n * cv.c + grp * cg) * pq, dyn, grp * kg, (grp + 1) * kg, 0);
      }
    } else {
      for (int64_t c = c0; c < c1; ++c) {
        fill_padded(x + (n * cv.c + c) * cv.h * cv.w, g, pp, buf);
        // Channel c's group: filters [kb, kb + kg), and c's place among the group's channels.
        const int64_t grp = c / cg, cl = c - grp * cg;
        filters(buf, dyn, grp * kg, (grp + 1) * kg, cl);
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
  slices([&](int64_t i) {
    for (int64_t t = 0; t < rs; ++t) dw[i + t] = lane_sum<V>(V::load(sums + (i + t) * W));
  });
  if (db != nullptr) {
    for (int64_t k = 0; k < cv.k; ++k) db[k] = lane_sum<V>(V::load(dbsum + k * W));
  }
}

}  // namespace
}  // namespace simdnn::SIMDNN_ISA_NS
