// The AVX-512 Isa traits of the quantized-GEMM kernels, for qgemm_isa_avx512.cpp and
// qgemm_isa_avx512vnni.cpp (compiled with the AVX-512 flags; the op picks one at run time by CPU features).
// Include inside the ISA namespace, after <immintrin.h>. Pure intrinsics, no ATen (see qgemm_problem.h).
#pragma once

struct Isa {
  using F = __m512;
  static constexpr int L = 16;
  static F zero() { return _mm512_setzero_ps(); }
  static F set1(float v) { return _mm512_set1_ps(v); }
  static F loadx(const float* p) { return _mm512_loadu_ps(p); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static float hsum(F v) { return _mm512_reduce_add_ps(v); }
  // 32 int4 weights (16 bytes, Q4_0 nibble order) -> u = q + 8 as float32: out[0] = weights 0-15
  // (low nibbles), out[1] = weights 16-31 (high nibbles).
  static void unpack_u4(const uint8_t* p, F out[2]) {
    const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    out[0] = _mm512_cvtepi32_ps(_mm512_and_si512(b, _mm512_set1_epi32(0x0F)));
    out[1] = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));
  }
  // ---- int16 path (AVX512BW) ----
  using I = __m512i;
  static constexpr int L16 = 32;
  static I izero() { return _mm512_setzero_si512(); }
  static I load16(const int16_t* p) { return _mm512_loadu_si512(p); }
  static I madd16(I a, I b) { return _mm512_madd_epi16(a, b); }
  static I add_i32(I a, I b) { return _mm512_add_epi32(a, b); }
  static F to_float(I a) { return _mm512_cvtepi32_ps(a); }
  // 32 int4 weights -> q = u - 8 as int16 in K order: the 16 bytes widened twice side by side, the low
  // half keeps the low nibbles (weights 0-15), the high half shifts out the high nibbles (16-31).
  static void unpack_i16_q4(const uint8_t* p, I out[1]) {
    const __m256i b = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(b), b, 1);
    const __m512i shift = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
    const __m512i u = _mm512_and_si512(_mm512_srlv_epi16(both, shift), _mm512_set1_epi16(0x0F));
    out[0] = _mm512_sub_epi16(u, _mm512_set1_epi16(8));
  }
  static void unpack_i16_q8(const int8_t* p, I out[1]) {
    out[0] = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static void load_i8(const int8_t* p, F out[2]) {
    out[0] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
    out[1] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16))));
  }
};
