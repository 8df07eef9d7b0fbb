// gemma4::qgemm on the CPU with the 16-row tiled int4 layout: x to int16 per group of 32 (the row layout's rule
// with a smaller range) split into two int8 planes, then the VNNI kernel (qgemm_tiled16.h) over tiles of 16
// weight rows split between threads. bf16 prefill's dequantize route dequantizes straight from the tiles
// (qdequant.h: dequantize_tile_bf16).
// Where neither serves (fp32 x, a CPU or forced instruction set without VNNI) the weight is turned back into the
// row layout a slab at a time and the row layout's op runs on each slab.
// Reference: gemma4.ops.reference.qgemm (which untiles the same way).
#include <algorithm>
#include <cstdint>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "common/call_scratch.h"
#include "quant/qgemm_cpu.h"
#include "quant/qgemm_problem.h"
#include "quant/qgemm_tiled.h"
#include "quant/quant_checks.h"

namespace gemma4::quant {
namespace {

// Tiles turned back into rows at a time on the fallback: 1024 weight rows.
constexpr int64_t kUntileSlabTiles = 64;
// The largest |x16| whose split x16 = 256 xh + xl keeps xh in int8 (127 * 256 + 127).
constexpr float kTiledX16Max = 32639.0f;

// x16 [M, K] (quantize_x16 within +-kTiledX16Max, groups of 32) -> per group (TiledProblem): xq [M, G, 16] int8
// planes, xsum8 [M, G].
void split_planes(const int16_t* x16, int64_t groups, int32_t* xq, int32_t* xsum8) {
  at::parallel_for(0, groups, 256, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const int16_t* q = x16 + g * 32;  // [32]
      int8_t lo[32], hi[32];
      int32_t sum = 0;
      for (int i = 0; i < 32; ++i) {
        lo[i] = static_cast<int8_t>(static_cast<uint8_t>(q[i] & 0xFF));
        hi[i] = static_cast<int8_t>((q[i] - lo[i]) / 256);
        sum += q[i];
      }
      int8_t* out = reinterpret_cast<int8_t*>(xq + g * 16);  // [16 words]: per j, xl lo-quad, xl hi-quad, xh lo, xh hi
      for (int j = 0; j < 4; ++j)
        for (int i = 0; i < 4; ++i) {
          out[16 * j + i] = lo[4 * j + i];
          out[16 * j + 4 + i] = lo[16 + 4 * j + i];
          out[16 * j + 8 + i] = hi[4 * j + i];
          out[16 * j + 12 + i] = hi[16 + 4 * j + i];
        }
      xsum8[g] = 8 * sum;
    }
  });
}

// bf16 prefill's dequantize route on the tiled layout: slabs of whole tiles (the route's slabs are multiples of
// 16 rows), each tile dequantized straight from its bytes (qdequant.h: dequantize_tile_bf16, a register transpose
// of 16 rows), its scales read in place ([G, 16], turned to float32 a slab at a time).
at::Tensor qgemm_tiled_dequantized(const at::Tensor& x2, const at::Tensor& qweight, const at::Tensor& scales,
                                   const std::optional<at::Tensor>& bias, at::IntArrayRef out_shape) {
  const int64_t K = x2.size(1), G = scales.size(1), N = qweight.size(0) * 16;
  const uint8_t* qw = static_cast<const uint8_t*>(qweight.const_data_ptr());
  const DequantTileBody body = dequant_tile_body();
  return qgemm_dequantized(x2, N, bias, out_shape, [&](int64_t n0, int64_t rows, at::BFloat16* w) {
    TORCH_INTERNAL_ASSERT(n0 % 16 == 0 && rows % 16 == 0);
    const int64_t t0 = n0 / 16, nt = rows / 16;
    const at::Tensor sf = scales.narrow(0, t0, nt).to(at::kFloat).contiguous();  // [nt, G, 16]
    at::parallel_for(t0, t0 + nt, 1, [&](int64_t a, int64_t b) {
      for (int64_t t = a; t < b; ++t)  // tile t: 16 rows x K/2 bytes
        body(qw + t * 8 * K, sf.const_data_ptr<float>() + (t - t0) * 16 * G, K, G,
             reinterpret_cast<uint16_t*>(w) + (t - t0) * 16 * K);
    });
  });
}

// The row layout's op on slabs of tiles (the fallback).
at::Tensor qgemm_untiled_slabs(const at::Tensor& x2, const at::Tensor& qweight, const at::Tensor& scales,
                               const std::optional<at::Tensor>& bias) {
  const int64_t tiles = qweight.size(0);
  if (tiles <= kUntileSlabTiles) {
    const auto [q, s] = untile16(qweight, scales);
    return qgemm_cpu(x2, q, s, bias);
  }
  at::Tensor out = at::empty({x2.size(0), tiles * 16}, x2.options());  // [M, N]
  for (int64_t t0 = 0; t0 < tiles; t0 += kUntileSlabTiles) {
    const int64_t nt = std::min(kUntileSlabTiles, tiles - t0);
    const auto [q, s] = untile16(qweight.narrow(0, t0, nt), scales.narrow(0, t0, nt));  // [16 nt, K/2], [16 nt, G]
    const std::optional<at::Tensor> b = bias ? std::optional(bias->narrow(0, 16 * t0, 16 * nt)) : std::nullopt;
    out.narrow(1, 16 * t0, 16 * nt).copy_(qgemm_cpu(x2, q, s, b));
  }
  return out;
}

}  // namespace

std::pair<at::Tensor, at::Tensor> untile16(const at::Tensor& qweight, const at::Tensor& scales) {
  const int64_t T = qweight.size(0), C = qweight.size(1), G = scales.size(1);
  at::Tensor q = qweight.view(at::kInt)           // [T, C, 16] words
                     .transpose(1, 2)             // [T, 16, C]
                     .contiguous()
                     .view(at::kByte)
                     .view({T * 16, C * 4});      // [N, K/2]
  at::Tensor s = scales.transpose(1, 2).contiguous().view({T * 16, G});  // [N, G]
  return {q, s};
}

at::Tensor qgemm_tiled_cpu(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                           const std::optional<at::Tensor>& bias) {
  const int64_t K = x.size(-1), tiles = qweight.size(0), N = tiles * 16, M = x.numel() / K, G = K / 32;
  auto out_shape = x.sizes().vec();
  out_shape.back() = N;
  if (M == 0 || N == 0) return at::zeros(out_shape, x.options());
  const at::Tensor x2 = x.contiguous().view({M, K});  // [M, K]
  if (takes_dequant_route(x, M)) return qgemm_tiled_dequantized(x2, qweight, scales, bias, out_shape);
  if (!tiled_kernel_runs(x)) return qgemm_untiled_slabs(x2, qweight, scales, bias).view(out_shape);

  at::Tensor out = at::empty({M, N}, x.options());  // [M, N]
  const std::optional<at::Tensor> bias_f = bias ? std::optional(bias->to(at::kFloat)) : std::nullopt;
  CallScratch scratch(CallScratch::bytes_for<int16_t>(M * K) + CallScratch::bytes_for<int32_t>(M * G * 16) +
                      CallScratch::bytes_for<float>(M * G) + CallScratch::bytes_for<int32_t>(M * G) +
                      CallScratch::bytes_for<float>(M * N));
  TiledProblem p{};
  int16_t* x16 = scratch.take<int16_t>(M * K);
  int32_t* xq = scratch.take<int32_t>(M * G * 16);
  float* dx = scratch.take<float>(M * G);
  int32_t* xsum8 = scratch.take<int32_t>(M * G);
  quantize_x16(x2, 32, kTiledX16Max, x16, dx);
  split_planes(x16, M * G, xq, xsum8);
  p.qw = static_cast<const uint8_t*>(qweight.const_data_ptr());
  p.scales = scales.const_data_ptr();
  p.xq = xq;
  p.dx = dx;
  p.xsum8 = xsum8;
  p.bias = bias_f ? bias_f->const_data_ptr<float>() : nullptr;
  p.out = scratch.take<float>(M * N);
  p.M = M;
  p.N = N;
  p.K = K;
  p.G = G;
  p.scale_type = scale_type_of(scales);
#if defined(__AVX2__)  // x86-64 builds, where qgemm_isa_avx512vnni.cpp holds the kernel
  at::parallel_for(0, tiles, 4, [&](int64_t t0, int64_t t1) {
    avx512vnni::qgemm_tiled_rows(p, t0, t1);
    round_columns(p.out, M, N, 16 * t0, 16 * t1, out);
  });
#endif
  return out.view(out_shape);
}

}  // namespace gemma4::quant
