// The seam of the moe family: argument checks of gemma4::moe_route, moe_experts and their
// backwards, and the problems they describe, shared by every backend. Device-agnostic: each
// backend's source adds only its own device check and its TORCH_LIBRARY_IMPL.
// The values inside `indices` are data, not metadata: each backend checks they lie in [0, E) where
// its kernel reads them (the CPU kernels before any memory is read through them).
#pragma once
#include <string>

#include "common/checks.h"

namespace gemma4::moe {

// Dtype of moe_route's weights (and of the grad_weights its backward reads): fp64 for fp64 logits,
// fp32 otherwise.
inline at::ScalarType route_weights_dtype(at::ScalarType logits) {
  return logits == at::kDouble ? at::kDouble : at::kFloat;
}

// One moe_route (or moe_route_backward) call, checked; every tensor contiguous.
struct RouteProblem {
  at::Tensor logits;        // [N, E] float
  at::Tensor scale;         // per_expert_scale [E], any float dtype
  at::Tensor grad_weights;  // backward only: [N, K] float
  at::Tensor indices;       // backward only: int64 [N, K]
  int64_t N = 0, E = 0, K = 0;
  at::ScalarType dtype = at::kFloat;  // logits' dtype
};

inline RouteProblem check_route_common(const char* op, const at::Tensor& logits, const at::Tensor& scale) {
  check_same_device(scale, logits, op, "per_expert_scale");
  check_float(logits, op, "logits");
  check_float(scale, op, "per_expert_scale");
  check_dim(logits, 2, op, "logits");
  check_dim(scale, 1, op, "per_expert_scale");
  TORCH_CHECK(logits.size(1) >= 1, op, ": logits must have at least one expert column, got shape ", logits.sizes());
  check_size(scale, 0, logits.size(1), op, "per_expert_scale");
  RouteProblem p;
  p.logits = logits.contiguous();
  p.scale = scale.contiguous();
  p.N = logits.size(0);
  p.E = logits.size(1);
  p.dtype = logits.scalar_type();
  return p;
}

// logits [N, E] float, per_expert_scale [E] float, 1 <= top_k <= E.
inline RouteProblem check_route(const char* op, const at::Tensor& logits, const at::Tensor& scale, int64_t top_k) {
  RouteProblem p = check_route_common(op, logits, scale);
  TORCH_CHECK(top_k >= 1 && top_k <= p.E, op, ": top_k must be in [1, ", p.E, "] (the number of experts), got ",
              top_k);
  p.K = top_k;
  return p;
}

// The forward's tensors, and grad_weights float [N, K], indices int64 [N, K] (1 <= K <= E).
inline RouteProblem check_route_backward(const char* op, const at::Tensor& grad_weights, const at::Tensor& logits,
                                         const at::Tensor& scale, const at::Tensor& indices) {
  RouteProblem p = check_route_common(op, logits, scale);
  check_same_device(grad_weights, logits, op, "grad_weights");
  check_same_device(indices, logits, op, "indices");
  check_float(grad_weights, op, "grad_weights");
  TORCH_CHECK(indices.scalar_type() == at::kLong, op, ": indices must be int64, got ", indices.scalar_type());
  check_dim(indices, 2, op, "indices");
  check_size(indices, 0, p.N, op, "indices");
  p.K = indices.size(1);
  TORCH_CHECK(p.K >= 1 && p.K <= p.E, op, ": indices.size(1) (top_k) must be in [1, ", p.E, "], got ", p.K);
  TORCH_CHECK(grad_weights.sizes() == indices.sizes(), op, ": grad_weights must have the shape of indices ",
              indices.sizes(), ", got ", grad_weights.sizes());
  p.grad_weights = grad_weights.contiguous();
  p.indices = indices.contiguous();
  return p;
}

// One moe_experts (or moe_experts_backward) call, checked; every tensor contiguous.
struct ExpertsProblem {
  at::Tensor x;         // [N, H] float
  at::Tensor weights;   // [N, K] float32 or x's dtype
  at::Tensor indices;   // int64 [N, K]
  at::Tensor gate_up;   // [E, 2*Im, H], x's dtype
  at::Tensor down;      // [E, H, Im], x's dtype
  at::Tensor grad_out;  // backward only: [N, H], x's dtype
  int64_t N = 0, H = 0, K = 0, E = 0, Im = 0;
  Activation act = Activation::GeluTanh;
  at::ScalarType dtype = at::kFloat;  // x's dtype
};

inline ExpertsProblem check_experts(const char* op, const at::Tensor& x, const at::Tensor& weights,
                                    const at::Tensor& indices, const at::Tensor& gate_up, const at::Tensor& down,
                                    c10::string_view activation) {
  ExpertsProblem p;
  p.act = parse_activation(std::string(activation), op);
  check_same_device(weights, x, op, "weights");
  check_same_device(indices, x, op, "indices");
  check_same_device(gate_up, x, op, "gate_up");
  check_same_device(down, x, op, "down");
  check_float(x, op, "x");
  TORCH_CHECK(weights.scalar_type() == at::kFloat || weights.scalar_type() == x.scalar_type(), op,
              ": weights must be float32 or x's dtype (", x.scalar_type(), "), got ", weights.scalar_type());
  TORCH_CHECK(indices.scalar_type() == at::kLong, op, ": indices must be int64, got ", indices.scalar_type());
  TORCH_CHECK(gate_up.scalar_type() == x.scalar_type(), op, ": gate_up must have x's dtype (",
              x.scalar_type(), "), got ", gate_up.scalar_type());
  TORCH_CHECK(down.scalar_type() == x.scalar_type(), op, ": down must have x's dtype (", x.scalar_type(),
              "), got ", down.scalar_type());
  check_dim(x, 2, op, "x");
  check_dim(weights, 2, op, "weights");
  check_dim(indices, 2, op, "indices");
  check_dim(gate_up, 3, op, "gate_up");
  check_dim(down, 3, op, "down");
  p.N = x.size(0);
  p.H = x.size(1);
  p.K = indices.size(1);
  p.E = gate_up.size(0);
  p.Im = down.size(2);
  check_size(indices, 0, p.N, op, "indices");
  TORCH_CHECK(weights.sizes() == indices.sizes(), op, ": weights must have the shape of indices ",
              indices.sizes(), ", got ", weights.sizes());
  TORCH_CHECK(p.E >= 1, op, ": gate_up must hold at least one expert, got shape ", gate_up.sizes());
  TORCH_CHECK(gate_up.size(1) == 2 * p.Im, op, ": gate_up.size(1) must be 2 * down.size(2) = ", 2 * p.Im,
              ", got gate_up ", gate_up.sizes(), " and down ", down.sizes());
  check_size(gate_up, 2, p.H, op, "gate_up");
  check_size(down, 0, p.E, op, "down");
  check_size(down, 1, p.H, op, "down");
  p.x = x.contiguous();
  p.weights = weights.contiguous();
  p.indices = indices.contiguous();
  p.gate_up = gate_up.contiguous();
  p.down = down.contiguous();
  p.dtype = x.scalar_type();
  return p;
}

// The forward's checks, and grad_out with x's shape and dtype.
inline ExpertsProblem check_experts_backward(const char* op, const at::Tensor& grad_out, const at::Tensor& x,
                                             const at::Tensor& weights, const at::Tensor& indices,
                                             const at::Tensor& gate_up, const at::Tensor& down,
                                             c10::string_view activation) {
  ExpertsProblem p = check_experts(op, x, weights, indices, gate_up, down, activation);
  check_grad_like_x(grad_out, x, op);
  p.grad_out = grad_out.contiguous();
  return p;
}

}  // namespace gemma4::moe
