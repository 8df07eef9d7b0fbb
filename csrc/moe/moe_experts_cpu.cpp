// gemma4::moe_experts, CPU.
//
//   out[n] = sum_k weights[n,k] * down[e] @ (act(G_e x[n]) * (U_e x[n])),   e = indices[n,k],
//   gate_up[e] = [G_e; U_e] ([2*Im, H]), down[e] [H, Im], x [N, H] -> out [N, H] in x's dtype.
// Reference: moe_experts in python/gemma4/ops/reference.py (transformers' Gemma4TextExperts).
//
// The (token, slot) pairs are grouped by expert (a counting sort, moe_common.h), then each expert's
// tokens go through its two GEMMs together, so every expert weight is read once per call however
// many tokens chose it. Weights stay in their dtype and are widened in registers (moe_gemm.h);
// everything accumulates in fp32 (fp64 for fp64) and the output is rounded once.
//
// Parallel without races or atomics: both GEMMs are split by *weight rows* across threads.
//   phase 1: thread t owns intermediate columns [j0, j1): rows j0..j1 of G_e and of U_e for every
//            expert; it writes gate/up activations of those columns for all pairs, then fuses
//            h = act(gate) * up in place.
//   phase 2: thread t owns hidden columns [c0, c1): rows c0..c1 of down[e] for every expert; it adds
//            w * (h @ down[e]^T) into out[token, c0:c1] for all pairs of all experts, in ascending
//            expert order, so the sum is identical whatever the thread count.
// Each thread reads a disjoint slice of every weight matrix (no weight is read twice), the work is
// balanced whatever the routing, and the one barrier is the end of phase 1.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <string>

#include "common/activation_math.h"
#include "common/checks.h"
#include "moe/moe_common.h"
#include "moe/moe_gemm.h"

namespace gemma4 {
namespace {

constexpr const char* kOp = "gemma4::moe_experts";

template <typename T>
void experts_forward(const at::Tensor& x, const at::Tensor& weights, const moe::Groups& groups,
                     const at::Tensor& gate_up, const at::Tensor& down, Activation act,
                     const moe::ExpertsProblem& s, at::Tensor& out) {
  using Acc = acc_t<T>;
  using V = moe::Vec<Acc>;
  constexpr int64_t W = V::size();
  const int64_t N = s.N, H = s.H, K = s.K, Im = s.Im;
  const T* gu_p = gate_up.data_ptr<T>();
  const T* dn_p = down.data_ptr<T>();
  const std::vector<Acc> w = moe::weights_as_acc<Acc>(weights);
  const int64_t* pair = groups.pair.data();
  const int64_t* off = groups.offset.data();

  // x in the accumulation type (the GEMMs read it once per expert that the token chose).
  std::vector<Acc> x_buf;
  const Acc* xf;
  if constexpr (std::is_same_v<T, Acc>) {
    xf = x.data_ptr<T>();
  } else {
    x_buf.resize(N * H);
    moe::widen_rows(x.data_ptr<T>(), x_buf.data(), N, H);
    xf = x_buf.data();
  }
  // fp32 (fp64) output accumulator: the output itself when it has that dtype.
  std::vector<Acc> acc_buf;
  Acc* acc;
  if constexpr (std::is_same_v<T, Acc>) {
    out.zero_();
    acc = out.data_ptr<T>();
  } else {
    acc_buf.assign(N * H, Acc(0));
    acc = acc_buf.data();
  }

  // Scratch for gate / up (then h) of the pairs of one run of experts: at most ~64 MiB.
  const int64_t max_pairs = std::max<int64_t>(1, (int64_t(64) << 20) / (2 * std::max<int64_t>(Im, 1) * sizeof(Acc)));
  const auto chunks = moe::expert_chunks(groups, max_pairs);
  int64_t scratch_pairs = 0;
  for (auto [e0, e1] : chunks) scratch_pairs = std::max(scratch_pairs, off[e1] - off[e0]);
  std::vector<Acc> g_buf(scratch_pairs * Im), u_buf(scratch_pairs * Im);

  for (auto [e0, e1] : chunks) {
    const int64_t base = off[e0];

    // Phase 1: gate/up GEMM over rows [j0, j1) of G_e and U_e, then h = act(gate) * up.
    moe::for_each_thread([&](int64_t t, int64_t T_) {
      const auto [j0, j1] = moe::split(t, T_, Im, W);
      if (j0 >= j1) return;
      std::vector<const Acc*> arows;
      for (int64_t e = e0; e < e1; ++e) {
        const int64_t m = off[e + 1] - off[e];
        if (m == 0) continue;
        arows.resize(m);
        for (int64_t r = 0; r < m; ++r) arows[r] = xf + (pair[off[e] + r] / K) * H;
        Acc* gb = g_buf.data() + (off[e] - base) * Im;
        Acc* ub = u_buf.data() + (off[e] - base) * Im;
        const T* Ge = gu_p + e * 2 * Im * H;
        const T* Ue = Ge + Im * H;
        moe::gemm_nt<Acc>(m, j1 - j0, H, arows.data(), Ge + j0 * H, H,
                          [&](int64_t i, int64_t j, Acc v) { gb[i * Im + j0 + j] = v; });
        moe::gemm_nt<Acc>(m, j1 - j0, H, arows.data(), Ue + j0 * H, H,
                          [&](int64_t i, int64_t j, Acc v) { ub[i * Im + j0 + j] = v; });
        for (int64_t r = 0; r < m; ++r) {
          Acc* gr = gb + r * Im;
          const Acc* ur = ub + r * Im;
          for (int64_t j = j0; j < j1; j += W) {
            const int64_t n = std::min(W, j1 - j);
            const V h = activate_vec(act, V::loadu(gr + j, n)) * V::loadu(ur + j, n);
            h.store(gr + j, n);
          }
        }
      }
    });

    // Phase 2: out[token, c0:c1] += w * (h @ down[e][c0:c1]^T).
    moe::for_each_thread([&](int64_t t, int64_t T_) {
      const auto [c0, c1] = moe::split(t, T_, H, W);
      if (c0 >= c1) return;
      std::vector<const Acc*> arows;
      std::vector<Acc*> orows;
      std::vector<Acc> wr;
      for (int64_t e = e0; e < e1; ++e) {
        const int64_t m = off[e + 1] - off[e];
        if (m == 0) continue;
        arows.resize(m);
        orows.resize(m);
        wr.resize(m);
        for (int64_t r = 0; r < m; ++r) {
          const int64_t p = pair[off[e] + r];
          arows[r] = g_buf.data() + (off[e] - base + r) * Im;
          orows[r] = acc + (p / K) * H + c0;
          wr[r] = w[p];
        }
        moe::gemm_nt<Acc>(m, c1 - c0, Im, arows.data(), dn_p + (e * H + c0) * Im, Im,
                          [&](int64_t i, int64_t j, Acc v) { orows[i][j] += wr[i] * v; });
      }
    });
  }

  if constexpr (!std::is_same_v<T, Acc>) {  // round once
    T* o = out.data_ptr<T>();
    at::parallel_for(0, N, std::max<int64_t>(1, 16384 / H), [&](int64_t b, int64_t e) {
      for (int64_t n = b; n < e; ++n) moe::store_row<T, Acc>(o + n * H, acc + n * H, H);
    });
  }
}

at::Tensor moe_experts_cpu(const at::Tensor& x, const at::Tensor& weights, const at::Tensor& indices,
                           const at::Tensor& gate_up, const at::Tensor& down, c10::string_view activation) {
  check_device(x, kOp, "x", c10::kCPU);
  const moe::ExpertsProblem p = moe::check_experts(kOp, x, weights, indices, gate_up, down, activation);
  const moe::Groups groups = moe::group_by_expert(kOp, p.indices, p.E);
  at::Tensor out = at::empty({p.N, p.H}, p.x.options());
  if (out.numel() == 0) return out;
  GEMMA4_DISPATCH_FLOATS(p.dtype, "moe_experts", [&] {
    experts_forward<scalar_t>(p.x, p.weights, groups, p.gate_up, p.down, p.act, p, out);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gemma4, CPU, m) { m.impl("moe_experts", &moe_experts_cpu); }

}  // namespace gemma4
