// The CUDA MoE experts' backward as a function, for the ops that run it on weights they made themselves:
// gemma4::moe_experts_backward (moe_experts_cuda.cu) and gemma4::moe_experts_quant_backward, which runs it on
// its banks dequantized into x's dtype (moe_experts_quant_cuda.cu) and needs no weight gradients.
#pragma once
#include <tuple>

#include "moe/moe_checks.h"

namespace gemma4::moe_cuda {

// (grad_x, grad_weights, grad_gate_up, grad_down) of a checked problem on the current CUDA device; with
// weight_grads false the last two are undefined tensors and their GEMMs are not run.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> experts_backward(const moe::ExpertsProblem& s,
                                                                            bool weight_grads);

}  // namespace gemma4::moe_cuda
