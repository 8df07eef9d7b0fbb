// Minimal op library for the GPU machine: which kind of TORCH_CHECK message kills the process there?
// Built and driven by segv_mini.sh. Each op throws one way.
#include <torch/library.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <string>

namespace {
std::string own_shape(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}
at::Tensor plain(const at::Tensor& t) { TORCH_CHECK(false, "segvx: plain message, dtype ", t.scalar_type()); }
at::Tensor sizes(const at::Tensor& t) { TORCH_CHECK(false, "segvx: got shape ", t.sizes()); }
at::Tensor ownfmt(const at::Tensor& t) { TORCH_CHECK(false, "segvx: got shape ", own_shape(t.sizes())); }
at::Tensor int64(const at::Tensor& t) { TORCH_CHECK(false, "segvx: size(0) must be ", int64_t(7), ", got ", t.size(0)); }
at::Tensor brackets(const at::Tensor&) { TORCH_CHECK(false, "segvx: got shape [15] and [1, 16]"); }
}  // namespace

TORCH_LIBRARY(segvx, m) {
  m.def("plain(Tensor t) -> Tensor");
  m.def("sizes(Tensor t) -> Tensor");
  m.def("ownfmt(Tensor t) -> Tensor");
  m.def("int64(Tensor t) -> Tensor");
  m.def("brackets(Tensor t) -> Tensor");
}
TORCH_LIBRARY_IMPL(segvx, CPU, m) {
  m.impl("plain", plain);
  m.impl("sizes", sizes);
  m.impl("ownfmt", ownfmt);
  m.impl("int64", int64);
  m.impl("brackets", brackets);
}
