// gemma4::attention on CPU: causal / sliding-window / key-masked grouped-query attention with an online
// softmax, returning (out [B,T,nH,hd], lse [B,nH,T]). The kernel is attention_kernels.h::forward;
// the reference is python/gemma4/ops/reference.py::attention.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "attention/attention_checks.h"

namespace gemma4::attn {
namespace {

std::tuple<at::Tensor, at::Tensor> attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                 const std::optional<at::Tensor>& key_mask, double scale,
                                                 int64_t window) {
  constexpr const char* op = "gemma4::attention";
  check_inputs(op, q, k, v, key_mask);
  const int64_t B = q.size(0), T = q.size(1), nH = q.size(2), hd = q.size(3);
  at::Tensor out = at::empty({B, T, nH, hd}, q.options());
  at::Tensor lse = at::empty({B, nH, T}, q.options().dtype(lse_dtype(q.scalar_type())));
  if (out.numel() == 0) return {out, lse};
  GEMMA4_DISPATCH_FLOATS(q.scalar_type(), "gemma4::attention", [&] {
    const Params<scalar_t> P = make_params<scalar_t>(q, k, v, key_mask, scale, window);
    forward<scalar_t>(P, out.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<acc_type<scalar_t>>());
  });
  return {out, lse};
}

}  // namespace
}  // namespace gemma4::attn

TORCH_LIBRARY_IMPL(gemma4, CPU, m) { m.impl("attention", &gemma4::attn::attention_cpu); }
