// gemma4::softcap_cross_entropy on CUDA: the CPU kernel's maths and rounding
// (softcap_cross_entropy_cpu.cpp), one block per row, three passes over the row:
//   1. c = round(cap * round(tanh(round(x / cap)))) and the block max; with a cap the rounded tanh is
//      written over x (the later passes rebuild c from it, and the derivative needs it);
//   2. the block sum of exp(c - max);
//   3. the gradient w * softmax(c) * (1 - tanh^2), written over the row; then thread 0 fixes the target
//      element (w * (p - 1) * (1 - tanh^2)) and writes the row's loss.
// Each thread walks the same columns in every pass (16-byte packs when the row allows), so pass 2 and 3
// read back what the same thread wrote. DRAM traffic per element: read + write (pass 1, capped), read
// (2), read + write (3): 10 bytes in bf16, against ~40 for the composed torch ops, with no temporary.
// A target outside [0, V) cannot raise without a host sync: that row's loss is NaN and its gradient
// is w * softmax * (1 - tanh^2) with no -w (the CPU kernel raises).
// Reference: softcap_cross_entropy in python/gemma4/ops/reference.py.
#include <torch/library.h>

#include <ATen/ops/empty.h>

#include <limits>

#include "common/activation_math.h"  // exp_maybe_fast
#include "common/cuda_launch.cuh"
#include "common/cuda_reduce.cuh"
#include "common/cuda_vec.cuh"
#include "loss/loss_checks.h"

namespace gemma4 {
namespace {

using cuda::acc_t;
using cuda::Pack;

constexpr int kThreads = 512;

template <typename T, typename A>
__device__ __forceinline__ A round_to(A v) { return static_cast<A>(static_cast<T>(v)); }

// held * cap rounded as a product of its own: nvcc would otherwise fuse it into the subtraction that follows
// (an FMA) in one pass and not in another, and the max, the sum and the target's logit would see different c.
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

// Elements [j, j + W) of a row (W = 1 or a 16-byte pack).
template <typename T, int W, typename A>
__device__ __forceinline__ void load_w(const T* p, int64_t j, A (&a)[W]) {
  if constexpr (W > 1) cuda::widen(cuda::load_pack(p + j), a); else a[0] = static_cast<A>(p[j]);
}
template <typename T, int W, typename A>
__device__ __forceinline__ void store_w(T* p, int64_t j, const A (&a)[W]) {
  if constexpr (W > 1) cuda::store_pack(p + j, cuda::narrow<T>(a)); else p[j] = static_cast<T>(a[0]);
}

template <typename T, bool Vec, bool Cap>
__global__ void __launch_bounds__(kThreads) softcap_xent_kernel(T* __restrict__ logits,
                                                                const int64_t* __restrict__ targets,
                                                                const float* __restrict__ row_weight,
                                                                acc_t<T>* __restrict__ losses, int64_t V,
                                                                acc_t<T> cap) {
  using A = acc_t<T>;
  constexpr int W = Vec ? Pack<T>::N : 1;
  constexpr bool kFast = !std::is_same_v<T, A>;  // bf16/fp16 results hide __expf's few ULP
  __shared__ A scratch[32];
  T* row = logits + int64_t(blockIdx.x) * V;
  auto capped = [&](A held) { return Cap ? round_to<T>(mul_rn(held, cap)) : held; };

  A mx = -std::numeric_limits<A>::infinity();
  for (int64_t j = int64_t(threadIdx.x) * W; j < V; j += kThreads * W) {
    A a[W];
    load_w<T, W>(row, j, a);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      if constexpr (Cap) a[k] = round_to<T>(tanh(round_to<T>(a[k] / cap)));
      mx = cuda::nan_max(mx, capped(a[k]));
    }
    if constexpr (Cap) store_w<T, W>(row, j, a);
  }
  mx = cuda::block_max(mx, scratch);

  A sum = 0;
  for (int64_t j = int64_t(threadIdx.x) * W; j < V; j += kThreads * W) {
    A a[W];
    load_w<T, W>(row, j, a);
#pragma unroll
    for (int k = 0; k < W; ++k) sum += exp_maybe_fast<kFast>(capped(a[k]) - mx);
  }
  const A log_sum = log(cuda::block_sum(sum, scratch));

  const int64_t target = targets[blockIdx.x];
  const A w = row_weight[blockIdx.x];
  const bool valid = target >= 0 && target < V;
  const A held_t = valid ? static_cast<A>(row[target]) : A(0);
  __syncthreads();  // every thread has read the target element before pass 3 overwrites it

  for (int64_t j = int64_t(threadIdx.x) * W; j < V; j += kThreads * W) {
    A a[W];
    load_w<T, W>(row, j, a);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      A g = exp_maybe_fast<kFast>((capped(a[k]) - mx) - log_sum) * w;
      if constexpr (Cap) g = g * (A(1) - a[k] * a[k]);
      a[k] = g;
    }
    store_w<T, W>(row, j, a);
  }
  __syncthreads();  // pass 3 is done before thread 0 rewrites the target element
  if (threadIdx.x == 0) {
    if (valid) {
      const A logp_t = (capped(held_t) - mx) - log_sum;
      A g = exp(logp_t) * w - w;
      if constexpr (Cap) g = g * (A(1) - held_t * held_t);
      row[target] = static_cast<T>(g);
      losses[blockIdx.x] = -(logp_t * w);
    } else {
      losses[blockIdx.x] = std::numeric_limits<A>::quiet_NaN();
    }
  }
}

at::Tensor softcap_cross_entropy_cuda(const at::Tensor& logits, const at::Tensor& targets,
                                      const at::Tensor& row_weight, std::optional<double> softcap) {
  constexpr const char* op = "gemma4::softcap_cross_entropy";
  check_device(logits, op, "logits", c10::kCUDA);
  const c10::cuda::CUDAGuard guard(logits.device());
  const loss::XentProblem p = loss::check_softcap_cross_entropy(op, logits, targets, row_weight, softcap);
  at::Tensor losses;
  GEMMA4_CUDA_DISPATCH_FLOATS(logits.scalar_type(), op, [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    losses = at::empty({p.n}, logits.options().dtype(c10::CppTypeToScalarType<A>::value));
    if (p.n == 0) return;
    const bool vec = p.V % Pack<T>::N == 0 && cuda::aligned16(logits.const_data_ptr());
    auto launch = [&]<bool Vec, bool Cap>() {
      softcap_xent_kernel<T, Vec, Cap><<<p.n, kThreads, 0, cuda::stream()>>>(
          logits.mutable_data_ptr<T>(), targets.const_data_ptr<int64_t>(), row_weight.const_data_ptr<float>(),
          losses.mutable_data_ptr<A>(), p.V, static_cast<A>(p.cap));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (vec) {
      if (p.has_cap) launch.template operator()<true, true>(); else launch.template operator()<true, false>();
    } else {
      if (p.has_cap) launch.template operator()<false, true>(); else launch.template operator()<false, false>();
    }
  });
  return losses;
}

}  // namespace

TORCH_LIBRARY_IMPL(gemma4, CUDA, m) { m.impl("softcap_cross_entropy", &softcap_cross_entropy_cuda); }

}  // namespace gemma4
