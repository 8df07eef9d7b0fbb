// Packed weight rows -> float32, with ATen ops (any device): for the backward passes that multiply by the frozen
// weight a slab at a time (qgemm_autograd.cpp, moe_experts_quant_composed.cpp). Exact: every level times its
// scale is representable in float32. Reference: gemma4.quant.formats.dequantize.
#pragma once
#include <ATen/ATen.h>

namespace gemma4::quant {

// Packed [rows, K/2 | K] (contiguous) with scales [rows, G] -> float32 [rows, K]: the format of qgemm_problem.h
// (int4: each 32-weight run is 16 bytes, byte j = weight j in the low nibble, weight j + 16 in the high one,
// stored q + 8; int8 as it is).
inline at::Tensor dequantize_f32(const at::Tensor& qweight, const at::Tensor& scales) {
  const int64_t rows = qweight.size(0), G = scales.size(1);
  at::Tensor q;
  if (qweight.scalar_type() == at::kByte) {
    const at::Tensor runs = qweight.view({rows, -1, 16});                             // [rows, K/32, 16]
    q = at::cat({runs.bitwise_and(15), at::bitwise_right_shift(runs, 4)}, 2)          // [rows, K/32, 32]
            .to(at::kFloat)
            .sub_(8)
            .view({rows, -1});                                                        // [rows, K]
  } else {
    q = qweight.to(at::kFloat);                                                       // [rows, K]
  }
  const int64_t K = q.size(1);
  return q.view({rows, G, K / G}).mul_(scales.to(at::kFloat).unsqueeze(2)).view({rows, K});
}

}  // namespace gemma4::quant
