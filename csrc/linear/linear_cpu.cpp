// gemma4::linear on CPU: y = x @ weight^T (+ bias) for float32 or bfloat16 x and weight (one dtype, or a
// bf16 weight under fp32 x), fp32 accumulation, rounded once to x's dtype.
// Reference: linear in python/gemma4/ops/reference.py.
//
// Paths, chosen by the number of rows M of x and the shape:
// - M <= kGemvMaxRows (decode): linear_gemv.h, the weights streamed once, bf16 widened in registers,
//   at::parallel_for over tiles of weight rows; on CPUs with AVX-512 its 16-lane form,
//   linear_gemv_avx512.cpp.
// - larger M (prefill): linear_gemm.h's packed GEMM (x widened to fp32 once; bf16 weights widened while
//   they are packed); on CPUs with AVX-512 its 8 x 32 tile or, for fp32 weights, the x-vector tile that reads
//   the weight unpacked (linear_gemm_avx512.cpp). torch's own bf16 matmul
//   on a CPU without AVX512-BF16 runs several times slower than its fp32 one at these shapes, and MKL's fp32
//   sgemm is slower on most of them (packed_gemm_faster); where it is not, fp32 goes to the BLAS sgemm, as
//   torch.matmul does.
#include <atomic>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/cpu_isa_switch.h"
#include "common/flush_denormals.h"
#include "linear/linear_checks.h"
#include "linear/linear_gemm.h"
#include "linear/linear_gemm_avx512.h"
#include "linear/linear_gemv.h"
#include "linear/linear_gemv_avx512.h"
#include "linear/linear_gemv_rows.h"
#include "linear/panel_source.h"

namespace gemma4 {
namespace {

constexpr int64_t kGemvMaxRows = 8;

// x as fp32 [M, K]: the tensor itself for fp32, a widened copy for bf16.
at::Tensor as_fp32(const at::Tensor& x2d) {
  return x2d.scalar_type() == at::kFloat ? x2d : x2d.to(at::kFloat);
}

// The AVX2 kernel over weight rows [n0, n1): out[(n - n0) * M + m] = dot(w[n], x[m]).
template <typename W>
void avx2_rows(int64_t M, const W* w, const float* x, int64_t K, int64_t n0, int64_t n1, float* out) {
  linear::with_rows(M, [&](auto m) {
    linear::walk_rows<m()>(n0, n1, out, [&](auto r, int64_t n, float* o) {
      linear::gemv_tile<m(), r()>(w + n * K, x, K, o);
    });
  });
}

// The decode and prefill kernels' instruction set: AVX-512 where the CPU has it; gemma4::linear_cpu_isa can
// force AVX2 (tests run both, benchmarks compare them).
std::atomic<bool>& uses_avx512() {
#if defined(CPU_CAPABILITY_AVX2)
  static std::atomic<bool> on{linear::avx512::supported()};
#else
  static std::atomic<bool> on{false};
#endif
  return on;
}

std::string linear_cpu_isa(c10::string_view request) {
  return switch_cpu_isa("gemma4::linear_cpu_isa", request, uses_avx512(), linear::avx512::supported(), "avx512",
                        "AVX-512 F, BW and VL");
}

// The decode GEMV, either kernel: tasks of kRows weight rows (each output computed by one task, so the result
// does not depend on the thread count), then bias and one rounding to Y.
template <typename W, typename Y>
void gemv(const W* w, const float* x, const Y* bias, Y* y, int64_t M, int64_t N, int64_t K) {
  constexpr int64_t kRows = 64;  // a multiple of every tile height, so tiles fall as over all of N
  using Bits = std::conditional_t<std::is_same_v<W, float>, float, uint16_t>;  // the AVX-512 file's bf16 type
  const bool avx512 = uses_avx512();
  // About 64K weights per task: a smaller problem is not worth waking a second thread for.
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, kRows * K));
  at::parallel_for(0, at::divup(N, kRows), grain, [&](int64_t t0, int64_t t1) {
    const FlushDenormals ftz;
    float acc[kRows * kGemvMaxRows];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n0 = t * kRows, n1 = std::min(N, n0 + kRows);
      if (avx512) {
        linear::avx512::gemv_rows(static_cast<int>(M), reinterpret_cast<const Bits*>(w), x, K, n0, n1, acc);
      } else {
        avx2_rows(M, w, x, K, n0, n1, acc);
      }
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t m = 0; m < M; ++m) {
          float v = acc[(n - n0) * M + m];
          if (bias) v += static_cast<float>(bias[n]);
          y[m * N + n] = static_cast<Y>(v);
        }
    }
  });
}

// Where linear_gemm.h's packed GEMM takes an fp32 weight rather than MKL's sgemm. On the benchmarks' AVX2
// EPYC (2 threads, M = 128, GFLOP/s ours / MKL) it is faster on the widening projections (1536 -> 6144 and
// 12288: 108-116 / 68-76) and equal within noise elsewhere (101-121 / 110-119); the narrowing shapes with
// K > 6144 keep the sgemm, as with the kernel before it. bf16 weights always take it (torch's bf16 matmul on
// a CPU without AVX512-BF16 is several times slower than its fp32 one). docs/performance.md has the table.
// With AVX-512 (the 8 x 32 tile) it takes every shape: on the Zen 5 EPYC it is 1.8-2.7x MKL (whose AVX2 code runs
// on AMD CPUs), 12288 -> 1536 included. On the H200 host's Xeon, where MKL runs its AVX-512 code, the tile measured
// 0.76-1.13x MKL (2 threads, M = 128, three runs; ~0.9x typically), and it takes every shape there too: one kernel
// keeps fp32 and bf16 weights on the same sums (an fp32 x with a bf16 weight equals the weight widened first).
bool packed_gemm_faster(int64_t N, int64_t K) {
#if defined(CPU_CAPABILITY_AVX2)
  return uses_avx512() || N >= K || K <= 6144;
#else
  return false;
#endif
}

// Floats of packed x at a time: a long reduction is packed a k-range at a time (the fused loss's grad_hidden
// reduces over 262144 logits, whose whole packed copy would be 268 MB).
constexpr int64_t kPackFloats = int64_t(2) << 20;  // 8 MB

// y[M, N] = x32[M, K] @ w[N, K]^T (+ bias), or with KMajor x32 @ w[K, N], rounded once to Y. Per k-range,
// x is packed, then tasks of nc output columns sum into fp32: with one k-range each task's own
// [groups * mr, nc] buffer, written to y at once; with several, a shared [groups * mr, N'] one. The tile is
// AVX2's 6 x 16 (linear_gemm.h) or, where the CPU has AVX-512, 8 x 32 (linear_gemm_avx512.cpp): the same sums.
//
// With AVX-512 and an fp32 weight [N, K], where xt_tile_fits(M), the x-vector tile (gemm_panel_xt) instead: x in
// groups of 32 rows, the weight read where it lies, the sums transposed ([nc, rows] a task, [N', rows] shared).
// On this project's 2-core Zen 4 EPYC (half-rate 512-bit FMAs, 117 GFLOP/s a thread), M = 128, one thread: 93-95
// GFLOP/s with the 8 x 32 tile, whose weight packing stalls on the weight's loads, against 100-106 with this one
// (two threads 183-196 against 200-215; the standalone experiment: dev/perf/gemm_xt.c).
// The padding to whole groups costs it the rest: it takes M where the padded rows are at most an eighth of them
// (32, 56-64, 84-96, 112-128, ...). Two threads, 6144 x 1536 / 1536 x 6144, GFLOP/s, 8 x 32 tile / x-vector tile:
// M = 32 116 / 158, 110 / 156; M = 56 153 / 168, 138 / 166; and where the rule keeps the 8 x 32 tile, M = 72 170 / 152,
// 166 / 158; M = 200 186 / 180, 182 / 165.
bool xt_tile_fits(int64_t M) {
  const int64_t rows = at::divup(M, int64_t(linear::avx512::kXtMR)) * linear::avx512::kXtMR;
  return M >= linear::avx512::kXtMR && (rows - M) * 8 <= rows;
}

// w: a pointer to the weight, or a linear::PanelSource, which the AVX2 tile packs through on every CPU.
template <bool KMajor = false, typename Src, typename Y>
void packed_gemm(const Src& w, const at::Tensor& x32, const Y* bias, Y* y, int64_t M, int64_t N, int64_t K) {
  using linear::kKC;
  static_assert(kKC == linear::avx512::kGemmKC, "both tiles sum over the same k-blocks");
  constexpr bool source = !std::is_pointer_v<Src>;
  const bool avx512 = !source && uses_avx512();
  const bool xt = avx512 && !KMajor && std::is_same_v<Src, const float*> && xt_tile_fits(M);
  const int mr = xt ? linear::avx512::kXtMR : avx512 ? linear::avx512::kGemmMR : linear::kMR;
  const int64_t nr = xt ? linear::avx512::kXtNR : avx512 ? linear::avx512::kGemmNR : linear::kNR;
  const int64_t groups = at::divup(M, mr), rows = groups * mr;
  const int64_t ks = std::max<int64_t>(1, kPackFloats / (rows * kKC)) * kKC;  // k per range: whole k-blocks
  const int64_t ranges = at::divup(K, ks);
  // Output columns per task: about 4 tasks per thread (balance for N = 256), at most 128 (the packed weights
  // of a k-block, 64 KB, stay in L2).
  const int64_t per = at::divup(N, 4 * static_cast<int64_t>(at::get_num_threads()));
  const int64_t nc = std::clamp<int64_t>(at::divup(per, nr) * nr, nr, 128);
  const int64_t tasks = at::divup(N, nc), ldn = tasks * nc;
  const float* x = x32.const_data_ptr<float>();
  at::Tensor ap = at::empty({rows * std::min(K, ks)}, x32.options());  // x packed: [k-blocks][groups][kc][mr]
  // sums over all k-ranges: [rows, N'] ([N', rows] for the x-vector tile)
  at::Tensor acc = ranges > 1 ? at::empty({rows * ldn}, x32.options()) : at::Tensor();
  float* app = ap.mutable_data_ptr<float>();
  // y[m, n0 + i] = Y(c(m, i) + bias) for m < M, i < cols, c(m, i) = c[m * ldc + i] (c[i * ldc + m] if xt)
  const auto store = [&](const float* c, int64_t ldc, int64_t m0, int64_t m1, int64_t n0, int64_t cols) {
    const int64_t sm = xt ? 1 : ldc, si = xt ? ldc : 1;
    for (int64_t m = m0; m < m1; ++m)
      for (int64_t i = 0; i < cols; ++i) {
        float v = c[m * sm + i * si];
        if (bias) v += static_cast<float>(bias[n0 + i]);
        y[m * N + n0 + i] = static_cast<Y>(v);
      }
  };
  for (int64_t r = 0; r < ranges; ++r) {
    const int64_t kb = r * ks, ke = std::min(K, kb + ks), kblocks = at::divup(ke - kb, kKC);
    at::parallel_for(0, kblocks * groups, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t k0 = kb + (t / groups) * kKC, g = t % groups, kc = std::min(kKC, ke - k0);
        linear::pack_x_group(x, M, K, k0, kc, g, mr, app + (k0 - kb) * rows + g * kc * mr);
      }
    });
    at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
      const FlushDenormals ftz;
      // packed weights (64-byte aligned: the AVX-512 tile's aligned loads); sums [rows, nc]
      std::vector<float> bp_raw(xt ? 0 : kKC * nc + 16), cbuf(ranges > 1 ? 0 : rows * nc);
      float* bp = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(bp_raw.data()) + 63) & ~uintptr_t(63));
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n0 = t * nc, cols = std::min(nc, N - n0);
        float* c = ranges > 1 ? acc.mutable_data_ptr<float>() + (xt ? n0 * rows : n0) : cbuf.data();
        const int64_t ldc = xt ? rows : ranges > 1 ? ldn : nc;
        if constexpr (!source) {
          if (xt) {
            linear::avx512::gemm_panel_xt(reinterpret_cast<const float*>(w), K, kb, ke, app, groups, n0, cols, c,
                                          ldc, r > 0);
          } else if (avx512) {
            using Bits = std::conditional_t<std::is_same_v<Src, const float*>, float, uint16_t>;  // the file's bf16
            linear::avx512::gemm_panel(KMajor, reinterpret_cast<const Bits*>(w), K, N, kb, ke, app, groups, n0,
                                       cols, bp, c, ldc, r > 0);
          }
        }
        if (!avx512) {
          linear::gemm_panel<KMajor, linear::kMR, linear::kNR, kKC>(w, K, N, kb, ke, app, groups, n0, cols, bp, c, ldc,
                                                                   r > 0, linear::micro_6x16);
        }
        if (ranges == 1) store(c, ldc, 0, M, n0, cols);
      }
    });
  }
  if (ranges > 1)
    at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
      store(acc.const_data_ptr<float>(), xt ? rows : ldn, m0, m1, 0, N);
    });
}

// Calls f(W{}, Y{}) for the (weight, output) types: (fp32, fp32), (bf16, bf16), or (bf16, fp32) for fp32 x
// with a bf16 weight.
template <typename F>
void dispatch_weight_out(at::ScalarType weight, at::ScalarType out, const F& f) {
  if (weight == at::kFloat) return f(float{}, float{});
  if (out == at::kFloat) return f(c10::BFloat16{}, float{});
  return f(c10::BFloat16{}, c10::BFloat16{});
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
  if (p.M <= kGemvMaxRows) {
    // Decode: x (contiguous, checked) as fp32 rows, a bf16 x widened into a local buffer rather than an ATen
    // tensor (the step makes hundreds of these calls; the widening is exact either way).
    std::vector<float> widened;
    const float* x32 = nullptr;
    if (x.scalar_type() == at::kFloat) {
      x32 = x.const_data_ptr<float>();
    } else {
      const c10::BFloat16* xb = x.const_data_ptr<c10::BFloat16>();
      widened.assign(xb, xb + p.M * p.K);  // each element converted to float
      x32 = widened.data();
    }
    dispatch_weight_out(weight.scalar_type(), x.scalar_type(), [&](auto wt, auto yt) {
      using W = decltype(wt);
      using Y = decltype(yt);
      gemv(weight.const_data_ptr<W>(), x32, bias ? bias->const_data_ptr<Y>() : nullptr, y.mutable_data_ptr<Y>(), p.M,
           p.N, p.K);
    });
    return y;
  }
  const at::Tensor x2d = x.view({p.M, p.K});
  const at::Tensor x32 = as_fp32(x2d).contiguous();  // [M, K]
  if (weight.scalar_type() == at::kFloat && !packed_gemm_faster(p.N, p.K)) {  // the BLAS sgemm, as torch.matmul
    at::Tensor y2d = y.view({p.M, p.N});
    if (bias) {
      at::addmm_out(y2d, *bias, x2d, weight.t());
    } else {
      at::mm_out(y2d, x2d, weight.t());
    }
    return y;
  }
  dispatch_weight_out(weight.scalar_type(), x.scalar_type(), [&](auto wt, auto yt) {
    using W = decltype(wt);
    using Y = decltype(yt);
    packed_gemm(weight.const_data_ptr<W>(), x32, bias ? bias->const_data_ptr<Y>() : nullptr, y.mutable_data_ptr<Y>(),
                p.M, p.N, p.K);
  });
  return y;
}

// grad_x = grad_out @ weight: the packed GEMM reading the weight k-major (its rows are the reduction).
at::Tensor linear_grad_input_cpu(const at::Tensor& grad_out, const at::Tensor& weight) {
  constexpr const char* op = "gemma4::linear_grad_input";
  check_device(grad_out, op, "grad_out", c10::kCPU);
  const LinearProblem p = check_linear_grad_input_args(op, grad_out, weight);
  std::vector<int64_t> out_shape(grad_out.sizes().begin(), grad_out.sizes().end());
  out_shape.back() = p.K;
  at::Tensor gx = at::empty(out_shape, grad_out.options());
  if (gx.numel() == 0) return gx;
  if (p.N == 0) return gx.zero_();
  const at::Tensor g32 = as_fp32(grad_out.view({p.M, p.N})).contiguous();  // [M, N]
  dispatch_weight_out(weight.scalar_type(), grad_out.scalar_type(), [&](auto wt, auto yt) {
    using W = decltype(wt);
    using Y = decltype(yt);
    packed_gemm<true>(weight.const_data_ptr<W>(), g32, static_cast<const Y*>(nullptr), gx.mutable_data_ptr<Y>(), p.M,
                      p.K, p.N);
  });
  return gx;
}
}  // namespace

// Declared in panel_source.h. The caller (a CPU kernel) has checked x, the weight and bias.
at::Tensor linear::gemm_from_panels(const PanelSource& w, const at::Tensor& x, const std::optional<at::Tensor>& bias) {
  const int64_t M = x.numel() / w.K;
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = w.N;
  at::Tensor y = at::empty(out_shape, x.options());
  const at::Tensor x32 = as_fp32(x.reshape({M, w.K})).contiguous();  // [M, K]
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "gemm_from_panels", [&] {
    packed_gemm(w, x32, bias ? bias->const_data_ptr<scalar_t>() : nullptr, y.mutable_data_ptr<scalar_t>(), M, w.N,
                w.K);
  });
  return y;
}

TORCH_LIBRARY_IMPL(gemma4, CPU, m) {
  m.impl("linear", &linear_cpu);
  m.impl("linear_grad_input", &linear_grad_input_cpu);
}

TORCH_LIBRARY_IMPL(gemma4, CompositeExplicitAutograd, m) { m.impl("linear_cpu_isa", &linear_cpu_isa); }

}  // namespace gemma4
