// The decode-sized linear on AVX-512 (this file alone is compiled with -mavx512f/bw/vl/dq; linear_cpu.cpp
// picks it at run time): linear_gemv.h's weight-streaming GEMV on 16-lane vectors, with masked loads for
// the K tail, and for bf16 x with bf16 weights on CPUs with AVX512-BF16, vdpbf16ps: 32 weights per
// instruction and no widening, where the AVX2 kernel spends a widen, a shift and an FMA per 8.
// Numbers: each output is summed in fp32 in blocks of kBlock k (each lane's chain at most 16 FMAs or 8
// dot-pairs long), blocks added in order, then the 16 lanes; one rounding at the caller.
// Reference: reference.linear in python/gemma4/ops/reference.py.
#include "linear/linear_gemv_avx512.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>

namespace gemma4::linear::avx512 {
namespace {

constexpr int64_t kBlock = 256;  // k per block, as the AVX2 kernel's
constexpr int kPrefetchTiles = 2;  // bf16 weights: prefetch the rows this many tiles ahead

// 16 weights (or the first `m`-masked ones) as fp32
inline __m512 load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
inline __m512 load16(const uint16_t* p, __mmask16 m) {
  const __m256i h = _mm256_maskz_loadu_epi16(m, p);  // 16 x bf16
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));  // a bf16 is fp32's top half
}

inline __mmask16 mask16(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1); }
inline __mmask32 mask32(int64_t n) { return n >= 32 ? __mmask32(0xFFFFFFFFu) : __mmask32((1u << n) - 1); }

// Rows of x and weight rows per tile: R*M accumulators, as in the AVX2 kernel; with few of them (R*M <= 4)
// two k-steps run side by side to hide the FMA latency.
template <int M>
constexpr int rows_per_tile() { return M <= 2 ? 4 : (M <= 4 ? 2 : 1); }

// out[r * M + m] = dot(w[r], x[m]) for R weight rows (stride K), fp32 x.
template <int M, int R, typename W>
void tile_f32x(const W* w, const float* x, int64_t K, float* out) {
  constexpr int U = R * M <= 4 ? 2 : 1;
  constexpr int64_t kLine = 64 / sizeof(W);  // weights per cache line
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
      // the rows kPrefetchTiles tiles ahead, a line per line read here, into L2 (as tile_bf16's)
      if (((k + j) & (kLine - 1)) == 0)
        for (int r = 0; r < R; ++r)
          for (int64_t l = 0; l < 16 * U; l += kLine)
            _mm_prefetch(reinterpret_cast<const char*>(w + (kPrefetchTiles * R + r) * K + k + j + l), _MM_HINT_T1);
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

// Rows [n0, n1) tile by tile, the last (n1 - n0) % R one by one.
template <int M, typename W, typename X, typename Tile, typename Tile1>
void rows(const W* w, const X* x, int64_t K, int64_t n0, int64_t n1, float* out, Tile tile, Tile1 tile1) {
  constexpr int R = rows_per_tile<M>();
  int64_t n = n0;
  for (; n + R <= n1; n += R) tile(w + n * K, x, K, out + (n - n0) * M);
  for (; n < n1; ++n) tile1(w + n * K, x, K, out + (n - n0) * M);
}

template <typename W>
void rows_f32x(int M, const W* w, const float* x, int64_t K, int64_t n0, int64_t n1, float* out) {
  switch (M) {
#define GEMMA4_ROWS(m) \
  case m: return rows<m>(w, x, K, n0, n1, out, tile_f32x<m, rows_per_tile<m>(), W>, tile_f32x<m, 1, W>);
    GEMMA4_ROWS(1) GEMMA4_ROWS(2) GEMMA4_ROWS(3) GEMMA4_ROWS(4) GEMMA4_ROWS(5) GEMMA4_ROWS(6) GEMMA4_ROWS(7)
    default: GEMMA4_ROWS(8)
#undef GEMMA4_ROWS
  }
}

}  // namespace

void gemv_rows(int M, const float* w, const float* x, int64_t K, int64_t n0, int64_t n1, float* out) {
  rows_f32x(M, w, x, K, n0, n1, out);
}
void gemv_rows(int M, const uint16_t* w, const float* x, int64_t K, int64_t n0, int64_t n1, float* out) {
  rows_f32x(M, w, x, K, n0, n1, out);
}
void gemv_rows_bf16(int M, const uint16_t* w, const uint16_t* x, int64_t K, int64_t n0, int64_t n1, float* out) {
  switch (M) {
#define GEMMA4_ROWS(m) case m: return rows<m>(w, x, K, n0, n1, out, tile_bf16<m, rows_per_tile<m>()>, tile_bf16<m, 1>);
    GEMMA4_ROWS(1) GEMMA4_ROWS(2) GEMMA4_ROWS(3) GEMMA4_ROWS(4) GEMMA4_ROWS(5) GEMMA4_ROWS(6) GEMMA4_ROWS(7)
    default: GEMMA4_ROWS(8)
#undef GEMMA4_ROWS
  }
}

bool supported() {
  __builtin_cpu_init();  // libgcc checks that the OS saves the AVX-512 state (XCR0) before reporting these
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl");
}
bool has_bf16_dot() { return supported() && __builtin_cpu_supports("avx512bf16"); }

}  // namespace gemma4::linear::avx512

#else  // a build without the AVX-512 flags (another architecture): never chosen

namespace gemma4::linear::avx512 {
void gemv_rows(int, const float*, const float*, int64_t, int64_t, int64_t, float*) {}
void gemv_rows(int, const uint16_t*, const float*, int64_t, int64_t, int64_t, float*) {}
void gemv_rows_bf16(int, const uint16_t*, const uint16_t*, int64_t, int64_t, int64_t, float*) {}
bool supported() { return false; }
bool has_bf16_dot() { return false; }
}  // namespace gemma4::linear::avx512

#endif
