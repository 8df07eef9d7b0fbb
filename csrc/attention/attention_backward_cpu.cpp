// gemma4::attention_backward on CPU: (grad_q, grad_k, grad_v) of gemma4::attention from the saved out
// and lse (flash-attention 2 backward; grad_k/grad_v summed over the query heads of each KV group).
// The kernel is attention_kernels.h::backward; the reference is autograd through
// python/gemma4/ops/reference.py::attention.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "attention/attention_checks.h"

namespace gemma4::attn {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const std::optional<at::Tensor>& key_mask, double scale, int64_t window) {
  constexpr const char* op = "gemma4::attention_backward";
  check_inputs(op, q, k, v, key_mask);
  const int64_t B = q.size(0), T = q.size(1), nH = q.size(2), hd = q.size(3);
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{grad_out, "grad_out"}, {out, "out"}}) {
    check_same_device(t, q, op, name);
    check_dtype(t, q.scalar_type(), op, name);
    check_dim(t, 4, op, name);
    for (int64_t d = 0; d < 4; ++d) check_size(t, d, q.size(d), op, name);
  }
  check_same_device(lse, q, op, "lse");
  check_dtype(lse, lse_dtype(q.scalar_type()), op, "lse");
  check_dim(lse, 3, op, "lse");
  check_size(lse, 0, B, op, "lse");
  check_size(lse, 1, nH, op, "lse");
  check_size(lse, 2, T, op, "lse");
  // grad_out often arrives with odd strides (e.g. expanded from a sum): the kernel reads rows with unit
  // stride, so copy only when the last dimension is not unit-stride.
  const at::Tensor dout = grad_out.stride(3) == 1 || hd == 1 ? grad_out : grad_out.contiguous();
  const at::Tensor o = out.stride(3) == 1 || hd == 1 ? out : out.contiguous();
  const at::Tensor l = lse.contiguous();
  at::Tensor grad_q = at::empty({B, T, nH, hd}, q.options());
  at::Tensor grad_k = at::empty(k.sizes(), k.options());
  at::Tensor grad_v = at::empty(v.sizes(), v.options());
  if (grad_q.numel() == 0 || grad_k.numel() == 0) {
    grad_q.zero_();
    grad_k.zero_();
    grad_v.zero_();
    return {grad_q, grad_k, grad_v};
  }
  GEMMA4_DISPATCH_FLOATS(q.scalar_type(), "gemma4::attention_backward", [&] {
    const Params<scalar_t> P = make_params<scalar_t>(q, k, v, key_mask, scale, window);
    BwdTensors<scalar_t> X;
    X.dout = dout.const_data_ptr<scalar_t>(); X.dsB = dout.stride(0); X.dsT = dout.stride(1); X.dsH = dout.stride(2);
    X.out = o.const_data_ptr<scalar_t>(); X.osB = o.stride(0); X.osT = o.stride(1); X.osH = o.stride(2);
    X.lse = l.const_data_ptr<acc_type<scalar_t>>();
    X.dq = grad_q.mutable_data_ptr<scalar_t>();
    X.dk = grad_k.mutable_data_ptr<scalar_t>();
    X.dv = grad_v.mutable_data_ptr<scalar_t>();
    backward<scalar_t>(P, X);
  });
  return {grad_q, grad_k, grad_v};
}

}  // namespace
}  // namespace gemma4::attn

TORCH_LIBRARY_IMPL(gemma4, CPU, m) { m.impl("attention_backward", &gemma4::attn::attention_backward_cpu); }
