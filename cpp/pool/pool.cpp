// The 2-D pooling kernels of one ISA (max and average, forward and backward): compiled once per
// ISA with that ISA's flags and -DSIMDNN_ISA_NS=<isa>, written once over the vector traits
// (cpp/simd/simd_<isa>.h; the scalar ISA is the same code on 1-lane "vectors"). Everything lives
// in an unnamed namespace inside the ISA's namespace, so nothing compiled with wide-ISA flags can
// be merged by the linker into code that runs on a narrower CPU.
//
// Shape legend (every kernel): x (N, C, H, W), window R x S, stride sh x sw, padding ph x pw,
// y (N, C, P, Q) with P = (H + 2*ph - R) / sh + 1, Q = (W + 2*pw - S) / sw + 1. All tensors are
// C-contiguous; a "plane" is one (n, c) image of H x W (or P x Q) elements.
//
// Threads take whole planes, or row blocks of planes when there are too few planes to share.
//
// Map of this folder:
//   geometry.h  window math, column tables, thread split, lane helpers
//   forward.h   forward loops (vectorised along q; clean / edge blocks), generic over the reduction
//   backward.h  backward loops, generic over the terms: a gather over dx, or tiled, or scattered
//   compact.h   2x2/s2 windows on short rows, flattened across rows and planes (LeNet's maps)
//   max.h       MaxOp / MaxBwd and max_forward / max_backward
//   avg.h       AvgOp / AvgBwd and avg_forward / avg_backward
//   pool.cpp    registration
#include "pool/pool.h"

#include "pool/avg.h"
#include "pool/max.h"
#include "registry.h"

#ifndef SIMDNN_ISA_NS
#error "compile with -DSIMDNN_ISA_NS=<isa>"
#endif

namespace simdnn::SIMDNN_ISA_NS {

SIMDNN_REGISTER_OP(max_pool_forward, max_forward)
SIMDNN_REGISTER_OP(max_pool_backward, max_backward)
SIMDNN_REGISTER_OP(avg_pool_forward, avg_forward)
SIMDNN_REGISTER_OP(avg_pool_backward, avg_backward)

}  // namespace simdnn::SIMDNN_ISA_NS
