// Helpers for the ops' C++ Autograd kernels (csrc/*/*_autograd.cpp).
//
// Why C++ autograd at all: registered from Python (torch.library.register_autograd), every call of an op,
// forward and backward, ran through torch's Python autograd wrapper, tens of microseconds of host time
// each. A GPU training step of E2B makes ~1,700 such calls and its kernels waited for the host.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/autograd.h>

#include <optional>

namespace gemma4 {

// A gemma4 op by its schema name ("gemma4::rms_norm"), typed; keep it in a function-local static.
template <class Sig>
c10::TypedOperatorHandle<Sig> typed_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

inline bool wants_grad(const at::Tensor& t) { return t.defined() && t.requires_grad(); }
inline bool wants_grad(const std::optional<at::Tensor>& t) { return t.has_value() && wants_grad(*t); }

// Whether an Autograd kernel has to record a node: grad mode on and some tensor input requiring a gradient.
// When not (no_grad decode, frozen inputs), the kernel calls the op below autograd without building a
// context, as the Python wrapper did.
template <class... Ts>
bool records_graph(const Ts&... inputs) {
  return at::GradMode::is_enabled() && (wants_grad(inputs) || ...);
}

// A tensor to save for backward only when a requested gradient reads it (an undefined one otherwise).
inline at::Tensor keep_if(bool keep, const at::Tensor& t) { return keep ? t : at::Tensor(); }

// A saved optional tensor back as an optional (undefined -> nullopt).
inline std::optional<at::Tensor> as_optional(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

}  // namespace gemma4
