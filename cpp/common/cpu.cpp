// CPUID/XGETBV probing and cache-size detection. Compiled with the baseline flags only.
#include "common/cpu.h"

#include <atomic>
#include <cstring>

#if defined(__linux__) || defined(__APPLE__)
#include <unistd.h>
#endif

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define SIMDNN_X86_PROBE 1
#include <cpuid.h>
#endif

namespace simdnn {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::scalar:
      return "scalar";
    case Isa::avx2:
      return "avx2";
    case Isa::avx512:
      return "avx512";
  }
  return "unknown";
}

bool parse_isa(const char* name, Isa* out) {
  for (int i = 0; i < kNumIsas; ++i) {
    if (std::strcmp(name, isa_name(static_cast<Isa>(i))) == 0) {
      *out = static_cast<Isa>(i);
      return true;
    }
  }
  return false;
}

namespace {

#ifdef SIMDNN_X86_PROBE
struct Regs {
  unsigned a = 0, b = 0, c = 0, d = 0;
};

Regs cpuid(unsigned leaf, unsigned sub = 0) {
  Regs r;
  __cpuid_count(leaf, sub, r.a, r.b, r.c, r.d);
  return r;
}

// XCR0: which register states the OS saves on a context switch. Read with the raw opcode so this
// file needs no -mxsave.
uint64_t xgetbv0() {
  unsigned lo = 0, hi = 0;
  __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}

void probe_isas(CpuInfo* info) {
  const unsigned max_leaf = cpuid(0).a;
  if (max_leaf < 7) return;
  const Regs l1 = cpuid(1);
  const Regs l7 = cpuid(7, 0);
  const bool osxsave = (l1.c >> 27) & 1;
  if (!osxsave) return;
  const uint64_t xcr0 = xgetbv0();
  const bool os_ymm = (xcr0 & 0x6) == 0x6;    // SSE + AVX state
  const bool os_zmm = (xcr0 & 0xe6) == 0xe6;  // + opmask, ZMM_Hi256, Hi16_ZMM
  const bool avx = (l1.c >> 28) & 1, fma = (l1.c >> 12) & 1;
  const bool avx2 = (l7.b >> 5) & 1;
  const bool f = (l7.b >> 16) & 1, dq = (l7.b >> 17) & 1, bw = (l7.b >> 30) & 1,
             vl = (l7.b >> 31) & 1;
  info->supported[static_cast<int>(Isa::avx2)] = os_ymm && avx && fma && avx2;
  info->supported[static_cast<int>(Isa::avx512)] =
      info->supported[static_cast<int>(Isa::avx2)] && os_zmm && f && dq && bw && vl;

  char vendor[13] = {};
  const Regs l0 = cpuid(0);
  std::memcpy(vendor + 0, &l0.b, 4);
  std::memcpy(vendor + 4, &l0.d, 4);
  std::memcpy(vendor + 8, &l0.c, 4);
  if (std::strcmp(vendor, "GenuineIntel") == 0) {
    info->vendor = "Intel";
    info->in_place_stride_bytes = 512;
    info->pointwise_plane_bytes = 2048;
  }
  if (std::strcmp(vendor, "AuthenticAMD") == 0) {
    info->vendor = "AMD";
    // Family: the base family, plus the extended one where the base reads 0xf (AMD's manual,
    // CPUID Fn0000_0001_EAX). 0x19 is Zen 3 and Zen 4; of the two only Zen 4 has AVX-512. The
    // in-place span and the narrow Winograd threshold were measured on both (cpu.h); the
    // pointwise plane and the Winograd schedule on Zen 4 only, where they differ from Zen 3's
    // defaults (Zen 3 ran Winograd's chunk tasks 1.2-1.4x faster than its phases, cpu.h).
    const unsigned base = (l1.a >> 8) & 0xf;
    const unsigned family = base == 0xf ? base + ((l1.a >> 20) & 0xff) : base;
    if (family == 0x19) {
      info->in_place_span_bytes = int64_t(7) << 19;  // 3.5 MiB
      info->winograd_narrow_tile_channels = 2048;
      if (info->supported[static_cast<int>(Isa::avx512)]) {
        info->pointwise_plane_bytes = 2048;
        info->winograd_chunk_tasks = false;
      }
    }
  }
}

// Deterministic cache parameters: leaf 4 (Intel) or 0x8000001D (AMD). Each sub-leaf describes one
// cache; size = ways * partitions * line size * sets.
void probe_caches_cpuid(CpuInfo* info) {
  unsigned leaf = 4;
  if (std::strcmp(info->vendor, "AMD") == 0) {
    if (cpuid(0x80000000u).a < 0x8000001Du) return;
    leaf = 0x8000001Du;
  } else if (cpuid(0).a < 4) {
    return;
  }
  for (unsigned sub = 0; sub < 16; ++sub) {
    const Regs r = cpuid(leaf, sub);
    const unsigned type = r.a & 0x1f;  // 0: no more caches, 1: data, 2: instruction, 3: unified
    if (type == 0) break;
    if (type == 2) continue;
    const unsigned level = (r.a >> 5) & 0x7;
    const int64_t ways = ((r.b >> 22) & 0x3ff) + 1;
    const int64_t parts = ((r.b >> 12) & 0x3ff) + 1;
    const int64_t line = (r.b & 0xfff) + 1;
    const int64_t sets = static_cast<int64_t>(r.c) + 1;
    const int64_t size = ways * parts * line * sets;
    if (level == 1 && info->l1d == 0) info->l1d = size;
    if (level == 2 && info->l2 == 0) info->l2 = size;
    if (level == 3 && info->l3 == 0) info->l3 = size;
  }
}
#endif

void probe_caches_os(CpuInfo* info) {
#if defined(_SC_LEVEL1_DCACHE_SIZE)
  if (info->l1d <= 0) info->l1d = sysconf(_SC_LEVEL1_DCACHE_SIZE);
  if (info->l2 <= 0) info->l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
  if (info->l3 <= 0) info->l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
#else
  (void)info;
#endif
}

CpuInfo detect() {
  CpuInfo info;
  for (int i = 0; i < kNumIsas; ++i) info.compiled[i] = info.supported[i] = false;
  info.compiled[static_cast<int>(Isa::scalar)] = true;
  info.supported[static_cast<int>(Isa::scalar)] = true;
#ifdef SIMDNN_HAVE_AVX2
  info.compiled[static_cast<int>(Isa::avx2)] = true;
#endif
#ifdef SIMDNN_HAVE_AVX512
  info.compiled[static_cast<int>(Isa::avx512)] = true;
#endif
#ifdef SIMDNN_X86_PROBE
  probe_isas(&info);
  probe_caches_cpuid(&info);
#endif
  probe_caches_os(&info);
  // Conservative defaults when nothing could be read (a common desktop core of the last decade).
  if (info.l1d <= 0) info.l1d = 32 * 1024;
  if (info.l2 <= 0) info.l2 = 512 * 1024;
  if (info.l3 <= 0) info.l3 = 8 * 1024 * 1024;
  return info;
}

}  // namespace

const CpuInfo& cpu_info() {
  static const CpuInfo info = detect();
  return info;
}

bool isa_available(Isa isa) {
  const int i = static_cast<int>(isa);
  return cpu_info().compiled[i] && cpu_info().supported[i];
}

namespace {
// Relaxed: a switch is set by a test between calls, never while a kernel reads it.
std::atomic<int> g_test_switches[static_cast<int>(TestSwitch::kCount)] = {-1, -1, -1, -1};
static_assert(static_cast<int>(TestSwitch::kCount) == 4, "one initialiser per switch");
}  // namespace

int test_switch(TestSwitch s) {
  return g_test_switches[static_cast<int>(s)].load(std::memory_order_relaxed);
}

void set_test_switch(TestSwitch s, int mode) {
  g_test_switches[static_cast<int>(s)].store(mode < 0 ? -1 : (mode != 0 ? 1 : 0),
                                             std::memory_order_relaxed);
}

bool winograd_chunk_tasks() {
  const int mode = test_switch(TestSwitch::kWinogradChunkTasks);
  return mode < 0 ? cpu_info().winograd_chunk_tasks : mode != 0;
}

}  // namespace simdnn
