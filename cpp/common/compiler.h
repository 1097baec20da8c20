// Compiler hints shared by the kernels (no-ops where the compiler lacks them).
#pragma once

#if defined(__GNUC__) || defined(__clang__)
#define SIMDNN_PREFETCH(p) __builtin_prefetch(p)
// Into L2 rather than L1 (prefetcht1): data wanted a while from now.
#define SIMDNN_PREFETCH_L2(p) __builtin_prefetch(p, 0, 2)
#define SIMDNN_UNROLL _Pragma("GCC unroll 32")
#define SIMDNN_UNROLL2 _Pragma("GCC unroll 2")
#define SIMDNN_NOINLINE __attribute__((noinline))
#else
#define SIMDNN_PREFETCH(p) ((void)0)
#define SIMDNN_PREFETCH_L2(p) ((void)0)
#define SIMDNN_UNROLL
#define SIMDNN_UNROLL2
#define SIMDNN_NOINLINE
#endif
