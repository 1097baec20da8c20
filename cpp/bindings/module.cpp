// simdnn._core: the pybind11 module. Each op family binds itself (bindings/<family>.cpp); the
// glue converts and checks arguments, releases the GIL and calls the active kernel table. No
// arithmetic on array data happens in bindings.
#include <cstdlib>
#include <string>

#include "bindings/common.h"
#include "common/cpu.h"
#include "dispatch.h"

namespace simdnn::bind {
std::string available_isas();
}

PYBIND11_MODULE(_core, m) {
  using namespace simdnn;
  namespace py = pybind11;
  m.doc() =
      "simdnn native kernels (SIMD, on simdnn's thread pool). Use simdnn.ops, not this module "
      "directly.";

  // SIMDNN_ISA=scalar|avx2|avx512 forces a path for the whole process.
  if (const char* forced = std::getenv("SIMDNN_ISA"); forced != nullptr && forced[0] != '\0') {
    Isa isa;
    if (!parse_isa(forced, &isa)) {
      throw py::import_error(std::string("SIMDNN_ISA='") + forced +
                             "' is not one of scalar, avx2, avx512");
    }
    if (!set_active_isa(isa)) {
      throw py::import_error(
          std::string("SIMDNN_ISA='") + forced +
          "' is not available on this CPU/build (available: " + bind::available_isas() + ")");
    }
  }

  bind::bind_runtime(m);
  bind::bind_gemm(m);
  bind::bind_conv(m);
  bind::bind_pool(m);
  bind::bind_elementwise(m);
  bind::bind_norm(m);
}
