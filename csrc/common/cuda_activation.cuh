// The gated activations in CUDA kernels: the very functions the CPU kernels use
// (common/activation_math.h: act(u) = u * sigmoid(k(u)) from one overflow-free exponential, and
// act'(u) from the same exponential, host and device), so CPU and CUDA agree to rounding; plus the
// dispatch from the run-time activation to a template parameter.
#pragma once
#include <type_traits>

#include "common/activation_math.h"

namespace gemma4::cuda {

// Fast = true: the hardware exp (__expf) for bf16/fp16 results, whose rounding hides its few ulp.
template <Activation Act, bool Fast = false, typename A>
__device__ __forceinline__ A activate(A u) {
  return ::gemma4::activate<Act, Fast>(u);
}

template <Activation Act, bool Fast = false, typename A>
__device__ __forceinline__ void activate_and_grad(A u, A& act, A& grad) {
  ::gemma4::activate_and_grad<Act, Fast>(u, act, grad);
}

// Fast exp for reduced-precision outputs.
template <typename T>
constexpr bool kFastExpFor = !std::is_same_v<T, float> && !std::is_same_v<T, double>;

}  // namespace gemma4::cuda

// Runtime activation -> compile-time template parameter NAME inside the lambda body.
#define GEMMA4_DISPATCH_ACTIVATION(ACT, NAME, ...)                          \
  [&] {                                                                     \
    if ((ACT) == ::gemma4::Activation::GeluTanh) {                          \
      constexpr ::gemma4::Activation NAME = ::gemma4::Activation::GeluTanh; \
      return __VA_ARGS__();                                                 \
    } else {                                                                \
      constexpr ::gemma4::Activation NAME = ::gemma4::Activation::Silu;     \
      return __VA_ARGS__();                                                 \
    }                                                                       \
  }()
