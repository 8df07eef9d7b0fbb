// Packed weight rows -> bf16 or float32, the portable loops (qdequant.h); qdequant_avx512.cpp is the bf16 one on
// AVX-512.
// Reference: gemma4.quant.formats.dequantize.
#include "quant/qdequant.h"

#include <cstring>
#include <vector>

#include <c10/util/BFloat16.h>

namespace gemma4::quant {

namespace {

// Rows [r0, r1) of packed weights, each level times its run's scale in float32, stored through store(float) into
// w [rows, K] (scale(r, g) = scales[r * rs + g * gs], qdequant.h). Written straight into w, so the loops vectorize.
template <typename Out, typename Store>
void dequantize_rows(const uint8_t* qw, int bits, const float* scales, int64_t r0, int64_t r1, int64_t K, int64_t G,
                     int64_t rs, int64_t gs, Out* w, Store store) {
  const int64_t group = K / G, row_bytes = bits == 4 ? K / 2 : K;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* b = qw + r * row_bytes;  // [row_bytes]
    Out* out = w + r * K;                   // [K]
    for (int64_t k0 = 0; k0 < K; k0 += 32) {  // a run of 32 weights (K % 32 == 0), one scale
      const float scale = scales[r * rs + (k0 / group) * gs];
      if (bits == 4) {  // byte j: weight j in its low nibble, weight j + 16 in its high one (u = q + 8)
        const uint8_t* run = b + k0 / 2;
        for (int j = 0; j < 16; ++j) {
          out[k0 + j] = store(static_cast<float>(static_cast<int>(run[j] & 0xF) - 8) * scale);
          out[k0 + j + 16] = store(static_cast<float>(static_cast<int>(run[j] >> 4) - 8) * scale);
        }
      } else {
        for (int j = 0; j < 32; ++j) out[k0 + j] = store(static_cast<float>(static_cast<int8_t>(b[k0 + j])) * scale);
      }
    }
  }
}

}  // namespace

void dequantize_rows_bf16_scalar(const uint8_t* qw, int bits, const float* scales, int64_t r0, int64_t r1, int64_t K,
                                 int64_t G, int64_t rs, int64_t gs, uint16_t* w) {
  dequantize_rows(qw, bits, scales, r0, r1, K, G, rs, gs, w, [](float v) { return c10::BFloat16(v).x; });
}

void dequantize_rows_f32(const uint8_t* qw, int bits, const float* scales, int64_t r0, int64_t r1, int64_t K,
                         int64_t G, float* w) {
  dequantize_rows(qw, bits, scales, r0, r1, K, G, /*rs=*/G, /*gs=*/1, w, [](float v) { return v; });
}

void dequantize_tile_bf16_scalar(const uint8_t* tile, const float* scales, int64_t K, int64_t G, uint16_t* w) {
  std::vector<uint8_t> q(16 * K / 2);  // [16, K/2]: the tile in the row layout
  for (int64_t c = 0; c < K / 8; ++c)
    for (int r = 0; r < 16; ++r) std::memcpy(q.data() + r * (K / 2) + 4 * c, tile + 64 * c + 4 * r, 4);
  dequantize_rows_bf16_scalar(q.data(), 4, scales, 0, 16, K, G, 1, 16, w);
}

}  // namespace gemma4::quant
