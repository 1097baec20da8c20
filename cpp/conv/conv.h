// 2-D convolution entry points shared by all ISAs (NCHW, float32/float64).
//
// Shape legend: x (N, C, H, W), w (K, C/G, R, S), b (K,), y (N, K, P, Q); G groups.
//   P = (H + 2*ph - dh*(R-1) - 1) / sh + 1, Q likewise (PyTorch's formula).
// All tensors are C-contiguous. The bindings validate shapes before calling; kernels trust them.
#pragma once

#include <cstdint>

namespace simdnn {

// Which algorithm computes a convolution: automatic picks per layer (Winograd for eligible 3x3
// layers with enough channels, F(4x4, 3x3) or, on wider layers, F(2x2, 3x3): conv/winograd.h),
// direct forces the exact methods, winograd forces Winograd F(4x4, 3x3) and winograd_2x2
// Winograd F(2x2, 3x3) (the bindings refuse both for a layer they cannot compute).
enum class ConvAlgorithm : int { automatic = 0, direct = 1, winograd = 2, winograd_2x2 = 3 };

struct Conv2d {
  int64_t n = 0, c = 0, h = 0, w = 0;  // input
  int64_t k = 0, r = 0, s = 0;         // filters (K, C/G, R, S)
  int64_t p = 0, q = 0;                // output
  int64_t sh = 1, sw = 1;              // stride
  int64_t ph = 0, pw = 0;              // zero padding
  int64_t dh = 1, dw = 1;              // dilation
  int64_t groups = 1;
  int nthreads = 1;
  ConvAlgorithm algorithm = ConvAlgorithm::automatic;
};

// Rows (or columns) of the zero-padded input that `out` outputs reach: the extent of the padded
// planes the direct, depthwise and filters-in-lanes kernels read.
static inline int64_t padded_extent(int64_t out, int64_t stride, int64_t taps, int64_t dilation) {
  return (out - 1) * stride + (taps - 1) * dilation + 1;
}

// Whether Winograd (either tile) can compute this layer: a 3x3 kernel, stride 1, no dilation, one
// group; for backward-data also padding at most 2 (it convolves dY with padding 2 - pad). The
// bindings check it for algorithm=winograd; static, so that each ISA's copy stays its own (no
// linker merging of code built with wide-ISA flags).
static inline bool winograd_eligible(const Conv2d& cv, bool backward_data) {
  return cv.r == 3 && cv.s == 3 && cv.sh == 1 && cv.sw == 1 && cv.dh == 1 && cv.dw == 1 &&
         cv.groups == 1 && cv.ph >= 0 && cv.pw >= 0 &&
         (!backward_data || (cv.ph <= 2 && cv.pw <= 2));
}

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
