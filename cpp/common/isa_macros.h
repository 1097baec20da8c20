// Macros that filter registry lines (cpp/kernels.inc) by ISA.
//   SIMDNN_IF_<isa>(...)   expands its arguments when that ISA is compiled into this build.
//   SIMDNN_THIS_<isa>(...) expands them only in the translation units built for that ISA
//                          (those compiled with -DSIMDNN_ISA_NS=<isa>).
#pragma once

#define SIMDNN_IF_scalar(...) __VA_ARGS__
#ifdef SIMDNN_HAVE_AVX2
#define SIMDNN_IF_avx2(...) __VA_ARGS__
#else
#define SIMDNN_IF_avx2(...)
#endif
#ifdef SIMDNN_HAVE_AVX512
#define SIMDNN_IF_avx512(...) __VA_ARGS__
#else
#define SIMDNN_IF_avx512(...)
#endif

#if defined(SIMDNN_ISA_IS_SCALAR)
#define SIMDNN_THIS_scalar(...) __VA_ARGS__
#else
#define SIMDNN_THIS_scalar(...)
#endif
#if defined(SIMDNN_ISA_IS_AVX2)
#define SIMDNN_THIS_avx2(...) __VA_ARGS__
#else
#define SIMDNN_THIS_avx2(...)
#endif
#if defined(SIMDNN_ISA_IS_AVX512)
#define SIMDNN_THIS_avx512(...) __VA_ARGS__
#else
#define SIMDNN_THIS_avx512(...)
#endif
