// Packed weight rows -> float32 (a C++ loop on the CPU, ATen ops on other devices), for the backward passes that
// multiply by the frozen weight a slab at a time (qgemm_autograd.cpp, moe_experts_quant_composed.cpp). Each level
// times its scale in float32: exact with bf16/fp16 scales, rounded once with fp32 ones (as ATen's multiply).
// Reference: gemma4.quant.formats.dequantize.
#pragma once
#include <algorithm>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/TensorSubclassLikeUtils.h>

#include "quant/qdequant.h"

namespace gemma4::quant {

// Packed [rows, K/2 | K] (contiguous) with scales [rows, G] -> float32 [rows, K]: the format of qgemm_problem.h
// (int4: each 32-weight run is 16 bytes, byte j = weight j in the low nibble, weight j + 16 in the high one,
// stored q + 8; int8 as it is).
inline at::Tensor dequantize_f32(const at::Tensor& qweight, const at::Tensor& scales) {
  const int64_t rows = qweight.size(0), G = scales.size(1);
  // Plain CPU tensors (not fake, functorch-wrapped or under a dispatch mode, as opcheck and torch.compile trace
  // the backward): one pass of C++ (qdequant.cpp) over threads of rows, not six ATen passes.
  if (qweight.is_cpu() && !at::isTensorSubclassLike(qweight) && !at::isTensorSubclassLike(scales)) {
    const int bits = qweight.scalar_type() == at::kByte ? 4 : 8;
    const int64_t K = bits == 4 ? 2 * qweight.size(1) : qweight.size(1);
    const at::Tensor q = qweight.contiguous();
    const at::Tensor s = scales.to(at::kFloat).contiguous();                   // [rows, G]
    at::Tensor w = at::empty({rows, K}, scales.options().dtype(at::kFloat));  // [rows, K]
    const auto* qp = static_cast<const uint8_t*>(q.const_data_ptr());
    const float* sp = s.const_data_ptr<float>();
    float* wp = w.mutable_data_ptr<float>();
    at::parallel_for(0, rows, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, K)), [&](int64_t r0, int64_t r1) {
      dequantize_rows_f32(qp, bits, sp, r0, r1, K, G, wp);
    });
    return w;
  }
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
