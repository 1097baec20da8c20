// CPU description used by dispatch and blocking: which ISAs the CPU *and* the OS support, and the
// data-cache sizes the kernels block for. Detected once, at first use.
#pragma once

#include <cstdint>

namespace simdnn {

enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2 };
constexpr int kNumIsas = 3;

const char* isa_name(Isa isa);
// Parses "scalar" / "avx2" / "avx512"; returns false for anything else.
bool parse_isa(const char* name, Isa* out);

struct CpuInfo {
  bool compiled[kNumIsas];   // the kernels of this ISA are part of this build
  bool supported[kNumIsas];  // the CPU has the instructions and the OS saves the registers
  // Per-core data cache sizes in bytes (L3 is the whole cache as reported; kernels cap its use).
  int64_t l1d = 0, l2 = 0, l3 = 0;
  const char* vendor = "unknown";
  // The largest row stride in bytes of a row-major B that a GEMM reads in place (gemm_driver.h,
  // MatrixB::in_place, which has the measurements); a B whose rows lie farther apart is packed.
  // 512 bytes on Intel (it was 2 KiB, the reach of Intel's L1 stride prefetcher, until B was
  // measured as the benchmark and a training step see it: from L3, not hot in L2); no limit
  // elsewhere.
  int64_t in_place_stride_bytes = INT64_MAX;
  // The most bytes that the rows of a row-major B read in place by a GEMM may span (K times the
  // row stride); a longer B is packed. 3.5 MiB on AMD family 0x19: on Zen 4 a B of 4 MB or more
  // read in place ran 10-30% slower than packed; on a Zen 3 VM (AVX2, float32, GFLOP/s in place
  // -> packed, medians of 6 alternating runs, 2 threads | 1 thread) 128 x 4096 . 4096 x 1000
  // 141.6 -> 163.1 | 70.2 -> 86.7, 128 x 2048 . 2048 x 1000 147.4 -> 164.7 | 75.4 -> 87.4, 64 x
  // 2048 . 2048 x 600 149.0 -> 162.3 | 75.4 -> 85.9, 64 x 1000 . 1000 x 1000 even (168.3 ->
  // 166.5). No limit elsewhere (the Zen 5 measurements are in gemm_driver.h, MatrixB::in_place).
  int64_t in_place_span_bytes = INT64_MAX;
  // The largest plane in bytes that a pointwise convolution's GEMM reads in place; farther planes
  // are packed in row groups (conv/gemm_policies.h, Im2colB::in_place). 2 KiB on Intel (its
  // stride prefetcher's reach) and on AMD Zen 4 (measured there); no limit elsewhere (Zen 5).
  int64_t pointwise_plane_bytes = INT64_MAX;
  // Whether a Winograd convolution whose batch gives each thread an image runs each chunk of
  // images as one thread's task, transforms and GEMMs in that core's caches, or runs each phase of
  // a chunk over all threads (conv/winograd.h, winograd_buffers). Tasks measured faster on Intel
  // and on an AMD Zen 3 VM (phases 1.20-1.40x slower on 3x3 64->64 32x32 N32 and 128->128 28x28
  // N16 in all three passes, 0.94-1.03x on 256->256 14x14 N16); phases on AMD Zen 4 (family 0x19
  // with AVX-512), where tasks ran 1.1-1.5x slower; Zen 5 is not measured and keeps the default.
  bool winograd_chunk_tasks = true;
  // The least tiles x min(C, K) (4x4 tiles of the batch) at which "auto" takes Winograd for a
  // layer of at most 128 channels (conv/winograd.h, winograd_profitable): 8192 where measured on
  // Zen 5 (N1 128->128 28x28, 6272, ran 0.7-0.9x the direct path there), 2048 on AMD family 0x19:
  // on Zen 4 the same layer ran F(4x4) 2.1x faster; on a Zen 3 VM (2 threads, float32, direct ->
  // Winograd) 1496 -> 692 us forward, 1555 -> 701 backward-data, 1538 -> 546 backward-weights, N1
  // 64->64 28x28 (3136) 475 -> 271 us, N1 128->128 14x14 (2048) 455 -> 411 us, while below 2048 it
  // lost (N1 128->128 12x12, 1152: 334 -> 552 us; N1 128->128 8x8 153 -> 464 us).
  int64_t winograd_narrow_tile_channels = 8192;
};

// Detected once (thread-safe static initialisation) and immutable afterwards.
const CpuInfo& cpu_info();

// compiled && supported.
bool isa_available(Isa isa);

// Switches that let the tests reach every path a rule chooses between, on any machine. Each holds
// -1 (the default: the rule chooses), 1 (forced on wherever the path can run) or 0 (never taken).
enum class TestSwitch : int {
  kWinogradChunkTasks,  // Winograd's chunk schedule: 1 tasks, 0 phases, -1 the CPU's own
  kConvLanesWide,       // the wide-row form of the filters-in-lanes forward (direct.h's
                        // lanes_wide_pays)
  kGemmSwap,            // a product with a transposed B computed transposed (gemm_driver.h's
                        // swap_pays)
  kConvSpanImages,      // a forward implicit GEMM's column panels across images
                        // (gemm_policies.h's Im2colB::span_pays)
  kCount,
};
int test_switch(TestSwitch s);
// mode < 0 stores -1, any other value 1 or 0 (its truth).
void set_test_switch(TestSwitch s, int mode);

// cpu_info().winograd_chunk_tasks, unless a test forced a schedule
// (TestSwitch::kWinogradChunkTasks).
bool winograd_chunk_tasks();

}  // namespace simdnn
