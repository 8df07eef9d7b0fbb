// The gated activations on the device, in the form the CPU kernels use (common/activation_math.h,
// vectorized section), so CPU and CUDA results agree to rounding:
//   act(u) = u * sigmoid(z(u)),  silu: z = u;  gelu_tanh: z = 2 sqrt(2/pi) (u + 0.044715 u^3)
// (0.5 (1 + tanh(y)) = sigmoid(2y)); one exp per element, its argument clamped (80 for float, 700
// for double) so e stays finite and e * s never becomes inf * 0. The gradient reuses the exp:
//   s = 1 / (1 + e), e = exp(-z), 1 - s = e s,   act' = s (1 + u (1 - s) z'(u)).
// Fast = true uses the hardware exp (__expf, a few ulp), for bf16/fp16 results whose rounding hides
// it, as the CPU kernels use ATen's exp_u20 there; fp32/fp64 use the accurate exp.
// (When activation_math.h gains host+device scalar forms, these should forward to them.)
#pragma once
#include <type_traits>

#include "common/activation_math.h"  // enum Activation

namespace gemma4::cuda {

template <bool Fast>
__device__ __forceinline__ float exp_for_sigmoid(float x) {
  x = fminf(x, 80.f);
  if constexpr (Fast) return __expf(x); else return expf(x);
}
template <bool Fast>
__device__ __forceinline__ double exp_for_sigmoid(double x) { return exp(fmin(x, 700.0)); }

template <Activation Act, typename A>
__device__ __forceinline__ A activation_logit(A u) {
  if constexpr (Act == Activation::Silu) {
    return u;
  } else {
    constexpr A a = A(2 * 0.7978845608028654), b = A(2 * 0.7978845608028654 * 0.044715);
    return u * fma(b, u * u, a);  // u (a + b u^2)
  }
}
template <Activation Act, typename A>
__device__ __forceinline__ A activation_logit_grad(A u) {
  if constexpr (Act == Activation::Silu) {
    return A(1);
  } else {
    constexpr A a = A(2 * 0.7978845608028654), b3 = A(3 * 2 * 0.7978845608028654 * 0.044715);
    return fma(b3, u * u, a);  // a + 3 b u^2
  }
}

template <Activation Act, bool Fast = false, typename A>
__device__ __forceinline__ A activate(A u) {
  const A e = exp_for_sigmoid<Fast>(-activation_logit<Act>(u));
  return u / (A(1) + e);
}

template <Activation Act, bool Fast = false, typename A>
__device__ __forceinline__ void activate_and_grad(A u, A& act, A& grad) {
  const A e = exp_for_sigmoid<Fast>(-activation_logit<Act>(u));
  const A s = A(1) / (A(1) + e);
  act = u * s;
  grad = s * fma(u * (e * s), activation_logit_grad<Act>(u), A(1));
}

// Fast exp for reduced-precision outputs.
template <typename T>
constexpr bool kFastExpFor = !std::is_same_v<T, float> && !std::is_same_v<T, double>;

// Runtime activation -> compile-time template parameter.
#define GEMMA4_DISPATCH_ACTIVATION(ACT, NAME, ...)                   \
  [&] {                                                              \
    if ((ACT) == ::gemma4::Activation::GeluTanh) {                   \
      constexpr ::gemma4::Activation NAME = ::gemma4::Activation::GeluTanh; \
      return __VA_ARGS__();                                          \
    } else {                                                         \
      constexpr ::gemma4::Activation NAME = ::gemma4::Activation::Silu; \
      return __VA_ARGS__();                                          \
    }                                                                \
  }()

}  // namespace gemma4::cuda
