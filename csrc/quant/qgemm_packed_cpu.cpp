// The CPU qgemm's prefill route on CPUs without AVX-512: y = x @ dequant(W)^T by our packed fp32 GEMM
// (linear_gemm.h's AVX2 6 x 16 tile), which packs each 16-row micro-panel of the weight straight from the
// quantized levels (q * scale in float32) instead of from memory. The int16-activation kernels (qgemm_kernels.h,
// qgemm_g32.h) run about 4 multiply-adds an instruction, the tile's FMAs about 5 at 8 lanes, and the panel's
// dequantization is paid once per call, not per row of x: on a 2-core AVX2 EPYC, E2B's projections at 128 rows
// ran 124-147 GFLOP/s on the int16 kernels and 165-170 as a bf16 GEMM (docs/quantization.md).
// The numbers: x (exact in fp32) times the exact dequantized weight (one rounding of q * scale), fp32 sums,
// rounded once to x's dtype -- closer to float64 than plain PyTorch on dequant(W).to(x.dtype).
// Reference: gemma4.ops.reference.qgemm.
#include "quant/qgemm_packed.h"

#include "linear/linear_gemm.h"  // linear::pack_w_panel, kNR, kKC
#include "linear/panel_source.h"

#include <c10/util/Exception.h>  // TORCH_CHECK

namespace gemma4::quant {
namespace {

// linear::PanelSource::pack over a QgemmProblem's weight fields.
// (Built only with the AVX2 kernels that dequantize the panels: qgemm_cpu.cpp takes this route only there.)
void pack_dequantized(const void* ctx, int64_t n, int64_t cols, int64_t k0, int64_t kc, float* dst) {
#if defined(__AVX2__)
  alignas(32) float rows[linear::kNR * linear::kKC];  // [cols, kc] float32
  avx2::dequantize_panel_rows(*static_cast<const QgemmProblem*>(ctx), n, cols, k0, kc, rows);
  linear::pack_w_panel<linear::kNR>(rows, kc, cols, kc, dst);
#else
  TORCH_CHECK(false, "qgemm: the packed route needs the AVX2 kernels, which this build lacks");
#endif
}

}  // namespace

at::Tensor qgemm_packed(const QgemmProblem& p, const at::Tensor& x, const std::optional<at::Tensor>& bias) {
  return linear::gemm_from_panels({&pack_dequantized, &p, p.N, p.K}, x, bias);
}

}  // namespace gemma4::quant
