// Which bf16 GEMV loop streams the weights fastest on this CPU (issue 13: the bf16 head is ~57 ms of a
// ~100 ms small-e2b decode step at 14 GB/s, where a 2-thread sum streams 19-20 GB/s). Variants:
//   r4   4 interleaved weight rows per tile (x loads shared), next tile prefetched (the shipped loop)
//   r1u4 one row at a time, 4 accumulators: each thread's range is one sequential stream
//   r1pf r1u4 plus a software prefetch PF bytes ahead
//   r2   2 interleaved rows
// Build: g++ -O3 -mavx2 -mfma -fopenmp dev/perf/bf16_gemv_stream.cpp -o /tmp/gemv_stream
// Run:   OMP_NUM_THREADS=2 /tmp/gemv_stream [N K]
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

static inline __m256 wide8(const uint16_t* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}
static inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int R, int PF>
void gemv(const uint16_t* w, const float* x, float* y, int64_t N, int64_t K) {
#pragma omp parallel for schedule(static)
  for (int64_t n0 = 0; n0 < N; n0 += R) {
    __m256 acc[R][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    const uint16_t* wr = w + n0 * K;
    for (int64_t k = 0; k < K; k += 16) {
      if (PF > 0 && (k & 31) == 0)
        for (int r = 0; r < R; ++r) _mm_prefetch((const char*)(wr + r * K + k) + PF, _MM_HINT_T0);
      if (PF < 0 && (k & 31) == 0)
        for (int r = 0; r < R; ++r) _mm_prefetch((const char*)(wr + (R + r) * K + k), _MM_HINT_T0);
      const __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
      for (int r = 0; r < R; ++r) {
        acc[r][0] = _mm256_fmadd_ps(wide8(wr + r * K + k), x0, acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(wide8(wr + r * K + k + 8), x1, acc[r][1]);
      }
    }
    for (int r = 0; r < R; ++r) y[n0 + r] = hsum(_mm256_add_ps(acc[r][0], acc[r][1]));
  }
}

// One row at a time, 4 accumulators (32 weights per step).
template <int PF>
void gemv_r1(const uint16_t* w, const float* x, float* y, int64_t N, int64_t K) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const uint16_t* wr = w + n * K;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t k = 0; k < K; k += 32) {
      if (PF > 0) _mm_prefetch((const char*)(wr + k) + PF, _MM_HINT_T0);
      a0 = _mm256_fmadd_ps(wide8(wr + k), _mm256_loadu_ps(x + k), a0);
      a1 = _mm256_fmadd_ps(wide8(wr + k + 8), _mm256_loadu_ps(x + k + 8), a1);
      a2 = _mm256_fmadd_ps(wide8(wr + k + 16), _mm256_loadu_ps(x + k + 16), a2);
      a3 = _mm256_fmadd_ps(wide8(wr + k + 24), _mm256_loadu_ps(x + k + 24), a3);
    }
    y[n] = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  }
}

float sum_stream(const uint16_t* w, int64_t n) {  // the bandwidth ceiling: widen + add, nothing else
  float tot = 0;
#pragma omp parallel for reduction(+ : tot) schedule(static)
  for (int64_t c = 0; c < n / 4096; ++c) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;
    for (int64_t k = c * 4096; k < (c + 1) * 4096; k += 16) {
      a0 = _mm256_add_ps(a0, wide8(w + k));
      a1 = _mm256_add_ps(a1, wide8(w + k + 8));
    }
    tot += hsum(_mm256_add_ps(a0, a1));
  }
  return tot;
}

int main(int argc, char** argv) {
  const int64_t N = argc > 1 ? atoll(argv[1]) : 262144, K = argc > 2 ? atoll(argv[2]) : 1536;
  std::vector<uint16_t> w(N * K);
  for (int64_t i = 0; i < N * K; ++i) w[i] = 0x3c00 + (i * 2654435761u >> 20) % 512;  // small bf16 values
  std::vector<float> x(K), y(N);
  for (int64_t k = 0; k < K; ++k) x[k] = 0.001f * (k % 17);
  const double gb = N * K * 2 / 1e9;
  auto time = [&](const char* name, auto fn) {
    std::vector<double> ts;
    for (int rep = 0; rep < 9; ++rep) {
      auto t0 = std::chrono::steady_clock::now();
      fn();
      ts.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ts.begin(), ts.end());
    printf("%-8s %8.2f ms %6.1f GB/s  (y0 %g)\n", name, ts[4] * 1e3, gb / ts[4], y[0]);
  };
  volatile float sink;
  time("sum", [&] { sink = sum_stream(w.data(), N * K); });
  time("r4", [&] { gemv<4, -1>(w.data(), x.data(), y.data(), N, K); });
  time("r4nopf", [&] { gemv<4, 0>(w.data(), x.data(), y.data(), N, K); });
  time("r2", [&] { gemv<2, -1>(w.data(), x.data(), y.data(), N, K); });
  time("r1u4", [&] { gemv_r1<0>(w.data(), x.data(), y.data(), N, K); });
  time("r1pf1k", [&] { gemv_r1<1024>(w.data(), x.data(), y.data(), N, K); });
  time("r1pf2k", [&] { gemv_r1<2048>(w.data(), x.data(), y.data(), N, K); });
  time("r1pf4k", [&] { gemv_r1<4096>(w.data(), x.data(), y.data(), N, K); });
  time("r4pf2k", [&] { gemv<4, 2048>(w.data(), x.data(), y.data(), N, K); });
  return 0;
}
