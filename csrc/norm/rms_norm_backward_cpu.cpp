// gemma4::rms_norm_backward on CPU: gradients of y = x * r * w, r = (mean(x^2) + eps)^-1/2, per row:
//   grad_x = r * (g * w) - x * r^3 / D * sum(g * w * x)
//   grad_w = sum over rows of g * x * r        (an empty tensor when weight is None)
// computed in fp32 (fp64 for fp64 x); grad_x rounded once to x's dtype, grad_w to weight's dtype.
// Reference: autograd through rms_norm in python/gemma4/ops/reference.py.
//
// Rows are split into at most one contiguous chunk per thread; each chunk accumulates its own
// grad_w partial [D] in the accumulation type, and the partials are summed in chunk order at the
// end (deterministic for a given thread count, no atomics, no false sharing in the row loop).
#include <torch/library.h>

#include "common/vec_utils.h"
#include "norm/norm_checks.h"

namespace gemma4 {
namespace {

template <typename T, bool HasWeight>
void rms_norm_backward_rows(const T* g, const T* x, const acc_t<T>* w, T* gx, acc_t<T>* gw_part, int64_t r0,
                            int64_t r1, int64_t D, double eps) {
  using IO = VecIO<T>;
  using A = acc_t<T>;
  using V = typename IO::V;
  constexpr int N = IO::N;
  const int tail = static_cast<int>(D % N);
  const int64_t Dv = D - tail;
  for (int64_t r = r0; r < r1; ++r) {
    const T* gr = g + r * D;
    const T* xr = x + r * D;
    T* gxr = gx + r * D;
    // Pass 1: sum(x^2) and sum(g * w * x), two accumulators each.
    V ss0(0), ss1(0), dt0(0), dt1(0);
    int64_t j = 0;
    for (; j + 2 * N <= D; j += 2 * N) {
      V xa = IO::load(xr + j), xb = IO::load(xr + j + N);
      V ga = IO::load(gr + j), gb = IO::load(gr + j + N);
      if constexpr (HasWeight) {
        ga = ga * V::loadu(w + j);
        gb = gb * V::loadu(w + j + N);
      }
      ss0 = at::vec::fmadd(xa, xa, ss0);
      ss1 = at::vec::fmadd(xb, xb, ss1);
      dt0 = at::vec::fmadd(ga, xa, dt0);
      dt1 = at::vec::fmadd(gb, xb, dt1);
    }
    for (; j < D; j += N) {
      const int n = static_cast<int>(std::min<int64_t>(N, D - j));
      V xa = IO::load(xr + j, n), ga = IO::load(gr + j, n);
      if constexpr (HasWeight) ga = ga * V::loadu(w + j, n);
      ss0 = at::vec::fmadd(xa, xa, ss0);
      dt0 = at::vec::fmadd(ga, xa, dt0);
    }
    const A ms = hsum(ss0 + ss1) / static_cast<A>(D);
    const A inv = A(1) / std::sqrt(ms + static_cast<A>(eps));
    const A coef = inv * inv * inv * hsum(dt0 + dt1) / static_cast<A>(D);
    const V vinv(inv), vcoef(coef);
    // Pass 2: grad_x, and this row's share of grad_w.
    auto step = [&](int64_t k, int n) {
      V xa = n == N ? IO::load(xr + k) : IO::load(xr + k, n);
      V ga = n == N ? IO::load(gr + k) : IO::load(gr + k, n);
      V gw = ga;
      if constexpr (HasWeight) gw = ga * (n == N ? V::loadu(w + k) : V::loadu(w + k, n));
      V out = vinv * gw - vcoef * xa;
      if (n == N) IO::store(gxr + k, out); else IO::store(gxr + k, out, n);
      if constexpr (HasWeight) {
        V acc = n == N ? V::loadu(gw_part + k) : V::loadu(gw_part + k, n);
        acc = at::vec::fmadd(ga, xa * vinv, acc);  // g * (x * r): the reference's rounding order
        if (n == N) acc.store(gw_part + k); else acc.store(gw_part + k, n);
      }
    };
    for (int64_t k = 0; k < Dv; k += N) step(k, N);
    if (tail) step(Dv, tail);
  }
}

std::tuple<at::Tensor, at::Tensor> rms_norm_backward_cpu(const at::Tensor& grad_out_in, const at::Tensor& x_in,
                                                         const std::optional<at::Tensor>& weight_in, double eps) {
  constexpr const char* op = "gemma4::rms_norm_backward";
  check_device(x_in, op, "x", c10::kCPU);
  const norm::RmsNormProblem p = norm::check_rms_norm_backward(op, grad_out_in, x_in, weight_in, eps);
  const at::Tensor& x = p.x;
  const at::Tensor& grad_out = p.grad_out;
  const std::optional<at::Tensor>& weight = p.weight;

  at::Tensor grad_x = at::empty_like(x);
  const int64_t D = p.D, rows = p.rows;
  if (!weight.has_value()) {
    if (x.numel() > 0) {
      GEMMA4_DISPATCH_FLOATS(x.scalar_type(), "gemma4::rms_norm_backward", [&] {
        const scalar_t* g = grad_out.const_data_ptr<scalar_t>();
        const scalar_t* xp = x.const_data_ptr<scalar_t>();
        scalar_t* gx = grad_x.mutable_data_ptr<scalar_t>();
        at::parallel_for(0, rows, row_grain(D), [&](int64_t r0, int64_t r1) {
          rms_norm_backward_rows<scalar_t, false>(g, xp, nullptr, gx, nullptr, r0, r1, D, eps);
        });
      });
    }
    return {grad_x, at::empty({0}, x.options())};
  }

  at::Tensor grad_w;
  GEMMA4_DISPATCH_FLOATS(x.scalar_type(), "gemma4::rms_norm_backward", [&] {
    using A = acc_t<scalar_t>;
    constexpr auto acc_type = c10::CppTypeToScalarType<A>::value;
    const at::Tensor w = weight->to(acc_type);
    // One chunk of rows per thread, but no chunk smaller than ~16K elements of work.
    const int64_t max_chunks = (rows + row_grain(D) - 1) / row_grain(D);
    const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), max_chunks));
    at::Tensor partial = at::zeros({chunks, D}, x.options().dtype(acc_type));
    if (x.numel() > 0) {
      const scalar_t* g = grad_out.const_data_ptr<scalar_t>();
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      const A* wp = w.const_data_ptr<A>();
      scalar_t* gx = grad_x.mutable_data_ptr<scalar_t>();
      A* part = partial.mutable_data_ptr<A>();
      at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          rms_norm_backward_rows<scalar_t, true>(g, xp, wp, gx, part + c * D, rows * c / chunks,
                                                 rows * (c + 1) / chunks, D, eps);
        }
      });
    }
    // Sum the partials in chunk order (D elements per chunk: a plain loop GCC vectorizes).
    at::Tensor total = at::empty({D}, x.options().dtype(acc_type));
    A* tp = total.mutable_data_ptr<A>();
    const A* pp = partial.const_data_ptr<A>();
    for (int64_t j = 0; j < D; ++j) tp[j] = pp[j];
    for (int64_t c = 1; c < chunks; ++c) {
      const A* pc = pp + c * D;
      for (int64_t j = 0; j < D; ++j) tp[j] += pc[j];
    }
    grad_w = total.to(weight->scalar_type());
  });
  return {grad_x, grad_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(gemma4, CPU, m) { m.impl("rms_norm_backward", &rms_norm_backward_cpu); }

}  // namespace gemma4
