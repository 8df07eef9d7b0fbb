// Packed int4 / int8 weight -> a dense [N, K] copy in bf16, fp16 or fp32: the workspace of the CUDA paths that
// hand a dequantized weight to a dense kernel (qgemm_cuda.cu's large-M route to cuBLAS, moe_experts_quant_cuda.cu's
// prefill route to gemma4::moe_experts' grouped GEMMs). Each value is rounded once from the exact q * scale, as
// plain PyTorch's dequant(W).to(dtype) does. Reference: gemma4.ops.reference.dequantize; layout: qgemm_problem.h.
#pragma once
#include <c10/cuda/CUDAException.h>

#include <ATen/ops/empty.h>

#include "common/cuda_launch.cuh"
#include "common/cuda_vec.cuh"
#include "quant/qgemm_cuda.cuh"  // scale_to_float, int4_levels, int8_level
#include "quant/qgemm_cuda_dispatch.h"

namespace gemma4::quant_cuda {

// One thread per 32-weight run: w[n, k] = q * scale computed exactly in fp32, rounded once to T.
template <typename S, int BITS, typename T>
__global__ void qdequant_kernel(const uint8_t* __restrict__ qw, const S* __restrict__ scales, T* __restrict__ w,
                                int64_t N, int64_t K, int G, int group) {
  const int64_t runs = K / 32, i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * runs) return;
  const int64_t n = i / runs, r = i % runs;
  const float s = scale_to_float(scales[n * G + r * 32 / group]);
  float v[32];
  if constexpr (BITS == 4) {
    const uint4 b = *reinterpret_cast<const uint4*>(qw + n * (K / 2) + r * 16);
    const uint32_t words[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const float2 q = int4_levels(words[j / 4], j % 4);
      v[j] = q.x * s;
      v[j + 16] = q.y * s;
    }
  } else {
    const uint4* src = reinterpret_cast<const uint4*>(qw + n * K + r * 32);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const uint4 b = src[h];
      const uint32_t words[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
      for (int j = 0; j < 16; ++j)
        v[16 * h + j] = int8_level(words[j / 4], j % 4) * s;
    }
  }
  constexpr int V = cuda::Pack<T>::N;
  T* out = w + n * K + r * 32;
#pragma unroll
  for (int p = 0; p < 32 / V; ++p) {
    cuda::Pack<T> pk;
#pragma unroll
    for (int j = 0; j < V; ++j) pk.v[j] = static_cast<T>(v[p * V + j]);
    cuda::store_pack(out + p * V, pk);
  }
}

// qweight [N, K/2 | K] and scales [N, G], both contiguous -> w [N, K] in dtype.
inline at::Tensor dequantize_cuda(const at::Tensor& qweight, const at::Tensor& scales, int bits, int64_t K,
                                  at::ScalarType dtype) {
  const int64_t N = qweight.size(0);
  at::Tensor w = at::empty({N, K}, scales.options().dtype(dtype));  // [N, K]
  const int G = static_cast<int>(scales.size(1)), group = static_cast<int>(K / G);
  const int64_t threads = N * (K / 32);
  dispatch_scale(dtype, [&]<typename T>() {  // the output's dtype: bf16, fp16 or fp32, as the scales'
    dispatch_bits(bits, [&]<int BITS>() {
      dispatch_scale(scales.scalar_type(), [&]<typename S>() {
        qdequant_kernel<S, BITS, T><<<cuda::ceil_div<int64_t>(threads, 256), 256, 0, cuda::stream()>>>(
            static_cast<const uint8_t*>(qweight.const_data_ptr()), scales.const_data_ptr<S>(),
            w.mutable_data_ptr<T>(), N, K, G, group);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
  return w;
}

}  // namespace gemma4::quant_cuda
