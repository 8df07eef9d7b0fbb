// The prefill-sized linear on AVX-512 (this file alone is compiled with -mavx512f/bw/vl/dq; linear_cpu.cpp
// picks it at run time): linear_gemm.h's packed GEMM (linear_pack.h) with an 8 x 32 tile of 16-lane accumulators.
// Why: on a CPU with 512-bit FMA pipes (the benchmarks' 2-core Zen 5 EPYC) one zmm FMA does twice a ymm FMA's
// work at the same rate. One thread, M = 128, GFLOP/s: 6144 x 1536 113 (6 x 16 AVX2) -> 200 (8 x 32), 1536 x
// 6144 104 -> 186; two threads 221 -> 391 and 215 -> 356 (dev/perf/gemm_packed_kernel.cpp built with AVX-512,
// which also tried 6 x 32, 12 x 32, 14 x 32, 8 x 48 and 4 x 64: all within 8% of 8 x 32, none faster).
// Numbers: each output is one fp32 FMA chain over a k-block of kGemmKC, blocks added in order: the AVX2 tile's
// operations exactly, so the two paths agree bit for bit.
// For fp32 weights at most row counts from 32 up (linear_cpu.cpp's xt_tile_fits), the x-vector tile (micro_xt_32x8,
// gemm_panel_xt): x's rows in the lanes and the weight broadcast from where it lies, so the weight is never packed
// (the header says why).
// Reference: reference.linear in python/gemma4/ops/reference.py.
#include "linear/linear_gemm_avx512.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>

#include <algorithm>
#include <type_traits>

namespace gemma4::linear::avx512 {
namespace {

constexpr int kMR = kGemmMR, kNR = kGemmNR;
// The x-vector tile's k-span: packed x bytes that one pass over a task's weight rows reads (the rest of x waits for
// the next span). 512 KB stays in L2 (2 MB a core on the Xeon, 1 MB on the Zen 5) while each group of weight rows
// reads its span's k-blocks in a row: 6 KB of one fp32 row at K = 1536, so the weight streams row by row instead
// of 512-byte pieces 16 row groups apart. 256 KB and 1 MB measured the same within the noise.
constexpr int64_t kXtSpanBytes = int64_t(512) << 10;

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));  // 8 x bf16
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));  // a bf16 is fp32's top half
}
inline float widen(float v) { return v; }
inline float widen(uint16_t b) {
  const uint32_t u = uint32_t(b) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}

#include "linear/linear_pack.h"  // transpose8, pack_w_panel, pack_kn_panel, gemm_panel: this file's own copy

// c[i * ldc + j] (+)= sum over k < kc of a[k * kMR + i] * b[k * kNR + j], i < kMR, j < kNR: 16 accumulators,
// 16 FMAs per 2 vector loads and 8 broadcasts.
void micro_8x32(const float* a, const float* b, int64_t kc, float* c, int64_t ldc, bool add) {
  __m512 acc[kMR][2];
  for (int i = 0; i < kMR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_load_ps(b + k * kNR), b1 = _mm512_load_ps(b + k * kNR + 16);
    for (int i = 0; i < kMR; ++i) {
      const __m512 av = _mm512_set1_ps(a[k * kMR + i]);
      acc[i][0] = _mm512_fmadd_ps(av, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(av, b1, acc[i][1]);
    }
  }
  for (int i = 0; i < kMR; ++i)
    for (int v = 0; v < 2; ++v) {
      float* p = c + i * ldc + 16 * v;
      _mm512_storeu_ps(p, add ? _mm512_add_ps(_mm512_loadu_ps(p), acc[i][v]) : acc[i][v]);
    }
}

// The x-vector tile (fp32 weight [N, K]): ct[j * ldct + i] (+)= sum over k < kc of a[k * kXtMR + i] * w[j * ldw + k],
// i < kXtMR, j < kXtNR: x's rows in the vector lanes (a: a group of x packed k-major) and each weight broadcast
// from its own row, so the weight needs no packing; 16 accumulators, 16 FMAs per 2 vector loads and 8 broadcasts.
void micro_xt_32x8(const float* a, const float* w, int64_t ldw, int64_t kc, float* ct, int64_t ldct, bool add) {
  __m512 acc[kXtNR][2];
  for (int j = 0; j < kXtNR; ++j) acc[j][0] = acc[j][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 a0 = _mm512_load_ps(a + k * kXtMR), a1 = _mm512_load_ps(a + k * kXtMR + 16);
    for (int j = 0; j < kXtNR; ++j) {
      const __m512 wv = _mm512_set1_ps(w[j * ldw + k]);
      acc[j][0] = _mm512_fmadd_ps(wv, a0, acc[j][0]);
      acc[j][1] = _mm512_fmadd_ps(wv, a1, acc[j][1]);
    }
  }
  for (int j = 0; j < kXtNR; ++j)
    for (int v = 0; v < 2; ++v) {
      float* p = ct + j * ldct + 16 * v;
      _mm512_storeu_ps(p, add ? _mm512_add_ps(_mm512_loadu_ps(p), acc[j][v]) : acc[j][v]);
    }
}

template <typename T>
void panel(bool kmajor, const T* w, int64_t K, int64_t N, int64_t k_begin, int64_t k_end, const float* ap,
           int64_t groups, int64_t n0, int64_t nc, float* bp, float* cbuf, int64_t ldc, bool add) {
  if (kmajor) {
    gemm_panel<true, kMR, kNR, kGemmKC>(w, K, N, k_begin, k_end, ap, groups, n0, nc, bp, cbuf, ldc, add, micro_8x32);
  } else {
    gemm_panel<false, kMR, kNR, kGemmKC>(w, K, N, k_begin, k_end, ap, groups, n0, nc, bp, cbuf, ldc, add, micro_8x32);
  }
}

}  // namespace

void gemm_panel(bool kmajor, const float* w, int64_t K, int64_t N, int64_t k_begin, int64_t k_end, const float* ap,
                int64_t groups, int64_t n0, int64_t nc, float* bp, float* cbuf, int64_t ldc, bool add) {
  panel(kmajor, w, K, N, k_begin, k_end, ap, groups, n0, nc, bp, cbuf, ldc, add);
}
// Loops: k-spans, then weight rows 8 at a time, then the span's k-blocks, then x's groups. Each output still adds
// its k-blocks in order, so the sums are the other tiles' bit for bit. On the 2-core Xeon (2 threads, M = 128,
// GFLOP/s against MKL's in the same run) the earlier order, k-blocks outside the rows, ran 6144 x 1536 180-188
// (MKL 231-248) and 1536 x 12288 206-208 (256-258); this one 248-264 (255-268) and 212-232 (250-260), and the
// E2B fp32 prefill (128 tokens) 42.2 -> 47.7 tok/s.
void gemm_panel_xt(const float* w, int64_t K, int64_t k_begin, int64_t k_end, const float* ap, int64_t groups,
                   int64_t n0, int64_t nc, float* ct, int64_t ldct, bool add) {
  alignas(64) float tail[kXtNR * kGemmKC];  // the last rows of w when fewer than kXtNR are left, zero-padded
  const int64_t rows = groups * kXtMR;
  const int64_t span = std::max<int64_t>(1, kXtSpanBytes / (rows * kGemmKC * int64_t(sizeof(float)))) * kGemmKC;
  for (int64_t s0 = k_begin; s0 < k_end; s0 += span) {
    const int64_t s1 = std::min(k_end, s0 + span);
    for (int64_t j = 0; j < nc; j += kXtNR) {
      for (int64_t k0 = s0; k0 < s1; k0 += kGemmKC) {
        const int64_t kc = std::min(kGemmKC, s1 - k0);
        const float* ablk = ap + (k0 - k_begin) * rows;
        const float* wj = w + (n0 + j) * K + k0;
        int64_t ldw = K;
        if (nc - j < kXtNR) {
          for (int r = 0; r < kXtNR; ++r)
            for (int64_t k = 0; k < kc; ++k) tail[r * kc + k] = r < nc - j ? wj[r * K + k] : 0.f;
          wj = tail;
          ldw = kc;
        }
        for (int64_t g = 0; g < groups; ++g)
          micro_xt_32x8(ablk + g * kc * kXtMR, wj, ldw, kc, ct + j * ldct + g * kXtMR, ldct, add || k0 > k_begin);
      }
    }
  }
}
void gemm_panel(bool kmajor, const uint16_t* w, int64_t K, int64_t N, int64_t k_begin, int64_t k_end,
                const float* ap, int64_t groups, int64_t n0, int64_t nc, float* bp, float* cbuf, int64_t ldc,
                bool add) {
  panel(kmajor, w, K, N, k_begin, k_end, ap, groups, n0, nc, bp, cbuf, ldc, add);
}

}  // namespace gemma4::linear::avx512

#else  // a build without the AVX-512 flags (another architecture): never chosen

namespace gemma4::linear::avx512 {
void gemm_panel(bool, const float*, int64_t, int64_t, int64_t, int64_t, const float*, int64_t, int64_t, int64_t,
                float*, float*, int64_t, bool) {}
void gemm_panel(bool, const uint16_t*, int64_t, int64_t, int64_t, int64_t, const float*, int64_t, int64_t, int64_t,
                float*, float*, int64_t, bool) {}
void gemm_panel_xt(const float*, int64_t, int64_t, int64_t, const float*, int64_t, int64_t, int64_t, float*, int64_t,
                   bool) {}
}  // namespace gemma4::linear::avx512

#endif
