// gemma4::linear on CPU: y = x @ weight^T (+ bias) for float32 or bfloat16 x and weight, fp32
// accumulation, rounded once to x's dtype.
// Reference: linear in python/gemma4/ops/reference.py.
//
// Paths, chosen by the number of rows M of x and the shape:
// - M <= kGemvMaxRows (decode): linear_gemv.h, the weights streamed once, bf16 widened in registers,
//   at::parallel_for over tiles of weight rows.
// - larger M (prefill), fp32, most shapes (AVX2 builds): linear_gemm.h's packing-free tile GEMM, faster
//   than MKL's multi-threaded sgemm there (tile_gemm_faster).
// - larger M otherwise: fp32 goes straight to the BLAS sgemm (what torch.matmul does). bf16 x is
//   widened once; the bf16 weight is widened a block of rows at a time into a per-thread fp32
//   buffer that stays in L2, and each block is one single-threaded sgemm. torch's own bf16 matmul
//   on a CPU without AVX512-BF16 runs several times slower than its fp32 one at these shapes.
#include <vector>

#include <torch/library.h>

#include "common/vec_utils.h"
#include "linear/linear_checks.h"
#include "linear/linear_gemm.h"
#include "linear/linear_gemv.h"

namespace gemma4 {
namespace {

constexpr int64_t kGemvMaxRows = 8;

// x as fp32 [M, K]: the tensor itself for fp32, a widened copy for bf16.
at::Tensor as_fp32(const at::Tensor& x2d) {
  return x2d.scalar_type() == at::kFloat ? x2d : x2d.to(at::kFloat);
}

// Rows of x handled together: R weight rows per tile keep R*M accumulators in 16 AVX2 registers.
template <int M, typename T>
void gemv(const T* w, const float* x, const T* bias, T* y, int64_t N, int64_t K) {
  constexpr int R = M <= 2 ? 4 : (M <= 4 ? 2 : 1);
  const int64_t tiles = N / R;
  // About 64K weights per task: a smaller problem is not worth waking a second thread for.
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, R * K));
  at::parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
    float acc[R * M];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n0 = t * R;
      linear::gemv_tile<M, R>(w + n0 * K, x, K, acc);
      for (int r = 0; r < R; ++r)
        for (int m = 0; m < M; ++m) {
          float v = acc[r * M + m];
          if (bias) v += static_cast<float>(bias[n0 + r]);
          y[m * N + n0 + r] = static_cast<T>(v);
        }
    }
  });
  for (int64_t n = tiles * R; n < N; ++n) {  // the last N % R rows
    float acc[M];
    linear::gemv_tile<M, 1>(w + n * K, x, K, acc);
    for (int m = 0; m < M; ++m) {
      float v = acc[m];
      if (bias) v += static_cast<float>(bias[n]);
      y[m * N + n] = static_cast<T>(v);
    }
  }
}

template <typename T>
void gemv_dispatch(int64_t M, const T* w, const float* x, const T* bias, T* y, int64_t N, int64_t K) {
  switch (M) {
    case 1: return gemv<1>(w, x, bias, y, N, K);
    case 2: return gemv<2>(w, x, bias, y, N, K);
    case 3: return gemv<3>(w, x, bias, y, N, K);
    case 4: return gemv<4>(w, x, bias, y, N, K);
    case 5: return gemv<5>(w, x, bias, y, N, K);
    case 6: return gemv<6>(w, x, bias, y, N, K);
    case 7: return gemv<7>(w, x, bias, y, N, K);
    default: return gemv<8>(w, x, bias, y, N, K);
  }
}

// y[M, N] = x32[M, K] @ w[N, K]^T (+ bias) for a bf16 weight: each task widens a block of nb weight
// rows into an fp32 buffer that stays in L2, multiplies it with one single-threaded sgemm (at::mm
// inside a parallel region does not start threads of its own) into an fp32 [M, nb] buffer, then adds
// the bias and rounds once into y's columns n0..n0+nb.
void gemm_bf16_weight(const c10::BFloat16* w, const at::Tensor& x32, const c10::BFloat16* bias,
                      c10::BFloat16* y, int64_t M, int64_t N, int64_t K) {
  // Rows per block: a widened block of about 384 KB (at least 16 rows, the sgemm's register tile).
  const int64_t nb = std::clamp<int64_t>((96 * 1024 / std::max<int64_t>(K, 1)) / 16 * 16, 16, 256);
  const int64_t blocks = at::divup(N, nb);
  const auto f32 = x32.options();
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    at::Tensor wbuf = at::empty({nb, K}, f32);  // [nb, K] widened weight rows
    at::Tensor ybuf = at::empty({M, nb}, f32);  // [M, nb] fp32 products
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n0 = b * nb, rows = std::min(nb, N - n0);
      linear::widen(w + n0 * K, wbuf.mutable_data_ptr<float>(), rows * K);
      at::Tensor yb = ybuf.narrow(1, 0, rows);
      if (rows != nb) yb = at::empty({M, rows}, f32);
      at::mm_out(yb, x32, wbuf.narrow(0, 0, rows).t());  // [M, rows]
      const float* src = yb.const_data_ptr<float>();
      for (int64_t m = 0; m < M; ++m)
        for (int64_t i = 0; i < rows; ++i) {
          float v = src[m * rows + i];
          if (bias) v += static_cast<float>(bias[n0 + i]);
          y[m * N + n0 + i] = static_cast<c10::BFloat16>(v);
        }
    }
  });
}

// Where linear_gemm.h's fp32 tile GEMM measured faster than MKL's sgemm on the benchmarks' AVX2 EPYC (2
// threads, M = 128, GFLOP/s ours / MKL): the widening projections (q/k/v, gate/up; 1536 -> 2048..12288:
// 94-104 / 46-78) and the narrowing ones up to K = 6144 (2048..6144 -> 1536: 95-100 / 70-80). The
// 12288 -> 1536 MLP down projection ran 79-90 / 101-110, so it keeps the sgemm.
bool tile_gemm_faster(int64_t N, int64_t K) {
#if defined(CPU_CAPABILITY_AVX2)
  return N >= K || K <= 6144;
#else
  return false;
#endif
}

// y[M, N] = x[M, K] @ w[N, K]^T (+ bias), fp32: tasks of kNG weight rows, each summing into an fp32
// [M, kNG] buffer.
void tile_gemm(const float* w, const float* x, const float* bias, float* y, int64_t M, int64_t N, int64_t K) {
#if defined(CPU_CAPABILITY_AVX2)
  using linear::kNG;
  at::parallel_for(0, at::divup(N, kNG), 1, [&](int64_t g0, int64_t g1) {
    std::vector<float> cbuf(M * kNG);  // [M, kNG]
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t n0 = g * kNG, rows = std::min(kNG, N - n0);
      linear::gemm_rows(w, x, M, K, n0, rows, cbuf.data());
      for (int64_t m = 0; m < M; ++m)
        for (int64_t i = 0; i < rows; ++i) y[m * N + n0 + i] = cbuf[m * kNG + i] + (bias ? bias[n0 + i] : 0.0f);
    }
  });
#endif
}

at::Tensor linear_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "gemma4::linear";
  check_device(x, op, "x", c10::kCPU);
  const LinearProblem p = check_linear_args(op, x, weight, bias);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = p.N;
  at::Tensor y = at::empty(out_shape, x.options());
  if (y.numel() == 0) return y;
  if (p.K == 0) return bias ? y.copy_(bias->expand_as(y)) : y.zero_();
  const at::Tensor x2d = x.view({p.M, p.K});
  const at::Tensor x32 = as_fp32(x2d).contiguous();  // [M, K]

  if (p.M <= kGemvMaxRows) {
    AT_DISPATCH_SWITCH(x.scalar_type(), op,
      AT_DISPATCH_CASE(at::kFloat, [&] {
        gemv_dispatch<float>(p.M, weight.const_data_ptr<float>(), x32.const_data_ptr<float>(),
                             bias ? bias->const_data_ptr<float>() : nullptr, y.mutable_data_ptr<float>(), p.N, p.K);
      })
      AT_DISPATCH_CASE(at::kBFloat16, [&] {
        using B = c10::BFloat16;
        gemv_dispatch<B>(p.M, weight.const_data_ptr<B>(), x32.const_data_ptr<float>(),
                         bias ? bias->const_data_ptr<B>() : nullptr, y.mutable_data_ptr<B>(), p.N, p.K);
      }));
    return y;
  }

  if (x.scalar_type() == at::kFloat && tile_gemm_faster(p.N, p.K)) {
    tile_gemm(weight.const_data_ptr<float>(), x32.const_data_ptr<float>(),
              bias ? bias->const_data_ptr<float>() : nullptr, y.mutable_data_ptr<float>(), p.M, p.N, p.K);
    return y;
  }
  if (x.scalar_type() == at::kFloat) {  // the BLAS sgemm, as torch.matmul
    at::Tensor y2d = y.view({p.M, p.N});
    if (bias) {
      at::addmm_out(y2d, *bias, x2d, weight.t());
    } else {
      at::mm_out(y2d, x2d, weight.t());
    }
    return y;
  }
  gemm_bf16_weight(weight.const_data_ptr<c10::BFloat16>(), x32, bias ? bias->const_data_ptr<c10::BFloat16>() : nullptr,
                   y.mutable_data_ptr<c10::BFloat16>(), p.M, p.N, p.K);
  return y;
}
}  // namespace

TORCH_LIBRARY_IMPL(gemma4, CPU, m) { m.impl("linear", &linear_cpu); }

}  // namespace gemma4
