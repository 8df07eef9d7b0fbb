// Decode-sized linear (a few rows of x): y[m, n] = sum_k x[m, k] * w[n, k], fp32 accumulation.
// Memory bound: every weight is read once, so the kernel streams R weight rows side by side, widens
// bf16 to fp32 in registers (a bf16 is the top half of an fp32) and keeps the M rows of x, already
// fp32, in L1/L2. Bytes: N*K*sizeof(W); FLOPs: 2*M*N*K -- at M <= 8 far below what the FMA units
// can do while the weights stream, so the floor is the memory bandwidth.
// Reference: reference.linear in python/gemma4/ops/reference.py.
#pragma once
#include <cmath>
#include <cstdint>

#include <c10/util/BFloat16.h>

#if defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

namespace gemma4::linear {

#if defined(CPU_CAPABILITY_AVX2)
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const c10::BFloat16* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));  // 8 x bf16
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

// out[r * M + m] = dot(w[r], x[m]) for R weight rows (row stride K) and M rows of x (fp32, stride K).
template <int M, int R, typename W>
inline void gemv_tile(const W* w, const float* x, int64_t K, float* out) {
  int64_t k = 0;
#if defined(CPU_CAPABILITY_AVX2)
  // U independent accumulator sets: with few rows (R*M <= 4) one set is too few FMA chains to hide
  // the FMA latency, so two k-steps of 8 run side by side.
  constexpr int U = R * M <= 4 ? 2 : 1;
  // Blocked summation: each accumulator takes at most KB / 8 fmas in series before its block is added
  // into tot. One chain over all of K (6144 for an MLP down projection) had K / 8 roundings in series,
  // 2-3x the error of MKL's sgemm.
  constexpr int64_t KB = 256;
  static_assert(KB % (8 * U) == 0, "a block is whole k-steps");
  constexpr int64_t kLineElems = 64 / sizeof(W);  // weights per cache line: 32 bf16, 16 fp32
  static_assert(kLineElems % (8 * U) == 0, "a line is whole k-steps");
  __m256 tot[R][M];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) tot[r][m] = _mm256_setzero_ps();
  // fmas over [k, k + n) (n a multiple of 8) into fresh accumulators, then one add into tot. Called
  // with the constant KB for whole blocks, so that loop has a fixed trip count, as fast as one chain.
  auto block = [&](int64_t n) {
    __m256 acc[U][R][M];
    for (int u = 0; u < U; ++u)
      for (int r = 0; r < R; ++r)
        for (int m = 0; m < M; ++m) acc[u][r][m] = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 * U <= n; j += 8 * U) {
      // bf16: the rows two tiles ahead (the caller walks tiles in row order), a cache line per line read
      // here, into L2 (locality 2, _MM_HINT_T1): the hardware prefetcher does not keep up with R interleaved
      // bf16 row streams (the next tile into L1 measured 1.1-1.4x on the 805 MB head; two tiles ahead into
      // L2 rose from 17-20 to 21-34 GB/s on an AVX-512 EPYC, 2 threads). fp32 rows, twice the bytes per weight,
      // measured slower with a prefetch.
      if (sizeof(W) == 2 && ((k + j) & (kLineElems - 1)) == 0)
        for (int r = 0; r < R; ++r) __builtin_prefetch(w + (2 * R + r) * K + k + j, 0, 2);
      for (int u = 0; u < U; ++u) {
        __m256 xv[M];
        for (int m = 0; m < M; ++m) xv[m] = _mm256_loadu_ps(x + m * K + k + j + 8 * u);
        for (int r = 0; r < R; ++r) {
          const __m256 wv = load8(w + r * K + k + j + 8 * u);
          for (int m = 0; m < M; ++m) acc[u][r][m] = _mm256_fmadd_ps(wv, xv[m], acc[u][r][m]);
        }
      }
    }
    for (; j < n; j += 8) {
      for (int r = 0; r < R; ++r) {
        const __m256 wv = load8(w + r * K + k + j);
        for (int m = 0; m < M; ++m)
          acc[0][r][m] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + m * K + k + j), acc[0][r][m]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < M; ++m)
        for (int u = 0; u < U; ++u) tot[r][m] = _mm256_add_ps(tot[r][m], acc[u][r][m]);
    k += n;
  };
  while (k + KB <= K) block(KB);
  if (K - k >= 8) block((K - k) & ~int64_t(7));
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) out[r * M + m] = hsum8(tot[r][m]);
#else
  for (int i = 0; i < R * M; ++i) out[i] = 0.f;
#endif
  // the tail (all of K without AVX2), fused like the vector body: one rounding per term, not two
  for (; k < K; ++k)
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < M; ++m) out[r * M + m] = std::fma(static_cast<float>(w[r * K + k]), x[m * K + k], out[r * M + m]);
}

}  // namespace gemma4::linear
