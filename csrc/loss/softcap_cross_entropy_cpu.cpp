// gemma4::softcap_cross_entropy on the CPU. Per row i of logits [n, V] (pre-cap, dtype T):
//   c   = cap * tanh(x / cap), rounded as transformers rounds it in T (x / cap, the tanh and the product
//         each rounded to T); c = x without a cap
//   lse = max + log(sum_j exp(c_j - max)), in the accumulation type (fp32, fp64 for fp64)
//   loss[i] = w_i * (lse - c[target_i])                                     (returned)
//   row     = w_i * (softmax(c) - onehot(target_i)) * (1 - tanh^2)          (written over x, rounded once)
// i.e. the loss and its gradient w.r.t. the pre-cap logits in one pass over memory per row, with no
// temporary of the row's size. Three passes over each row, rows in parallel:
//   1. c and the row max; with a cap the rounded tanh is stored in place of x (passes 2 and 3 rebuild c
//      from it exactly, and the derivative needs it);
//   2. the sum of exp(c - max);
//   3. the gradient. The target element is read before pass 3 and fixed after it (as the reference's
//      scatter_add of -w).
// Reference: softcap_cross_entropy in python/gemma4/ops/reference.py.
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "common/activation_math.h"  // exp_nonpositive
#include "common/vec_utils.h"
#include "loss/loss_checks.h"

namespace gemma4 {
namespace {

// v rounded to T and widened back (identity for float and double).
template <typename T, typename Vec>
inline Vec round_to(const Vec& v) {
  if constexpr (std::is_same_v<T, typename VecIO<T>::A>) {
    return v;
  } else {
    T buf[VecIO<T>::N];
    VecIO<T>::store(buf, v);
    return VecIO<T>::load(buf);
  }
}
template <typename T, typename A>
inline A round_scalar(A v) { return static_cast<A>(static_cast<T>(v)); }

// Lanes [0, m) of the row at j (the other lanes zero).
template <typename T>
inline typename VecIO<T>::V load_part(const T* p, int64_t m) {
  return m == VecIO<T>::N ? VecIO<T>::load(p) : VecIO<T>::load(p, m);
}
template <typename T>
inline void store_part(T* p, const typename VecIO<T>::V& v, int64_t m) {
  if (m == VecIO<T>::N) VecIO<T>::store(p, v); else VecIO<T>::store(p, v, m);
}

// The loss of one row; the row is overwritten with its gradient.
template <typename T, bool Cap>
acc_t<T> row_loss_and_grad(T* row, int64_t V, int64_t target, acc_t<T> w, acc_t<T> cap) {
  using A = acc_t<T>;
  using Vec = typename VecIO<T>::V;
  constexpr int64_t N = VecIO<T>::N;
  constexpr bool kFastExp = !std::is_same_v<T, A>;  // bf16/fp16 results hide exp_u20's few ULP
  const Vec vcap(cap), ninf(-std::numeric_limits<A>::infinity());
  // c from what the row holds after pass 1: the rounded tanh (capped) or x
  auto capped = [&](const Vec& held) { return Cap ? round_to<T>(held * vcap) : held; };

  Vec vmax = ninf;
  for (int64_t j = 0; j < V; j += N) {
    const int64_t m = std::min(N, V - j);
    const Vec x = load_part(row + j, m);
    Vec c = x;
    if constexpr (Cap) {
      const Vec t = round_to<T>(round_to<T>(x / vcap).tanh());
      store_part(row + j, t, m);
      c = round_to<T>(t * vcap);
    }
    if (m < N) c = Vec::set(ninf, c, m);
    vmax = at::vec::maximum(vmax, c);  // NaN-propagating
  }
  A lanes[N];
  vmax.store(lanes);
  A mx = lanes[0];
  for (int64_t k = 1; k < N; ++k) mx = (lanes[k] != lanes[k] || lanes[k] > mx) ? lanes[k] : mx;
  const Vec vmx(mx);

  Vec vsum(A(0));
  for (int64_t j = 0; j < V; j += N) {
    const int64_t m = std::min(N, V - j);
    Vec e = exp_nonpositive<kFastExp>(capped(load_part(row + j, m)) - vmx);  // [N]
    if (m < N) e = Vec::set(Vec(A(0)), e, m);
    vsum = vsum + e;
  }
  const A log_sum = std::log(hsum(vsum));

  const A held_t = static_cast<A>(row[target]);
  const A c_t = Cap ? round_scalar<T>(held_t * cap) : held_t;
  const Vec vls(log_sum), vw(w), one(A(1));
  for (int64_t j = 0; j < V; j += N) {
    const int64_t m = std::min(N, V - j);
    const Vec held = load_part(row + j, m);
    Vec g = exp_nonpositive<kFastExp>((capped(held) - vmx) - vls) * vw;  // w * softmax
    if constexpr (Cap) g = g * (one - held * held);
    store_part(row + j, g, m);
  }
  const A logp_t = (c_t - mx) - log_sum;
  A g_t = std::exp(logp_t) * w - w;
  if constexpr (Cap) g_t = g_t * (A(1) - held_t * held_t);
  row[target] = static_cast<T>(g_t);
  return -(logp_t * w);
}

at::Tensor softcap_cross_entropy_cpu(const at::Tensor& logits, const at::Tensor& targets,
                                     const at::Tensor& row_weight, std::optional<double> softcap) {
  constexpr const char* op = "gemma4::softcap_cross_entropy";
  check_device(logits, op, "logits", c10::kCPU);
  const loss::XentProblem p = loss::check_softcap_cross_entropy(op, logits, targets, row_weight, softcap);
  const int64_t* tg = targets.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < p.n; ++i) {
    TORCH_CHECK(tg[i] >= 0 && tg[i] < p.V, op, ": targets must be in [0, ", p.V, "), got ", tg[i], " at row ", i);
  }
  const float* w = row_weight.const_data_ptr<float>();
  at::Tensor losses;
  GEMMA4_DISPATCH_FLOATS(logits.scalar_type(), op, [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    losses = at::empty({p.n}, logits.options().dtype(c10::CppTypeToScalarType<A>::value));
    T* x = logits.mutable_data_ptr<T>();
    A* out = losses.mutable_data_ptr<A>();
    const A cap = static_cast<A>(p.cap);
    at::parallel_for(0, p.n, row_grain(p.V), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        out[i] = p.has_cap ? row_loss_and_grad<T, true>(x + i * p.V, p.V, tg[i], A(w[i]), cap)
                           : row_loss_and_grad<T, false>(x + i * p.V, p.V, tg[i], A(w[i]), cap);
      }
    });
  });
  return losses;
}

}  // namespace

TORCH_LIBRARY_IMPL(gemma4, CPU, m) { m.impl("softcap_cross_entropy", &softcap_cross_entropy_cpu); }

}  // namespace gemma4
