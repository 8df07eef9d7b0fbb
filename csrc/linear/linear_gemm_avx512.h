// The prefill-sized linear (many rows of x) on AVX-512: declarations shared by linear_cpu.cpp and
// linear_gemm_avx512.cpp. Plain pointers and integer types only, for the reason linear_gemv_avx512.h gives
// (the .cpp is compiled with AVX-512 flags). bf16 values travel as uint16_t (their bits).
#pragma once
#include <cstdint>

namespace gemma4::linear::avx512 {

constexpr int kGemmMR = 8;   // rows of x per tile (x packed in groups of 8 rows)
constexpr int kGemmNR = 32;  // weight rows per tile: two 16-lane vectors of outputs
constexpr int64_t kGemmKC = 128;  // k per block: linear_gemm.h's kKC (linear_cpu.cpp checks they agree)

// linear_gemm.h's gemm_panel with the 8 x 32 tile: cbuf[m, i] (+)= sum over k in [k_begin, k_end) of
// x[m, k] * w(k, n0 + i) for m < groups * kGemmMR, i < nc (rounded up to kGemmNR; ldc >= that), w(k, n) =
// w[n * K + k] or, with kmajor, w[k * N + n]. ap: x packed by pack_x_group in groups of kGemmMR rows; bp:
// kGemmKC * nc floats of scratch, 64-byte aligned. The same k-blocks and the same FMA chain per output as the
// AVX2 tile, so the sums are bit-identical to it.
void gemm_panel(bool kmajor, const float* w, int64_t K, int64_t N, int64_t k_begin, int64_t k_end, const float* ap,
                int64_t groups, int64_t n0, int64_t nc, float* bp, float* cbuf, int64_t ldc, bool add);
void gemm_panel(bool kmajor, const uint16_t* w, int64_t K, int64_t N, int64_t k_begin, int64_t k_end,
                const float* ap, int64_t groups, int64_t n0, int64_t nc, float* bp, float* cbuf, int64_t ldc,
                bool add);

}  // namespace gemma4::linear::avx512
