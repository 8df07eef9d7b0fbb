// Can a packing-free "dot-product" register tile beat MKL's sgemm on this AVX2 EPYC at Gemma 4's prefill
// shapes (x [M, K] @ W[N, K]^T, M = 128)? MKL measured 31-49 GFLOP/s on 1 thread, 46-101 on 2.
// Tile: RN weight rows x RM x rows, RN*RM vector accumulators of 8 k-partial sums, reduced once per
// k-block. Build: g++ -O3 -mavx2 -mfma -fopenmp dev/perf/gemm_dot_kernel.cpp -o /tmp/gemm_dot
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

static inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// c[m * ldc + n] (+)= sum_k x[m][k] * w[n][k] over kc (a multiple of 8), RN rows of w, RM rows of x.
template <int RN, int RM>
static inline void micro(const float* w, int64_t ldw, const float* x, int64_t ldx, int64_t kc, float* c,
                         int64_t ldc, bool add) {
  __m256 acc[RN][RM];
  for (int i = 0; i < RN; ++i)
    for (int j = 0; j < RM; ++j) acc[i][j] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; k += 8) {
    __m256 xv[RM];
    for (int j = 0; j < RM; ++j) xv[j] = _mm256_loadu_ps(x + j * ldx + k);
    for (int i = 0; i < RN; ++i) {
      const __m256 wv = _mm256_loadu_ps(w + i * ldw + k);
      for (int j = 0; j < RM; ++j) acc[i][j] = _mm256_fmadd_ps(wv, xv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < RN; ++i)
    for (int j = 0; j < RM; ++j) {
      const float s = hsum(acc[i][j]);
      c[j * ldc + i] = add ? c[j * ldc + i] + s : s;
    }
}

template <int RN, int RM>
void gemm(const float* x, const float* w, float* y, int64_t M, int64_t N, int64_t K, int64_t KC, int64_t MC, int64_t NG) {
#pragma omp parallel for schedule(dynamic)
  for (int64_t n0 = 0; n0 < N; n0 += NG) {
    const int64_t n1 = std::min(N, n0 + NG);
    for (int64_t k0 = 0; k0 < K; k0 += KC) {
      const int64_t kc = std::min(KC, K - k0);
      for (int64_t m0 = 0; m0 < M; m0 += MC) {
        const int64_t m1 = std::min(M, m0 + MC);
        for (int64_t n = n0; n + RN <= n1; n += RN)
          for (int64_t m = m0; m + RM <= m1; m += RM)
            micro<RN, RM>(w + n * K + k0, K, x + m * K + k0, K, kc, y + m * N + n, N, k0 > 0);
      }
    }
  }
}

int main(int argc, char** argv) {
  const int64_t M = 126, N = argc > 1 ? atoll(argv[1]) : 12288, K = argc > 2 ? atoll(argv[2]) : 1536;
  std::vector<float> x(M * K), w(N * K), y(M * N);
  for (auto& v : x) v = (rand() % 1000) * 1e-3f;
  for (auto& v : w) v = (rand() % 1000) * 1e-3f;
  auto run = [&](const char* name, auto fn) {
    std::vector<double> ts;
    for (int r = 0; r < 5; ++r) {
      auto t0 = std::chrono::steady_clock::now();
      fn();
      ts.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ts.begin(), ts.end());
    // check one entry
    double ref = 0;
    for (int64_t k = 0; k < K; ++k) ref += double(x[5 * K + k]) * w[7 * K + k];
    printf("%-22s %7.1f GFLOP/s  (err %.2e)\n", name, 2.0 * M * N * K / ts[2] / 1e9, (y[5 * N + 7] - ref) / ref);
  };
  const int64_t KC = argc > 3 ? atoll(argv[3]) : 2048;
  run("3x3", [&] { gemm<3, 3>(x.data(), w.data(), y.data(), M, N, K, KC, 63, 48); });
  run("4x3", [&] { gemm<4, 3>(x.data(), w.data(), y.data(), M, N, K, KC, 63, 48); });
  run("3x4", [&] { gemm<3, 4>(x.data(), w.data(), y.data(), M, N, K, KC, 64, 48); });
  run("5x2", [&] { gemm<5, 2>(x.data(), w.data(), y.data(), M, N, K, KC, 64, 50); });
  run("3x3 MC126 NG24", [&] { gemm<3, 3>(x.data(), w.data(), y.data(), M, N, K, KC, 126, 24); });
  run("3x3 MC30 NG96", [&] { gemm<3, 3>(x.data(), w.data(), y.data(), M, N, K, KC, 30, 96); });
}
