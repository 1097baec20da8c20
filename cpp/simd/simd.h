// The vector traits of the ISA this translation unit is compiled for (-DSIMDNN_ISA_IS_<ISA>).
#pragma once

#if defined(SIMDNN_ISA_IS_AVX512)
#include "simd/simd_avx512.h"
#elif defined(SIMDNN_ISA_IS_AVX2)
#include "simd/simd_avx2.h"
#elif defined(SIMDNN_ISA_IS_SCALAR)
#include "simd/simd_scalar.h"
#else
#error "simd/simd.h is for per-ISA translation units (compile with -DSIMDNN_ISA_IS_<ISA>)"
#endif
