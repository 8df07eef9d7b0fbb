// Autograd of gemma4::rope in C++: the backward is gemma4::rope_backward, the rotation by the opposite
// angle (reference: python/gemma4/ops/reference.py rope under torch autograd). csrc/common/autograd_util.h
// says why C++.
#include <torch/library.h>

#include "../common/autograd_util.h"

namespace gemma4 {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using RopeSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&);

at::Tensor call_rope(const at::Tensor& x, const at::Tensor& positions, const at::Tensor& inv_freq) {
  static const auto op = typed_op<RopeSig>("gemma4::rope");
  return op.call(x, positions, inv_freq);
}

at::Tensor call_rope_backward(const at::Tensor& grad_out, const at::Tensor& positions, const at::Tensor& inv_freq) {
  static const auto op = typed_op<RopeSig>("gemma4::rope_backward");
  return op.call(grad_out, positions, inv_freq);
}

// Only x is differentiable: positions are integers and inv_freq a fixed buffer.
struct Rope : public torch::autograd::Function<Rope> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& positions,
                            const at::Tensor& inv_freq) {
    ctx->save_for_backward({positions, inv_freq});
    at::AutoDispatchBelowADInplaceOrView below;
    return call_rope(x, positions, inv_freq);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    at::Tensor grad_x = ctx->needs_input_grad(0) ? call_rope_backward(grads[0], saved[0], saved[1]) : at::Tensor();
    return {grad_x, at::Tensor(), at::Tensor()};
  }
};

at::Tensor rope_autograd(const at::Tensor& x, const at::Tensor& positions, const at::Tensor& inv_freq) {
  if (!records_graph(x, inv_freq)) {
    at::AutoDispatchBelowADInplaceOrView below;
    return call_rope(x, positions, inv_freq);
  }
  return Rope::apply(x, positions, inv_freq);
}

}  // namespace

TORCH_LIBRARY_IMPL(gemma4, Autograd, m) { m.impl("rope", &rope_autograd); }

}  // namespace gemma4
