// Host-side helpers shared by the CUDA kernels (norm, rope, activation, moe, attention): the light
// ATen includes a kernel file needs (not <ATen/ATen.h>, which triples nvcc's compile time), the
// stream, the launch check, grid sizing and the dtype dispatch.
#pragma once
#include <cstdint>

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>  // C10_CUDA_KERNEL_LAUNCH_CHECK
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace gemma4::cuda {

inline cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

template <typename I>
constexpr I ceil_div(I a, I b) { return (a + b - 1) / b; }

// Streaming multiprocessors of the current device (cached per device by CUDA's runtime call cost:
// cudaDeviceGetAttribute is a few hundred nanoseconds, so cache it).
inline int sm_count() {
  static thread_local int device = -1, count = 0;
  const int d = c10::cuda::current_device();
  if (d != device) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, d));
    device = d;
  }
  return count;
}

// True when every pointer is 16-byte aligned: the condition for the 16-byte vector paths.
inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }
template <typename... P>
inline bool aligned16(const void* p, P... rest) { return aligned16(p) && aligned16(rest...); }

}  // namespace gemma4::cuda

// The float dtypes of every kernel: fp32, fp64, bf16, fp16 (same set as GEMMA4_DISPATCH_FLOATS).
#define GEMMA4_CUDA_DISPATCH_FLOATS(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, TYPE, NAME, __VA_ARGS__)
