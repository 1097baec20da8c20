// Integer helpers for sizes, offsets and work splits: one definition for every op.
//
// Sign convention: the divisor b is always > 0; the dividend a may have any sign (conv and pool
// pass negative offsets of windows that start in the padding). ceil_div is the true ceiling for
// every a and cannot overflow (no a + b - 1); round_up rounds towards +inf; round_down truncates
// towards zero, i.e. rounds down only for a >= 0, which is all it is used for.
//
// The functions are `static` so that each translation unit keeps its own copy: the per-ISA files
// are compiled with wide-ISA flags, and an inline (COMDAT) copy from one of them could be the one
// the linker keeps for code that runs on a narrower CPU.
#pragma once

#include <cstdint>

namespace simdnn {

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
// Ceiling of a / b (b > 0, any a).
static inline int64_t ceil_div(int64_t a, int64_t b) { return a / b + (a % b > 0 ? 1 : 0); }
// The smallest multiple of b that is >= a (b > 0).
static inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }
// The largest multiple of b that is <= a (b > 0, a >= 0).
static inline int64_t round_down(int64_t a, int64_t b) { return a / b * b; }
// v clamped to [lo, hi], as an int (lane counts and ranges).
static inline int clamp_int(int64_t v, int lo, int hi) {
  return static_cast<int>(v < lo ? lo : (v > hi ? hi : v));
}

// p + k for a ranged load: the result may point before the row (a window reaching into the left
// padding); the ranged loads read only elements that are inside. Integer arithmetic, because
// forming an out-of-array pointer is undefined in C++ even when nothing is read through it.
template <typename P>
static inline P* shifted(P* p, int64_t k) {
  return reinterpret_cast<P*>(reinterpret_cast<uintptr_t>(p) +
                              static_cast<uintptr_t>(k) * sizeof(P));
}

// Splits [0, total) (total >= 0) into `parts` ranges of whole `align` units, the first
// total/align % parts ranges one unit longer; returns part `idx` as [*begin, *end). The last unit
// may be partial; ranges past the end are empty.
static inline void split_range(int64_t total, int64_t align, int parts, int idx, int64_t* begin,
                               int64_t* end) {
  const int64_t units = ceil_div(total, align);
  const int64_t base = units / parts, extra = units % parts;
  const int64_t u0 = idx * base + min64(idx, extra);
  const int64_t u1 = u0 + base + (idx < extra ? 1 : 0);
  *begin = min64(u0 * align, total);
  *end = min64(u1 * align, total);
}

}  // namespace simdnn
