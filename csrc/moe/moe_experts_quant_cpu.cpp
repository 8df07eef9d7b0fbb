// gemma4::moe_experts_quant (and its backward) on CPU: the MoE experts on int4/int8 packed weights.
//
//   out[n] = sum_k weights[n,k] * y_e(x[n]),  e = indices[n,k],
//   y_e(x) = qgemm(act(G_e x) * (U_e x), down_e)  with  [G_e x; U_e x] = qgemm(x, gate_up_e),
// each qgemm and the gated activation rounded to x's dtype (as the ops gemma4::qgemm and
// gemma4::gated_activation each round), out accumulated in float32 and rounded once to x's dtype.
// Reference: moe_experts_quant in python/gemma4/ops/reference.py.
//
// The (token, slot) pairs are grouped by expert (the counting sort of moe_common.h, which range-checks
// every index), then each expert that any token chose runs over its tokens together: the gather of its
// x rows, the CPU qgemm on its gate_up slice (quant::qgemm_cpu: the same kernels, routes and threads as the
// gemma4::qgemm op), the gated activation (common/activation_math.h, gated_activation_cpu's maths), the
// qgemm on its down slice, and out[token] += w * y. Experts run one after another, in ascending order;
// each qgemm splits its weight rows over the intra-op threads (torch.set_num_threads). The result is the
// one the Python loop over experts gave (QuantExperts.forward before this op), bit for bit: every step is
// the same function on the same rows, and the sum runs in the same order (expert, then pair).
//
// The backward (grad_x, grad_weights) is composed of ops (moe_experts_quant_composed.cpp).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/activation_math.h"
#include "common/vec_utils.h"
#include "moe/moe_common.h"
#include "moe/moe_experts_quant.h"
#include "quant/qgemm_cpu.h"

namespace gemma4 {
namespace {

constexpr const char* kOp = "gemma4::moe_experts_quant";

// h [m, Im] = act(gu[:, :Im]) * gu[:, Im:] for gu [m, 2 Im], in T (Im % 32 == 0: whole vectors only).
// The lanes compute exactly what gated_activation_cpu computes (the same vector maths and fast-exp choice).
template <typename T>
void gated_rows(const T* gu, T* h, int64_t m, int64_t Im, Activation act) {
  using IO = VecIO<T>;
  constexpr int64_t W = IO::N;
  constexpr bool kFastExp = c10::is_reduced_floating_point_v<T>;
  at::parallel_for(0, m, row_grain(Im), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* gate = gu + r * 2 * Im;  // [Im]
      const T* up = gate + Im;          // [Im]
      T* out = h + r * Im;              // [Im]
      for (int64_t j = 0; j < Im; j += W)
        IO::store(out + j, activate_vec<kFastExp>(act, IO::load(gate + j)) * IO::load(up + j));
    }
  });
}

// out[pair[r] / K] += w[pair[r]] * y[r] for r in [0, m), in r order. The product is rounded to float32 and
// then added (index_add_ of y.float() * w in the Python loop): it goes through `scaled` [m, H] in a loop
// of its own, so the compiler cannot fuse the two into one multiply-add. Threads split the columns.
template <typename T>
void add_scaled_rows(const T* y, int64_t m, int64_t H, const int64_t* pair, int64_t K, const float* w,
                     float* scaled, float* out) {
  at::parallel_for(0, H, std::max<int64_t>(64, 16384 / m), [&](int64_t c0, int64_t c1) {
    for (int64_t r = 0; r < m; ++r) {
      const T* yr = y + r * H;
      float* sr = scaled + r * H;
      const float wr = w[pair[r]];
      for (int64_t c = c0; c < c1; ++c) sr[c] = static_cast<float>(yr[c]) * wr;
    }
    for (int64_t r = 0; r < m; ++r) {
      float* orow = out + (pair[r] / K) * H;
      const float* sr = scaled + r * H;
      for (int64_t c = c0; c < c1; ++c) orow[c] += sr[c];
    }
  });
}

template <typename T>
void experts_forward(const moe::QuantExpertsProblem& p, const moe::Groups& groups, at::Tensor& out) {
  const int64_t H = p.H, Im = p.Im, K = p.K;
  const T* x = p.x.const_data_ptr<T>();
  const std::vector<float> w = moe::weights_as_acc<float>(p.weights);
  const int64_t* pair = groups.pair.data();
  const int64_t* off = groups.offset.data();
  int64_t max_rows = 0;
  for (int64_t e = 0; e < p.E; ++e) max_rows = std::max(max_rows, off[e + 1] - off[e]);
  const auto opt = p.x.options();
  at::Tensor xe_buf = at::empty({max_rows, H}, opt);   // the chosen tokens' x rows
  at::Tensor h_buf = at::empty({max_rows, Im}, opt);   // act(gate) * up
  std::vector<float> scaled(max_rows * H);
  float* acc = out.mutable_data_ptr<float>();
  for (int64_t e = 0; e < p.E; ++e) {
    const int64_t m = off[e + 1] - off[e];
    if (m == 0) continue;
    const int64_t* pe = pair + off[e];  // [m] pair ids n*K + k, ascending
    at::Tensor xe = xe_buf.narrow(0, 0, m);  // [m, H]
    T* xp = xe.mutable_data_ptr<T>();
    for (int64_t r = 0; r < m; ++r) std::memcpy(xp + r * H, x + (pe[r] / K) * H, H * sizeof(T));
    const at::Tensor gu = quant::qgemm_cpu(xe, p.gate_up_qweight.select(0, e), p.gate_up_scales.select(0, e),
                                           std::nullopt);  // [m, 2 Im]
    at::Tensor h = h_buf.narrow(0, 0, m);  // [m, Im]
    gated_rows<T>(gu.const_data_ptr<T>(), h.mutable_data_ptr<T>(), m, Im, p.act);
    const at::Tensor y = quant::qgemm_cpu(h, p.down_qweight.select(0, e), p.down_scales.select(0, e),
                                          std::nullopt);  // [m, H]
    add_scaled_rows<T>(y.const_data_ptr<T>(), m, H, pe, K, w.data(), scaled.data(), acc);
  }
}

at::Tensor moe_experts_quant_cpu(const at::Tensor& x, const at::Tensor& weights, const at::Tensor& indices,
                                 const at::Tensor& gate_up_qweight, const at::Tensor& gate_up_scales,
                                 const at::Tensor& down_qweight, const at::Tensor& down_scales,
                                 c10::string_view activation) {
  check_device(x, kOp, "x", c10::kCPU);
  const moe::QuantExpertsProblem p = moe::check_experts_quant(kOp, x, weights, indices, gate_up_qweight,
                                                              gate_up_scales, down_qweight, down_scales, activation);
  const moe::Groups groups = moe::group_by_expert(kOp, p.indices, p.E);
  at::Tensor out = at::zeros({p.N, p.H}, p.x.options().dtype(at::kFloat));  // [N, H] float32
  if (p.N == 0) return out.to(p.dtype);
  if (p.dtype == at::kFloat) {
    experts_forward<float>(p, groups, out);
  } else if (p.dtype == at::kBFloat16) {
    experts_forward<c10::BFloat16>(p, groups, out);
  } else {
    experts_forward<c10::Half>(p, groups, out);
  }
  return out.to(p.dtype);
}

std::tuple<at::Tensor, at::Tensor> moe_experts_quant_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weights, const at::Tensor& indices,
    const at::Tensor& gate_up_qweight, const at::Tensor& gate_up_scales, const at::Tensor& down_qweight,
    const at::Tensor& down_scales, c10::string_view activation) {
  constexpr const char* op = "gemma4::moe_experts_quant_backward";
  check_device(x, op, "x", c10::kCPU);
  const moe::QuantExpertsProblem p = moe::check_experts_quant_backward(
      op, grad_out, x, weights, indices, gate_up_qweight, gate_up_scales, down_qweight, down_scales, activation);
  return moe::experts_quant_backward_composed(op, p);
}

}  // namespace

TORCH_LIBRARY_IMPL(gemma4, CPU, m) {
  m.impl("moe_experts_quant", &moe_experts_quant_cpu);
  m.impl("moe_experts_quant_backward", &moe_experts_quant_backward_cpu);
}

}  // namespace gemma4
