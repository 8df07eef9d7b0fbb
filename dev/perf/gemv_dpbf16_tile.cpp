// Experiment, not built: a bf16 x bf16 decode GEMV tile on vdpbf16ps (AVX512-BF16), tried in
// csrc/linear/linear_gemv_avx512.cpp on 2026-12-02 and taken out. Same contract as tile() there (drop it in
// beside it to rerun; it needs __attribute__((target("avx512bf16"))) or -mavx512bf16, and kBlock,
// kPrefetchTiles, mask32 from that file).
//
// Measured on a 2-core AMD EPYC (Zen 4, AVX512-BF16), 2 threads, /tmp/prof-style A/B runs alternating the paths:
// - weights in the caches (2048 x 1536 bf16, 6 MB): 62-72 GB/s against 47-63 for the widening kernels;
// - weights from DRAM (12288 x 1536 ... 262144 x 1536): equal or up to 8% slower;
// - the small-e2b bf16 decode step (90% GEMV): 17.6-18.6 tok/s against 19.9-21.6 for the AVX2 kernel and
//   19.3-20.8 for the widening AVX-512 one, in three alternating rounds each.
// Decode streams its weights from DRAM, so the widening kernel stayed.

// The same for bf16 x and bf16 w: lane i of a vdpbf16ps takes the pair k = 2i, 2i + 1 of 32 weights.
template <int M, int R>
__attribute__((target("avx512bf16"))) void tile_bf16(const uint16_t* w, const uint16_t* x, int64_t K, float* out) {
  constexpr int U = R * M <= 4 ? 2 : 1;
  __m512 tot[R][M];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) tot[r][m] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += kBlock) {
    const int64_t n = K - k < kBlock ? K - k : kBlock;
    __m512 acc[U][R][M];
    for (int u = 0; u < U; ++u)
      for (int r = 0; r < R; ++r)
        for (int m = 0; m < M; ++m) acc[u][r][m] = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 32 * U <= n; j += 32 * U) {
      // The rows two tiles ahead, every line this step reads (a line is 32 bf16, a step 32 * U), into L2
      // (_MM_HINT_T1): 1.3-1.7x the rate of prefetching the next tile into L1 on weights beyond the caches
      // (2-core EPYC; into L1 this kernel was no faster than the AVX2 one, both bandwidth bound).
      for (int r = 0; r < R; ++r)
        for (int u = 0; u < U; ++u)
          _mm_prefetch(reinterpret_cast<const char*>(w + (kPrefetchTiles * R + r) * K + k + j + 32 * u), _MM_HINT_T1);
      for (int u = 0; u < U; ++u) {
        __m512bh xv[M];
        for (int m = 0; m < M; ++m) xv[m] = (__m512bh)_mm512_loadu_si512(x + m * K + k + j + 32 * u);
        for (int r = 0; r < R; ++r) {
          const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + r * K + k + j + 32 * u);
          for (int m = 0; m < M; ++m) acc[u][r][m] = _mm512_dpbf16_ps(acc[u][r][m], wv, xv[m]);
        }
      }
    }
    for (; j < n; j += 32) {
      const __mmask32 mk = mask32(n - j);
      for (int r = 0; r < R; ++r) {
        const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(mk, w + r * K + k + j);
        for (int m = 0; m < M; ++m)
          acc[0][r][m] = _mm512_dpbf16_ps(acc[0][r][m], wv, (__m512bh)_mm512_maskz_loadu_epi16(mk, x + m * K + k + j));
      }
    }
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < M; ++m)
        for (int u = 0; u < U; ++u) tot[r][m] = _mm512_add_ps(tot[r][m], acc[u][r][m]);
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) out[r * M + m] = _mm512_reduce_add_ps(tot[r][m]);
}

