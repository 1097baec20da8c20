// Placeholder registration; the pool kernels land in this file.
#include "dispatch.h"

#ifndef SIMDNN_ISA_NS
#error "compile with -DSIMDNN_ISA_NS=<isa>"
#endif

namespace simdnn::SIMDNN_ISA_NS {

void register_pool(KernelTable*) {}

}  // namespace simdnn::SIMDNN_ISA_NS
