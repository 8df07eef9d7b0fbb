// bf16 decode attention on AVX512-BF16 CPUs: the two products of a K/V tile (attention_kernels.h::forward) for
// one query group of at most 8 rows, on `vdpbf16ps` (16 lanes, each adding two bf16 products a step: twice the
// multiply-adds of an fp32 FMA an instruction), reading the bf16 K and V rows where they lie instead of
// widening them into fp32 tiles first.
//   S[j][r] = sum_d K[j][d] Q[r][d]              the products exact, fp32 sums (d in pairs, lanes, then a tree)
//   O[r][d] = init + sum_j P[j][r] V[j][d]       P (fp32) rounded to bf16 here, to nearest even
// Compiled alone with AVX-512 F/BW/VL/DQ + BF16 flags (attention_decode_avx512bf16.cpp, no ATen inside) and
// called only where supported() says so. bf16 is 16 bits (uint16_t here), row strides in elements.
// Reference: reference.attention (python/gemma4/ops/reference.py); tests/ops/test_attention.py runs both paths.
#pragma once
#include <atomic>
#include <cstdint>

namespace gemma4::attn::bf16dp {

// Whether this CPU and OS run AVX-512 F/BW/VL/DQ and AVX512_BF16.
bool supported();

// Whether the forward takes these kernels: supported() unless gemma4::attention_cpu_isa said otherwise
// (attention_cpu.cpp; the tests run both paths).
std::atomic<bool>& enabled();

// Query rows the kernels take at once (rows past the group's are zero rows of Q and ignored rows of O).
constexpr int64_t kRows = 8;

// St[j * 8 + r] = sum_d K[j][d] * Q[r][d] for j < n, r < 8; K rows at stride ldk, Q [8][hd] packed; hd % 32 == 0.
void scores(int64_t n, const uint16_t* K, int64_t ldk, const uint16_t* Q, int64_t hd, float* St);

// O[r][0:hd] (rows r < 8 at stride ldo) = (alpha ? alpha[r] * O[r] : 0) + sum_{j < n} P[j * 8 + r] * V[j][0:hd].
// V rows at stride ldv; a key j with pad[j] true (pad may be null) counts as a zero row, so that a non-finite
// value at a padding position never meets its zero probability. V2 is scratch of ((n + 1) / 2) * hd * 2
// elements. n <= 128, hd % 32 == 0.
void values(int64_t n, const float* P, const uint16_t* V, int64_t ldv, const bool* pad, int64_t hd, uint16_t* V2,
            float* O, int64_t ldo, const float* alpha);

}  // namespace gemma4::attn::bf16dp
