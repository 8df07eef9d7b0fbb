// The Hopper tiled GEMM of the CUDA qgemm (qgemm_wgmma_sm90a.cu, compiled for sm_90a alone): what the generic
// CUDA code (qgemm_cuda.cu, any architecture) needs to plan and launch it. Only declared where the build has
// sm_90a code (GEMMA4_SM90A); the caller checks that the device is an sm_90 one.
#pragma once
#ifdef GEMMA4_SM90A
#include <c10/core/ScalarType.h>
#include <cuda.h>  // CUtensorMap

#include "quant/qgemm_tc.cuh"

namespace gemma4::quant_cuda {

// Weight rows per block: four consumer warpgroups of 64 rows each.
constexpr int kWgBN = 256;

// Blocks of the kernel for x rows `bm` (64 or 128) that fit on one SM (one).
int wgmma_resident_blocks(at::ScalarType x, at::ScalarType scales, int bits, int bm);

// Launches `blocks` blocks of the kernel on the current stream for the plan in `a` (tiles, split; partial
// workspace already set when a split is planned). x: bf16 or fp16; scales: bf16, fp16 or fp32. xmap: x [M, K]
// in boxes of 64 k x bm rows, 128-byte swizzle; wmap: the packed weight [N, K * bits / 8] bytes in boxes of
// 64 k's bytes x kWgBN rows, 32-byte (int4) or 64-byte (int8) swizzle.
void launch_wgmma_kernel(const TcArgs& a, const CUtensorMap& xmap, const CUtensorMap& wmap, at::ScalarType x,
                         at::ScalarType scales, int bits, int bm, int blocks);

}  // namespace gemma4::quant_cuda
#endif
