// The seam of the LoRA family: argument checks of gemma4::lora_down / lora_up / lora_weight_grad and the
// problems they describe, shared by the CPU and CUDA kernels. Each backend adds its own device check.
//
// The three ops are the thin GEMMs of a LoRA update over a bf16/fp16 (or fp32) activation with float32
// factors, the way PEFT computes it (autocast_adapter_dtype: the activation widened to float32):
//   lora_down         out[N, r] = scale * x[N, K] @ weight[r, K]^T                  (x . A^T; g . B)
//   lora_up           out[N, M] = round(base[N, M] + scale * down[N, r] @ weight[M, r]^T)   (+ B; grad_x)
//   lora_weight_grad  out[r, K] = scale * d[N, r]^T @ x[N, K]                       (grad_A; grad_B^T)
// Activations are read in their own dtype and widened in registers; everything accumulates in float32.
// The factors (weight) are small and may have any strides, so a transposed factor needs no copy.
#pragma once
#include <optional>

#include "common/checks.h"

namespace gemma4::lora {

// A 2-D thin product: N rows, K (or M) columns of the wide operand, r the rank.
struct ThinProblem {
  int64_t N = 0, K = 0, r = 0;
};

inline void check_activation(const at::Tensor& x, const char* op, const char* arg) {
  const auto s = x.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kBFloat16 || s == at::kHalf, op, ": ", arg,
              " must be float32, bfloat16 or float16, got ", s);
  check_dim(x, 2, op, arg);
  check_contiguous(x, op, arg);
}

inline void check_factor(const at::Tensor& w, const at::Tensor& like, const char* op, const char* arg) {
  check_same_device(w, like, op, arg);
  check_dtype(w, at::kFloat, op, arg);
  check_dim(w, 2, op, arg);
}

// x [N, K] activation, weight float32 [r, K].
inline ThinProblem check_lora_down(const char* op, const at::Tensor& x, const at::Tensor& weight) {
  check_activation(x, op, "x");
  check_factor(weight, x, op, "weight");
  check_size(weight, 1, x.size(1), op, "weight");
  return {x.size(0), x.size(1), weight.size(0)};
}

// down float32 [N, r] contiguous, weight float32 [M, r], base [N, M] in dtype (contiguous) or None,
// dtype float32/bfloat16/float16. ThinProblem.K is M.
inline ThinProblem check_lora_up(const char* op, const at::Tensor& down, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& base, at::ScalarType dtype) {
  check_dtype(down, at::kFloat, op, "down");
  check_dim(down, 2, op, "down");
  check_contiguous(down, op, "down");
  check_factor(weight, down, op, "weight");
  check_size(weight, 1, down.size(1), op, "weight");
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf, op,
              ": dtype must be float32, bfloat16 or float16, got ", dtype);
  if (base.has_value()) {
    check_same_device(*base, down, op, "base");
    check_dtype(*base, dtype, op, "base");
    check_dim(*base, 2, op, "base");
    check_size(*base, 0, down.size(0), op, "base");
    check_size(*base, 1, weight.size(0), op, "base");
    check_contiguous(*base, op, "base");
  }
  return {down.size(0), weight.size(0), down.size(1)};
}

// x [N, K] activation, d float32 [N, r] contiguous.
inline ThinProblem check_lora_weight_grad(const char* op, const at::Tensor& x, const at::Tensor& d) {
  check_activation(x, op, "x");
  check_same_device(d, x, op, "d");
  check_dtype(d, at::kFloat, op, "d");
  check_dim(d, 2, op, "d");
  check_size(d, 0, x.size(0), op, "d");
  check_contiguous(d, op, "d");
  return {x.size(0), x.size(1), d.size(1)};
}

}  // namespace gemma4::lora
