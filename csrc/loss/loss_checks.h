// The seam of the loss family: argument checks of gemma4::softcap_cross_entropy and the problem they
// describe, shared by the CPU and CUDA kernels. Each backend adds its own device check.
#pragma once
#include <cmath>
#include <optional>

#include "common/checks.h"

namespace gemma4::loss {

// One softcap_cross_entropy call: logits [n, V] rewritten in place with the gradient.
struct XentProblem {
  int64_t n = 0, V = 0;
  bool has_cap = false;
  double cap = 0;
};

// logits [n, V] float (contiguous: it is overwritten), targets int64 [n], row_weight float32 [n], softcap
// None or finite > 0; all on logits' device. Target values are checked by the kernels (the CPU raises,
// the CUDA kernel cannot without a host sync and writes NaN for that row).
inline XentProblem check_softcap_cross_entropy(const char* op, const at::Tensor& logits, const at::Tensor& targets,
                                               const at::Tensor& row_weight, std::optional<double> softcap) {
  check_float(logits, op, "logits");
  check_dim(logits, 2, op, "logits");
  check_contiguous(logits, op, "logits");
  check_same_device(targets, logits, op, "targets");
  check_dtype(targets, at::kLong, op, "targets");
  check_dim(targets, 1, op, "targets");
  check_size(targets, 0, logits.size(0), op, "targets");
  check_contiguous(targets, op, "targets");
  check_same_device(row_weight, logits, op, "row_weight");
  check_dtype(row_weight, at::kFloat, op, "row_weight");
  check_dim(row_weight, 1, op, "row_weight");
  check_size(row_weight, 0, logits.size(0), op, "row_weight");
  check_contiguous(row_weight, op, "row_weight");
  TORCH_CHECK(!softcap.has_value() || (std::isfinite(*softcap) && *softcap > 0), op,
              ": softcap must be None or a finite number > 0, got ", softcap.value_or(0));
  TORCH_CHECK(logits.size(1) > 0 || logits.size(0) == 0, op, ": logits must have at least one column (class)");
  return {logits.size(0), logits.size(1), softcap.has_value(), softcap.value_or(0)};
}

}  // namespace gemma4::loss
