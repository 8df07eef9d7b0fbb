// Autograd of gemma4::attention in C++: the forward saves out and lse (never the probabilities) and the
// backward is gemma4::attention_backward (reference: python/gemma4/ops/reference.py attention under torch
// autograd). lse is not differentiable. csrc/common/autograd_util.h says why C++.
#include <torch/library.h>

#include "../common/autograd_util.h"

namespace gemma4 {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Pair = std::tuple<at::Tensor, at::Tensor>;
using Triple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

Pair call_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const std::optional<at::Tensor>& key_mask, double scale, int64_t window) {
  static const auto op = typed_op<Pair(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                       const std::optional<at::Tensor>&, double, int64_t)>("gemma4::attention");
  return op.call(q, k, v, key_mask, scale, window);
}

Triple call_attention_backward(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                               const std::optional<at::Tensor>& key_mask, double scale, int64_t window) {
  static const auto op =
      typed_op<Triple(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                      const at::Tensor&, const std::optional<at::Tensor>&, double, int64_t)>(
          "gemma4::attention_backward");
  return op.call(grad_out, q, k, v, out, lse, key_mask, scale, window);
}

struct Attention : public torch::autograd::Function<Attention> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const std::optional<at::Tensor>& key_mask, double scale, int64_t window) {
    at::Tensor out, lse;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      std::tie(out, lse) = call_attention(q, k, v, key_mask, scale, window);
    }
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["window"] = window;
    ctx->save_for_backward({q, k, v, out, lse, key_mask.value_or(at::Tensor())});
    ctx->mark_non_differentiable({lse});
    ctx->set_materialize_grads(false);  // no gradient for out (only lse used) -> no backward work
    return {out, lse};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list none(6);
    if (!grads[0].defined()) return none;
    const auto s = ctx->get_saved_variables();
    auto [grad_q, grad_k, grad_v] =
        call_attention_backward(grads[0], s[0], s[1], s[2], s[3], s[4], as_optional(s[5]),
                                ctx->saved_data["scale"].toDouble(), ctx->saved_data["window"].toInt());
    return {ctx->needs_input_grad(0) ? grad_q : at::Tensor(), ctx->needs_input_grad(1) ? grad_k : at::Tensor(),
            ctx->needs_input_grad(2) ? grad_v : at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

Pair attention_autograd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const std::optional<at::Tensor>& key_mask, double scale, int64_t window) {
  if (!records_graph(q, k, v)) {
    at::AutoDispatchBelowADInplaceOrView below;
    return call_attention(q, k, v, key_mask, scale, window);
  }
  const auto outs = Attention::apply(q, k, v, key_mask, scale, window);
  return {outs[0], outs[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(gemma4, Autograd, m) { m.impl("attention", &attention_autograd); }

}  // namespace gemma4
