// Warp and block reductions shared by the CUDA kernels. Every reduction is a fixed tree (xor
// shuffles, then warp results combined in warp order), so a result is bit-identical run to run.
#pragma once

namespace gemma4::cuda {

constexpr int kWarp = 32;

// Sum over the `width` lanes of each aligned group (width a power of two <= 32); every lane of the
// group gets the total.
template <typename A>
__device__ __forceinline__ A group_sum(A v, int width = kWarp) {
  for (int o = width / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o, width);
  return v;
}

template <typename A>
__device__ __forceinline__ A warp_sum(A v) { return group_sum(v, kWarp); }

// NaN-propagating max over a warp (as torch.max: any NaN gives NaN).
template <typename A>
__device__ __forceinline__ A nan_max(A a, A b) { return (a != a || a > b) ? a : b; }  // b NaN: a > b is false
template <typename A>
__device__ __forceinline__ A warp_max(A v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over a whole block of blockDim.x threads (a multiple of 32, at most 1024); every thread gets
// the total. `scratch` holds 32 values; the call ends with a barrier, so scratch can be reused.
template <typename A>
__device__ __forceinline__ A block_sum(A v, A* scratch) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  A t = lane < warps ? scratch[lane] : A(0);
  t = warp_sum(t);
  __syncthreads();
  return t;
}

// NaN-propagating max over a whole block, as block_sum.
template <typename A>
__device__ __forceinline__ A block_max(A v, A* scratch) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  v = warp_max(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  A t = lane < warps ? scratch[lane] : scratch[0];
  t = warp_max(t);
  __syncthreads();
  return t;
}

}  // namespace gemma4::cuda
