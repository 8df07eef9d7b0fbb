// Autograd of gemma4::gated_activation in C++: the backward is gemma4::gated_activation_backward, which
// recomputes the activation from the saved gate (reference: python/gemma4/ops/reference.py
// gated_activation under torch autograd). csrc/common/autograd_util.h says why C++.
#include <torch/library.h>

#include "../common/autograd_util.h"

namespace gemma4 {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_gated_activation(const at::Tensor& gate, const at::Tensor& up, c10::string_view activation) {
  static const auto op = typed_op<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view)>(
      "gemma4::gated_activation");
  return op.call(gate, up, activation);
}

std::tuple<at::Tensor, at::Tensor> call_gated_activation_backward(const at::Tensor& grad_out, const at::Tensor& gate,
                                                                  const at::Tensor& up, c10::string_view activation) {
  static const auto op = typed_op<std::tuple<at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view)>("gemma4::gated_activation_backward");
  return op.call(grad_out, gate, up, activation);
}

struct GatedActivation : public torch::autograd::Function<GatedActivation> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& gate, const at::Tensor& up,
                            c10::string_view activation) {
    ctx->saved_data["activation"] = std::string(activation);
    ctx->save_for_backward({gate, up});  // each gradient reads both
    at::AutoDispatchBelowADInplaceOrView below;
    return call_gated_activation(gate, up, activation);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const std::string activation = ctx->saved_data["activation"].toStringRef();
    auto [grad_gate, grad_up] = call_gated_activation_backward(grads[0], saved[0], saved[1], activation);
    return {ctx->needs_input_grad(0) ? grad_gate : at::Tensor(), ctx->needs_input_grad(1) ? grad_up : at::Tensor(),
            at::Tensor()};
  }
};

at::Tensor gated_activation_autograd(const at::Tensor& gate, const at::Tensor& up, c10::string_view activation) {
  if (!records_graph(gate, up)) {
    at::AutoDispatchBelowADInplaceOrView below;
    return call_gated_activation(gate, up, activation);
  }
  return GatedActivation::apply(gate, up, activation);
}

}  // namespace

TORCH_LIBRARY_IMPL(gemma4, Autograd, m) { m.impl("gated_activation", &gated_activation_autograd); }

}  // namespace gemma4
