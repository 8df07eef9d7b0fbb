// The activation maths of the gated MLPs (gated_activation and moe_experts), one definition for
// every kernel: scalar forms callable from host and CUDA device code, and vectorized forms for the
// CPU kernels (at::vec::Vectorized<float> / Vectorized<double>).
//
//   gelu_tanh(u) = 0.5 u (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3)))   (transformers' gelu_pytorch_tanh)
//   silu(u)      = u sigmoid(u)
//
// Both are computed as u * sigmoid(k(u)), with k = u (silu) or k = 2 sqrt(2/pi) (u + 0.044715 u^3)
// (gelu_tanh, because 0.5 (1 + tanh(z)) = sigmoid(2z)): no cancellation in 1 + tanh for negative u.
// The sigmoid comes from one exponential that cannot overflow, t = exp(-|k|):
//   k >= 0:  s = 1 / (1 + t),  1 - s = t / (1 + t);     k < 0:  s = t / (1 + t),  1 - s = 1 / (1 + t)
// so huge negative u give exactly 0 (and -inf gives NaN = -inf * 0, as the reference does), and the
// gradient act' = s (1 + u (1 - s) k'(u)) never forms inf * 0 from the sigmoid.
#pragma once
#include <cmath>
#include <type_traits>

#include <c10/macros/Macros.h>

#include "common/checks.h"  // Activation
#if !defined(__CUDACC__)
#include <ATen/cpu/vec/vec.h>  // the vectorized forms (CPU kernels only)
#endif

namespace gemma4 {

constexpr double kSqrt2OverPi = 0.7978845608028654;
constexpr double kGeluCubic = 0.044715;

// k(u) and k'(u).
template <Activation Act, typename A>
C10_HOST_DEVICE inline A activation_logit(A u) {
  if constexpr (Act == Activation::Silu) {
    return u;
  } else {
    return u * (A(2 * kSqrt2OverPi) + A(2 * kSqrt2OverPi * kGeluCubic) * u * u);
  }
}
template <Activation Act, typename A>
C10_HOST_DEVICE inline A activation_logit_grad(A u) {
  if constexpr (Act == Activation::Silu) {
    return A(1);
  } else {
    return A(2 * kSqrt2OverPi) + A(3 * 2 * kSqrt2OverPi * kGeluCubic) * u * u;
  }
}

// exp(x); Fast = true uses the GPU's hardware exp (__expf, a few ulp) in float device code, for
// bf16/fp16 results whose rounding hides it (as the CPU kernels use exp_u20 there).
template <bool Fast, typename A>
C10_HOST_DEVICE inline A exp_maybe_fast(A x) {
#if defined(__CUDA_ARCH__)
  if constexpr (Fast && std::is_same_v<A, float>) return __expf(x);
#endif
  return std::exp(x);
}

// s = sigmoid(k) and 1 - s, from t = exp(-|k|) (see the top of the file).
template <bool Fast = false, typename A>
C10_HOST_DEVICE inline void sigmoid_pair(A k, A& s, A& one_minus_s) {
  const A t = exp_maybe_fast<Fast>(-std::abs(k));
  const A r = A(1) / (A(1) + t);
  s = k >= A(0) ? r : t * r;
  one_minus_s = k >= A(0) ? t * r : r;
}

// act(u), and act(u) with act'(u), in the accumulation type A (float or double).
template <Activation Act, bool Fast = false, typename A>
C10_HOST_DEVICE inline A activate(A u) {
  A s, one_minus_s;
  sigmoid_pair<Fast>(activation_logit<Act>(u), s, one_minus_s);
  return u * s;
}
template <Activation Act, bool Fast = false, typename A>
C10_HOST_DEVICE inline void activate_and_grad(A u, A& act, A& grad) {
  A s, one_minus_s;
  sigmoid_pair<Fast>(activation_logit<Act>(u), s, one_minus_s);
  act = u * s;
  grad = s * (A(1) + u * one_minus_s * activation_logit_grad<Act>(u));
}

#if !defined(__CUDACC__)
// ---- Vectorized forms, the same maths lane by lane --------------------------------------------

// exp(x) for x <= 0 (or NaN). Fast = true picks ATen's inline exp_u20 (a few ULP, ~3x faster than
// Sleef's exp, whose call dominates the whole kernel): good for bf16/fp16 results, whose rounding
// hides it, as ATen does for its own reduced-precision kernels; it flushes results below FLT_MIN to
// 0. Fast = false keeps Sleef's 1-ULP exp for fp32/fp64 results.
template <bool Fast>
inline at::vec::Vectorized<float> exp_nonpositive(const at::vec::Vectorized<float>& x) {
  if constexpr (Fast) {
    return x.exp_u20();
  } else {
    return x.exp();
  }
}
template <bool Fast>
inline at::vec::Vectorized<double> exp_nonpositive(const at::vec::Vectorized<double>& x) {
  return x.exp();
}

template <Activation Act, typename V>
inline V activation_logit_vec(const V& u) {
  using A = typename V::value_type;
  if constexpr (Act == Activation::Silu) {
    return u;
  } else {
    return u * at::vec::fmadd(V(A(2 * kSqrt2OverPi * kGeluCubic)), u * u, V(A(2 * kSqrt2OverPi)));
  }
}
template <Activation Act, typename V>
inline V activation_logit_grad_vec(const V& u) {
  using A = typename V::value_type;
  if constexpr (Act == Activation::Silu) {
    return V(A(1));
  } else {
    return at::vec::fmadd(V(A(3 * 2 * kSqrt2OverPi * kGeluCubic)), u * u, V(A(2 * kSqrt2OverPi)));
  }
}

template <bool FastExp, typename V>
inline void sigmoid_pair_vec(const V& k, V& s, V& one_minus_s) {
  using A = typename V::value_type;
  const V t = exp_nonpositive<FastExp>(V(A(0)) - k.abs());
  const V r = V(A(1)) / (V(A(1)) + t);
  const V tr = t * r;
  const V k_nonneg = k >= V(A(0));  // lane mask (false for NaN: then t, r, s are NaN anyway)
  s = V::blendv(tr, r, k_nonneg);
  one_minus_s = V::blendv(r, tr, k_nonneg);
}

// act(u), vectorized.
template <Activation Act, bool FastExp = false, typename V>
inline V activate_vec(const V& u) {
  V s, one_minus_s;
  sigmoid_pair_vec<FastExp>(activation_logit_vec<Act>(u), s, one_minus_s);
  return u * s;
}

// act(u) and act'(u) together (one exp), vectorized.
template <Activation Act, bool FastExp = false, typename V>
inline void activate_and_grad_vec(const V& u, V& act, V& grad) {
  using A = typename V::value_type;
  V s, one_minus_s;
  sigmoid_pair_vec<FastExp>(activation_logit_vec<Act>(u), s, one_minus_s);
  act = u * s;
  grad = s * at::vec::fmadd(u * one_minus_s, activation_logit_grad_vec<Act>(u), V(A(1)));
}

// The same, with the activation chosen at run time (the MoE kernels: one branch per vector).
template <bool FastExp = false, typename V>
inline V activate_vec(Activation act, const V& u) {
  return act == Activation::Silu ? activate_vec<Activation::Silu, FastExp>(u)
                                 : activate_vec<Activation::GeluTanh, FastExp>(u);
}
template <bool FastExp = false, typename V>
inline void activate_and_grad_vec(Activation act, const V& u, V& a, V& grad) {
  if (act == Activation::Silu) {
    activate_and_grad_vec<Activation::Silu, FastExp>(u, a, grad);
  } else {
    activate_and_grad_vec<Activation::GeluTanh, FastExp>(u, a, grad);
  }
}
#endif  // !__CUDACC__

}  // namespace gemma4
