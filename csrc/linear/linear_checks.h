// gemma4::linear's argument checks and problem description, with no device assumption: each
// device's kernel file adds its own device check and kernels.
#pragma once
#include <optional>

#include "common/checks.h"

namespace gemma4 {

// The weight's dtype: x's, or bf16 under fp32 x (fp32 results from a bf16 weight, with no float32 copy of it:
// the fused loss's head on CPUs without a native bf16 GEMM).
inline void check_weight_dtype(const at::Tensor& weight, at::ScalarType x, const char* op) {
  if (x == at::kFloat) {
    TORCH_CHECK(weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kBFloat16, op,
                ": weight must be Float or BFloat16, got ", weight.scalar_type());
  } else {
    check_dtype(weight, x, op, "weight");
  }
}

// y[M, N] = x[M, K] @ weight[N, K]^T (+ bias[N]), x's leading dims flattened into M.
struct LinearProblem {
  int64_t M, N, K;
};

// The checks both ops make: an activation `name` [..., D] (float32 or bfloat16, contiguous) and a contiguous
// 2-D weight with weight.size(weight_dim) == D, on one device. Returns the activation's leading dims' product.
inline int64_t check_activation_and_weight(const char* op, const at::Tensor& a, const char* name,
                                           const at::Tensor& weight, int64_t weight_dim) {
  TORCH_CHECK(a.scalar_type() == at::kFloat || a.scalar_type() == at::kBFloat16, op, ": ", name,
              " must be float32 or bfloat16, got ", a.scalar_type());
  check_weight_dtype(weight, a.scalar_type(), op);
  TORCH_CHECK(a.dim() >= 1, op, ": ", name, " must have at least 1 dimension, got a scalar");
  check_dim(weight, 2, op, "weight");
  check_size(weight, weight_dim, a.size(-1), op, "weight");
  check_contiguous(a, op, name);
  check_contiguous(weight, op, "weight");
  check_same_device(weight, a, op, "weight");
  return c10::multiply_integers(a.sizes().slice(0, a.dim() - 1));
}

inline LinearProblem check_linear_args(const char* op, const at::Tensor& x, const at::Tensor& weight,
                                       const std::optional<at::Tensor>& bias) {
  const int64_t M = check_activation_and_weight(op, x, "x", weight, 1);  // weight [N, K], K = x.size(-1)
  if (bias) {
    check_dtype(*bias, x.scalar_type(), op, "bias");
    check_dim(*bias, 1, op, "bias");
    check_size(*bias, 0, weight.size(0), op, "bias");
    check_contiguous(*bias, op, "bias");
    check_same_device(*bias, x, op, "bias");
  }
  return {M, weight.size(0), x.size(-1)};
}

// gemma4::linear_grad_input: grad_x[M, K] = grad_out[M, N] @ weight[N, K], grad_out's leading dims in M.
inline LinearProblem check_linear_grad_input_args(const char* op, const at::Tensor& grad_out, const at::Tensor& weight) {
  const int64_t M = check_activation_and_weight(op, grad_out, "grad_out", weight, 0);  // N = grad_out.size(-1)
  return {M, weight.size(0), weight.size(1)};
}

}  // namespace gemma4
