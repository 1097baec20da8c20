// 2-D pooling entry points shared by all ISAs (NCHW, float32/float64).
//
// Shape legend: x (N, C, H, W), window R x S, y (N, C, P, Q),
//   P = (H + 2*ph - R) / sh + 1, Q likewise (PyTorch's formula, floor mode).
// All tensors are C-contiguous. The bindings validate shapes before calling; kernels trust them,
// except the max-pool indices of the backward pass, which come from the user.
#pragma once

#include <cstdint>

namespace simdnn {

struct Pool2d {
  int64_t n = 0, c = 0, h = 0, w = 0;  // input
  int64_t r = 0, s = 0;                // window
  int64_t p = 0, q = 0;                // output
  int64_t sh = 1, sw = 1;              // stride
  int64_t ph = 0, pw = 0;              // padding (-inf for max, 0 for average)
  int nthreads = 1;
};

// Max-pool indices are window positions r * S + s of the maximum (the first in window order;
// NaN wins, as in PyTorch), stored as uint8 when R * S <= 256 and as int32 otherwise.
inline bool pool_index_is_u8(const Pool2d& pl) { return pl.r * pl.s <= 256; }

template <typename T>
using MaxPoolForwardFn = void (*)(const Pool2d& pl, const T* x, T* y, void* idx);
// dx = sum of dy routed to the arg-max positions. Returns the number of indices that are out of
// range or point into the padding; those are skipped, and the caller raises.
template <typename T>
using MaxPoolBackwardFn = int64_t (*)(const Pool2d& pl, const T* dy, const void* idx, T* dx);
template <typename T>
using AvgPoolForwardFn = void (*)(const Pool2d& pl, bool count_include_pad, const T* x, T* y);
template <typename T>
using AvgPoolBackwardFn = void (*)(const Pool2d& pl, bool count_include_pad, const T* dy, T* dx);

}  // namespace simdnn
