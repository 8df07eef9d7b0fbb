// gemma4::rope and gemma4::rope_backward on CPU: rotate-half (GPT-NeoX) rotary embedding.
//   a_j = pos[b,t] * inv_freq[j]   (fp32; fp64 for fp64 x), j < hd/2
//   y[j]        = x[j] * cos(a_j) - x[j + hd/2] * sin(a_j)
//   y[j + hd/2] = x[j + hd/2] * cos(a_j) + x[j] * sin(a_j)
// The backward is the same rotation by -a_j. A zero inv_freq[j] (Gemma 4's "proportional" RoPE on
// full-attention layers) gives cos = 1, sin = 0, so those dimensions pass through exactly.
// Reference: rope in python/gemma4/ops/reference.py.
//
// x [B,T,nH,hd], positions int64 [B|1,T], inv_freq fp32 [hd/2], all contiguous (rope_checks.h
// copies strided inputs). Work is split over the rows of positions: each (b,t) -- or each t when
// positions is [1,T] and broadcasts over the batch -- computes its cos/sin table once (vectorized
// Sleef sin/cos) and rotates every head of every batch element that uses it.
#include <torch/library.h>

#include <vector>

#include "common/vec_utils.h"
#include "rope/rope_checks.h"

namespace gemma4 {
namespace {

template <typename T>
void rope_kernel(const T* x, const int64_t* pos, const float* inv_freq, T* y, int64_t B, int64_t T_, int64_t H,
                 int64_t hd, int64_t P, bool inverse) {
  using IO = VecIO<T>;
  using A = acc_t<T>;
  using V = typename IO::V;
  constexpr int N = IO::N;
  const int64_t half = hd / 2;
  const int64_t batches_per_row = P == 1 ? B : 1;
  at::parallel_for(0, P * T_, row_grain(batches_per_row * H * hd), [&](int64_t r0, int64_t r1) {
    std::vector<A> cos_t(half), sin_t(half);
    for (int64_t r = r0; r < r1; ++r) {
      // cos/sin table of this position, angles rounded in A exactly as the reference does.
      const A p = static_cast<A>(pos[r]);
      for (int64_t j = 0; j < half; j += N) {
        const int n = static_cast<int>(std::min<int64_t>(N, half - j));
        A ang[N];
        for (int i = 0; i < n; ++i) ang[i] = p * static_cast<A>(inv_freq[j + i]);
        const V a = V::loadu(ang, n);
        V s = a.sin();
        if (inverse) s = V(0) - s;
        a.cos().store(cos_t.data() + j, n);
        s.store(sin_t.data() + j, n);
      }
      const int64_t t = r % T_;
      const int64_t b0 = P == 1 ? 0 : r / T_;
      for (int64_t b = b0; b < b0 + batches_per_row; ++b) {
        const int64_t base = (b * T_ + t) * H * hd;
        for (int64_t h = 0; h < H; ++h) {
          const T* x1 = x + base + h * hd;
          const T* x2 = x1 + half;
          T* y1 = y + base + h * hd;
          T* y2 = y1 + half;
          int64_t j = 0;
          for (; j + N <= half; j += N) {
            const V c = V::loadu(cos_t.data() + j), s = V::loadu(sin_t.data() + j);
            const V a = IO::load(x1 + j), b2 = IO::load(x2 + j);
            IO::store(y1 + j, at::vec::fmsub(a, c, b2 * s));
            IO::store(y2 + j, at::vec::fmadd(a, s, b2 * c));
          }
          if (j < half) {
            const int n = static_cast<int>(half - j);
            const V c = V::loadu(cos_t.data() + j, n), s = V::loadu(sin_t.data() + j, n);
            const V a = IO::load(x1 + j, n), b2 = IO::load(x2 + j, n);
            IO::store(y1 + j, at::vec::fmsub(a, c, b2 * s), n);
            IO::store(y2 + j, at::vec::fmadd(a, s, b2 * c), n);
          }
        }
      }
    }
  });
}

// Rotates p.x by the angles of p.positions (by their negatives when inverse).
at::Tensor rope_apply(const rope::RopeProblem& p, bool inverse) {
  at::Tensor y = at::empty(p.x.sizes(), p.x.options());  // p.x is contiguous
  if (p.x.numel() == 0) return y;
  GEMMA4_DISPATCH_FLOATS(p.dtype, "gemma4::rope", [&] {
    rope_kernel<scalar_t>(p.x.const_data_ptr<scalar_t>(), p.positions.const_data_ptr<int64_t>(),
                          p.inv_freq.const_data_ptr<float>(), y.mutable_data_ptr<scalar_t>(), p.B, p.T, p.H, p.hd,
                          p.P, inverse);
  });
  return y;
}

at::Tensor rope_cpu(const at::Tensor& x, const at::Tensor& positions, const at::Tensor& inv_freq) {
  constexpr const char* op = "gemma4::rope";
  check_device(x, op, "x", c10::kCPU);
  return rope_apply(rope::check_rope(op, "x", x, positions, inv_freq), /*inverse=*/false);
}

at::Tensor rope_backward_cpu(const at::Tensor& grad_out, const at::Tensor& positions, const at::Tensor& inv_freq) {
  constexpr const char* op = "gemma4::rope_backward";
  check_device(grad_out, op, "grad_out", c10::kCPU);
  return rope_apply(rope::check_rope(op, "grad_out", grad_out, positions, inv_freq), /*inverse=*/true);
}

}  // namespace

TORCH_LIBRARY_IMPL(gemma4, CPU, m) {
  m.impl("rope", &rope_cpu);
  m.impl("rope_backward", &rope_backward_cpu);
}

}  // namespace gemma4
