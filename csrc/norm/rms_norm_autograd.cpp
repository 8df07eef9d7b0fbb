// Autograd of gemma4::rms_norm in C++: the backward is gemma4::rms_norm_backward (reference:
// python/gemma4/ops/reference.py rms_norm under torch autograd). csrc/common/autograd_util.h says why C++.
#include <torch/library.h>

#include "../common/autograd_util.h"

namespace gemma4 {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_rms_norm(const at::Tensor& x, const std::optional<at::Tensor>& weight, double eps) {
  static const auto op =
      typed_op<at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, double)>("gemma4::rms_norm");
  return op.call(x, weight, eps);
}

std::tuple<at::Tensor, at::Tensor> call_rms_norm_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                                          const std::optional<at::Tensor>& weight, double eps) {
  static const auto op = typed_op<std::tuple<at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, double)>("gemma4::rms_norm_backward");
  return op.call(grad_out, x, weight, eps);
}

struct RmsNorm : public torch::autograd::Function<RmsNorm> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const std::optional<at::Tensor>& weight,
                            double eps) {
    ctx->saved_data["eps"] = eps;
    ctx->save_for_backward({x, weight.value_or(at::Tensor())});  // both gradients read x and the weight
    at::AutoDispatchBelowADInplaceOrView below;
    return call_rms_norm(x, weight, eps);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto weight = as_optional(saved[1]);
    auto [grad_x, grad_weight] = call_rms_norm_backward(grads[0], saved[0], weight, ctx->saved_data["eps"].toDouble());
    // (needs_input_grad counts tensor inputs only: the weight is the second when given)
    const bool weight_grad = weight.has_value() && ctx->needs_input_grad(1);
    return {ctx->needs_input_grad(0) ? grad_x : at::Tensor(), weight_grad ? grad_weight : at::Tensor(), at::Tensor()};
  }
};

at::Tensor rms_norm_autograd(const at::Tensor& x, const std::optional<at::Tensor>& weight, double eps) {
  if (!records_graph(x, weight)) {
    at::AutoDispatchBelowADInplaceOrView below;
    return call_rms_norm(x, weight, eps);
  }
  return RmsNorm::apply(x, weight, eps);
}

}  // namespace

TORCH_LIBRARY_IMPL(gemma4, Autograd, m) { m.impl("rms_norm", &rms_norm_autograd); }

}  // namespace gemma4
