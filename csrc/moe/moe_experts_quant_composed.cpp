// gemma4::moe_experts_quant composed of other ops, for any device that has gemma4::qgemm and
// gemma4::gated_activation(_backward) kernels: the CUDA forward's host loop (moe_experts_quant_cuda.cu), the CPU
// backward and the CUDA fp32 one. A host loop over the experts: the pairs are grouped by expert on the device,
// the counts come to the host in one copy, then each chosen expert runs its ops on its tokens (index_select,
// qgemm, gated_activation, qgemm, index_add_), called through the dispatcher. Declared in moe_experts_quant.h.
//
// Backward, per expert e and its pairs (token n, slot k, weight w): the forward recomputed in float32 from the
// exactly dequantized weights (G_e = dequant(gate_up_e) [2 Im, H], D_e = dequant(down_e) [H, Im]):
//   [g | u] = x[n] @ G_e^T,  h = act(g) * u                       [m, 2 Im], [m, Im]
//   gh = grad_out[n] @ D_e                                          [m, Im]
//   grad_weights[n, k] = <gh, h>        (= <grad_out[n], h @ D_e^T>, the expert's output before rounding)
//   (dg, du) = gated_activation_backward(w gh, g, u)                [m, Im] each
//   grad_x[n] += [dg | du] @ G_e                                    [m, H]
// each gradient rounded once. Why float32 throughout (float64 for float32 x over few pairs): a routing weight's
// gradient is one dot product over H whose terms largely cancel, so at decode (a token's handful of weights)
// rounding g, u, h or y to bf16 on the way -- or the weights, as plain PyTorch's dequant(W).to(bf16) does -- gave an
// error of plain bf16 PyTorch's own size, and then one decode problem in 10-20 came out over 2x plain's
// (dev/quant/grad_weights_rounding.py). With float32 x the same holds one precision up: float32 sums against plain
// float32 PyTorch's came out over 2x its error at one token (H200, GEMMA4_TEST_SEED=1538611098: 6.0e-3 against
// 1.1e-3 + one ulp 2.4e-3), so up to kPreciseGradWeightsMaxPairs (token, slot) pairs (moe_experts_quant.h) float32 x
// computes in float64. Not above: there the largest of many errors no longer swings so, and float64 costs ~3x
// (26B-A4B bank, one token, this project's 2-core CPU: 38-57 ms against 12-17 for bf16 x, best of 5 over four
// processes). The frozen weights are dequantized one expert matrix at a time. (With TF32 allowed, CUDA runs the
// float32 matmuls in it, as every float32 matmul of the user's model.)
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include "moe/moe_experts_quant.h"
#include "quant/qdequant_tensor.h"

namespace gemma4::moe {
namespace {

const char* activation_name(Activation act) { return act == Activation::Silu ? "silu" : "gelu_tanh"; }

at::Tensor call_qgemm(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales) {
  using Qgemm = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&);
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("gemma4::qgemm", "").typed<Qgemm>();
  return op.call(x, qweight, scales, std::nullopt);
}

at::Tensor call_gated(const at::Tensor& gate, const at::Tensor& up, Activation act) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("gemma4::gated_activation", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view)>();
  return op.call(gate, up, activation_name(act));
}

std::tuple<at::Tensor, at::Tensor> call_gated_backward(const at::Tensor& grad_out, const at::Tensor& gate,
                                                       const at::Tensor& up, Activation act) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("gemma4::gated_activation_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                    c10::string_view)>();
  return op.call(grad_out, gate, up, activation_name(act));
}

using quant::dequantize_f32;  // quant/qdequant_tensor.h

// One expert's output on its gathered rows, y [m, H] in x's dtype (gate/up, h and y each rounded to it, as qgemm
// and gated_activation round their outputs).
at::Tensor expert_output(const QuantExpertsProblem& p, int64_t e, const at::Tensor& xe) {
  const at::Tensor gu = call_qgemm(xe, p.gate_up_qweight.select(0, e), p.gate_up_scales.select(0, e));  // [m, 2Im]
  const at::Tensor h = call_gated(gu.narrow(1, 0, p.Im), gu.narrow(1, p.Im, p.Im), p.act);            // [m, Im]
  return call_qgemm(h, p.down_qweight.select(0, e), p.down_scales.select(0, e));
}

}  // namespace

ExpertRoutes route_by_expert(const char* op, const at::Tensor& indices, int64_t E) {
  const at::Tensor flat = indices.reshape({-1});                         // [P] pair p = n*K + k
  const at::Tensor valid = flat.ge(0).logical_and_(flat.lt(E));
  const at::Tensor bins = at::where(valid, flat, at::Scalar(E));         // out-of-range ids count in bin E
  const at::Tensor counts = at::bincount(bins, {}, E + 1).to(at::kCPU);  // [E + 1]: the one host copy
  const int64_t* c = counts.const_data_ptr<int64_t>();
  if (c[E] != 0) {  // an error: find the first bad index for the message (another sync is fine here)
    const int64_t p = valid.logical_not().nonzero().select(0, 0).item<int64_t>();
    const int64_t K = indices.size(1);
    TORCH_CHECK(false, op, ": indices must be in [0, ", E, ") (the number of experts), got ", flat[p].item<int64_t>(),
                " at [", p / K, ", ", p % K, "]");
  }
  ExpertRoutes r;
  r.counts.assign(c, c + E);
  r.order = at::argsort(flat, /*stable=*/true, /*dim=*/0, /*descending=*/false);  // [P], grouped by expert
  return r;
}

namespace {

// Calls f(e, pairs, tok, w) for each chosen expert e, in expert order: pairs = the pair ids p = n*K + k that
// chose it ([m] int64), tok = their tokens ([m]), w = their routing weights in float32 ([m]).
template <typename F>
void for_each_expert(const char* op, const QuantExpertsProblem& p, F&& f) {
  const ExpertRoutes r = route_by_expert(op, p.indices, p.E);
  const at::Tensor tokens = at::div(r.order, p.K, "floor");                                 // [P] token of each
  const at::Tensor w = p.weights.reshape({-1}).index_select(0, r.order).to(at::kFloat);      // [P]
  int64_t start = 0;
  for (int64_t e = 0; e < p.E; ++e) {
    const int64_t m = r.counts[e];
    if (m == 0) continue;
    f(e, r.order.narrow(0, start, m), tokens.narrow(0, start, m), w.narrow(0, start, m));
    start += m;
  }
}

}  // namespace

at::Tensor experts_quant_forward_composed(const char* op, const QuantExpertsProblem& p) {
  at::Tensor out = at::zeros({p.N, p.H}, p.x.options().dtype(at::kFloat));  // [N, H] float32
  if (p.N == 0) return out.to(p.dtype);
  for_each_expert(op, p, [&](int64_t e, const at::Tensor&, const at::Tensor& tok, const at::Tensor& w) {
    const at::Tensor y = expert_output(p, e, p.x.index_select(0, tok));  // [m, H]
    out.index_add_(0, tok, y.to(at::kFloat).mul_(w.unsqueeze(1)));
  });
  return out.to(p.dtype);
}

std::tuple<at::Tensor, at::Tensor> experts_quant_backward_composed(const char* op, const QuantExpertsProblem& p) {
  // float32, or float64 for float32 x over few pairs (see above).
  const at::ScalarType acc =
      p.dtype == at::kFloat && p.N * p.K <= kPreciseGradWeightsMaxPairs ? at::kDouble : at::kFloat;
  const auto opts = p.x.options().dtype(acc);
  at::Tensor grad_x = at::zeros({p.N, p.H}, opts);      // [N, H]
  at::Tensor grad_w = at::zeros({p.N * p.K}, opts);     // [P]
  if (p.N != 0) {
    for_each_expert(op, p, [&](int64_t e, const at::Tensor& pairs, const at::Tensor& tok, const at::Tensor& w) {
      const at::Tensor gate_up =
          dequantize_f32(p.gate_up_qweight.select(0, e), p.gate_up_scales.select(0, e)).to(acc);  // [2Im, H]
      const at::Tensor down =
          dequantize_f32(p.down_qweight.select(0, e), p.down_scales.select(0, e)).to(acc);  // [H, Im]
      const at::Tensor gu = p.x.index_select(0, tok).to(acc).mm(gate_up.t());                   // [m, 2Im]
      const at::Tensor g = gu.narrow(1, 0, p.Im).contiguous(), u = gu.narrow(1, p.Im, p.Im).contiguous();  // [m, Im]
      const at::Tensor gh = p.grad_out.index_select(0, tok).to(acc).mm(down);                   // [m, Im]
      grad_w.index_copy_(0, pairs, gh.mul(call_gated(g, u, p.act)).sum(1));                     // [m]
      const auto [dg, du] = call_gated_backward(gh.mul_(w.to(acc).unsqueeze(1)), g, u, p.act);
      grad_x.index_add_(0, tok, at::cat({dg, du}, 1).mm(gate_up));                              // [m, H]
    });
  }
  return {grad_x.to(p.dtype), grad_w.view({p.N, p.K}).to(p.weights.scalar_type())};
}

}  // namespace gemma4::moe
