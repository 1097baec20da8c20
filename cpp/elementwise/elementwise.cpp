// Elementwise kernels for one ISA (see elementwise.h): a vector body over the traits and a
// masked tail, split between threads for large arrays.
#include "elementwise/elementwise.h"

#include <cmath>
#include <cstdint>

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

template <typename T>
void sgd_update(int64_t n, T* p, const T* g, T* v, const SgdParams& s, int nthreads) {
  const T lr = static_cast<T>(s.lr), mom = static_cast<T>(s.momentum),
          wd = static_cast<T>(s.weight_decay);
  const bool use_v = s.momentum != 0.0, nesterov = s.nesterov;
  parallel_chunks(n, nthreads, [&](int64_t b, int64_t e) {
    // Plain loops: the compiler vectorises them with this ISA's flags (one pass over p, g, v
    // instead of NumPy's four with temporaries).
    for (int64_t i = b; i < e; ++i) {
      const T gi = g[i] + wd * p[i];
      if (use_v) {
        const T vi = mom * v[i] + gi;
        v[i] = vi;
        p[i] -= lr * (nesterov ? gi + mom * vi : vi);
      } else {
        p[i] -= lr * gi;
      }
    }
  });
}

template <typename T>
void adam_update(int64_t n, T* p, const T* g, T* m, T* v, const AdamParams& a, int nthreads) {
  const T b1 = static_cast<T>(a.beta1), b2 = static_cast<T>(a.beta2);
  // 1 - beta in double, then rounded (as PyTorch does): 1 - 0.999f in float32 is 0.00099998713,
  // 1.3e-5 off 0.001, and that error went straight into every second moment.
  const T one_b1 = static_cast<T>(1.0 - a.beta1), one_b2 = static_cast<T>(1.0 - a.beta2);
  const T step = static_cast<T>(a.lr / a.bias1), inv_c2 = static_cast<T>(1.0 / a.bias2);
  const T eps = static_cast<T>(a.eps), wd = static_cast<T>(a.weight_decay);
  parallel_chunks(n, nthreads, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const T gi = g[i] + wd * p[i];
      const T mi = b1 * m[i] + one_b1 * gi;
      const T vi = b2 * v[i] + one_b2 * gi * gi;
      m[i] = mi;
      v[i] = vi;
      p[i] -= step * mi / (std::sqrt(vi * inv_c2) + eps);
    }
  });
}

}  // namespace

SIMDNN_REGISTER_OP(relu, relu)
SIMDNN_REGISTER_OP(relu_backward, relu_backward)
SIMDNN_REGISTER_OP(sgd, sgd_update)
SIMDNN_REGISTER_OP(adam, adam_update)

}  // namespace simdnn::SIMDNN_ISA_NS
