// gemma4::rms_norm and gemma4::rms_norm_backward on CUDA. Same maths and rounding as the CPU
// kernels (rms_norm_cpu.cpp, rms_norm_backward_cpu.cpp): per row, r = 1 / sqrt(sum(x^2) / D + eps)
// in fp32 (fp64 for fp64), y = (x * r) * w rounded once; backward
//   grad_x = r * (g * w) - x * r^3 / D * sum(g * w * x),   grad_w = sum over rows of g * (x * r).
// Reference: rms_norm in python/gemma4/ops/reference.py.
//
// Layout: a block of 256 threads holds 256 / TPR row slots of TPR threads (TPR = 32: a warp per
// row, for rows up to ~1K elements; TPR = 256: the block per row). A slot walks its row in 16-byte
// packs (8 bf16/fp16, 4 fp32, 2 fp64) when D and the pointers allow, else element by element:
// the sum of squares, a shuffle (block) reduction, then a second walk that writes y. The second walk
// re-reads the row from L1/L2, so DRAM sees x once and y once: 2 * rows * D * sizeof(T) bytes, the
// floor.
// Backward: the same row layout computes grad_x (and keeps each row's r). grad_w is a column sum over
// rows: a column kernel (a thread per 16-byte pack of columns, walking a chunk of rows, coalesced)
// writes one fp32 partial per row chunk, and a last kernel adds the chunks in order -- no atomics,
// deterministic for a given GPU. It re-reads g and x (5 passes of n elements instead of 3), but each
// kernel streams at full speed, where one fused pass would have to scatter grad_w partials.
#include <torch/library.h>

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>

#include "common/cuda_launch.cuh"
#include "common/cuda_reduce.cuh"
#include "common/cuda_vec.cuh"
#include "norm/norm_checks.h"

namespace gemma4 {
namespace {

using cuda::acc_t;
using cuda::Pack;

constexpr int kThreads = 256;

// Elements a slot thread handles per step: a 16-byte pack, or 1 on the unaligned path.
template <typename T, bool Vec>
constexpr int step_width() { return Vec ? Pack<T>::N : 1; }

// Reads elements [j, j + V) of row p into a (V = step_width).
template <typename T, bool Vec, typename A, int V>
__device__ __forceinline__ void load_step(const T* p, int64_t j, A (&a)[V]) {
  if constexpr (Vec) {
    cuda::widen(cuda::load_pack(p + j), a);
  } else {
    a[0] = static_cast<A>(p[j]);
  }
}
template <typename T, bool Vec, typename A, int V>
__device__ __forceinline__ void store_step(T* p, int64_t j, const A (&a)[V]) {
  if constexpr (Vec) {
    cuda::store_pack(p + j, cuda::narrow<T>(a));
  } else {
    p[j] = static_cast<T>(a[0]);
  }
}

// Sum over the TPR threads of a row slot (all threads of the block when TPR = kThreads).
template <int TPR, typename A>
__device__ __forceinline__ A slot_sum(A v, A* scratch) {
  if constexpr (TPR == kThreads) {
    return cuda::block_sum(v, scratch);
  } else {
    return cuda::group_sum(v, TPR);
  }
}

template <typename T, typename W, int TPR, bool Vec>
__global__ void __launch_bounds__(kThreads) rms_norm_kernel(const T* __restrict__ x, const W* __restrict__ w,
                                                            T* __restrict__ y, int64_t rows, int64_t D, acc_t<T> eps) {
  using A = acc_t<T>;
  constexpr int V = step_width<T, Vec>();
  constexpr int RPB = kThreads / TPR;
  __shared__ A scratch[32];
  const int slot = threadIdx.x / TPR, t = threadIdx.x % TPR;
  // Every thread of a slot runs the same number of iterations (block_sum needs the whole block).
  for (int64_t row = int64_t(blockIdx.x) * RPB + slot; row < rows; row += int64_t(gridDim.x) * RPB) {
    const T* xr = x + row * D;
    T* yr = y + row * D;
    A ss = 0;
#pragma unroll 4
    for (int64_t j = int64_t(t) * V; j < D; j += TPR * V) {
      A a[V];
      load_step<T, Vec>(xr, j, a);
#pragma unroll
      for (int i = 0; i < V; ++i) ss = fma(a[i], a[i], ss);
    }
    ss = slot_sum<TPR>(ss, scratch);
    const A inv = A(1) / sqrt(ss / static_cast<A>(D) + eps);
#pragma unroll 4
    for (int64_t j = int64_t(t) * V; j < D; j += TPR * V) {
      A a[V];
      load_step<T, Vec>(xr, j, a);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        a[i] = a[i] * inv;  // (x * inv) * w: the reference's order of rounding
        if (w != nullptr) a[i] = a[i] * static_cast<A>(w[j + i]);
      }
      store_step<T, Vec>(yr, j, a);
    }
  }
}

// grad_x of every row (the forward's row layout); with a weight, also r = inv_rms of each row,
// which the column kernel below needs.
template <typename T, typename W, int TPR, bool Vec>
__global__ void __launch_bounds__(kThreads) rms_norm_backward_kernel(const T* __restrict__ g, const T* __restrict__ x,
                                                                     const W* __restrict__ w, T* __restrict__ gx,
                                                                     acc_t<T>* __restrict__ inv_rms, int64_t rows,
                                                                     int64_t D, acc_t<T> eps) {
  using A = acc_t<T>;
  constexpr int V = step_width<T, Vec>();
  constexpr int RPB = kThreads / TPR;
  __shared__ A scratch[32];
  const int slot = threadIdx.x / TPR, t = threadIdx.x % TPR;
  for (int64_t row = int64_t(blockIdx.x) * RPB + slot; row < rows; row += int64_t(gridDim.x) * RPB) {
    const T* gr = g + row * D;
    const T* xr = x + row * D;
    T* gxr = gx + row * D;
    A ss = 0, dot = 0;  // sum(x^2), sum(g * w * x)
#pragma unroll 4
    for (int64_t j = int64_t(t) * V; j < D; j += TPR * V) {
      A a[V], b[V];
      load_step<T, Vec>(xr, j, a);
      load_step<T, Vec>(gr, j, b);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const A gw = w != nullptr ? b[i] * static_cast<A>(w[j + i]) : b[i];
        ss = fma(a[i], a[i], ss);
        dot = fma(gw, a[i], dot);
      }
    }
    ss = slot_sum<TPR>(ss, scratch);
    dot = slot_sum<TPR>(dot, scratch);
    const A inv = A(1) / sqrt(ss / static_cast<A>(D) + eps);
    const A coef = inv * inv * inv * dot / static_cast<A>(D);
    if (inv_rms != nullptr && t == 0) inv_rms[row] = inv;
#pragma unroll 4
    for (int64_t j = int64_t(t) * V; j < D; j += TPR * V) {
      A a[V], b[V], o[V];
      load_step<T, Vec>(xr, j, a);
      load_step<T, Vec>(gr, j, b);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const A gw = w != nullptr ? b[i] * static_cast<A>(w[j + i]) : b[i];
        o[i] = inv * gw - coef * a[i];
      }
      store_step<T, Vec>(gxr, j, o);
    }
  }
}

// grad_w partials: part[chunk, j] = sum over the rows of row chunk blockIdx.y of
// g[row, j] * (x[row, j] * r[row]). A block is `pcb` pack columns (a thread owns V adjacent columns)
// times 256 / pcb row lanes: neighbouring threads read neighbouring packs, so rows are read
// coalesced, and short rows (q/k-norm, D = 256) still fill the block. Each thread sums its rows in
// registers; the row lanes are then added in lane order (deterministic).
template <typename T, bool Vec>
__global__ void __launch_bounds__(kThreads) rms_norm_weight_grad_kernel(const T* __restrict__ g,
                                                                        const T* __restrict__ x,
                                                                        const acc_t<T>* __restrict__ inv_rms,
                                                                        acc_t<T>* __restrict__ part, int64_t rows,
                                                                        int64_t D, int64_t rows_per_chunk, int pcb) {
  using A = acc_t<T>;
  constexpr int V = step_width<T, Vec>();
  __shared__ A red[kThreads][V];
  const int pc = threadIdx.x % pcb, lane = threadIdx.x / pcb, lanes = kThreads / pcb;
  const int64_t j = (int64_t(blockIdx.x) * pcb + pc) * V;
  const int64_t r0 = int64_t(blockIdx.y) * rows_per_chunk, r1 = min(rows, r0 + rows_per_chunk);
  A acc[V] = {};
  if (j < D) {
#pragma unroll 4
    for (int64_t row = r0 + lane; row < r1; row += lanes) {
      A a[V], b[V];
      load_step<T, Vec>(x + row * D, j, a);
      load_step<T, Vec>(g + row * D, j, b);
      const A inv = inv_rms[row];
#pragma unroll
      for (int i = 0; i < V; ++i) acc[i] = fma(b[i], a[i] * inv, acc[i]);  // g * (x * r): the reference's order
    }
  }
#pragma unroll
  for (int i = 0; i < V; ++i) red[threadIdx.x][i] = acc[i];
  __syncthreads();
  if (lane == 0 && j < D) {
    A* out = part + int64_t(blockIdx.y) * D + j;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      A s = red[pc][i];
      for (int l = 1; l < lanes; ++l) s += red[l * pcb + pc][i];
      out[i] = s;
    }
  }
}

// grad_w[j] = sum over row chunks of part[c, j], rounded once to the weight's dtype. A block is 32
// columns x 8 lanes; lane l adds chunks l, l + 8, ... and the lanes are added in order.
template <typename A, typename WO>
__global__ void __launch_bounds__(256) sum_partials_kernel(const A* __restrict__ part, int64_t chunks, int64_t D,
                                                           WO* __restrict__ out) {
  __shared__ A red[8][32];
  const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
  const int64_t j = int64_t(blockIdx.x) * 32 + tx;
  A s = 0;
  if (j < D) {
#pragma unroll 4
    for (int64_t c = ty; c < chunks; c += 8) s += part[c * D + j];
  }
  red[ty][tx] = s;
  __syncthreads();
  if (ty == 0 && j < D) {
    A t = red[0][tx];
    for (int l = 1; l < 8; ++l) t += red[l][tx];
    out[j] = static_cast<WO>(t);
  }
}

// Runs f.template operator()<TPR, Vec>() for the layout this row length and these pointers allow.
template <typename T, typename F>
void dispatch_layout(int64_t D, bool aligned, F&& f) {
  const bool vec = aligned && D % Pack<T>::N == 0;
  // A warp per row while a row is at most 4 packs per lane, else the whole block.
  const bool warp_rows = D <= 4 * 32 * Pack<T>::N;
  if (vec) {
    if (warp_rows) f.template operator()<32, true>(); else f.template operator()<kThreads, true>();
  } else {
    if (warp_rows) f.template operator()<32, false>(); else f.template operator()<kThreads, false>();
  }
}

// The weight as the kernel reads it: its own dtype when that is x's dtype or the accumulation
// type (no copy), else converted once to the accumulation type.
at::Tensor weight_for_kernel(const at::Tensor& w, at::ScalarType x_type, at::ScalarType acc_type) {
  return (w.scalar_type() == x_type || w.scalar_type() == acc_type) ? w : w.to(acc_type);
}

// Calls f.template operator()<W>(w_ptr) with W = T or acc_t<T> matching the weight (nullptr: no weight).
template <typename T, typename F>
void dispatch_weight(const std::optional<at::Tensor>& w, F&& f) {
  using A = acc_t<T>;
  if (!w.has_value()) {
    f(static_cast<const A*>(nullptr));
  } else if (w->scalar_type() == c10::CppTypeToScalarType<T>::value) {
    f(w->const_data_ptr<T>());
  } else {
    f(w->const_data_ptr<A>());
  }
}

// Blocks for `rows` rows, at most blocks_per_sm per multiprocessor (the rest loop).
int grid_for(int64_t rows, int rows_per_block, int blocks_per_sm) {
  const int64_t want = cuda::ceil_div<int64_t>(rows, rows_per_block);
  return static_cast<int>(std::min<int64_t>(want, int64_t(cuda::sm_count()) * blocks_per_sm));
}

at::Tensor rms_norm_cuda(const at::Tensor& x_in, const std::optional<at::Tensor>& weight_in, double eps) {
  constexpr const char* op = "gemma4::rms_norm";
  check_device(x_in, op, "x", c10::kCUDA);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const norm::RmsNormProblem p = norm::check_rms_norm(op, x_in, weight_in, eps);
  const at::Tensor& x = p.x;
  const std::optional<at::Tensor>& weight = p.weight;
  at::Tensor y = at::empty_like(x);
  const int64_t D = p.D, rows = p.rows;
  if (x.numel() == 0) return y;
  GEMMA4_CUDA_DISPATCH_FLOATS(x.scalar_type(), "gemma4::rms_norm", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    std::optional<at::Tensor> w;
    if (weight.has_value()) w = weight_for_kernel(*weight, x.scalar_type(), c10::CppTypeToScalarType<A>::value);
    const bool aligned = cuda::aligned16(x.const_data_ptr(), y.const_data_ptr());
    dispatch_weight<T>(w, [&](auto wp) {
      using W = std::remove_const_t<std::remove_pointer_t<decltype(wp)>>;
      dispatch_layout<T>(D, aligned, [&]<int TPR, bool Vec>() {
        rms_norm_kernel<T, W, TPR, Vec><<<grid_for(rows, kThreads / TPR, 8), kThreads, 0, cuda::stream()>>>(
            x.const_data_ptr<T>(), wp, y.mutable_data_ptr<T>(), rows, D, static_cast<A>(eps));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> rms_norm_backward_cuda(const at::Tensor& grad_out_in, const at::Tensor& x_in,
                                                          const std::optional<at::Tensor>& weight_in, double eps) {
  constexpr const char* op = "gemma4::rms_norm_backward";
  check_device(x_in, op, "x", c10::kCUDA);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const norm::RmsNormProblem p = norm::check_rms_norm_backward(op, grad_out_in, x_in, weight_in, eps);
  const at::Tensor &x = p.x, &grad_out = p.grad_out;
  const std::optional<at::Tensor>& weight = p.weight;
  at::Tensor grad_x = at::empty_like(x);
  at::Tensor grad_w = weight.has_value() ? at::empty_like(*weight) : at::empty({0}, x.options());
  const int64_t D = p.D, rows = p.rows;
  if (weight.has_value() && (rows == 0 || D == 0)) grad_w.zero_();
  if (rows == 0 || D == 0) return {grad_x, grad_w};
  GEMMA4_CUDA_DISPATCH_FLOATS(x.scalar_type(), "gemma4::rms_norm_backward", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    constexpr auto acc_type = c10::CppTypeToScalarType<A>::value;
    std::optional<at::Tensor> w;
    if (weight.has_value()) w = weight_for_kernel(*weight, x.scalar_type(), acc_type);
    const bool aligned = cuda::aligned16(grad_out.const_data_ptr(), x.const_data_ptr(), grad_x.const_data_ptr());
    at::Tensor inv_rms;
    if (weight.has_value()) inv_rms = at::empty({rows}, x.options().dtype(acc_type));
    A* inv_p = weight.has_value() ? inv_rms.mutable_data_ptr<A>() : nullptr;
    dispatch_weight<T>(w, [&](auto wp) {
      using W = std::remove_const_t<std::remove_pointer_t<decltype(wp)>>;
      dispatch_layout<T>(D, aligned, [&]<int TPR, bool Vec>() {
        rms_norm_backward_kernel<T, W, TPR, Vec><<<grid_for(rows, kThreads / TPR, 8), kThreads, 0, cuda::stream()>>>(
            grad_out.const_data_ptr<T>(), x.const_data_ptr<T>(), wp, grad_x.mutable_data_ptr<T>(), inv_p, rows, D,
            static_cast<A>(eps));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
    if (!weight.has_value()) return;
    // grad_w: row-chunk partials (about 4 blocks per SM in all), then their sum in chunk order.
    const bool vec = aligned && D % Pack<T>::N == 0;
    const int64_t packs = cuda::ceil_div<int64_t>(D, vec ? Pack<T>::N : 1);  // per row
    int pcb = 32;  // pack columns per block: a power of two in [32, 256]
    while (pcb < kThreads && pcb < packs) pcb *= 2;
    const int64_t col_blocks = cuda::ceil_div<int64_t>(packs, pcb);
    const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(rows, int64_t(cuda::sm_count()) * 4 / col_blocks));
    const int64_t rows_per_chunk = cuda::ceil_div<int64_t>(rows, chunks);
    at::Tensor part = at::empty({chunks, D}, x.options().dtype(acc_type));
    const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(chunks));
    if (vec) {
      rms_norm_weight_grad_kernel<T, true><<<grid, kThreads, 0, cuda::stream()>>>(
          grad_out.const_data_ptr<T>(), x.const_data_ptr<T>(), inv_p, part.mutable_data_ptr<A>(), rows, D,
          rows_per_chunk, pcb);
    } else {
      rms_norm_weight_grad_kernel<T, false><<<grid, kThreads, 0, cuda::stream()>>>(
          grad_out.const_data_ptr<T>(), x.const_data_ptr<T>(), inv_p, part.mutable_data_ptr<A>(), rows, D,
          rows_per_chunk, pcb);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad_w.scalar_type(), "rms_norm_grad_w", [&] {
      sum_partials_kernel<A, scalar_t><<<cuda::ceil_div<int64_t>(D, 32), 256, 0, cuda::stream()>>>(
          part.const_data_ptr<A>(), chunks, D, grad_w.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {grad_x, grad_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(gemma4, CUDA, m) {
  m.impl("rms_norm", &rms_norm_cuda);
  m.impl("rms_norm_backward", &rms_norm_backward_cuda);
}

}  // namespace gemma4
