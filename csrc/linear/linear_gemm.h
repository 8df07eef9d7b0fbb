// Prefill-sized linear (many rows of x): y[m, n] = sum_k x[m, k] * w[n, k], fp32 accumulation, for fp32
// or bf16 weights. A packed register-tile GEMM in the BLIS manner (the packing and k-block loop: linear_pack.h):
// - x is packed once per call (a k-range at a time when it is long), per k-block of kKC, into groups of
//   kMR rows stored k-major ([kc][kMR]: the microkernel broadcasts one value per row);
// - a task owns a panel of weight rows; per k-block it packs them into kNR-row micro-panels stored
//   k-major ([kc][kNR]: two 8-lane vectors per k), widening bf16 to fp32 on the way;
// - the 6 x 16 microkernel keeps 12 vector accumulators and does 12 FMAs per 2 vector loads and
//   6 broadcasts, with no horizontal sums; the 8 KB weight micro-panel stays in L1 while every x group
//   streams past it from L2.
// Each output is summed by one task in a fixed order (k within a block, then block after block), so the
// result does not depend on the thread count.
// Why: MKL's multi-threaded sgemm on the benchmarks' AVX2 EPYC runs Gemma 4's projections at 46-80
// GFLOP/s on 2 threads, and torch's bf16 matmul without AVX512-BF16 far slower. On one thread this kernel
// ran 68-76 GFLOP/s against the packing-free dot tile it replaced, 55-69; on two, 101-121, where both
// kernels meet the VM's ceiling (dev/perf/gemm_packed_kernel.cpp; the table is in docs/performance.md).
// Reference: reference.linear in python/gemma4/ops/reference.py.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#if defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

#include "linear/linear_gemv.h"

namespace gemma4::linear {

constexpr int kMR = 6;        // rows of x per tile
constexpr int kNR = 16;       // weight rows per tile: two vectors of outputs
constexpr int64_t kKC = 128;  // k per block: a packed micro-panel of weights is 8 KB (L1)

// Packed x in groups of mr rows (kMR here, avx512::kGemmMR for the AVX-512 tile): for each k-block (offset
// k0 * groups * mr), group g at g * kc * mr holds dst[k * mr + i] = x[g * mr + i, k0 + k], rows past M zero.
inline void pack_x_group(const float* x, int64_t M, int64_t K, int64_t k0, int64_t kc, int64_t g, int mr,
                         float* dst) {
  for (int i = 0; i < mr; ++i) {
    const int64_t m = g * mr + i;
    for (int64_t k = 0; k < kc; ++k) dst[k * mr + i] = m < M ? x[m * K + k0 + k] : 0.f;
  }
}

// One weight as float (linear_pack.h's packing widens bf16 with it; load8 is linear_gemv.h's).
inline float widen(float v) { return v; }
inline float widen(c10::BFloat16 v) { return static_cast<float>(v); }

#include "linear/linear_pack.h"  // transpose8, pack_w_panel, pack_kn_panel, gemm_panel, in this namespace

// c[i * ldc + j] (+)= sum over k < kc of a[k * kMR + i] * b[k * kNR + j], i < kMR, j < kNR.
inline void micro_6x16(const float* a, const float* b, int64_t kc, float* c, int64_t ldc, bool add) {
#if defined(CPU_CAPABILITY_AVX2)
  __m256 acc[kMR][2];
  for (int i = 0; i < kMR; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_loadu_ps(b + k * kNR), b1 = _mm256_loadu_ps(b + k * kNR + 8);
    for (int i = 0; i < kMR; ++i) {
      const __m256 av = _mm256_broadcast_ss(a + k * kMR + i);
      acc[i][0] = _mm256_fmadd_ps(av, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(av, b1, acc[i][1]);
    }
  }
  for (int i = 0; i < kMR; ++i)
    for (int v = 0; v < 2; ++v) {
      float* p = c + i * ldc + 8 * v;
      _mm256_storeu_ps(p, add ? _mm256_add_ps(_mm256_loadu_ps(p), acc[i][v]) : acc[i][v]);
    }
#else  // the same sums in the same order, left to the compiler to vectorize
  float acc[kMR][kNR] = {};
  for (int64_t k = 0; k < kc; ++k)
    for (int i = 0; i < kMR; ++i)
      for (int j = 0; j < kNR; ++j) acc[i][j] = std::fma(a[k * kMR + i], b[k * kNR + j], acc[i][j]);
  for (int i = 0; i < kMR; ++i)
    for (int j = 0; j < kNR; ++j) c[i * ldc + j] = add ? c[i * ldc + j] + acc[i][j] : acc[i][j];
#endif
}

}  // namespace gemma4::linear
