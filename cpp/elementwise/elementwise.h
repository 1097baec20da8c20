// Elementwise kernels of training: ReLU forward/backward, the bias gradient and the fused
// optimiser updates. All arrays are contiguous, of n elements (the bias gradient: M x N). Large
// arrays are split between threads.
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

// The bias gradient of a Linear layer, and its fused ReLU's gate (gemm.h's epilogue), in one pass
// over dy. Shape: dy, y, dx (M, N) contiguous rows; db (N,).
//   y given (the layer's output after its ReLU): dx = dy * (y > 0 ? 1 : 0), as relu_backward;
//   db = (accumulate ? db : 0) + the column sums of dx (of dy when y is null; dx is not written).
// dx may be dy itself.
template <typename T>
using BiasBackwardFn = void (*)(int64_t m, int64_t n, const T* dy, const T* y, T* dx, T* db,
                                bool accumulate, int nthreads);

// Softmax cross-entropy of logits x (N, D) against class labels (N,) in [0, D), averaged over
// the batch: *loss = mean(logsumexp(x_i) - x_i[t_i]) (summed in double), and its gradient with
// respect to x, grad (N, D) = (softmax(x_i) - onehot(t_i)) / N, in the same pass. Labels are
// checked by the caller.
template <typename T>
using SoftmaxCrossEntropyFn = void (*)(int64_t n, int64_t d, const T* x, const int64_t* labels,
                                       T* grad, double* loss, int nthreads);

struct SgdParams {
  double lr = 0.01, momentum = 0.0, weight_decay = 0.0;
  bool nesterov = false;
};
// One parameter of an update: n elements of p, its gradient g and its state (v; Adam's m and v),
// each contiguous. The updates take every parameter of a model at once and split their elements
// between the threads as one flat range, in one parallel region: per parameter, an MLP's
// 256 x 256 weight (65,536 elements, one grain) ran on one thread beside its 784 x 256 neighbour
// split in two, and each parameter paid its own fork and join. SGD with momentum over that MLP's
// 269,322 float32 parameters, 2 threads, Intel Xeon VM (Emerald Rapids class), best of 5 x 500
// calls: 68-82 us per parameter, 57 us as one range.
template <typename T>
struct SgdJob {
  T* p;
  const T* g;
  T* v;  // null without momentum
  int64_t n;
};
template <typename T>
struct AdamJob {
  T* p;
  const T* g;
  T *m, *v;
  int64_t n;
};

// In place, PyTorch's rule (velocity starts at zero, so the first step sets it to g):
//   g' = g + wd * p;  v = momentum * v + g';  p -= lr * (nesterov ? g' + momentum * v : v)
// (without momentum v is not touched: p -= lr * g').
template <typename T>
using SgdUpdateFn = void (*)(const SgdJob<T>* jobs, int64_t count, const SgdParams& s,
                             int nthreads);

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
using AdamUpdateFn = void (*)(const AdamJob<T>* jobs, int64_t count, const AdamParams& a,
                              int nthreads);

}  // namespace simdnn
