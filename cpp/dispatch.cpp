#include "dispatch.h"

#include <atomic>

#include "common/isa_macros.h"
#include "gemm/gemm_ukernels.h"

namespace simdnn {

namespace {

#define SIMDNN_FILL_OP(ns, name) \
  k->f32.name = ns::name##_f32;  \
  k->f64.name = ns::name##_f64;
#define SIMDNN_FILL_PROBE(ns, name) p->name = ns::name##_probe;

// The tables of one ISA, from the registry (every op and probe of ops.inc) and the GEMM blocking.
void fill_scalar(KernelTable* k, ProbeTable* p) {
#define SIMDNN_OP(family, name, FnType) SIMDNN_FILL_OP(scalar, name)
#define SIMDNN_PROBE(family, name, FnType) SIMDNN_FILL_PROBE(scalar, name)
#include "ops.inc"
  k->f32.gemm_blocking = scalar::gemm_blocking_f32();
  k->f64.gemm_blocking = scalar::gemm_blocking_f64();
}
#ifdef SIMDNN_HAVE_AVX2
void fill_avx2(KernelTable* k, ProbeTable* p) {
#define SIMDNN_OP(family, name, FnType) SIMDNN_FILL_OP(avx2, name)
#define SIMDNN_PROBE(family, name, FnType) SIMDNN_FILL_PROBE(avx2, name)
#include "ops.inc"
  k->f32.gemm_blocking = avx2::gemm_blocking_f32();
  k->f64.gemm_blocking = avx2::gemm_blocking_f64();
}
#endif
#ifdef SIMDNN_HAVE_AVX512
void fill_avx512(KernelTable* k, ProbeTable* p) {
#define SIMDNN_OP(family, name, FnType) SIMDNN_FILL_OP(avx512, name)
#define SIMDNN_PROBE(family, name, FnType) SIMDNN_FILL_PROBE(avx512, name)
#include "ops.inc"
  k->f32.gemm_blocking = avx512::gemm_blocking_f32();
  k->f64.gemm_blocking = avx512::gemm_blocking_f64();
}
#endif
#undef SIMDNN_FILL_OP
#undef SIMDNN_FILL_PROBE

// Only the ISAs this CPU supports are filled: the GEMM blocking functions are compiled with their
// ISA's flags, and the compiler is free to use its instructions even there (GCC 12 put AVX-512
// instructions in what was avx512::register_gemm), so calling them on an older CPU would raise
// SIGILL at import. Tables of unsupported ISAs stay empty; nothing can select them
// (set_active_isa checks isa_available).
struct Tables {
  KernelTable t[kNumIsas];
  ProbeTable probes[kNumIsas];
  Tables() {
    for (int i = 0; i < kNumIsas; ++i) t[i].isa = static_cast<Isa>(i);
#define SIMDNN_FILL(isa)       \
  if (isa_available(Isa::isa)) \
    fill_##isa(&t[static_cast<int>(Isa::isa)], &probes[static_cast<int>(Isa::isa)]);
    SIMDNN_FILL(scalar)
#ifdef SIMDNN_HAVE_AVX2
    SIMDNN_FILL(avx2)
#endif
#ifdef SIMDNN_HAVE_AVX512
    SIMDNN_FILL(avx512)
#endif
#undef SIMDNN_FILL
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

const ProbeTable& probes_for(Isa isa) { return tables().probes[static_cast<int>(isa)]; }

const ProbeTable& probes() { return probes_for(active_isa()); }

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
