// gemma4::moe_experts_quant and its backward on CUDA: no kernel of their own. A host loop over the experts
// composed of the CUDA ops (moe_experts_quant_composed.cpp): the pairs are grouped by expert on the device
// (bincount + stable argsort), the per-expert counts come to the host in one copy (the op's one
// synchronisation, so it cannot be captured in a CUDA graph), then each chosen expert runs index_select,
// gemma4::qgemm on its gate_up slice, gemma4::gated_activation, gemma4::qgemm on its down slice and
// index_add_ into a float32 accumulator: about six launches per chosen expert. Same maths as the CPU kernel
// (moe_experts_quant_cpu.cpp); the results differ from it by the CUDA qgemm's rounding only.
#include <torch/library.h>

#include <c10/cuda/CUDAGuard.h>

#include "moe/moe_experts_quant.h"

namespace gemma4 {
namespace {

constexpr const char* kOp = "gemma4::moe_experts_quant";

at::Tensor moe_experts_quant_cuda(const at::Tensor& x, const at::Tensor& weights, const at::Tensor& indices,
                                  const at::Tensor& gate_up_qweight, const at::Tensor& gate_up_scales,
                                  const at::Tensor& down_qweight, const at::Tensor& down_scales,
                                  c10::string_view activation) {
  check_device(x, kOp, "x", c10::kCUDA);
  const moe::QuantExpertsProblem p = moe::check_experts_quant(kOp, x, weights, indices, gate_up_qweight,
                                                              gate_up_scales, down_qweight, down_scales, activation);
  const c10::cuda::CUDAGuard guard(x.device());
  return moe::experts_quant_forward_composed(kOp, p);
}

std::tuple<at::Tensor, at::Tensor> moe_experts_quant_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weights, const at::Tensor& indices,
    const at::Tensor& gate_up_qweight, const at::Tensor& gate_up_scales, const at::Tensor& down_qweight,
    const at::Tensor& down_scales, c10::string_view activation) {
  return moe::moe_experts_quant_backward_on(c10::kCUDA, grad_out, x, weights, indices, gate_up_qweight,
                                            gate_up_scales, down_qweight, down_scales, activation);
}

}  // namespace

TORCH_LIBRARY_IMPL(gemma4, CUDA, m) {
  m.impl("moe_experts_quant", &moe_experts_quant_cuda);
  m.impl("moe_experts_quant_backward", &moe_experts_quant_backward_cuda);
}

}  // namespace gemma4
