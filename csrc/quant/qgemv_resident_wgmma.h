// The warpgroup x-resident int4 GEMV (qgemv_resident_wgmma_sm90a.cu, compiled for sm_90a alone): what the generic
// CUDA code (qgemm_cuda.cu) needs to launch it. Only declared where the build has sm_90a code (GEMMA4_SM90A); the
// caller checks that the device is an sm_90 one and that the x-resident GEMV fits (resident_gemv_fits).
#pragma once
#ifdef GEMMA4_SM90A
#include <ATen/core/TensorBody.h>

namespace gemma4::quant_cuda {

struct ResidentArgs;

// y = x @ dequant(W)^T (+ bias) for the operands in `a` (qgemv_resident.cuh's, up to 16 rows of bf16 / fp16 x) on
// the current stream; `options` are x's (the partial sums' workspace is allocated on its device).
void launch_resident_wgmma(const ResidentArgs& a, at::ScalarType x, at::ScalarType scales,
                           const at::TensorOptions& options);

}  // namespace gemma4::quant_cuda
#endif
