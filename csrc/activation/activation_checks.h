// The seam of the activation family: argument checks of gemma4::gated_activation and
// gated_activation_backward and the problem they describe, shared by every backend. Device-agnostic:
// each backend's source adds only its own device check and its TORCH_LIBRARY_IMPL.
#pragma once
#include <string>

#include "common/checks.h"

namespace gemma4::activation {

// One gated_activation call, checked: y = act(gate) * up elementwise over n elements. Kernels read
// every tensor as a contiguous flat array: the check copies strided inputs.
struct GatedProblem {
  at::Tensor gate, up;  // same shape and float dtype, contiguous
  at::Tensor grad_out;  // backward only: gate's shape and dtype, contiguous
  int64_t n = 0;        // elements
  Activation act = Activation::GeluTanh;
  at::ScalarType dtype = at::kFloat;
};

// gate float, any shape and strides; `other` (up or grad_out) with gate's shape, dtype and device.
inline at::Tensor check_like_gate(const char* op, const at::Tensor& gate, const at::Tensor& other, const char* name) {
  check_same_device(other, gate, op, name);
  TORCH_CHECK(other.scalar_type() == gate.scalar_type(), op, ": ", name, " must have gate's dtype ",
              gate.scalar_type(), ", got ", other.scalar_type());
  TORCH_CHECK(other.sizes() == gate.sizes(), op, ": ", name, " must have gate's shape ", gate.sizes(), ", got ",
              other.sizes());
  return other.contiguous();
}

inline GatedProblem check_gated_activation(const char* op, const at::Tensor& gate, const at::Tensor& up,
                                           c10::string_view activation) {
  GatedProblem p;
  p.act = parse_activation(std::string(activation), op);
  check_float(gate, op, "gate");
  p.up = check_like_gate(op, gate, up, "up");
  p.gate = gate.contiguous();
  p.n = gate.numel();
  p.dtype = gate.scalar_type();
  return p;
}

inline GatedProblem check_gated_activation_backward(const char* op, const at::Tensor& grad_out, const at::Tensor& gate,
                                                    const at::Tensor& up, c10::string_view activation) {
  GatedProblem p = check_gated_activation(op, gate, up, activation);
  p.grad_out = check_like_gate(op, gate, grad_out, "grad_out");
  return p;
}

}  // namespace gemma4::activation
