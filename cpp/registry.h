// What a per-ISA kernel file needs to register its entry points: the op types (the family
// headers, types only) and, in each compiled ISA's namespace, the declarations derived from the
// registry (ops.inc):
//   extern const FnType<float>  simdnn::<isa>::<name>_f32;
//   extern const FnType<double> simdnn::<isa>::<name>_f64;
//   extern const FnType         simdnn::<isa>::<name>_probe;     (probes)
// A kernel file defines them, in its ISA's namespace (simdnn::SIMDNN_ISA_NS), with
//   SIMDNN_REGISTER_OP(name, impl)     <name>_f32 = &impl<float>, <name>_f64 = &impl<double>
//   SIMDNN_REGISTER_PROBE(name, fn)    <name>_probe = &fn
// impl and fn may live in an unnamed namespace. The entries are constants (constant
// initialisation), so nothing compiled with wide-ISA flags runs before dispatch.cpp has checked
// the CPU. dispatch.h, above this header, builds the tables from the same list.
#pragma once

#include "common/isa_macros.h"
#include "conv/conv.h"
#include "elementwise/elementwise.h"
#include "gemm/gemm.h"
#include "norm/batch_norm.h"
#include "pool/pool.h"
#include "probe/probe.h"

#define SIMDNN_DECLARE_OP(name, FnType)  \
  extern const FnType<float> name##_f32; \
  extern const FnType<double> name##_f64;
#define SIMDNN_DECLARE_PROBE(name, FnType) extern const FnType name##_probe;
// The blocking of this ISA's GEMM (cpu_info); a function, called only once the CPU is checked.
#define SIMDNN_DECLARE_GEMM_BLOCKING \
  GemmBlocking gemm_blocking_f32();  \
  GemmBlocking gemm_blocking_f64();

namespace simdnn::scalar {
#define SIMDNN_OP(family, name, FnType) SIMDNN_DECLARE_OP(name, FnType)
#define SIMDNN_PROBE(family, name, FnType) SIMDNN_DECLARE_PROBE(name, FnType)
#include "ops.inc"
SIMDNN_DECLARE_GEMM_BLOCKING
}  // namespace simdnn::scalar
#ifdef SIMDNN_HAVE_AVX2
namespace simdnn::avx2 {
#define SIMDNN_OP(family, name, FnType) SIMDNN_DECLARE_OP(name, FnType)
#define SIMDNN_PROBE(family, name, FnType) SIMDNN_DECLARE_PROBE(name, FnType)
#include "ops.inc"
SIMDNN_DECLARE_GEMM_BLOCKING
}  // namespace simdnn::avx2
#endif
#ifdef SIMDNN_HAVE_AVX512
namespace simdnn::avx512 {
#define SIMDNN_OP(family, name, FnType) SIMDNN_DECLARE_OP(name, FnType)
#define SIMDNN_PROBE(family, name, FnType) SIMDNN_DECLARE_PROBE(name, FnType)
#include "ops.inc"
SIMDNN_DECLARE_GEMM_BLOCKING
}  // namespace simdnn::avx512
#endif

#undef SIMDNN_DECLARE_OP
#undef SIMDNN_DECLARE_PROBE
#undef SIMDNN_DECLARE_GEMM_BLOCKING

#define SIMDNN_REGISTER_OP(name, impl)            \
  decltype(name##_f32) name##_f32 = &impl<float>; \
  decltype(name##_f64) name##_f64 = &impl<double>;
#define SIMDNN_REGISTER_PROBE(name, fn) decltype(name##_probe) name##_probe = &fn;
