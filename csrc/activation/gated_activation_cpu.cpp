// gemma4::gated_activation and gemma4::gated_activation_backward on CPU:
//   y = act(gate) * up,  act = gelu_tanh (GeGLU, transformers' gelu_pytorch_tanh) or silu (SwiGLU)
//   grad_gate = grad_out * up * act'(gate),  grad_up = grad_out * act(gate)
// computed in fp32 (fp64 for fp64 inputs) and rounded once to the inputs' dtype.
// Reference: gated_activation in python/gemma4/ops/reference.py.
//
// Elementwise over the flattened tensors: at::parallel_for over blocks, one fused vectorized pass
// (the reference makes five: two upcasts, gelu, multiply, downcast). The activation is a template
// parameter so the inner loop has no branch; its maths is activate_vec / activate_and_grad_vec in
// common/activation_math.h (u * sigmoid(k(u)), one exp per element).
#include <torch/library.h>

#include "activation/activation_checks.h"
#include "common/activation_math.h"
#include "common/vec_utils.h"

namespace gemma4 {
namespace {

constexpr int64_t kGrain = 16384;  // elements per task: a few microseconds of work

// bf16/fp16 results use the fast exp (see exp_nonpositive); fp32/fp64 the 1-ULP one.
template <typename T>
constexpr bool kFastExp = c10::is_reduced_floating_point_v<T>;

template <typename T, Activation Act>
void gated_forward_kernel(const T* gate, const T* up, T* y, int64_t n) {
  using IO = VecIO<T>;
  using V = typename IO::V;
  constexpr int N = IO::N;
  at::parallel_for(0, n, kGrain, [&](int64_t i0, int64_t i1) {
    int64_t i = i0;
    for (; i + N <= i1; i += N) IO::store(y + i, activate_vec<Act, kFastExp<T>>(IO::load(gate + i)) * IO::load(up + i));
    if (i < i1) {
      const int m = static_cast<int>(i1 - i);
      IO::store(y + i, activate_vec<Act, kFastExp<T>>(IO::load(gate + i, m)) * IO::load(up + i, m), m);
    }
  });
}

template <typename T, Activation Act>
void gated_backward_kernel(const T* grad_out, const T* gate, const T* up, T* grad_gate, T* grad_up, int64_t n) {
  using IO = VecIO<T>;
  using V = typename IO::V;
  constexpr int N = IO::N;
  at::parallel_for(0, n, kGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i += N) {
      const int m = static_cast<int>(std::min<int64_t>(N, i1 - i));
      const bool full = m == N;
      const V g = full ? IO::load(grad_out + i) : IO::load(grad_out + i, m);
      const V u = full ? IO::load(gate + i) : IO::load(gate + i, m);
      const V v = full ? IO::load(up + i) : IO::load(up + i, m);
      V act, dact;
      activate_and_grad_vec<Act, kFastExp<T>>(u, act, dact);
      const V gg = g * v * dact, gu = g * act;
      if (full) {
        IO::store(grad_gate + i, gg);
        IO::store(grad_up + i, gu);
      } else {
        IO::store(grad_gate + i, gg, m);
        IO::store(grad_up + i, gu, m);
      }
    }
  });
}

at::Tensor gated_activation_cpu(const at::Tensor& gate, const at::Tensor& up, c10::string_view activation) {
  constexpr const char* op = "gemma4::gated_activation";
  check_device(gate, op, "gate", c10::kCPU);
  const activation::GatedProblem p = activation::check_gated_activation(op, gate, up, activation);
  at::Tensor y = at::empty(p.gate.sizes(), p.gate.options());  // p.gate is contiguous
  if (p.n == 0) return y;
  GEMMA4_DISPATCH_FLOATS(p.dtype, "gemma4::gated_activation", [&] {
    const scalar_t* g = p.gate.const_data_ptr<scalar_t>();
    const scalar_t* u = p.up.const_data_ptr<scalar_t>();
    scalar_t* o = y.mutable_data_ptr<scalar_t>();
    if (p.act == Activation::GeluTanh) {
      gated_forward_kernel<scalar_t, Activation::GeluTanh>(g, u, o, p.n);
    } else {
      gated_forward_kernel<scalar_t, Activation::Silu>(g, u, o, p.n);
    }
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> gated_activation_backward_cpu(const at::Tensor& grad_out, const at::Tensor& gate,
                                                                 const at::Tensor& up, c10::string_view activation) {
  constexpr const char* op = "gemma4::gated_activation_backward";
  check_device(gate, op, "gate", c10::kCPU);
  const activation::GatedProblem p = activation::check_gated_activation_backward(op, grad_out, gate, up, activation);
  at::Tensor grad_gate = at::empty_like(p.gate), grad_up = at::empty_like(p.up);
  if (p.n == 0) return {grad_gate, grad_up};
  GEMMA4_DISPATCH_FLOATS(p.dtype, "gemma4::gated_activation_backward", [&] {
    const scalar_t* go = p.grad_out.const_data_ptr<scalar_t>();
    const scalar_t* g = p.gate.const_data_ptr<scalar_t>();
    const scalar_t* u = p.up.const_data_ptr<scalar_t>();
    scalar_t* gg = grad_gate.mutable_data_ptr<scalar_t>();
    scalar_t* gu = grad_up.mutable_data_ptr<scalar_t>();
    if (p.act == Activation::GeluTanh) {
      gated_backward_kernel<scalar_t, Activation::GeluTanh>(go, g, u, gg, gu, p.n);
    } else {
      gated_backward_kernel<scalar_t, Activation::Silu>(go, g, u, gg, gu, p.n);
    }
  });
  return {grad_gate, grad_up};
}

}  // namespace

TORCH_LIBRARY_IMPL(gemma4, CPU, m) {
  m.impl("gated_activation", &gated_activation_cpu);
  m.impl("gated_activation_backward", &gated_activation_backward_cpu);
}

}  // namespace gemma4
