// GPU machine, second round: does a bad-input error kill the process only when the throw unwinds
// through a frame with destructors to run (our checks throw after locals such as RmsNormProblem are
// built; the dtype check, which does not crash, throws before)? Built by segv_unwind.sh.
#include <torch/library.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <optional>

namespace {
struct Holder {  // like RmsNormProblem: tensors to destroy while unwinding
  at::Tensor a;
  std::optional<at::Tensor> b;
};
at::Tensor bare(const at::Tensor& t) { TORCH_CHECK(t.size(0) == 99, "segvu: bare, got ", t.size(0)); return t; }
at::Tensor local(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  TORCH_CHECK(c.size(0) == 99, "segvu: local, got ", c.size(0));
  return c;
}
at::Tensor local_plain(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  TORCH_CHECK(c.size(0) == 99, "segvu: local, plain message");
  return c;
}
at::Tensor holder(const at::Tensor& t) {
  Holder h;
  h.b = t.contiguous();
  TORCH_CHECK(t.size(0) == 99, "segvu: holder, got ", t.size(0));
  h.a = t;
  return h.a;
}
at::Tensor caught(const at::Tensor& t) {  // throw and catch inside the library, then raise plainly
  try {
    at::Tensor c = t.contiguous();
    TORCH_CHECK(false, "inner ", c.size(0));
  } catch (const c10::Error&) {
  }
  TORCH_CHECK(false, "segvu: caught inside, rethrown plain");
}
}  // namespace

TORCH_LIBRARY(segvu, m) {
  m.def("bare(Tensor t) -> Tensor");
  m.def("local(Tensor t) -> Tensor");
  m.def("local_plain(Tensor t) -> Tensor");
  m.def("holder(Tensor t) -> Tensor");
  m.def("caught(Tensor t) -> Tensor");
}
TORCH_LIBRARY_IMPL(segvu, CPU, m) {
  m.impl("bare", bare);
  m.impl("local", local);
  m.impl("local_plain", local_plain);
  m.impl("holder", holder);
  m.impl("caught", caught);
}
