// simdnn_smoke: the kernels without Python (built with -DSIMDNN_BUILD_PYTHON=OFF). Runs the float
// and double GEMM of every ISA this CPU and build have through the dispatch table, on shapes that
// leave edge tiles in every direction, on one thread and on two, and checks each element against
// a plain triple loop. Exit status 0 when every product matches. tools/build_wheels.sh runs it on
// the aarch64 cross build under qemu, where only the scalar ISA exists.
#include <cstdint>
#include <cstdio>
#include <vector>

#include "common/cpu.h"
#include "common/parallel.h"
#include "dispatch.h"

namespace {

template <typename T>
simdnn::GemmFn<T> gemm_of(const simdnn::KernelTable& table, T) {
  return table.get<T>().gemm;
}

// C = alpha * A . B^T + beta * C with A m x k row-major and B given as n x k (a transposed
// operand), against a plain loop. Returns the number of elements that differ.
template <typename T>
int64_t check_gemm(simdnn::GemmFn<T> gemm, int64_t m, int64_t n, int64_t k, int nthreads) {
  std::vector<T> a(m * k), b(n * k), c(m * n);
  for (int64_t i = 0; i < m * k; ++i) a[i] = static_cast<T>((i * 7 % 13) - 6) / T(8);
  for (int64_t i = 0; i < n * k; ++i) b[i] = static_cast<T>((i * 5 % 11) - 5) / T(4);
  for (int64_t i = 0; i < m * n; ++i) c[i] = static_cast<T>(i % 3);
  const std::vector<T> c0 = c;
  simdnn::GemmArgs<T> args;
  args.m = m;
  args.n = n;
  args.k = k;
  args.alpha = T(1.5);
  args.a = a.data();
  args.rs_a = k;
  args.cs_a = 1;
  args.b = b.data();
  args.rs_b = 1;  // B(p, j) = b[j * k + p]
  args.cs_b = k;
  args.beta = T(-0.5);
  args.c = c.data();
  args.rs_c = n;
  args.nthreads = nthreads;
  gemm(args);
  // Entries of A are multiples of 1/8 below 1, of B multiples of 1/4 below 2, so every product,
  // partial sum (at most 130 terms: below 2^13 units of 1/32) and the alpha/beta scaling is exact
  // in float whatever the summation order: the result must equal the loop's bit for bit.
  int64_t bad = 0;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double dot = 0;
      for (int64_t p = 0; p < k; ++p) dot += double(a[i * k + p]) * double(b[j * k + p]);
      const double want = 1.5 * dot - 0.5 * double(c0[i * n + j]);
      if (double(c[i * n + j]) != want) ++bad;
    }
  }
  return bad;
}

}  // namespace

int main() {
  using simdnn::Isa;
  const int64_t shapes[][3] = {{1, 1, 1}, {13, 37, 29}, {67, 45, 130}, {150, 97, 64}};
  int failures = 0, runs = 0;
  for (int i = 0; i < simdnn::kNumIsas; ++i) {
    const Isa isa = static_cast<Isa>(i);
    if (!simdnn::isa_available(isa)) continue;
    const simdnn::KernelTable& table = simdnn::kernels_for(isa);
    for (const auto& s : shapes) {
      for (int nthreads : {1, 2}) {
        const int64_t bad_f = check_gemm(gemm_of(table, 0.0f), s[0], s[1], s[2], nthreads);
        const int64_t bad_d = check_gemm(gemm_of(table, 0.0), s[0], s[1], s[2], nthreads);
        runs += 2;
        failures += (bad_f != 0) + (bad_d != 0);
        if (bad_f != 0 || bad_d != 0) {
          std::printf("FAIL %s %lldx%lldx%lld threads=%d: %lld float, %lld double elements wrong\n",
                      simdnn::isa_name(isa), static_cast<long long>(s[0]),
                      static_cast<long long>(s[1]), static_cast<long long>(s[2]), nthreads,
                      static_cast<long long>(bad_f), static_cast<long long>(bad_d));
        }
      }
    }
    std::printf("simdnn_smoke: %s GEMM checked (float and double, %zu shapes, 1 and 2 threads)\n",
                simdnn::isa_name(isa), sizeof(shapes) / sizeof(shapes[0]));
  }
  std::printf("simdnn_smoke: %d of %d products wrong (OpenMP %s)\n", failures, runs,
              simdnn::have_openmp() ? "on" : "off");
  return failures == 0 ? 0 : 1;
}
