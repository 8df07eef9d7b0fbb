// gemma4::gated_activation and gemma4::gated_activation_backward on CUDA:
//   y = act(gate) * up;  grad_gate = grad_out * up * act'(gate),  grad_up = grad_out * act(gate)
// in fp32 (fp64 for fp64), rounded once; act is the CPU kernels' own scalar function
// (common/activation_math.h through common/cuda_activation.cuh), so CPU and CUDA agree to rounding.
// Reference: gated_activation in python/gemma4/ops/reference.py.
//
// Elementwise and memory-bound: a grid-stride loop over 16-byte packs (8 bf16/fp16, 4 fp32, 2 fp64)
// when every pointer is 16-byte aligned, the remainder (and unaligned tensors) element by element.
// Forward moves 3 * n * sizeof(T) bytes, backward 5 * n * sizeof(T): the floors.
#include <torch/library.h>

#include <ATen/ops/empty_like.h>

#include "activation/activation_checks.h"
#include "common/cuda_activation.cuh"
#include "common/cuda_launch.cuh"
#include "common/cuda_vec.cuh"

namespace gemma4 {
namespace {

using cuda::acc_t;
using cuda::Pack;

constexpr int kThreads = 256;

template <typename T, Activation Act>
__device__ __forceinline__ acc_t<T> forward_one(T g, T u) {
  return cuda::activate<Act, cuda::kFastExpFor<T>>(static_cast<acc_t<T>>(g)) * static_cast<acc_t<T>>(u);
}

// Packs [0, n_packs) when Vec (the first n_packs * N elements), then elements [tail0, n).
template <typename T, Activation Act, bool Vec>
__global__ void __launch_bounds__(kThreads) gated_forward_kernel(const T* __restrict__ gate, const T* __restrict__ up,
                                                                 T* __restrict__ y, int64_t n) {
  using A = acc_t<T>;
  constexpr int N = Pack<T>::N;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t tail0 = 0;
  if constexpr (Vec) {
    const int64_t n_packs = n / N;
    for (int64_t p = tid; p < n_packs; p += stride) {
      const Pack<T> g = cuda::load_pack(gate + p * N), u = cuda::load_pack(up + p * N);
      A o[N];
#pragma unroll
      for (int i = 0; i < N; ++i) o[i] = forward_one<T, Act>(g.v[i], u.v[i]);
      cuda::store_pack(y + p * N, cuda::narrow<T>(o));
    }
    tail0 = n_packs * N;
  }
  for (int64_t i = tail0 + tid; i < n; i += stride) y[i] = static_cast<T>(forward_one<T, Act>(gate[i], up[i]));
}

template <typename T, Activation Act>
__device__ __forceinline__ void backward_one(T go, T g, T u, acc_t<T>& gg, acc_t<T>& gu) {
  using A = acc_t<T>;
  A act, dact;
  cuda::activate_and_grad<Act, cuda::kFastExpFor<T>>(static_cast<A>(g), act, dact);
  const A gf = static_cast<A>(go);
  gg = gf * static_cast<A>(u) * dact;  // g * v * dact: the CPU kernel's order
  gu = gf * act;
}

template <typename T, Activation Act, bool Vec>
__global__ void __launch_bounds__(kThreads) gated_backward_kernel(const T* __restrict__ grad_out,
                                                                  const T* __restrict__ gate, const T* __restrict__ up,
                                                                  T* __restrict__ grad_gate, T* __restrict__ grad_up,
                                                                  int64_t n) {
  using A = acc_t<T>;
  constexpr int N = Pack<T>::N;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t tail0 = 0;
  if constexpr (Vec) {
    const int64_t n_packs = n / N;
    for (int64_t p = tid; p < n_packs; p += stride) {
      const Pack<T> go = cuda::load_pack(grad_out + p * N), g = cuda::load_pack(gate + p * N),
                    u = cuda::load_pack(up + p * N);
      A gg[N], gu[N];
#pragma unroll
      for (int i = 0; i < N; ++i) backward_one<T, Act>(go.v[i], g.v[i], u.v[i], gg[i], gu[i]);
      cuda::store_pack(grad_gate + p * N, cuda::narrow<T>(gg));
      cuda::store_pack(grad_up + p * N, cuda::narrow<T>(gu));
    }
    tail0 = n_packs * N;
  }
  for (int64_t i = tail0 + tid; i < n; i += stride) {
    A gg, gu;
    backward_one<T, Act>(grad_out[i], gate[i], up[i], gg, gu);
    grad_gate[i] = static_cast<T>(gg);
    grad_up[i] = static_cast<T>(gu);
  }
}

// Enough blocks to fill the GPU several times over, no more (the loop strides the rest).
int grid_for(int64_t work_items) {
  const int64_t want = cuda::ceil_div<int64_t>(std::max<int64_t>(work_items, 1), kThreads);
  return static_cast<int>(std::min<int64_t>(want, int64_t(cuda::sm_count()) * 16));
}

at::Tensor gated_activation_cuda(const at::Tensor& gate_in, const at::Tensor& up_in, c10::string_view act_name) {
  constexpr const char* op = "gemma4::gated_activation";
  check_device(gate_in, op, "gate", c10::kCUDA);
  const c10::cuda::CUDAGuard guard(gate_in.device());
  const activation::GatedProblem p = activation::check_gated_activation(op, gate_in, up_in, act_name);
  const at::Tensor &gate = p.gate, &up = p.up;
  const Activation act = p.act;
  at::Tensor y = at::empty_like(gate);
  const int64_t n = p.n;
  if (n == 0) return y;
  GEMMA4_CUDA_DISPATCH_FLOATS(gate.scalar_type(), "gemma4::gated_activation", [&] {
    using T = scalar_t;
    const bool vec = cuda::aligned16(gate.const_data_ptr(), up.const_data_ptr(), y.const_data_ptr());
    GEMMA4_DISPATCH_ACTIVATION(act, Act, [&] {
      const T* g = gate.const_data_ptr<T>();
      const T* u = up.const_data_ptr<T>();
      T* o = y.mutable_data_ptr<T>();
      if (vec) {
        gated_forward_kernel<T, Act, true><<<grid_for(n / Pack<T>::N), kThreads, 0, cuda::stream()>>>(g, u, o, n);
      } else {
        gated_forward_kernel<T, Act, false><<<grid_for(n), kThreads, 0, cuda::stream()>>>(g, u, o, n);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> gated_activation_backward_cuda(const at::Tensor& grad_out_in,
                                                                  const at::Tensor& gate_in, const at::Tensor& up_in,
                                                                  c10::string_view act_name) {
  constexpr const char* op = "gemma4::gated_activation_backward";
  check_device(gate_in, op, "gate", c10::kCUDA);
  const c10::cuda::CUDAGuard guard(gate_in.device());
  const activation::GatedProblem p =
      activation::check_gated_activation_backward(op, grad_out_in, gate_in, up_in, act_name);
  const at::Tensor &gate = p.gate, &up = p.up, &grad_out = p.grad_out;
  const Activation act = p.act;
  at::Tensor grad_gate = at::empty_like(gate), grad_up = at::empty_like(up);
  const int64_t n = p.n;
  if (n == 0) return {grad_gate, grad_up};
  GEMMA4_CUDA_DISPATCH_FLOATS(gate.scalar_type(), "gemma4::gated_activation_backward", [&] {
    using T = scalar_t;
    const bool vec = cuda::aligned16(grad_out.const_data_ptr(), gate.const_data_ptr(), up.const_data_ptr(),
                                     grad_gate.const_data_ptr(), grad_up.const_data_ptr());
    GEMMA4_DISPATCH_ACTIVATION(act, Act, [&] {
      const T* go = grad_out.const_data_ptr<T>();
      const T* g = gate.const_data_ptr<T>();
      const T* u = up.const_data_ptr<T>();
      T* gg = grad_gate.mutable_data_ptr<T>();
      T* gu = grad_up.mutable_data_ptr<T>();
      if (vec) {
        gated_backward_kernel<T, Act, true><<<grid_for(n / Pack<T>::N), kThreads, 0, cuda::stream()>>>(go, g, u, gg,
                                                                                                       gu, n);
      } else {
        gated_backward_kernel<T, Act, false><<<grid_for(n), kThreads, 0, cuda::stream()>>>(go, g, u, gg, gu, n);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {grad_gate, grad_up};
}

}  // namespace

TORCH_LIBRARY_IMPL(gemma4, CUDA, m) {
  m.impl("gated_activation", &gated_activation_cuda);
  m.impl("gated_activation_backward", &gated_activation_backward_cuda);
}

}  // namespace gemma4
