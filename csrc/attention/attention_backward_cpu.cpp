// gemma4::attention_backward on CPU: (grad_q, grad_k, grad_v) of gemma4::attention from the saved out
// and lse (flash-attention 2 backward; grad_k/grad_v summed over the query heads of each KV group).
// The kernel is attention_kernels.h::backward; the reference is autograd through
// python/gemma4/ops/reference.py::attention.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "attention/attention_checks.h"
#include "attention/attention_kernels.h"

namespace gemma4::attn {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const std::optional<at::Tensor>& key_mask, double scale, int64_t window) {
  constexpr const char* op = "gemma4::attention_backward";
  check_device(q, op, "q", c10::kCPU);
  const AttentionProblem p = check_attention_backward(op, grad_out, q, k, v, out, lse, key_mask, scale, window);
  at::Tensor grad_q = at::empty({p.B, p.T, p.nH, p.hd}, q.options());
  at::Tensor grad_k = at::empty(k.sizes(), k.options());
  at::Tensor grad_v = at::empty(v.sizes(), v.options());
  if (grad_q.numel() == 0 || grad_k.numel() == 0) {
    grad_q.zero_();
    grad_k.zero_();
    grad_v.zero_();
    return {grad_q, grad_k, grad_v};
  }
  GEMMA4_DISPATCH_FLOATS(p.dtype, "gemma4::attention_backward", [&] {
    backward<scalar_t>(make_params<scalar_t>(p), make_bwd_tensors<scalar_t>(p, grad_q, grad_k, grad_v));
  });
  return {grad_q, grad_k, grad_v};
}

}  // namespace
}  // namespace gemma4::attn

TORCH_LIBRARY_IMPL(gemma4, CPU, m) { m.impl("attention_backward", &gemma4::attn::attention_backward_cpu); }
