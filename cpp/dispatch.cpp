#include "dispatch.h"

#include <atomic>

#include "common/isa_macros.h"
#include "gemm/gemm_ukernels.h"

namespace simdnn {

namespace {

// Only the ISAs this CPU supports are registered: each ISA's registration functions are compiled
// with that ISA's flags, and the compiler is free to use its instructions even there (GCC 12 put
// AVX-512 instructions in avx512::register_gemm), so calling them on an older CPU would raise
// SIGILL at import. Tables of unsupported ISAs stay empty; nothing can select them
// (set_active_isa checks isa_available).
struct Tables {
  KernelTable t[kNumIsas];
  Tables() {
    for (int i = 0; i < kNumIsas; ++i) t[i].isa = static_cast<Isa>(i);
#define SIMDNN_REGISTER_ALL(isa) \
  if (isa_available(Isa::isa)) { \
    SIMDNN_REGISTER_ONE(isa)     \
  }
#define SIMDNN_REGISTER_ONE(isa)                             \
  isa::register_gemm(&t[static_cast<int>(Isa::isa)]);        \
  isa::register_conv(&t[static_cast<int>(Isa::isa)]);        \
  isa::register_pool(&t[static_cast<int>(Isa::isa)]);        \
  isa::register_probe(&t[static_cast<int>(Isa::isa)]);       \
  isa::register_elementwise(&t[static_cast<int>(Isa::isa)]); \
  isa::register_norm(&t[static_cast<int>(Isa::isa)]);
    SIMDNN_REGISTER_ALL(scalar)
#ifdef SIMDNN_HAVE_AVX2
    SIMDNN_REGISTER_ALL(avx2)
#endif
#ifdef SIMDNN_HAVE_AVX512
    SIMDNN_REGISTER_ALL(avx512)
#endif
#undef SIMDNN_REGISTER_ALL
#undef SIMDNN_REGISTER_ONE
  }
};

const Tables& tables() {
  static const Tables tabs;
  return tabs;
}

std::atomic<const KernelTable*>& active() {
  static std::atomic<const KernelTable*> p{&kernels_for(best_isa())};
  return p;
}

}  // namespace

const KernelTable& kernels_for(Isa isa) { return tables().t[static_cast<int>(isa)]; }

Isa best_isa() {
  for (int i = kNumIsas - 1; i > 0; --i) {
    if (isa_available(static_cast<Isa>(i))) return static_cast<Isa>(i);
  }
  return Isa::scalar;
}

namespace {
// The ISA a thread chose with use_isa, over the process-wide one: two threads' overlapping
// blocks never leak into each other. Only the bindings call kernels() (on the calling thread,
// before any parallel work), so worker threads never need it.
thread_local const KernelTable* t_override = nullptr;
}  // namespace

const KernelTable& kernels() {
  const KernelTable* t = t_override;
  return t != nullptr ? *t : *active().load(std::memory_order_acquire);
}

Isa active_isa() { return kernels().isa; }

bool set_active_isa(Isa isa) {
  if (!isa_available(isa)) return false;
  active().store(&kernels_for(isa), std::memory_order_release);
  return true;
}

bool set_thread_isa(const Isa* isa) {
  if (isa == nullptr) {
    t_override = nullptr;
    return true;
  }
  if (!isa_available(*isa)) return false;
  t_override = &kernels_for(*isa);
  return true;
}

const Isa* thread_isa() { return t_override != nullptr ? &t_override->isa : nullptr; }

const UkernelInfo* ukernels(int* count) {
#define SIMDNN_GEMM_UKERNEL(isa, T, MR, NR, name)                                           \
  SIMDNN_IF_##isa({"gemm", Isa::isa, sizeof(T) == 4 ? "float32" : "float64", MR, NR, #name, \
                   reinterpret_cast<void*>(&isa::name)}, )
  static const UkernelInfo list[] = {
#include "kernels.inc"
  };
#undef SIMDNN_GEMM_UKERNEL
  *count = static_cast<int>(sizeof(list) / sizeof(list[0]));
  return list;
}

}  // namespace simdnn
