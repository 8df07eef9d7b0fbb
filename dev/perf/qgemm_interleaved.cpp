// Experiment: would a row-interleaved int4 layout make the CPU qgemm faster on AVX512-VNNI?
//
// Shipped (csrc/quant/qgemm_g32.h): each weight row keeps Q4_0's bytes (the packed format CUDA, the
// converters and QLoRA share); x is int16; vpdpwssd multiplies; eight blocks' int32 sums are folded per
// row with permutes and adds, because one vector holds several blocks of one row.
//
// Tried here: 16 weight rows interleaved per 64-byte vector (byte 4 r + j: row r, k0 + j in the low
// nibble, k0 + 4 + j in the high one), so each int32 lane is one row and a group's fold is vector-wide
// (one convert, one FMA with the 16 rows' scales); x16 split into two exact int8 planes,
// x16 = 256 xh + xl (|x16| <= 32639 keeps xh in int8), broadcast four k at a time into vpdpbusd
// (unsigned nibbles u = q + 8, corrected by 8 sum(x16) per group). Same int16 activations, so the
// same error as shipped; the results are checked against an exact scalar sum.
// Build: g++ -O3 -fopenmp -mavx512f -mavx512bw -mavx512vnni -mf16c dev/perf/qgemm_interleaved.cpp -o /tmp/qi
// Run:   OMP_NUM_THREADS=1 /tmp/qi   (prints ms per call for M = 1, 4, 16 at E2B's up shape)
#include <immintrin.h>
#include <omp.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

constexpr int kTile = 16;  // weight rows per interleaved vector

struct Problem {
  int64_t N, K;                 // weights [N, K], int4 groups of 32
  std::vector<uint8_t> w;       // [N / 16][K / 8][64] interleaved nibbles (u = q + 8)
  std::vector<float> ws;        // [N / 16][K / 32][16] row scales
  std::vector<int8_t> q;        // [N, K] the levels, for the reference
};

struct Acts {
  int64_t M, K;
  std::vector<int32_t> xl, xh;  // [M][K / 4] four int8 of a plane per int32 (broadcast unit)
  std::vector<float> dx;        // [M][K / 32] x scale per group
  std::vector<int32_t> xsum8;   // [M][K / 32] 8 * sum(x16) per group
  std::vector<int16_t> x16;     // [M, K], for the reference
};

static Problem make_weights(int64_t N, int64_t K) {
  Problem p{N, K, std::vector<uint8_t>(N * K / 2), std::vector<float>(N * K / 32), std::vector<int8_t>(N * K)};
  for (auto& v : p.q) v = static_cast<int8_t>(std::rand() % 16 - 8);
  for (int64_t t = 0; t < N / kTile; ++t)
    for (int64_t c = 0; c < K / 8; ++c)
      for (int r = 0; r < kTile; ++r)
        for (int j = 0; j < 4; ++j) {
          const int64_t n = t * kTile + r, k = c * 8 + j;
          p.w[(t * (K / 8) + c) * 64 + 4 * r + j] = static_cast<uint8_t>((p.q[n * K + k] + 8) | ((p.q[n * K + k + 4] + 8) << 4));
        }
  for (int64_t t = 0; t < N / kTile; ++t)
    for (int64_t g = 0; g < K / 32; ++g)
      for (int r = 0; r < kTile; ++r) p.ws[(t * (K / 32) + g) * kTile + r] = 0.01f + (std::rand() % 1000) * 1e-5f;
  return p;
}

static Acts make_acts(int64_t M, int64_t K) {
  Acts a{M, K, std::vector<int32_t>(M * K / 4), std::vector<int32_t>(M * K / 4), std::vector<float>(M * K / 32),
         std::vector<int32_t>(M * K / 32), std::vector<int16_t>(M * K)};
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < K / 32; ++g) {
      float x[32], amax = 0;
      for (auto& v : x) {
        v = (std::rand() / float(RAND_MAX) - 0.5f) * 4;
        amax = std::fmax(amax, std::fabs(v));
      }
      const float d = amax / 32639;
      a.dx[m * (K / 32) + g] = d;
      int32_t s = 0;
      for (int i = 0; i < 32; ++i) {
        const int16_t v = static_cast<int16_t>(std::lrintf(x[i] / d));
        const int8_t lo = static_cast<int8_t>(v & 0xFF), hi = static_cast<int8_t>((v - lo) / 256);
        const int64_t k = g * 32 + i;
        a.x16[m * K + k] = v;
        s += v;
        reinterpret_cast<int8_t*>(a.xl.data())[m * K + k] = lo;
        reinterpret_cast<int8_t*>(a.xh.data())[m * K + k] = hi;
      }
      a.xsum8[m * (K / 32) + g] = 8 * s;
    }
  return a;
}

// y[M, N] for weight tiles [t0, t1), MB x rows at a time.
template <int MB>
static void tile_rows(const Problem& p, const Acts& a, int64_t m0, int64_t t0, int64_t t1, float* y) {
  const int64_t K = p.K, G = K / 32;
  const __m512i nib = _mm512_set1_epi8(0x0F);
  for (int64_t t = t0; t < t1; ++t) {
    const uint8_t* w = p.w.data() + t * (K / 8) * 64;
    __m512 acc[MB];
    for (int m = 0; m < MB; ++m) acc[m] = _mm512_setzero_ps();
    for (int64_t g = 0; g < G; ++g) {
      __m512i al[MB], ah[MB];
      for (int m = 0; m < MB; ++m) al[m] = ah[m] = _mm512_setzero_si512();
      _mm_prefetch(reinterpret_cast<const char*>(w + (g + 16) * 256), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(w + (g + 16) * 256 + 64), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(w + (g + 16) * 256 + 128), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(w + (g + 16) * 256 + 192), _MM_HINT_T0);
      for (int c = 0; c < 4; ++c) {  // 8 k a vector
        const __m512i v = _mm512_loadu_si512(w + (g * 4 + c) * 64);
        const __m512i lo = _mm512_and_si512(v, nib), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nib);
        for (int m = 0; m < MB; ++m) {
          const int32_t* xl = a.xl.data() + (m0 + m) * (K / 4) + g * 8 + c * 2;
          const int32_t* xh = a.xh.data() + (m0 + m) * (K / 4) + g * 8 + c * 2;
          al[m] = _mm512_dpbusd_epi32(al[m], lo, _mm512_set1_epi32(xl[0]));
          al[m] = _mm512_dpbusd_epi32(al[m], hi, _mm512_set1_epi32(xl[1]));
          ah[m] = _mm512_dpbusd_epi32(ah[m], lo, _mm512_set1_epi32(xh[0]));
          ah[m] = _mm512_dpbusd_epi32(ah[m], hi, _mm512_set1_epi32(xh[1]));
        }
      }
      const __m512 s = _mm512_loadu_ps(p.ws.data() + (t * G + g) * kTile);
      for (int m = 0; m < MB; ++m) {
        const int64_t i = (m0 + m) * G + g;
        const __m512i d = _mm512_sub_epi32(_mm512_add_epi32(_mm512_slli_epi32(ah[m], 8), al[m]), _mm512_set1_epi32(a.xsum8[i]));
        acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(s, _mm512_set1_ps(a.dx[i])), acc[m]);
      }
    }
    for (int m = 0; m < MB; ++m)
      for (int r = 0; r < kTile; ++r) y[(m0 + m) * p.N + t * kTile + r] = acc[m][r];
  }
}

static void qgemm(const Problem& p, const Acts& a, float* y) {
  const int64_t tiles = p.N / kTile;
#pragma omp parallel
  {
    const int nt = omp_get_num_threads(), id = omp_get_thread_num();
    const int64_t t0 = tiles * id / nt, t1 = tiles * (id + 1) / nt;
    int64_t m = 0;
    for (; m + 4 <= a.M; m += 4) tile_rows<4>(p, a, m, t0, t1, y);
    for (; m < a.M; ++m) tile_rows<1>(p, a, m, t0, t1, y);
  }
}

int main() {
  const int64_t N = 6144, K = 1536;  // E2B up; 4.7 MB of nibbles: L3-resident
  const Problem p = make_weights(N, K);
  for (int64_t M : {1, 4, 16}) {
    const Acts a = make_acts(M, K);
    std::vector<float> y(M * N);
    qgemm(p, a, y.data());
    double worst = 0;  // against the exact sum of dequantized products in float64
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; n += 37) {
        double ref = 0;
        for (int64_t k = 0; k < K; ++k) {
          const int64_t t = n / kTile, r = n % kTile, g = k / 32;
          ref += double(p.q[n * K + k]) * a.x16[m * K + k] * p.ws[(t * (K / 32) + g) * kTile + r] * a.dx[m * (K / 32) + g];
        }
        worst = std::fmax(worst, std::fabs(ref - y[m * N + n]) / (std::fabs(ref) + 1e-3));
      }
    const int reps = M == 1 ? 400 : 100;
    double best = 1e9;
    for (int trial = 0; trial < 7; ++trial) {
      const auto t0 = std::chrono::steady_clock::now();
      for (int r = 0; r < reps; ++r) qgemm(p, a, y.data());
      best = std::fmin(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps);
    }
    std::printf("M=%2ld N=%ld K=%ld threads=%d: %.4f ms, %.1f G weight-row products/s, max rel err vs exact %.1e\n", M,
                N, K, omp_get_max_threads(), best * 1e3, M * N * K / best / 1e9, worst);
  }
  return 0;
}
