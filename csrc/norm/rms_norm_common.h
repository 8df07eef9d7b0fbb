// Argument checks shared by gemma4::rms_norm and gemma4::rms_norm_backward.
#pragma once
#include <cmath>
#include <optional>

#include "common/checks.h"

namespace gemma4 {

// x [..., D] contiguous float; weight [D] contiguous, any float dtype (it is read in x's
// accumulation type, so fp32 weights with bf16 activations work); eps >= 0.
inline void check_rms_norm_args(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                double eps) {
  check_device(x, op, "x", c10::kCPU);
  check_float(x, op, "x");
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least 1 dimension (the normalised one), got a scalar");
  check_contiguous(x, op, "x");
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, op, ": eps must be a finite non-negative number, got ", eps);
  if (weight.has_value()) {
    const at::Tensor& w = *weight;
    check_same_device(w, x, op, "weight");
    check_float(w, op, "weight");
    check_dim(w, 1, op, "weight");
    TORCH_CHECK(w.size(0) == x.size(-1), op, ": weight must have x.size(-1) = ", x.size(-1),
                " elements, got shape ", w.sizes());
    check_contiguous(w, op, "weight");
  }
}

}  // namespace gemma4
