// Argument checks of the quantized-GEMM family, shared by the CPU op (and a CUDA one later): one
// clear error naming the operator and the argument for each bad input. Device-neutral: the caller
// passes the device type it implements.
#pragma once
#include <optional>

#include <ATen/ATen.h>

#include "common/checks.h"
#include "quant/qgemm_problem.h"

namespace gemma4::quant {

inline void check_scale_dtype(const at::Tensor& t, const char* op, const char* arg) {
  const auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kBFloat16 || s == at::kHalf, op, ": ", arg,
              " must be float32, bfloat16 or float16, got ", s);
}

inline ScaleType scale_type_of(const at::Tensor& scales) {
  switch (scales.scalar_type()) {
    case at::kBFloat16: return ScaleType::bf16;
    case at::kHalf: return ScaleType::f16;
    default: return ScaleType::f32;
  }
}

// Bits of a packed weight tensor: uint8 = int4 (two per byte), int8 = int8.
inline int qweight_bits(const at::Tensor& qweight, const char* op) {
  const auto s = qweight.scalar_type();
  TORCH_CHECK(s == at::kByte || s == at::kChar, op,
              ": qweight must be uint8 (packed int4) or int8 (int8 weights), got ", s);
  return s == at::kByte ? 4 : 8;
}

// The 16-row tiled int4 layout (qgemm_problem.h's TiledProblem): qweight uint8 [N/16, K/8, 64], scales
// [N/16, K/32, 16]. CPU only; the row layout everywhere else.
inline void check_tiled_qweight(const at::Tensor& qweight, const at::Tensor& scales, int64_t K, const char* op) {
  TORCH_CHECK(qweight.scalar_type() == at::kByte, op, ": a 3-D qweight (the 16-row tiled layout) must be uint8 int4, got ",
              qweight.scalar_type());
  check_dim(scales, 3, op, "scales");
  check_contiguous(qweight, op, "qweight");
  check_contiguous(scales, op, "scales");
  TORCH_CHECK(K % 32 == 0 && K > 0, op, ": the input size K must be a positive multiple of 32, got ", K);
  check_size(qweight, 1, K / 8, op, "qweight");
  check_size(qweight, 2, 64, op, "qweight");
  check_size(scales, 0, qweight.size(0), op, "scales");
  check_size(scales, 1, K / 32, op, "scales");
  check_size(scales, 2, 16, op, "scales");
}

// Output features of a packed weight: qweight.size(0), or 16 a tile in the tiled layout.
inline int64_t qweight_rows(const at::Tensor& qweight) {
  return qweight.dim() == 3 ? qweight.size(0) * 16 : qweight.size(0);
}

// Checks qweight [N, K/2 | K] and scales [N, G] against K (or, on the CPU, the tiled layout); returns the
// group size K / G.
inline int64_t check_qweight(const at::Tensor& qweight, const at::Tensor& scales, int64_t K, const char* op,
                             c10::DeviceType dev) {
  check_device(qweight, op, "qweight", dev);
  check_device(scales, op, "scales", dev);
  const int bits = qweight_bits(qweight, op);
  check_scale_dtype(scales, op, "scales");
  if (qweight.dim() == 3) {
    TORCH_CHECK(dev == c10::kCPU, op, ": the 16-row tiled int4 layout (a 3-D qweight) runs on the CPU only; "
                "QuantLinear turns it back into rows when it moves to another device");
    check_tiled_qweight(qweight, scales, K, op);
    return 32;
  }
  check_dim(qweight, 2, op, "qweight");
  check_dim(scales, 2, op, "scales");
  check_contiguous(qweight, op, "qweight");
  check_contiguous(scales, op, "scales");
  TORCH_CHECK(K % 32 == 0 && K > 0, op, ": the input size K must be a positive multiple of 32, got ", K);
  check_size(qweight, 1, bits == 4 ? K / 2 : K, op, "qweight");
  check_size(scales, 0, qweight.size(0), op, "scales");
  const int64_t G = scales.size(1);
  TORCH_CHECK(G > 0 && K % G == 0 && (K / G) % 32 == 0, op, ": scales.size(1) must divide K = ", K,
              " into groups of a multiple of 32 weights, got shape ", scales.sizes());
  return K / G;
}

// x [..., K] in float32/bfloat16/float16, contiguous; bias [N] in x's dtype.
inline void check_qgemm_args(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                             const std::optional<at::Tensor>& bias, const char* op, c10::DeviceType dev) {
  check_device(x, op, "x", dev);
  const auto s = x.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kBFloat16 || s == at::kHalf, op,
              ": x must be float32, bfloat16 or float16, got ", s);
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least 1 dimension, got a scalar");
  check_contiguous(x, op, "x");
  check_qweight(qweight, scales, x.size(-1), op, dev);
  if (bias) {
    check_device(*bias, op, "bias", dev);
    check_dtype(*bias, s, op, "bias");
    check_dim(*bias, 1, op, "bias");
    check_size(*bias, 0, qweight_rows(qweight), op, "bias");
    check_contiguous(*bias, op, "bias");
  }
}

}  // namespace gemma4::quant
