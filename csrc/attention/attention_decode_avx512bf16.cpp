// bf16 decode attention's tile products on vdpbf16ps (attention_decode_avx512bf16.h says what and why).
// Compiled with -mavx512f/bw/vl/dq -mavx512bf16 (CMakeLists.txt, files named *_avx512bf16.cpp); no ATen here.
#include "attention/attention_decode_avx512bf16.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512BF16__)
#include <immintrin.h>

namespace gemma4::attn::bf16dp {

bool supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512bf16");
}

namespace {

inline __m512bh load_bh(const uint16_t* p) { return (__m512bh)_mm512_loadu_si512(p); }

// Lane i of the result = the sum of the 16 lanes of a[i]: a transpose-and-add tree (45 instructions for 16 sums).
inline __m512 sum16(const __m512 (&a)[16]) {
  __m512 b[8];  // per 128-bit block: [x0+x2, y0+y2, x1+x3, y1+y3] of x = a[2k], y = a[2k+1]
  for (int k = 0; k < 8; ++k)
    b[k] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * k], a[2 * k + 1]), _mm512_unpackhi_ps(a[2 * k], a[2 * k + 1]));
  __m512 c[4];  // block B, lane m: the sum of a[4k + m]'s lanes in block B
  for (int k = 0; k < 4; ++k) {
    const __m512d p = _mm512_castps_pd(b[2 * k]), q = _mm512_castps_pd(b[2 * k + 1]);
    c[k] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(p, q)), _mm512_castpd_ps(_mm512_unpackhi_pd(p, q)));
  }
  // blocks [c0: B0+B1, c0: B2+B3, c1: B0+B1, c1: B2+B3], the same of c2 and c3
  const __m512 e0 = _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], 0x88), _mm512_shuffle_f32x4(c[0], c[1], 0xDD));
  const __m512 e1 = _mm512_add_ps(_mm512_shuffle_f32x4(c[2], c[3], 0x88), _mm512_shuffle_f32x4(c[2], c[3], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(e0, e1, 0x88), _mm512_shuffle_f32x4(e0, e1, 0xDD));
}

}  // namespace

void scores(int64_t n, const uint16_t* K, int64_t ldk, const uint16_t* Q, int64_t hd, float* St) {
  for (int64_t j = 0; j < n; j += 2) {
    const bool two = j + 1 < n;
    const uint16_t* k0 = K + j * ldk;
    const uint16_t* k1 = two ? k0 + ldk : k0;  // a last odd key: its row twice, the copy's sums not stored
    __m512 acc[16];                            // acc[8 * key + r]
    for (__m512& a : acc) a = _mm512_setzero_ps();
    for (int64_t d = 0; d < hd; d += 32) {
      const __m512bh a0 = load_bh(k0 + d), a1 = load_bh(k1 + d);
#pragma GCC unroll 8
      for (int r = 0; r < 8; ++r) {
        const __m512bh q = load_bh(Q + r * hd + d);
        acc[r] = _mm512_dpbf16_ps(acc[r], a0, q);
        acc[8 + r] = _mm512_dpbf16_ps(acc[8 + r], a1, q);
      }
    }
    const __m512 s = sum16(acc);  // [key j: rows 0-7, key j+1: rows 0-7]
    if (two) _mm512_storeu_ps(St + j * 8, s);
    else _mm256_storeu_ps(St + j * 8, _mm512_castps512_ps256(s));
  }
}

void values(int64_t n, const float* P, const uint16_t* V, int64_t ldv, const bool* pad, int64_t hd, uint16_t* V2,
            float* O, int64_t ldo, const float* alpha) {
  const int64_t npair = (n + 1) / 2;
  // V2[jp][d] = the pair (V[2jp][d], V[2jp+1][d]), one 32-bit lane each: what vdpbf16ps multiplies by a broadcast
  // pair of probabilities. 32 d a step: the first 16 pairs from the low halves of the two rows, then the high.
  alignas(64) static constexpr uint16_t kLo[32] = {0, 32, 1, 33, 2,  34, 3,  35, 4,  36, 5,  37, 6,  38, 7,  39,
                                                   8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  const __m512i lo = _mm512_load_si512(kLo), hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
  for (int64_t jp = 0; jp < npair; ++jp) {
    const int64_t j0 = 2 * jp, j1 = j0 + 1;
    const uint16_t* r0 = pad && pad[j0] ? nullptr : V + j0 * ldv;
    const uint16_t* r1 = j1 < n && !(pad && pad[j1]) ? V + j1 * ldv : nullptr;
    uint16_t* dst = V2 + jp * hd * 2;
    for (int64_t d = 0; d < hd; d += 32) {
      const __m512i a = r0 ? _mm512_loadu_si512(r0 + d) : _mm512_setzero_si512();
      const __m512i b = r1 ? _mm512_loadu_si512(r1 + d) : _mm512_setzero_si512();
      _mm512_storeu_si512(dst + 2 * d, _mm512_permutex2var_epi16(a, lo, b));
      _mm512_storeu_si512(dst + 2 * d + 32, _mm512_permutex2var_epi16(a, hi, b));
    }
  }
  // Pp[jp][r] = the pair (P[2jp][r], P[2jp+1][r]) rounded to bf16 (to nearest even).
  constexpr int64_t kMaxPairs = 64;
  alignas(64) uint32_t Pp[kMaxPairs * 8];
  const __m256i interleave = _mm256_setr_epi16(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
  for (int64_t jp = 0; jp < npair; ++jp) {
    const float* p = P + jp * 16;
    const __m512 pv = 2 * jp + 1 < n ? _mm512_loadu_ps(p) : _mm512_zextps256_ps512(_mm256_loadu_ps(p));
    const __m256i pb = (__m256i)_mm512_cvtneps_pbh(pv);  // [key 2jp: rows 0-7, key 2jp+1: rows 0-7]
    _mm256_store_si256(reinterpret_cast<__m256i*>(Pp + jp * 8), _mm256_permutexvar_epi16(interleave, pb));
  }
  // 32 d at a time: 8 rows x 2 vectors of accumulators, the pairs' V2 lanes loaded once for all rows.
  for (int64_t d = 0; d < hd; d += 32) {
    __m512 acc[8][2];
#pragma GCC unroll 8
    for (int r = 0; r < 8; ++r) {
      if (alpha) {
        const __m512 s = _mm512_set1_ps(alpha[r]);
        acc[r][0] = _mm512_mul_ps(_mm512_loadu_ps(O + r * ldo + d), s);
        acc[r][1] = _mm512_mul_ps(_mm512_loadu_ps(O + r * ldo + d + 16), s);
      } else {
        acc[r][0] = acc[r][1] = _mm512_setzero_ps();
      }
    }
    for (int64_t jp = 0; jp < npair; ++jp) {
      const uint16_t* v = V2 + jp * hd * 2 + 2 * d;
      const __m512bh v0 = load_bh(v), v1 = load_bh(v + 32);
#pragma GCC unroll 8
      for (int r = 0; r < 8; ++r) {
        const __m512bh p = (__m512bh)_mm512_set1_epi32(static_cast<int>(Pp[jp * 8 + r]));
        acc[r][0] = _mm512_dpbf16_ps(acc[r][0], v0, p);
        acc[r][1] = _mm512_dpbf16_ps(acc[r][1], v1, p);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < 8; ++r) {
      _mm512_storeu_ps(O + r * ldo + d, acc[r][0]);
      _mm512_storeu_ps(O + r * ldo + d + 16, acc[r][1]);
    }
  }
}

}  // namespace gemma4::attn::bf16dp

#else  // a build without the AVX-512 flags (another architecture): never chosen

namespace gemma4::attn::bf16dp {
bool supported() { return false; }
void scores(int64_t, const uint16_t*, int64_t, const uint16_t*, int64_t, float*) {}
void values(int64_t, const float*, const uint16_t*, int64_t, const bool*, int64_t, uint16_t*, float*, int64_t,
            const float*) {}
}  // namespace gemma4::attn::bf16dp

#endif
