// The CPU qgemm as a C++ function, for other CPU ops that run it on slices of a packed weight
// (gemma4::moe_experts_quant: each expert's gate_up / down). Same checks, routes and numbers as the
// gemma4::qgemm op, without a trip through the dispatcher.
#pragma once
#include <optional>

#include <ATen/core/Tensor.h>

namespace gemma4::quant {

// y = x [..., K] @ dequant(qweight [N, K/2 | K], scales [N, G])^T (+ bias [N]) in x's dtype (qgemm_cpu.cpp).
at::Tensor qgemm_cpu(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                     const std::optional<at::Tensor>& bias);

}  // namespace gemma4::quant
