// Elementwise kernels of training: ReLU forward/backward and the fused optimiser updates.
// All arrays are contiguous, of n elements. Large arrays are split between threads.
#pragma once

#include <cmath>
#include <cstdint>

namespace simdnn {

// y = max(x, 0) (NaN stays NaN, as in PyTorch).
template <typename T>
using ReluFn = void (*)(int64_t n, const T* x, T* y, int nthreads);
// dx = dy * (x > 0 ? 1 : 0): NaN and Inf in dy propagate (IEEE), a NaN x counts as inactive.
template <typename T>
using ReluBackwardFn = void (*)(int64_t n, const T* dy, const T* x, T* dx, int nthreads);

struct SgdParams {
  double lr = 0.01, momentum = 0.0, weight_decay = 0.0;
  bool nesterov = false;
};
// In place, PyTorch's rule (velocity starts at zero, so the first step sets it to g):
//   g' = g + wd * p;  v = momentum * v + g';  p -= lr * (nesterov ? g' + momentum * v : v)
// (without momentum v is not touched: p -= lr * g').
template <typename T>
using SgdUpdateFn = void (*)(int64_t n, T* p, const T* g, T* v, const SgdParams& s, int nthreads);

struct AdamParams {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  double bias1 = 1.0, bias2 = 1.0;  // 1 - beta1^t and 1 - beta2^t of this step
};
// The bias corrections of step t >= 1 (computed in double, as PyTorch does). `static`: only the
// common code calls it, and no per-ISA copy can be merged into it.
static inline void adam_set_step(AdamParams* a, int64_t step) {
  a->bias1 = 1.0 - std::pow(a->beta1, static_cast<double>(step));
  a->bias2 = 1.0 - std::pow(a->beta2, static_cast<double>(step));
}
// In place: g' = g + wd * p; m = b1 m + (1 - b1) g'; v = b2 v + (1 - b2) g'^2;
//           p -= (lr / bias1) * m / (sqrt(v / bias2) + eps)
template <typename T>
using AdamUpdateFn = void (*)(int64_t n, T* p, const T* g, T* m, T* v, const AdamParams& a,
                              int nthreads);

}  // namespace simdnn
