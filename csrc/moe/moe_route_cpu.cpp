// gemma4::moe_route and gemma4::moe_route_backward, CPU.
//
// Forward, per token row n of logits [N, E]:
//   p = softmax(logits[n]) in fp32 (fp64 for fp64 logits) over all E experts
//   indices[n] = the top_k experts by p, largest first; ties go to the lower expert index (NaN
//                counts as the largest value, as in torch.topk)
//   weights[n, k] = p[i_k] / sum_k' p[i_k'] * per_expert_scale[i_k]
// -> (weights fp32 [N, K] (fp64 for fp64 logits), indices int64 [N, K]).
// Reference: moe_route in python/gemma4/ops/reference.py (transformers' Gemma4TextRouter after its
// projection).
//
// Backward, indices held constant (as autograd through torch.topk does). With r_k = p[i_k] / s the
// renormalised top-k probabilities, r is a softmax over the chosen logits alone (the full softmax
// denominator cancels; the backward recomputes r that way, K exponentials a row), so with
// g_k = grad_weights[n, k] and gr_k = g_k * scale[i_k]:
//   grad_logits[n, j] = sum_{k: i_k = j} r_k (gr_k - sum_k' gr_k' r_k')     (zero off the top k)
//   grad_scale[e]     = sum_{(n, k): i_k = e} g_k r_k
// Rows are independent: at::parallel_for over blocks of rows; the forward softmax is vectorized,
// the top-k is one insertion pass (K is small).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/checks.h"
#include "common/vec_utils.h"
#include "moe/moe_checks.h"
#include "moe/moe_gemm.h"

namespace gemma4 {
namespace {

// p = softmax(l[0..E)) into p (Acc): max, exp(l - max), scale by 1 / sum, vectorized (E is a few
// hundred at most, one row per call). A NaN anywhere makes the row NaN, as in torch.softmax.
// Every probability, the row's tail included, comes from the same vector exp: equal logits give
// equal probabilities wherever they sit, which the tie rule of top_k_row relies on.
template <typename Acc, typename T>
void softmax_row(const T* l, int64_t E, Acc* p) {
  using V = moe::Vec<Acc>;
  constexpr int64_t W = V::size();
  const int64_t Ev = E / W * W;
  Acc mx = -std::numeric_limits<Acc>::infinity();
  if (Ev > 0) {
    V vmx(mx);
    for (int64_t i = 0; i < Ev; i += W) vmx = at::vec::maximum(vmx, moe::load_vec<Acc>(l + i));  // NaN-propagating
    mx = at::vec::vec_reduce_all<Acc>([](const V& a, const V& b) { return at::vec::maximum(a, b); }, vmx);
  }
  for (int64_t i = Ev; i < E; ++i) {
    const Acc v = static_cast<Acc>(l[i]);
    mx = (std::isnan(v) || v > mx) ? v : mx;
  }
  V vsum(Acc(0));
  for (int64_t i = 0; i < Ev; i += W) {
    const V e = (moe::load_vec<Acc>(l + i) - V(mx)).exp();
    e.store(p + i);
    vsum = vsum + e;
  }
  Acc sum = hsum(vsum);
  if (Ev < E) {  // the tail through the same exp; only its E - Ev lanes are stored and summed
    const V e = (moe::load_vec<Acc>(l + Ev, E - Ev) - V(mx)).exp();
    e.store(p + Ev, static_cast<int>(E - Ev));
    for (int64_t i = Ev; i < E; ++i) sum += p[i];
  }
  const Acc inv = Acc(1) / sum;
  for (int64_t i = 0; i < E; ++i) p[i] *= inv;
}

// The top K of p[0..E), largest first, into idx: one pass with an insertion into the sorted list.
// NaN ranks above every number; ties keep the lower index first (a later equal value never
// displaces an earlier one).
template <typename Acc>
void top_k_row(const Acc* p, int64_t E, int64_t K, int64_t* idx, Acc* val) {
  auto better = [](Acc a, Acc b) {  // a ranks strictly above b
    const bool na = std::isnan(a), nb = std::isnan(b);
    return na ? !nb : (!nb && a > b);
  };
  int64_t n = 0;
  for (int64_t i = 0; i < E; ++i) {
    const Acc v = p[i];
    if (n == K && !better(v, val[K - 1])) continue;
    int64_t pos = n < K ? n++ : K - 1;
    while (pos > 0 && better(v, val[pos - 1])) {
      val[pos] = val[pos - 1];
      idx[pos] = idx[pos - 1];
      --pos;
    }
    val[pos] = v;
    idx[pos] = i;
  }
}

// r_k = p[i_k] / sum_k p[i_k] for the chosen experts idx[0..K).
template <typename Acc>
void renormalise(const Acc* p, const int64_t* idx, int64_t K, Acc* r) {
  Acc s = 0;
  for (int64_t k = 0; k < K; ++k) s += p[idx[k]];
  for (int64_t k = 0; k < K; ++k) r[k] = p[idx[k]] / s;
}

// r_k = softmax over the chosen logits l[i_0..i_K) = p[i_k] / sum_k p[i_k] (the full softmax's
// denominator cancels), for the backward: K exponentials per row instead of E.
template <typename Acc, typename T>
void top_softmax(const T* l, const int64_t* idx, int64_t K, Acc* r) {
  Acc mx = -std::numeric_limits<Acc>::infinity();
  for (int64_t k = 0; k < K; ++k) {
    const Acc v = static_cast<Acc>(l[idx[k]]);
    mx = (std::isnan(v) || v > mx) ? v : mx;
  }
  Acc s = 0;
  for (int64_t k = 0; k < K; ++k) {
    r[k] = std::exp(static_cast<Acc>(l[idx[k]]) - mx);
    s += r[k];
  }
  for (int64_t k = 0; k < K; ++k) r[k] /= s;
}

std::tuple<at::Tensor, at::Tensor> moe_route_cpu(const at::Tensor& logits_in, const at::Tensor& scale_in,
                                                  int64_t top_k) {
  constexpr const char* op = "gemma4::moe_route";
  check_device(logits_in, op, "logits", c10::kCPU);
  const moe::RouteProblem p = moe::check_route(op, logits_in, scale_in, top_k);
  const at::Tensor &logits = p.logits, &scale = p.scale;
  const int64_t N = p.N, E = p.E, K = p.K;
  at::Tensor weights = at::empty({N, K}, logits.options().dtype(moe::route_weights_dtype(p.dtype)));
  at::Tensor indices = at::empty({N, K}, logits.options().dtype(at::kLong));
  if (N == 0) return {weights, indices};
  GEMMA4_DISPATCH_FLOATS(logits.scalar_type(), "moe_route", [&] {
    using Acc = acc_t<scalar_t>;
    const scalar_t* l = logits.data_ptr<scalar_t>();
    Acc* w = weights.data_ptr<Acc>();
    int64_t* ix = indices.data_ptr<int64_t>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, scale.scalar_type(), "moe_route_scale", [&] {
      const scalar_t* sc = scale.data_ptr<scalar_t>();
      // ~1 us of work per row of 128 experts: only a few hundred rows are worth a second thread.
      at::parallel_for(0, N, std::max<int64_t>(1, 65536 / E), [&](int64_t b, int64_t e) {
        std::vector<Acc> p(E), r(K), top(K);
        for (int64_t n = b; n < e; ++n) {
          softmax_row(l + n * E, E, p.data());
          int64_t* irow = ix + n * K;
          top_k_row(p.data(), E, K, irow, top.data());
          renormalise(p.data(), irow, K, r.data());
          for (int64_t k = 0; k < K; ++k) w[n * K + k] = r[k] * static_cast<Acc>(sc[irow[k]]);
        }
      });
    });
  });
  return {weights, indices};
}

std::tuple<at::Tensor, at::Tensor> moe_route_backward_cpu(const at::Tensor& grad_weights_in,
                                                          const at::Tensor& logits_in, const at::Tensor& scale_in,
                                                          const at::Tensor& indices_in) {
  constexpr const char* op = "gemma4::moe_route_backward";
  check_device(logits_in, op, "logits", c10::kCPU);
  const moe::RouteProblem p = moe::check_route_backward(op, grad_weights_in, logits_in, scale_in, indices_in);
  const at::Tensor &logits = p.logits, &scale = p.scale, &grad_weights = p.grad_weights, &indices = p.indices;
  const int64_t N = p.N, E = p.E, K = p.K;
  const int64_t* ix = indices.data_ptr<int64_t>();
  for (int64_t i = 0; i < N * K; ++i) {
    TORCH_CHECK(ix[i] >= 0 && ix[i] < E, op, ": indices must be in [0, ", E, "), got ", ix[i], " at [", i / K,
                ", ", i % K, "]");
  }

  at::Tensor grad_logits = at::zeros_like(logits);
  at::Tensor grad_scale = at::empty_like(scale);
  GEMMA4_DISPATCH_FLOATS(logits.scalar_type(), "moe_route_backward", [&] {
    using Acc = acc_t<scalar_t>;
    using LT = scalar_t;
    const LT* l = logits.data_ptr<LT>();
    LT* gl = grad_logits.data_ptr<LT>();
    const at::Tensor gw_t = grad_weights.to(moe::route_weights_dtype(p.dtype));  // the forward's weights dtype
    const Acc* gw = gw_t.data_ptr<Acc>();
    std::vector<Acc> gsr(N * K);  // g_k r_k per pair, summed into grad_scale afterwards
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, scale.scalar_type(), "moe_route_backward_scale", [&] {
      const scalar_t* sc = scale.data_ptr<scalar_t>();
      at::parallel_for(0, N, std::max<int64_t>(1, 65536 / (K + 8)), [&](int64_t b, int64_t e) {
        std::vector<Acc> r(K), gl_row(E);
        for (int64_t n = b; n < e; ++n) {
          const int64_t* irow = ix + n * K;
          const Acc* g = gw + n * K;
          top_softmax(l + n * E, irow, K, r.data());
          Acc dot = 0;  // sum_k gr_k r_k
          for (int64_t k = 0; k < K; ++k) dot += g[k] * static_cast<Acc>(sc[irow[k]]) * r[k];
          for (int64_t k = 0; k < K; ++k) {
            gl_row[irow[k]] = 0;
            gsr[n * K + k] = g[k] * r[k];
          }
          for (int64_t k = 0; k < K; ++k) gl_row[irow[k]] += r[k] * (g[k] * static_cast<Acc>(sc[irow[k]]) - dot);
          for (int64_t k = 0; k < K; ++k) gl[n * E + irow[k]] = static_cast<LT>(gl_row[irow[k]]);
        }
      });
      // grad_scale: a serial pass in pair order (N*K adds; deterministic, no races).
      std::vector<Acc> gs(E, Acc(0));
      for (int64_t i = 0; i < N * K; ++i) gs[ix[i]] += gsr[i];
      scalar_t* gsp = grad_scale.data_ptr<scalar_t>();
      for (int64_t i = 0; i < E; ++i) gsp[i] = static_cast<scalar_t>(gs[i]);
    });
  });
  return {grad_logits, grad_scale};
}

}  // namespace

TORCH_LIBRARY_IMPL(gemma4, CPU, m) {
  m.impl("moe_route", &moe_route_cpu);
  m.impl("moe_route_backward", &moe_route_backward_cpu);
}

}  // namespace gemma4
