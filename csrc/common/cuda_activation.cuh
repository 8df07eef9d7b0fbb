// The gated activations on the device: the scalar forms of common/activation_math.h (callable from
// host and device code), so CPU and CUDA kernels compute the same maths:
//   act(u) = u * sigmoid(k(u)), sigmoid from t = exp(-|k|) (no overflow, no clamp: huge negative u
//   give exactly 0, -inf gives NaN as the reference does).
// Fast = true uses the hardware exp (__expf) for bf16/fp16 results whose rounding hides it.
#pragma once
#include <type_traits>

#include "common/activation_math.h"  // enum Activation

namespace gemma4::cuda {

// One activation maths for CPU and CUDA: the host+device scalar forms of activation_math.h.
using ::gemma4::activate;
using ::gemma4::activate_and_grad;

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
