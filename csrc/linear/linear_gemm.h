// Prefill-sized fp32 linear (many rows of x) without packing: y[m, n] = sum_k x[m, k] * w[n, k].
// A register tile of RN weight rows x RM rows of x keeps RN*RM vector accumulators of 8 k-partial sums;
// both operands are read along k as they lie in memory (no transposed copy), and each accumulator is
// reduced once per k-block. 4 x 3 tiles: 12 accumulators + 4 weight + 3 x registers of the
// 16, 12 FMAs per 7 loads. Loops: a task owns kNG weight rows; per k-block of kKC it walks x in kMC-row
// blocks (kept in L2) and, per 4 weight rows (kept in L1), every 3-row tile of the block.
// Why: MKL's multi-threaded sgemm on the AVX2 EPYC of the benchmarks runs these shapes at 46-78 GFLOP/s
// on 2 threads; this loop measured 94-104 (dev/perf/gemm_dot_kernel.cpp). linear_cpu.cpp uses it where
// it measured faster. (bf16 weights keep their widen + single-threaded sgemm per block, which measured
// as fast as this loop.)
// Reference: reference.linear in python/gemma4/ops/reference.py.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#if defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

#include "linear/linear_gemv.h"

namespace gemma4::linear {

constexpr int kTileN = 4, kTileM = 3;
constexpr int64_t kKC = 2048;  // k per block: 4 fp32 weight rows of it are 32 KB (L1)
constexpr int64_t kMC = 30;    // x rows per block: 30 x 2048 fp32 = 240 KB (L2)
constexpr int64_t kNG = 48;    // weight rows per task

#if defined(CPU_CAPABILITY_AVX2)
// c[j * ldc + i] (+)= sum over k < kc of w[i * ldw + k] * x[j * ldx + k], for i < RN, j < RM.
template <int RN, int RM>
inline void dot_tile(const float* w, int64_t ldw, const float* x, int64_t ldx, int64_t kc, float* c, int64_t ldc,
                     bool add) {
  __m256 acc[RN][RM];
  for (int i = 0; i < RN; ++i)
    for (int j = 0; j < RM; ++j) acc[i][j] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= kc; k += 8) {
    __m256 xv[RM];
    for (int j = 0; j < RM; ++j) xv[j] = _mm256_loadu_ps(x + j * ldx + k);
    for (int i = 0; i < RN; ++i) {
      const __m256 wv = _mm256_loadu_ps(w + i * ldw + k);
      for (int j = 0; j < RM; ++j) acc[i][j] = _mm256_fmadd_ps(wv, xv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < RN; ++i)
    for (int j = 0; j < RM; ++j) {
      float s = hsum8(acc[i][j]);
      for (int64_t t = k; t < kc; ++t) s = std::fma(w[i * ldw + t], x[j * ldx + t], s);  // kc % 8 tail
      c[j * ldc + i] = add ? c[j * ldc + i] + s : s;
    }
}

// The tile for rn <= kTileN weight rows and rm <= kTileM x rows (the edges use the smaller ones).
template <int RN = kTileN>
inline void dot_tile_any(int rn, int rm, const float* w, int64_t ldw, const float* x, int64_t ldx, int64_t kc,
                         float* c, int64_t ldc, bool add) {
  if constexpr (RN > 1) {
    if (rn < RN) return dot_tile_any<RN - 1>(rn, rm, w, ldw, x, ldx, kc, c, ldc, add);
  }
  switch (rm) {
    case 3: return dot_tile<RN, 3>(w, ldw, x, ldx, kc, c, ldc, add);
    case 2: return dot_tile<RN, 2>(w, ldw, x, ldx, kc, c, ldc, add);
    default: return dot_tile<RN, 1>(w, ldw, x, ldx, kc, c, ldc, add);
  }
}

// cbuf[m, i] = sum_k x[m, k] * w[n0 + i, k] for m < M, i < rows (<= kNG): one task's weight rows.
inline void gemm_rows(const float* w, const float* x, int64_t M, int64_t K, int64_t n0, int64_t rows,
                      float* cbuf) {
  for (int64_t k0 = 0; k0 < K; k0 += kKC) {
    const int64_t kc = std::min(kKC, K - k0);
    for (int64_t m0 = 0; m0 < M; m0 += kMC) {
      const int64_t m1 = std::min(M, m0 + kMC);
      for (int64_t i = 0; i < rows; i += kTileN)
        for (int64_t m = m0; m < m1; m += kTileM)
          dot_tile_any(static_cast<int>(std::min<int64_t>(kTileN, rows - i)),
                       static_cast<int>(std::min<int64_t>(kTileM, m1 - m)), w + (n0 + i) * K + k0, K,
                       x + m * K + k0, K, kc, cbuf + m * kNG + i, kNG, k0 > 0);
    }
  }
}
#endif

}  // namespace gemma4::linear
