// Dequantizing packed weight rows to bf16 on the CPU (qgemm_cpu.cpp's route for bf16 prefill on CPUs with a
// native bf16 GEMM). Pure pointers, no ATen: the AVX-512 body is compiled alone with AVX-512 flags.
#pragma once
#include <cstdint>

namespace gemma4::quant {

// w[r, k] = bf16(q[r, k] * scales[r, k / (K / G)]) for rows [r0, r1): the product in float32, rounded once to
// nearest even (NaN to 0x7FC0), exactly as c10::BFloat16(float) does. qw: the rows' packed weights from row 0
// ([rows, K/2] int4 in the Q4_0 nibble order, or [rows, K] int8); scales: [rows, G] float32; w: [rows, K] bf16
// bits. K is a multiple of 32 and of K / G.
void dequantize_rows_bf16_scalar(const uint8_t* qw, int bits, const float* scales, int64_t r0, int64_t r1, int64_t K,
                                 int64_t G, uint16_t* w);

namespace avx512 {
// The same on AVX-512F/BW (qdequant_avx512.cpp), 32 weights a step; only call where the CPU has AVX-512.
void dequantize_rows_bf16(const uint8_t* qw, int bits, const float* scales, int64_t r0, int64_t r1, int64_t K,
                          int64_t G, uint16_t* w);
}  // namespace avx512

}  // namespace gemma4::quant
