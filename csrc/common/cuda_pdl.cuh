// Programmatic dependent launch (sm_90): a kernel launched with launch_dependent may start while the kernel
// before it on the stream is still running, and waits for it (pdl_wait) only where it reads what that kernel
// wrote. Why: a small kernel ahead of a large one (the GEMV's x in fragment order) otherwise costs its own run
// plus the gap between the two launches, a few microseconds of a 30-50 us GEMV; with the launch overlapped the
// large kernel's prologue and first weight copies run under it. On older GPUs, and in kernels compiled for
// them, every call here is a plain launch or a no-op.
#pragma once
#include <ATen/cuda/CUDAContext.h>  // getCurrentDeviceProperties
#include <c10/cuda/CUDAException.h>

#include "common/cuda_launch.cuh"

namespace gemma4::cuda {

// Blocks until the grids this one depends on have finished and their writes are visible. Call it before the
// first read of anything the kernel before wrote; before it, only its inputs from earlier work may be read.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// Lets the kernel launched after this one (with launch_dependent) start before this one ends. Its pdl_wait
// still waits for all of this kernel, so this may come before this kernel's writes.
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// kernel<<<grid, block, smem, current stream>>>(args...), allowed to overlap the kernel before it on the
// stream on sm_90 and later (the kernel must call pdl_wait before reading that kernel's output).
template <typename... Params, typename... Args>
void launch_dependent(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream();
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = at::cuda::getCurrentDeviceProperties()->major >= 9 ? 1 : 0;
  C10_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

}  // namespace gemma4::cuda
