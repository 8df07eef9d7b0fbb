// The decode-sized linear on AVX-512 (this file alone is compiled with -mavx512f/bw/vl/dq; linear_cpu.cpp
// picks it at run time): linear_gemv.h's weight-streaming GEMV on 16-lane vectors, with masked loads for
// the K tail. Numbers: each output is summed in fp32 in blocks of kBlock k (each lane's chain at most 16 FMAs
// long), blocks added in order, then the 16 lanes; one rounding at the caller. (A vdpbf16ps variant for bf16
// x was faster on weights in the caches and slower in decode: dev/perf/gemv_dpbf16_tile.cpp.)
// Reference: reference.linear in python/gemma4/ops/reference.py.
#include "linear/linear_gemv_avx512.h"
#include "linear/linear_gemv_rows.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>

namespace gemma4::linear::avx512 {
namespace {

constexpr int64_t kBlock = 256;  // k per block, as the AVX2 kernel's
constexpr int kPrefetchTiles = 2;  // tiles of several rows: prefetch the weight rows this many tiles ahead
// One row at a time (M = 1): prefetch this many bytes ahead in the weight stream, into L1. The rows are contiguous,
// so this runs on into the next rows: one sequential stream per thread. On the 2-core AVX512-BF16 EPYC (2 threads,
// bf16 weights, dev/perf/gemv_stream_bench.cpp) it streamed 37-47 GB/s against 31-37 for 4 interleaved rows
// prefetched two tiles ahead. 8 KB rather than 2: this VM's bandwidth moves between ~45 and ~77 GB/s (a 2 GB sum),
// and in its fast minutes a 2 KB distance kept E2B's bf16 shapes at 72-75% of it (55 GB/s) against 79-85% at
// 8 KB (59-65 GB/s), the whole bf16 decode step 92-93 -> 81-84 ms a token; in slow minutes both stream at
// 94-99% (docs/performance.md). fp32 weights: 93-105% either way.
constexpr int64_t kStreamAhead = 8192;
// Rows longer than this many k (x widened to fp32: 16 KB, half of Zen 4's 32 KB L1) prefetch into L2 instead: x
// and 8 KB of weights in flight no longer fit L1 together, and the weights evicted x. On a 2-core VNNI EPYC
// (2026-12-05, bf16, weights from DRAM, 2 threads, alternating runs) E2B's down projections 1536 x 6144 and
// 1536 x 12288 streamed 22-23 GB/s with L1 and 31-32 with L2, as fast as the short rows (30-33 either way; the
// 6144 x 1536 rows kept L1: 33-39 against 30-33). fp32 weights alike: 1536 x 6144 29-30 -> 35-36 GB/s.
constexpr int64_t kL1RowK = 4096;

// 16 weights (or the first `m`-masked ones) as fp32
inline __m512 load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
inline __m512 load16(const uint16_t* p, __mmask16 m) {
  const __m256i h = _mm256_maskz_loadu_epi16(m, p);  // 16 x bf16
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));  // a bf16 is fp32's top half
}

inline __mmask16 mask16(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1); }

// k-steps side by side in a tile of R weight rows and M rows of x: two with few accumulators (the one-row stream
// takes four).
template <int M, int R>
constexpr int steps_side_by_side() { return R * M <= 4 ? 2 : 1; }
// At M = 1 a walk's full tiles and its single tail rows take the same steps, so that a weight row's sum does not
// depend on the rows beside it (the greedy head re-reads single rows: greedy_head.py).
static_assert(steps_side_by_side<1, tile_rows<1>()>() == steps_side_by_side<1, 1>());

// out[r * M + m] = dot(w[r], x[m]) for R weight rows (stride K) and M rows of x (fp32, stride K).
template <int M, int R, int U, typename W>
void tile(const W* w, const float* x, int64_t K, float* out) {
  constexpr int64_t kLine = 64 / sizeof(W);  // weights per cache line
  const bool long_rows = K > kL1RowK;
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
    for (; j + 16 * U <= n; j += 16 * U) {
      // The rows kPrefetchTiles tiles ahead, a line per line read here, into L2 (_MM_HINT_T1). On a 2-core
      // EPYC (Zen 4) the fp32 head streamed at 31-35 GB/s with it against 27-30 for the AVX2 kernel, which
      // prefetches only bf16 (linear_gemv.h says why).
      if constexpr (R == 1) {
        for (int64_t l = 0; l < 16 * U; l += kLine)
          if (long_rows) {
            _mm_prefetch(reinterpret_cast<const char*>(w + k + j + l) + kStreamAhead, _MM_HINT_T1);
          } else {
            _mm_prefetch(reinterpret_cast<const char*>(w + k + j + l) + kStreamAhead, _MM_HINT_T0);
          }
      } else if (((k + j) & (kLine - 1)) == 0) {
        for (int r = 0; r < R; ++r)
          for (int64_t l = 0; l < 16 * U; l += kLine)
            _mm_prefetch(reinterpret_cast<const char*>(w + (kPrefetchTiles * R + r) * K + k + j + l), _MM_HINT_T1);
      }
      for (int u = 0; u < U; ++u) {
        __m512 xv[M];
        for (int m = 0; m < M; ++m) xv[m] = _mm512_loadu_ps(x + m * K + k + j + 16 * u);
        for (int r = 0; r < R; ++r) {
          const __m512 wv = load16(w + r * K + k + j + 16 * u, mask16(16));
          for (int m = 0; m < M; ++m) acc[u][r][m] = _mm512_fmadd_ps(wv, xv[m], acc[u][r][m]);
        }
      }
    }
    for (; j < n; j += 16) {  // what is left of the block, the K tail masked (zeros add nothing)
      const __mmask16 mk = mask16(n - j);
      for (int r = 0; r < R; ++r) {
        const __m512 wv = load16(w + r * K + k + j, mk);
        for (int m = 0; m < M; ++m)
          acc[0][r][m] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(mk, x + m * K + k + j), acc[0][r][m]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < M; ++m)
        for (int u = 0; u < U; ++u) tot[r][m] = _mm512_add_ps(tot[r][m], acc[u][r][m]);
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) out[r * M + m] = _mm512_reduce_add_ps(tot[r][m]);
}

// M = 1 walks one weight row at a time on AMD CPUs and 4 rows side by side on others. Measured on a 2-core AVX512-BF16
// EPYC (above): the one-row stream 37-47 GB/s against 31-37. On a 2-core Intel Xeon (AVX-512, AMX; 2026-12-06, 2
// threads, E2B's 315 decode projections in a row from DRAM, dev/perf/gemv_sequence_rates.py) the reverse: bf16
// 20.0-20.3 GB/s one row at a time against 25.1-25.8 for 4 rows prefetched two tiles ahead into L2 (fp32 25.5
// against 28.0), with 30-31 GB/s read by a plain sum beside them; the one-row walk prefetching into L2 instead of
// L1 reached 22-24 (dev/perf/gemv_sequence_variants.cpp has the other walks). Why Intel prefers several streams
// was not measured: that VM has no performance counters.
bool one_row_stream() {
  static const bool amd = [] {
    __builtin_cpu_init();
    return __builtin_cpu_is("amd");
  }();
  return amd;
}

template <typename W>
void rows_of(int M, const W* w, const float* x, int64_t K, int64_t n0, int64_t n1, float* out) {
  with_rows(M, [&](auto m) {
    if (m() == 1 && one_row_stream()) {  // one row at a time: a single sequential stream (kStreamAhead)
      for (int64_t n = n0; n < n1; ++n) tile<1, 1, 4>(w + n * K, x, K, out + (n - n0));
    } else {
      walk_rows<m()>(n0, n1, out, [&](auto r, int64_t n, float* o) {
        tile<m(), r(), steps_side_by_side<m(), r()>()>(w + n * K, x, K, o);
      });
    }
  });
}

}  // namespace

void gemv_rows(int M, const float* w, const float* x, int64_t K, int64_t n0, int64_t n1, float* out) {
  rows_of(M, w, x, K, n0, n1, out);
}
void gemv_rows(int M, const uint16_t* w, const float* x, int64_t K, int64_t n0, int64_t n1, float* out) {
  rows_of(M, w, x, K, n0, n1, out);
}
bool supported() {
  __builtin_cpu_init();  // libgcc checks that the OS saves the AVX-512 state (XCR0) before reporting these
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl");
}

}  // namespace gemma4::linear::avx512

#else  // a build without the AVX-512 flags (another architecture): never chosen

namespace gemma4::linear::avx512 {
void gemv_rows(int, const float*, const float*, int64_t, int64_t, int64_t, float*) {}
void gemv_rows(int, const uint16_t*, const float*, int64_t, int64_t, int64_t, float*) {}
bool supported() { return false; }
}  // namespace gemma4::linear::avx512

#endif
