// Batch normalisation for one ISA (see batch_norm.h), in three layouts of the loops:
// - row path (S >= kRowPathMinS, S the values of one channel in one image, contiguous): threads
//   split the channels and do all the passes of a channel in turn, so no barrier is needed and,
//   for channels of up to ~1 MiB (the L2 of one Zen 5 core), the second and third passes read from
//   cache; runs of S values are reduced with hand-written SIMD into double accumulators (Wide);
// - column path (small S, e.g. the (N, C) input of BatchNorm1d, where a channel's values are C
//   apart): threads split the rows; per row of C * S values, per-column double sums updated lane
//   by lane (a vertical update: the compiler vectorises it without reassociating anything), then
//   reduced per channel;
// - split path (fewer channels than threads; C = 1 is a single contiguous run): the row path's
//   loops over ranges of each channel, one parallel region per pass.
//
// Accuracy: every sum is accumulated in double. float32 values are widened exactly and products
// of two widened floats are exact in double, so a float32 sum of M values carries the rounding of
// a double sum (M / W * 1.1e-16 at worst, in W lanes): as good as PyTorch's double accumulation.
// For float64 the lanes are plain sequential sums, worst case M / W ulps and typically
// sqrt(M / W) ulps (1e-13 relative for M = 2^24); NumPy's pairwise sum is tighter, but these sums
// only feed a mean and a variance whose own rounding is of that size. The variance is computed in
// two passes from d = x - mean, with the mean split into high and low parts in T (Split), by the
// corrected two-pass formula (sum d^2 - (sum d)^2 / M) / M: a mean of 1e4 with a standard
// deviation of 1 costs no digits (E[x^2] - E[x]^2 in float32 would lose all of them). y is
// computed from the same d, never as x * scale + shift, which cancels in the same way.
//
// Speed, (64, 64, 32, 32) float32 training (16 MiB x), AMD EPYC (Zen 5), best of thousands of calls
// over 90 s on 2 cores shared with other jobs; GB/s count the bytes that must move (forward: x
// read, y written; backward: x and dy read, dx written): forward 0.88 ms = 38 GB/s on 2 threads
// (1.54 ms = 22 GB/s on 1), backward 1.01 ms = 50 GB/s (1.91 ms = 26 GB/s on 1). The NumPy twin
// (float64 internally) took 25.9 ms = 1.3 GB/s forward and 36 ms = 1.4 GB/s backward on a quieter
// machine. Measured by timing simdnn.ops.batch_norm / batch_norm_backward against simdnn.reference.
//
#include "norm/batch_norm.h"

#include <cmath>
#include <cstdint>
#include <vector>

#include "common/compiler.h"
#include "common/int_math.h"
#include "common/parallel.h"
#include "registry.h"
#include "simd/simd.h"

namespace simdnn::SIMDNN_ISA_NS {

namespace {

// Threads: one per kParallelMin elements (up to the thread count). Forced onto 2 threads, float32
// training forward / backward took (1 thread -> 2 threads, us): row path (N, 16, 256) with 32K
// elements 6.4 -> 6.8 / 5.8 -> 6.2, 64K 12.2 -> 10.5 / 11.0 -> 9.5; column path (N, 32) with
// 32K 11.4 -> 11.5 / 9.3 -> 9.1, 64K 22.5 -> 17.5 / 18.9 -> 14.4. So 2 threads from just above 32K.
constexpr int64_t kParallelMin = 1 << 15;

// Channels whose runs are shorter than this take the column path. Short runs cost the row path a
// scattered access (and a vector loop start, a scalar tail) per image; on (N, 64, S) float32 of
// 16 MiB, one thread, the forward took (row / column path): S = 16: 9.7 / 1.9 ms, S = 32:
// 4.4 / 2.2 ms, S = 64: 3.3 / 3.4 ms, S = 128: 2.4 / 3.4 ms, S = 1024: 1.6 / 6.0 ms.
constexpr int64_t kRowPathMinS = 64;

// ------------------------------------------------------------------------------------------------
// Wide: double accumulators fed from T vectors. add(a, v) adds the lanes of v; fma(a, u, v) adds
// the lanes of u * v, both widened first, so the product is exact for float32. A float32 vector
// needs two double vectors (a[0], a[1]); a float64 vector uses a[0] only.
// Not unrolled further: one add chain (latency 4 cycles) per AVX-512 vector of 16 floats is
// 16 bytes per cycle, about 64 GB/s per core at 4 GHz, above what one core streams here: on
// (64, 64, 32, 32) float32, one thread, the backward's reduction alone (need_dx=False: reads x
// and dy) took 0.79 ms, the eval forward (reads x, writes y, no reduction) 0.73 ms.
#if defined(SIMDNN_ISA_IS_AVX512)
// The zero-masking forms with a full mask, and a store instead of _mm512_reduce_add_pd: the plain
// conversion, extract and cast intrinsics pass _mm512_undefined_*() as the merge source, which
// GCC 12 reports as maybe-uninitialized (GCC bug 105593, as in simd_avx512.h); the compiler emits
// the same unmasked instructions.
struct Wide {
  using D = __m512d;
  static D zero() { return _mm512_setzero_pd(); }
  // Half h (0 or 1) of a float vector, widened.
  template <int h>
  static __m512d half(__m512 v) {
    return _mm512_maskz_cvtps_pd(
        0xff, _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xf, _mm512_castps_pd(v), h)));
  }
  static void add(D* a, __m512 v) {
    a[0] = _mm512_add_pd(a[0], half<0>(v));
    a[1] = _mm512_add_pd(a[1], half<1>(v));
  }
  static void add(D* a, __m512d v) { a[0] = _mm512_add_pd(a[0], v); }
  static void fma(D* a, __m512 u, __m512 v) {
    a[0] = _mm512_fmadd_pd(half<0>(u), half<0>(v), a[0]);
    a[1] = _mm512_fmadd_pd(half<1>(u), half<1>(v), a[1]);
  }
  static void fma(D* a, __m512d u, __m512d v) { a[0] = _mm512_fmadd_pd(u, v, a[0]); }
  static double total(const D* a) {
    alignas(64) double t[8];
    _mm512_store_pd(t, _mm512_add_pd(a[0], a[1]));
    return ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
  }
};
#elif defined(SIMDNN_ISA_IS_AVX2)
struct Wide {
  using D = __m256d;
  static D zero() { return _mm256_setzero_pd(); }
  static __m256d lo(__m256 v) { return _mm256_cvtps_pd(_mm256_castps256_ps128(v)); }
  static __m256d hi(__m256 v) { return _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)); }
  static void add(D* a, __m256 v) {
    a[0] = _mm256_add_pd(a[0], lo(v));
    a[1] = _mm256_add_pd(a[1], hi(v));
  }
  static void add(D* a, __m256d v) { a[0] = _mm256_add_pd(a[0], v); }
  static void fma(D* a, __m256 u, __m256 v) {
    a[0] = _mm256_fmadd_pd(lo(u), lo(v), a[0]);
    a[1] = _mm256_fmadd_pd(hi(u), hi(v), a[1]);
  }
  static void fma(D* a, __m256d u, __m256d v) { a[0] = _mm256_fmadd_pd(u, v, a[0]); }
  static double total(const D* a) {
    alignas(32) double t[4];
    _mm256_store_pd(t, _mm256_add_pd(a[0], a[1]));
    return (t[0] + t[1]) + (t[2] + t[3]);
  }
};
#else
struct Wide {
  using D = double;
  static D zero() { return 0.0; }
  template <typename T>
  static void add(D* a, T v) {
    a[0] += static_cast<double>(v);
  }
  template <typename T>
  static void fma(D* a, T u, T v) {
    a[0] += static_cast<double>(u) * static_cast<double>(v);
  }
  static double total(const D* a) { return a[0] + a[1]; }
};
#endif

// The double mean as hi + lo in T: (x - hi) - lo is x - mean to T's precision even when the mean
// is large against the spread (for float64, lo is the rounding of a double to itself: 0).
template <typename T>
struct Split {
  T hi, lo;
  explicit Split(double m)
      : hi(static_cast<T>(m)), lo(static_cast<T>(m - static_cast<double>(hi))) {}
};

// Per-channel statistics of training (mean, biased var over m values) or eval (running stats):
// writes save_mean / save_invstd, updates the running statistics in training and returns the
// mean and invstd that y uses.
template <typename T>
void finish_channel(int64_t ch, int64_t m, double mean, double var, const BatchNormParams& p,
                    T* running_mean, T* running_var, T* save_mean, T* save_invstd, double* invstd) {
  if (p.training) {
    if (m == 0) {
      mean = 0.0;
      var = 0.0;
    } else {
      if (running_mean != nullptr) {
        running_mean[ch] = static_cast<T>(
            (1.0 - p.momentum) * static_cast<double>(running_mean[ch]) + p.momentum * mean);
      }
      if (running_var != nullptr) {
        const double unbiased =
            m > 1 ? var * static_cast<double>(m) / static_cast<double>(m - 1) : var;
        running_var[ch] = static_cast<T>((1.0 - p.momentum) * static_cast<double>(running_var[ch]) +
                                         p.momentum * unbiased);
      }
    }
  }
  *invstd = 1.0 / std::sqrt(var + p.eps);
  save_mean[ch] = static_cast<T>(mean);
  save_invstd[ch] = static_cast<T>(*invstd);
}

// Runs body(c0, c1) over channel ranges on up to nthreads threads (one when the tensor is small).
template <class F>
void parallel_channels(int64_t c, int64_t total, int nthreads, const F& body) {
  const int nt = static_cast<int>(min64(min64(nthreads, ceil_div(total, kParallelMin)), c));
  if (nt <= 1) {
    body(int64_t(0), c);
    return;
  }
  // One task per thread share: the ranges depend on nt only, so the bits do too.
  parallel_for(nt, nt, [&](int64_t t) {
    int64_t b, e;
    split_range(c, 1, nt, static_cast<int>(t), &b, &e);
    if (b < e) body(b, e);
  });
}

// ------------------------------------------------------------------------------------------------
// Row path: one channel at a time; its values are the runs x[(i * C + ch) * S .. + S), i < N.

// Sum of the channel's values.
template <typename T>
double row_sum(const T* x, int64_t n, int64_t stride, int64_t s) {
  using V = typename VecOf<T>::type;
  constexpr int W = V::W;
  typename Wide::D a[2] = {Wide::zero(), Wide::zero()};
  double tail = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const T* p = x + i * stride;
    int64_t k = 0;
    for (; k + W <= s; k += W) {
      SIMDNN_PREFETCH(p + stride + k);
      Wide::add(a, V::load(p + k));
    }
    for (; k < s; ++k) tail += static_cast<double>(p[k]);
  }
  return Wide::total(a) + tail;
}

// Sums of d and d^2, d = (x - hi) - lo.
template <typename T>
void row_dev_sums(const T* x, int64_t n, int64_t stride, int64_t s, Split<T> mu, double* sd,
                  double* sdd) {
  using V = typename VecOf<T>::type;
  constexpr int W = V::W;
  typename Wide::D a1[2] = {Wide::zero(), Wide::zero()}, a2[2] = {Wide::zero(), Wide::zero()};
  const typename V::V nhi = V::set1(-mu.hi), nlo = V::set1(-mu.lo);
  double t1 = 0.0, t2 = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const T* p = x + i * stride;
    int64_t k = 0;
    for (; k + W <= s; k += W) {
      const typename V::V d = V::add(V::add(V::load(p + k), nhi), nlo);
      Wide::add(a1, d);
      Wide::fma(a2, d, d);
    }
    for (; k < s; ++k) {
      const double d = static_cast<double>((p[k] - mu.hi) - mu.lo);
      t1 += d;
      t2 += d * d;
    }
  }
  *sd = Wide::total(a1) + t1;
  *sdd = Wide::total(a2) + t2;
}

// y = d * scale + shift, d = (x - hi) - lo.
template <bool kPrefetch, typename T>
void row_normalise(const T* x, T* y, int64_t n, int64_t stride, int64_t s, Split<T> mu, T scale,
                   T shift) {
  using V = typename VecOf<T>::type;
  constexpr int W = V::W;
  const typename V::V nhi = V::set1(-mu.hi), nlo = V::set1(-mu.lo), vs = V::set1(scale),
                      vb = V::set1(shift);
  for (int64_t i = 0; i < n; ++i) {
    const T* p = x + i * stride;
    T* q = y + i * stride;
    int64_t k = 0;
    for (; k + W <= s; k += W) {
      if (kPrefetch) SIMDNN_PREFETCH(p + stride + k);
      const typename V::V d = V::add(V::add(V::load(p + k), nhi), nlo);
      V::store(q + k, V::fma(d, vs, vb));
    }
    if (k < s) {
      const int live = static_cast<int>(s - k);
      const typename V::V d = V::add(V::add(V::loadn(p + k, live), nhi), nlo);
      V::storen(q + k, V::fma(d, vs, vb), live);
    }
  }
}

// Sums of dy and dy * (x - mu).
template <typename T>
void row_grad_sums(const T* dy, const T* x, int64_t n, int64_t stride, int64_t s, T mu, double* sdy,
                   double* sdyd) {
  using V = typename VecOf<T>::type;
  constexpr int W = V::W;
  typename Wide::D a1[2] = {Wide::zero(), Wide::zero()}, a2[2] = {Wide::zero(), Wide::zero()};
  const typename V::V nmu = V::set1(-mu);
  double t1 = 0.0, t2 = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const T* p = x + i * stride;
    const T* g = dy + i * stride;
    int64_t k = 0;
    for (; k + W <= s; k += W) {
      SIMDNN_PREFETCH(p + stride + k);
      SIMDNN_PREFETCH(g + stride + k);
      const typename V::V gv = V::load(g + k);
      Wide::add(a1, gv);
      Wide::fma(a2, gv, V::add(V::load(p + k), nmu));
    }
    for (; k < s; ++k) {
      t1 += static_cast<double>(g[k]);
      t2 += static_cast<double>(g[k]) * static_cast<double>(p[k] - mu);
    }
  }
  *sdy = Wide::total(a1) + t1;
  *sdyd = Wide::total(a2) + t2;
}

// dx = b * (x - mu) + (a * dy + c) in training, a * dy in eval (x is not read: an Inf in x must
// not turn dx into NaN through 0 * Inf).
template <typename T>
void row_grad_input(const T* dy, const T* x, T* dx, int64_t n, int64_t stride, int64_t s, T mu, T a,
                    T b, T c, bool training) {
  using V = typename VecOf<T>::type;
  constexpr int W = V::W;
  const typename V::V nmu = V::set1(-mu), va = V::set1(a), vb = V::set1(b), vc = V::set1(c);
  for (int64_t i = 0; i < n; ++i) {
    const T* p = x + i * stride;
    const T* g = dy + i * stride;
    T* q = dx + i * stride;
    int64_t k = 0;
    if (!training) {
      for (; k + W <= s; k += W) V::store(q + k, V::mul(va, V::load(g + k)));
      if (k < s) {
        const int live = static_cast<int>(s - k);
        V::storen(q + k, V::mul(va, V::loadn(g + k, live)), live);
      }
      continue;
    }
    for (; k + W <= s; k += W) {
      const typename V::V d = V::add(V::load(p + k), nmu);
      V::store(q + k, V::fma(vb, d, V::fma(va, V::load(g + k), vc)));
    }
    if (k < s) {
      const int live = static_cast<int>(s - k);
      const typename V::V d = V::add(V::loadn(p + k, live), nmu);
      V::storen(q + k, V::fma(vb, d, V::fma(va, V::loadn(g + k, live), vc)), live);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Column path: rows of L = C * S values. Threads split the rows, each keeping per-column partial
// sums (double) of its rows in its slice of the workspace; between the passes the calling thread
// adds the slices in a fixed order and fills the per-column constants (T) that the next pass
// reads. A split of the columns instead left each thread a few dozen values per row: on
// (4096, 32) float32 the forward took 57 us on 1 thread and 55 us on 2; split by rows, 43 and 28.

template <typename T>
struct ColumnScratch {
  double *s1, *s2;  // nt slices of L partial sums each
  T *t0, *t1, *t2, *t3;
};

// Workspace for nt threads: taken before the regions, since it may throw std::bad_alloc.
template <typename T>
ColumnScratch<T> column_scratch(int64_t l, int nt) {
  const size_t cols = static_cast<size_t>(l), parts = cols * static_cast<size_t>(nt);
  char* w = static_cast<char*>(
      workspace(WorkspaceSlot::op_scratch, 2 * parts * sizeof(double) + 4 * cols * sizeof(T)));
  ColumnScratch<T> sc;
  sc.s1 = reinterpret_cast<double*>(w);
  sc.s2 = sc.s1 + parts;
  sc.t0 = reinterpret_cast<T*>(sc.s2 + parts);
  sc.t1 = sc.t0 + cols;
  sc.t2 = sc.t1 + cols;
  sc.t3 = sc.t2 + cols;
  return sc;
}

// Threads for the column path: one per kParallelMin values, at most one per row.
int column_threads(int64_t n, int64_t total, int nthreads) {
  return static_cast<int>(max64(1, min64(min64(nthreads, ceil_div(total, kParallelMin)), n)));
}

// Calls body(t, team, r0, r1) for the rows of each task t of nt (team = nt: task t owns slice t of
// the partial sums and must zero it). body runs even when it gets no rows, so that its slice is
// zeroed.
template <class F>
void parallel_rows(int64_t n, int nt, const F& body) {
  if (nt <= 1) {
    body(0, 1, int64_t(0), n);
    return;
  }
  // One task per slice: task t owns slice t (the team is nt), whichever thread runs it.
  parallel_for(nt, nt, [&](int64_t t) {
    int64_t b, e;
    split_range(n, 1, nt, static_cast<int>(t), &b, &e);
    body(static_cast<int>(t), nt, b, e);
  });
}

// Zeroes the slices of partial sums that thread t of the team owns (see parallel_rows).
inline void zero_slices(double* part, int64_t l, int nt, int t, int team) {
  for (int u = t; u < nt; u += team) {
    for (int64_t j = 0; j < l; ++j) part[u * l + j] = 0.0;
  }
}

// Sum over the nt slices and the S columns of channel ch.
inline double column_total(const double* part, int64_t l, int nt, int64_t ch, int64_t s) {
  double sum = 0.0;
  for (int t = 0; t < nt; ++t) {
    for (int64_t k = 0; k < s; ++k) sum += part[t * l + ch * s + k];
  }
  return sum;
}

template <typename T>
void forward_columns(int64_t n, int64_t c, int64_t s, const T* x, const T* weight, const T* bias,
                     T* running_mean, T* running_var, T* save_mean, T* save_invstd, T* y,
                     const BatchNormParams& p, int nt, const ColumnScratch<T>& w) {
  const int64_t l = c * s, m = n * s;
  T *mhi = w.t0, *mlo = w.t1, *scale = w.t2, *shift = w.t3;
  const double dm = static_cast<double>(m);
  if (p.training) {
    parallel_rows(n, nt, [&](int t, int team, int64_t r0, int64_t r1) {
      zero_slices(w.s1, l, nt, t, team);
      double* s1 = w.s1 + t * l;
      for (int64_t i = r0; i < r1; ++i) {
        const T* row = x + i * l;
        for (int64_t j = 0; j < l; ++j) s1[j] += static_cast<double>(row[j]);
      }
    });
    for (int64_t ch = 0; ch < c; ++ch) {
      const Split<T> mu(m > 0 ? column_total(w.s1, l, nt, ch, s) / dm : 0.0);
      for (int64_t k = 0; k < s; ++k) {
        mhi[ch * s + k] = mu.hi;
        mlo[ch * s + k] = mu.lo;
      }
    }
    parallel_rows(n, nt, [&](int t, int team, int64_t r0, int64_t r1) {
      zero_slices(w.s1, l, nt, t, team);
      zero_slices(w.s2, l, nt, t, team);
      double* s1 = w.s1 + t * l;
      double* s2 = w.s2 + t * l;
      for (int64_t i = r0; i < r1; ++i) {
        const T* row = x + i * l;
        for (int64_t j = 0; j < l; ++j) {
          const double d = static_cast<double>((row[j] - mhi[j]) - mlo[j]);
          s1[j] += d;
          s2[j] += d * d;
        }
      }
    });
  }
  for (int64_t ch = 0; ch < c; ++ch) {
    double mean = 0.0, var = 0.0;
    if (p.training) {
      if (m > 0) {
        const double sd = column_total(w.s1, l, nt, ch, s), sdd = column_total(w.s2, l, nt, ch, s);
        var = sdd / dm - (sd / dm) * (sd / dm);
        if (var < 0.0) var = 0.0;
        // The correction of the two-pass formula, to the mean as well.
        mean = static_cast<double>(mhi[ch * s]) + static_cast<double>(mlo[ch * s]) + sd / dm;
      }
    } else {
      mean = static_cast<double>(running_mean[ch]);
      var = static_cast<double>(running_var[ch]);
    }
    double invstd;
    finish_channel(ch, m, mean, var, p, running_mean, running_var, save_mean, save_invstd, &invstd);
    const Split<T> mu(mean);
    const T sc =
        static_cast<T>(invstd * (weight != nullptr ? static_cast<double>(weight[ch]) : 1.0));
    const T sh = bias != nullptr ? bias[ch] : T(0);
    for (int64_t k = 0; k < s; ++k) {
      mhi[ch * s + k] = mu.hi;
      mlo[ch * s + k] = mu.lo;
      scale[ch * s + k] = sc;
      shift[ch * s + k] = sh;
    }
  }
  parallel_rows(n, nt, [&](int, int, int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const T* row = x + i * l;
      T* out = y + i * l;
      for (int64_t j = 0; j < l; ++j) out[j] = ((row[j] - mhi[j]) - mlo[j]) * scale[j] + shift[j];
    }
  });
}

template <typename T>
void backward_columns(int64_t n, int64_t c, int64_t s, const T* dy, const T* x, const T* weight,
                      const T* save_mean, const T* save_invstd, bool training, T* dx, T* dweight,
                      T* dbias, int nt, const ColumnScratch<T>& w) {
  const int64_t l = c * s, m = n * s;
  T *mu = w.t0, *ca = w.t1, *cb = w.t2, *cc = w.t3;
  for (int64_t ch = 0; ch < c; ++ch) {
    for (int64_t k = 0; k < s; ++k) mu[ch * s + k] = save_mean[ch];
  }
  parallel_rows(n, nt, [&](int t, int team, int64_t r0, int64_t r1) {
    zero_slices(w.s1, l, nt, t, team);
    zero_slices(w.s2, l, nt, t, team);
    double* s1 = w.s1 + t * l;
    double* s2 = w.s2 + t * l;
    for (int64_t i = r0; i < r1; ++i) {
      const T* row = x + i * l;
      const T* g = dy + i * l;
      for (int64_t j = 0; j < l; ++j) {
        s1[j] += static_cast<double>(g[j]);
        s2[j] += static_cast<double>(g[j]) * static_cast<double>(row[j] - mu[j]);
      }
    }
  });
  for (int64_t ch = 0; ch < c; ++ch) {
    const double sdy = column_total(w.s1, l, nt, ch, s), sdyd = column_total(w.s2, l, nt, ch, s);
    const double is = static_cast<double>(save_invstd[ch]);
    dbias[ch] = static_cast<T>(sdy);
    dweight[ch] = static_cast<T>(sdyd * is);
    const double a = is * (weight != nullptr ? static_cast<double>(weight[ch]) : 1.0);
    double b = 0.0, cst = 0.0;
    if (training && m > 0) {
      const double dm = static_cast<double>(m);
      b = -a * is * (sdyd * is) / dm;
      cst = -a * sdy / dm;
    }
    for (int64_t k = 0; k < s; ++k) {
      ca[ch * s + k] = static_cast<T>(a);
      cb[ch * s + k] = static_cast<T>(b);
      cc[ch * s + k] = static_cast<T>(cst);
    }
  }
  if (dx == nullptr) return;
  parallel_rows(n, nt, [&](int, int, int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const T* row = x + i * l;
      const T* g = dy + i * l;
      T* out = dx + i * l;
      if (training) {
        for (int64_t j = 0; j < l; ++j) out[j] = cb[j] * (row[j] - mu[j]) + (ca[j] * g[j] + cc[j]);
      } else {
        for (int64_t j = 0; j < l; ++j) out[j] = ca[j] * g[j];
      }
    }
  });
}

// ------------------------------------------------------------------------------------------------
// Split path: fewer channels than threads (C = 1 is one contiguous run after collapse_single), so
// each channel's M values are cut into `parts` ranges of the flattened index m = i * S + k, one
// task per (channel, range). The passes become separate parallel regions; the partial sums of the
// ranges are added in a fixed order, so a given thread count always gives the same bits.

// Tasks per channel: > 1 only when the threads that the size earns outnumber the channels twice.
int split_parts(int64_t c, int64_t total, int nthreads) {
  const int64_t nt = min64(nthreads, ceil_div(total, kParallelMin));
  return c > 0 && nt >= 2 * c ? static_cast<int>(nt / c) : 1;
}

// Calls body(t) for t in [0, tasks) on up to tasks threads (the pool's).
template <class F>
void parallel_tasks(int64_t tasks, const F& body) {
  parallel_for(tasks, static_cast<int>(min64(tasks, get_num_threads())), body);
}

// Calls f(offset, len) for the runs of the flattened range [m0, m1) of one channel (value
// m = i * S + k lies at offset i * stride + k).
template <class F>
void for_runs(int64_t m0, int64_t m1, int64_t s, int64_t stride, const F& f) {
  while (m0 < m1) {
    const int64_t i = m0 / s, k = m0 % s, len = min64(s - k, m1 - m0);
    f(i * stride + k, len);
    m0 += len;
  }
}

// The range of task t: channel t / parts, part t % parts of its M values (cut at multiples of 64
// values, whole cache lines for both dtypes).
struct Task {
  int64_t ch, m0, m1;
};
Task task_of(int64_t t, int parts, int64_t m) {
  Task k;
  k.ch = t / parts;
  split_range(m, 64, parts, static_cast<int>(t % parts), &k.m0, &k.m1);
  return k;
}

template <typename T>
void forward_split(int64_t n, int64_t c, int64_t s, const T* x, const T* weight, const T* bias,
                   T* running_mean, T* running_var, T* save_mean, T* save_invstd, T* y,
                   const BatchNormParams& p, int parts) {
  const int64_t m = n * s, stride = c * s, tasks = c * parts;
  std::vector<double> part(static_cast<size_t>(2 * tasks));  // before the regions: it may throw
  std::vector<double> mean(static_cast<size_t>(c)), invstd(static_cast<size_t>(c));
  const double dm = static_cast<double>(m);
  if (p.training) {
    parallel_tasks(tasks, [&](int64_t t) {
      const Task k = task_of(t, parts, m);
      double sum = 0.0;
      for_runs(k.m0, k.m1, s, stride,
               [&](int64_t off, int64_t len) { sum += row_sum(x + k.ch * s + off, 1, 0, len); });
      part[t] = sum;
    });
    for (int64_t ch = 0; ch < c; ++ch) {
      double sum = 0.0;
      for (int q = 0; q < parts; ++q) sum += part[ch * parts + q];
      mean[ch] = sum / dm;
    }
    parallel_tasks(tasks, [&](int64_t t) {
      const Task k = task_of(t, parts, m);
      double sd = 0.0, sdd = 0.0;
      for_runs(k.m0, k.m1, s, stride, [&](int64_t off, int64_t len) {
        double a, b;
        row_dev_sums(x + k.ch * s + off, 1, 0, len, Split<T>(mean[k.ch]), &a, &b);
        sd += a;
        sdd += b;
      });
      part[2 * t] = sd;
      part[2 * t + 1] = sdd;
    });
  }
  for (int64_t ch = 0; ch < c; ++ch) {
    double mu, var;
    if (p.training) {
      double sd = 0.0, sdd = 0.0;
      for (int q = 0; q < parts; ++q) {
        sd += part[2 * (ch * parts + q)];
        sdd += part[2 * (ch * parts + q) + 1];
      }
      var = sdd / dm - (sd / dm) * (sd / dm);
      if (var < 0.0) var = 0.0;
      mu = mean[ch] + sd / dm;
    } else {
      mu = static_cast<double>(running_mean[ch]);
      var = static_cast<double>(running_var[ch]);
    }
    finish_channel(ch, m, mu, var, p, running_mean, running_var, save_mean, save_invstd,
                   &invstd[ch]);
    mean[ch] = mu;
  }
  parallel_tasks(tasks, [&](int64_t t) {
    const Task k = task_of(t, parts, m);
    const T sc = static_cast<T>(invstd[k.ch] *
                                (weight != nullptr ? static_cast<double>(weight[k.ch]) : 1.0));
    const T sh = bias != nullptr ? bias[k.ch] : T(0);
    for_runs(k.m0, k.m1, s, stride, [&](int64_t off, int64_t len) {
      const int64_t o = k.ch * s + off;
      row_normalise<false>(x + o, y + o, 1, 0, len, Split<T>(mean[k.ch]), sc, sh);
    });
  });
}

template <typename T>
void backward_split(int64_t n, int64_t c, int64_t s, const T* dy, const T* x, const T* weight,
                    const T* save_mean, const T* save_invstd, bool training, T* dx, T* dweight,
                    T* dbias, int parts) {
  const int64_t m = n * s, stride = c * s, tasks = c * parts;
  std::vector<double> part(static_cast<size_t>(2 * tasks));
  std::vector<double> coef(static_cast<size_t>(3 * c));
  parallel_tasks(tasks, [&](int64_t t) {
    const Task k = task_of(t, parts, m);
    double sdy = 0.0, sdyd = 0.0;
    for_runs(k.m0, k.m1, s, stride, [&](int64_t off, int64_t len) {
      const int64_t o = k.ch * s + off;
      double a, b;
      row_grad_sums(dy + o, x + o, 1, 0, len, save_mean[k.ch], &a, &b);
      sdy += a;
      sdyd += b;
    });
    part[2 * t] = sdy;
    part[2 * t + 1] = sdyd;
  });
  for (int64_t ch = 0; ch < c; ++ch) {
    double sdy = 0.0, sdyd = 0.0;
    for (int q = 0; q < parts; ++q) {
      sdy += part[2 * (ch * parts + q)];
      sdyd += part[2 * (ch * parts + q) + 1];
    }
    const double is = static_cast<double>(save_invstd[ch]);
    dbias[ch] = static_cast<T>(sdy);
    dweight[ch] = static_cast<T>(sdyd * is);
    const double a = is * (weight != nullptr ? static_cast<double>(weight[ch]) : 1.0);
    double b = 0.0, cst = 0.0;
    if (training && m > 0) {
      const double dm = static_cast<double>(m);
      b = -a * is * (sdyd * is) / dm;
      cst = -a * sdy / dm;
    }
    coef[3 * ch] = a;
    coef[3 * ch + 1] = b;
    coef[3 * ch + 2] = cst;
  }
  if (dx == nullptr) return;
  parallel_tasks(tasks, [&](int64_t t) {
    const Task k = task_of(t, parts, m);
    const T a = static_cast<T>(coef[3 * k.ch]), b = static_cast<T>(coef[3 * k.ch + 1]),
            cst = static_cast<T>(coef[3 * k.ch + 2]);
    for_runs(k.m0, k.m1, s, stride, [&](int64_t off, int64_t len) {
      const int64_t o = k.ch * s + off;
      row_grad_input(dy + o, x + o, dx + o, 1, 0, len, save_mean[k.ch], a, b, cst, training);
    });
  });
}

// ------------------------------------------------------------------------------------------------

// Shapes: x, y (N, C, S) contiguous, M = N * S values per channel; weight, bias, running_mean,
// running_var, save_mean, save_invstd (C,). Chooses the path (see the top of this file).
template <typename T>
void batch_norm_forward(int64_t n, int64_t c, int64_t s, const T* x, const T* weight, const T* bias,
                        T* running_mean, T* running_var, T* save_mean, T* save_invstd, T* y,
                        const BatchNormParams& p, int nthreads) {
  if (c == 0) return;
  if (c == 1) {  // one channel: the whole tensor is one contiguous run
    s *= n;
    n = s > 0 ? 1 : 0;
  }
  const int64_t m = n * s;
  if (s >= kRowPathMinS) {
    const int parts = split_parts(c, m * c, nthreads);
    if (parts > 1) {
      forward_split(n, c, s, x, weight, bias, running_mean, running_var, save_mean, save_invstd, y,
                    p, parts);
      return;
    }
  }
  if (s < kRowPathMinS) {
    const int nt = column_threads(n, m * c, nthreads);
    forward_columns(n, c, s, x, weight, bias, running_mean, running_var, save_mean, save_invstd, y,
                    p, nt, column_scratch<T>(c * s, nt));
    return;
  }
  const int64_t stride = c * s;
  parallel_channels(c, m * c, nthreads, [&](int64_t c0, int64_t c1) {
    for (int64_t ch = c0; ch < c1; ++ch) {
      const T* xc = x + ch * s;
      double mean = 0.0, var = 0.0;
      if (p.training && m > 0) {
        const double dm = static_cast<double>(m);
        mean = row_sum(xc, n, stride, s) / dm;
        double sd, sdd;
        row_dev_sums(xc, n, stride, s, Split<T>(mean), &sd, &sdd);
        var = sdd / dm - (sd / dm) * (sd / dm);
        if (var < 0.0) var = 0.0;
        mean += sd / dm;
      } else if (!p.training) {
        mean = static_cast<double>(running_mean[ch]);
        var = static_cast<double>(running_var[ch]);
      }
      double invstd;
      finish_channel(ch, m, mean, var, p, running_mean, running_var, save_mean, save_invstd,
                     &invstd);
      const T sc =
          static_cast<T>(invstd * (weight != nullptr ? static_cast<double>(weight[ch]) : 1.0));
      const T sh = bias != nullptr ? bias[ch] : T(0);
      if (p.training) {
        row_normalise<false>(xc, y + ch * s, n, stride, s, Split<T>(mean), sc, sh);
      } else {
        row_normalise<true>(xc, y + ch * s, n, stride, s, Split<T>(mean), sc, sh);
      }
    }
  });
}

// Shapes: dy, x, dx (N, C, S) contiguous, M = N * S values per channel; weight, save_mean,
// save_invstd, dweight, dbias (C,).
template <typename T>
void batch_norm_backward(int64_t n, int64_t c, int64_t s, const T* dy, const T* x, const T* weight,
                         const T* save_mean, const T* save_invstd, bool training, T* dx, T* dweight,
                         T* dbias, int nthreads) {
  if (c == 0) return;
  if (c == 1) {
    s *= n;
    n = s > 0 ? 1 : 0;
  }
  const int64_t m = n * s;
  if (s >= kRowPathMinS) {
    const int parts = split_parts(c, m * c, nthreads);
    if (parts > 1) {
      backward_split(n, c, s, dy, x, weight, save_mean, save_invstd, training, dx, dweight, dbias,
                     parts);
      return;
    }
  }
  if (s < kRowPathMinS) {
    const int nt = column_threads(n, m * c, nthreads);
    backward_columns(n, c, s, dy, x, weight, save_mean, save_invstd, training, dx, dweight, dbias,
                     nt, column_scratch<T>(c * s, nt));
    return;
  }
  const int64_t stride = c * s;
  parallel_channels(c, m * c, nthreads, [&](int64_t c0, int64_t c1) {
    for (int64_t ch = c0; ch < c1; ++ch) {
      const int64_t off = ch * s;
      const T mu = save_mean[ch];
      double sdy, sdyd;
      row_grad_sums(dy + off, x + off, n, stride, s, mu, &sdy, &sdyd);
      const double is = static_cast<double>(save_invstd[ch]);
      dbias[ch] = static_cast<T>(sdy);
      dweight[ch] = static_cast<T>(sdyd * is);
      if (dx == nullptr) continue;
      const double a = is * (weight != nullptr ? static_cast<double>(weight[ch]) : 1.0);
      double b = 0.0, cst = 0.0;
      if (training && m > 0) {
        const double dm = static_cast<double>(m);
        b = -a * is * (sdyd * is) / dm;
        cst = -a * sdy / dm;
      }
      row_grad_input(dy + off, x + off, dx + off, n, stride, s, mu, static_cast<T>(a),
                     static_cast<T>(b), static_cast<T>(cst), training);
    }
  });
}

}  // namespace

SIMDNN_REGISTER_OP(batch_norm_forward, batch_norm_forward)
SIMDNN_REGISTER_OP(batch_norm_backward, batch_norm_backward)

}  // namespace simdnn::SIMDNN_ISA_NS
