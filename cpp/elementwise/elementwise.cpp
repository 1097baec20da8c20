// Elementwise kernels for one ISA (see elementwise.h): a vector body over the traits and a
// masked tail, split between threads for large arrays.
#include "elementwise/elementwise.h"

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common/int_math.h"
#include "common/parallel.h"
#include "registry.h"
#include "simd/simd.h"

namespace simdnn::SIMDNN_ISA_NS {

namespace {

// Calls body(begin, end) over [0, n) on up to nthreads threads, in ranges aligned to 64 elements
// of at least grain::kElementwise elements.
template <class F>
void parallel_chunks(int64_t n, int nthreads, const F& body) {
  parallel_ranges(n, grain::kElementwise, 64, nthreads, body);
}

template <typename T>
void relu(int64_t n, const T* x, T* y, int nthreads) {
  using V = typename VecOf<T>::type;
  constexpr int W = V::W;
  parallel_chunks(n, nthreads, [&](int64_t b, int64_t e) {
    int64_t i = b;
    // max(0, x): the x86 max returns its second operand when either is NaN, so NaN survives.
    for (; i + W <= e; i += W) V::store(y + i, V::max(V::zero(), V::load(x + i)));
    if (i < e) {
      const int live = static_cast<int>(e - i);
      V::storen(y + i, V::max(V::zero(), V::loadn(x + i, live)), live);
    }
  });
}

// dx = dy * (x > 0 ? 1 : 0): a multiply, so NaN and Inf in dy propagate as IEEE arithmetic says
// (NaN * 0 is NaN) rather than being masked; a NaN x counts as inactive.
template <typename T>
void relu_backward(int64_t n, const T* dy, const T* x, T* dx, int nthreads) {
  using V = typename VecOf<T>::type;
  constexpr int W = V::W;
  const typename V::V one = V::set1(T(1));
  parallel_chunks(n, nthreads, [&](int64_t b, int64_t e) {
    int64_t i = b;
    for (; i + W <= e; i += W) {
      const typename V::V gate = V::blend(V::gt(V::load(x + i), V::zero()), V::zero(), one);
      V::store(dx + i, V::mul(V::load(dy + i), gate));
    }
    if (i < e) {
      const int live = static_cast<int>(e - i);
      const typename V::V gate = V::blend(V::gt(V::loadn(x + i, live), V::zero()), V::zero(), one);
      V::storen(dx + i, V::mul(V::loadn(dy + i, live), gate), live);
    }
  });
}

// Threads split the columns, so each sums its own and no partial sums are combined; every row is
// read once, in order, into running sums kept in db (N elements, in L1 for a layer's width).
// Rows are summed one after another, the order of NumPy's dy.sum(axis=0). The MLP 784-256-256-10
// on a batch of 64 has 16K elements per layer: one thread, where the gate and the sum had been a
// relu_backward call and a NumPy reduction.
template <typename T>
void bias_backward(int64_t m, int64_t n, const T* dy, const T* y, T* dx, T* db, bool accumulate,
                   int nthreads) {
  using V = typename VecOf<T>::type;
  using R = typename V::V;
  constexpr int W = V::W;
  const int64_t min_cols = ceil_div(grain::kElementwise, m > 0 ? m : 1);
  parallel_ranges(n, min_cols, 64, nthreads, [&](int64_t b, int64_t e) {
    const R one = V::set1(T(1));
    if (!accumulate) {
      for (int64_t j = b; j < e; ++j) db[j] = T(0);
    }
    for (int64_t i = 0; i < m; ++i) {
      const T* g = dy + i * n;
      auto step = [&](int64_t j, int live, auto full) {
        constexpr bool kFull = decltype(full)::value;
        R gj = kFull ? V::load(g + j) : V::loadn(g + j, live);
        if (y != nullptr) {
          const R yj = kFull ? V::load(y + i * n + j) : V::loadn(y + i * n + j, live);
          gj = V::mul(gj, V::blend(V::gt(yj, V::zero()), V::zero(), one));
          kFull ? V::store(dx + i * n + j, gj) : V::storen(dx + i * n + j, gj, live);
        }
        const R s = V::add(kFull ? V::load(db + j) : V::loadn(db + j, live), gj);
        kFull ? V::store(db + j, s) : V::storen(db + j, s, live);
      };
      int64_t j = b;
      for (; j + W <= e; j += W) step(j, W, std::true_type{});
      if (j < e) step(j, static_cast<int>(e - j), std::false_type{});
    }
  });
}

// Calls body(job, begin, end) for the parts of the jobs' elements that the flat range [b, e) of
// their concatenation covers, splitting that range between threads (parallel_chunks).
template <class Job, class F>
void parallel_jobs(const Job* jobs, int64_t count, int nthreads, const F& body) {
  int64_t total = 0;
  for (int64_t i = 0; i < count; ++i) total += jobs[i].n;
  parallel_chunks(total, nthreads, [&](int64_t b, int64_t e) {
    int64_t start = 0;  // flat index of job i's first element
    for (int64_t i = 0; i < count && start < e; start += jobs[i].n, ++i) {
      const int64_t lo = b > start ? b - start : 0;
      const int64_t hi = e - start < jobs[i].n ? e - start : jobs[i].n;
      if (lo < hi) body(jobs[i], lo, hi);
    }
  });
}

// The optimiser updates spell their vector body out over the traits, like relu. The plain loops
// they replace compiled to a vector body too, but inside the parallel lambda the step sizes are
// read through the closure and every store to p or v may alias them, so GCC 12 re-read them per
// element: 22 GB/s on one thread over 269,322 float32 parameters (the MLP 784-256-256-10),
// 3x slower than NumPy's four passes, 160 us of the 600 us training step. Constants held in
// registers reach 70-100 GB/s there (AMD EPYC Zen 5, L2-resident).
template <typename T>
void sgd_update(const SgdJob<T>* jobs, int64_t count, const SgdParams& s, int nthreads) {
  using V = typename VecOf<T>::type;
  using R = typename V::V;
  constexpr int W = V::W;
  const T lr_s = static_cast<T>(s.lr), mom_s = static_cast<T>(s.momentum),
          wd_s = static_cast<T>(s.weight_decay);
  const bool use_v = s.momentum != 0.0, nesterov = s.nesterov;
  parallel_jobs(jobs, count, nthreads, [=](const SgdJob<T>& job, int64_t b, int64_t e) {
    T* const p = job.p;
    const T* const g = job.g;
    T* const v = job.v;
    const R lr = V::set1(lr_s), mom = V::set1(mom_s), wd = V::set1(wd_s);
    // One element group: `live` lanes from i (W for the body, fewer for the tail).
    auto step = [&](int64_t i, int live, auto full) {
      constexpr bool kFull = decltype(full)::value;
      const R pi = kFull ? V::load(p + i) : V::loadn(p + i, live);
      const R gi = V::fma(wd, pi, kFull ? V::load(g + i) : V::loadn(g + i, live));
      R upd = gi;
      if (use_v) {
        const R vi = V::fma(mom, kFull ? V::load(v + i) : V::loadn(v + i, live), gi);
        kFull ? V::store(v + i, vi) : V::storen(v + i, vi, live);
        upd = nesterov ? V::fma(mom, vi, gi) : vi;
      }
      const R pn = V::fnma(lr, upd, pi);
      kFull ? V::store(p + i, pn) : V::storen(p + i, pn, live);
    };
    int64_t i = b;
    for (; i + W <= e; i += W) step(i, W, std::true_type{});
    if (i < e) step(i, static_cast<int>(e - i), std::false_type{});
  });
}

template <typename T>
void adam_update(const AdamJob<T>* jobs, int64_t count, const AdamParams& a, int nthreads) {
  using V = typename VecOf<T>::type;
  using R = typename V::V;
  constexpr int W = V::W;
  // 1 - beta in double, then rounded (as PyTorch does): 1 - 0.999f in float32 is 0.00099998713,
  // 1.3e-5 off 0.001, and that error went straight into every second moment.
  const T b1_s = static_cast<T>(a.beta1), b2_s = static_cast<T>(a.beta2);
  const T one_b1_s = static_cast<T>(1.0 - a.beta1), one_b2_s = static_cast<T>(1.0 - a.beta2);
  const T step_s = static_cast<T>(a.lr / a.bias1), inv_c2_s = static_cast<T>(1.0 / a.bias2);
  const T eps_s = static_cast<T>(a.eps), wd_s = static_cast<T>(a.weight_decay);
  parallel_jobs(jobs, count, nthreads, [=](const AdamJob<T>& job, int64_t b, int64_t e) {
    T* const p = job.p;
    const T* const g = job.g;
    T* const m = job.m;
    T* const v = job.v;
    const R b1 = V::set1(b1_s), b2 = V::set1(b2_s), one_b1 = V::set1(one_b1_s);
    const R one_b2 = V::set1(one_b2_s), stp = V::set1(step_s), inv_c2 = V::set1(inv_c2_s);
    const R eps = V::set1(eps_s), wd = V::set1(wd_s);
    auto step = [&](int64_t i, int live, auto full) {
      constexpr bool kFull = decltype(full)::value;
      const R pi = kFull ? V::load(p + i) : V::loadn(p + i, live);
      const R gi = V::fma(wd, pi, kFull ? V::load(g + i) : V::loadn(g + i, live));
      const R mi = V::fma(b1, kFull ? V::load(m + i) : V::loadn(m + i, live), V::mul(one_b1, gi));
      const R vi = V::fma(b2, kFull ? V::load(v + i) : V::loadn(v + i, live),
                          V::mul(one_b2, V::mul(gi, gi)));
      // The masked-off lanes of a tail hold zeros: sqrt(0) + eps keeps their division finite.
      const R den = V::add(V::sqrt(V::mul(vi, inv_c2)), eps);
      const R pn = V::sub(pi, V::div(V::mul(stp, mi), den));
      if (kFull) {
        V::store(m + i, mi);
        V::store(v + i, vi);
        V::store(p + i, pn);
      } else {
        V::storen(m + i, mi, live);
        V::storen(v + i, vi, live);
        V::storen(p + i, pn, live);
      }
    };
    int64_t i = b;
    for (; i + W <= e; i += W) step(i, W, std::true_type{});
    if (i < e) step(i, static_cast<int>(e - i), std::false_type{});
  });
}

}  // namespace

SIMDNN_REGISTER_OP(relu, relu)
SIMDNN_REGISTER_OP(relu_backward, relu_backward)
SIMDNN_REGISTER_OP(bias_backward, bias_backward)
SIMDNN_REGISTER_OP(sgd, sgd_update)
SIMDNN_REGISTER_OP(adam, adam_update)

}  // namespace simdnn::SIMDNN_ISA_NS
