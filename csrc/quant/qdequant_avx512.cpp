// Packed weight rows -> bf16 on AVX-512F/BW (qdequant.h). Reference: dequantize_rows_bf16_scalar
// (qdequant.cpp) and gemma4.quant.formats.dequantize; tests/quant/test_qgemm.py checks the route bit for bit.
// Why: on a CPU with a native bf16 GEMM, bf16 prefill dequantizes each weight before torch's GEMM, and the scalar
// loop (about 1 ns a weight on one core of a 2-core EPYC) cost more than the GEMM itself (E2B's 1536 -> 6144 up
// projection at 128 rows: 9.4 of 15.6 ms). This file alone gets the AVX-512 flags (CMakeLists.txt).
#include "quant/qdequant.h"

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>

#include <cstring>

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

// The 16 x 16 dword matrix a[j][r] -> a[r][j]: 32-bit, then 64-bit interleaves within 128-bit lanes, then two
// rounds of 128-bit lane shuffles (64 instructions for 1 KB; a dword memcpy loop or a gather a row was as slow
// as the dequantization itself on a Zen 4 EPYC, and storing the transposed rows to reload them cost 10-19% of it).
void transpose16(__m512i (&a)[16]) {
  __m512i t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(a[2 * i], a[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(a[2 * i], a[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int h = 0; h < 2; ++h)
    for (int k = 0; k < 4; ++k) {
      t[8 * h + k] = _mm512_shuffle_i32x4(u[8 * h + k], u[8 * h + k + 4], 0x88);
      t[8 * h + k + 4] = _mm512_shuffle_i32x4(u[8 * h + k], u[8 * h + k + 4], 0xdd);
    }
  for (int k = 0; k < 8; ++k) {
    a[k] = _mm512_shuffle_i32x4(t[k], t[k + 8], 0x88);
    a[k + 8] = _mm512_shuffle_i32x4(t[k], t[k + 8], 0xdd);
  }
}

}  // namespace

void dequantize_rows_bf16(const uint8_t* qw, int bits, const float* scales, int64_t r0, int64_t r1, int64_t K,
                          int64_t G, int64_t rs, int64_t gs, uint16_t* w) {
  const int64_t group = K / G, row_bytes = bits == 4 ? K / 2 : K;
  const __m512i eight = _mm512_set1_epi32(8), low = _mm512_set1_epi32(0x0F);
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* qr = qw + r * row_bytes;  // [row_bytes]
    const float* sr = scales + r * rs;       // [G], gs apart
    uint16_t* wr = w + r * K;                // [K]
    for (int64_t k0 = 0; k0 < K; k0 += 32) {  // a run of 32 weights, one scale
      const float scale = sr[(k0 / group) * gs];
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

void dequantize_tile_bf16(const uint8_t* tile, const float* scales, int64_t K, int64_t G, uint16_t* w) {
  const int64_t C = K / 8, group = K / G;  // C: dwords of a row
  const __m512i eight = _mm512_set1_epi32(8), low = _mm512_set1_epi32(0x0F);
  // run j of row r (16 bytes, byte i: weight i in its low nibble, i + 16 in its high one) -> w[r, k0..k0 + 31]
  const auto run = [&](__m128i bytes, int r, int64_t k0) {
    const __m512i b = _mm512_cvtepu8_epi32(bytes);
    store_run(_mm512_sub_epi32(_mm512_and_si512(b, low), eight), _mm512_sub_epi32(_mm512_srli_epi32(b, 4), eight),
              scales[(k0 / group) * 16 + r], w + r * K + k0);
  };
  int64_t c0 = 0;
  for (; c0 + 16 <= C; c0 += 16) {  // 16 dword columns of the tile (1 KB): 128 weights of each row
    __m512i a[16];                  // a[j][r]: row r's dword c0 + j
    for (int j = 0; j < 16; ++j) a[j] = _mm512_loadu_si512(tile + 64 * (c0 + j));
    transpose16(a);  // a[r]: row r's 64 bytes, four runs
    for (int r = 0; r < 16; ++r) {
      run(_mm512_extracti32x4_epi32(a[r], 0), r, 8 * c0);
      run(_mm512_extracti32x4_epi32(a[r], 1), r, 8 * c0 + 32);
      run(_mm512_extracti32x4_epi32(a[r], 2), r, 8 * c0 + 64);
      run(_mm512_extracti32x4_epi32(a[r], 3), r, 8 * c0 + 96);
    }
  }
  for (; c0 < C; c0 += 4)  // the last K % 128 weights of each row, a run (4 dwords) at a time
    for (int r = 0; r < 16; ++r) {
      alignas(16) uint32_t d[4];
      for (int i = 0; i < 4; ++i) std::memcpy(&d[i], tile + 64 * (c0 + i) + 4 * r, 4);
      run(_mm_load_si128(reinterpret_cast<const __m128i*>(d)), r, 8 * c0);
    }
}

}  // namespace gemma4::quant::avx512
#endif
