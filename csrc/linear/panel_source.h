// A weight that the packed GEMM (linear_cpu.cpp, linear_gemm.h) reads through a packing function instead of
// from memory: the quantized CPU qgemm's prefill route (quant/qgemm_packed_cpu.cpp) dequantizes its packed
// levels straight into the GEMM's fp32 micro-panels, so no dequantized copy of the weight exists anywhere.
#pragma once
#include <cstdint>
#include <optional>

#include <ATen/core/Tensor.h>

namespace gemma4::linear {

struct PanelSource {
  // dst[k * kNR + j] = float(w(n + j, k0 + k)) for j < cols (<= kNR; 0 beyond), k < kc: linear_pack.h's
  // micro-panel. k0 is a multiple of the GEMM's k-block (128).
  void (*pack)(const void* ctx, int64_t n, int64_t cols, int64_t k0, int64_t kc, float* dst);
  const void* ctx;
  int64_t N, K;
};

// y = x @ w^T (+ bias) for w given by `w.pack`: x [..., K] fp32 / bf16 / fp16, bias [N] in x's dtype, y in x's
// dtype, fp32 sums rounded once; the AVX2 6 x 16 tile (linear_gemm.h), whatever the CPU.
at::Tensor gemm_from_panels(const PanelSource& w, const at::Tensor& x, const std::optional<at::Tensor>& bias);

}  // namespace gemma4::linear
