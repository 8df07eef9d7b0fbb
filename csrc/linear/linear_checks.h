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

inline LinearProblem check_linear_args(const char* op, const at::Tensor& x, const at::Tensor& weight,
                                       const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, op,
              ": x must be float32 or bfloat16, got ", x.scalar_type());
  check_weight_dtype(weight, x.scalar_type(), op);
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least 1 dimension, got a scalar");
  check_dim(weight, 2, op, "weight");
  check_size(weight, 1, x.size(-1), op, "weight");  // weight [N, K] with K = x.size(-1)
  check_contiguous(x, op, "x");
  check_contiguous(weight, op, "weight");
  check_same_device(weight, x, op, "weight");
  if (bias) {
    check_dtype(*bias, x.scalar_type(), op, "bias");
    check_dim(*bias, 1, op, "bias");
    check_size(*bias, 0, weight.size(0), op, "bias");
    check_contiguous(*bias, op, "bias");
    check_same_device(*bias, x, op, "bias");
  }
  const int64_t M = c10::multiply_integers(x.sizes().slice(0, x.dim() - 1));
  return {M, weight.size(0), x.size(-1)};
}

// gemma4::linear_grad_input: grad_x[M, K] = grad_out[M, N] @ weight[N, K], grad_out's leading dims in M.
inline LinearProblem check_linear_grad_input_args(const char* op, const at::Tensor& grad_out, const at::Tensor& weight) {
  TORCH_CHECK(grad_out.scalar_type() == at::kFloat || grad_out.scalar_type() == at::kBFloat16, op,
              ": grad_out must be float32 or bfloat16, got ", grad_out.scalar_type());
  check_weight_dtype(weight, grad_out.scalar_type(), op);
  TORCH_CHECK(grad_out.dim() >= 1, op, ": grad_out must have at least 1 dimension, got a scalar");
  check_dim(weight, 2, op, "weight");
  check_size(weight, 0, grad_out.size(-1), op, "weight");  // weight [N, K] with N = grad_out.size(-1)
  check_contiguous(grad_out, op, "grad_out");
  check_contiguous(weight, op, "weight");
  check_same_device(weight, grad_out, op, "weight");
  const int64_t M = c10::multiply_integers(grad_out.sizes().slice(0, grad_out.dim() - 1));
  return {M, weight.size(0), weight.size(1)};
}

}  // namespace gemma4
