// conv glue (placeholder).
#include "bindings/common.h"

namespace simdnn::bind {

void bind_conv(py::module_&) {}

}  // namespace simdnn::bind
