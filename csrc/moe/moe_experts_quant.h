// The seam of gemma4::moe_experts_quant (the MoE experts on int4/int8 packed weights) and its backward:
// argument checks, the problem they describe, and the backend-neutral implementation composed of other
// ops (moe_experts_quant_composed.cpp). Device-agnostic: each backend adds its device check and its
// TORCH_LIBRARY_IMPL (moe_experts_quant_cpu.cpp, moe_experts_quant_cuda.cu).
//
// Weights: the packed format of gemma4::qgemm (csrc/quant/qgemm_problem.h), one matrix per expert:
//   gate_up_qweight [E, 2*Im, H/2 | H] (uint8 = int4, int8 = int8), gate_up_scales [E, 2*Im, H/group]
//   down_qweight    [E, H, Im/2 | Im],                                down_scales    [E, H, Im/group']
// (rows 0..Im-1 of gate_up are G_e, rows Im..2Im-1 U_e). Each bank has its own bits and group size; H and
// Im are multiples of 32 and each group a multiple of 32 dividing its K (26B-A4B: Im = 704 = 22 * 32).
#pragma once
#include <string>
#include <tuple>
#include <vector>

#include "common/checks.h"

namespace gemma4::moe {

// One moe_experts_quant (or its backward) call, checked; weights and indices (and grad_out) contiguous.
struct QuantExpertsProblem {
  at::Tensor x;                                // [N, H] float32/bfloat16/float16, contiguous
  at::Tensor weights;                          // [N, K] float32 or x's dtype
  at::Tensor indices;                          // int64 [N, K]
  at::Tensor gate_up_qweight, gate_up_scales;  // [E, 2*Im, ...]
  at::Tensor down_qweight, down_scales;        // [E, H, ...]
  at::Tensor grad_out;                         // backward only: [N, H], x's dtype
  int64_t N = 0, H = 0, K = 0, E = 0, Im = 0;
  Activation act = Activation::GeluTanh;
  at::ScalarType dtype = at::kFloat;  // x's dtype
};

// One bank: qweight uint8/int8 [E, rows, k/2 | k] and scales float [E, rows, G], G dividing k into groups
// of a multiple of 32; both contiguous and on x's device.
inline void check_quant_bank(const char* op, const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                             int64_t E, int64_t rows, int64_t k, const char* qname, const char* sname) {
  check_same_device(qweight, x, op, qname);
  check_same_device(scales, x, op, sname);
  const auto q = qweight.scalar_type();
  TORCH_CHECK(q == at::kByte || q == at::kChar, op, ": ", qname, " must be uint8 (packed int4) or int8, got ", q);
  const auto s = scales.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kBFloat16 || s == at::kHalf, op, ": ", sname,
              " must be float32, bfloat16 or float16, got ", s);
  check_dim(qweight, 3, op, qname);
  check_dim(scales, 3, op, sname);
  check_size(qweight, 0, E, op, qname);
  check_size(qweight, 1, rows, op, qname);
  check_size(qweight, 2, q == at::kByte ? k / 2 : k, op, qname);
  check_size(scales, 0, E, op, sname);
  check_size(scales, 1, rows, op, sname);
  const int64_t G = scales.size(2);
  TORCH_CHECK(G > 0 && k % G == 0 && (k / G) % 32 == 0, op, ": ", sname, ".size(2) must divide K = ", k,
              " into groups of a multiple of 32 weights, got shape ", scales.sizes());
  check_contiguous(qweight, op, qname);
  check_contiguous(scales, op, sname);
}

inline QuantExpertsProblem check_experts_quant(const char* op, const at::Tensor& x, const at::Tensor& weights,
                                               const at::Tensor& indices, const at::Tensor& gate_up_qweight,
                                               const at::Tensor& gate_up_scales, const at::Tensor& down_qweight,
                                               const at::Tensor& down_scales, c10::string_view activation) {
  QuantExpertsProblem p;
  p.act = parse_activation(std::string(activation), op);
  check_same_device(weights, x, op, "weights");
  check_same_device(indices, x, op, "indices");
  const auto s = x.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kBFloat16 || s == at::kHalf, op,
              ": x must be float32, bfloat16 or float16, got ", s);
  TORCH_CHECK(weights.scalar_type() == at::kFloat || weights.scalar_type() == s, op,
              ": weights must be float32 or x's dtype (", s, "), got ", weights.scalar_type());
  TORCH_CHECK(indices.scalar_type() == at::kLong, op, ": indices must be int64, got ", indices.scalar_type());
  check_dim(x, 2, op, "x");
  check_dim(weights, 2, op, "weights");
  check_dim(indices, 2, op, "indices");
  check_contiguous(x, op, "x");
  p.N = x.size(0);
  p.H = x.size(1);
  p.K = indices.size(1);
  check_size(indices, 0, p.N, op, "indices");
  TORCH_CHECK(weights.sizes() == indices.sizes(), op, ": weights must have the shape of indices ", indices.sizes(),
              ", got ", weights.sizes());
  TORCH_CHECK(p.H > 0 && p.H % 32 == 0, op, ": x.size(1) (the hidden size H) must be a positive multiple of 32, got ",
              p.H);
  check_dim(gate_up_qweight, 3, op, "gate_up_qweight");
  p.E = gate_up_qweight.size(0);
  TORCH_CHECK(p.E >= 1, op, ": gate_up_qweight must hold at least one expert, got shape ", gate_up_qweight.sizes());
  const int64_t rows = gate_up_qweight.size(1);
  TORCH_CHECK(rows > 0 && rows % 64 == 0, op, ": gate_up_qweight.size(1) must be 2 * Im with Im a positive ",
              "multiple of 32, got shape ", gate_up_qweight.sizes());
  p.Im = rows / 2;
  check_quant_bank(op, x, gate_up_qweight, gate_up_scales, p.E, 2 * p.Im, p.H, "gate_up_qweight", "gate_up_scales");
  check_quant_bank(op, x, down_qweight, down_scales, p.E, p.H, p.Im, "down_qweight", "down_scales");
  p.x = x;
  p.weights = weights.contiguous();
  p.indices = indices.contiguous();
  p.gate_up_qweight = gate_up_qweight;
  p.gate_up_scales = gate_up_scales;
  p.down_qweight = down_qweight;
  p.down_scales = down_scales;
  p.dtype = s;
  return p;
}

// The forward's checks, and grad_out with x's shape and dtype.
inline QuantExpertsProblem check_experts_quant_backward(const char* op, const at::Tensor& grad_out,
                                                        const at::Tensor& x, const at::Tensor& weights,
                                                        const at::Tensor& indices, const at::Tensor& gate_up_qweight,
                                                        const at::Tensor& gate_up_scales,
                                                        const at::Tensor& down_qweight, const at::Tensor& down_scales,
                                                        c10::string_view activation) {
  QuantExpertsProblem p = check_experts_quant(op, x, weights, indices, gate_up_qweight, gate_up_scales, down_qweight,
                                              down_scales, activation);
  check_grad_like_x(grad_out, x, op);
  p.grad_out = grad_out.contiguous();
  return p;
}

// Up to this many (token, slot) pairs the backward computes the routing weights' gradients one precision above
// its usual path: float32 from the exact weights for 16-bit x (CUDA: grad_weights_fp32 in moe_experts_quant_cuda.cu;
// the composed path always does), float64 for float32 x (the composed path). Each gradient is one dot product
// whose terms largely cancel, and over a decode step's few of them one draw against another came out over the
// error rule's 2x of plain PyTorch's in one problem of 10-20 (dev/quant/grad_weights_rounding.py); over 24 or more
// the largest error stayed under 1.4x plain's. Above it the extra precision costs: the CUDA fp32 GEMVs +0.37 ms at
// 64 pairs and +2.3 ms at 512 (H100, 26B-A4B bank), float64 on the CPU ~3x.
constexpr int64_t kPreciseGradWeightsMaxPairs = 16;

// ---- composed of other ops (moe_experts_quant_composed.cpp): any device with qgemm and gated_activation ----

// The (token, slot) pairs grouped by expert on the tensors' device: order = the pair ids p = n*K + k sorted
// stably by expert (int64 [N*K]), and each expert's count on the host (one copy). Indices out of [0, E)
// raise, naming op.
struct ExpertRoutes {
  at::Tensor order;             // int64 [N*K]
  std::vector<int64_t> counts;  // [E]
};
ExpertRoutes route_by_expert(const char* op, const at::Tensor& indices, int64_t E);

// The forward: per expert, gate_up = qgemm(x[tokens], ...), h = gated_activation, y = qgemm(h, ...), all in
// x's dtype; out (float32) += w * y in expert order, rounded once to x's dtype.
at::Tensor experts_quant_forward_composed(const char* op, const QuantExpertsProblem& p);

// (grad_x in x's dtype, grad_weights in weights' dtype): per chosen expert the forward recomputed in float32 from
// its exactly dequantized weights, then grad_weights[p] = <grad_out[n] @ dequant(down_e), h_p> and grad_x[n] +=
// (dg | du) @ dequant(gate_up_e) with (dg, du) = gated_activation_backward(w * grad_out[n] @ dequant(down_e), g, u),
// all in float32 (float64 for float32 x up to kPreciseGradWeightsMaxPairs; the reason:
// moe_experts_quant_composed.cpp).
std::tuple<at::Tensor, at::Tensor> experts_quant_backward_composed(const char* op, const QuantExpertsProblem& p);

}  // namespace gemma4::moe
