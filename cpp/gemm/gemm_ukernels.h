// Declarations of every micro-kernel in the registry, each in its ISA's namespace.
#pragma once

#include <cstdint>

#include "common/isa_macros.h"
#include "gemm/gemm.h"

#define SIMDNN_GEMM_UKERNEL(isa, T, MR, NR, name) \
  SIMDNN_IF_##isa(namespace simdnn::isa { void name(SIMDNN_GEMM_UKERNEL_PARAMS(T)); })
#include "kernels.inc"
#undef SIMDNN_GEMM_UKERNEL
