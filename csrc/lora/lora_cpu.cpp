// gemma4::lora_down / lora_up / lora_weight_grad on the CPU: the activation widened to float32 once and
// the product done by ATen's float32 GEMM (MKL/oneDNN), the same calls PEFT's float32 adapter maths
// makes; lora_up adds into a float32 copy of the base output with the GEMM itself (addmm's beta = 1).
// The CPU has no cast-free thin GEMM to win here: at these shapes the widening copy is a small part of
// the step. The CUDA kernels (lora_cuda.cu) are the ones that fuse the widening into the product.
// Reference: lora_down / lora_up / lora_weight_grad in python/gemma4/ops/reference.py.
#include <ATen/ops/addmm.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include "lora/lora_checks.h"

namespace gemma4 {
namespace {

at::Tensor widened(const at::Tensor& x) { return x.scalar_type() == at::kFloat ? x : x.to(at::kFloat); }

at::Tensor lora_down_cpu(const at::Tensor& x, const at::Tensor& weight, double scale) {
  constexpr const char* op = "gemma4::lora_down";
  check_device(x, op, "x", c10::kCPU);
  lora::check_lora_down(op, x, weight);
  at::Tensor out = at::mm(widened(x), weight.t());  // [N, r]
  if (scale != 1) out.mul_(scale);
  return out;
}

at::Tensor lora_up_cpu(const at::Tensor& down, const at::Tensor& weight, double scale,
                       const std::optional<at::Tensor>& base, at::ScalarType dtype) {
  constexpr const char* op = "gemma4::lora_up";
  check_device(down, op, "down", c10::kCPU);
  lora::check_lora_up(op, down, weight, base, dtype);
  at::Tensor acc;  // [N, M] float32
  if (base.has_value()) {
    acc = base->to(at::kFloat, /*non_blocking=*/false, /*copy=*/true);
    acc.addmm_(down, weight.t(), /*beta=*/1, /*alpha=*/scale);
  } else {
    acc = at::mm(down, weight.t());
    if (scale != 1) acc.mul_(scale);
  }
  return dtype == at::kFloat ? acc : acc.to(dtype);
}

at::Tensor lora_weight_grad_cpu(const at::Tensor& x, const at::Tensor& d, double scale) {
  constexpr const char* op = "gemma4::lora_weight_grad";
  check_device(x, op, "x", c10::kCPU);
  lora::check_lora_weight_grad(op, x, d);
  at::Tensor out = at::mm(d.t(), widened(x));  // [r, K]
  if (scale != 1) out.mul_(scale);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gemma4, CPU, m) {
  m.impl("lora_down", &lora_down_cpu);
  m.impl("lora_up", &lora_up_cpu);
  m.impl("lora_weight_grad", &lora_weight_grad_cpu);
}

}  // namespace gemma4
