// The decode-sized linear (a few rows of x) on AVX-512: declarations shared by linear_cpu.cpp and
// linear_gemv_avx512.cpp. Plain pointers and integer types only: the .cpp is compiled with AVX-512 flags,
// and an inline ATen/c10 function emitted there could be the copy the linker keeps for the AVX2 files too
// (the hazard qgemm_problem.h describes). bf16 values travel as uint16_t (their bits).
#pragma once
#include <cstdint>

namespace gemma4::linear::avx512 {

// out[(n - n0) * M + m] = sum_k x[m, k] * w[n, k] for the weight rows n in [n0, n1) and the M (1..8) rows of
// x, fp32 accumulation (blocked as in linear_gemv.h). w [N, K] and x [M, K] are row-major.
void gemv_rows(int M, const float* w, const float* x, int64_t K, int64_t n0, int64_t n1, float* out);
void gemv_rows(int M, const uint16_t* w, const float* x, int64_t K, int64_t n0, int64_t n1, float* out);

bool supported();  // AVX-512 F, BW and VL, with the OS saving their state

}  // namespace gemma4::linear::avx512
