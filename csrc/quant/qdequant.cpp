// Packed weight rows -> bf16, the portable loop (qdequant.h); qdequant_avx512.cpp is the same on AVX-512.
// Reference: gemma4.quant.formats.dequantize.
#include "quant/qdequant.h"

#include <c10/util/BFloat16.h>

namespace gemma4::quant {

void dequantize_rows_bf16_scalar(const uint8_t* qw, int bits, const float* scales, int64_t r0, int64_t r1, int64_t K,
                                 int64_t G, uint16_t* w) {
  const int64_t group = K / G, row_bytes = bits == 4 ? K / 2 : K;
  float q[32];
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* b = qw + r * row_bytes;  // [row_bytes]
    for (int64_t k0 = 0; k0 < K; k0 += 32) {  // a run of 32 weights (K % 32 == 0), one scale
      if (bits == 4) {  // byte j: weight j in its low nibble, weight j + 16 in its high one (u = q + 8)
        for (int j = 0; j < 16; ++j) {
          q[j] = static_cast<float>(static_cast<int>(b[k0 / 2 + j] & 0xF) - 8);
          q[j + 16] = static_cast<float>(static_cast<int>(b[k0 / 2 + j] >> 4) - 8);
        }
      } else {
        for (int j = 0; j < 32; ++j) q[j] = static_cast<float>(static_cast<int8_t>(b[k0 + j]));
      }
      const float scale = scales[r * G + k0 / group];
      for (int j = 0; j < 32; ++j) w[r * K + k0 + j] = c10::BFloat16(q[j] * scale).x;
    }
  }
}

}  // namespace gemma4::quant
