// How the convolutions feed the GEMM engine (gemm_driver.h): the A, B and C operand policies
// gemm_engine packs from and writes to, for the per-ISA convolution files.
//   forward (and flipped backward-data)  A = filters [+ bias column], B = im2col, C = NCHW output
//   backward-weights                     A = dY rows (db summed while packing), B = im2col^T,
//                                        C = a plain dW block
#pragma once

#include <cstdint>
#include <cstring>

#include "common/cpu.h"
#include "common/int_math.h"
#include "conv/conv.h"
#include "conv/im2col.h"
#include "gemm/gemm_driver.h"
#include "gemm/gemm_isa.h"

#ifndef SIMDNN_ISA_NS
#error "compile with -DSIMDNN_ISA_NS=<isa>"
#endif

namespace simdnn::SIMDNN_ISA_NS {
namespace {

// ------------------------------------------------------------------------------------------------
// Forward

// Entries of the forward's vector-form table (im2col.h), on the stack of the packing thread: 24
// KiB of AVX-512 float entries, 64 KiB of AVX2 ones (a vector mask each). A panel of 2 vectors
// needs 6 a tap: enough for kernels up to 13x13.
constexpr int64_t kVecTableEntries = 1024;
// Backward-weights' table (Im2colTB), in the packing thread's workspace: a block of KC pixels
// needs taps x KC/W x 3 entries, up to this many bytes. It was 1,024 entries on the stack, which
// left every kernel larger than 3x3 (a 4x4 block of 464 pixels needs 1,392) to the segment copies.
// Intel Xeon (Sapphire Rapids class), 2 threads, float32, sweep rows, 24 KiB -> 256 KiB -> 1 MiB:
// 4x4 p3 16->24 14x14 N32 897 -> 638-656 -> 647-667 us; 4x4/s2 p2 32->64 28x28 N8 639-668 -> 453
// us; 4x4 p2 16->128 7x7 N16 287-298 -> 224-238 -> 239-246 us; 7x7/s2 p3 24->96 28x28 N4 810-835 ->
// 661-677 us; 7x7 512->8 g2 28x28 N2 4.14-4.30 -> 3.55 ms; no row slower beyond the noise. AVX2
// entries hold a 32-byte mask (96 bytes an entry), and there 1 MiB measured best (forced AVX2, 96
// KiB -> 1 MiB: 4x4 p2 16->128 439 -> 369 us, 7x7/s2 24->96 1,182 -> 1,071 us, 4x4/s2 32->64 836 ->
// 749 us). A table is as large as its layer needs: a 7x7 AVX-512 block takes about 100 KiB.
constexpr int64_t kVecTableBytesTB = int64_t(1) << 20;

// Where panel v's pixels start: image img, pixel j0 of its plane, and how many (width) the panel
// holds, from that image on (past the plane: the next image's first ones).
struct PanelPlace {
  int64_t img, j0, width;
};
static inline PanelPlace panel_place(int64_t v, int64_t nr, int64_t pq, int64_t ppi, bool span,
                                     int64_t n_img) {
  if (span) {
    const int64_t u0 = v * nr;
    return PanelPlace{u0 / pq, u0 % pq, min64(nr, n_img * pq - u0)};
  }
  const int64_t j0 = (v % ppi) * nr;
  return PanelPlace{v / ppi, j0, min64(nr, pq - j0)};
}

// B = im2col, columns = the output pixels of n_img images: NR-wide panels per image (ppi panels
// per image), or across images (span). Reduction row t = (c, r, s), plus a row of ones at
// t = rows() when the bias is fused.
template <class V, int NR>
struct Im2colB {
  using T = typename V::T;
  const T* src;  // image 0
  Im2col g;
  int64_t ppi;
  bool ones_row;
  int64_t n_img;       // images from src on: the elements that may be read
  bool one_row_panel;  // A has at most MR rows: each B element is read once
  bool span = false;   // panels across images (span_pays); never with pointwise()
  PanelPlace place(int64_t v) const { return panel_place(v, NR, g.p * g.q, ppi, span, n_img); }

  // Where an image's planes of the group fit in half the L1, the panels of a block are packed in
  // order of their place in the image (v % ppi), so that each place's tables are built once for
  // all the images of the block (pack).
  bool by_place() const {
    return 2 * g.cg * g.h * g.w * static_cast<int64_t>(sizeof(T)) <= cpu_info().l1d;
  }

  // Whether the column panels run across images (span): the pixels of all n_img images as one row
  // of n_img * PQ columns, so that only the last panel is partial, instead of NR-wide panels per
  // image whose last holds PQ mod NR pixels and costs the micro-kernel a whole panel. A panel
  // across two images is packed from both (the tables take the next image's pixels one image's
  // planes on) and its tile of C computed into a scratch, then copied to the two images (ImageC).
  // Only where each panel touches at most two images (PQ >= NR); never for the pointwise layers
  // read in place. Panels across images have no period of ppi, so each builds its own tables:
  // where the layer would share them (by_place), only if the columns saved are worth more than
  // the builds, m x C/G x (waste: the per-image panels' unused share) >= kSpanMinWork (a table
  // costs some cycles per lane and tap, the micro-kernel 1/32 of a cycle per lane, tap, channel
  // and filter). AMD EPYC Zen 4 VM, 2 threads, float32, medians of 7 alternating blocks, per
  // image -> across: 3x3 p1 C->K 7x7 N4 (49 pixels, waste 23%) C=16 K=64 32.3 -> 32.4 us, K=256
  // 109 -> 99 us, K=512 202 -> 177 us; C=64 K=256 390 -> 334 us, K=512 755 -> 631 us; 9x9 (81
  // pixels, 16%) C=16 K=64 46 -> 53 us, K=256 161 -> 161 us, K=512 310 -> 288 us, C=48 K=256 446
  // -> 425 us; grouped 3x3 p2 16->128 g4 7x7 N16 (C/G = 4, 32 filters a group) 105 -> 164 us.
  // Layers whose planes exceed half the L1 build tables per panel either way: 3x3 256->256 14x14
  // N16 forward 21.0 -> 20.3 ms, backward-data 22.6 -> 20.7 ms; 3x3 p0 384->96 14x14 N2 1.43 ->
  // 1.33 ms; 2x2 p1 192->192 14x14 N2 backward-data 0.90 -> 0.82 ms.
  // TestSwitch::kConvSpanImages forces it wherever it can run, or never.
  static constexpr int64_t kSpanMinWork = 1024;
  bool span_pays(int64_t m) const {
    const int64_t pq = g.p * g.q;
    if (pointwise() || n_img < 2 || pq < NR) return false;
    if (const int mode = test_switch(TestSwitch::kConvSpanImages); mode >= 0) return mode == 1;
    if (pq % NR == 0) return false;
    return !by_place() || m * g.cg * (ppi * NR - pq) >= kSpanMinWork * ppi * NR;
  }

  // One segment for one tap (r, s), stride 1: where its in-bounds run starts in the plane
  // (-1: the whole segment falls on padding rows) and which part of it is in bounds.
  struct Run {
    int64_t src;
    int32_t lo, hi;
  };
  // Tabulated per panel when R*S*segments fits: every reduction row of a tap reuses the entry
  // (C/groups times per block) instead of recomputing rows and bounds. Measured on 128->128 3x3
  // 28x28: the pack cost ~1 cycle per element before, with 256 FLOPs of micro-kernel per element.
  static constexpr int64_t kMaxRuns = 1024;

  bool pointwise() const {
    return g.r == 1 && g.s == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0 && g.p == g.h &&
           g.q == g.w;
  }
  // 1x1, stride 1, no padding: im2col is the input itself, a C x PQ matrix per image, read in
  // place (the engine's in_place_pays) where its rows, the image's planes, lie no further apart
  // than CpuInfo::pointwise_plane_bytes (2 KiB on Intel, as its stride prefetcher's reach, and on
  // AMD Zen 4; no limit on Zen 5); the bias row, if any, is packed. AMD EPYC Zen 5, 2
  // threads, packed -> in place: 1x1 128->128 28x28 N16 forward (inputs out of cache) 1.20-1.32
  // -> 1.04-1.08 ms; sweep rows 384->16 112x112 N2 forward 2.23-3.06 -> 1.99-2.03 ms, backward-data
  // (the flipped convolution, also pointwise) of 24->256 56x56 N8 2.12 -> 1.21-1.28 ms and of
  // 24->64 56x56 N2 64 -> 46-48 us; the rest even. On the Intel Xeon (Sapphire Rapids class) far
  // planes are packed in row groups (pack_pointwise), which won on the layers measured there,
  // unless a B tile (all rows x NR) fits in a quarter of the L1, where it stays between the row
  // panels that read it: backward-data 24->64 56x56 N2 (64 rows, 8 KiB) took 92-115 us in place
  // and 138-142 us packed, in cache; or unless A has a single row panel, which reads each element
  // of B once, so that packing adds a copy and saves nothing: forward 256->3 56x56 N2 took
  // 189-198 us in place and 266-299 us packed.
  // On an AMD EPYC Zen 4 VM (2 threads) the Intel rule won, in place -> packed: 1x1 128->128 28x28
  // N16 forward 3.38-3.68 -> 2.51-2.69 ms and backward-data 3.11-3.32 -> 2.64-2.78 ms (two
  // alternating runs); in one sweep each, forward 384->16 112x112 N2 10.19 -> 4.31 ms, 256->3 56x56
  // N2 163 -> 118 us, grouped 384->24 g8 56x56 N16 8.22 -> 6.39 ms (backward-data 11.94 -> 9.76),
  // backward-data 24->256 56x56 N8 6.70 -> 3.02 ms; lost: backward-data 384->16 112x112 N2 6.66 ->
  // 7.90 ms; planes of 2 KiB or less and every other row within the sweep's noise.
  int64_t in_place(int64_t* ld) const {
    *ld = g.h * g.w;
    const int64_t bytes = sizeof(T);
    const bool near = g.h * g.w * bytes <= cpu_info().pointwise_plane_bytes;
    const bool short_tile = g.rows() * NR * bytes <= cpu_info().l1d / 4;
    return pointwise() && (near || short_tile || one_row_panel) ? g.rows() : 0;
  }
  const T* at(int64_t p, int64_t v) const {
    const int64_t plane = g.h * g.w;
    return src + ((v / ppi) * g.c_total + g.c0 + p) * plane + (v % ppi) * NR;
  }

  // Rows of a pointwise pack read together: each row is a contiguous run of a plane, so the group
  // reads kPointwiseRowGroup streams at a time and writes that many rows of each panel together.
  // Panel by panel (each panel all kc rows, a line or two of every plane) left the prefetchers
  // hundreds of short streams; row by row across the block wrote each row to another panel. Intel
  // Xeon (Sapphire Rapids class), 2 threads, float32, best of 5, inputs rotated among 4 copies
  // (out of cache) | one input (in cache), in place -> packed in groups of 8 rows:
  //   backward-data 24->256 56x56 N8 5.35 -> 2.11 | 2.08 -> 1.74 ms;
  //   forward 384->16 112x112 N2     8.97 -> 3.67 | 2.83 -> 2.67 ms;
  //   forward 128->128 28x28 N16     2.17 -> 1.47 | 1.65 -> 1.36 ms;
  //   backward-data 128->128 28x28 N16 2.10 -> 1.54 | 1.63 -> 1.29 ms;
  //   backward-data 64->64 56x56 N8  1.16 -> 0.90 | 0.88 -> 0.84 ms (64 rows: in place, see
  //   in_place).
  // Groups of 1, 4, 16 and 64 rows measured slower than 8 or even with it (64: 3.61 ms out of
  // cache on the first row); panel by panel, 4.28 ms there.
  static constexpr int64_t kPointwiseRowGroup = 8;
  void pack_pointwise(T* dst, int64_t pc, int64_t kc, int64_t v0, int64_t v1) const {
    const int64_t pq = g.p * g.q, rows = g.rows();
    for (int64_t tb = pc; tb < pc + kc; tb += kPointwiseRowGroup) {
      const int64_t te = min64(pc + kc, tb + kPointwiseRowGroup);
      for (int64_t v = v0; v < v1; ++v) {
        const int64_t width = min64(NR, pq - (v % ppi) * NR);
        T* d = dst + (v - v0) * kc * NR + (tb - pc) * NR;
        for (int64_t t = tb; t < te; ++t, d += NR) {
          if (t < rows) {
            copy_run<V>(at(t, v), d, width);
          } else {  // the bias row
            for (int64_t j = 0; j < width; ++j) d[j] = T(1);
          }
        }
      }
    }
  }

  void pack(T* dst, int64_t pc, int64_t kc, int64_t v0, int64_t v1) const {
    if (pointwise()) {
      pack_pointwise(dst, pc, kc, v0, v1);
      return;
    }
    const int64_t plane = g.h * g.w, rs = g.r * g.s, rows = g.rows();
    Run runs[kMaxRuns];
    // Where an image's planes of the group fit in half the L1 (by_place), the panels go in order of
    // their place in the image (v % ppi), so that each place's table is built once for all the
    // images of the block (each panel still goes to its own slot of dst); else image by image, each
    // image's planes read while in L1. Intel Xeon, 2 threads, two alternating runs, image order ->
    // place order: LeNet's 20->50 5x5 12x12 N64 forward (12 KB an image) 0.836 -> 0.759 ms, 3x3 p2
    // 16->128 g4 7x7 N4 44 -> 32 us, backward-data (flipped) of 7x7 64->3 14x14 N16 0.366 -> 0.266
    // ms; but 5x5/s2 p2 32->8 g2 28x28 N16 (50 KB) 0.311 -> 0.353 ms and grouped 1x1 384->24 g8
    // 56x56 N16 (600 KB) 2.24 -> 2.44 ms (a later run read the 5x5/s2 row as slow in image order:
    // part of those two is this machine's drift, but no gain was seen there).
    // Panels across images have no period of ppi: each builds its own tables (span_pays).
    const bool by_place = !span && this->by_place();
    const int64_t places = by_place ? min64(ppi, v1 - v0) : v1 - v0;
    const int64_t step = by_place ? ppi : v1 - v0;
    // The next image's planes, for a panel that runs into it.
    const int64_t img_stride = g.c_total * plane;
    for (int64_t ph = 0; ph < places; ++ph) {
      const PanelPlace at0 = place(v0 + ph);
      const int64_t j0 = at0.j0, width = at0.width;
      // The window form (im2col.h) wherever it applies, the vector form wherever its table fits
      // and no vector spans more than VecTable::kEntries segments; else segment by segment, from a
      // table of runs for stride 1. Tables only where a block reuses each entry (C/groups >= 2
      // within the block): for LeNet's first layer, one channel, tabulating cost more than it
      // saved.
      constexpr int NVEC = NR / V::W;
      WindowTable<V, NVEC> wt;
      if (kc >= 2 * rs && wt.build(g, j0, width, img_stride)) {
        const int64_t t1 = min64(pc + kc, rows);
        for (int64_t v = v0 + ph; v < v1; v += step) {
          const T* img = src + place(v).img * img_stride + g.c0 * plane;
          T* d = dst + (v - v0) * kc * NR;
          wt.pack(img, img - src, n_img * g.c_total * plane, pc, t1, plane, d);
          for (int64_t t = t1; t < pc + kc; ++t) {  // the bias row
            for (int64_t j = 0; j < width; ++j) d[(t - pc) * NR + j] = T(1);
          }
        }
        continue;
      }
      Segment seg[NR];
      const int64_t nseg = range_segments(g, j0, width, seg);
      alignas(
          typename VecTable<V>::Entry) unsigned char vt_store[VecTable<V>::bytes(kVecTableEntries)];
      VecTable<V> vt(vt_store, kVecTableEntries);
      const bool vec = kc >= 2 * rs && vt.build(g, img_stride, seg, nseg, NVEC);
      const int nvec = static_cast<int>(ceil_div(width, V::W));
      const int64_t readable = n_img * g.c_total * plane;  // from src
      const bool tabulated = !vec && g.sw == 1 && rs * nseg <= kMaxRuns && kc >= 2 * rs;
      if (tabulated) {
        for (int64_t tap = 0; tap < rs; ++tap) {
          const int64_t r = tap / g.s, s = tap % g.s;
          for (int64_t i = 0; i < nseg; ++i) {
            const Segment& sg = seg[i];
            const int64_t hi = sg.p * g.sh - g.ph + r * g.dh;
            const int64_t w0 = sg.q - g.pw + s * g.dw;
            Run& run = runs[tap * nseg + i];
            if (hi < 0 || hi >= g.h) {
              run = Run{-1, 0, 0};
            } else {
              const int64_t lo = min64(sg.len, max64(0, -w0));
              const int64_t hj = max64(lo, min64(sg.len, g.w - w0));
              run = Run{sg.img * img_stride + hi * g.w + w0 + lo, static_cast<int32_t>(lo),
                        static_cast<int32_t>(hj)};
            }
          }
        }
      }
      for (int64_t v = v0 + ph; v < v1; v += step) {
        const T* img = src + place(v).img * img_stride + g.c0 * plane;
        T* d = dst + (v - v0) * kc * NR;
        // (c, r, s) of reduction row pc, then stepped along.
        int64_t c = pc / rs, r = (pc / g.s) % g.r, s = pc % g.s;
        for (int64_t t = pc; t < pc + kc; ++t, d += NR) {
          if (t >= rows) {  // the bias row
            for (int64_t j = 0; j < width; ++j) d[j] = T(1);
            continue;
          }
          const T* pl = img + c * plane;
          if (vec) {
            vt.row(pl, (img - src) + c * plane, readable, r * g.s + s, nvec, g.sw, d);
          } else if (tabulated) {
            const Run* tr = runs + (r * g.s + s) * nseg;
            for (int64_t i = 0; i < nseg; ++i) {
              T* out = d + seg[i].off;
              const int64_t len = seg[i].len;
              if (tr[i].src < 0) {
                zero_run<V>(out, len);
                continue;
              }
              if (tr[i].lo > 0) zero_run<V>(out, tr[i].lo);
              copy_run<V>(pl + tr[i].src, out + tr[i].lo, tr[i].hi - tr[i].lo);
              if (tr[i].hi < len) zero_run<V>(out + tr[i].hi, len - tr[i].hi);
            }
          } else {
            for (int64_t i = 0; i < nseg; ++i) {
              gather_segment<V>(g, pl + seg[i].img * img_stride, r, s, seg[i], d + seg[i].off);
            }
          }
          if (++s == g.s) {
            s = 0;
            if (++r == g.r) {
              r = 0;
              ++c;
            }
          }
        }
      }
    }
  }
};

// C = an NCHW output: rows are the group's channels, columns the pixels of n_img images, in the
// panels of Im2colB. A panel across two images (span) is computed into `scratch` with the same
// row stride PQ (panels side by side, spb = PQ / NR of them per band of m rows), and each of its
// tiles copied to its two images by the thread that computed it, after its last K block (finish).
template <typename T, int NR>
struct ImageC {
  T* y;             // image 0, channel 0
  int64_t k_total;  // channels per image
  int64_t k0;       // this group's first channel
  int64_t pq, ppi, n_img;
  bool span = false;
  T* scratch = nullptr;  // span: ceil((n_img - 1) / spb()) bands of m x PQ
  int64_t m = 0;
  int64_t spb() const { return pq / NR; }  // straddling panels per band

  // Scratch elements for the panels across images of m rows (span): the n_img - 1 panels that
  // start in images 0 to n_img - 2, spb = PQ / NR of them side by side per band of m x PQ.
  static int64_t scratch_elems(int64_t m_rows, int64_t pq, int64_t n_img) {
    return ceil_div(n_img - 1, pq / NR) * m_rows * pq;
  }
  int64_t panels() const { return span ? ceil_div(n_img * pq, NR) : n_img * ppi; }
  PanelPlace place(int64_t v) const { return panel_place(v, NR, pq, ppi, span, n_img); }
  int width(int64_t v) const { return static_cast<int>(place(v).width); }
  int64_t rs() const { return pq; }
  T* at(int64_t i, int64_t v) const {
    const PanelPlace pl = place(v);
    if (pl.j0 + pl.width > pq) {  // across images: panel pl.img's slot of the scratch
      return scratch + (pl.img / spb() * m + i) * pq + pl.img % spb() * NR;
    }
    return y + pl.img * k_total * pq + (k0 + i) * pq + pl.j0;
  }
  void finish(int64_t ir, int64_t mm, int64_t v) const {
    if (!span) return;
    const PanelPlace pl = place(v);
    if (pl.j0 + pl.width <= pq) return;
    const int64_t first = pq - pl.j0;  // columns in image pl.img, then the next image's
    for (int64_t i = ir; i < ir + mm; ++i) {
      const T* t = at(i, v);
      T* row = y + pl.img * k_total * pq + (k0 + i) * pq;
      std::memcpy(row + pl.j0, t, first * sizeof(T));
      std::memcpy(row + k_total * pq, t + first, (pl.width - first) * sizeof(T));
    }
  }
};

// A = the filters of one group as rows (Kg x CgRS), with the bias as an extra column when fused.
template <typename T, int MR>
struct FilterA {
  const T* w;     // group's first filter
  const T* bias;  // group's bias, or null
  int64_t m, crs;
  int64_t rows() const { return m; }
  bool row_layout() const { return true; }
  void pack(T* dst, int64_t r, int64_t mm, int64_t ld_row) const {
    for (int64_t i = 0; i < mm; ++i) {
      std::memcpy(dst + i * ld_row, w + (r + i) * crs, crs * sizeof(T));
      if (bias != nullptr) dst[i * ld_row + crs] = bias[r + i];
    }
  }
};

// out (N, k_total, P, Q), channels [k0, k0 + m) = filters (m x CgRS) * im2col(src) [+ bias].
template <typename T>
void implicit_gemm(const Im2col& g, int64_t n_img, const T* src, const T* filters, const T* bias,
                   int64_t m, T* out, int64_t k_total, int64_t k0, int nthreads) {
  using UK = typename UkernelFor<T>::type;
  constexpr int MR = UK::MR, NR = UK::NR;
  const int64_t pq = g.p * g.q, ppi = ceil_div(pq, NR);
  const int64_t kred = g.rows() + (bias != nullptr ? 1 : 0);
  const FilterA<T, MR> A{filters, bias, m, g.rows()};
  Im2colB<typename UK::V, NR> B{src, g, ppi, bias != nullptr, n_img, m <= MR};
  ImageC<T, NR> C{out, k_total, k0, pq, ppi, n_img};
  if (B.span_pays(m)) {
    B.span = C.span = true;
    C.m = m;
    C.scratch = static_cast<T*>(workspace(WorkspaceSlot::gemm_shared,
                                          ImageC<T, NR>::scratch_elems(m, pq, n_img) * sizeof(T)));
  }
  // Gathering im2col costs more per element than copying a matrix row: model it as a transposed
  // B in the thread grid.
  gemm_detail::gemm_engine<UK>(A, B, C, kred, T(1), T(0), nthreads, true);
}

// ------------------------------------------------------------------------------------------------
// Backward-weights

// The backward-weights reduction runs over pixels u of the flattened N x PQ index space; a
// thread's share [u0, u1) spans whole images and parts of two. One GEMM per thread and group
// reduces over all of it (one GEMM per image would read and write dW once per image: LeNet's
// 8x8 second layer spent more time on that than on its FMAs).

// A = dY rows (Kg x len) over reduction range [u0, u0 + len), packed as rows; sums each row into
// db while copying it.
template <typename T, int MR>
struct GradA {
  const T* dy;  // dy[0, k0] (this group's first channel of image 0)
  int64_t m, k_total, pq, u0, len;
  T* db;  // per-thread bias gradient of this group (accumulated), or null
  int64_t rows() const { return m; }
  bool row_layout() const { return true; }
  void pack(T* dst, int64_t r, int64_t mm, int64_t ld_row) const {
    for (int64_t i = 0; i < mm; ++i) {
      T* d = dst + i * ld_row;
      T sum = T(0);
      for (int64_t u = u0; u < u0 + len;) {
        const int64_t n = u / pq, pix = u % pq, run = min64(pq - pix, u0 + len - u);
        const T* src = dy + (n * k_total + r + i) * pq + pix;
        std::memcpy(d + (u - u0), src, run * sizeof(T));
        // In vector lanes: the scalar sum's chain of dependent adds took 13% of 1x1 128->128
        // 28x28 N16's backward-weights (AMD EPYC Zen 5).
        if (db != nullptr) sum += vector_sum<typename VecOf<T>::type>(src, run);
        u += run;
      }
      if (db != nullptr) db[r + i] += sum;
    }
  }
};

// Output rows up to which Im2colTB packs pixel by pixel. Sweep rows, AMD EPYC Zen 5, 2 threads,
// segments -> pixel by pixel: grouped 7x7/s2 32->64 g4 7x7 N16 (2-pixel rows) 351 -> 105 us;
// 2x2/s2 128->96 g2 7x7 N16 (4) 286 -> 176 us; 5x5/s2 32->32 9x9 N16 (5) 269 -> 186 us; but
// 3x3 64->64 g2 7x7 N16 (7) 247 -> 274 us.
constexpr int64_t kShortRowPixels = 5;

// B = im2col^T over reduction range [u0, u0 + len): reduction rows are pixels, columns
// (NR-wide panels) are the (c, r, s) taps. Each panel is gathered as NR im2col rows and then
// transposed in registers, W x W at a time.
template <class V, int NR>
struct Im2colTB {
  using T = typename V::T;
  const T* x;  // image 0
  Im2col g;
  int64_t u0;
  T* scratch;     // NR x (KC rounded up to W), per calling thread
  Segment* segs;  // KC + 1 entries, per calling thread
  int64_t n_img;  // images of x: the elements that may be read
  void* table;    // storage for a VecTable of table_cap entries, per calling thread
  int64_t table_cap;

  // The window form for unpadded layers (AVX-512; im2col.h's WindowTable for the forward): the
  // block's pixel u reads x at base(u) + (c0 + c) * plane + r*dh*w + s*dw, base(u) = n *
  // img_stride + p*sh*w + q. Where every vector's bases lie within 2W, a vector of an im2col row is
  // two loads and one permute by indices fixed for the block, in place of a masked copy per
  // output row the vector spans. No lane falls on padding; lanes past kc are zeroed. Intel Xeon
  // (Sapphire Rapids class), 2 threads, float32, three alternating runs: LeNet's 20->50 5x5 12x12
  // N64 1.00-1.05 -> 0.86-0.90 ms (im2col^T packing was 35% of its samples on 1 thread), 3x3
  // 384->96 14x14 N2 0.76-0.82 -> 0.73-0.75 ms; 7x7 64->3 14x14 N16 even.
  struct TbWindow {
    static constexpr int64_t kMaxVectors = 64;  // KC / W: 512 / 16 float, 256 / 8 double
    typename HasPermute2<V>::Index idx[kMaxVectors];
    int64_t base[kMaxVectors];
    typename V::M live[kMaxVectors];
    int64_t nvec = 0, hi = 0;  // hi: the end of the furthest window, from the column's plane

    bool build(const Im2colTB& b, int64_t pc, int64_t kc) {
      constexpr int W = V::W;
      const Im2col& geo = b.g;
      const int64_t pq = geo.p * geo.q, img_stride = geo.c_total * geo.h * geo.w;
      nvec = ceil_div(kc, W);
      if (nvec > kMaxVectors) return false;
      hi = 0;
      for (int64_t jv = 0; jv < nvec; ++jv) {
        const int n = static_cast<int>(min64(W, kc - jv * W));
        int64_t bs[W];
        int64_t bmin = 0, bmax = 0;
        for (int l = 0; l < n; ++l) {
          const int64_t u = b.u0 + pc + jv * W + l, pix = u % pq;
          bs[l] = u / pq * img_stride + pix / geo.q * geo.sh * geo.w + pix % geo.q;
          bmin = l == 0 ? bs[l] : min64(bmin, bs[l]);
          bmax = l == 0 ? bs[l] : max64(bmax, bs[l]);
        }
        if (bmax - bmin >= 2 * W) return false;
        alignas(64) int32_t ix[W];
        for (int l = 0; l < W; ++l) ix[l] = l < n ? static_cast<int32_t>(bs[l] - bmin) : 0;
        idx[jv] = V::index(ix);
        base[jv] = bmin;
        live[jv] = V::lanes(0, n);
        hi = max64(hi, bmin + 2 * W);
      }
      return true;
    }
    // The im2col row of one column (c, r, s), from pl = its plane + r*dh*w + s*dw, into srow
    // (nvec * W elements); every window must be readable (the caller checks hi).
    void row(const T* pl, T* srow) const {
      constexpr int W = V::W;
      for (int64_t jv = 0; jv < nvec; ++jv) {
        const T* p = pl + base[jv];
        V::store(srow + jv * W, V::permute2z(live[jv], V::load(p), idx[jv], V::load(p + W)));
      }
    }
  };

  // Output rows of at most kShortRowPixels pixels (where the vector table does not serve): each
  // panel row (one pixel) written where it goes, element by element from per-column and
  // per-pixel offsets, instead of im2col rows of a few pixels each (segments) gathered and
  // transposed, a call per segment.
  void pack_short_rows(T* dst, int64_t pc, int64_t kc, int64_t v0, int64_t v1) const {
    const int64_t plane = g.h * g.w, rows = g.rows(), rs = g.r * g.s, pq = g.p * g.q;
    const int64_t img_stride = g.c_total * plane;
    // Per pixel of the block, once for all panels (three integer divisions a pixel, per panel,
    // and reloads of g and x after each store, were most of the packing's time on 4-pixel rows;
    // Intel Xeon, 2 threads: grouped 128->96 g2 2x2/s2 p1 7x7 N16 backward-weights 245-262 ->
    // 208-211 us, 32->32 5x5/s2 9x9 N16 187-189 -> 139-141 us): its first input row and column
    // (negative in the padding) and the offset in x of that row and column of channel 0. Kept in
    // `scratch`, which this form does not otherwise use (its NR x KC elements hold 3 x KC
    // offsets).
    static_assert(NR * sizeof(T) >= 3 * sizeof(int64_t), "scratch holds 3 offsets a pixel");
    int64_t* h0 = reinterpret_cast<int64_t*>(scratch);
    int64_t* w0 = h0 + kc;
    int64_t* base = w0 + kc;
    for (int64_t i = 0; i < kc; ++i) {
      const int64_t u = u0 + pc + i, pix = u % pq;
      h0[i] = pix / g.q * g.sh - g.ph;
      w0[i] = pix % g.q * g.sw - g.pw;
      base[i] = u / pq * img_stride + h0[i] * g.w + w0[i];
    }
    int64_t coff[NR], rdh[NR], sdw[NR];
    for (int64_t v = v0; v < v1; ++v) {
      T* d = dst + (v - v0) * kc * NR;
      const int64_t t0 = v * NR, width = min64(NR, rows - t0);
      for (int64_t j = 0; j < width; ++j) {
        const int64_t t = t0 + j;
        rdh[j] = (t / g.s) % g.r * g.dh;
        sdw[j] = t % g.s * g.dw;
        coff[j] = (g.c0 + t / rs) * plane + rdh[j] * g.w + sdw[j];
      }
      // Locals, so that the stores to d are not taken to alias them, and no branch: a tap in the
      // padding reads x[0] and keeps 0 (the in-or-out pattern changes every few taps).
      const uint64_t h = static_cast<uint64_t>(g.h), w = static_cast<uint64_t>(g.w);
      const T* const xs = x;
      for (int64_t i = 0; i < kc; ++i) {
        const int64_t bi = base[i], hi0 = h0[i], wi0 = w0[i];
        T* drow = d + i * NR;
        for (int64_t j = 0; j < width; ++j) {
          const bool in =
              (static_cast<uint64_t>(hi0 + rdh[j]) < h) & (static_cast<uint64_t>(wi0 + sdw[j]) < w);
          const T val = xs[in ? bi + coff[j] : 0];
          drow[j] = in ? val : T(0);
        }
        for (int64_t j = width; j < NR; ++j) drow[j] = T(0);
      }
    }
  }

  void pack(T* dst, int64_t pc, int64_t kc, int64_t v0, int64_t v1) const {
    constexpr int W = V::W;
    const int64_t plane = g.h * g.w, rows = g.rows(), rs = g.r * g.s;
    const int64_t kcw = round_up(kc, W);
    // The same pixels for every column: split them into row segments once.
    const bool unpadded = g.ph == 0 && g.pw == 0 && g.sw == 1;
    const int64_t nseg = unpadded && g.sh == 1 && g.q == g.w ? image_segments(g, u0 + pc, kc, segs)
                                                             : range_segments(g, u0 + pc, kc, segs);
    // The vector form (im2col.h) for padded or strided layers: the same table for every column
    // of the block.
    const int64_t img_stride = g.c_total * plane;
    VecTable<V> vt(table, table_cap);
    const bool vec = !unpadded && vt.build(g, img_stride, segs, nseg, kcw / W);
    if (!vec && g.q <= kShortRowPixels) {
      pack_short_rows(dst, pc, kc, v0, v1);
      return;
    }
    // Unpadded layers with output rows shorter than a vector, on AVX-512: the window form (see
    // TbWindow). With longer rows the segment copies are as cheap, and for 1x1 layers cheaper
    // (24->64 56x56 N2 0.136 -> 0.163 ms, 384->16 112x112 N2 2.54 -> 2.84 ms).
    if constexpr (HasPermute2<V>::value) {
      if (unpadded && g.q < V::W && pack_window(dst, pc, kc, v0, v1, nseg)) return;
    }
    for (int64_t v = v0; v < v1; ++v) {
      T* d = dst + (v - v0) * kc * NR;
      const int64_t t0 = v * NR, width = min64(NR, rows - t0);
      for (int64_t j = 0; j < NR; ++j) {
        T* srow = scratch + j * kcw;
        if (j >= width) {
          zero_run<V>(srow, kcw);
          continue;
        }
        const int64_t t = t0 + j, c = t / rs, r = (t / g.s) % g.r, s = t % g.s;
        const T* pl = x + (g.c0 + c) * plane;
        if (vec) {
          vt.row(pl, (g.c0 + c) * plane, n_img * img_stride, r * g.s + s, kcw / W, g.sw, srow);
          continue;
        }
        if (unpadded) {
          copy_segments(pl + r * g.dh * g.w + s * g.dw, nseg, kc, srow);
          continue;
        }
        for (int64_t i = 0; i < nseg; ++i) {
          gather_segment<V>(g, pl + segs[i].img * img_stride, r, s, segs[i], srow + segs[i].off);
        }
        if (kc < kcw) zero_run<V>(srow + kc, kcw - kc);
      }
      transpose_panel(d, kc);
    }
  }

  // One row of an unpadded layer's im2col^T from the block's segments, then zeros up to a whole
  // vector: `base` is the row's tap in image 0's plane. Every segment lies inside the plane, so
  // the copies have no bounds (LeNet's first layer has 24-pixel rows, where the bounds
  // arithmetic cost as much as the copy).
  void copy_segments(const T* base, int64_t nseg, int64_t kc, T* srow) const {
    const int64_t img_stride = g.c_total * g.h * g.w, kcw = round_up(kc, V::W);
    for (int64_t i = 0; i < nseg; ++i) {
      const Segment& sg = segs[i];
      copy_run<V>(base + sg.img * img_stride + sg.p * g.sh * g.w + sg.q, srow + sg.off, sg.len);
    }
    if (kc < kcw) zero_run<V>(srow + kc, kcw - kc);
  }

  // scratch[j][u] (NR rows of kc rounded up to W) -> d[u * NR + j], W x W blocks at a time.
  void transpose_panel(T* d, int64_t kc) const {
    constexpr int W = V::W;
    const int64_t kcw = round_up(kc, W);
    for (int64_t ub = 0; ub < kc; ub += W) {
      const int live = static_cast<int>(min64(W, kc - ub));
      for (int64_t jb = 0; jb < NR; jb += W) {
        typename V::V blk[W];
        for (int i = 0; i < W; ++i) blk[i] = V::load(scratch + (jb + i) * kcw + ub);
        V::transpose(blk);
        for (int i = 0; i < live; ++i) V::store(d + (ub + i) * NR + jb, blk[i]);
      }
    }
  }

  // pack() of an unpadded layer in the window form; false (nothing written) where a vector's
  // pixels span 2W or more. Apart from pack so that its loop keeps its own registers: inline,
  // other layers' backward-weights measured 8-18% slower.
  SIMDNN_NOINLINE bool pack_window(T* dst, int64_t pc, int64_t kc, int64_t v0, int64_t v1,
                                   int64_t nseg) const {
    TbWindow win;
    if (!win.build(*this, pc, kc)) return false;
    const int64_t plane = g.h * g.w, rows = g.rows(), rs = g.r * g.s;
    const int64_t img_stride = g.c_total * plane, kcw = round_up(kc, V::W);
    for (int64_t v = v0; v < v1; ++v) {
      T* d = dst + (v - v0) * kc * NR;
      const int64_t t0 = v * NR, width = min64(NR, rows - t0);
      for (int64_t j = 0; j < NR; ++j) {
        T* srow = scratch + j * kcw;
        if (j >= width) {
          zero_run<V>(srow, kcw);
          continue;
        }
        const int64_t t = t0 + j, c = t / rs, r = (t / g.s) % g.r, s = t % g.s;
        const int64_t at = (g.c0 + c) * plane + r * g.dh * g.w + s * g.dw;
        if (at + win.hi <= n_img * img_stride) {
          win.row(x + at, srow);
          continue;
        }
        // The last plane, whose windows would read past the tensor: segment copies.
        copy_segments(x + at, nseg, kc, srow);
      }
      transpose_panel(d, kc);
    }
    return true;
  }
};

template <typename T, int NR>
struct PlainC {
  T* c;
  int64_t n, ldc;
  int64_t panels() const { return ceil_div(n, NR); }
  int width(int64_t v) const { return static_cast<int>(min64(NR, n - v * NR)); }
  int64_t rs() const { return ldc; }
  T* at(int64_t i, int64_t v) const { return c + i * ldc + v * NR; }
};

}  // namespace
}  // namespace simdnn::SIMDNN_ISA_NS
