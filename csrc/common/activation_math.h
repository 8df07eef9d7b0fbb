// Scalar activation maths shared by the gated-activation and MoE kernels, templated on the
// accumulation type (float for fp32/bf16/fp16 inputs, double for float64 so gradcheck is exact).
// gelu_tanh(u) = 0.5 u (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3)))   (transformers' gelu_pytorch_tanh)
// silu(u) = u * sigmoid(u)
#pragma once
#include <cmath>

#include "common/checks.h"  // Activation
#if !defined(__CUDACC__)
#include <ATen/cpu/vec/vec.h>  // the vectorized forms at the end (CPU kernels only)
#endif

namespace gemma4 {


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

// ---- Vectorized forms (CPU only), for at::vec::Vectorized<float> / Vectorized<double> ----------
// Both activations are u * sigmoid(k(u)):  silu: k = u;  gelu_tanh: k = 2 sqrt(2/pi) (u + c u^3),
// because 0.5 (1 + tanh(z)) = sigmoid(2z). This form needs one exp and one division and has no
// cancellation, and the gradient follows from the same exp:
//   s = 1 / (1 + e), e = exp(-k), 1 - s = e * s,   act' = s * (1 + u * (1 - s) * k'(u)).
// The exp argument is clamped (80 for float, 700 for double) so e stays finite: then s underflows
// gracefully to ~1e-35 instead of 0 and e * s never becomes inf * 0.
#if !defined(__CUDACC__)

// Fast = true picks ATen's inline exp_u20 (a few ULP, ~3x faster than Sleef's exp, whose call
// dominates the whole kernel): good for bf16/fp16 results, whose rounding hides it, as ATen does
// for its own reduced-precision kernels. Fast = false keeps Sleef's 1-ULP exp for fp32/fp64 results.
template <bool Fast = false>
inline at::vec::Vectorized<float> exp_for_sigmoid(const at::vec::Vectorized<float>& x) {
  const at::vec::Vectorized<float> xc = at::vec::minimum(x, at::vec::Vectorized<float>(80.f));
  if constexpr (Fast) {
    return xc.exp_u20();
  } else {
    return xc.exp();
  }
}
template <bool Fast = false>
inline at::vec::Vectorized<double> exp_for_sigmoid(const at::vec::Vectorized<double>& x) {
  return at::vec::minimum(x, at::vec::Vectorized<double>(700.0)).exp();
}

// k(u) and k'(u) of the logistic form above.
template <Activation Act, typename V>
inline V activation_logit(const V& u) {
  using A = typename V::value_type;
  if constexpr (Act == Activation::Silu) {
    return u;
  } else {
    constexpr A a = A(2 * 0.7978845608028654), b = A(2 * 0.7978845608028654 * 0.044715);
    return u * at::vec::fmadd(V(b), u * u, V(a));  // u (a + b u^2)
  }
}
template <Activation Act, typename V>
inline V activation_logit_grad(const V& u) {
  using A = typename V::value_type;
  if constexpr (Act == Activation::Silu) {
    return V(A(1));
  } else {
    constexpr A a = A(2 * 0.7978845608028654), b3 = A(3 * 2 * 0.7978845608028654 * 0.044715);
    return at::vec::fmadd(V(b3), u * u, V(a));  // a + 3 b u^2
  }
}

// act(u), vectorized.
template <Activation Act, bool FastExp = false, typename V>
inline V activate_vec(const V& u) {
  using A = typename V::value_type;
  const V e = exp_for_sigmoid<FastExp>(V(A(0)) - activation_logit<Act>(u));
  return u / (V(A(1)) + e);
}

// act(u) and act'(u) together (one exp), vectorized.
template <Activation Act, bool FastExp = false, typename V>
inline void activate_and_grad_vec(const V& u, V& act, V& grad) {
  using A = typename V::value_type;
  const V one(A(1));
  const V e = exp_for_sigmoid<FastExp>(V(A(0)) - activation_logit<Act>(u));
  const V s = one / (one + e);
  act = u * s;
  grad = s * at::vec::fmadd(u * (e * s), activation_logit_grad<Act>(u), one);
}
#endif  // !__CUDACC__

}  // namespace gemma4
