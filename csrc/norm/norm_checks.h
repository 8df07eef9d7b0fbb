// The seam of the norm family: argument checks of gemma4::rms_norm and rms_norm_backward and the
// problem they describe, shared by every backend. Device-agnostic: each backend's source adds only
// its own device check (check_device(x, op, "x", <its device>)) and its TORCH_LIBRARY_IMPL.
#pragma once
#include <cmath>
#include <optional>

#include "common/checks.h"

namespace gemma4::norm {

// One rms_norm call, checked. Kernels read x (and grad_out) as contiguous [rows, D] rows and the
// weight as a contiguous [D] vector: the check makes those copies when the caller's tensors are
// strided (at most one copy each, nothing when already contiguous).
struct RmsNormProblem {
  at::Tensor x;                      // [..., D] contiguous, float
  std::optional<at::Tensor> weight;  // [D] contiguous, any float dtype (read in x's accumulation type)
  at::Tensor grad_out;               // backward only: x's shape and dtype, contiguous
  int64_t rows = 0, D = 0;
  double eps = 0;
  at::ScalarType dtype = at::kFloat;  // x's dtype: the output's and grad_x's
};

// x [..., D] float (any strides); weight [D] any float dtype; eps finite and >= 0; all on x's device.
inline RmsNormProblem check_rms_norm(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                     double eps) {
  check_float(x, op, "x");
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least 1 dimension (the normalised one), got a scalar");
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, op, ": eps must be a finite non-negative number, got ", eps);
  RmsNormProblem p;
  if (weight.has_value()) {
    const at::Tensor& w = *weight;
    check_same_device(w, x, op, "weight");
    check_float(w, op, "weight");
    check_dim(w, 1, op, "weight");
    TORCH_CHECK(w.size(0) == x.size(-1), op, ": weight must have x.size(-1) = ", x.size(-1),
                " elements, got shape ", w.sizes());
    p.weight = w.contiguous();
  }
  p.x = x.contiguous();
  p.D = x.size(-1);
  p.rows = p.D == 0 ? 0 : x.numel() / p.D;
  p.eps = eps;
  p.dtype = x.scalar_type();
  return p;
}

// The forward's checks, and grad_out with x's shape and dtype on x's device.
inline RmsNormProblem check_rms_norm_backward(const char* op, const at::Tensor& grad_out, const at::Tensor& x,
                                              const std::optional<at::Tensor>& weight, double eps) {
  RmsNormProblem p = check_rms_norm(op, x, weight, eps);
  check_same_device(grad_out, x, op, "grad_out");
  TORCH_CHECK(grad_out.scalar_type() == x.scalar_type(), op, ": grad_out must have x's dtype ", x.scalar_type(),
              ", got ", grad_out.scalar_type());
  TORCH_CHECK(grad_out.sizes() == x.sizes(), op, ": grad_out must have x's shape ", x.sizes(), ", got ",
              grad_out.sizes());
  p.grad_out = grad_out.contiguous();
  return p;
}

}  // namespace gemma4::norm
