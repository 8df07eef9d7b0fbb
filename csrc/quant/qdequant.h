// Dequantizing packed weight rows on the CPU: to bf16 for qgemm_cpu.cpp's route for bf16 prefill on CPUs with a
// native bf16 GEMM, to float32 for the backward passes (qdequant_tensor.h). Pure pointers, no ATen: the AVX-512
// body is compiled alone with AVX-512 flags.
#pragma once
#include <cstdint>

namespace gemma4::quant {

// w[r, k] = bf16(q[r, k] * scale(r, k / (K / G))) for rows [r0, r1): the product in float32, rounded once to
// nearest even (NaN to 0x7FC0), exactly as c10::BFloat16(float) does. qw: the rows' packed weights from row 0
// ([rows, K/2] int4 in the Q4_0 nibble order, or [rows, K] int8); scale(r, g) = scales[r * rs + g * gs] float32
// (rs = G, gs = 1: rows of G; rs = 1, gs = 16: a 16-row tile's [G, 16]); w: [rows, K] bf16 bits. K is a multiple
// of 32 and of K / G.
void dequantize_rows_bf16_scalar(const uint8_t* qw, int bits, const float* scales, int64_t r0, int64_t r1, int64_t K,
                                 int64_t G, int64_t rs, int64_t gs, uint16_t* w);

// The same for one 16-row tile of the tiled int4 layout (qgemm_tiled.h: qweight [T, K/8, 64], row r's dword c at
// the tile's bytes 64 c + 4 r) and its scales [G, 16] float32: w [16, K], the same bits as the rows' route.
void dequantize_tile_bf16_scalar(const uint8_t* tile, const float* scales, int64_t K, int64_t G, uint16_t* w);

// w[r, k] = q[r, k] * scales[r * G + k / (K / G)] in float32 (the product rounded once, as ATen's float multiply)
// for rows [r0, r1): the CPU backward passes' slabs (qdequant_tensor.h). Same packed layout as above; w: [rows, K].
void dequantize_rows_f32(const uint8_t* qw, int bits, const float* scales, int64_t r0, int64_t r1, int64_t K,
                         int64_t G, float* w);

namespace avx512 {
// The same on AVX-512F/BW (qdequant_avx512.cpp), 32 weights a step; only call where the CPU has AVX-512.
void dequantize_rows_bf16(const uint8_t* qw, int bits, const float* scales, int64_t r0, int64_t r1, int64_t K,
                          int64_t G, int64_t rs, int64_t gs, uint16_t* w);
// The same, 128 weights of the 16 rows a register transpose, dequantized from the registers.
void dequantize_tile_bf16(const uint8_t* tile, const float* scales, int64_t K, int64_t G, uint16_t* w);
}  // namespace avx512

}  // namespace gemma4::quant
