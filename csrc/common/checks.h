// Argument checks shared by every family's seam (csrc/<family>/<family>_checks.h): each names the
// operator and the argument, so a bad call reads as "gemma4::rms_norm: x must be float32, ..." rather
// than a crash or an ATen stack trace. Device-agnostic: included by CPU and CUDA sources alike.
#pragma once
// Light includes (not <ATen/ATen.h>, which triples nvcc's compile time of a .cu file).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>

namespace gemma4 {

inline void check_device(const at::Tensor& t, const char* op, const char* arg, c10::DeviceType dev) {
  TORCH_CHECK(t.device().type() == dev, op, ": ", arg, " must be on ", c10::DeviceTypeName(dev),
              ", got ", t.device());
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* op, const char* arg) {
  TORCH_CHECK(a.device() == b.device(), op, ": ", arg, " must be on ", b.device(), " like the input, got ",
              a.device());
}

inline void check_float(const at::Tensor& t, const char* op, const char* arg) {
  auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kDouble || s == at::kBFloat16 || s == at::kHalf, op, ": ", arg,
              " must be float32, float64, bfloat16 or float16, got ", s);
}

inline void check_dtype(const at::Tensor& t, at::ScalarType want, const char* op, const char* arg) {
  TORCH_CHECK(t.scalar_type() == want, op, ": ", arg, " must be ", want, ", got ", t.scalar_type());
}

inline void check_contiguous(const at::Tensor& t, const char* op, const char* arg) {
  TORCH_CHECK(t.is_contiguous(), op, ": ", arg, " must be contiguous");
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* op, const char* arg) {
  TORCH_CHECK(t.dim() == dim, op, ": ", arg, " must have ", dim, " dimensions, got shape ", t.sizes());
}

inline void check_size(const at::Tensor& t, int64_t d, int64_t want, const char* op, const char* arg) {
  TORCH_CHECK(t.size(d) == want, op, ": ", arg, ".size(", d, ") must be ", want, ", got shape ", t.sizes());
}

// A backward's grad_out: x's device, dtype and shape (the messages name grad_out).
inline void check_grad_like_x(const at::Tensor& grad_out, const at::Tensor& x, const char* op) {
  check_same_device(grad_out, x, op, "grad_out");
  TORCH_CHECK(grad_out.scalar_type() == x.scalar_type(), op, ": grad_out must have x's dtype (", x.scalar_type(),
              "), got ", grad_out.scalar_type());
  TORCH_CHECK(grad_out.sizes() == x.sizes(), op, ": grad_out must have the shape of x ", x.sizes(), ", got ",
              grad_out.sizes());
}

// The activation of a gated MLP (gated_activation, moe_experts), parsed once from the op's string.
enum class Activation { GeluTanh, Silu };

inline Activation parse_activation(const std::string& name, const char* op) {
  if (name == "gelu_tanh" || name == "gelu_pytorch_tanh") return Activation::GeluTanh;
  if (name == "silu") return Activation::Silu;
  TORCH_CHECK(false, op, ": activation must be \"gelu_tanh\" or \"silu\", got \"", name, "\"");
}

// Float dtypes the kernels support: fp32 and fp64 compute natively, bf16/fp16 accumulate in fp32.
#define GEMMA4_DISPATCH_FLOATS(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, TYPE, NAME, __VA_ARGS__)

// acc_t<T>: float for half types, T otherwise.
template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };
template <typename T> using acc_t = typename Acc<T>::type;

}  // namespace gemma4
