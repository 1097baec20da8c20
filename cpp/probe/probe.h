// Probes of the machine's limits, used by the benchmark report to state each kernel's figure as a
// fraction of what the hardware can do.
#pragma once

#include <cstdint>

namespace simdnn {

// Float32 multiply-add throughput in GFLOP/s on nthreads threads with this ISA's widest vectors:
// 12 independent FMA chains per thread (enough to cover FMA latency x issue width on any current
// core: 4 cycles x 2 pipes = 8), run for about `seconds`.
using ProbeFmaFn = double (*)(int nthreads, double seconds);
// Streaming bandwidth in GB/s (bytes read + written) of a = b + s * c over three arrays of
// `bytes` / 3 each, on nthreads threads; the best of a few passes.
using ProbeStreamFn = double (*)(int nthreads, int64_t bytes);

}  // namespace simdnn
