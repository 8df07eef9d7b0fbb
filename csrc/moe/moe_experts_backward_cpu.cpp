// gemma4::moe_experts_backward, CPU: (grad_x, grad_weights, grad_gate_up, grad_down) of
// moe_experts (see moe_experts_cpu.cpp and moe_experts in python/gemma4/ops/reference.py).
//
// For a pair (n, k) routed to expert e, with g = G_e x, u = U_e x, h = act(g) * u, w = weights[n,k],
// y = grad_out[n]:
//   dh_raw = down[e]^T y               (the gradient of h before the routing weight)
//   grad_weights[n,k] = <dh_raw, h>
//   dh = w dh_raw;  dg = dh * u * act'(g);  du = dh * act(g)
//   grad_down[e]    += (w y) h^T                grad_gate_up[e] += [dg; du] x^T
//   grad_x[n]       += G_e^T dg + U_e^T du
// Intermediates are recomputed per expert group (nothing is saved by the forward), and experts
// that no token chose get zero gradients.
//
// Same parallel scheme as the forward, split by weight slices so no two threads write the same
// element:
//   phase A: thread t owns intermediate columns [j0, j1): it recomputes g, u and dh_raw for those
//            columns, forms dg, du, and writes columns j0..j1 of grad_down[e] and rows j0..j1 (gate)
//            and Im+j0..Im+j1 (up) of grad_gate_up[e]; <dh_raw, h> is kept in parts of one vector
//            of columns each and summed in column order at the end.
//   phase B: thread t owns hidden columns [c0, c1) of grad_x and adds G_e^T dg + U_e^T du for every
//            pair of every expert, in ascending expert order.
// The weight gradients are written once each, rounded once, straight from the fp32 accumulators.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <string>

#include "common/activation_math.h"
#include "common/checks.h"
#include "moe/moe_common.h"
#include "moe/moe_gemm.h"

namespace gemma4 {
namespace {

constexpr const char* kOp = "gemma4::moe_experts_backward";

template <typename T, typename WT>
void experts_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weights,
                      const moe::Groups& groups, const at::Tensor& gate_up, const at::Tensor& down, Activation act,
                      const moe::ExpertsProblem& s, at::Tensor& grad_x, at::Tensor& grad_w, at::Tensor& grad_gu,
                      at::Tensor& grad_dn) {
  using Acc = acc_t<T>;
  using V = moe::Vec<Acc>;
  constexpr int64_t W = V::size();
  const int64_t N = s.N, H = s.H, K = s.K, E = s.E, Im = s.Im, P = N * K;
  const T* gu_p = gate_up.data_ptr<T>();
  const T* dn_p = down.data_ptr<T>();
  T* ggu_p = grad_gu.data_ptr<T>();
  T* gdn_p = grad_dn.data_ptr<T>();
  const std::vector<Acc> w = moe::weights_as_acc<Acc>(weights);
  const int64_t* pair = groups.pair.data();
  const int64_t* off = groups.offset.data();

  std::vector<Acc> x_buf, y_buf, gx_buf;
  const Acc* xf;
  const Acc* yf;
  Acc* gx;
  if constexpr (std::is_same_v<T, Acc>) {
    xf = x.data_ptr<T>();
    yf = grad_out.data_ptr<T>();
    grad_x.zero_();
    gx = grad_x.data_ptr<T>();
  } else {
    x_buf.resize(N * H);
    y_buf.resize(N * H);
    moe::widen_rows(x.data_ptr<T>(), x_buf.data(), N, H);
    moe::widen_rows(grad_out.data_ptr<T>(), y_buf.data(), N, H);
    xf = x_buf.data();
    yf = y_buf.data();
    gx_buf.assign(N * H, Acc(0));
    gx = gx_buf.data();
  }

  const int64_t T_ = std::max<int64_t>(1, at::get_num_threads());
  // <dh_raw, h> in parts of one vector of columns each, by sorted position: summed in a fixed order
  // at the end, so grad_weights does not depend on how the columns were split over threads.
  const int64_t nb = (Im + W - 1) / W;
  std::vector<Acc> dw_part(P * nb, Acc(0));

  const int64_t max_pairs = std::max<int64_t>(1, (int64_t(64) << 20) / (2 * std::max<int64_t>(Im, 1) * sizeof(Acc)));
  const auto chunks = moe::expert_chunks(groups, max_pairs);
  int64_t scratch_pairs = 0;
  for (auto [e0, e1] : chunks) scratch_pairs = std::max(scratch_pairs, off[e1] - off[e0]);
  std::vector<Acc> g_buf(scratch_pairs * Im), u_buf(scratch_pairs * Im);  // g, u, then dg, du

  for (auto [e0, e1] : chunks) {
    const int64_t base = off[e0];

    // Phase A: columns [j0, j1) of the intermediate.
    moe::for_each_thread([&](int64_t t, int64_t) {
      const auto [j0, j1] = moe::split(t, T_, Im, W);
      const int64_t nj = j1 - j0;
      if (nj <= 0) return;
      std::vector<const Acc*> xrows, yrows;
      std::vector<Acc> dh, hw;
      for (int64_t e = e0; e < e1; ++e) {
        const int64_t m = off[e + 1] - off[e];
        if (m == 0) continue;
        xrows.resize(m);
        yrows.resize(m);
        for (int64_t r = 0; r < m; ++r) {
          const int64_t n = pair[off[e] + r] / K;
          xrows[r] = xf + n * H;
          yrows[r] = yf + n * H;
        }
        dh.resize(m * nj);
        hw.resize(m * nj);
        Acc* gb = g_buf.data() + (off[e] - base) * Im;
        Acc* ub = u_buf.data() + (off[e] - base) * Im;
        const T* Ge = gu_p + e * 2 * Im * H;
        const T* Ue = Ge + Im * H;
        const T* De = dn_p + e * H * Im;

        // g, u (recomputed) and dh_raw = y @ down[e][:, j0:j1].
        moe::gemm_nt<Acc>(m, nj, H, xrows.data(), Ge + j0 * H, H,
                          [&](int64_t i, int64_t j, Acc v) { gb[i * Im + j0 + j] = v; });
        moe::gemm_nt<Acc>(m, nj, H, xrows.data(), Ue + j0 * H, H,
                          [&](int64_t i, int64_t j, Acc v) { ub[i * Im + j0 + j] = v; });
        moe::gemm_outer<Acc, T>(
            m, nj, H, [&](int64_t i, int64_t c) { return yrows[i][c]; },
            [&](int64_t c) { return De + c * Im + j0; },
            [&](int64_t i, int64_t j, const V& v, int64_t n) { v.store(dh.data() + i * nj + j, n); });

        // Elementwise: h, the weight gradient part, w h (for grad_down), dg and du (in place of g, u).
        for (int64_t i = 0; i < m; ++i) {
          const Acc wi = w[pair[off[e] + i]];
          Acc* gr = gb + i * Im + j0;
          Acc* ur = ub + i * Im + j0;
          Acc* dhr = dh.data() + i * nj;
          Acc* hwr = hw.data() + i * nj;
          Acc* dwp = dw_part.data() + (off[e] + i) * nb + j0 / W;  // j0 is a multiple of W
          for (int64_t j = 0; j < nj; j += W) {
            const int64_t n = std::min(W, nj - j);
            const V g = V::loadu(gr + j, n), u = V::loadu(ur + j, n), d = V::loadu(dhr + j, n);
            V a, da;
            activate_and_grad_vec(act, g, a, da);
            const V h = a * u;
            dwp[j / W] = hsum(d * h);  // lanes past n were loaded as zeros: they add 0
            (h * V(wi)).store(hwr + j, n);
            const V dhw = d * V(wi);
            (dhw * u * da).store(gr + j, n);
            (dhw * a).store(ur + j, n);
          }
        }

        // grad_down[e][c, j0 + j] = sum_i y_i[c] (w_i h_i[j]).
        T* gDe = gdn_p + e * H * Im;
        moe::gemm_outer<Acc, Acc>(
            H, nj, m, [&](int64_t c, int64_t i) { return yrows[i][c]; },
            [&](int64_t i) { return hw.data() + i * nj; },
            [&](int64_t c, int64_t j, const V& v, int64_t n) { moe::store_vec<T, Acc>(gDe + c * Im + j0 + j, v, n); });
        // grad_gate_up[e][j0 + r, c] = sum_i dg_i[j0 + r] x_i[c]; likewise the up rows with du.
        T* gGe = ggu_p + e * 2 * Im * H;
        T* gUe = gGe + Im * H;
        moe::gemm_outer<Acc, Acc>(
            nj, H, m, [&](int64_t r, int64_t i) { return gb[i * Im + j0 + r]; },
            [&](int64_t i) { return xrows[i]; },
            [&](int64_t r, int64_t c, const V& v, int64_t n) { moe::store_vec<T, Acc>(gGe + (j0 + r) * H + c, v, n); });
        moe::gemm_outer<Acc, Acc>(
            nj, H, m, [&](int64_t r, int64_t i) { return ub[i * Im + j0 + r]; },
            [&](int64_t i) { return xrows[i]; },
            [&](int64_t r, int64_t c, const V& v, int64_t n) { moe::store_vec<T, Acc>(gUe + (j0 + r) * H + c, v, n); });
      }
    });

    // Phase B: grad_x[:, c0:c1] += dg @ G_e[:, c0:c1] + du @ U_e[:, c0:c1].
    moe::for_each_thread([&](int64_t t, int64_t) {
      const auto [c0, c1] = moe::split(t, T_, H, W);
      const int64_t nc = c1 - c0;
      if (nc <= 0) return;
      std::vector<Acc*> orows;
      for (int64_t e = e0; e < e1; ++e) {
        const int64_t m = off[e + 1] - off[e];
        if (m == 0) continue;
        orows.resize(m);
        for (int64_t r = 0; r < m; ++r) orows[r] = gx + (pair[off[e] + r] / K) * H + c0;
        const Acc* gb = g_buf.data() + (off[e] - base) * Im;
        const Acc* ub = u_buf.data() + (off[e] - base) * Im;
        const T* Ge = gu_p + e * 2 * Im * H;
        const T* Ue = Ge + Im * H;
        auto add = [&](int64_t i, int64_t j, const V& v, int64_t n) {
          Acc* o = orows[i] + j;
          (V::loadu(o, n) + v).store(o, n);
        };
        moe::gemm_outer<Acc, T>(
            m, nc, Im, [&](int64_t i, int64_t r) { return gb[i * Im + r]; },
            [&](int64_t r) { return Ge + r * H + c0; }, add);
        moe::gemm_outer<Acc, T>(
            m, nc, Im, [&](int64_t i, int64_t r) { return ub[i * Im + r]; },
            [&](int64_t r) { return Ue + r * H + c0; }, add);
      }
    });
  }

  // grad_weights: the parts in column order; grad_x rounded once; zero gradients for the experts
  // nobody chose.
  WT* gw = grad_w.data_ptr<WT>();
  at::parallel_for(0, P, 4096, [&](int64_t b, int64_t e) {
    for (int64_t pos = b; pos < e; ++pos) {
      Acc v = 0;
      for (int64_t b = 0; b < nb; ++b) v += dw_part[pos * nb + b];
      gw[pair[pos]] = static_cast<WT>(v);
    }
  });
  if constexpr (!std::is_same_v<T, Acc>) {
    T* o = grad_x.data_ptr<T>();
    at::parallel_for(0, N, std::max<int64_t>(1, 16384 / H), [&](int64_t b, int64_t e) {
      for (int64_t n = b; n < e; ++n) moe::store_row<T, Acc>(o + n * H, gx + n * H, H);
    });
  }
  at::parallel_for(0, E, 1, [&](int64_t b, int64_t e1) {
    for (int64_t e = b; e < e1; ++e) {
      if (off[e + 1] > off[e]) continue;
      std::memset(static_cast<void*>(ggu_p + e * 2 * Im * H), 0, sizeof(T) * 2 * Im * H);  // all-zero bits are 0 in every float dtype
      std::memset(static_cast<void*>(gdn_p + e * H * Im), 0, sizeof(T) * H * Im);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> moe_experts_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weights, const at::Tensor& indices,
    const at::Tensor& gate_up, const at::Tensor& down, c10::string_view activation) {
  check_device(x, kOp, "x", c10::kCPU);
  const moe::ExpertsProblem p =
      moe::check_experts_backward(kOp, grad_out, x, weights, indices, gate_up, down, activation);
  const moe::Groups groups = moe::group_by_expert(kOp, p.indices, p.E);

  at::Tensor grad_x = at::empty_like(p.x);
  at::Tensor grad_w = at::empty_like(p.weights);
  at::Tensor grad_gu = at::empty_like(p.gate_up);
  at::Tensor grad_dn = at::empty_like(p.down);
  if (p.N * p.K == 0 || p.H == 0 || p.Im == 0) {  // nothing flows: every gradient is zero
    grad_x.zero_();
    grad_w.zero_();
    grad_gu.zero_();
    grad_dn.zero_();
    return {grad_x, grad_w, grad_gu, grad_dn};
  }
  GEMMA4_DISPATCH_FLOATS(p.dtype, "moe_experts_backward", [&] {
    using T = scalar_t;
    if (p.weights.scalar_type() == p.dtype) {
      experts_backward<T, T>(p.grad_out, p.x, p.weights, groups, p.gate_up, p.down, p.act, p, grad_x, grad_w,
                             grad_gu, grad_dn);
    } else {
      experts_backward<T, float>(p.grad_out, p.x, p.weights, groups, p.gate_up, p.down, p.act, p, grad_x, grad_w,
                                 grad_gu, grad_dn);
    }
  });
  return {grad_x, grad_w, grad_gu, grad_dn};
}

}  // namespace

TORCH_LIBRARY_IMPL(gemma4, CPU, m) { m.impl("moe_experts_backward", &moe_experts_backward_cpu); }

}  // namespace gemma4
