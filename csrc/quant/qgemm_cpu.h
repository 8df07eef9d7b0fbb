// The CPU qgemm as a C++ function, for other CPU ops that run it on slices of a packed weight
// (gemma4::moe_experts_quant: each expert's gate_up / down). Same checks, routes and numbers as the
// gemma4::qgemm op, without a trip through the dispatcher.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>

#include <ATen/core/Tensor.h>

namespace gemma4::quant {

// y = x [..., K] @ dequant(qweight [N, K/2 | K], scales [N, G])^T (+ bias [N]) in x's dtype (qgemm_cpu.cpp).
at::Tensor qgemm_cpu(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                     const std::optional<at::Tensor>& bias);

// The CPU kernels' activation rounding, one rule for the row and the tiled layouts: x [..., K] bf16/fp16
// (contiguous) -> x16 [..., K] and scale [x.numel() / xblock] float32, x ~= x16 * scale per block of xblock
// activations, |x16| <= qmax (qgemm_cpu.cpp).
void quantize_x16(const at::Tensor& x, int64_t xblock, float qmax, int16_t* x16, float* scale);

// bf16 prefill's route on CPUs with a native bf16 GEMM (or when forced): whether M rows of x take it, and the
// route itself, y = x @ w^T (+ bias) with the weight dequantized to bf16 a slab of rows at a time by fill(n0, rows,
// w [rows, K]), each slab multiplied by torch's GEMM (qgemm_cpu.cpp). The tiled layout fills from its tiles.
using DequantRows = std::function<void(int64_t n0, int64_t rows, at::BFloat16* w)>;
bool takes_dequant_route(const at::Tensor& x, int64_t M);
at::Tensor qgemm_dequantized(const at::Tensor& x, int64_t N, const std::optional<at::Tensor>& bias,
                             at::IntArrayRef out_shape, const DequantRows& fill);
// qdequant.h's dequantization of one 16-row tile (the tiled int4 layout) on the best instruction set here.
using DequantTileBody = void (*)(const uint8_t* tile, const float* scales, int64_t K, int64_t G, uint16_t* w);
DequantTileBody dequant_tile_body();

// out[m, n0:n1] = src[m, n0:n1] for every row m of src [M, N] float32, rounded to out's dtype when out is
// bfloat16 or float16 (the kernels' float32 sums, a column range per thread).
void round_columns(const float* src, int64_t M, int64_t N, int64_t n0, int64_t n1, at::Tensor& out);

}  // namespace gemma4::quant
