// pool glue (placeholder).
#include "bindings/common.h"

namespace simdnn::bind {

void bind_pool(py::module_&) {}

}  // namespace simdnn::bind
