// Scalar activation maths shared by the gated-activation and MoE kernels (float in, float out).
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

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluCoeff = 0.044715f;

inline float gelu_tanh(float u) {
  const float inner = kSqrt2OverPi * (u + kGeluCoeff * u * u * u);
  return 0.5f * u * (1.0f + std::tanh(inner));
}

inline float gelu_tanh_grad(float u) {
  const float inner = kSqrt2OverPi * (u + kGeluCoeff * u * u * u);
  const float t = std::tanh(inner);
  const float dinner = kSqrt2OverPi * (1.0f + 3.0f * kGeluCoeff * u * u);
  return 0.5f * (1.0f + t) + 0.5f * u * (1.0f - t * t) * dinner;
}

inline float silu(float u) { return u / (1.0f + std::exp(-u)); }

inline float silu_grad(float u) {
  const float s = 1.0f / (1.0f + std::exp(-u));
  return s * (1.0f + u * (1.0f - s));
}

inline float activate(Activation a, float u) { return a == Activation::GeluTanh ? gelu_tanh(u) : silu(u); }
inline float activate_grad(Activation a, float u) {
  return a == Activation::GeluTanh ? gelu_tanh_grad(u) : silu_grad(u);
}

}  // namespace gemma4
