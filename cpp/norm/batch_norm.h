// Batch normalisation kernels: forward (training and eval) and backward.
//
// Shape legend: x, y, dy, dx are contiguous (N, C, S): N batch, C channels, S = the product of the
// spatial sizes (1 for an (N, C) input); each channel has M = N * S values. The per-channel arrays
// (weight, bias, running_mean, running_var, save_mean, save_invstd, dweight, dbias) have C
// elements. Sums are accumulated in double for both dtypes, the variance in two passes.
#pragma once

#include <cstdint>

namespace simdnn {

struct BatchNormParams {
  bool training = true;
  double momentum = 0.1, eps = 1e-5;
};

// training: save_mean = batch mean, save_invstd = 1 / sqrt(biased variance + eps); when
//   running_mean / running_var are given they are updated in place, r = (1 - momentum) r +
//   momentum stat, running_var with the unbiased variance (M > 1 is the caller's check). M == 0:
//   save_mean = 0, save_invstd = 1 / sqrt(eps) and the running statistics are left alone.
// eval: running_mean and running_var are required and only read; save_mean = running_mean,
//   save_invstd = 1 / sqrt(running_var + eps).
// y = (x - mean) * invstd * weight + bias; weight and bias may be null (1 and 0).
template <typename T>
using BatchNormForwardFn = void (*)(int64_t n, int64_t c, int64_t s, const T* x, const T* weight,
                                    const T* bias, T* running_mean, T* running_var, T* save_mean,
                                    T* save_invstd, T* y, const BatchNormParams& p, int nthreads);

// xhat = (x - save_mean) * save_invstd; dbias = sum dy; dweight = sum dy * xhat (sums over the M
// values of each channel). dx (skipped when null):
//   training: weight * invstd * (dy - mean(dy) - xhat * mean(dy * xhat))
//   eval:     weight * invstd * dy
// weight may be null (1).
template <typename T>
using BatchNormBackwardFn = void (*)(int64_t n, int64_t c, int64_t s, const T* dy, const T* x,
                                     const T* weight, const T* save_mean, const T* save_invstd,
                                     bool training, T* dx, T* dweight, T* dbias, int nthreads);

}  // namespace simdnn
