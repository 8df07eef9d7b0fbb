// The quantized-GEMM kernels for AVX2 + FMA + F16C (the build's baseline): Isa traits, then the
// shared kernel body from qgemm_kernels.h. Pure intrinsics, no ATen (see qgemm_problem.h).
#include "quant/qgemm_problem.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)  // (a non-x86 build has no CPU qgemm yet)
#include <immintrin.h>

namespace gemma4::quant::avx2 {

struct Isa {
  using F = __m256;
  static constexpr int L = 8;
  static F zero() { return _mm256_setzero_ps(); }
  static F set1(float v) { return _mm256_set1_ps(v); }
  static F loadx(const float* p) { return _mm256_loadu_ps(p); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static float hsum(F v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  // 32 int4 weights (16 bytes: byte j = weight j low nibble, weight j+16 high nibble) -> the stored
  // values u = q + 8 (0..15) as float32, in K order: out[0] = weights 0-7, ..., out[3] = 24-31.
  static void unpack_u4(const uint8_t* p, F out[4]) {
    const __m256i b0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));      // bytes 0-7
    const __m256i b1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8)));  // bytes 8-15
    const __m256i low = _mm256_set1_epi32(0x0F);
    out[0] = _mm256_cvtepi32_ps(_mm256_and_si256(b0, low));
    out[1] = _mm256_cvtepi32_ps(_mm256_and_si256(b1, low));
    out[2] = _mm256_cvtepi32_ps(_mm256_srli_epi32(b0, 4));
    out[3] = _mm256_cvtepi32_ps(_mm256_srli_epi32(b1, 4));
  }
  // ---- int16 path ----
  using I = __m256i;
  static constexpr int L16 = 16;  // int16 lanes
  static I izero() { return _mm256_setzero_si256(); }
  static I load16(const int16_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static I madd16(I a, I b) { return _mm256_madd_epi16(a, b); }  // pairwise int16 products summed to int32
  static I add_i32(I a, I b) { return _mm256_add_epi32(a, b); }
  static F to_float(I a) { return _mm256_cvtepi32_ps(a); }
  // 32 int4 weights -> q = u - 8 as int16, K order: out[0] = weights 0-15, out[1] = 16-31.
  static void unpack_i16_q4(const uint8_t* p, I out[2]) {
    const __m256i b = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    const __m256i eight = _mm256_set1_epi16(8);
    out[0] = _mm256_sub_epi16(_mm256_and_si256(b, _mm256_set1_epi16(0x0F)), eight);
    out[1] = _mm256_sub_epi16(_mm256_srli_epi16(b, 4), eight);
  }
  static void unpack_i16_q8(const int8_t* p, I out[2]) {
    out[0] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    out[1] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16)));
  }
  // 32 int8 weights -> float32, in K order.
  static void load_i8(const int8_t* p, F out[4]) {
    for (int i = 0; i < 4; ++i)
      out[i] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * i))));
  }
};

#include "quant/qgemm_kernels.h"

namespace {

// Weight rows [n, n + rows), k in [k0, k0 + kc), as float32 q * scale (dequant_run, as the fp32 kernel's):
// w[r * kc + k - k0]. k0 is a multiple of 32
// (as K is), so each 32-weight run lies in one group (a group is a multiple of 32 weights). Called inside the
// packed GEMM's tasks, which flush subnormals, as its sums do.
template <class S>
void dequantize_panel_rows_typed(const QgemmProblem& p, int64_t n, int64_t rows, int64_t k0, int64_t kc, float* w) {
  const int64_t row_bytes = p.bits == 4 ? p.K / 2 : p.K;
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* q = p.qw + (n + r) * row_bytes;
    const S* s = static_cast<const S*>(p.scales) + (n + r) * p.G;
    float* out = w + r * kc;  // [kc]
    for (int64_t k = k0; k < k0 + kc; k += 32) {  // K and k0 are multiples of 32
      const float sf = scale_to_float(s[k / p.group]);
      Isa::F v[4];  // weights k .. k + 31, 8 a vector
      if (p.bits == 4) {
        dequant_run<4>(q + k / 2, Isa::set1(sf), Isa::set1(-8.f * sf), v);
      } else {
        dequant_run<8>(q + k, Isa::set1(sf), Isa::set1(-8.f * sf), v);
      }
      for (int i = 0; i < 4; ++i) _mm256_storeu_ps(out + (k - k0) + 8 * i, v[i]);
    }
  }
}

}  // namespace

void dequantize_panel_rows(const QgemmProblem& p, int64_t n, int64_t rows, int64_t k0, int64_t kc, float* w) {
  switch (p.scale_type) {
    case ScaleType::f32: dequantize_panel_rows_typed<float>(p, n, rows, k0, kc, w); break;
    case ScaleType::bf16: dequantize_panel_rows_typed<Bf16Bits>(p, n, rows, k0, kc, w); break;
    case ScaleType::f16: dequantize_panel_rows_typed<F16Bits>(p, n, rows, k0, kc, w); break;
  }
}

}  // namespace gemma4::quant::avx2
#endif
