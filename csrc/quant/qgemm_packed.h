// The CPU qgemm's packed-GEMM route (qgemm_packed_cpu.cpp): the weight dequantized into the fp32 GEMM's
// micro-panels as they are packed.
#pragma once
#include <optional>

#include <ATen/core/Tensor.h>

#include "quant/qgemm_problem.h"

namespace gemma4::quant {

// y = x [..., K] @ dequant(W)^T (+ bias [N] in x's dtype) in x's dtype, for p's weight fields (qw, scales,
// scale_type, bits, N, K, G, group: the row layout). x contiguous, checked by the caller.
at::Tensor qgemm_packed(const QgemmProblem& p, const at::Tensor& x, const std::optional<at::Tensor>& bias);

}  // namespace gemma4::quant
