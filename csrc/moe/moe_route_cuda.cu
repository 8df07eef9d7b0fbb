// gemma4::moe_route and gemma4::moe_route_backward on CUDA; the CPU kernel's maths
// (moe_route_cpu.cpp), see there for the formulas. Reference: moe_route in
// python/gemma4/ops/reference.py.
//
// Forward: one warp per token row. Three sweeps over the row's E logits (they stay in L1):
// the max (NaN-propagating), the sum of exp(l - max), then top_k rounds of a warp arg-max. Each
// round picks the best element ranked strictly below the previous pick in the total order
// "larger p first, then lower index; NaN above every number" -- the CPU kernel's tie rule -- so no
// per-element "taken" marks are needed and any E works without shared memory. p = exp(l - max) / sum
// is recomputed in each round (identical bits each time). Lane k keeps pick k in registers (K <= 32;
// more slots go through the output), the sum over the picks is taken in k order, as the CPU kernel
// does, and each lane writes its renormalised, scaled weight. Reads N * E logits once, writes N * K
// (weight, index): the bytes are trivial; the K rounds of shuffles are the cost.
// Backward: one thread per row (K is small): r = softmax over the chosen logits, grad_logits on
// the chosen columns (zero elsewhere), g_k r_k per pair; then one block per expert sums g_k r_k over
// the pairs routed to it with a fixed-order tree, so grad_per_expert_scale is deterministic.
#include <torch/library.h>

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <c10/macros/Macros.h>

#include "moe/moe_checks.h"
#include "common/cuda_launch.cuh"
#include "common/cuda_reduce.cuh"
#include "common/cuda_vec.cuh"

namespace gemma4 {
namespace {

using cuda::acc_t;

constexpr int kWarpsPerBlock = 4;

// a ranks strictly above b: NaN above every number, else larger; equal values rank by index.
template <typename A>
__device__ __forceinline__ bool ranks_above(A a, int64_t ia, A b, int64_t ib) {
  const bool na = a != a, nb = b != b;
  if (na != nb) return na;
  if (!na && a != b) return a > b;
  return ia < ib;
}

// Scale type S is the logits' dtype or the accumulation type (others are converted on the host).
template <typename T, typename S>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) moe_route_kernel(const T* __restrict__ logits,
                                                                        const S* __restrict__ scale,
                                                                        acc_t<T>* __restrict__ weights,
                                                                        int64_t* __restrict__ indices, int64_t N,
                                                                        int64_t E, int64_t K) {
  using A = acc_t<T>;
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (n >= N) return;  // a whole warp leaves together
  const T* l = logits + n * E;
  A mx = -INFINITY;
  for (int64_t i = lane; i < E; i += 32) mx = cuda::nan_max(mx, static_cast<A>(l[i]));
  mx = cuda::warp_max(mx);
  A sum = 0;
  for (int64_t i = lane; i < E; i += 32) sum += exp(static_cast<A>(l[i]) - mx);
  sum = cuda::warp_sum(sum);
  const A inv = A(1) / sum;
  A* w = weights + n * K;
  int64_t* idx = indices + n * K;
  A prev = 0;
  int64_t prev_i = -1;  // nothing picked yet
  A my_p = 0;           // lane k keeps pick k (k < 32) in registers
  int64_t my_i = 0;
  for (int64_t k = 0; k < K; ++k) {
    A best = 0;
    int64_t best_i = -1;
    for (int64_t i = lane; i < E; i += 32) {
      const A p = exp(static_cast<A>(l[i]) - mx) * inv;
      if (prev_i >= 0 && !ranks_above(prev, prev_i, p, i)) continue;  // already picked
      if (best_i < 0 || ranks_above(p, i, best, best_i)) {
        best = p;
        best_i = i;
      }
    }
    for (int o = 16; o > 0; o /= 2) {
      const A ob = __shfl_xor_sync(0xffffffffu, best, o);
      const int64_t oi = __shfl_xor_sync(0xffffffffu, best_i, o);
      if (oi >= 0 && (best_i < 0 || ranks_above(ob, oi, best, best_i))) {
        best = ob;
        best_i = oi;
      }
    }
    if (k < 32 && lane == k) {
      my_p = best;
      my_i = best_i;
    }
    if (K > 32 && lane == 0) {  // many slots: keep the picks in the output (p for now)
      w[k] = best;
      idx[k] = best_i;
    }
    prev = best;
    prev_i = best_i;
  }
  if (K <= 32) {
    // Renormalise in slot order, as the CPU kernel: the sum is gathered by shuffles, not memory.
    A s = 0;
    for (int k = 0; k < K; ++k) s += __shfl_sync(0xffffffffu, my_p, k);
    if (lane < K) {
      w[lane] = my_p / s * static_cast<A>(scale[my_i]);
      idx[lane] = my_i;
    }
  } else if (lane == 0) {
    A s = 0;
    for (int64_t k = 0; k < K; ++k) s += w[k];
    for (int64_t k = 0; k < K; ++k) w[k] = w[k] / s * static_cast<A>(scale[idx[k]]);
  }
}

template <typename T, typename S>
__global__ void moe_route_backward_kernel(const acc_t<T>* __restrict__ grad_w, const T* __restrict__ logits,
                                          const S* __restrict__ scale, const int64_t* __restrict__ indices,
                                          T* __restrict__ grad_logits, acc_t<T>* __restrict__ gsr, int64_t N,
                                          int64_t E, int64_t K) {
  using A = acc_t<T>;
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  const T* l = logits + n * E;
  const int64_t* idx = indices + n * K;
  const A* g = grad_w + n * K;
  for (int64_t k = 0; k < K; ++k) {
    CUDA_KERNEL_ASSERT(idx[k] >= 0 && idx[k] < E && "gemma4::moe_route_backward: indices must be in [0, E)");
  }
  // r = softmax over the chosen logits.
  A mx = -INFINITY;
  for (int64_t k = 0; k < K; ++k) mx = cuda::nan_max(mx, static_cast<A>(l[idx[k]]));
  A s = 0;
  for (int64_t k = 0; k < K; ++k) s += exp(static_cast<A>(l[idx[k]]) - mx);
  auto r = [&](int64_t k) { return exp(static_cast<A>(l[idx[k]]) - mx) / s; };
  A dot = 0;  // sum_k g_k scale_k r_k
  for (int64_t k = 0; k < K; ++k) dot += g[k] * static_cast<A>(scale[idx[k]]) * r(k);
  for (int64_t k = 0; k < K; ++k) {
    gsr[n * K + k] = g[k] * r(k);
    // A column chosen twice gets the sum of its slots' terms, in slot order (as the CPU kernel).
    bool first = true;
    for (int64_t k2 = 0; k2 < k; ++k2) first = first && idx[k2] != idx[k];
    if (!first) continue;
    A acc = 0;
    for (int64_t k2 = k; k2 < K; ++k2) {
      if (idx[k2] == idx[k]) acc += r(k2) * (g[k2] * static_cast<A>(scale[idx[k2]]) - dot);
    }
    grad_logits[n * E + idx[k]] = static_cast<T>(acc);
  }
}

// grad_scale[e] = sum of gsr over the pairs with indices == e (block e; fixed-order tree).
template <typename A, typename S>
__global__ void __launch_bounds__(256) scale_grad_kernel(const A* __restrict__ gsr, const int64_t* __restrict__ indices,
                                                         int64_t P, S* __restrict__ grad_scale) {
  __shared__ A scratch[32];
  const int64_t e = blockIdx.x;
  A s = 0;
  for (int64_t p = threadIdx.x; p < P; p += blockDim.x) {
    if (indices[p] == e) s += gsr[p];
  }
  s = cuda::block_sum(s, scratch);
  if (threadIdx.x == 0) grad_scale[e] = static_cast<S>(s);
}

// Calls f(scale_ptr) with the scale as T or acc_t<T> (converting once when it is neither).
template <typename T, typename F>
void with_scale(const at::Tensor& scale, F&& f) {
  using A = acc_t<T>;
  if (scale.scalar_type() == c10::CppTypeToScalarType<T>::value) {
    f(scale.const_data_ptr<T>());
  } else {
    const at::Tensor s = scale.to(c10::CppTypeToScalarType<A>::value);
    f(s.const_data_ptr<A>());
  }
}

std::tuple<at::Tensor, at::Tensor> moe_route_cuda(const at::Tensor& logits_in, const at::Tensor& scale_in,
                                                  int64_t top_k) {
  constexpr const char* op = "gemma4::moe_route";
  check_device(logits_in, op, "logits", c10::kCUDA);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const moe::RouteProblem p = moe::check_route(op, logits_in, scale_in, top_k);
  const at::Tensor &logits = p.logits, &scale = p.scale;
  const int64_t N = p.N, E = p.E, K = p.K;
  const auto wdtype = moe::route_weights_dtype(p.dtype);
  at::Tensor weights = at::empty({N, K}, logits.options().dtype(wdtype));
  at::Tensor indices = at::empty({N, K}, logits.options().dtype(at::kLong));
  if (N == 0) return {weights, indices};
  GEMMA4_CUDA_DISPATCH_FLOATS(logits.scalar_type(), "gemma4::moe_route", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    with_scale<T>(scale, [&](auto sp) {
      using S = std::remove_const_t<std::remove_pointer_t<decltype(sp)>>;
      moe_route_kernel<T, S><<<cuda::ceil_div<int64_t>(N, kWarpsPerBlock), kWarpsPerBlock * 32, 0, cuda::stream()>>>(
          logits.const_data_ptr<T>(), sp, weights.mutable_data_ptr<A>(), indices.mutable_data_ptr<int64_t>(), N, E,
          K);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {weights, indices};
}

std::tuple<at::Tensor, at::Tensor> moe_route_backward_cuda(const at::Tensor& grad_weights_in,
                                                           const at::Tensor& logits_in, const at::Tensor& scale_in,
                                                           const at::Tensor& indices_in) {
  constexpr const char* op = "gemma4::moe_route_backward";
  check_device(logits_in, op, "logits", c10::kCUDA);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const moe::RouteProblem p = moe::check_route_backward(op, grad_weights_in, logits_in, scale_in, indices_in);
  const at::Tensor &logits = p.logits, &scale = p.scale, &indices = p.indices;
  const int64_t N = p.N, E = p.E, K = p.K;
  const auto wdtype = moe::route_weights_dtype(p.dtype);
  // Index range: a device-side assert in the kernel (a host check would need a sync).
  at::Tensor grad_logits = at::zeros_like(logits);
  at::Tensor grad_scale = at::empty_like(scale);
  if (N == 0) {
    grad_scale.zero_();
    return {grad_logits, grad_scale};
  }
  GEMMA4_CUDA_DISPATCH_FLOATS(logits.scalar_type(), "gemma4::moe_route_backward", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    const at::Tensor gw = p.grad_weights.to(wdtype);  // the forward's weights dtype
    at::Tensor gsr = at::empty({N, K}, logits.options().dtype(wdtype));
    with_scale<T>(scale, [&](auto sp) {
      using S = std::remove_const_t<std::remove_pointer_t<decltype(sp)>>;
      moe_route_backward_kernel<T, S><<<cuda::ceil_div<int64_t>(N, 128), 128, 0, cuda::stream()>>>(
          gw.const_data_ptr<A>(), logits.const_data_ptr<T>(), sp, indices.const_data_ptr<int64_t>(),
          grad_logits.mutable_data_ptr<T>(), gsr.mutable_data_ptr<A>(), N, E, K);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, scale.scalar_type(), "moe_route_scale_grad", [&] {
      scale_grad_kernel<A, scalar_t><<<E, 256, 0, cuda::stream()>>>(gsr.const_data_ptr<A>(),
                                                                   indices.const_data_ptr<int64_t>(), N * K,
                                                                   grad_scale.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {grad_logits, grad_scale};
}

}  // namespace

TORCH_LIBRARY_IMPL(gemma4, CUDA, m) {
  m.impl("moe_route", &moe_route_cuda);
  m.impl("moe_route_backward", &moe_route_backward_cuda);
}

}  // namespace gemma4
