// The portable GEMM framework (BLIS-style loop nest): blocking, packing and threading around one
// micro-kernel. No intrinsics here: the file is compiled once per ISA (gemm.cpp, with that ISA's
// flags) and templated on a micro-kernel descriptor that lives in the ISA's namespace, so every
// instantiation is a distinct symbol. Helpers are `static` so that nothing compiled with wide-ISA
// flags can be merged by the linker into code that runs on a narrower CPU.
//
// Notation: C[M, N] = alpha * A[M, K] . B[K, N] + beta * C. The micro-tile is MR x NR: MR rows of
// A are broadcast, NR columns of B are vector loads.
//
// Loop nest, outermost first (per thread, after the thread grid has split M and N):
//   ic  over M in steps of MC   A block (all of K), packed once and shared by the threads that
//                                compute the same rows
//   jc  over N in steps of NC   one packed B block per thread, kept in that core's L2
//   pc  over K in steps of KC   B block = KC x NC, packed as NR-wide micro-panels (a row-major
//                                B is read in place instead: in_place_pays)
//   ir  over M in steps of MR   A micro-panel (MR x KC) stays in L1 while ...
//   jr  over NC in steps of NR  ... the kernel sweeps the B micro-panels streaming from L2
// Edge tiles are handled inside the micro-kernel (row count by template, columns by masks).
// Products of at most kGemvMaxM rows with a B of unit row or column stride skip all of this: they
// stream B in place (gemv.h).
#pragma once

#include <climits>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "common/compiler.h"
#include "common/cpu.h"
#include "common/int_math.h"
#include "common/parallel.h"
#include "gemm/gemm.h"
#include "gemm/gemv.h"
#include "simd/transpose.h"

namespace simdnn::gemm_detail {

// Problems with at most this many multiply-adds (M*N*K) run single-threaded and unpacked: below
// 64^3 the fork/join of a parallel region (~2-3 us) and the packing copies cost more than the
// second core or the contiguous panels give back (OpenBLAS uses the same 262144 bound for going
// single-threaded, interface/gemm.c).
constexpr int64_t kSmallMnk = 64 * 64 * 64;
// Below this many multiply-adds per thread a further thread does not pay for its barrier and its
// share of packing; 2^17 multiply-adds take about 1.5 us on one AVX-512 core.
constexpr int64_t kMinMnkPerThread = grain::kGemmMacs;

// Blocking for a micro-kernel with MR x NR tiles of elements of `bytes` bytes, from the caches:
//  - KC: the MR x KC A micro-panel is the L1-resident operand; it gets about half of L1 so that the
//    streaming B micro-panels and the C tile do not evict it (BLIS's analytical model, Low et al.
//    2016). 48 KiB L1, 12 x fp32 rows: KC = 512; 32 KiB: KC = 336.
//  - NC: the KC x NC B block is the L2-resident operand, given half of L2 (the rest holds the A
//    micro-panels and C tiles passing through). 2 MiB L2, KC = 512, fp32: NC = 512.
//  - MC: rows of A packed at once (all of K): a 4 MiB budget, which stays in L3 on any recent x86
//    core.
static inline GemmBlocking make_blocking(int64_t mr, int64_t nr, int64_t bytes, int64_t k,
                                         int64_t sum_depth = 0) {
  const CpuInfo& cpu = cpu_info();
  GemmBlocking bl{};
  bl.mr = mr;
  bl.nr = nr;
  int64_t kc = round_down(cpu.l1d / 2 / (mr * bytes), 16);
  kc = max64(64, min64(kc, 1024));
  if (sum_depth > 0) kc = min64(kc, sum_depth);  // GemmArgs::sum_depth
  // Split K evenly so that the last panel is not a sliver (K = 600 with KC = 512 becomes 2 x 300).
  if (k > 0) kc = round_up(ceil_div(k, ceil_div(k, kc)), 8);
  bl.kc = kc;
  int64_t nc = round_down(cpu.l2 / 2 / (kc * bytes), nr);
  bl.nc = max64(nr, min64(nc, 4096));
  bl.mc = mr;  // set per problem by gemm_blocked
  return bl;
}

// Thread grid: tm x tn threads split M and N. Thread (ti, tj) computes rows ti and columns tj of
// C; it packs its own B block, and the A panels of its rows are packed by the tn threads of its
// row group together (so with tn == 1 a thread packs exactly what it reads, and no barrier is
// needed). The grid minimises an estimate of one thread's time in cycles:
//   FMAs / (lanes * 2 pipes)                             the micro-kernel work
//   + 0.25 per packed element of B and of its A share    (memcpy-speed packing; 0.75 for a
//                                                          B that must be transposed)
//   + 6 per element of A packed by another core          (a cache line crosses cores twice per
//                                                          call: read after the other core packs
//                                                          it, invalidated when it packs again)
//   + 0.25 per element of B read by more than one core   (B pulled into several L2s)
// The cross-core term dominates small problems: on 2 threads, 64 x 256 . 256 x 64 took 18 us split
// along N (4-7 us of it packing A over lines the other core held) and 9.7 us split along M;
// 784 x 64 . 64 x 256 took 108 and 76 us; 512^3 and 64 x 784 . 784 x 256 were even.
struct Grid {
  int tm = 1, tn = 1;
  bool private_a = false;  // tn > 1: each thread packs its row group's A panels for itself
};

// With tn > 1, a row group's A panels up to this size are packed by each of its threads for
// itself instead of shared: the copy is repeated, but no cache line crosses cores and no barrier
// separates packing from compute, so the cost model now splits N where it split M (each thread
// packing all of B). On 2 threads (AMD EPYC Zen 5, float32, best of 7 runs of 200 calls, three
// alternating runs each): 64 x 784 . 784 x 256 67.6-68.5 us against 70.4-72.1 us, 64 x 256 .
// 256 x 256 21.5-21.8 us against 23.9-24.5 us; the MLP's other products and 128 x 4096 . 4096 x
// 1000 (shared A, too large) unchanged.
constexpr int64_t kPrivateABytes = int64_t(512) << 10;

static inline Grid choose_grid(int64_t m, int64_t n, int64_t k, int64_t mr, int64_t nr,
                               int64_t lanes, int64_t bytes, bool b_transposed, int nthreads) {
  Grid best;
  const int64_t mnk = m * n * k;
  int64_t t = nthreads;
  // Not more threads than the work can feed.
  t = min64(t, max64(1, mnk / kMinMnkPerThread));
  t = min64(t, ceil_div(m, mr) * ceil_div(n, nr));
  if (t <= 1) return best;
  double best_cost = -1;
  for (int64_t tn = 1; tn <= t; ++tn) {
    if (t % tn != 0) continue;
    const int64_t tm = t / tn;
    const double mp = static_cast<double>(ceil_div(ceil_div(m, mr), tm) * mr);  // rows per thread
    const double np = static_cast<double>(ceil_div(ceil_div(n, nr), tn) * nr);  // columns
    const double kk = static_cast<double>(k);
    const double fma = mp * np * kk / (2.0 * static_cast<double>(lanes));
    const bool private_a =
        tn > 1 && mp * kk * static_cast<double>(bytes) <= static_cast<double>(kPrivateABytes);
    // (A B read in place keeps its 0.25: zeroing it, 64 x 784 . 784 x 256 and 128 x 4096 . 4096
    // x 1000 measured the same or 1-10% slower.)
    const double pack = (b_transposed ? 0.75 : 0.25) * np * kk +
                        0.25 * mp * kk / (private_a ? 1.0 : static_cast<double>(tn));
    const double remote_a =
        private_a ? 0.0 : 6.0 * mp * kk * static_cast<double>(tn - 1) / static_cast<double>(tn);
    const double shared_b = tm > 1 ? 0.25 * np * kk : 0.0;
    const double cost = fma + pack + remote_a + shared_b;
    if (best_cost < 0 || cost < best_cost) {
      best_cost = cost;
      best.tm = static_cast<int>(tm);
      best.tn = static_cast<int>(tn);
      best.private_a = private_a;
    }
  }
  return best;
}

// Row-major operands are read by the micro-kernel where they lie instead of being packed, unless
// their row stride is a multiple of 4 KiB. The copy is a read and a write of every element per
// call, which the few panels of a training product cannot amortise, and an unpacked operand needs
// no cache room for its copy. GFLOP/s, float32, AMD EPYC Zen 5 project machine, two alternating
// runs each:
//  - B (unit column stride; each k step one NR-wide row segment at stride ldb), packed -> in
//    place, 2 threads: 64 x 784 . 784 x 256 363-370 -> 438-442, 128 x 4096 . 4096 x 1000
//    393-398 -> 437-439, 64 x 256 . 256 x 256 384-388 -> 440-447, 100 x 300 . 300 x 500 328-438
//    -> 431-475, 256^3 438-443 -> 457-481, 512^3 and 1000^3 even.
//  - A (row layout, MR row pointers), then also in place, 2 threads: 256^3 452-460 -> 468-488,
//    64 x 784 . 784 x 256 410-429 -> 425-456, 500 x 64 . 64 x 50 307-312 -> 352, 512^3 468-483 ->
//    493-499, 2000 x 500 . 500 x 700 468 -> 486, the rest even; 1 thread and AVX2 even or up to
//    10% faster.
// A stride of 4 KiB or a multiple of it puts every k step's row in the same L1 set (and the same
// 1/64 of L2). B in place then lost: 1 thread 1024^3 240 -> 190-220, 1024 x 2048 . 2048 x 2048
// 238 -> 135-142; AVX2 1 thread 64 x 1024 . 1024 x 1024 226 -> 87 (and A rows in place ran 1024^2
// at half speed, the reason A was packed at all). A stride of 2 KiB (512^3) measured even or
// better on both ISAs, so only multiples of 4 KiB are packed.
static inline bool in_place_pays(int64_t ld, int64_t bytes) { return (ld * bytes) % 4096 != 0; }

// A transposed A (the column layout: each k step's MR values contiguous, k steps a row of the
// operand apart) is read in place only where C has at most this many column panels: packing it
// costs a copy per element, which many panels amortise, while in place each k step reads 12 of a
// line's 16 floats at the operand's row stride. Float32, 1 thread, Intel Xeon (Sapphire Rapids
// class), packed -> in place, two runs each: 500 x 50 . 50 x 64 (LeNet's backward-data col per
// image: 2 panels) 17.9-19.9 -> 17.0-19.1 us, 2000 x 64 . 64 x 64 100-103 -> 91-93 us; but with 4
// panels 500 x 50 . 50 x 128 34 -> 38 us, 8 panels 500 x 50 . 50 x 256 67-68 -> 69-70 us, and on
// 2 threads 784 x 64 . 64 x 256 (the MLP's dW) 75.5-79.7 -> 78.7-81.9 us.
constexpr int64_t kColumnAInPlaceMaxPanels = 2;

// Reduction rows that a B read in place must have when packed rows follow them (see gemm_engine).
constexpr int64_t kInPlaceMinRowsBeforeTail = 64;

// Rows ahead whose segments the row-major pack prefetches. Each row's segment (NC columns, 1.5
// KiB for NC = 384 float32) lies in another page, where the hardware prefetchers start cold: the
// pack of 128 x 4096 . 4096 x 1000 (B from L3) took 15% of the product's time, its samples on the
// loads. AMD EPYC Zen 4 VM, float32, GFLOP/s without -> with 4 rows ahead, medians of 7
// alternating blocks in one process, 1 | 2 threads: 128 x 4096 . 4096 x 1000 84 -> 86 | 166 ->
// 171, 64 x 4096 . 4096 x 1000 73 -> 77 | 154 -> 162, 128 x 1000 . 1000 x 1000 87 -> 90 | 188 ->
// 194, 2048^3 96 -> 97 | 198 -> 200, 256 x 2304 . 2304 x 3136 even; 2 and 8 rows ahead measured
// within the noise of 4 (separate runs).
constexpr int64_t kPackPrefetchRows = 4;

// Packs B[pc : pc+kc, jc : jc+nc] into NR-wide micro-panels: panel q holds columns
// jc + q*NR ... as kc rows of NR contiguous elements. Columns past nc in the last panel are left
// as they are or zero: the micro-kernel masks them.
//  - Row-major B (unit column stride): a memcpy per row of each panel.
//  - Transposed B (unit row stride: each column of B is contiguous in k, as W^T in dX = dY.W^T):
//    W x W blocks are loaded along k, transposed in registers (V::transpose) and stored as W rows.
//    Element by element, this pack took about as long as the micro-kernels that used it for
//    64 x 256 . 256 x 784.
//  - Anything else: element by element.
template <class V, int NR>
static void pack_b(const typename V::T* b, int64_t rs_b, int64_t cs_b, int64_t kc, int64_t nc,
                   typename V::T* dst) {
  using T = typename V::T;
  using R = typename V::V;
  constexpr int W = V::W;
  if (cs_b == 1) {
    // Row by row, so that each row of the block is read sequentially (B often comes from DRAM:
    // 128 x 4096 . 4096 x 1000 streams 16 MB of B once).
    const int64_t full = nc / NR * NR;
    const int64_t row_bytes = nc * static_cast<int64_t>(sizeof(T));
    for (int64_t p = 0; p < kc; ++p) {
      const T* s = b + p * rs_b;
      if (p + kPackPrefetchRows < kc) {
        const char* ahead = reinterpret_cast<const char*>(s + kPackPrefetchRows * rs_b);
        for (int64_t off = 0; off < row_bytes; off += 64) SIMDNN_PREFETCH(ahead + off);
      }
      T* d = dst + p * NR;
      for (int64_t j0 = 0; j0 < full; j0 += NR) std::memcpy(d + j0 * kc, s + j0, NR * sizeof(T));
      if (full < nc) std::memcpy(d + full * kc, s + full, (nc - full) * sizeof(T));
    }
    return;
  }
  for (int64_t j0 = 0; j0 < nc; j0 += NR) {
    const int64_t nn = min64(NR, nc - j0);
    T* d = dst + j0 * kc;
    const T* s = b + j0 * cs_b;
    if (rs_b == 1) {
      for (int64_t p0 = 0; p0 < kc; p0 += W) {
        const int pw = static_cast<int>(min64(W, kc - p0));
        for (int64_t jw = 0; jw < nn; jw += W) {
          R r[W];
          for (int i = 0; i < W; ++i) {
            const T* col = s + (jw + i) * cs_b + p0;
            r[i] = jw + i >= nn ? V::zero() : (pw == W ? V::load(col) : V::loadn(col, pw));
          }
          V::transpose(r);
          for (int q = 0; q < pw; ++q) V::store(d + (p0 + q) * NR + jw, r[q]);
        }
      }
    } else {
      for (int64_t p = 0; p < kc; ++p) {
        for (int64_t j = 0; j < nn; ++j) d[p * NR + j] = s[p * rs_b + j * cs_b];
      }
    }
  }
}

// A is packed in the blocked path, one MR-row micro-panel at a time, covering all of K, unless it
// is read in place (a row-major A whose row stride is not a multiple of 4 KiB, in_place_pays):
//  - "row" layout when A has a unit column stride (row-major A, e.g. X in X.W): each of the MR rows
//    is copied as it is (a memcpy) to a row stride of K + kAPad elements: read in place with a
//    stride of 4 KiB the MR rows alias in the same L1 sets and 1024^2 SGEMM ran at half speed. The
//    pad of 16 elements (64 bytes) shifts each row by one cache line.
//  - "column" layout otherwise: K steps of MR contiguous values (a memcpy per step for a
//    transposed A, whose MR values per step are already contiguous; a strided gather for
//    anything else).
// Rows past mm in the last panel are not written: the micro-kernel never reads them.
constexpr int64_t kAPad = 16;
// Packed A held at once (all of K) is gemm_a_pack_bytes(): 32 MiB by default, so that A of up to
// 2048 x 4096 fp32 is packed once and B once. The packed A is streamed (each MR-row panel once per
// B block), far below any bandwidth.

template <typename T, int MR>
static void pack_a_panel(const T* a, int64_t rs_a, int64_t cs_a, int64_t mm, int64_t k,
                         int64_t ld_row, T* dst) {
  if (cs_a == 1) {
    for (int64_t i = 0; i < mm; ++i) std::memcpy(dst + i * ld_row, a + i * rs_a, k * sizeof(T));
  } else if (rs_a == 1) {
    // A full panel copies MR elements per step with a size known at compile time, which the
    // compiler inlines as a few vector moves: a memcpy call per 48-byte step cost as much as the
    // micro-kernel for small K (LeNet's backward-data GEMM, 500 x 64 x 50 per image, and the MLP's
    // dW = X^T . dY, 784 x 256 x 64).
    if (mm == MR) {
      for (int64_t p = 0; p < k; ++p) std::memcpy(dst + p * MR, a + p * cs_a, MR * sizeof(T));
    } else {
      for (int64_t p = 0; p < k; ++p) std::memcpy(dst + p * MR, a + p * cs_a, mm * sizeof(T));
    }
  } else {
    for (int64_t p = 0; p < k; ++p) {
      for (int64_t i = 0; i < mm; ++i) dst[p * MR + i] = a[i * rs_a + p * cs_a];
    }
  }
}

// UK: struct { using T; using V (vector traits); static constexpr int MR, NR;
//              static void run(SIMDNN_GEMM_UKERNEL_PARAMS(T)); }
template <class UK>
static void gemm_small(const GemmArgs<typename UK::T>& g) {
  using T = typename UK::T;
  constexpr int MR = UK::MR, NR = UK::NR;
  const T* a = g.a;
  int64_t rs_a = g.rs_a, cs_a = g.cs_a;
  const T* b = g.b;
  int64_t rs_b = g.rs_b;
  // Unpacked operands as they are when the micro-kernel can address them; otherwise one small
  // contiguous copy (at most kSmallMnk elements in total, by the caller's bound).
  const bool copy_a = !(cs_a == 1 || rs_a == 1);
  const bool copy_b = g.cs_b != 1;
  T* scratch = nullptr;
  if (copy_a || copy_b) {
    const int64_t na = copy_a ? g.m * g.k : 0, nb = copy_b ? g.k * g.n : 0;
    scratch = static_cast<T*>(workspace(WorkspaceSlot::gemm_pack, (na + nb) * sizeof(T)));
    if (copy_a) {
      for (int64_t i = 0; i < g.m; ++i) {
        for (int64_t p = 0; p < g.k; ++p) scratch[i * g.k + p] = g.a[i * g.rs_a + p * g.cs_a];
      }
      a = scratch;
      rs_a = g.k;
      cs_a = 1;
    }
    if (copy_b) {
      T* bb = scratch + na;
      for (int64_t p = 0; p < g.k; ++p) {
        for (int64_t j = 0; j < g.n; ++j) bb[p * g.n + j] = g.b[p * g.rs_b + j * g.cs_b];
      }
      b = bb;
      rs_b = g.n;
    }
  }
  // In runs of at most sum_depth terms where that is set (each run's sum added to C).
  const int64_t kb = g.sum_depth > 0 ? g.sum_depth : g.k;
  for (int64_t p = 0; p < g.k; p += kb) {
    const int64_t kk = min64(kb, g.k - p);
    const T beta = p == 0 ? g.beta : T(1);
    for (int64_t i = 0; i < g.m; i += MR) {
      for (int64_t j = 0; j < g.n; j += NR) {
        UK::run(kk, a + i * rs_a + p * cs_a, rs_a, cs_a, b + j + p * rs_b, rs_b,
                g.c + i * g.rs_c + j, g.rs_c, min64(MR, g.m - i), min64(NR, g.n - j), g.alpha,
                beta);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// The blocked engine. It is written against three small policies so that the convolutions can
// reuse it with their own packing (im2col fused into the B pack) and output layout (NCHW):
//
//   A  rows of A:   int64_t rows() const;  bool row_layout() const;
//                   void pack(T* dst, int64_t r, int64_t mm, int64_t ld_row) const;
//                     packs rows [r, r + mm) over all of K: row layout at dst + i * ld_row,
//                     column layout at dst + p * MR + i (see pack_a_panel).
//   B  columns:     void pack(T* dst, int64_t pc, int64_t kc, int64_t v0, int64_t v1) const;
//                     packs NR-wide column panels v0..v1-1 for depth rows [pc, pc + kc) at
//                     dst + (v - v0) * kc * NR + p * NR + j.
//   C  output:      int64_t panels() const;  int width(int64_t v) const;  int64_t rs() const;
//                   T* at(int64_t i, int64_t v) const;   row i, first column of panel v.
//
// Column panels replace raw columns so that a batched convolution can keep each image's pixels
// in panels of their own (an NR-wide tile never straddles two images in NCHW).

template <typename T, int MR>
struct MatrixA {
  const T* a;
  int64_t m, k, rs, cs;
  int64_t rows() const { return m; }
  bool row_layout() const { return cs == 1; }
  void pack(T* dst, int64_t r, int64_t mm, int64_t ld_row) const {
    pack_a_panel<T, MR>(a + r * rs, rs, cs, mm, k, ld_row, dst);
  }
  // A row-major A can be read where it lies (row r at a + r * rs), and so can a transposed one in
  // the column layout (k step p at a + p * cs, its MR values contiguous): *ld is the stride
  // between rows or between k steps.
  const T* in_place(int64_t* ld) const {
    *ld = cs == 1 ? rs : cs;
    return cs == 1 || rs == 1 ? a : nullptr;
  }
};

template <class V, int NR>
struct MatrixB {
  using T = typename V::T;
  const T* b;
  int64_t n, rs, cs, k;
  void pack(T* dst, int64_t pc, int64_t kc, int64_t v0, int64_t v1) const {
    const int64_t j0 = v0 * NR, j1 = min64(n, v1 * NR);
    pack_b<V, NR>(b + pc * rs + j0 * cs, rs, cs, kc, j1 - j0, dst);
  }
  // A row-major B can be read where it lies (all of its rows): row p of panel v at
  // b + p * rs + v * NR. Not where its rows are more than CpuInfo::in_place_stride_bytes apart
  // (512 on Intel). First, at 2 KiB (the reach of Intel's L1 stride prefetcher, past which each k
  // step of the micro-kernel waits for B from L2), GFLOP/s, float32, Intel Xeon (Sapphire Rapids
  // class), in place -> packed, two alternating runs each, 1 thread | 2 threads:
  //  - rows 4000 bytes apart: 128 x 4096 . 4096 x 1000 109-125 -> 140-152 | 228-250 -> 269-304;
  //    64 x 4096 . 4096 x 1000 100-102 -> 127-130 | 192-200 -> 244-246; 64 x 1000 . 1000 x 1000
  //    116 -> 133-138 | 238-243 -> 231-236; 256 x 1000 . 1000 x 1000 142-144 -> 161-169 | 246-263
  //    -> 291-295;
  //  - 2800 bytes: 300 x 500 . 500 x 700 148-159 -> 165-179 | 279-307 -> 300-331;
  //  - 2048 bytes, in place kept: 64 x 512 . 512 x 512 177-181 -> 140-147 | 325-327 -> 265-270;
  //    256 x 512 . 512 x 512 181-189 -> 166-171 | 327-340 -> 287-290 (but 512^3 139-158 -> 170-184
  //    | 258-304 -> 301-338: not explained by the stride);
  //  - 1024 bytes, kept: 64 x 784 . 784 x 256 161-176 -> 147-162 | 262-320 -> 250-273.
  // Those products reused one B, hot in L2. Then, on another Intel Xeon VM (AVX-512, family 6
  // model 167 as the VM reports it), with the operands rotated among copies of at least 3 MiB as
  // the benchmark does (B from L3, as in a training step, where the optimizer has just rewritten
  // the weights), medians of 7 blocks, 2-4 alternating runs each, 1 thread | 2 threads:
  //  - 2048 bytes: 64 x 512 . 512 x 512 103-115 -> 118-133 | 224-231 -> 240-247; 256 x 512 . 512
  //    x 512 132-138 -> 148-161 | 245-259 -> 273-297; 512^3 143-147 -> 157-177 | 264-271 ->
  //    298-307; 2000 bytes: 64 x 800 . 800 x 500 106-107 -> 131 | 208-215 -> 225-233;
  //  - 1024 bytes: 64 x 784 . 784 x 256 118-129 -> 127-143 | 209-222 -> 231-241; 64 x 1024 .
  //    1024 x 256 120-125 -> 126-131 | 198-207 -> 212-216; 64 x 256 . 256 x 256 122-136 ->
  //    122-143 | 215-220 -> 223-236;
  //  - 512 bytes and less, kept in place (even or split): 64 x 784 . 784 x 128 127-129 -> 135-140
  //    | 203-221 -> 198-204; 64 x 784 . 784 x 64 127-129 -> 129-132 | 201 -> 187-208; 128 x 256 .
  //    256 x 128 148-149 -> 156-158 | 227-235 -> 216-241; 64 x 256 . 256 x 10 even;
  //  - AVX2 (SIMDNN_ISA=avx2), 2 threads: 64 x 512 . 512 x 512 149-152 -> 163-167, 512^3 164-174
  //    -> 190-204, 64 x 784 . 784 x 256 155-160 -> 161-175, 64 x 256 . 256 x 256 even.
  // With one B reused, in place still won there for the 64-row products (64 x 784 . 784 x 256
  // 160-164 -> 133-142, 64 x 256 . 256 x 256 155-173 -> 143-144, 1 thread), as on the first VM.
  // What the copy saves is TLB misses: arrays this small lie on 4 KiB pages (NumPy asks for huge
  // pages only for large allocations), and a K block of B read in place spans KC x stride bytes
  // (392 x 1 KiB, 98 pages, for the MLP's 784 x 256 weights), more than an L1 DTLB holds. With
  // every operand on 2 MiB pages (carved from one madvised buffer) in place won again (64 x 512 .
  // 512 x 512 118-120 -> 108-111, 512^3 153-156 -> 142-155, 1 thread); capping the K block at 32
  // pages of B recovered the 64-row products only in part (64 x 512 . 512 x 512 127-130) and lost
  // 512^3 (136-137). The MLP's training step, 2 threads, every B packed: 737-827 -> 679-751 us
  // (medians, six alternating pairs).
  // On the AMD EPYC Zen 5 machine the 4000-byte rows of 128 x 4096 . 4096 x 1000 gained in place
  // (393-398 -> 437-439 on 2 threads; in_place_pays), hence no limit there. The convolutions'
  // image planes (Im2colB::in_place) follow the same rule since they are packed in row groups;
  // packed panel by panel, they had lost more of the benchmark's sweep rows than they won.
  // On AMD Zen 4 (EPYC, family 0x19 model 0x11, 32 KiB L1d, 1 MiB L2) what decides is how far
  // the rows span in all, K times the stride (CpuInfo::in_place_span_bytes, 3.5 MiB there).
  // GFLOP/s, float32, in place -> packed, median of 6 alternating blocks in one process, 1 thread
  // | 2 threads:
  //  - spans of 4 MB or more: 128 x 4096 . 4096 x 1000 (16 MB) 62.7 -> 78.7 | 112.5 -> 127.7;
  //    64 x 4096 . 4096 x 1000 83.6 -> 104.1 (2 threads); 128 x 2048 . 2048 x 1000 62.9 -> 78.8 |
  //    116.4 -> 153.8; 64 x 1000 . 1000 x 1000 60.9 -> 77.8 | 131.1 -> 166.9; 128 x 1000 . 1000 x
  //    1000 79.0 -> 88.9 | 152.1 -> 156.7; 256 x 2048 . 2048 x 520 75.4 -> 83.5 | 165.9 -> 170.9;
  //    64 x 4096 . 4096 x 520 49.1 -> 64.8 | 146.2 -> 138.6; 64 x 2048 . 2048 x 600 69.8 -> 79.7 |
  //    186.3 -> 163.0 (the two losses, on 2 threads only);
  //  - spans under 3.5 MiB, in place kept: 64 x 784 . 784 x 1000 (3.1 MB) 87.0 -> 83.2 | 193.4 ->
  //    176.8; 64 x 1400 . 1400 x 600 (3.4 MB) 91.0 -> 79.9 (1 thread); 64 x 880 . 880 x 1000 (3.5
  //    MB) 91.8 -> 92.6 | 180.3 -> 172.8; 64 x 784 . 784 x 600 98.9 -> 92.3 (1 thread).
  // The stride alone does not decide there: with Intel's limit the last four would be packed.
  // Why the span matters (TLB reach, the prefetchers, L2 ways) was not established.
  int64_t in_place(int64_t* ld) const {
    *ld = rs;
    const int64_t bytes = sizeof(T);
    const bool near = rs * bytes <= cpu_info().in_place_stride_bytes;
    const bool short_span = k * rs * bytes <= cpu_info().in_place_span_bytes;
    return cs == 1 && near && short_span ? INT64_MAX : 0;
  }
  const T* at(int64_t p, int64_t v) const { return b + p * rs + v * NR; }
};

template <typename T, int NR>
struct MatrixC {
  T* c;
  int64_t n, ldc;
  int64_t panels() const { return ceil_div(n, NR); }
  int width(int64_t v) const { return static_cast<int>(min64(NR, n - v * NR)); }
  int64_t rs() const { return ldc; }
  T* at(int64_t i, int64_t v) const { return c + i * ldc + v * NR; }
};

// The epilogue of gemm.h on an mm x nn tile of C (row stride rs_c) whose first column is that of
// `bias`: c = act(c + bias[j]). Plain loops, vectorised by the compiler under this ISA's flags.
// `c < 0 ? 0 : c` keeps NaN and -0.0 as the relu kernel's max(0, c) does.
template <typename T>
static void epilogue_tile(T* c, int64_t rs_c, int64_t mm, int64_t nn, const T* bias, bool relu) {
  for (int64_t i = 0; i < mm; ++i) {
    T* row = c + i * rs_c;
    if (bias != nullptr) {
      for (int64_t j = 0; j < nn; ++j) row[j] += bias[j];
    }
    if (relu) {
      for (int64_t j = 0; j < nn; ++j) row[j] = row[j] < T(0) ? T(0) : row[j];
    }
  }
}

// Whether a policy can be read where it lies (optional members: A `const T* in_place(int64_t*
// ld)`, the rows' base or null; B `int64_t in_place(int64_t* ld)`, how many leading reduction rows
// can, with `const T* at(int64_t p, int64_t v)` the first element of row p of panel v).
template <class P, class = void>
struct has_in_place : std::false_type {};
template <class P>
struct has_in_place<
    P, std::void_t<decltype(std::declval<const P&>().in_place(static_cast<int64_t*>(nullptr)))>>
    : std::true_type {};

// Whether a C policy finishes each tile after its last K block (optional member `void
// finish(int64_t ir, int64_t mm, int64_t v)`: gemm_swapped's copy back).
template <class P, class = void>
struct has_finish : std::false_type {};
template <class P>
struct has_finish<P, std::void_t<decltype(std::declval<const P&>().finish(0, 0, 0))>>
    : std::true_type {};

// C = alpha * A . B + beta * C over the policies' rows, K and column panels, on up to nthreads
// threads (see choose_grid). bl: the blocking for this K. bias and relu: gemm.h's epilogue, on
// each tile after its last K block; only for a C whose panel v starts at column v * NR (MatrixC).
template <class UK, class APol, class BPol, class CPol>
static void gemm_engine(const APol& A, const BPol& B, const CPol& C, int64_t k,
                        typename UK::T alpha, typename UK::T beta, int nthreads, bool b_transposed,
                        const typename UK::T* bias = nullptr, bool relu = false,
                        int64_t sum_depth = 0) {
  using T = typename UK::T;
  constexpr int MR = UK::MR, NR = UK::NR;
  const int64_t m = A.rows(), panels = C.panels();
  if (m <= 0 || panels <= 0) return;
  const GemmBlocking bl = make_blocking(MR, NR, sizeof(T), k, sum_depth);
  const int64_t kc_max = bl.kc;
  // B's reduction rows [0, kin) are read in place; K blocks do not straddle kin.
  int64_t kin = 0, ldb = 0;
  if constexpr (has_in_place<BPol>::value) {
    kin = min64(k, B.in_place(&ldb));
    if (!in_place_pays(ldb, sizeof(T))) kin = 0;
    // The rows past kin (a convolution's bias row) are a K block of their own, one more pass over
    // every C tile: worth it only where the in-place block is long. Pointwise 24->256 56x56 N8 (24
    // rows in place, then the bias row) went from 0.86 to 1.07 ms; 128 rows gained
    // (Im2colB::in_place).
    if (kin < k && kin < kInPlaceMinRowsBeforeTail) kin = 0;
  }
  const T* a_direct = nullptr;
  int64_t lda = 0;
  if constexpr (has_in_place<APol>::value) {
    a_direct = A.in_place(&lda);
    if (!in_place_pays(lda, sizeof(T))) a_direct = nullptr;
    if (!A.row_layout() && panels > kColumnAInPlaceMaxPanels) a_direct = nullptr;
  }
  const Grid grid =
      choose_grid(m, panels * NR, k, MR, NR, UK::V::W, sizeof(T), b_transposed, nthreads);
  const int nt = grid.tm * grid.tn;

  // A is packed in blocks of MC rows (all of K). Each row group (the tn threads that share rows)
  // owns a region of the buffer and walks its own rows block by block; every group runs the same
  // number of blocks, so that the barriers inside a group (tn > 1) line up across the team. The
  // blocks are balanced: M = 1024 is one block, not 960 + 64 (each block repacks B).
  const bool row_layout = A.row_layout();
  const int64_t ld_row = k + kAPad;         // row layout: row stride inside a panel
  const int64_t panel_elems = MR * ld_row;  // either layout fits in MR x (K + pad)
  const int64_t panel_bytes = panel_elems * static_cast<int64_t>(sizeof(T));
  const int64_t group_panels = ceil_div(ceil_div(m, MR), grid.tm);  // the largest group's
  const int64_t max_panels =
      max64(1, gemm_a_pack_bytes() / (grid.private_a ? grid.tm * grid.tn : grid.tm) / panel_bytes);
  const int64_t blocks = ceil_div(group_panels, max_panels);
  const int64_t block_panels = ceil_div(group_panels, blocks);
  // per row group; none when A is read in place
  const int64_t a_region = a_direct ? 0 : round_up(block_panels * panel_elems, 16);

  // Column panels per thread, then B blocks of at most NC columns, balanced so the last is not
  // tiny.
  const int64_t p_per = ceil_div(panels, grid.tn);
  const int64_t nc_panels = ceil_div(p_per, ceil_div(p_per, max64(1, bl.nc / NR)));
  // per thread, 64-byte aligned; none when all of B is read in place
  const int64_t b_elems = kin == k ? 0 : round_up(kc_max * nc_panels * NR, 16);
  const int64_t a_regions = grid.private_a ? nt : grid.tm;  // one per row group, or per thread
  T* ws = static_cast<T*>(
      workspace(WorkspaceSlot::gemm_pack, (a_regions * a_region + nt * b_elems) * sizeof(T)));
  T* bpack_all = ws + a_regions * a_region;

  // Rows are split evenly between row groups, not in whole MR-row panels: each group packs its
  // own panels, so a group may start mid-panel. With 64 rows, MR = 12 and two groups, whole
  // panels gave 36 + 28 rows (3 full panels against 2 and a 4-row one); 32 + 32 rows gives each
  // 2 full panels and an 8-row one, which the micro-kernel runs in 2/3 of a full panel's time.
  constexpr int64_t kRowAlign = 1;
  // Rows [r0, r1) of block `blk` of thread tid's row group, and the group's A region.
  struct Rows {
    int64_t r0, r1;
    T* apack;
  };
  auto block_rows = [&](int tid, int64_t blk) {
    const int ti = tid / grid.tn;
    int64_t m0, m1;
    split_range(m, kRowAlign, grid.tm, ti, &m0, &m1);
    const int64_t r0 = min64(m1, m0 + blk * block_panels * MR);
    const int64_t r1 = min64(m1, r0 + block_panels * MR);
    return Rows{r0, r1, ws + (grid.private_a ? tid : ti) * a_region};
  };
  // Packs this thread's share of its group's A panels for block blk: every tn-th panel, or all of
  // them into its own region with private A.
  auto pack_a_block = [&](int tid, int64_t blk) {
    if (a_direct) return;
    const int tj = grid.private_a ? 0 : tid % grid.tn;
    const int64_t step = grid.private_a ? 1 : grid.tn;
    const Rows rows = block_rows(tid, blk);
    for (int64_t r = rows.r0 + tj * MR; r < rows.r1; r += step * MR) {
      A.pack(rows.apack + (r - rows.r0) / MR * panel_elems, r, min64(MR, rows.r1 - r), ld_row);
    }
  };
  // Column panels are split between the tn threads of a row group by their vectors, the last panel
  // counting only its live ones: 784 columns are 24 full 32-wide panels and a 16-wide one, split
  // 12 + 13 rather than 13 + 12 (416 against 368 columns). Measured on 64 x 256 . (784 x 256)^T,
  // 2 threads, AMD EPYC Zen 5, three runs each: 62.7-63.7 us -> 61.1-62.2 us.
  const int64_t vw = NR / UK::V::W;
  const int64_t units = (panels - 1) * vw + ceil_div(C.width(panels - 1), UK::V::W);
  auto panel_bound = [&](int tj) {
    if (tj >= grid.tn) return panels;
    return min64(panels, (tj * units / grid.tn + vw / 2) / vw);
  };
  // Thread tid's tiles of block blk.
  auto compute_block = [&](int tid, int64_t blk) {
    const int tj = tid % grid.tn;
    const Rows rows = block_rows(tid, blk);
    if (rows.r0 >= rows.r1) return;
    const int64_t v0 = panel_bound(tj), v1 = panel_bound(tj + 1);
    T* bpack = bpack_all + tid * b_elems;
    for (int64_t jc = v0; jc < v1; jc += nc_panels) {
      const int64_t je = min64(v1, jc + nc_panels);
      for (int64_t pc = 0, kc = 0; pc < k; pc += kc) {
        kc = min64(kc_max, (pc < kin ? kin : k) - pc);
        // Packed unless read in place (in_place_pays).
        const bool direct = pc < kin;
        if (!direct) B.pack(bpack, pc, kc, jc, je);
        const T beta_pc = pc == 0 ? beta : T(1);
        const bool epilogue = pc + kc == k && (bias != nullptr || relu);
        for (int64_t ir = rows.r0; ir < rows.r1; ir += MR) {
          const int64_t mm = min64(MR, rows.r1 - ir);
          // Row layout: rows rs apart, k contiguous; column layout: k steps cs apart, MR rows
          // contiguous. Packed or in place (strides ld_row or MR, or the operand's own lda).
          const int64_t rs = row_layout ? (a_direct ? lda : ld_row) : 1;
          const int64_t cs = row_layout ? 1 : (a_direct ? lda : MR);
          const T* panel =
              a_direct ? a_direct + ir * rs : rows.apack + (ir - rows.r0) / MR * panel_elems;
          const T* ap = panel + pc * cs;
          for (int64_t v = jc; v < je; ++v) {
            bool done = false;
            if constexpr (has_in_place<BPol>::value) {
              if (direct) {
                UK::run(kc, ap, rs, cs, B.at(pc, v), ldb, C.at(ir, v), C.rs(), mm, C.width(v),
                        alpha, beta_pc);
                done = true;
              }
            }
            if (!done) {
              UK::run(kc, ap, rs, cs, bpack + (v - jc) * kc * NR, NR, C.at(ir, v), C.rs(), mm,
                      C.width(v), alpha, beta_pc);
            }
            if (epilogue) {
              epilogue_tile(C.at(ir, v), C.rs(), mm, C.width(v), bias ? bias + v * NR : nullptr,
                            relu);
            }
            if constexpr (has_finish<CPol>::value) {
              if (pc + kc == k) C.finish(ir, mm, v);
            }
          }
        }
      }
    }
  };
  auto run_sequential = [&]() {
    for (int64_t blk = 0; blk < blocks; ++blk) {
      for (int t = 0; t < nt; ++t) pack_a_block(t, blk);
      for (int t = 0; t < nt; ++t) compute_block(t, blk);
    }
  };

  if (nt == 1) {
    run_sequential();
    return;
  }
  // Task t is grid cell t (whichever thread runs it): its A region and B buffer are the cell's.
  // Without shared A panels (tn == 1, private A, or A read in place) a task runs all its blocks;
  // with shared ones the packing of a block and its compute are separate parallel_for calls, the
  // end of one the barrier the cells of a row group need (a task may not wait for another: the
  // thread that would run it may have no core).
  if (grid.tn == 1 || grid.private_a || a_direct != nullptr) {
    parallel_for(nt, nt, [&](int64_t t) {
      for (int64_t blk = 0; blk < blocks; ++blk) {
        pack_a_block(static_cast<int>(t), blk);
        compute_block(static_cast<int>(t), blk);
      }
    });
    return;
  }
  for (int64_t blk = 0; blk < blocks; ++blk) {
    parallel_for(nt, nt, [&](int64_t t) { pack_a_block(static_cast<int>(t), blk); });
    parallel_for(nt, nt, [&](int64_t t) { compute_block(static_cast<int>(t), blk); });
  }
}

template <class UK>
static void gemm_blocked(const GemmArgs<typename UK::T>& g) {
  using T = typename UK::T;
  const MatrixA<T, UK::MR> A{g.a, g.m, g.k, g.rs_a, g.cs_a};
  const MatrixB<typename UK::V, UK::NR> B{g.b, g.n, g.rs_b, g.cs_b, g.k};
  const MatrixC<T, UK::NR> C{g.c, g.n, g.rs_c};
  gemm_engine<UK>(A, B, C, g.k, g.alpha, g.beta, g.nthreads, g.cs_b != 1, g.bias, g.relu,
                  g.sum_depth);
}

// C = beta * C for K == 0 (alpha * A . B is an empty sum).
template <typename T>
static void scale_c(const GemmArgs<T>& g) {
  for (int64_t i = 0; i < g.m; ++i) {
    T* c = g.c + i * g.rs_c;
    if (g.beta == T(0)) {
      for (int64_t j = 0; j < g.n; ++j) c[j] = T(0);
    } else {
      for (int64_t j = 0; j < g.n; ++j) c[j] *= g.beta;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// A transposed B and few rows of C: the product computed transposed, C^T = B^T . A^T.
//
// A Linear layer's input gradient dX = dY . W^T has a B with unit row stride (the transpose of a
// row-major W, N x K), which the engine must transpose while packing it: each of its N x K
// elements is read and written once more per call, and the few row panels of a training batch
// (64 rows: 6 of 12) cannot amortise that. Transposed, the same product reads W itself as a
// row-layout A in place (no copy), packs A^T as the small B (M x K elements), and leaves C^T in
// a scratch matrix, each tile of which W x W register transposes (W the vector width) copy into C
// after its last K block (TransposedC).
// Same bits as the direct form: each element of C is the same fused multiply-adds in the same
// order over the same K blocks (the blocking depends on K alone), and with beta != 0, C^T is
// first copied into the scratch so that beta meets the same partial sums. The bias and ReLU
// epilogue runs on C after the copy back, as the engine's does on each tile: c = act(c + bias).
//
// swap_pays: transposed when the two extra passes over M x (K + N) elements are at most half
// the transposed pack of N x K they remove, 2 M (K + N) <= N K. GFLOP/s, float32, AMD EPYC Zen 4
// VM, operands rotated among up to 8 copies (B from L3, as in the benchmark), medians of 5-7
// alternating blocks in one process, direct -> transposed, 1 thread | 2 threads, two runs (the
// first with the copy back as a pass of its own after the product):
//  - taken: 64 x 256 . 256 x 784 (the MLP's dX) 90 -> 100 | 170 -> 176, then 90 -> 98 | 162 ->
//    185; 64 x 500 . 500 x 800 (LeNet's fc1 dX) 89 -> 101 | 142 -> 165, 84 -> 100 | 116 -> 182;
//    32 x 512 . 512 x 512 75 -> 99 | 126 -> 149, 75 -> 96 | 125 -> 165; 128 x 1000 . 1000 x
//    4096 91 -> 99 | 175 -> 199, 87 -> 94 | 165 -> 187; 64 x 784 . 784 x 256 83 -> 91 | 180 ->
//    191, 87 -> 98 | 121 -> 159; 16 x 1024 . 1024 x 1024 55 -> 77 | 96 -> 153; at the bound,
//    64 x 256 . 256 x 256 95 -> 99 | 164 -> 166, 94 -> 98 | 134 -> 145;
//  - left direct (within a factor 2 of the bound; first version): 100 x 300 . 300 x 500 95 -> 92
//    | 156 -> 168 in one run, 89 -> 87 | 178 -> 166 in another; 48 x 64 . 64 x 1024 85 -> 79 |
//    142 -> 115; 128 x 256 . 256 x 512 92 -> 96 | 162 -> 158.
template <typename T>
static bool swap_pays(const GemmArgs<T>& g) {
  if (g.rs_b != 1 || g.cs_b == 1 || g.sum_depth > 0) return false;
  if (const int mode = test_switch(TestSwitch::kGemmSwap); mode >= 0) return mode == 1;
  return 2 * g.m * (g.k + g.n) <= g.n * g.k;
}

// C^T, the result of gemm_swapped's engine, in a scratch matrix; each tile, after its last K block,
// copied transposed into C (and the epilogue applied there) by the thread that computed it, while
// it is in that core's L1. As a separate pass after the product, the copy back of 64 x 784 took
// about 10 us of the 144 us of 64 x 256 . 256 x 784 on 2 threads (AMD EPYC Zen 4 VM).
template <class V, int NR>
struct TransposedC {
  using T = typename V::T;
  MatrixC<T, NR> t;  // C^T: N x M, rows t.ldc apart
  T* c;
  int64_t rs_c;
  const T* bias;  // C's, per column (a row of C^T)
  bool relu;
  int64_t panels() const { return t.panels(); }
  int width(int64_t v) const { return t.width(v); }
  int64_t rs() const { return t.rs(); }
  T* at(int64_t i, int64_t v) const { return t.at(i, v); }
  // Rows [ir, ir + mm) of C^T by panel v: C's columns ir... of its rows v * NR...
  void finish(int64_t ir, int64_t mm, int64_t v) const {
    T* dst = c + v * NR * rs_c + ir;
    transpose_block<V>(t.at(ir, v), t.rs(), mm, width(v), dst, rs_c);
    if (bias != nullptr || relu) {
      epilogue_tile(dst, rs_c, width(v), mm, bias != nullptr ? bias + ir : nullptr, relu);
    }
  }
};

template <class UK>
static void gemm_swapped(const GemmArgs<typename UK::T>& g) {
  using T = typename UK::T;
  using V = typename UK::V;
  constexpr int W = V::W;
  // C^T is N x M in the scratch, rows ldt apart: a whole number of vectors, and not a multiple of
  // 4 KiB (whose rows would share L1 sets, as in_place_pays says of operands).
  int64_t ldt = round_up(g.m, W);
  if ((ldt * static_cast<int64_t>(sizeof(T))) % 4096 == 0) ldt += W;
  T* t = static_cast<T*>(workspace(WorkspaceSlot::gemm_shared, g.n * ldt * sizeof(T)));
  // With beta, C^T starts as C's copy, in bands of whole vectors of C's columns, one per thread
  // (a band of at least 2^15 elements: below that one thread copies alone).
  if (g.beta != T(0)) {
    const int64_t units = ceil_div(g.n, W);
    const int64_t tasks = min64(min64(g.nthreads, units), max64(1, g.m * g.n >> 15));
    parallel_for(tasks, static_cast<int>(tasks), [&](int64_t task) {
      const int64_t j0 = min64(g.n, task * units / tasks * W);
      const int64_t j1 = min64(g.n, (task + 1) * units / tasks * W);
      transpose_block<V>(g.c + j0, g.rs_c, g.m, j1 - j0, t + j0 * ldt, ldt);
    });
  }
  const MatrixA<T, UK::MR> A{g.b, g.n, g.k, g.cs_b, g.rs_b};  // B^T: row layout (rs_b == 1)
  const MatrixB<V, UK::NR> B{g.a, g.m, g.cs_a, g.rs_a, g.k};  // A^T
  const TransposedC<V, UK::NR> C{{t, g.m, ldt}, g.c, g.rs_c, g.bias, g.relu};
  gemm_engine<UK>(A, B, C, g.k, g.alpha, g.beta, g.nthreads, g.rs_a != 1);
}

template <class UK>
static void gemm(const GemmArgs<typename UK::T>& g) {
  if (g.m <= 0 || g.n <= 0) return;
  // The blocked engine applies the epilogue tile by tile; the other paths (at most 64^3
  // multiply-adds, or at most kGemvMaxM rows) in one pass over C afterwards.
  if (g.k <= 0) {
    scale_c(g);
  } else if (g.m > kGemvMaxM || g.sum_depth > 0 || !gemv<typename UK::V>(g)) {
    if (g.m * g.n * g.k > kSmallMnk) {
      if (swap_pays(g)) {
        gemm_swapped<UK>(g);
      } else {
        gemm_blocked<UK>(g);
      }
      return;
    }
    gemm_small<UK>(g);
  }
  if (g.bias != nullptr || g.relu) epilogue_tile(g.c, g.rs_c, g.m, g.n, g.bias, g.relu);
}

}  // namespace simdnn::gemm_detail
