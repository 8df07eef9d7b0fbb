// gemma4::qgemm on CPU: y = x @ dequant(qweight, scales)^T (+ bias), weight-only int4/int8.
// bf16 prefill on a CPU with a native bf16 GEMM dequantizes and calls torch's GEMM (below). Otherwise it
// checks the arguments, quantizes bf16/fp16 x to int16 once (fp32 x is used as it is; groups of 32 also
// get x in their kernel's lane order), splits the weight rows over threads and runs the kernel of the
// best instruction set this CPU supports (AVX-512F when present, else AVX2; one binary serves both).
// Kernels: qgemm_kernels.h, qgemm_g32.h; a 3-D qweight (the 16-row tiled int4 layout) goes to qgemm_tiled_cpu.cpp.
// Reference: gemma4.ops.reference.qgemm.
#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>
#include <utility>

#include <ATen/ATen.h>
#include <torch/library.h>

#include "common/call_scratch.h"
#include "common/named_choice.h"
#include "common/vec_utils.h"
#include "quant/qdequant.h"
#include "quant/qgemm_cpu.h"
#include "quant/qgemm_packed.h"
#include "quant/qgemm_tiled.h"
#include "quant/quant_checks.h"

namespace gemma4::quant {
namespace {

// avx2 / avx512 / avx512vnni: our kernels on that instruction set. dequant (forced, for tests): bf16 x always
// takes the dequantize-then-GEMM route below, other activations the best instruction set. packed (forced, for
// tests): bf16/fp16 x takes the packed-GEMM route (qgemm_packed_cpu.cpp) at every row count.
enum class Isa : int { avx2 = 0, avx512 = 1, dequant = 2, avx512vnni = 3, packed = 4 };

bool cpu_has_avx512() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  // libgcc checks the OS saves the AVX-512 state (XCR0) before reporting these.
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
#else
  return false;
#endif
}

bool cpu_has_avx512_vnni() {
#if defined(__x86_64__) || defined(__i386__)
  return cpu_has_avx512() && __builtin_cpu_supports("avx512vnni");
#else
  return false;
#endif
}

// The best instruction set this CPU supports.
Isa best_isa() { return cpu_has_avx512_vnni() ? Isa::avx512vnni : cpu_has_avx512() ? Isa::avx512 : Isa::avx2; }

std::atomic<int>& active_isa() {
  static std::atomic<int> isa{static_cast<int>(best_isa())};
  return isa;
}

// False after "auto" (the default): then bf16 prefill may take the dequantize route by itself; a forced
// "avx2" / "avx512" runs our kernels at every row count (so the tests reach them on every CPU).
std::atomic<bool>& isa_forced() {
  static std::atomic<bool> forced{false};
  return forced;
}

// Indexed by Isa, then "auto".
constexpr std::array<const char*, 6> kIsaRequests = {"avx2", "avx512", "dequant", "avx512vnni", "packed", "auto"};

// "" -> report; "auto" -> best available; "avx2" / "avx512" / "avx512vnni" / "dequant" / "packed" -> force (tests run
// every path). A refused request changes nothing.
std::string qgemm_cpu_isa(c10::string_view request) {
  const std::string req(request);
  if (!req.empty()) {
    const int choice = named_choice("gemma4::qgemm_cpu_isa", req, kIsaRequests);
    const bool automatic = choice == static_cast<int>(kIsaRequests.size()) - 1;
    const Isa isa = automatic ? best_isa() : static_cast<Isa>(choice);
    TORCH_CHECK(isa != Isa::avx512 || cpu_has_avx512(),
                "gemma4::qgemm_cpu_isa: this CPU (or OS) does not support AVX-512F and AVX-512BW");
    TORCH_CHECK(isa != Isa::avx512vnni || cpu_has_avx512_vnni(),
                "gemma4::qgemm_cpu_isa: this CPU (or OS) does not support AVX512_VNNI");
    isa_forced() = !automatic;
    active_isa() = static_cast<int>(isa);
  }
  return kIsaRequests[active_isa()];
}

// The row layout's int16 range (the tiled layout keeps x16 within +-32639: qgemm_tiled_cpu.cpp).
constexpr float kX16Max = 32767.0f;

// Activations per int16 scale: the group itself up to 128, else the largest of 128 / 64 / 32 dividing it
// (so a block never straddles two weight scales, and 128 products of int16 x int8 fit an int32).
int64_t x_block_for(int64_t group) {
  if (group <= 128) return group;
  return group % 128 == 0 ? 128 : group % 64 == 0 ? 64 : 32;
}

// quantize_x16's body: per block of xblock activations, scale = amax / qmax and x16 = round-half-even(x / scale).
// One pass in plain C++ (the compiler vectorizes it): the ATen version cost ~70 us of a decode GEMV's time in op
// overhead. A block holding NaN or inf gets a NaN scale and zeros, so its rows come out NaN.
template <class T>
void quantize_activations(const T* x, int64_t blocks, int64_t xblock, float qmax, int16_t* x16, float* scale) {
  at::parallel_for(0, blocks, 256, [&](int64_t b0, int64_t b1) {
    float v[128];  // xblock <= 128
    for (int64_t b = b0; b < b1; ++b) {
      const T* src = x + b * xblock;  // [xblock]: rows are contiguous and xblock divides K
      float amax = 0.0f;
      for (int64_t i = 0; i < xblock; ++i) {
        v[i] = static_cast<float>(src[i]);
        amax = std::max(amax, std::abs(v[i]));
      }
      bool finite = true;
      for (int64_t i = 0; i < xblock; ++i) finite &= std::isfinite(v[i]);
      const float s = amax / qmax;
      const float inv = finite && s > 0.0f ? 1.0f / s : 0.0f;
      for (int64_t i = 0; i < xblock; ++i)
        x16[b * xblock + i] = static_cast<int16_t>(std::clamp(std::nearbyint(v[i] * inv), -qmax, qmax));
      scale[b] = finite ? s : std::numeric_limits<float>::quiet_NaN();
    }
  });
}

// The group-32 kernel's view of the int16 activations (see qgemm_g32.h for the lane order), written into p:
// x16p [M, B8 * 32], dxp [M, B8] and xsum8p [M, B8], B8 = the blocks per row rounded up to a multiple of 8 (the
// padding zero); or, for int8 on AVX-512 (`wide`, qgemm_g32_q8wide.h), x16w [M, B16 * 32] and dxw [M, B16].
// g32_scratch_bytes() is what it takes from the scratch.
int64_t g32_blocks8(int64_t K) { return (K / 32 + 7) / 8 * 8; }

size_t g32_scratch_bytes(int64_t M, int64_t K) {
  const int64_t B16 = g32w_blocks16(K);  // >= B8: either layout fits
  return CallScratch::bytes_for<int16_t>(M * B16 * 32) + CallScratch::bytes_for<float>(M * B16) +
         CallScratch::bytes_for<int32_t>(M * B16);
}

// The wide layout: per pair of blocks, their 32 even-k activations then their 32 odd-k ones; x scales in
// kG32WideLaneBlock order per 16 blocks.
void prepare_g32_wide(QgemmProblem& p, CallScratch& scratch) {
  const int64_t M = p.M, K = p.K, B = K / 32, B16 = g32w_blocks16(K);
  int16_t* xw = scratch.take<int16_t>(M * B16 * 32);
  float* dx = scratch.take<float>(M * B16);
  at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const int16_t* xr = p.x16 + m * K;  // [K]
      int16_t* wr = xw + m * B16 * 32;     // [B16 * 32]
      std::fill(wr + B * 32, wr + B16 * 32, int16_t{0});
      for (int64_t b = 0; b < B; ++b)
        for (int i = 0; i < 16; ++i)
          for (int odd = 0; odd < 2; ++odd) wr[(b / 2) * 64 + odd * 32 + (b % 2) * 16 + i] = xr[b * 32 + 2 * i + odd];
      for (int64_t g = 0; g < B16; g += 16)
        for (int lane = 0; lane < 16; ++lane) {
          const int64_t b = g + kG32WideLaneBlock[lane];
          dx[m * B16 + g + lane] = b < B ? p.xscale[m * B + b] : 0.0f;
        }
    }
  });
  p.x16w = xw;
  p.dxw = dx;
}

void prepare_g32(QgemmProblem& p, CallScratch& scratch, bool wide) {
  if (wide) return prepare_g32_wide(p, scratch);
  const int64_t M = p.M, K = p.K, B = K / 32, B8 = g32_blocks8(K);
  int16_t* xp = scratch.take<int16_t>(M * B8 * 32);
  float* dx = scratch.take<float>(M * B8);
  int32_t* xs = scratch.take<int32_t>(M * B8);
  const int16_t* x16 = p.x16;
  const float* xscale = p.xscale;
  at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const int16_t* xr = x16 + m * K;                 // [K]
      int16_t* pr = xp + m * B8 * 32;                  // [B8 * 32]
      // Zero what the loops below leave unwritten (before them: a half-used last pair or group of 8 holds both).
      std::fill(pr + B / 4 * 128, pr + B8 * 32, int16_t{0});
      std::fill(dx + m * B8 + B / 8 * 8, dx + (m + 1) * B8, 0.0f);
      std::fill(xs + m * B8 + B / 8 * 8, xs + (m + 1) * B8, 0);
      // Steps in pairs (qgemm_g32.h): vector j of step 2q + t at q * 128 + j * 32 + t * 16, so that one 512-bit
      // load holds vector j of both steps of a pair.
      for (int64_t step = 0; step < B / 2; ++step)     // 64 activations: blocks 2 step, 2 step + 1
        for (int j = 0; j < 4; ++j)                     // w0..w3: weights 2i, 2i + 16, 2i + 1, 2i + 17
          for (int h = 0; h < 2; ++h)                   // the step's block in this 128-bit half
            for (int i = 0; i < 8; ++i)
              pr[(step / 2) * 128 + j * 32 + (step % 2) * 16 + h * 8 + i] =
                  xr[step * 64 + h * 32 + (j & 1) * 16 + (j >> 1) + 2 * i];
      for (int64_t b = 0; b < B; ++b) {
        const int64_t lane = m * B8 + (b / 8) * 8 + (std::find(kG32LaneBlock, kG32LaneBlock + 8, b % 8) - kG32LaneBlock);
        int32_t sum = 0;
        for (int i = 0; i < 32; ++i) sum += xr[b * 32 + i];
        dx[lane] = xscale[m * B + b];
        xs[lane] = 8 * sum;
      }
    }
  });
  p.x16p = xp;
  p.dxp = dx;
  p.xsum8p = xs;
}

// ---- bf16 prefill on a CPU with a native bf16 GEMM: dequantize, then torch's GEMM ----
// Our kernels multiply int16 activations by the integer levels at the float32-FMA rate. Where torch's
// bf16 GEMM is native (oneDNN on AVX512-BF16 or AMX) it runs at about twice that rate and more: on a
// 2-core EPYC with AVX512-BF16, E2B's up projection at 256 rows took 23.4 ms in our int4 kernel and 5.5 ms
// as a bf16 GEMM. So bf16 x with at least kDequantMinRows rows dequantizes the weight to bf16,
// kDequantRows rows at a time, and multiplies with torch's GEMM. The numbers are plain PyTorch's on the
// dequantized weight in bf16 (the error rule's own baseline); the full bf16 weight never exists whole.
constexpr int64_t kDequantMinRows = 64, kDequantRows = 1024;

bool native_bf16_gemm() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool yes = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") || __builtin_cpu_supports("amx-bf16");
  }();
  return yes;
#else
  return false;
#endif
}

// qdequant.h's row dequantization on the best instruction set here (AVX-512 or scalar).
using DequantBody = void (*)(const uint8_t* qw, int bits, const float* scales, int64_t r0, int64_t r1, int64_t K,
                             int64_t G, int64_t rs, int64_t gs, uint16_t* w);
DequantBody dequant_body() {
#if defined(__AVX2__)  // x86-64 builds, where qdequant_avx512.cpp is compiled with the AVX-512 flags
  return cpu_has_avx512() ? &avx512::dequantize_rows_bf16 : &dequantize_rows_bf16_scalar;
#else
  return &dequantize_rows_bf16_scalar;
#endif
}

// w [rows, K] bf16 = q * scale for weight rows [n0, n0 + rows) (qdequant.h), on AVX-512 where the CPU has it.
void dequantize_rows_bf16(const at::Tensor& qweight, const at::Tensor& scales, int bits, int64_t n0, int64_t rows,
                          int64_t K, at::BFloat16* w) {
  const at::Tensor sf = scales.narrow(0, n0, rows).to(at::kFloat).contiguous();  // [rows, G]
  const uint8_t* qw = static_cast<const uint8_t*>(qweight.const_data_ptr()) + n0 * (bits == 4 ? K / 2 : K);
  const DequantBody body = dequant_body();
  const int64_t G = scales.size(1);
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    body(qw, bits, sf.const_data_ptr<float>(), r0, r1, K, G, G, 1, reinterpret_cast<uint16_t*>(w));  // rows of G
  });
}

}  // namespace

DequantTileBody dequant_tile_body() {
#if defined(__AVX2__)
  return cpu_has_avx512() ? &avx512::dequantize_tile_bf16 : &dequantize_tile_bf16_scalar;
#else
  return &dequantize_tile_bf16_scalar;
#endif
}

at::Tensor qgemm_dequantized(const at::Tensor& x, int64_t N, const std::optional<at::Tensor>& bias,
                             at::IntArrayRef out_shape, const DequantRows& fill) {
  const int64_t K = x.size(-1), M = x.numel() / K;
  const at::Tensor x2 = x.reshape({M, K});                                   // [M, K] bf16
  at::Tensor out = at::empty({M, N}, x.options());                            // [M, N] bf16
  at::Tensor w = at::empty({std::min(N, kDequantRows), K}, x.options());      // [rows, K] bf16
  for (int64_t n0 = 0; n0 < N; n0 += kDequantRows) {
    const int64_t rows = std::min(kDequantRows, N - n0);
    at::Tensor wr = w.narrow(0, 0, rows);
    fill(n0, rows, wr.data_ptr<at::BFloat16>());
    const std::optional<at::Tensor> b = bias ? std::optional(bias->narrow(0, n0, rows)) : std::nullopt;
    if (rows == N) return at::linear(x2, wr, b).view(out_shape);
    out.narrow(1, n0, rows).copy_(at::linear(x2, wr, b));                      // [M, rows]
  }
  return out.view(out_shape);
}

// bf16 x on the dequantize-then-GEMM route: forced, or (unless an instruction set is forced) from
// kDequantMinRows rows on a CPU with a native bf16 GEMM.
bool takes_dequant_route(const at::Tensor& x, int64_t M) {
  const bool forced = active_isa() == static_cast<int>(Isa::dequant);
  const bool automatic = !isa_forced() && M >= kDequantMinRows && native_bf16_gemm();
  return x.scalar_type() == at::kBFloat16 && (forced || automatic);
}

// Prefill of bf16/fp16 x on a CPU without AVX-512 (so without a native bf16 GEMM either): from kPackedMinRows rows,
// the packed fp32 GEMM with the weight dequantized into its panels (qgemm_packed_cpu.cpp); forced ("packed"), at
// every row count. AVX-512 CPUs without a native bf16 GEMM keep their 512-bit integer kernels: no such CPU has
// timed the two against each other. On a 2-core AVX2 EPYC (Zen 3), 2 threads, E2B's projections 6144 x 1536,
// 1536 x 6144, 2048 x 1536 and 256 x 1536, int4 / int8 in groups of 32, bf16 x, its speed over the int16 kernels':
// 0.51-0.66x at 8 rows, 0.92-1.09x at 32, 0.96-1.20x at 40, 1.05-1.28x at 48, 1.08-1.29x at 64, 1.19-1.37x at 128
// (int4 6144 x 1536: 13.9 against 16.5 ms, 174 GFLOP/s).
// fp32 x keeps the FMA kernel: the tile sums each output in one 128-term FMA chain a k-block, about twice the FMA
// kernel's error (0.82x plain PyTorch's at 300 rows against 0.42x), and at 2 rows it exceeded the error rule's 2x
// once in 300 draws (K = 704, int8 per channel; GEMMA4_TEST_SEED=214232732). Rounded to bf16/fp16, that error is
// far below the output's own rounding.
constexpr int64_t kPackedMinRows = 48;

bool takes_packed_route(const at::Tensor& x, int64_t M) {
#if defined(__AVX2__)
  if (x.scalar_type() == at::kFloat) return false;
  if (active_isa() == static_cast<int>(Isa::packed)) return true;
  return !isa_forced() && M >= kPackedMinRows && !cpu_has_avx512();
#else
  return false;  // its panels are dequantized by the AVX2 kernels: a build without them has no CPU qgemm (below)
#endif
}

namespace {

template <class T>
void round_columns_as(const float* src, int64_t M, int64_t N, int64_t n0, int64_t n1, T* out) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = n0; n < n1; ++n) out[m * N + n] = static_cast<T>(src[m * N + n]);
}

}  // namespace

void quantize_x16(const at::Tensor& x, int64_t xblock, float qmax, int16_t* x16, float* scale) {
  const int64_t blocks = x.numel() / xblock;
  if (x.scalar_type() == at::kBFloat16) {
    quantize_activations(x.const_data_ptr<at::BFloat16>(), blocks, xblock, qmax, x16, scale);
  } else {
    quantize_activations(x.const_data_ptr<at::Half>(), blocks, xblock, qmax, x16, scale);
  }
}

// (to nearest even, as a dtype conversion in ATen)
void round_columns(const float* src, int64_t M, int64_t N, int64_t n0, int64_t n1, at::Tensor& out) {
  if (out.scalar_type() == at::kBFloat16) {
    round_columns_as(src, M, N, n0, n1, out.data_ptr<at::BFloat16>());
  } else if (out.scalar_type() == at::kHalf) {
    round_columns_as(src, M, N, n0, n1, out.data_ptr<at::Half>());
  }
}

bool tiled_kernel_runs(const at::Tensor& x) {
  return x.scalar_type() != at::kFloat && active_isa() == static_cast<int>(Isa::avx512vnni);
}

// Declared in qgemm_cpu.h: gemma4::moe_experts_quant runs it on each expert's weights.
at::Tensor qgemm_cpu(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                     const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "gemma4::qgemm";
  check_qgemm_args(x, qweight, scales, bias, op, c10::kCPU);
  if (qweight.dim() == 3) return qgemm_tiled_cpu(x, qweight, scales, bias);
  const int64_t K = x.size(-1), N = qweight.size(0), M = x.numel() / K;
  auto out_shape = x.sizes().vec();
  out_shape.back() = N;
  if (M == 0 || N == 0) return at::zeros(out_shape, x.options());
  const bool dequant_forced = active_isa() == static_cast<int>(Isa::dequant);
  if (takes_dequant_route(x, M)) {
    const int bits = qweight_bits(qweight, op);
    return qgemm_dequantized(x, N, bias, out_shape, [&](int64_t n0, int64_t rows, at::BFloat16* w) {
      dequantize_rows_bf16(qweight, scales, bits, n0, rows, K, w);
    });
  }

  QgemmProblem p{};
  p.qw = static_cast<const uint8_t*>(qweight.data_ptr());
  p.scales = scales.data_ptr();
  p.M = M;
  p.N = N;
  p.K = K;
  p.G = scales.size(1);
  p.group = K / p.G;
  p.bits = qweight_bits(qweight, op);
  p.scale_type = scale_type_of(scales);
  const at::Tensor xc = x.contiguous();  // [..., K]
  if (takes_packed_route(x, M)) return qgemm_packed(p, xc, bias);

  // fp32 activations are used as they are; bf16/fp16 ones go to int16 (see qgemm_problem.h)
  const bool int16_path = x.scalar_type() != at::kFloat;
  const int64_t xblock = x_block_for(K / scales.size(1));
  at::Tensor out = at::empty(out_shape, x.options());  // [..., N]
  const std::optional<at::Tensor> bias_f = bias ? std::optional(bias->to(at::kFloat)) : std::nullopt;
  p.xblock = xblock;
  p.bias = bias_f ? bias_f->data_ptr<float>() : nullptr;

  // A forced "dequant" runs other activations on the best instruction set.
  const Isa isa = dequant_forced ? best_isa() : static_cast<Isa>(active_isa().load());
  // The temporaries: int16 x [M, K] and its scales [M, K / xblock], the group-32 layout, and the fp32 output
  // [M, N] when x is 16-bit (rounded into out as each thread finishes its rows).
  const bool g32 = int16_path && g32_shape(p.group, K);
  CallScratch scratch(int16_path ? CallScratch::bytes_for<int16_t>(M * K) + CallScratch::bytes_for<float>(M * K / xblock) +
                                       (g32 ? g32_scratch_bytes(M, K) : 0) + CallScratch::bytes_for<float>(M * N)
                                 : 0);
  if (int16_path) {
    int16_t* x16 = scratch.take<int16_t>(M * K);
    float* xscale = scratch.take<float>(M * K / xblock);
    quantize_x16(xc, xblock, kX16Max, x16, xscale);
    p.x16 = x16;
    p.xscale = xscale;
    if (g32) prepare_g32(p, scratch, g32w_applies(p.bits, isa == Isa::avx512 || isa == Isa::avx512vnni));
    p.out = scratch.take<float>(M * N);
  } else {
    p.x = xc.const_data_ptr<float>();
    p.out = out.data_ptr<float>();
  }

#if defined(__AVX2__)
  const int64_t blocks = (N + kQgemmRowBlock - 1) / kQgemmRowBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    const int64_t n0 = b0 * kQgemmRowBlock, n1 = std::min(N, b1 * kQgemmRowBlock);
    if (isa == Isa::avx512vnni) {
      avx512vnni::qgemm_rows(p, n0, n1);
    } else if (isa == Isa::avx512) {
      avx512::qgemm_rows(p, n0, n1);
    } else {
      avx2::qgemm_rows(p, n0, n1);
    }
    if (int16_path) round_columns(p.out, M, N, n0, n1, out);
  });
#else
  TORCH_CHECK(false, op, ": this build has no CPU kernel (built without AVX2: the quantized kernels are x86-64 only)");
#endif
  return out;
}

}  // namespace gemma4::quant

TORCH_LIBRARY_IMPL(gemma4, CPU, m) { m.impl("qgemm", &gemma4::quant::qgemm_cpu); }

TORCH_LIBRARY_IMPL(gemma4, CompositeExplicitAutograd, m) {
  m.impl("qgemm_cpu_isa", &gemma4::quant::qgemm_cpu_isa);
}
