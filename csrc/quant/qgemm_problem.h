// The quantized-GEMM problem as plain pointers, shared by the ATen-facing op (qgemm_cpu.cpp) and the
// per-ISA kernel files (qgemm_isa_avx2.cpp, qgemm_isa_avx512.cpp). Deliberately free of ATen/c10
// headers: the AVX-512 file is compiled with AVX-512 flags, and any inline ATen function it emitted
// could be merged by the linker into the AVX2 code path (an ODR hazard that crashes AVX2-only CPUs).
//
// Packed weight layout (see python/gemma4/quant/formats.py and docs/quantization.md):
//   int4: uint8 [N, K/2]. Each run of 32 weights along K is 16 bytes; byte j holds weight j in its low
//         nibble and weight j+16 in its high nibble, stored offset-binary (u = q + 8, q in -8..7) --
//         exactly the `qs` array of a GGUF Q4_0 block, so Q4_0 repacks by copying.
//   int8: int8 [N, K], q in -127..127 (-128 allowed).
//   scales [N, K/group] (group = K for per-channel), float32, bfloat16 or float16:
//         w[n, k] = q[n, k] * scales[n, k / group]   (exact in float32: q has <= 8 bits, a scale <= 24).
#pragma once
#include <cstdint>

namespace gemma4::quant {

enum class ScaleType : int { f32 = 0, bf16 = 1, f16 = 2 };

// Two activation paths:
//  * float32 x (fp32 activations): weights dequantized to float32 in registers, FMA -- exact products.
//  * int16 x (bf16/fp16 activations): the caller quantizes each block of `xblock` activations to int16
//    (x ~= x16 * xscale, |x16| <= 32767: a relative error of 1.5e-5 of the block's largest value, ~100x
//    below bf16's rounding), then the weights are widened to int16 and multiplied with pmaddwd into
//    exact int32 sums, folded into float32 once per block: 3-4x fewer instructions per weight.
struct QgemmProblem {
  const float* x;        // [M, K] float32 activations, or nullptr when x16 is used
  const int16_t* x16;    // [M, K] int16 activations, or nullptr
  const float* xscale;   // [M, K / xblock] float32 scales of x16
  int64_t xblock;        // activations per x16 scale: divides the group, <= 128 (int32 sums cannot overflow)
  const uint8_t* qw;     // packed weights, [N, K/2] (bits 4) or [N, K] (bits 8) bytes
  const void* scales;    // [N, G] in scale_type
  const float* bias;     // [N] float32 or nullptr
  float* out;            // [M, N] float32, rounded to the output dtype by the caller
  int64_t M, N, K, G;    // G = K / group
  int64_t group;         // multiple of 32, divides K
  int bits;              // 4 or 8
  ScaleType scale_type;
  // The group-32 kernel (qgemm_g32.h) reads x in its own lane order; the caller fills these (each x row
  // padded to B8 = a multiple of 8 blocks, padding zero) when g32_applies(), else leaves them null.
  const int16_t* x16p;   // [M, B8 * 32] x16, each 64-weight step as four 16-lane vectors, steps paired (qgemm_g32.h)
  const float* dxp;      // [M, B8] x scales, lane order per 8 blocks (kG32LaneBlock)
  const int32_t* xsum8p; // [M, B8] 8 * the sum of each block's x16, lane order (int4's offset)
  // int8 groups of 32 on AVX-512 (qgemm_g32_q8wide.h) read x in another order; the caller fills these instead of
  // the three above when g32w_applies() (each x row padded to B16 = a multiple of 16 blocks, padding zero).
  const int16_t* x16w;   // [M, B16 * 32] x16, per pair of blocks the 32 even-k activations, then the 32 odd-k ones
  const float* dxw;      // [M, B16] x scales, lane order per 16 blocks (kG32WideLaneBlock)
};

// The group-32 kernel's condition: int16 activations, int4 or int8 in groups of 32, K a multiple of 64.
inline bool g32_shape(int64_t group, int64_t K) { return group == 32 && K % 64 == 0; }
inline bool g32_applies(const QgemmProblem& p) { return p.x16 && g32_shape(p.group, p.K); }
// Lane L of that kernel's per-8-block vectors holds block kG32LaneBlock[L] (the order three hadds leave).
constexpr int kG32LaneBlock[8] = {0, 2, 4, 6, 1, 3, 5, 7};
// int8 takes the 512-bit kernel of qgemm_g32_q8wide.h on the AVX-512 instruction sets (avx512_isa), whose
// per-16-block vectors hold block kG32WideLaneBlock[L] in lane L.
inline bool g32w_applies(int bits, bool avx512_isa) { return bits == 8 && avx512_isa; }
inline int64_t g32w_blocks16(int64_t K) { return (K / 32 + 15) / 16 * 16; }
constexpr int kG32WideLaneBlock[16] = {0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15};

// Weight rows per thread task: the unit of the row split (a multiple of every tile's rows).
constexpr int64_t kQgemmRowBlock = 32;
// Runs of 32 weights summed into one block accumulator before it is added to the total (qgemm_tile).
constexpr int kQgemmSumRuns = 8;

// The 16-row tiled int4 layout (CPU only, AVX512-VNNI; python/gemma4/quant/formats.py tile16): int4 groups of 32
// with the rows interleaved, so that one 512-bit vector holds the same four bytes of 16 rows:
//   qweight uint8 [N/16, K/8, 64]: vector (t, c) = dword c of rows 16 t .. 16 t + 15 of the row layout, i.e. bytes
//         4 r + i hold row 16 t + r's byte 4 c + i: within group g = c / 4 and j = c % 4, low nibbles k = 32 g + 4 j + i,
//         high nibbles k = 32 g + 16 + 4 j + i (Q4_0's order);
//   scales [N/16, K/32, 16]: the 16 rows' scales of each group, side by side.
// x is int16 per group of 32 as in the row layout but with |x16| <= 32639, so that x16 = 256 xh + xl splits into
// two int8 planes exactly (xl = the low byte as signed, xh = (x16 - xl) / 256 in -127..127): vpdpbusd multiplies
// the unsigned nibbles u = q + 8 by each plane, 256 * sum(u xh) + sum(u xl) - 8 sum(x16) = sum(q x16), exact.
struct TiledProblem {
  const uint8_t* qw;     // [N/16, K/8, 64]
  const void* scales;    // [N/16, G, 16] in scale_type
  const int32_t* xq;     // [M, G, 16]: per group, for j = 0..3: xl of k 32g+4j.., xl of 32g+16+4j.., xh of each
  const float* dx;       // [M, G] x scale per group (NaN for a group holding NaN or inf)
  const int32_t* xsum8;  // [M, G] 8 * sum(x16) per group
  const float* bias;     // [N] float32 or nullptr
  float* out;            // [M, N] float32
  int64_t M, N, K, G;    // G = K / 32
  ScaleType scale_type;
};

// y[m, n] for n in [n_begin, n_end), every m. n ranges from different threads never overlap.
namespace avx2 {
void qgemm_rows(const QgemmProblem& p, int64_t n_begin, int64_t n_end);
// Weight rows [n, n + rows) at k in [k0, k0 + kc) dequantized to float32, w [rows, kc] (qgemm_packed_cpu.cpp's
// panels; k0 a multiple of 32). Uses p's weight fields only.
void dequantize_panel_rows(const QgemmProblem& p, int64_t n, int64_t rows, int64_t k0, int64_t kc, float* w);
}
namespace avx512 {
void qgemm_rows(const QgemmProblem& p, int64_t n_begin, int64_t n_end);
}
namespace avx512vnni {
void qgemm_rows(const QgemmProblem& p, int64_t n_begin, int64_t n_end);
// y[m, 16 t .. 16 t + 15] for tiles t in [t_begin, t_end), every m (qgemm_tiled16.h).
void qgemm_tiled_rows(const TiledProblem& p, int64_t t_begin, int64_t t_end);
}

}  // namespace gemma4::quant
