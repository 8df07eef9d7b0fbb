// Host-side type dispatch of the CUDA qgemm's kernels (qgemm_cuda.cu, qgemm_wgmma_sm90a.cu): run-time dtypes
// and bit widths to template arguments.
#pragma once
#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace gemma4::quant_cuda {

// Calls f.template operator()<S>() for the scales' dtype.
template <typename F>
void dispatch_scale(at::ScalarType s, F&& f) {
  if (s == at::kBFloat16) {
    f.template operator()<c10::BFloat16>();
  } else if (s == at::kHalf) {
    f.template operator()<c10::Half>();
  } else {
    f.template operator()<float>();
  }
}

template <typename F>
void dispatch_bits(int bits, F&& f) {
  if (bits == 4) {
    f.template operator()<4>();
  } else {
    f.template operator()<8>();
  }
}

// Calls f.template operator()<T, MT>() for x's dtype: T the activation type, MT the MMA operand type.
// bf16/fp16 only: fp32 x takes the dequantize + cuBLAS path (see qgemm_cuda).
template <typename F>
void dispatch_x(at::ScalarType s, F&& f) {
  if (s == at::kBFloat16) {
    f.template operator()<c10::BFloat16, __nv_bfloat16>();
  } else {
    f.template operator()<c10::Half, __half>();
  }
}

}  // namespace gemma4::quant_cuda
