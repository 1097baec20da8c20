// Machine-limit probes for one ISA (see probe.h).
#include "probe/probe.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

#include "common/parallel.h"
#include "registry.h"
#include "simd/simd.h"

namespace simdnn::SIMDNN_ISA_NS {

namespace {

using Clock = std::chrono::steady_clock;

// One thread: `iters` rounds of 12 independent FMAs on full vectors. Returns a value derived
// from every accumulator so that the loop cannot be removed.
float fma_chains(int64_t iters) {
  using V = VecOf<float>::type;
  using R = V::V;
  R acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = V::set1(0.001f * static_cast<float>(i));
  const R a = V::set1(0.999999f), b = V::set1(1e-7f);
  for (int64_t it = 0; it < iters; ++it) {
    for (int i = 0; i < 12; ++i) acc[i] = V::fma(acc[i], a, b);
  }
  float lanes[V::W];
  R sum = acc[0];
  for (int i = 1; i < 12; ++i) sum = V::add(sum, acc[i]);
  V::store(lanes, sum);
  float out = 0;
  for (int l = 0; l < V::W; ++l) out += lanes[l];
  return out;
}

double probe_fma(int nthreads, double seconds) {
  using V = VecOf<float>::type;
  // Calibrate: how many rounds fill the requested time on one thread.
  int64_t iters = 1 << 16;
  volatile float sink = 0;
  for (;;) {
    const auto t0 = Clock::now();
    sink = sink + fma_chains(iters);
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (s > seconds / 8 || iters > (int64_t(1) << 40)) {
      iters = static_cast<int64_t>(static_cast<double>(iters) * seconds / (s > 0 ? s : 1e-9));
      break;
    }
    iters *= 4;
  }
  if (iters < 1) iters = 1;
  const auto t0 = Clock::now();
  // nthreads tasks of `iters` rounds on the pool: a thread that does not get a core leaves its
  // task to the others, and the figure is what the machine gave.
  std::atomic<int64_t> bits{0};
  parallel_for(nthreads, nthreads, [&](int64_t) {
    const float v = fma_chains(iters);
    int32_t b;
    std::memcpy(&b, &v, sizeof(b));
    bits.fetch_xor(b, std::memory_order_relaxed);
  });
  sink = sink + static_cast<float>(bits.load() & 1);
  const int used = nthreads;
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  return 2.0 * 12.0 * V::W * static_cast<double>(iters) * used / s / 1e9;
}

double probe_stream(int nthreads, int64_t bytes) {
  using V = VecOf<float>::type;
  const int64_t n = (bytes / 3 / static_cast<int64_t>(sizeof(float))) / 64 * 64;
  if (n <= 0) return 0.0;
  float* buf = static_cast<float*>(std::malloc(3 * n * sizeof(float)));
  if (buf == nullptr) throw std::bad_alloc();
  float *a = buf, *b = buf + n, *c = buf + 2 * n;
  double best = 0.0;
  for (int pass = 0; pass < 4; ++pass) {
    const auto t0 = Clock::now();
    const int64_t blocks = n / 64;
    parallel_for(nthreads, nthreads, [&](int64_t t) {
      const int64_t i0 = blocks * t / nthreads * 64, i1 = blocks * (t + 1) / nthreads * 64;
      for (int64_t i = i0; i < i1; i += 64) {
        if (pass == 0) {  // first touch, by the thread that will stream the block
          for (int64_t j = i; j < i + 64; ++j) {
            b[j] = 1.0f;
            c[j] = 2.0f;
          }
        }
        for (int64_t j = i; j < i + 64; j += V::W) {
          V::store(a + j, V::fma(V::set1(3.0f), V::load(c + j), V::load(b + j)));
        }
      }
    });
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (pass > 0) {
      const double gbps = 3.0 * static_cast<double>(n) * sizeof(float) / s / 1e9;
      if (gbps > best) best = gbps;
    }
  }
  std::free(buf);
  return best;
}

}  // namespace

SIMDNN_REGISTER_PROBE(fma, probe_fma)
SIMDNN_REGISTER_PROBE(stream, probe_stream)

}  // namespace simdnn::SIMDNN_ISA_NS
