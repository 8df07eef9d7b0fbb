// The seam of the attention family: argument checks of gemma4::attention and attention_backward, and
// the raw-pointer problem description (Params, BwdTensors) every backend's kernels read.
// Device-agnostic: each backend's source adds only its own device check and its TORCH_LIBRARY_IMPL.
//
// Layout decision: kernels read q/k/v/out/grad_out rows through their batch, position and head
// strides, with a unit stride along head_dim (a [B, nKV, T_max, hd] cache viewed as [B, S, nKV, hd]
// needs no copy); a tensor whose last dimension is not unit-stride is copied here. lse is contiguous.
#pragma once
#include <optional>
#include <tuple>

#include "common/checks.h"

namespace gemma4::attn {

constexpr int64_t kMaxHeadDim = 512;

// Everything a kernel needs, as pointers and strides (element units). Query t sits at key index
// S - Tq + t. Query head h reads KV head h / (nH / nKV).
template <typename T>
struct Params {
  const T* q; int64_t qsB, qsT, qsH;      // [B, Tq, nH, hd], unit stride along hd
  const T* k; int64_t ksB, ksS, ksH;      // [B, S, nKV, hd], unit stride along hd
  const T* v; int64_t vsB, vsS, vsH;      // [B, S, nKV, hd], unit stride along hd
  const bool* mask; int64_t msB, msS;     // key_mask [B, S] (true = may attend); nullptr: no key mask
  int64_t B, Tq, S, nH, nKV, hd, window;  // window > 0 keeps the last `window` keys incl. self; 0 = none
  double scale;
};

// The backward's extra tensors.
template <typename T>
struct BwdTensors {
  const T* dout; int64_t dsB, dsT, dsH;  // grad_out [B,T,nH,hd], unit stride along hd
  const T* out; int64_t osB, osT, osH;   // out [B,T,nH,hd], unit stride along hd
  const acc_t<T>* lse;                   // contiguous [B,nH,T]
  T* dq;                                 // contiguous [B,T,nH,hd]
  T* dk;                                 // contiguous [B,S,nKV,hd]
  T* dv;                                 // contiguous [B,S,nKV,hd]
};

// dtype of lse: fp64 for fp64 inputs, fp32 otherwise.
inline at::ScalarType lse_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// One attention (or attention_backward) call, checked.
struct AttentionProblem {
  at::Tensor q, k, v;                  // unit stride along head_dim, other strides free
  std::optional<at::Tensor> key_mask;  // bool [B, S], any strides
  at::Tensor grad_out, out;            // backward only: q's shape and dtype, unit stride along head_dim
  at::Tensor lse;                      // backward only: lse_dtype [B, nH, T], contiguous
  int64_t B = 0, T = 0, S = 0, nH = 0, nKV = 0, hd = 0, window = 0;
  double scale = 1.0;
  at::ScalarType dtype = at::kFloat;
};

// t itself when its head_dim is unit-stride, else a contiguous copy.
inline at::Tensor unit_last_stride(const at::Tensor& t) {
  return t.stride(-1) == 1 || t.size(-1) <= 1 ? t : t.contiguous();
}

// q [B,T,nH,hd], k/v [B,S,nKV,hd] (S >= T, nH % nKV == 0, 1 <= hd <= 512, same float dtype),
// key_mask bool [B,S]; all on q's device.
inline AttentionProblem check_attention(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                        const std::optional<at::Tensor>& key_mask, double scale, int64_t window) {
  check_same_device(k, q, op, "k");
  check_same_device(v, q, op, "v");
  check_float(q, op, "q");
  check_dtype(k, q.scalar_type(), op, "k");
  check_dtype(v, q.scalar_type(), op, "v");
  check_dim(q, 4, op, "q");
  check_dim(k, 4, op, "k");
  check_dim(v, 4, op, "v");
  check_size(k, 0, q.size(0), op, "k");  // batch
  check_size(k, 3, q.size(3), op, "k");  // head_dim
  for (int64_t d = 0; d < 4; ++d) check_size(v, d, k.size(d), op, "v");
  AttentionProblem p;
  p.B = q.size(0); p.T = q.size(1); p.nH = q.size(2); p.hd = q.size(3); p.S = k.size(1); p.nKV = k.size(2);
  TORCH_CHECK(p.S >= p.T, op, ": k/v length S (k.size(1) = ", p.S, ") must be >= the query length T (q.size(1) = ",
              p.T, ")");
  TORCH_CHECK(p.nKV > 0 && p.nH % p.nKV == 0, op, ": q heads (q.size(2) = ", p.nH,
              ") must be a multiple of the k/v heads (k.size(2) = ", p.nKV, ")");
  TORCH_CHECK(p.hd >= 1 && p.hd <= kMaxHeadDim, op, ": head_dim (q.size(3)) must be in [1, ", kMaxHeadDim,
              "], got ", p.hd);
  if (key_mask.has_value()) {
    const at::Tensor& m = *key_mask;
    check_same_device(m, q, op, "key_mask");
    check_dtype(m, at::kBool, op, "key_mask");
    check_dim(m, 2, op, "key_mask");
    check_size(m, 0, p.B, op, "key_mask");
    check_size(m, 1, p.S, op, "key_mask");
    p.key_mask = m;
  }
  p.q = unit_last_stride(q);
  p.k = unit_last_stride(k);
  p.v = unit_last_stride(v);
  p.window = window > 0 ? window : 0;
  p.scale = scale;
  p.dtype = q.scalar_type();
  return p;
}

// The forward's checks, and grad_out, out [B,T,nH,hd] in q's dtype and lse [B,nH,T] in lse_dtype.
inline AttentionProblem check_attention_backward(const char* op, const at::Tensor& grad_out, const at::Tensor& q,
                                                 const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                                                 const at::Tensor& lse, const std::optional<at::Tensor>& key_mask,
                                                 double scale, int64_t window) {
  AttentionProblem p = check_attention(op, q, k, v, key_mask, scale, window);
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{grad_out, "grad_out"}, {out, "out"}}) {
    check_same_device(t, q, op, name);
    check_dtype(t, q.scalar_type(), op, name);
    check_dim(t, 4, op, name);
    for (int64_t d = 0; d < 4; ++d) check_size(t, d, q.size(d), op, name);
  }
  check_same_device(lse, q, op, "lse");
  check_dtype(lse, lse_dtype(q.scalar_type()), op, "lse");
  check_dim(lse, 3, op, "lse");
  check_size(lse, 0, p.B, op, "lse");
  check_size(lse, 1, p.nH, op, "lse");
  check_size(lse, 2, p.T, op, "lse");
  // grad_out often arrives with odd strides (e.g. expanded from a sum): copied only when its last
  // dimension is not unit-stride.
  p.grad_out = unit_last_stride(grad_out);
  p.out = unit_last_stride(out);
  p.lse = lse.contiguous();
  return p;
}

// The pointers and strides of a checked problem, for dtype T.
template <typename T>
Params<T> make_params(const AttentionProblem& p) {
  Params<T> P;
  const at::Tensor &q = p.q, &k = p.k, &v = p.v;
  P.q = q.const_data_ptr<T>(); P.qsB = q.stride(0); P.qsT = q.stride(1); P.qsH = q.stride(2);
  P.k = k.const_data_ptr<T>(); P.ksB = k.stride(0); P.ksS = k.stride(1); P.ksH = k.stride(2);
  P.v = v.const_data_ptr<T>(); P.vsB = v.stride(0); P.vsS = v.stride(1); P.vsH = v.stride(2);
  P.mask = nullptr; P.msB = P.msS = 0;
  if (p.key_mask.has_value()) {
    P.mask = p.key_mask->const_data_ptr<bool>(); P.msB = p.key_mask->stride(0); P.msS = p.key_mask->stride(1);
  }
  P.B = p.B; P.Tq = p.T; P.nH = p.nH; P.hd = p.hd; P.S = p.S; P.nKV = p.nKV;
  P.window = p.window;
  P.scale = p.scale;
  return P;
}

// The backward's pointers into grad_out, out, lse (from a checked problem) and the gradients.
template <typename T>
BwdTensors<T> make_bwd_tensors(const AttentionProblem& p, at::Tensor& grad_q, at::Tensor& grad_k, at::Tensor& grad_v) {
  BwdTensors<T> X;
  const at::Tensor &d = p.grad_out, &o = p.out;
  X.dout = d.const_data_ptr<T>(); X.dsB = d.stride(0); X.dsT = d.stride(1); X.dsH = d.stride(2);
  X.out = o.const_data_ptr<T>(); X.osB = o.stride(0); X.osT = o.stride(1); X.osH = o.stride(2);
  X.lse = p.lse.const_data_ptr<acc_t<T>>();
  X.dq = grad_q.mutable_data_ptr<T>();
  X.dk = grad_k.mutable_data_ptr<T>();
  X.dv = grad_v.mutable_data_ptr<T>();
  return X;
}

}  // namespace gemma4::attn
