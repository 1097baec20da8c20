// 2-D convolution, forward and both backward passes, for one ISA (compiled once per ISA with that
// ISA's flags and -DSIMDNN_ISA_NS=<isa>).
//
// Shape legend: x (N, C, H, W), w (K, C/G, R, S), b (K,), y (N, K, P, Q); G groups,
// Cg = C/G and Kg = K/G channels per group; PQ = P*Q pixels per output plane.
//
// All three passes are implicit GEMMs on the GEMM engine (gemm_driver.h) and its micro-kernels;
// im2col never exists as a whole: it is produced panel by panel while packing B.
//   forward          Y_g[n] (Kg x PQ)  = W_g (Kg x CgRS) . im2col(X_g[n]) (CgRS x PQ)  [+ b]
//                    all images at once: the columns are the N x PQ pixels, in panels that never
//                    straddle two images, written straight into NCHW. The bias rides along as one
//                    more reduction row (a row of ones in B, a column b in A), so it costs no pass.
//   backward-data    stride 1 and Cg >= kFlipMinChannels: a forward convolution of dY with the
//                    flipped, transposed filters and padding dh*(R-1) - ph (no scatter-add).
//                    Otherwise col(n) (CgRS x PQ) = W_g^T . dY_g[n], then col2im adds col into dX.
//   backward-weights dW_g (Kg x CgRS) = sum over n of dY_g[n] (Kg x PQ) . im2col(X_g[n])^T; the
//                    N*PQ reduction is split between threads (partial dW per thread, added at
//                    the end), so both cores work even at batch 1; db is summed while dY is packed.
// Depthwise convolutions (G = C = K) are not GEMMs (one row per group): they have direct kernels
// vectorised along W.
#include "conv/conv.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common/int_math.h"
#include "common/parallel.h"
#include "gemm/gemm_driver.h"
#include "gemm/gemm_isa.h"
#include "registry.h"

namespace simdnn::SIMDNN_ISA_NS {

namespace {

// Backward-data as a flipped forward convolution needs Cg output rows per group; below this the
// GEMM has too few rows for the micro-tile (LeNet's first layer, C = 1, would use 1 of 12 rows)
// and the col2im form, whose GEMM has CgRS rows, is faster. It also does H*W / (P*Q) times the
// necessary FLOPs (taps over dY's zero border), so it is used only up to a ratio of 1.25: LeNet's
// second layer (12x12 from 8x8, ratio 2.25) ran at 1.08x the NumPy twin flipped and faster with
// col2im.
constexpr int64_t kFlipMinChannels = 8;

// ------------------------------------------------------------------------------------------------
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
        // 2*cnt - 1 elements: the odd lane after the last output may lie past the plane.
        V::load2n(src, 2 * cnt - 1, v, odd);
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

// B = im2col, columns = the output pixels of n_img images, NR-wide panels per image
// (ppi panels per image). Reduction row t = (c, r, s), plus a row of ones at t = rows() when the
// bias is fused.
template <class V, int NR>
struct Im2colB {
  using T = typename V::T;
  const T* src;  // image 0
  Im2col g;
  int64_t ppi;
  bool ones_row;

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

  void pack(T* dst, int64_t pc, int64_t kc, int64_t v0, int64_t v1) const {
    const int64_t plane = g.h * g.w, pq = g.p * g.q, rs = g.r * g.s, rows = g.rows();
    const bool pointwise = g.r == 1 && g.s == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 &&
                           g.pw == 0 && g.p == g.h && g.q == g.w;
    Run runs[kMaxRuns];
    for (int64_t v = v0; v < v1; ++v) {
      const int64_t n = v / ppi, j0 = (v % ppi) * NR, width = min64(NR, pq - j0);
      const T* img = src + n * g.c_total * plane + g.c0 * plane;
      T* d = dst + (v - v0) * kc * NR;
      Segment seg[NR];
      const int nseg = pointwise ? 0 : segments(g, j0, width, seg);
      // Only where a block reuses each entry (C/groups >= 2 within the block): for LeNet's first
      // layer, one channel, tabulating cost more than it saved.
      const bool tabulated = !pointwise && g.sw == 1 && rs * nseg <= kMaxRuns && kc >= 2 * rs;
      if (tabulated) {
        for (int64_t tap = 0; tap < rs; ++tap) {
          const int64_t r = tap / g.s, s = tap % g.s;
          for (int i = 0; i < nseg; ++i) {
            const Segment& sg = seg[i];
            const int64_t hi = sg.p * g.sh - g.ph + r * g.dh;
            const int64_t w0 = sg.q - g.pw + s * g.dw;
            Run& run = runs[tap * nseg + i];
            if (hi < 0 || hi >= g.h) {
              run = Run{-1, 0, 0};
            } else {
              const int64_t lo = min64(sg.len, max64(0, -w0));
              const int64_t hj = max64(lo, min64(sg.len, g.w - w0));
              run = Run{hi * g.w + w0 + lo, static_cast<int32_t>(lo), static_cast<int32_t>(hj)};
            }
          }
        }
      }
      // (c, r, s) of reduction row pc, then stepped along.
      int64_t c = pc / rs, r = (pc / g.s) % g.r, s = pc % g.s;
      for (int64_t t = pc; t < pc + kc; ++t, d += NR) {
        if (t >= rows) {  // the bias row
          for (int64_t j = 0; j < width; ++j) d[j] = T(1);
          continue;
        }
        const T* pl = img + c * plane;
        if (pointwise) {
          // 1x1, stride 1, no padding: the panel is a contiguous run of the plane.
          std::memcpy(d, pl + j0, width * sizeof(T));
        } else if (tabulated) {
          const Run* tr = runs + (r * g.s + s) * nseg;
          for (int i = 0; i < nseg; ++i) {
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
          for (int i = 0; i < nseg; ++i) gather_segment<V>(g, pl, r, s, seg[i], d + seg[i].off);
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
};

// C = an NCHW output: rows are the group's channels, columns the pixels of n_img images.
template <typename T, int NR>
struct ImageC {
  T* y;             // image 0, channel 0
  int64_t k_total;  // channels per image
  int64_t k0;       // this group's first channel
  int64_t pq, ppi, n_img;
  int64_t panels() const { return n_img * ppi; }
  int width(int64_t v) const { return static_cast<int>(min64(NR, pq - (v % ppi) * NR)); }
  int64_t rs() const { return pq; }
  T* at(int64_t i, int64_t v) const {
    return y + (v / ppi) * k_total * pq + (k0 + i) * pq + (v % ppi) * NR;
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
  const Im2colB<typename UK::V, NR> B{src, g, ppi, bias != nullptr};
  const ImageC<T, NR> C{out, k_total, k0, pq, ppi, n_img};
  // Gathering im2col costs more per element than copying a matrix row: model it as a transposed
  // B in the thread grid.
  gemm_detail::gemm_engine<UK>(A, B, C, kred, T(1), T(0), nthreads, true);
}

// ------------------------------------------------------------------------------------------------
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
// Whether all n values are finite. Backward-data as a convolution of the zero-padded dY with the
// flipped weights multiplies weights by dY's border zeros, terms that dX does not have: with an
// Inf weight they give Inf * 0 = NaN where the true gradient (the twin's, PyTorch's) is finite.
// Such weights take the paths that add only the real terms. The scan is K*C*R*S reads, N*P*Q
// times fewer than the convolution.
template <typename T>
bool all_finite(const T* v, int64_t n) {
  // x - x is 0 for finite x and NaN for Inf and NaN: one sum, no branches, vectorised.
  T acc = T(0);
  for (int64_t i = 0; i < n; ++i) acc += v[i] - v[i];
  return acc == T(0);
}

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

static inline bool is_depthwise(const Conv2d& cv) {
  return cv.groups > 1 && cv.groups == cv.c && cv.groups == cv.k;
}

static inline Im2col forward_geometry(const Conv2d& cv, int64_t group) {
  const int64_t cg = cv.c / cv.groups;
  return Im2col{cv.c,  group * cg, cg,    cv.h,  cv.w,  cv.r, cv.s, cv.sh,
                cv.sw, cv.ph,      cv.pw, cv.dh, cv.dw, cv.p, cv.q};
}

// ------------------------------------------------------------------------------------------------
// Entry points

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

template <typename T>
void conv_forward(const Conv2d& cv_in, const T* x, const T* w, const T* b, T* y) {
  const Conv2d cv = canonical(cv_in);
  if (cv.n == 0 || cv.k == 0 || cv.p == 0 || cv.q == 0) return;
  if (cv.c == 0) {
    // No input channels: an empty reduction, y = bias (or 0). The GEMM engine does nothing for an
    // empty reduction, which left y uninitialised (found by the property tests).
    const int64_t pq = cv.p * cv.q;
    for (int64_t i = 0; i < cv.n * cv.k; ++i) {
      const T v = b != nullptr ? b[i % cv.k] : T(0);
      std::fill(y + i * pq, y + (i + 1) * pq, v);
    }
    return;
  }
  if (is_depthwise(cv)) {
    depthwise_forward(forward_geometry(cv, 0), cv.n, x, w, b, y, cv.nthreads);
    return;
  }
  const int64_t kg = cv.k / cv.groups, crs = (cv.c / cv.groups) * cv.r * cv.s;
  for (int64_t grp = 0; grp < cv.groups; ++grp) {
    implicit_gemm<T>(forward_geometry(cv, grp), cv.n, x, w + grp * kg * crs,
                     b != nullptr ? b + grp * kg : nullptr, kg, y, cv.k, grp * kg, cv.nthreads);
  }
}

// col2im: dx[n] channels c0 + [cb, ce) += their rows of col, col = (Cg*R*S) x PQ.
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
void conv_backward_data(const Conv2d& cv_in, const T* dy, const T* w, T* dx) {
  const Conv2d cv = canonical(cv_in);
  const int64_t x_size = cv.n * cv.c * cv.h * cv.w;
  if (x_size == 0) return;
  if (cv.k == 0 || cv.p == 0 || cv.q == 0) {
    for (int64_t i = 0; i < x_size; ++i) dx[i] = T(0);
    return;
  }
  if (is_depthwise(cv)) {
    depthwise_backward_data(cv, dy, w, dx);
    return;
  }
  using UK = typename UkernelFor<T>::type;
  const int64_t cg = cv.c / cv.groups, kg = cv.k / cv.groups, rs = cv.r * cv.s;
  const int64_t crs = cg * rs, krs = kg * rs;

  // The flipped convolution computes every output pixel over all R x S taps, also where the taps
  // fall into dY's zero border: H*W / (P*Q) times the FLOPs that matter. col2im does only those.
  const bool flip = cv.sh == 1 && cv.sw == 1 && cg >= kFlipMinChannels &&
                    cv.h * cv.w * 4 <= cv.p * cv.q * 5 && all_finite(w, cv.k * crs);
  if (flip) {
    // dx = conv(dy, w'), w'[c, k, r', s'] = w[k, c, R-1-r', S-1-s'] per group, padding
    // dh*(R-1) - ph (negative: the output is a crop).
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
    return;
  }

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
        if (db != nullptr) {
          for (int64_t j = 0; j < run; ++j) sum += src[j];
        }
        u += run;
      }
      if (db != nullptr) db[r + i] += sum;
    }
  }
};

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

  void pack(T* dst, int64_t pc, int64_t kc, int64_t v0, int64_t v1) const {
    using R = typename V::V;
    constexpr int W = V::W;
    const int64_t plane = g.h * g.w, rows = g.rows(), rs = g.r * g.s;
    const int64_t kcw = round_up(kc, W);
    // The same pixels for every column: split them into row segments once.
    const int64_t nseg = range_segments(g, u0 + pc, kc, segs);
    const bool unpadded = g.ph == 0 && g.pw == 0 && g.sw == 1;
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
        const int64_t img_stride = g.c_total * plane;
        if (unpadded) {
          // Every segment lies inside the plane: a copy with no bounds (LeNet's first layer has
          // 24-pixel rows, where the bounds arithmetic cost as much as the copy).
          const T* base = pl + r * g.dh * g.w + s * g.dw;
          for (int64_t i = 0; i < nseg; ++i) {
            const Segment& sg = segs[i];
            copy_run<V>(base + sg.img * img_stride + sg.p * g.sh * g.w + sg.q, srow + sg.off,
                        sg.len);
          }
        } else {
          for (int64_t i = 0; i < nseg; ++i) {
            gather_segment<V>(g, pl + segs[i].img * img_stride, r, s, segs[i], srow + segs[i].off);
          }
        }
        if (kc < kcw) zero_run<V>(srow + kc, kcw - kc);
      }
      // Transpose W x W blocks: scratch[j][u] -> d[u * NR + j].
      for (int64_t ub = 0; ub < kc; ub += W) {
        const int live = static_cast<int>(min64(W, kc - ub));
        for (int64_t jb = 0; jb < NR; jb += W) {
          R blk[W];
          for (int i = 0; i < W; ++i) blk[i] = V::load(scratch + (jb + i) * kcw + ub);
          V::transpose(blk);
          for (int i = 0; i < live; ++i) V::store(d + (ub + i) * NR + jb, blk[i]);
        }
      }
    }
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

template <typename T>
void conv_backward_weights(const Conv2d& cv_in, const T* x, const T* dy, T* dw, T* db) {
  const Conv2d cv = canonical(cv_in);
  const int64_t cg = cv.c / cv.groups, kg = cv.k / cv.groups, rs = cv.r * cv.s, crs = cg * rs;
  const int64_t w_size = cv.k * crs;
  const int64_t pq = cv.p * cv.q, total = cv.n * pq;
  if (w_size == 0) {
    // No weights (C = 0), but db is still the sum of dy: it used to be set to 0 (found by the
    // property tests). Rare, so a plain loop in float64.
    if (db != nullptr) {
      for (int64_t k = 0; k < cv.k; ++k) {
        double sum = 0;
        for (int64_t i = 0; i < cv.n; ++i) {
          const T* plane = dy + (i * cv.k + k) * pq;
          for (int64_t j = 0; j < pq; ++j) sum += static_cast<double>(plane[j]);
        }
        db[k] = static_cast<T>(sum);
      }
    }
    return;
  }
  if (total == 0) {
    for (int64_t i = 0; i < w_size; ++i) dw[i] = T(0);
    if (db != nullptr) {
      for (int64_t k = 0; k < cv.k; ++k) db[k] = T(0);
    }
    return;
  }
  if (is_depthwise(cv)) {
    depthwise_backward_weights(cv, x, dy, dw, db);
    return;
  }
  using UK = typename UkernelFor<T>::type;
  using V = typename UK::V;
  constexpr int NR = UK::NR;
  // Split the N*PQ reduction into one contiguous range per thread. A thread must get enough
  // multiply-adds to repay its share of the final sum of partial dW (K * CgRS additions): at least
  // 2^21, about 10 us on one core. (Counting pixels instead left LeNet's second layer, 4096
  // pixels of 25,000 multiply-adds each, on one thread.)
  const int64_t macs = total * kg * crs;
  const int nt =
      static_cast<int>(max64(1, min64(min64(cv.nthreads, total), macs / grain::kConvWeightMacs)));
  const int64_t part = round_up(w_size + cv.k, 16);  // dw then db, per extra thread
  T* partials =
      nt > 1 ? static_cast<T*>(workspace(WorkspaceSlot::op_scratch, (nt - 1) * part * sizeof(T)))
             : nullptr;
  const GemmBlocking bl = gemm_detail::make_blocking(UK::MR, NR, sizeof(T), 0);
  const int64_t kcw = round_up(bl.kc, V::W) + V::W;

  // Each thread: one GEMM per group over its range of the N*PQ reduction, into its own dW (thread 0
  // straight into dw) and db.
  auto work = [&](int tid) {
    T* my_dw = tid == 0 ? dw : partials + (tid - 1) * part;
    T* my_db = db == nullptr ? nullptr : (tid == 0 ? db : partials + (tid - 1) * part + w_size);
    // dW is written by the GEMM (beta = 0); db accumulates while dY is packed.
    if (my_db != nullptr) {
      for (int64_t k = 0; k < cv.k; ++k) my_db[k] = T(0);
    }
    // Im2colTB's gather rows, then its segment list.
    const int64_t seg_offset = round_up(NR * kcw * static_cast<int64_t>(sizeof(T)), 64);
    char* aux = static_cast<char*>(workspace(
        WorkspaceSlot::pack_aux, seg_offset + (bl.kc + 2) * static_cast<int64_t>(sizeof(Segment))));
    T* scratch = reinterpret_cast<T*>(aux);
    Segment* segs = reinterpret_cast<Segment*>(aux + seg_offset);
    int64_t a0, a1;
    split_range(total, 1, nt, tid, &a0, &a1);
    if (a0 >= a1) {
      for (int64_t i = 0; i < w_size; ++i) my_dw[i] = T(0);
      return;
    }
    for (int64_t grp = 0; grp < cv.groups; ++grp) {
      const GradA<T, UK::MR> A{dy + grp * kg * pq,
                               kg,
                               cv.k,
                               pq,
                               a0,
                               a1 - a0,
                               my_db != nullptr ? my_db + grp * kg : nullptr};
      const Im2colTB<V, NR> B{x, forward_geometry(cv, grp), a0, scratch, segs};
      const PlainC<T, NR> C{my_dw + grp * kg * crs, crs, crs};
      gemm_detail::gemm_engine<UK>(A, B, C, a1 - a0, T(1), T(0), 1, true);
    }
  };
  if (nt == 1) {
    work(0);
    return;
  }
  // Each task's GEMM takes the workspace of the thread that runs it; a failure to grow is
  // rethrown here. Task t writes partial t, whichever thread runs it.
  parallel_for(nt, nt, [&](int64_t t) { work(static_cast<int>(t)); });
  // dw += the other tasks' partial sums, split over the elements.
  const int64_t sum_len = w_size + (db != nullptr ? cv.k : 0);
  parallel_ranges(sum_len, grain::kElementwise, 16, nt, [&](int64_t i0, int64_t i1) {
    for (int t = 1; t < nt; ++t) {
      const T* src = partials + (t - 1) * part;
      for (int64_t i = i0; i < i1; ++i) {
        if (i < w_size) {
          dw[i] += src[i];
        } else {
          db[i - w_size] += src[i];
        }
      }
    }
  });
}

}  // namespace

SIMDNN_REGISTER_OP(conv_forward, conv_forward)
SIMDNN_REGISTER_OP(conv_backward_data, conv_backward_data)
SIMDNN_REGISTER_OP(conv_backward_weights, conv_backward_weights)

}  // namespace simdnn::SIMDNN_ISA_NS
