// 2-D convolution, forward and both backward passes, for one ISA (compiled once per ISA with that
// ISA's flags and -DSIMDNN_ISA_NS=<isa>): the entry points. Everything else is in headers of this
// folder, each in an unnamed namespace inside the ISA's namespace, so nothing compiled with
// wide-ISA flags can be merged by the linker into code that runs on a narrower CPU:
//   im2col.h         geometry, im2col gathering of one panel
//   gemm_policies.h  how conv feeds the GEMM engine: A/B/C operand policies, implicit_gemm
//   depthwise.h      direct depthwise kernels (G = C = K), forward and both backward passes
//   direct.h         direct kernels: forward with few filters, backward-weights with few rows
//   weights_lanes.h  backward-weights with the input channels in the lanes (short output rows, or
//                    long rows whose channel vectors are at least 3/4 full)
//   backward_data.h  the backward-data strategies (flipped, col2im) and their chooser
//   winograd.h       Winograd F(4x4, 3x3) for stride-1 3x3 layers, all three passes
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
//   backward-data    a forward convolution of dY with the flipped, transposed filters (no
//                    scatter-add), or col(n) (CgRS x PQ) = W_g^T . dY_g[n], then col2im adds col
//                    into dX: backward_data_strategy() picks one.
//   backward-weights dW_g (Kg x CgRS) = sum over n of dY_g[n] (Kg x PQ) . im2col(X_g[n])^T; the
//                    N*PQ reduction is split between threads (partial dW per thread, added at
//                    the end), so both cores work even at batch 1; db is summed while dY is packed.
// Stride-1 3x3 layers with enough channels take Winograd F(4x4, 3x3) instead (winograd.h: 36
// GEMMs over transformed tiles, 4x fewer FMAs); algorithm=direct keeps them on the paths above.
// Depthwise convolutions (G = C = K) are not GEMMs (one row per group): they have direct kernels
// vectorised along W.
#include "conv/conv.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common/int_math.h"
#include "common/parallel.h"
#include "conv/backward_data.h"
#include "conv/depthwise.h"
#include "conv/direct.h"
#include "conv/gemm_policies.h"
#include "conv/im2col.h"
#include "conv/weights_lanes.h"
#include "conv/winograd.h"
#include "gemm/gemm_driver.h"
#include "gemm/gemm_isa.h"
#include "registry.h"

namespace simdnn::SIMDNN_ISA_NS {

namespace {

// ------------------------------------------------------------------------------------------------
// Entry points

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
  // Winograd where chosen; a result that is not all finite is recomputed below (winograd.h).
  const WinogradTile tile = winograd_tile(cv, WinogradPass::forward);
  if (tile != WinogradTile::none && winograd_forward(tile, cv, x, w, b, y)) return;
  if (direct_forward_eligible<T>(cv)) {
    direct_forward(cv, x, w, b, y);
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
void conv_backward_data(const Conv2d& cv_in, const T* dy, const T* w, T* dx) {
  const Conv2d cv = canonical(cv_in);
  const int64_t x_size = cv.n * cv.c * cv.h * cv.w;
  if (x_size == 0) return;
  if (cv.k == 0 || cv.p == 0 || cv.q == 0) {
    for (int64_t i = 0; i < x_size; ++i) dx[i] = T(0);
    return;
  }
  const WinogradTile tile = winograd_tile(cv, WinogradPass::backward_data);
  if (tile != WinogradTile::none && winograd_backward_data(tile, cv, dy, w, dx)) return;
  switch (backward_data_strategy(cv, w)) {
    case BackwardData::depthwise:
      depthwise_backward_data(cv, dy, w, dx);
      return;
    case BackwardData::flipped:
      backward_data_flipped(cv, dy, w, dx);
      return;
    case BackwardData::col2im:
      backward_data_col2im(cv, dy, w, dx);
      return;
  }
}

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
  const WinogradTile tile = winograd_tile(cv, WinogradPass::backward_weights);
  if (tile != WinogradTile::none && winograd_backward_weights(tile, cv, x, dy, dw, db)) return;
  using UK = typename UkernelFor<T>::type;
  using V = typename UK::V;
  constexpr int NR = UK::NR;
  // Split the N*PQ reduction into one contiguous range per thread. A thread must get enough
  // multiply-adds to repay its share of the final sum of partial dW (K * CgRS additions): at least
  // 2^21, about 10 us on one core. (Counting pixels instead left LeNet's second layer, 4096
  // pixels of 25,000 multiply-adds each, on one thread.)
  const int64_t macs = total * kg * crs;
  // Channels in the lanes where eligible (weights_lanes.h), else few reduction rows or filters:
  // the direct kernel (direct.h), whose tasks take whole images.
  const bool lanes = lanes_weights_eligible<T>(cv);
  const bool direct = !lanes && direct_weights_eligible<T>(cv);
  if (direct && cv.n < cv.nthreads && !pointwise_unpadded(cv)) {
    // Fewer images than threads: tasks take ranges of input channels instead, each writing the
    // rows of dw its channels reach, so there are no partial sums to add.
    const int nt =
        static_cast<int>(max64(1, min64(min64(cv.nthreads, cv.c), macs / grain::kConvWeightMacs)));
    parallel_for(nt, nt, [&](int64_t t) {
      direct_weights_task(cv, x, dy, 0, cv.n, cv.c * t / nt, cv.c * (t + 1) / nt, dw,
                          t == 0 ? db : nullptr);
    });
    return;
  }
  const int nt = static_cast<int>(max64(
      1, min64(min64(cv.nthreads, direct || lanes ? cv.n : total), macs / grain::kConvWeightMacs)));
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
    if (direct || lanes) {
      int64_t n0, n1;
      split_range(cv.n, 1, nt, tid, &n0, &n1);
      if (n0 >= n1) {
        for (int64_t i = 0; i < w_size; ++i) my_dw[i] = T(0);
        return;
      }
      if (lanes) {
        lanes_weights_task(cv, x, dy, n0, n1, my_dw, my_db);
      } else {
        direct_weights_task(cv, x, dy, n0, n1, int64_t(0), cv.c, my_dw, my_db);
      }
      return;
    }
    // Im2colTB's gather rows, its segment list, then its vector-form table.
    const int64_t seg_offset = round_up(NR * kcw * static_cast<int64_t>(sizeof(T)), 64);
    const int64_t table_offset =
        round_up(seg_offset + (bl.kc + 2) * static_cast<int64_t>(sizeof(Segment)), 64);
    using Table = VecTable<V>;
    const int64_t table_cap =
        min64(rs * (kcw / V::W) * Table::kEntries,
              round_down(kVecTableBytesTB / Table::bytes(1), Table::kEntries));
    char* aux = static_cast<char*>(
        workspace(WorkspaceSlot::pack_aux, table_offset + Table::bytes(table_cap)));
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
      const Im2colTB<V, NR> B{x,    forward_geometry(cv, grp), a0,       scratch, segs,
                              cv.n, aux + table_offset,        table_cap};
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
