// Pieces of the warpgroup MMA (wgmma, sm_90a) shared by the Hopper GEMM (qgemm_wgmma_sm90a.cu) and the
// warpgroup x-resident GEMV (qgemv_resident_wgmma_sm90a.cu): the shared-memory descriptor of a K-major tile with
// 128-byte swizzle, and the register fence around asynchronous MMAs. Included only by *_sm90a.cu files.
#pragma once
#include <cstdint>

namespace gemma4::quant_cuda {

// Shared-memory matrix descriptor of a K-major tile with 128-byte swizzle: rows of 64 16-bit k, eight-row
// groups 1024 bytes apart (stride byte offset), leading byte offset unused (1), tile base 1024-byte aligned.
// A k16 step j of the tile is the descriptor plus 2 j (its 32 bytes, in 16-byte units of the start address).
__device__ __forceinline__ uint64_t swizzled_tile_descriptor(uint32_t smem_addr) {
  return uint64_t((smem_addr & 0x3FFFFu) >> 4) | (uint64_t(1) << 16) | (uint64_t(1024 >> 4) << 32) |
         (uint64_t(1) << 62);
}

// Keeps the compiler from moving reads or writes of v across the point where the asynchronous MMAs are known
// to be done with it.
template <int N>
__device__ __forceinline__ void fence_registers(float (&v)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(v[i])::"memory");
}

}  // namespace gemma4::quant_cuda
