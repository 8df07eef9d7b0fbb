// Experiment, not built (2026-12-05, sixteenth session): the one-row decode GEMV (linear_gemv_avx512.cpp's M = 1
// stream, same 8 KB stream-ahead prefetch) on vdpbf16ps for a bf16 x and a bf16 weight: 32 weights an instruction
// from the bf16 rows, neither widened. It was built as csrc/linear/linear_gemv_avx512bf16.cpp, called from
// linear_cpu.cpp at M = 1 under an environment switch, and timed in one process alternating with the shipped
// widening kernel (2-core AVX512-BF16 EPYC, 2 threads, weights rotated past L3, GB/s widening / this):
//   2048 x 1536 27.4 / 26.2; 6144 x 1536 29.1 / 27.7; 1536 x 6144 28.3 / 31.3; 12288 x 1536 39.0 / 34.2;
//   1536 x 12288 25.9 / 28.2; the 262144 x 1536 head 29.7 / 24.7.
// The full E2B bf16 decode step, 24 tokens a round, 6 rounds each alternating: 152.6 ms a token widening against
// 157.1 with this (3% slower; the sums differ, so some greedy tokens did too). Not shipped. The same step in fp32
// streams ~37 GB/s against bf16's ~33 (in-process, alternating), so the widening kernel's gap to fp32 is not the
// instructions a line: this kernel has a quarter of them.
// Build: -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16. gemv_row(w, x, K, n0, n1, out): out[n - n0] =
// sum_k x[k] w[n, k] for the rows [n0, n1), fp32 sums in blocks of 256 k; linear_cpu.cpp's task loop called it
// where gemma4::attn::bf16dp::supported() (attention_decode_avx512bf16.cpp: the same CPU features) said so.
#include <cstdint>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512BF16__)
#include <immintrin.h>

namespace gemma4::linear::bf16dp {

namespace {

constexpr int64_t kBlock = 256;  // k per summation block, as the widening kernels'
constexpr int U = 4;             // accumulators side by side: 128 k a step
// Prefetch distance in the weight stream, as linear_gemv_avx512.cpp's one-row kernel (its comment has the
// measurements); rows whose bf16 x is over half of L1 (16 KB) prefetch into L2 so the weights do not evict x.
constexpr int64_t kStreamAhead = 8192;
constexpr int64_t kL1RowK = 8192;

inline __m512bh load_bh(const uint16_t* p, __mmask32 m) { return (__m512bh)_mm512_maskz_loadu_epi16(m, p); }
inline __mmask32 mask32(int64_t n) { return n >= 32 ? __mmask32(0xFFFFFFFFu) : __mmask32((1u << n) - 1); }

float row(const uint16_t* w, const uint16_t* x, int64_t K) {
  const bool long_row = K > kL1RowK;
  __m512 tot = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += kBlock) {
    const int64_t n = K - k < kBlock ? K - k : kBlock;
    __m512 acc[U];
    for (int u = 0; u < U; ++u) acc[u] = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 32 * U <= n; j += 32 * U) {
      for (int l = 0; l < 32 * U; l += 32) {  // a 64-byte line of weights per 32
        const char* ahead = reinterpret_cast<const char*>(w + k + j + l) + kStreamAhead;
        if (long_row) {
          _mm_prefetch(ahead, _MM_HINT_T1);
        } else {
          _mm_prefetch(ahead, _MM_HINT_T0);
        }
      }
      for (int u = 0; u < U; ++u)
        acc[u] = _mm512_dpbf16_ps(acc[u], load_bh(w + k + j + 32 * u, mask32(32)), load_bh(x + k + j + 32 * u, mask32(32)));
    }
    for (; j < n; j += 32) {  // the rest of the block, the K tail masked (zeros add nothing)
      const __mmask32 m = mask32(n - j);
      acc[0] = _mm512_dpbf16_ps(acc[0], load_bh(w + k + j, m), load_bh(x + k + j, m));
    }
    for (int u = 0; u < U; ++u) tot = _mm512_add_ps(tot, acc[u]);
  }
  return _mm512_reduce_add_ps(tot);
}

}  // namespace

void gemv_row(const uint16_t* w, const uint16_t* x, int64_t K, int64_t n0, int64_t n1, float* out) {
  for (int64_t n = n0; n < n1; ++n) out[n - n0] = row(w + n * K, x, K);
}

}  // namespace gemma4::linear::bf16dp

#else  // a build without the AVX512-BF16 flags (another architecture): never chosen

namespace gemma4::linear::bf16dp {
void gemv_row(const uint16_t*, const uint16_t*, int64_t, int64_t, int64_t, float*) {}
}  // namespace gemma4::linear::bf16dp

#endif
