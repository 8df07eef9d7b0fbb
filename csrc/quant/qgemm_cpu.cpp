// gemma4::qgemm on CPU: y = x @ dequant(qweight, scales)^T (+ bias), weight-only int4/int8.
// Checks the arguments, converts x to float32 once, splits the weight rows over threads and runs the
// kernel of the best instruction set this CPU supports (AVX-512F when present, else AVX2; one binary
// serves both). Kernels: qgemm_kernels.h; reference: gemma4.ops.reference.qgemm.
#include <atomic>
#include <cstdlib>
#include <optional>
#include <string>

#include <ATen/ATen.h>
#include <torch/library.h>

#include "common/vec_utils.h"
#include "quant/quant_checks.h"

namespace gemma4::quant {
namespace {

enum class Isa : int { avx2 = 0, avx512 = 1 };

bool cpu_has_avx512() {
  __builtin_cpu_init();
  // libgcc checks the OS saves the AVX-512 state (XCR0) before reporting these.
  return __builtin_cpu_supports("avx512f");
}

std::atomic<int>& active_isa() {
  static std::atomic<int> isa{static_cast<int>(cpu_has_avx512() ? Isa::avx512 : Isa::avx2)};
  return isa;
}

const char* isa_name(int isa) { return isa == static_cast<int>(Isa::avx512) ? "avx512" : "avx2"; }

// "" -> report; "auto" -> best available; "avx2" / "avx512" -> force (tests run both paths).
std::string qgemm_cpu_isa(c10::string_view request) {
  const std::string req(request);
  if (req == "auto") {
    active_isa() = static_cast<int>(cpu_has_avx512() ? Isa::avx512 : Isa::avx2);
  } else if (req == "avx2") {
    active_isa() = static_cast<int>(Isa::avx2);
  } else if (req == "avx512") {
    TORCH_CHECK(cpu_has_avx512(), "gemma4::qgemm_cpu_isa: this CPU (or OS) does not support AVX-512F");
    active_isa() = static_cast<int>(Isa::avx512);
  } else {
    TORCH_CHECK(req.empty(), "gemma4::qgemm_cpu_isa: request must be '', 'auto', 'avx2' or 'avx512', got '",
                req, "'");
  }
  return isa_name(active_isa());
}

at::Tensor qgemm_cpu(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                     const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "gemma4::qgemm";
  check_qgemm_args(x, qweight, scales, bias, op, c10::kCPU);
  const int64_t K = x.size(-1), N = qweight.size(0), M = x.numel() / K;
  auto out_shape = x.sizes().vec();
  out_shape.back() = N;

  const at::Tensor xf = x.reshape({M, K}).to(at::kFloat);                          // [M, K] fp32
  at::Tensor out_f = at::empty({M, N}, x.options().dtype(at::kFloat));              // [M, N] fp32
  const std::optional<at::Tensor> bias_f = bias ? std::optional(bias->to(at::kFloat)) : std::nullopt;
  if (M == 0 || N == 0) return out_f.to(x.scalar_type()).view(out_shape);

  QgemmProblem p{};
  p.x = xf.data_ptr<float>();
  p.qw = static_cast<const uint8_t*>(qweight.data_ptr());
  p.scales = scales.data_ptr();
  p.bias = bias_f ? bias_f->data_ptr<float>() : nullptr;
  p.out = out_f.data_ptr<float>();
  p.M = M;
  p.N = N;
  p.K = K;
  p.G = scales.size(1);
  p.group = K / p.G;
  p.bits = qweight_bits(qweight, op);
  p.scale_type = scale_type_of(scales);

  const bool avx512 = active_isa() == static_cast<int>(Isa::avx512);
  const int64_t blocks = (N + kQgemmRowBlock - 1) / kQgemmRowBlock;
  gemma4::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    const int64_t n0 = b0 * kQgemmRowBlock, n1 = std::min(N, b1 * kQgemmRowBlock);
    if (avx512) {
      avx512::qgemm_rows(p, n0, n1);
    } else {
      avx2::qgemm_rows(p, n0, n1);
    }
  });
  return out_f.to(x.scalar_type()).view(out_shape);
}

}  // namespace
}  // namespace gemma4::quant

TORCH_LIBRARY_IMPL(gemma4, CPU, m) { m.impl("qgemm", &gemma4::quant::qgemm_cpu); }

TORCH_LIBRARY_IMPL(gemma4, CompositeExplicitAutograd, m) {
  m.impl("qgemm_cpu_isa", &gemma4::quant::qgemm_cpu_isa);
}
