// Subnormal floats read and written as zero inside a scope: MXCSR's DAZ (bit 6) and FTZ (bit 15) set, the caller's
// MXCSR restored at the scope's end. The kernels' parallel tasks open one each (at::parallel_for runs them on
// OpenMP's threads, each with its own MXCSR), so nothing outside gemma4's kernels changes mode.
//
// Why: on Intel CPUs an FMA whose input or result is subnormal takes a microcode assist of ~100+ cycles. E2B's
// per-layer projection takes gelu(gate) * per-layer input, in which a random model has ~1 subnormal value per
// 256-wide row (real ones fewer, not none); on the 2-core Xeon its fp32 prefill call (128 x 256 -> 1536) took 4.4
// ms against 0.5 with those values zeroed, and a decode call 197 us against 15.5 (a bf16 one 162 against 18, from
// products that fall below the normal range). A subnormal is below 1.2e-38: zeroing it moves an fp32 sum of
// Gemma's magnitudes by nothing its rounding can show.
#pragma once

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

namespace gemma4 {
class FlushDenormals {
 public:
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | kDaz | kFtz); }
  ~FlushDenormals() { _mm_setcsr(saved_); }
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;

 private:
  static constexpr unsigned kDaz = 1u << 6, kFtz = 1u << 15;
  unsigned saved_;
};
}  // namespace gemma4
#else  // other architectures: IEEE subnormals as they come
namespace gemma4 {
struct FlushDenormals {
  FlushDenormals() {}  // (user-provided: the kernels declare it const)
};
}  // namespace gemma4
#endif
