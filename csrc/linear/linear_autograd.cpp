// Autograd of gemma4::linear and gemma4::linear_grad_input in C++, the formulas python/gemma4/ops/linear.py
// registered before (reference: python/gemma4/ops/reference.py linear under torch autograd):
//   linear:            y = x @ w^T + b    grad_x = linear_grad_input(g, w), grad_w = (g^T @ x) in w's dtype,
//                                         grad_b = sum of g over rows
//   linear_grad_input: gx = g @ w         grad_g = linear(ggx, w), grad_w = (g^T @ ggx) in w's dtype
// x is saved only for the weight's gradient, as before.
//
// Why C++ (csrc/common/autograd_util.h): the Python wrapper of torch.library.register_autograd runs on every
// call that reaches the Autograd key, torch.no_grad included (generate's decode, ~4 us of host time per call
// of a ~2 us op, ~300 calls per token on E2B); only torch.inference_mode skipped it. Here a call that records
// no graph goes straight to the kernel.
#include <torch/library.h>

#include "../common/autograd_util.h"

namespace gemma4 {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  static const auto op = typed_op<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&)>(
      "gemma4::linear");
  return op.call(x, weight, bias);
}

at::Tensor call_linear_grad_input(const at::Tensor& grad_out, const at::Tensor& weight) {
  static const auto op = typed_op<at::Tensor(const at::Tensor&, const at::Tensor&)>("gemma4::linear_grad_input");
  return op.call(grad_out, weight);
}

// a [..., A] and b [..., B] as rows: a^T @ b [A, B], rounded to dtype (a weight's gradient).
at::Tensor rows_outer(const at::Tensor& a, const at::Tensor& b, at::ScalarType dtype) {
  return at::mm(a.reshape({-1, a.size(-1)}).t(), b.reshape({-1, b.size(-1)})).to(dtype);
}

struct Linear : public torch::autograd::Function<Linear> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias) {
    ctx->saved_data["has_bias"] = bias.has_value();
    ctx->save_for_backward({keep_if(weight.requires_grad(), x), weight});
    at::AutoDispatchBelowADInplaceOrView below;
    return call_linear(x, weight, bias);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& weight = saved[1];
    const at::Tensor& grad = grads[0];  // [..., N]
    at::Tensor grad_x, grad_w, grad_b;
    if (ctx->needs_input_grad(0)) grad_x = call_linear_grad_input(grad.contiguous(), weight);  // [..., K]
    if (ctx->needs_input_grad(1)) grad_w = rows_outer(grad, x, weight.scalar_type());          // [N, K]
    // (needs_input_grad counts tensor inputs only: the bias is the third when given)
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2))
      grad_b = grad.reshape({-1, grad.size(-1)}).sum(0);  // [N]
    return {grad_x, grad_w, grad_b};
  }
};

struct LinearGradInput : public torch::autograd::Function<LinearGradInput> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_out, const at::Tensor& weight) {
    ctx->save_for_backward({grad_out, weight});
    at::AutoDispatchBelowADInplaceOrView below;
    return call_linear_grad_input(grad_out, weight);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& grad_out = saved[0];
    const at::Tensor& weight = saved[1];
    const at::Tensor& grad = grads[0];  // [..., K]
    at::Tensor grad_grad_out, grad_w;
    if (ctx->needs_input_grad(0)) grad_grad_out = call_linear(grad.contiguous(), weight, std::nullopt);  // [..., N]
    if (ctx->needs_input_grad(1)) grad_w = rows_outer(grad_out, grad, weight.scalar_type());           // [N, K]
    return {grad_grad_out, grad_w};
  }
};

at::Tensor linear_autograd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  if (!records_graph(x, weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView below;
    return call_linear(x, weight, bias);
  }
  return Linear::apply(x, weight, bias);
}

at::Tensor linear_grad_input_autograd(const at::Tensor& grad_out, const at::Tensor& weight) {
  if (!records_graph(grad_out, weight)) {
    at::AutoDispatchBelowADInplaceOrView below;
    return call_linear_grad_input(grad_out, weight);
  }
  return LinearGradInput::apply(grad_out, weight);
}

}  // namespace

TORCH_LIBRARY_IMPL(gemma4, Autograd, m) {
  m.impl("linear", &linear_autograd);
  m.impl("linear_grad_input", &linear_grad_input_autograd);
}

}  // namespace gemma4
