// gemma4::attention on CPU: causal / sliding-window / key-masked grouped-query attention with an online
// softmax, returning (out [B,T,nH,hd], lse [B,nH,T]). The kernel is attention_kernels.h::forward;
// the reference is python/gemma4/ops/reference.py::attention.
#include <string>

#include <ATen/ATen.h>
#include <torch/library.h>

#include "attention/attention_checks.h"
#include "common/cpu_isa_switch.h"
#include "attention/attention_decode_avx512bf16.h"
#include "attention/attention_kernels.h"

namespace gemma4::attn {

std::atomic<bool>& bf16dp::enabled() {
  static std::atomic<bool> on{bf16dp::supported()};
  return on;
}

namespace {

// "" reports the bf16 decode products' instruction set ("avx512bf16" or "avx2"); "auto" | "avx2" | "avx512bf16"
// selects it.
std::string attention_cpu_isa(c10::string_view request) {
  return switch_cpu_isa("gemma4::attention_cpu_isa", request, bf16dp::enabled(), bf16dp::supported(), "avx512bf16",
                        "AVX-512 F, BW, VL, DQ and AVX512_BF16");
}

std::tuple<at::Tensor, at::Tensor> attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                 const std::optional<at::Tensor>& key_mask, double scale,
                                                 int64_t window) {
  constexpr const char* op = "gemma4::attention";
  check_device(q, op, "q", c10::kCPU);
  const AttentionProblem p = check_attention(op, q, k, v, key_mask, scale, window);
  at::Tensor out = at::empty({p.B, p.T, p.nH, p.hd}, q.options());
  at::Tensor lse = at::empty({p.B, p.nH, p.T}, q.options().dtype(lse_dtype(p.dtype)));
  if (out.numel() == 0) return {out, lse};
  GEMMA4_DISPATCH_FLOATS(p.dtype, "gemma4::attention", [&] {
    forward<scalar_t>(make_params<scalar_t>(p), out.mutable_data_ptr<scalar_t>(),
                      lse.mutable_data_ptr<acc_t<scalar_t>>());
  });
  return {out, lse};
}

}  // namespace
}  // namespace gemma4::attn

TORCH_LIBRARY_IMPL(gemma4, CPU, m) { m.impl("attention", &gemma4::attn::attention_cpu); }
TORCH_LIBRARY_IMPL(gemma4, CompositeExplicitAutograd, m) {
  m.impl("attention_cpu_isa", &gemma4::attn::attention_cpu_isa);
}
