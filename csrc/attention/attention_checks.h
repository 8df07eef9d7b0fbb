// Argument checks shared by gemma4::attention and gemma4::attention_backward, and the translation of
// checked tensors into the raw-pointer problem description the kernels read (attention_kernels.h).
#pragma once
#include <ATen/ATen.h>

#include <optional>

#include "attention/attention_kernels.h"
#include "common/checks.h"

namespace gemma4::attn {

constexpr int64_t kMaxHeadDim = 512;

// q [B,T,nH,hd], k/v [B,S,nKV,hd] (S >= T, nH % nKV == 0, hd <= 512, same float dtype, last stride 1),
// key_mask bool [B,S]. Any other strides are fine: the kernels read through them.
inline void check_inputs(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const std::optional<at::Tensor>& key_mask) {
  check_device(q, op, "q", c10::DeviceType::CPU);
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
  const int64_t T = q.size(1), nH = q.size(2), hd = q.size(3), S = k.size(1), nKV = k.size(2);
  TORCH_CHECK(S >= T, op, ": k/v length S (k.size(1) = ", S, ") must be >= the query length T (q.size(1) = ", T,
              ")");
  TORCH_CHECK(nKV > 0 && nH % nKV == 0, op, ": q heads (q.size(2) = ", nH,
              ") must be a multiple of the k/v heads (k.size(2) = ", nKV, ")");
  TORCH_CHECK(hd >= 1 && hd <= kMaxHeadDim, op, ": head_dim (q.size(3)) must be in [1, ", kMaxHeadDim, "], got ",
              hd);
  TORCH_CHECK(q.stride(3) == 1 || hd == 1, op, ": q must have stride 1 in its last dimension, got strides ",
              q.strides());
  TORCH_CHECK(k.stride(3) == 1 || hd == 1, op, ": k must have stride 1 in its last dimension, got strides ",
              k.strides());
  TORCH_CHECK(v.stride(3) == 1 || hd == 1, op, ": v must have stride 1 in its last dimension, got strides ",
              v.strides());
  if (key_mask.has_value()) {
    const at::Tensor& m = *key_mask;
    check_same_device(m, q, op, "key_mask");
    check_dtype(m, at::kBool, op, "key_mask");
    check_dim(m, 2, op, "key_mask");
    check_size(m, 0, q.size(0), op, "key_mask");
    check_size(m, 1, S, op, "key_mask");
  }
}

template <typename T>
Params<T> make_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const std::optional<at::Tensor>& key_mask, double scale, int64_t window) {
  Params<T> P;
  P.q = q.const_data_ptr<T>(); P.qsB = q.stride(0); P.qsT = q.stride(1); P.qsH = q.stride(2);
  P.k = k.const_data_ptr<T>(); P.ksB = k.stride(0); P.ksS = k.stride(1); P.ksH = k.stride(2);
  P.v = v.const_data_ptr<T>(); P.vsB = v.stride(0); P.vsS = v.stride(1); P.vsH = v.stride(2);
  P.mask = nullptr; P.msB = P.msS = 0;
  if (key_mask.has_value()) {
    P.mask = key_mask->const_data_ptr<bool>(); P.msB = key_mask->stride(0); P.msS = key_mask->stride(1);
  }
  P.B = q.size(0); P.Tq = q.size(1); P.nH = q.size(2); P.hd = q.size(3); P.S = k.size(1); P.nKV = k.size(2);
  P.window = window > 0 ? window : 0;
  P.scale = scale;
  return P;
}

inline at::ScalarType lse_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

}  // namespace gemma4::attn
