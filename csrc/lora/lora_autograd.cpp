// Autograd of gemma4::lora_down / lora_up / lora_weight_grad, in C++: each op's gradient is made of the
// three ops (the same formulas as reference.py's autograd), and only what a requested gradient reads is
// saved (x in its own dtype, never a float32 copy).
//
// Why C++: a LoRA Linear's forward and backward are six of these calls, a GPU training step of E2B about
// 1,200 of them. Registered from Python (torch.library.register_autograd), every call, the backward's
// included, ran through torch's Python autograd wrapper: a small bf16 LoRA Linear's forward + backward
// cost 208-229 us of host time (134-168 us here; PEFT's 120-154; dev/train/bench_lora_host_time.py),
// and on the H200 the step's kernels wait for the host. Here the calls stay in the dispatcher.
// Reference: python/gemma4/ops/reference.py (lora_down, lora_up, lora_weight_grad) under torch autograd.
#include <torch/library.h>

#include "../common/autograd_util.h"

namespace gemma4 {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The ops through the dispatcher (their Autograd kernels below, then the device kernels).
at::Tensor call_down(const at::Tensor& x, const at::Tensor& w, double scale) {
  static const auto op = typed_op<at::Tensor(const at::Tensor&, const at::Tensor&, double)>("gemma4::lora_down");
  return op.call(x, w, scale);
}
at::Tensor call_up(const at::Tensor& down, const at::Tensor& w, double scale, const std::optional<at::Tensor>& base,
                   at::ScalarType dtype) {
  static const auto op = typed_op<at::Tensor(const at::Tensor&, const at::Tensor&, double,
                                             const std::optional<at::Tensor>&, at::ScalarType)>("gemma4::lora_up");
  return op.call(down, w, scale, base, dtype);
}
at::Tensor call_weight_grad(const at::Tensor& x, const at::Tensor& d, double scale) {
  static const auto op =
      typed_op<at::Tensor(const at::Tensor&, const at::Tensor&, double)>("gemma4::lora_weight_grad");
  return op.call(x, d, scale);
}

// out [N, r] = scale * x [N, K] @ w [r, K]^T. grad_x = lora_up(grad, w^T, scale), grad_w = lora_weight_grad(x, grad).
struct LoraDown : public torch::autograd::Function<LoraDown> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, double scale) {
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    ctx->save_for_backward({keep_if(w.requires_grad(), x), keep_if(x.requires_grad(), w)});
    at::AutoDispatchBelowADInplaceOrView below;
    return call_down(x, w, scale);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const double scale = ctx->saved_data["scale"].toDouble();
    const auto x_dtype = static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt());
    const at::Tensor grad = grads[0].contiguous();  // [N, r] float32
    at::Tensor grad_x, grad_w;
    if (ctx->needs_input_grad(0)) grad_x = call_up(grad, saved[1].t(), scale, std::nullopt, x_dtype);  // [N, K]
    if (ctx->needs_input_grad(1)) grad_w = call_weight_grad(saved[0], grad, scale);                     // [r, K]
    return {grad_x, grad_w, at::Tensor()};
  }
};

// out [N, M] = base + scale * down [N, r] @ w [M, r]^T. grad_down = lora_down(grad, w^T, scale),
// grad_w = lora_weight_grad(grad, down, scale)^T, grad_base = grad.
struct LoraUp : public torch::autograd::Function<LoraUp> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& down, const at::Tensor& w, double scale,
                            const std::optional<at::Tensor>& base, at::ScalarType dtype) {
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["has_base"] = base.has_value() && base->defined();
    ctx->save_for_backward({keep_if(w.requires_grad(), down), keep_if(down.requires_grad(), w)});
    at::AutoDispatchBelowADInplaceOrView below;
    return call_up(down, w, scale, base, dtype);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const double scale = ctx->saved_data["scale"].toDouble();
    const at::Tensor grad = grads[0].contiguous();  // [N, M] in dtype
    at::Tensor grad_down, grad_w, grad_base;
    if (ctx->needs_input_grad(0)) grad_down = call_down(grad, saved[1].t(), scale);             // [N, r]
    if (ctx->needs_input_grad(1)) grad_w = call_weight_grad(grad, saved[0], scale).t();         // [M, r]
    // (needs_input_grad counts tensor inputs only: base is the third when given)
    if (ctx->saved_data["has_base"].toBool() && ctx->needs_input_grad(2)) grad_base = grad;
    return {grad_down, grad_w, at::Tensor(), grad_base, at::Tensor()};
  }
};

// out [r, K] = scale * d [N, r]^T @ x [N, K]. grad_x = lora_up(d, grad^T, scale), grad_d = lora_down(x, grad, scale).
struct LoraWeightGrad : public torch::autograd::Function<LoraWeightGrad> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& d, double scale) {
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    ctx->save_for_backward({keep_if(d.requires_grad(), x), keep_if(x.requires_grad(), d)});
    at::AutoDispatchBelowADInplaceOrView below;
    return call_weight_grad(x, d, scale);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const double scale = ctx->saved_data["scale"].toDouble();
    const auto x_dtype = static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt());
    const at::Tensor& grad = grads[0];  // [r, K] float32
    at::Tensor grad_x, grad_d;
    if (ctx->needs_input_grad(0)) grad_x = call_up(saved[1], grad.t(), scale, std::nullopt, x_dtype);  // [N, K]
    if (ctx->needs_input_grad(1)) grad_d = call_down(saved[0], grad, scale);                          // [N, r]
    return {grad_x, grad_d, at::Tensor()};
  }
};

at::Tensor lora_down_autograd(const at::Tensor& x, const at::Tensor& w, double scale) {
  if (!records_graph(x, w)) {
    at::AutoDispatchBelowADInplaceOrView below;
    return call_down(x, w, scale);
  }
  return LoraDown::apply(x, w, scale);
}
at::Tensor lora_up_autograd(const at::Tensor& down, const at::Tensor& w, double scale,
                            const std::optional<at::Tensor>& base, at::ScalarType dtype) {
  if (!records_graph(down, w, base)) {
    at::AutoDispatchBelowADInplaceOrView below;
    return call_up(down, w, scale, base, dtype);
  }
  return LoraUp::apply(down, w, scale, base, dtype);
}
at::Tensor lora_weight_grad_autograd(const at::Tensor& x, const at::Tensor& d, double scale) {
  if (!records_graph(x, d)) {
    at::AutoDispatchBelowADInplaceOrView below;
    return call_weight_grad(x, d, scale);
  }
  return LoraWeightGrad::apply(x, d, scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(gemma4, Autograd, m) {
  m.impl("lora_down", &lora_down_autograd);
  m.impl("lora_up", &lora_up_autograd);
  m.impl("lora_weight_grad", &lora_weight_grad_autograd);
}

}  // namespace gemma4
