// Prefill-sized linear (many rows of x): y[m, n] = sum_k x[m, k] * w[n, k], fp32 accumulation, for fp32
// or bf16 weights. A packed register-tile GEMM in the BLIS manner:
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

#if defined(CPU_CAPABILITY_AVX2)
// The 8 x 8 transpose of r[0..7] (rows) into columns, in place.
inline void transpose8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}
#endif

// A weight micro-panel: dst[k * kNR + j] = float(w[j * K + k]) for j < rows (<= kNR; zero beyond), k < kc.
template <typename T>
inline void pack_w_panel(const T* w, int64_t K, int64_t rows, int64_t kc, float* dst) {
  int64_t k = 0;
#if defined(CPU_CAPABILITY_AVX2)
  if (rows == kNR) {
    for (; k + 8 <= kc; k += 8)
      for (int j0 = 0; j0 < kNR; j0 += 8) {
        __m256 r[8];
        for (int j = 0; j < 8; ++j) r[j] = load8(w + (j0 + j) * K + k);
        transpose8(r);
        for (int t = 0; t < 8; ++t) _mm256_storeu_ps(dst + (k + t) * kNR + j0, r[t]);
      }
  }
#endif
  for (; k < kc; ++k)
    for (int j = 0; j < kNR; ++j) dst[k * kNR + j] = j < rows ? static_cast<float>(w[j * K + k]) : 0.f;
}

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

// The same micro-panel from a weight stored k-major, wt[K, N] (the input gradient's g @ W, W [N_out, K_in]):
// dst[k * kNR + j] = float(wt[k * ldw + j]) for j < cols (<= kNR; zero beyond): a copy of kNR values per k.
template <typename T>
inline void pack_kn_panel(const T* wt, int64_t ldw, int64_t cols, int64_t kc, float* dst) {
  for (int64_t k = 0; k < kc; ++k) {
    const T* src = wt + k * ldw;
    int64_t j = 0;
#if defined(CPU_CAPABILITY_AVX2)
    if (cols == kNR) {
      _mm256_storeu_ps(dst + k * kNR, load8(src));
      _mm256_storeu_ps(dst + k * kNR + 8, load8(src + 8));
      continue;
    }
#endif
    for (; j < kNR; ++j) dst[k * kNR + j] = j < cols ? static_cast<float>(src[j]) : 0.f;
  }
}

// cbuf[m, i] (+)= sum over k in [k_begin, k_end) of x[m, k] * w(k, n0 + i), for m < groups * kMR and
// i < nc (rounded up to kNR; ldc >= that): one task's panel of output columns over one packed k-range, with
// w(k, n) = w[n * K + k] (a weight [N, K], y = x @ w^T) or, with KMajor, w[k * N + n] (a weight [K, N],
// y = x @ w). ap: x's rows packed by pack_x_group for this k-range; bp: kKC * nc floats of scratch. add:
// add to cbuf (a later k-range) rather than start it.
template <bool KMajor, typename T>
inline void gemm_panel(const T* w, int64_t K, int64_t N, int64_t k_begin, int64_t k_end, const float* ap,
                       int64_t groups, int64_t n0, int64_t nc, float* bp, float* cbuf, int64_t ldc, bool add) {
  for (int64_t k0 = k_begin; k0 < k_end; k0 += kKC) {
    const int64_t kc = std::min(kKC, k_end - k0);
    for (int64_t j = 0; j < nc; j += kNR) {
      const int64_t cols = std::min<int64_t>(kNR, nc - j);
      if constexpr (KMajor) {
        pack_kn_panel(w + k0 * N + n0 + j, N, cols, kc, bp + j * kc);
      } else {
        pack_w_panel(w + (n0 + j) * K + k0, K, cols, kc, bp + j * kc);
      }
    }
    const float* ablk = ap + (k0 - k_begin) * groups * kMR;
    for (int64_t j = 0; j < nc; j += kNR)
      for (int64_t g = 0; g < groups; ++g)
        micro_6x16(ablk + g * kc * kMR, bp + j * kc, kc, cbuf + g * kMR * ldc + j, ldc, add || k0 > k_begin);
  }
}

}  // namespace gemma4::linear
