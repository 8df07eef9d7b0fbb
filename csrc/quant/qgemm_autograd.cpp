// Autograd of gemma4::qgemm in C++ (reference: python/gemma4/ops/reference.py qgemm under torch autograd).
//   y = x @ dequant(W)^T + b:  grad_x = grad_y @ dequant(W), the weight frozen; grad_b = sum of grad_y over rows.
// grad_x accumulates in float32 over slabs of kGradRows weight rows dequantized at a time (qdequant_tensor.h), so
// the full-precision weight never exists whole, and is rounded once to x's dtype; grad_b sums
// in float32 and is rounded to the bias's dtype.
//
// Why C++: torch.library.register_autograd's Python wrapper runs on every call that reaches the Autograd key,
// torch.no_grad included (generate's decode: ~4 us of host time on each of ~290 calls a token on E2B). Here a
// call that records no graph goes straight to the kernel (linear_autograd.cpp does the same for gemma4::linear).
#include <algorithm>

#include <ATen/ATen.h>
#include <torch/library.h>

#include "../common/autograd_util.h"
#include "quant/qdequant_tensor.h"
#include "quant/qgemm_tiled.h"

namespace gemma4 {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t kGradRows = 256;

at::Tensor call_qgemm(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                      const std::optional<at::Tensor>& bias) {
  static const auto op = typed_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                             const std::optional<at::Tensor>&)>("gemma4::qgemm");
  return op.call(x, qweight, scales, bias);
}

at::Tensor grad_input(const at::Tensor& grad_out, const at::Tensor& qweight_in, const at::Tensor& scales_in) {
  // The 16-row tiled layout (CPU inference's) is turned back into rows for the backward.
  const auto [qweight, scales] = qweight_in.dim() == 3 ? quant::untile16(qweight_in, scales_in)
                                                       : std::pair(qweight_in, scales_in);
  const at::Tensor g = grad_out.reshape({-1, grad_out.size(-1)}).to(at::kFloat);  // [M, N]
  const int64_t N = qweight.size(0), K = qweight.size(1) * (qweight.scalar_type() == at::kByte ? 2 : 1);
  at::Tensor grad_x = at::zeros({g.size(0), K}, g.options());                    // [M, K]
  for (int64_t n0 = 0; n0 < N; n0 += kGradRows) {
    const int64_t rows = std::min(kGradRows, N - n0);
    const at::Tensor w = quant::dequantize_f32(qweight.narrow(0, n0, rows), scales.narrow(0, n0, rows));  // [rows, K]
    grad_x.addmm_(g.narrow(1, n0, rows), w);
  }
  auto shape = grad_out.sizes().vec();
  shape.back() = K;
  return grad_x.view(shape);
}

struct Qgemm : public torch::autograd::Function<Qgemm> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& qweight,
                            const at::Tensor& scales, const std::optional<at::Tensor>& bias) {
    ctx->saved_data["has_bias"] = bias.has_value();
    ctx->saved_data["x_dtype"] = x.scalar_type();
    ctx->save_for_backward({qweight, scales});
    at::AutoDispatchBelowADInplaceOrView below;
    return call_qgemm(x, qweight, scales, bias);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& grad = grads[0];  // [..., N]
    at::Tensor grad_x, grad_b;
    if (ctx->needs_input_grad(0))
      grad_x = grad_input(grad, saved[0], saved[1]).to(ctx->saved_data["x_dtype"].toScalarType());  // [..., K]
    // (needs_input_grad counts tensor inputs only: the bias is the fourth when given; its dtype is x's)
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(3))
      grad_b = grad.reshape({-1, grad.size(-1)}).sum(0, false, at::kFloat).to(grad.scalar_type());  // [N]
    return {grad_x, at::Tensor(), at::Tensor(), grad_b};
  }
};

at::Tensor qgemm_autograd(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                          const std::optional<at::Tensor>& bias) {
  if (!records_graph(x, qweight, scales, bias)) {
    at::AutoDispatchBelowADInplaceOrView below;
    return call_qgemm(x, qweight, scales, bias);
  }
  return Qgemm::apply(x, qweight, scales, bias);
}

}  // namespace

TORCH_LIBRARY_IMPL(gemma4, Autograd, m) { m.impl("qgemm", &qgemm_autograd); }

}  // namespace gemma4
