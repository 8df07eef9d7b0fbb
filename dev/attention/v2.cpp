// Dev binding for v2_fwd.h: forward only, tunables exposed.
#include <torch/extension.h>
#include "v2_fwd.h"

std::vector<at::Tensor> fwd(at::Tensor q, at::Tensor k, at::Tensor v, c10::optional<at::Tensor> key_mask,
                            double scale, int64_t window, int64_t bk, int64_t target_m, bool panel_outer) {
  const int64_t B = q.size(0), T = q.size(1), nH = q.size(2), hd = q.size(3), S = k.size(1), nKV = k.size(2);
  auto out = at::empty({B, T, nH, hd}, q.options());
  auto lse = at::empty({B, nH, T}, q.options().dtype(q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
  dev_attn::Tune tune;
  tune.bk = bk; tune.target_m = target_m; tune.gemm2_panel_outer = panel_outer;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "fwd", [&] {
    dev_attn::FwdParams<scalar_t> P;
    P.q = q.data_ptr<scalar_t>(); P.qsB = q.stride(0); P.qsT = q.stride(1); P.qsH = q.stride(2);
    P.k = k.data_ptr<scalar_t>(); P.ksB = k.stride(0); P.ksS = k.stride(1); P.ksH = k.stride(2);
    P.v = v.data_ptr<scalar_t>(); P.vsB = v.stride(0); P.vsS = v.stride(1); P.vsH = v.stride(2);
    P.mask = nullptr; P.msB = P.msS = 0;
    if (key_mask) { P.mask = key_mask->data_ptr<bool>(); P.msB = key_mask->stride(0); P.msS = key_mask->stride(1); }
    P.out = out.data_ptr<scalar_t>(); P.lse = lse.data_ptr();
    P.B = B; P.T_ = T; P.S = S; P.nH = nH; P.nKV = nKV; P.hd = hd; P.G = nH / nKV; P.window = window; P.scale = scale;
    dev_attn::forward<scalar_t>(P, tune);
  });
  return {out, lse};
}
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("fwd", &fwd); }
