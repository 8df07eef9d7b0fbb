// Scalar activation maths shared by the gated-activation and MoE kernels, templated on the
// accumulation type (float for fp32/bf16/fp16 inputs, double for float64 so gradcheck is exact).
// gelu_tanh(u) = 0.5 u (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3)))   (transformers' gelu_pytorch_tanh)
// silu(u) = u * sigmoid(u)
#pragma once
#include <cmath>
#include <string>

#include <c10/util/Exception.h>

namespace gemma4 {

enum class Activation { GeluTanh, Silu };

inline Activation parse_activation(const std::string& name, const char* op) {
  if (name == "gelu_tanh" || name == "gelu_pytorch_tanh") return Activation::GeluTanh;
  if (name == "silu") return Activation::Silu;
  TORCH_CHECK(false, op, ": activation must be \"gelu_tanh\" or \"silu\", got \"", name, "\"");
}


template <typename T>
inline T gelu_tanh(T u) {
  const T inner = T(0.7978845608028654) * (u + T(0.044715) * u * u * u);  // sqrt(2/pi) (u + c u^3)
  return T(0.5) * u * (T(1) + std::tanh(inner));
}

template <typename T>
inline T gelu_tanh_grad(T u) {
  const T inner = T(0.7978845608028654) * (u + T(0.044715) * u * u * u);  // sqrt(2/pi) (u + c u^3)
  const T t = std::tanh(inner);
  const T dinner = T(0.7978845608028654) * (T(1) + T(3 * 0.044715) * u * u);
  return T(0.5) * (T(1) + t) + T(0.5) * u * (T(1) - t * t) * dinner;
}

template <typename T>
inline T silu(T u) { return u / (T(1) + std::exp(-u)); }

template <typename T>
inline T silu_grad(T u) {
  const T s = T(1) / (T(1) + std::exp(-u));
  return s * (T(1) + u * (T(1) - s));
}

template <typename T>
inline T activate(Activation a, T u) { return a == Activation::GeluTanh ? gelu_tanh(u) : silu(u); }
template <typename T>
inline T activate_grad(Activation a, T u) {
  return a == Activation::GeluTanh ? gelu_tanh_grad(u) : silu_grad(u);
}

}  // namespace gemma4
