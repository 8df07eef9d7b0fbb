// Packed weight rows -> bf16 on AVX-512F/BW (qdequant.h). Reference: dequantize_rows_bf16_scalar
// (qdequant.cpp) and gemma4.quant.formats.dequantize; tests/quant/test_qgemm.py checks the route bit for bit.
// Why: on a CPU with a native bf16 GEMM, bf16 prefill dequantizes each weight before torch's GEMM, and the scalar
// loop (about 1 ns a weight on one core of a 2-core EPYC) cost more than the GEMM itself (E2B's 1536 -> 6144 up
// projection at 128 rows: 9.4 of 15.6 ms). This file alone gets the AVX-512 flags (CMakeLists.txt).
#include "quant/qdequant.h"

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>

namespace gemma4::quant::avx512 {
namespace {

// 16 float32 -> 16 bf16 bits, round to nearest even, NaN to 0x7FC0 (c10::BFloat16's rule, in integers: the
// AVX512-BF16 conversion would flush denormals).
__m256i to_bf16(__m512 f) {
  const __m512i u = _mm512_castps_si512(f);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
  return _mm512_cvtepi32_epi16(r);
}

// 32 levels (as int32, two halves of 16) times the run's scale, stored as bf16.
void store_run(__m512i q0, __m512i q1, float scale, uint16_t* out) {
  const __m512 s = _mm512_set1_ps(scale);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), to_bf16(_mm512_mul_ps(_mm512_cvtepi32_ps(q0), s)));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 16), to_bf16(_mm512_mul_ps(_mm512_cvtepi32_ps(q1), s)));
}

}  // namespace

void dequantize_rows_bf16(const uint8_t* qw, int bits, const float* scales, int64_t r0, int64_t r1, int64_t K,
                          int64_t G, uint16_t* w) {
  const int64_t group = K / G, row_bytes = bits == 4 ? K / 2 : K;
  const __m512i eight = _mm512_set1_epi32(8), low = _mm512_set1_epi32(0x0F);
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* qr = qw + r * row_bytes;  // [row_bytes]
    const float* sr = scales + r * G;        // [G]
    uint16_t* wr = w + r * K;                // [K]
    for (int64_t k0 = 0; k0 < K; k0 += 32) {  // a run of 32 weights, one scale
      const float scale = sr[k0 / group];
      if (bits == 4) {  // byte j: weight j in its low nibble, weight j + 16 in its high one (u = q + 8)
        const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qr + k0 / 2)));
        store_run(_mm512_sub_epi32(_mm512_and_si512(b, low), eight),
                  _mm512_sub_epi32(_mm512_srli_epi32(b, 4), eight), scale, wr + k0);
      } else {
        const __m128i* p = reinterpret_cast<const __m128i*>(qr + k0);
        store_run(_mm512_cvtepi8_epi32(_mm_loadu_si128(p)), _mm512_cvtepi8_epi32(_mm_loadu_si128(p + 1)), scale,
                  wr + k0);
      }
    }
  }
}

}  // namespace gemma4::quant::avx512
#endif
