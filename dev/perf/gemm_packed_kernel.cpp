// Does a packed, BLIS-style microkernel beat the packing-free 4x3 dot tile (linear_gemm.h, 94-104 GFLOP/s)
// on this AVX2 EPYC at Gemma 4's prefill shapes (y[M, N] = x[M, K] @ W[N, K]^T, M = 128, 2 threads)?
// Packed x: [K/KC][M/MR][KC][MR] (broadcast one value per row), packed W: per task [KC][NR] micro-panels
// (vector loads along n). The microkernel keeps MR x NR/8 accumulators, one FMA per (row, vector) per k,
// no horizontal sums. bf16 weights are widened while packing (the same kernel then serves bf16).
// Built with AVX-512 it also times zmm tiles ("z" rows, MR x 16 NV; 2026-12-04, for linear_gemm_avx512.cpp): on a
// CPU with two 512-bit FMA pipes (Zen 5) a zmm FMA does twice a ymm FMA's work; Zen 4 splits zmm in two.
// Build: g++ -O3 -mavx2 -mfma -mf16c -fopenmp dev/perf/gemm_packed_kernel.cpp -o /tmp/gemm_packed
//        (add -mavx512f -mavx512vl for the zmm tiles)
// Run:   OMP_NUM_THREADS=2 /tmp/gemm_packed N K [KC NC M]   (NC a multiple of every tile's width: 192)
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

template <int MR, int NV>  // MR x rows, NV vectors of 8 weight columns
static inline void micro(const float* a, const float* b, int64_t kc, float* c, int64_t ldc, bool add) {
  __m256 acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) acc[i][j] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    __m256 bv[NV];
    for (int j = 0; j < NV; ++j) bv[j] = _mm256_load_ps(b + k * NV * 8 + 8 * j);
    for (int i = 0; i < MR; ++i) {
      const __m256 av = _mm256_broadcast_ss(a + k * MR + i);
      for (int j = 0; j < NV; ++j) acc[i][j] = _mm256_fmadd_ps(av, bv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) {
      float* p = c + i * ldc + 8 * j;
      _mm256_storeu_ps(p, add ? _mm256_add_ps(_mm256_loadu_ps(p), acc[i][j]) : acc[i][j]);
    }
}

#if defined(__AVX512F__)
template <int MR, int NV>  // MR x rows, NV vectors of 16 weight columns
static inline void micro512(const float* a, const float* b, int64_t kc, float* c, int64_t ldc, bool add) {
  __m512 acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    __m512 bv[NV];
    for (int j = 0; j < NV; ++j) bv[j] = _mm512_load_ps(b + k * NV * 16 + 16 * j);
    for (int i = 0; i < MR; ++i) {
      const __m512 av = _mm512_set1_ps(a[k * MR + i]);
      for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_fmadd_ps(av, bv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) {
      float* p = c + i * ldc + 16 * j;
      _mm512_storeu_ps(p, add ? _mm512_add_ps(_mm512_loadu_ps(p), acc[i][j]) : acc[i][j]);
    }
}
#endif

// bp[k][j] = w[j][k] for j < NR rows of w (ldw apart), k < kc; NR = 8 * NV.
template <int NR>
static void pack_w(const float* w, int64_t ldw, int64_t kc, float* bp) {
  int64_t k = 0;
  for (; k + 8 <= kc; k += 8) {
    for (int j0 = 0; j0 < NR; j0 += 8) {
      __m256 r[8];
      for (int j = 0; j < 8; ++j) r[j] = _mm256_loadu_ps(w + (j0 + j) * ldw + k);
      // 8x8 transpose
      __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
      __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
      __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
      __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
      __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
      __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
      __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
      __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
      __m256 o[8] = {_mm256_permute2f128_ps(s0, s4, 0x20), _mm256_permute2f128_ps(s1, s5, 0x20),
                     _mm256_permute2f128_ps(s2, s6, 0x20), _mm256_permute2f128_ps(s3, s7, 0x20),
                     _mm256_permute2f128_ps(s0, s4, 0x31), _mm256_permute2f128_ps(s1, s5, 0x31),
                     _mm256_permute2f128_ps(s2, s6, 0x31), _mm256_permute2f128_ps(s3, s7, 0x31)};
      for (int t = 0; t < 8; ++t) _mm256_store_ps(bp + (k + t) * NR + j0, o[t]);
    }
  }
  for (; k < kc; ++k)
    for (int j = 0; j < NR; ++j) bp[k * NR + j] = w[j * ldw + k];
}

// ap[kb][g][k][i] = x[g * MR + i][kb * KC + k] (zero rows past M).
template <int MR>
static void pack_x(const float* x, int64_t M, int64_t K, int64_t KC, float* ap) {
  const int64_t G = (M + MR - 1) / MR;
  for (int64_t k0 = 0; k0 < K; k0 += KC) {
    const int64_t kc = std::min(KC, K - k0);
    float* blk = ap + k0 * G * MR;
    for (int64_t g = 0; g < G; ++g)
      for (int i = 0; i < MR; ++i) {
        const int64_t m = g * MR + i;
        for (int64_t k = 0; k < kc; ++k) blk[(g * kc + k) * MR + i] = m < M ? x[m * K + k0 + k] : 0.f;
      }
  }
}

template <int MR, int NV, bool Wide = false>  // Wide: NV vectors of 16 (zmm)
void gemm(const float* x, const float* w, float* y, int64_t M, int64_t N, int64_t K, int64_t KC, int64_t NC,
          float* ap) {
  constexpr int NR = NV * (Wide ? 16 : 8);
  const int64_t G = (M + MR - 1) / MR;
  pack_x<MR>(x, M, K, KC, ap);
#pragma omp parallel
  {
    std::vector<float, std::allocator<float>> raw(KC * NC + 32);
    float* bp = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(raw.data()) + 63) & ~uintptr_t(63));
    std::vector<float> cbuf(G * MR * NC);
#pragma omp for schedule(dynamic)
    for (int64_t n0 = 0; n0 < N; n0 += NC) {
      const int64_t nc = std::min(NC, N - n0);  // multiple of NR here
      for (int64_t k0 = 0; k0 < K; k0 += KC) {
        const int64_t kc = std::min(KC, K - k0);
        for (int64_t j = 0; j < nc; j += NR) pack_w<NR>(w + (n0 + j) * K + k0, K, kc, bp + j * kc);
        const float* ablk = ap + k0 * G * MR;
        for (int64_t j = 0; j < nc; j += NR)
          for (int64_t g = 0; g < G; ++g) {
            const float* a = ablk + g * kc * MR;
            float* c = cbuf.data() + g * MR * NC + j;
#if defined(__AVX512F__)
            if constexpr (Wide) {
              micro512<MR, NV>(a, bp + j * kc, kc, c, NC, k0 > 0);
              continue;
            }
#endif
            micro<MR, NV>(a, bp + j * kc, kc, c, NC, k0 > 0);
          }
      }
      for (int64_t m = 0; m < M; ++m) std::memcpy(y + m * N + n0, cbuf.data() + m * NC, nc * sizeof(float));
    }
  }
}

int main(int argc, char** argv) {
  const int64_t M = argc > 5 ? atoll(argv[5]) : 128, N = argc > 1 ? atoll(argv[1]) : 12288,
                K = argc > 2 ? atoll(argv[2]) : 1536;
  const int64_t KC = argc > 3 ? atoll(argv[3]) : 256, NC = argc > 4 ? atoll(argv[4]) : 96;
  std::vector<float> x(M * K), w(N * K), y(M * N), ap((M + 16) * K + 64);
  for (auto& v : x) v = (rand() % 1000) * 1e-3f - 0.5f;
  for (auto& v : w) v = (rand() % 1000) * 1e-3f - 0.5f;
  auto run = [&](const char* name, auto fn) {
    std::vector<double> ts;
    for (int r = 0; r < 7; ++r) {
      auto t0 = std::chrono::steady_clock::now();
      fn();
      ts.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ts.begin(), ts.end());
    double maxerr = 0;
    for (int64_t m : {int64_t(0), M / 2, M - 1})
      for (int64_t n : {int64_t(0), N / 3, N - 1}) {
        double ref = 0;
        for (int64_t k = 0; k < K; ++k) ref += double(x[m * K + k]) * w[n * K + k];
        maxerr = std::max(maxerr, std::abs(y[m * N + n] - ref));
      }
    printf("%-10s N %6ld K %6ld KC %4ld NC %4ld: %7.1f GFLOP/s (best %7.1f) err %.2e\n", name, N, K, KC, NC,
           2.0 * M * N * K / ts[3] / 1e9, 2.0 * M * N * K / ts[0] / 1e9, maxerr);
  };
  run("6x16", [&] { gemm<6, 2>(x.data(), w.data(), y.data(), M, N, K, KC, NC, ap.data()); });
  run("4x24", [&] { gemm<4, 3>(x.data(), w.data(), y.data(), M, N, K, KC, NC, ap.data()); });
  run("3x32", [&] { gemm<3, 4>(x.data(), w.data(), y.data(), M, N, K, KC, NC, ap.data()); });
#if defined(__AVX512F__)
  run("z6x32", [&] { gemm<6, 2, true>(x.data(), w.data(), y.data(), M, N, K, KC, NC, ap.data()); });
  run("z8x32", [&] { gemm<8, 2, true>(x.data(), w.data(), y.data(), M, N, K, KC, NC, ap.data()); });
  run("z12x32", [&] { gemm<12, 2, true>(x.data(), w.data(), y.data(), M, N, K, KC, NC, ap.data()); });
  run("z14x32", [&] { gemm<14, 2, true>(x.data(), w.data(), y.data(), M, N, K, KC, NC, ap.data()); });
  run("z8x48", [&] { gemm<8, 3, true>(x.data(), w.data(), y.data(), M, N, K, KC, NC, ap.data()); });
  run("z4x64", [&] { gemm<4, 4, true>(x.data(), w.data(), y.data(), M, N, K, KC, NC, ap.data()); });
#endif
}
