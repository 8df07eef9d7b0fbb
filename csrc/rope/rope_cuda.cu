// gemma4::rope and gemma4::rope_backward on CUDA: rotate-half (GPT-NeoX) rotary embedding, the
// CPU kernel's maths (rope_cpu.cpp): a_j = pos[b,t] * inv_freq[j] in fp32 (fp64 for fp64 x),
//   y[j] = x[j] cos a_j - x[j + hd/2] sin a_j,   y[j + hd/2] = x[j + hd/2] cos a_j + x[j] sin a_j,
// and the backward is the rotation by -a_j. Reference: rope in python/gemma4/ops/reference.py.
//
// One block per (b, t): it fills a cos/sin table of the hd/2 angles in shared memory (accurate
// sincos, as the CPU's 1-ulp Sleef), then rotates every head of that token with 16-byte packs of
// x[j..] and x[j + hd/2..] (scalar when hd/2 is not a multiple of the pack or x is unaligned).
// Moves 2 * B * T * nH * hd * sizeof(T) bytes (read x, write y): the floor.
#include <torch/library.h>

#include <ATen/ops/empty_like.h>

#include "rope/rope_checks.h"
#include "common/cuda_launch.cuh"
#include "common/cuda_vec.cuh"

namespace gemma4 {
namespace {

using cuda::acc_t;
using cuda::Pack;

constexpr int kThreads = 128;

__device__ __forceinline__ void sin_cos(float a, float* s, float* c) { sincosf(a, s, c); }
__device__ __forceinline__ void sin_cos(double a, double* s, double* c) { sincos(a, s, c); }

template <typename T, bool Vec>
__global__ void __launch_bounds__(kThreads) rope_kernel(const T* __restrict__ x, const int64_t* __restrict__ pos,
                                                        const float* __restrict__ inv_freq, T* __restrict__ y,
                                                        int64_t T_, int64_t H, int64_t hd, bool pos_per_batch,
                                                        bool inverse) {
  using A = acc_t<T>;
  constexpr int V = Vec ? Pack<T>::N : 1;
  extern __shared__ unsigned char smem_raw[];
  A* cos_t = reinterpret_cast<A*>(smem_raw);
  const int64_t half = hd / 2;
  A* sin_t = cos_t + half;
  const int64_t bt = blockIdx.x;  // b * T + t
  const A p = static_cast<A>(pos[pos_per_batch ? bt : bt % T_]);
  for (int64_t j = threadIdx.x; j < half; j += blockDim.x) {
    A s, c;
    sin_cos(p * static_cast<A>(inv_freq[j]), &s, &c);  // angle rounded in A, as the reference
    cos_t[j] = c;
    sin_t[j] = inverse ? -s : s;
  }
  __syncthreads();
  const int64_t steps = half / V;  // per head
  const T* xb = x + bt * H * hd;
  T* yb = y + bt * H * hd;
  for (int64_t i = threadIdx.x; i < H * steps; i += blockDim.x) {
    const int64_t h = i / steps, j = (i % steps) * V;
    const T* x1 = xb + h * hd + j;
    T* y1 = yb + h * hd + j;
    A a[V], b[V], o1[V], o2[V];
    if constexpr (Vec) {
      cuda::widen(cuda::load_pack(x1), a);
      cuda::widen(cuda::load_pack(x1 + half), b);
    } else {
      a[0] = static_cast<A>(x1[0]);
      b[0] = static_cast<A>(x1[half]);
    }
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const A c = cos_t[j + k], s = sin_t[j + k];
      o1[k] = fma(a[k], c, -(b[k] * s));
      o2[k] = fma(a[k], s, b[k] * c);
    }
    if constexpr (Vec) {
      cuda::store_pack(y1, cuda::narrow<T>(o1));
      cuda::store_pack(y1 + half, cuda::narrow<T>(o2));
    } else {
      y1[0] = static_cast<T>(o1[0]);
      y1[half] = static_cast<T>(o2[0]);
    }
  }
}

at::Tensor rope_apply(const char* op, const char* xname, const at::Tensor& x_in, const at::Tensor& positions_in,
                      const at::Tensor& inv_freq_in, bool inverse) {
  check_device(x_in, op, xname, c10::kCUDA);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const rope::RopeProblem p = rope::check_rope(op, xname, x_in, positions_in, inv_freq_in);
  const at::Tensor &x = p.x, &positions = p.positions, &inv_freq = p.inv_freq;
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
  const int64_t B = p.B, T_ = p.T, H = p.H, hd = p.hd;
  GEMMA4_CUDA_DISPATCH_FLOATS(x.scalar_type(), "gemma4::rope", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    const bool vec = (hd / 2) % Pack<T>::N == 0 && cuda::aligned16(x.const_data_ptr(), y.const_data_ptr());
    const size_t smem = size_t(hd) * sizeof(A);  // cos and sin of hd/2 angles
    const bool per_batch = p.P != 1;
    auto launch = [&](auto kernel) {
      kernel<<<B * T_, kThreads, smem, cuda::stream()>>>(x.const_data_ptr<T>(), positions.const_data_ptr<int64_t>(),
                                                         inv_freq.const_data_ptr<float>(), y.mutable_data_ptr<T>(),
                                                         T_, H, hd, per_batch, inverse);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (vec) launch(rope_kernel<T, true>); else launch(rope_kernel<T, false>);
  });
  return y;
}

at::Tensor rope_cuda(const at::Tensor& x, const at::Tensor& positions, const at::Tensor& inv_freq) {
  return rope_apply("gemma4::rope", "x", x, positions, inv_freq, /*inverse=*/false);
}

at::Tensor rope_backward_cuda(const at::Tensor& grad_out, const at::Tensor& positions, const at::Tensor& inv_freq) {
  return rope_apply("gemma4::rope_backward", "grad_out", grad_out, positions, inv_freq, /*inverse=*/true);
}

}  // namespace

TORCH_LIBRARY_IMPL(gemma4, CUDA, m) {
  m.impl("rope", &rope_cuda);
  m.impl("rope_backward", &rope_backward_cuda);
}

}  // namespace gemma4
