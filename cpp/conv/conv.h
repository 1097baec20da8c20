// 2-D convolution entry points shared by all ISAs (NCHW, float32/float64).
//
// Shape legend: x (N, C, H, W), w (K, C/G, R, S), b (K,), y (N, K, P, Q); G groups.
//   P = (H + 2*ph - dh*(R-1) - 1) / sh + 1, Q likewise (PyTorch's formula).
// All tensors are C-contiguous. The bindings validate shapes before calling; kernels trust them.
#pragma once

#include <cstdint>

namespace simdnn {

struct Conv2d {
  int64_t n = 0, c = 0, h = 0, w = 0;  // input
  int64_t k = 0, r = 0, s = 0;         // filters (K, C/G, R, S)
  int64_t p = 0, q = 0;                // output
  int64_t sh = 1, sw = 1;              // stride
  int64_t ph = 0, pw = 0;              // zero padding
  int64_t dh = 1, dw = 1;              // dilation
  int64_t groups = 1;
  int nthreads = 1;
};

// y = conv(x, w) + b (b may be null).
template <typename T>
using ConvForwardFn = void (*)(const Conv2d& cv, const T* x, const T* w, const T* b, T* y);
// dx = d(sum(y * dy)) / dx: the transposed convolution of dy with w.
template <typename T>
using ConvBackwardDataFn = void (*)(const Conv2d& cv, const T* dy, const T* w, T* dx);
// dw = d(sum(y * dy)) / dw, db = sum of dy over N, P, Q (db may be null).
template <typename T>
using ConvBackwardWeightsFn = void (*)(const Conv2d& cv, const T* x, const T* dy, T* dw, T* db);

}  // namespace simdnn
