// The CPU qgemm on the 16-row tiled int4 layout (qgemm_problem.h's TiledProblem; made by
// python/gemma4/quant/formats.py tile16), and the conversion back to the row layout.
#pragma once
#include <optional>
#include <utility>

#include <ATen/core/Tensor.h>

namespace gemma4::quant {

// Tiled (qweight [T, K/8, 64], scales [T, K/32, 16]) -> the row layout (qweight [16 T, K/2], scales [16 T, K/32]):
// a transpose of 4-byte words, exact.
std::pair<at::Tensor, at::Tensor> untile16(const at::Tensor& qweight, const at::Tensor& scales);

// gemma4::qgemm's CPU op on tiled weights, after its argument checks (qgemm_tiled_cpu.cpp).
at::Tensor qgemm_tiled_cpu(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                           const std::optional<at::Tensor>& bias);

// Whether the tiled kernel serves x here (qgemm_cpu.cpp: bf16/fp16 x and the VNNI instruction set in use). The
// caller checks bf16 prefill's dequantize route first (takes_dequant_route, qgemm_cpu.h); where neither serves,
// slabs of the weight are turned back into rows.
bool tiled_kernel_runs(const at::Tensor& x);

}  // namespace gemma4::quant
