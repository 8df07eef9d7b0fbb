// The prefill-sized linear (many rows of x) on AVX-512: declarations shared by linear_cpu.cpp and
// linear_gemm_avx512.cpp. Plain pointers and integer types only, for the reason linear_gemv_avx512.h gives
// (the .cpp is compiled with AVX-512 flags). bf16 values travel as uint16_t (their bits).
#pragma once
#include <cstdint>

namespace gemma4::linear::avx512 {

constexpr int kGemmMR = 8;   // rows of x per tile (x packed in groups of 8 rows)
constexpr int kGemmNR = 32;  // weight rows per tile: two 16-lane vectors of outputs
constexpr int64_t kGemmKC = 128;  // k per block: linear_gemm.h's kKC (linear_cpu.cpp checks they agree)
constexpr int kXtMR = 32;  // the x-vector tile (gemm_panel_xt): rows of x per tile, two 16-lane vectors
constexpr int kXtNR = 8;   // and weight rows per tile, each weight broadcast

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

// The same sums with x's rows in the vector lanes, for an fp32 weight [N, K] (y = x @ w^T): ct[i * ldct + m] (+)=
// sum over k in [k_begin, k_end) of x[m, k] * w[n0 + i, k] for m < groups * kXtMR, i < nc: the outputs transposed,
// ldct >= groups * kXtMR. ap: x packed by pack_x_group in groups of kXtMR rows. Each weight is broadcast from its
// row where it lies, so nothing packs the weight: the packing pass, which the 8 x 32 tile's loads wait for, is
// gone (one thread, M = 128, Zen 4 with half-rate 512-bit FMAs: see linear_cpu.cpp). The same k-blocks and FMA
// chain per output as gemm_panel, so the sums are bit-identical to both tiles.
void gemm_panel_xt(const float* w, int64_t K, int64_t k_begin, int64_t k_end, const float* ap, int64_t groups,
                   int64_t n0, int64_t nc, float* ct, int64_t ldct, bool add);

}  // namespace gemma4::linear::avx512
