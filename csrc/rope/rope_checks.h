// The seam of the rope family: argument checks of gemma4::rope and rope_backward and the problem
// they describe, shared by every backend. Device-agnostic: each backend's source adds only its own
// device check and its TORCH_LIBRARY_IMPL.
#pragma once
#include "common/checks.h"

namespace gemma4::rope {

// One rope (or rope_backward) call, checked. Kernels read x as contiguous [B, T, H, hd] and
// positions as contiguous [P, T]: the check copies strided inputs (nothing when already contiguous).
struct RopeProblem {
  at::Tensor x;          // [B, T, H, hd] contiguous float (grad_out for the backward)
  at::Tensor positions;  // int64 [P, T] contiguous, P = 1 (shared by the batch) or B
  at::Tensor inv_freq;   // float32 [hd / 2] contiguous
  int64_t B = 0, T = 0, H = 0, hd = 0, P = 0;
  at::ScalarType dtype = at::kFloat;
};

// xname: "x" for rope, "grad_out" for rope_backward. x [B,T,nH,hd] float with even hd; positions
// int64 [1|B, T]; inv_freq float32 [hd/2]; all on x's device, any strides.
inline RopeProblem check_rope(const char* op, const char* xname, const at::Tensor& x, const at::Tensor& positions,
                              const at::Tensor& inv_freq) {
  check_float(x, op, xname);
  check_dim(x, 4, op, xname);
  TORCH_CHECK(x.size(3) % 2 == 0, op, ": ", xname, ".size(3) (head_dim) must be even, got shape ", x.sizes());
  check_same_device(positions, x, op, "positions");
  check_dtype(positions, at::kLong, op, "positions");
  check_dim(positions, 2, op, "positions");
  TORCH_CHECK(positions.size(0) == 1 || positions.size(0) == x.size(0), op, ": positions.size(0) must be 1 or ",
              xname, ".size(0) = ", x.size(0), ", got shape ", positions.sizes());
  TORCH_CHECK(positions.size(1) == x.size(1), op, ": positions.size(1) must be ", xname, ".size(1) = ",
              x.size(1), ", got shape ", positions.sizes());
  check_same_device(inv_freq, x, op, "inv_freq");
  check_dtype(inv_freq, at::kFloat, op, "inv_freq");
  check_dim(inv_freq, 1, op, "inv_freq");
  TORCH_CHECK(inv_freq.size(0) == x.size(3) / 2, op, ": inv_freq must have head_dim/2 = ", x.size(3) / 2,
              " elements, got shape ", inv_freq.sizes());
  RopeProblem p;
  p.x = x.contiguous();
  p.positions = positions.contiguous();
  p.inv_freq = inv_freq.contiguous();
  p.B = x.size(0);
  p.T = x.size(1);
  p.H = x.size(2);
  p.hd = x.size(3);
  p.P = positions.size(0);
  p.dtype = x.scalar_type();
  return p;
}

}  // namespace gemma4::rope
