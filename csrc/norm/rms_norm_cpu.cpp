// gemma4::rms_norm on CPU: y = x * (mean(x^2, -1) + eps)^-1/2 * weight, computed in fp32 (fp64 for
// fp64 x) and rounded once to x's dtype. Gemma 4 multiplies by weight, not 1 + weight.
// Reference: rms_norm in python/gemma4/ops/reference.py (the same maths as transformers'
// Gemma4RMSNorm: upcast, normalise, scale, cast back).
//
// Rows are independent: at::parallel_for over rows, several short rows
// per task (so q/k-norm over [B,T,nH,256] does not pay a task per row); two vectorized passes per
// row (sum of squares, then scale), the row staying in L1 between them.
#include <torch/library.h>

#include "common/vec_utils.h"
#include "norm/norm_checks.h"

namespace gemma4 {
namespace {

// 1 / sqrt(mean(x^2) + eps) of one row, as the reference: fp32 sum, divide by D, add eps, rsqrt.
template <typename T>
inline acc_t<T> row_inv_rms(const T* x, int64_t D, acc_t<T> eps) {
  using IO = VecIO<T>;
  using V = typename IO::V;
  constexpr int N = IO::N;
  // Four independent accumulators hide the FMA latency on long rows.
  V s0(0), s1(0), s2(0), s3(0);
  int64_t j = 0;
  for (; j + 4 * N <= D; j += 4 * N) {
    V a = IO::load(x + j), b = IO::load(x + j + N), c = IO::load(x + j + 2 * N), d = IO::load(x + j + 3 * N);
    s0 = at::vec::fmadd(a, a, s0);
    s1 = at::vec::fmadd(b, b, s1);
    s2 = at::vec::fmadd(c, c, s2);
    s3 = at::vec::fmadd(d, d, s3);
  }
  for (; j + N <= D; j += N) {
    V a = IO::load(x + j);
    s0 = at::vec::fmadd(a, a, s0);
  }
  if (j < D) {
    V a = IO::load(x + j, static_cast<int>(D - j));  // zero-filled lanes add nothing
    s0 = at::vec::fmadd(a, a, s0);
  }
  const acc_t<T> ms = hsum((s0 + s1) + (s2 + s3)) / static_cast<acc_t<T>>(D);
  return acc_t<T>(1) / std::sqrt(ms + eps);
}

// W: the weight's element type, read in the accumulation type (x's own type widened in registers, or the
// accumulation type itself); void: no weight.
template <typename T, typename W>
void rms_norm_kernel(const T* x, const W* w, T* y, int64_t rows, int64_t D, double eps) {
  using IO = VecIO<T>;
  using A = acc_t<T>;
  using V = typename IO::V;
  constexpr int N = IO::N;
  constexpr bool kWeight = !std::is_void_v<W>;
  at::parallel_for(0, rows, row_grain(D), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * D;
      T* yr = y + r * D;
      const V inv(row_inv_rms(xr, D, static_cast<A>(eps)));
      int64_t j = 0;
      for (; j + N <= D; j += N) {
        V v = IO::load(xr + j) * inv;  // (x * inv_rms) * w: the reference's order of rounding
        if constexpr (kWeight) v = v * VecIO<W>::load(w + j);
        IO::store(yr + j, v);
      }
      if (j < D) {
        const int n = static_cast<int>(D - j);
        V v = IO::load(xr + j, n) * inv;
        if constexpr (kWeight) v = v * VecIO<W>::load(w + j, n);
        IO::store(yr + j, v, n);
      }
    }
  });
}

at::Tensor rms_norm_cpu(const at::Tensor& x_in, const std::optional<at::Tensor>& weight, double eps) {
  constexpr const char* op = "gemma4::rms_norm";
  check_device(x_in, op, "x", c10::kCPU);
  const norm::RmsNormProblem p = norm::check_rms_norm(op, x_in, weight, eps);
  const at::Tensor& x = p.x;
  at::Tensor y = at::empty(x.sizes(), x.options());  // x is contiguous
  if (x.numel() == 0) return y;
  GEMMA4_DISPATCH_FLOATS(p.dtype, "gemma4::rms_norm", [&] {
    using A = acc_t<scalar_t>;
    constexpr at::ScalarType kA = c10::CppTypeToScalarType<A>::value;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    if (!p.weight.has_value()) {
      rms_norm_kernel<scalar_t, void>(xp, nullptr, yp, p.rows, p.D, eps);
    } else if (p.weight->scalar_type() == p.dtype) {  // widened in registers, exactly: no per-call copy
      rms_norm_kernel<scalar_t, scalar_t>(xp, p.weight->const_data_ptr<scalar_t>(), yp, p.rows, p.D, eps);
    } else {
      // Any other float dtype: one D-element conversion to the accumulation type, outside the rows.
      const at::Tensor w = p.weight->to(kA);
      rms_norm_kernel<scalar_t, A>(xp, w.const_data_ptr<A>(), yp, p.rows, p.D, eps);
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(gemma4, CPU, m) { m.impl("rms_norm", &rms_norm_cpu); }

}  // namespace gemma4
