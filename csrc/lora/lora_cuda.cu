// gemma4::lora_down / lora_up / lora_weight_grad on CUDA: the thin GEMMs of a LoRA update (rank r, a
// few dozen at most) with the activation read once in its own dtype and widened in registers. PEFT's maths
// over a bf16 model widens x, the base output and the output gradient to float32 copies and runs float32
// GEMMs on them (SIMT, r is too thin for tensor cores to matter); here the copies never exist, and the
// products run at the bandwidth of reading the wide operand once.
//   lora_down         out[N, r] = scale * x[N, K] @ w[r, K]^T
//                     A block of 8 warps takes 32 rows (4 per warp) and 16 ranks; the factor's columns are
//                     staged in shared memory 512 at a time; each lane sums 4 consecutive k of every 128,
//                     and a butterfly reduce-scatter across the warp leaves each lane 2 finished sums.
//   lora_up           out[N, M] = round(base + scale * down[N, r] @ w[M, r]^T)
//                     A block of 256 threads takes 256 columns and up to 128 rows, 32 rows per pass; the
//                     block's columns of the factor (staged once for r <= 16, coalesced whatever its strides)
//                     and each pass's rows of down sit in shared memory; a thread sums its 4 columns 8 ranks
//                     at a time while its base values load; base is read and out written once.
//   lora_weight_grad  out[r, K] = scale * d[N, r]^T @ x[N, K]
//                     A block of 4 warps takes 512 columns (4 per lane) over one split of the rows and
//                     writes a partial [r, 512]; a second kernel sums the splits in a fixed order (no
//                     atomics: the gradient is the same on every run).
// A bf16 activation (bf16 output for lora_up) takes the tensor-core kernels of lora_tc.cuh instead where
// its shape allows (K % 32 == 0 for down, K % 8 == 0 for the weight grad, M % 16 == 0 and r <= 64 for up;
// 16-byte aligned rows); these SIMT kernels serve fp16, float32 and the rest.
// Everything accumulates in float32. Reference: lora_down / lora_up / lora_weight_grad in
// python/gemma4/ops/reference.py; the CPU kernels are lora_cpu.cpp.
#include <ATen/ops/empty.h>
#include <algorithm>
#include <torch/library.h>

#include "common/cuda_launch.cuh"
#include "lora/lora_checks.h"
#include "lora/lora_tc.cuh"

namespace gemma4 {
namespace {

using cuda::ceil_div;

constexpr int kR = 16;  // ranks per pass (r > 16: more passes, or grid tiles)

// Four consecutive elements at p widened to float. Vec: one 8-byte (bf16/fp16) or 16-byte (fp32) load,
// p aligned to it; else element loads of the first `valid` (the rest zero).
template <typename T, bool Vec>
__device__ __forceinline__ void load4(const T* p, int valid, float (&v)[4]) {
  if constexpr (Vec) {
    using Raw = std::conditional_t<sizeof(T) == 4, float4, uint2>;
    const Raw raw = *reinterpret_cast<const Raw*>(p);
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = static_cast<float>(e[i]);
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = i < valid ? static_cast<float>(p[i]) : 0.f;
  }
}

template <typename T, bool Vec>
__device__ __forceinline__ void store4(T* p, int valid, const float (&v)[4]) {
  if constexpr (Vec) {
    using Raw = std::conditional_t<sizeof(T) == 4, float4, uint2>;
    Raw raw;
    T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) e[i] = static_cast<T>(v[i]);
    *reinterpret_cast<Raw*>(p) = raw;
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i)
      if (i < valid) p[i] = static_cast<T>(v[i]);
  }
}

// out[i] = scale * sum over splits of part[split][i], the splits in order.
__global__ void sum_splits_kernel(const float* __restrict__ part, float* __restrict__ out, int64_t splits,
                                  int64_t count, float scale) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x) {
    float s = 0.f;
    for (int64_t p = 0; p < splits; ++p) s += part[p * count + i];
    out[i] = scale * s;
  }
}

// out = scale * the sum of the `splits` partials in part ([splits, count]), in order, on the current stream.
void sum_splits(const at::Tensor& part, at::Tensor& out, int64_t splits, double scale) {
  const int64_t count = out.numel();
  const int blocks = static_cast<int>(std::min<int64_t>(ceil_div<int64_t>(count, 256), 4 * cuda::sm_count()));
  sum_splits_kernel<<<blocks, 256, 0, cuda::stream()>>>(part.const_data_ptr<float>(), out.mutable_data_ptr<float>(),
                                                        splits, count, static_cast<float>(scale));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---------------------------------------------------------------------------------------------------
// lora_down

constexpr int kDownWarps = 8, kDownRows = 4;                     // 32 rows per block
constexpr int kDownChunk = 512, kDownPad = 4;                    // factor columns staged per pass
static_assert(kDownRows * kR == 64, "the reduce-scatter leaves 2 of 64 sums per lane");

// Sums v over the warp, scattered: afterwards lane l holds the sums of v[2l] and v[2l + 1] in v[0], v[1].
// Each step trades half the live values with the partner lane (62 shuffles instead of 64 x 5); a template
// per step so every index is a compile-time constant and v stays in registers.
template <int Half>
__device__ __forceinline__ void reduce_scatter_step(float (&v)[64], int lane) {
  constexpr int offset = Half / 2;  // the lane bit that picks which half this lane keeps
  const bool upper = lane & offset;
#pragma unroll
  for (int i = 0; i < Half; ++i) {
    const float send = upper ? v[i] : v[i + Half];
    const float keep = upper ? v[i + Half] : v[i];
    v[i] = keep + __shfl_xor_sync(0xffffffffu, send, offset);
  }
  if constexpr (Half > 2) reduce_scatter_step<Half / 2>(v, lane);
}

template <typename T, bool Vec>
__global__ void __launch_bounds__(kDownWarps * 32, 2)  // <= 128 registers: two blocks per SM
lora_down_kernel(const T* __restrict__ x, const float* __restrict__ w, int64_t w_sr, int64_t w_sk,
                 float* __restrict__ out, int64_t N, int64_t K, int64_t r, float scale) {
  __shared__ __align__(16) float ws[kR][kDownChunk + kDownPad];  // w[j0 + j, k0 + kc]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t j0 = int64_t(blockIdx.y) * kR;
  const int64_t n0 = int64_t(blockIdx.x) * (kDownWarps * kDownRows) + warp * kDownRows;
  float acc[kDownRows * kR];  // [row][rank]
#pragma unroll
  for (int i = 0; i < kDownRows * kR; ++i) acc[i] = 0.f;

  for (int64_t k0 = 0; k0 < K; k0 += kDownChunk) {
    const int kn = static_cast<int>(K - k0 < kDownChunk ? K - k0 : kDownChunk);
    __syncthreads();  // the previous chunk is consumed
    // stage along the factor's unit stride (a transposed factor [K, r] is rank-minor)
    const bool rank_minor = w_sk != 1;
#pragma unroll 4  // (more at once would spill the accumulators)
    for (int it = 0; it < kR * kDownChunk / (kDownWarps * 32); ++it) {
      const int i = threadIdx.x + it * kDownWarps * 32;
      const int j = rank_minor ? i % kR : i / kDownChunk, kc = rank_minor ? i / kR : i % kDownChunk;
      ws[j][kc] = (j0 + j < r && kc < kn) ? w[(j0 + j) * w_sr + (k0 + kc) * w_sk] : 0.f;
    }
    __syncthreads();
#pragma unroll 2
    for (int step = 0; step < kDownChunk / 128; ++step) {
      const int kc = 4 * lane + 128 * step;
      if (kc >= kn) break;
      float xv[kDownRows][4];
#pragma unroll
      for (int rr = 0; rr < kDownRows; ++rr) {
        const int64_t n = n0 + rr;
        if (n < N) {
          load4<T, Vec>(x + n * K + k0 + kc, kn - kc, xv[rr]);
        } else {
#pragma unroll
          for (int e = 0; e < 4; ++e) xv[rr][e] = 0.f;
        }
      }
#pragma unroll
      for (int j = 0; j < kR; ++j) {
        const float4 wv = *reinterpret_cast<const float4*>(&ws[j][kc]);
#pragma unroll
        for (int rr = 0; rr < kDownRows; ++rr) {
          float a = acc[rr * kR + j];
          a = fmaf(xv[rr][0], wv.x, a);
          a = fmaf(xv[rr][1], wv.y, a);
          a = fmaf(xv[rr][2], wv.z, a);
          acc[rr * kR + j] = fmaf(xv[rr][3], wv.w, a);
        }
      }
    }
  }
  reduce_scatter_step<32>(acc, lane);
  const int64_t n = n0 + (2 * lane) / kR;
  const int64_t j = j0 + (2 * lane) % kR;
  if (n < N) {
    if (j < r) out[n * r + j] = scale * acc[0];
    if (j + 1 < r) out[n * r + j + 1] = scale * acc[1];
  }
}

// ---------------------------------------------------------------------------------------------------
// lora_up

constexpr int kUpThreads = 256, kUpColThreads = 64;             // 64 threads x 4 columns = 256 columns
constexpr int kUpRowGroups = kUpThreads / kUpColThreads;        // 4
constexpr int kUpRowsPerThread = 8;                             // 32 rows per pass
constexpr int kUpRows = kUpRowGroups * kUpRowsPerThread;
constexpr int kUpMaxPasses = 4;                                 // up to 128 rows per block
constexpr int kUpRanks = 8;                                     // factor ranks held in registers at a time

template <typename T, bool Vec>
__global__ void __launch_bounds__(kUpThreads, 2)  // <= 128 registers: two blocks per SM
lora_up_kernel(const float* __restrict__ down, const float* __restrict__ w, int64_t w_sm, int64_t w_sj,
               const T* __restrict__ base, T* __restrict__ out, int64_t N, int64_t M, int64_t r, float scale,
               int passes) {
  constexpr int kCols = 4 * kUpColThreads;
  __shared__ __align__(16) float ds[kUpRows][kR];       // down[nb + row, j0 + j]
  __shared__ __align__(16) float ws[kR][kCols + 4];      // w[mb + col, j0 + j] (+4: fewer bank conflicts)
  const int c = threadIdx.x % kUpColThreads, g = threadIdx.x / kUpColThreads;
  const int64_t mb = int64_t(blockIdx.y) * kCols, m = mb + 4 * c;
  const int mvalid = static_cast<int>(M - m < 4 ? M - m : 4);  // <= 0 past the last column
  const bool rank_minor = w_sj == 1;                             // B [M, r]; A.t() is column-minor

  for (int pass = 0; pass < passes; ++pass) {
    const int64_t nb = (int64_t(blockIdx.x) * passes + pass) * kUpRows;
    if (nb >= N) break;  // (uniform over the block)
    // this pass's base values first: their loads are in flight while the sums are formed
    float o[kUpRowsPerThread][4];
#pragma unroll
    for (int i = 0; i < kUpRowsPerThread; ++i) {
      const int64_t n = nb + g + kUpRowGroups * i;
      if (base != nullptr && n < N && mvalid > 0) {
        load4<T, Vec>(base + n * M + m, mvalid, o[i]);
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) o[i][e] = 0.f;
      }
    }
    float acc[kUpRowsPerThread][4];
#pragma unroll
    for (int i = 0; i < kUpRowsPerThread; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][e] = 0.f;

    for (int64_t j0 = 0; j0 < r; j0 += kR) {
      __syncthreads();  // the previous pass is consumed
#pragma unroll
      for (int it = 0; it < kUpRows * kR / kUpThreads; ++it) {
        const int i = threadIdx.x + it * kUpThreads;
        const int row = i / kR, j = i % kR;
        ds[row][j] = (nb + row < N && j0 + j < r) ? down[(nb + row) * r + j0 + j] : 0.f;
      }
      if (pass == 0 || r > kR) {  // the block's columns of the factor: staged once when r <= 16
        // read along the factor's unit stride (coalesced)
#pragma unroll 4
        for (int it = 0; it < kR * kCols / kUpThreads; ++it) {
          const int i = threadIdx.x + it * kUpThreads;
          const int j = rank_minor ? i % kR : i / kCols, col = rank_minor ? i / kR : i % kCols;
          ws[j][col] = (mb + col < M && j0 + j < r) ? w[(mb + col) * w_sm + (j0 + j) * w_sj] : 0.f;
        }
      }
      __syncthreads();
#pragma unroll 1
      for (int jh = 0; jh < kR; jh += kUpRanks) {
        float wv[kUpRanks][4];  // this thread's 4 columns of the factor, 8 ranks
#pragma unroll
        for (int j = 0; j < kUpRanks; ++j) {
          const float4 w4 = *reinterpret_cast<const float4*>(&ws[jh + j][4 * c]);
          wv[j][0] = w4.x, wv[j][1] = w4.y, wv[j][2] = w4.z, wv[j][3] = w4.w;
        }
#pragma unroll
        for (int i = 0; i < kUpRowsPerThread; ++i) {
          const int row = g + kUpRowGroups * i;
#pragma unroll
          for (int jq = 0; jq < kUpRanks; jq += 4) {
            const float4 d4 = *reinterpret_cast<const float4*>(&ds[row][jh + jq]);
            const float dj[4] = {d4.x, d4.y, d4.z, d4.w};
#pragma unroll
            for (int u = 0; u < 4; ++u)
#pragma unroll
              for (int e = 0; e < 4; ++e) acc[i][e] = fmaf(dj[u], wv[jq + u][e], acc[i][e]);
          }
        }
      }
    }
    if (mvalid <= 0) continue;
#pragma unroll
    for (int i = 0; i < kUpRowsPerThread; ++i) {
      const int64_t n = nb + g + kUpRowGroups * i;
      if (n >= N) continue;
#pragma unroll
      for (int e = 0; e < 4; ++e) o[i][e] = fmaf(scale, acc[i][e], o[i][e]);
      store4<T, Vec>(out + n * M + m, mvalid, o[i]);
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// lora_weight_grad

constexpr int kWgWarps = 4, kWgCols = kWgWarps * 128;           // 512 columns per block
constexpr int kWgChunk = 64;                                    // rows of d staged per pass

template <typename T, bool Vec>
__global__ void __launch_bounds__(kWgWarps * 32, 4)  // <= 128 registers: four blocks per SM
lora_weight_grad_kernel(const T* __restrict__ x, const float* __restrict__ d, float* __restrict__ out,
                        int64_t N, int64_t K, int64_t r, int64_t rows_per_split, float scale) {
  __shared__ __align__(16) float dsm[kWgChunk][kR];  // d[n + i, j0 + j]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t k = int64_t(blockIdx.x) * kWgCols + warp * 128 + 4 * lane;
  const int64_t j0 = int64_t(blockIdx.z) * kR;
  const int64_t nbeg = int64_t(blockIdx.y) * rows_per_split;
  const int64_t nend = nbeg + rows_per_split < N ? nbeg + rows_per_split : N;
  const int kvalid = static_cast<int>(K - k < 4 ? K - k : 4);
  float acc[kR][4];
#pragma unroll
  for (int j = 0; j < kR; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[j][e] = 0.f;

  for (int64_t n0 = nbeg; n0 < nend; n0 += kWgChunk) {
    const int rows = static_cast<int>(nend - n0 < kWgChunk ? nend - n0 : kWgChunk);
    __syncthreads();
#pragma unroll 4
    for (int it = 0; it < kWgChunk * kR / (kWgWarps * 32); ++it) {
      const int i = threadIdx.x + it * kWgWarps * 32;
      const int row = i / kR, j = i % kR;
      dsm[row][j] = (row < rows && j0 + j < r) ? d[(n0 + row) * r + j0 + j] : 0.f;
    }
    __syncthreads();
    if (kvalid <= 0) continue;
    for (int i0 = 0; i0 < rows; i0 += 4) {  // 4 rows' loads in flight
      float xv[4][4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        if (i0 + u < rows) {
          load4<T, Vec>(x + (n0 + i0 + u) * K + k, kvalid, xv[u]);
        } else {
#pragma unroll
          for (int e = 0; e < 4; ++e) xv[u][e] = 0.f;  // (dsm's row is zero too)
        }
      }
#pragma unroll
      for (int u = 0; u < 4; ++u) {
#pragma unroll
        for (int jq = 0; jq < kR; jq += 4) {
          const float4 d4 = *reinterpret_cast<const float4*>(&dsm[i0 + u][jq]);
          const float dj[4] = {d4.x, d4.y, d4.z, d4.w};
#pragma unroll
          for (int q = 0; q < 4; ++q)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[jq + q][e] = fmaf(dj[q], xv[u][e], acc[jq + q][e]);
        }
      }
    }
  }
  if (kvalid <= 0) return;
  // one split: the result; several: this split's partial [r, K] in out + split * r * K, unscaled
  const bool partial = gridDim.y > 1;
  float* dst = out + (partial ? int64_t(blockIdx.y) * r * K : 0);
  const float s = partial ? 1.f : scale;
#pragma unroll
  for (int j = 0; j < kR; ++j) {
    if (j0 + j >= r) break;
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (e < kvalid) dst[(j0 + j) * K + k + e] = s * acc[j][e];
  }
}


// ---------------------------------------------------------------------------------------------------
// host side

// f(T{}) for the activation dtypes the checks allow.
template <typename F>
void dispatch_activation(at::ScalarType s, F&& f) {
  switch (s) {
    case at::kFloat: f(float{}); break;
    case at::kBFloat16: f(c10::BFloat16{}); break;
    case at::kHalf: f(c10::Half{}); break;
    default: TORCH_CHECK(false, "unreachable: dtype ", s);
  }
}

// Four-element vector access for rows of `cols` elements starting at p: needs cols % 4 == 0 and p aligned.
template <typename T>
bool vec4_ok(const void* p, int64_t cols) {
  return cols % 4 == 0 && reinterpret_cast<uintptr_t>(p) % (4 * sizeof(T)) == 0;
}

// 16-byte vector access (8 bf16) from p.
bool vec8_ok(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The tensor-core kernels (lora_tc.cuh) for a bf16 x with K % 32 == 0 (down) or K % 8 == 0 (weight grad).
// Both split their reduction over blocks until one wave of two (down) or three (weight grad) blocks per SM
// runs, and sum the splits' partials in a fixed order.
void lora_down_tc(const at::Tensor& x, const at::Tensor& weight, at::Tensor& out, const lora::ThinProblem& p,
                  double scale) {
  const int64_t row_blocks = ceil_div<int64_t>(p.N, lora_tc::kDownRows), rank_tiles = ceil_div<int64_t>(p.r, lora_tc::kR);
  // (as many splits as fit in one wave: a second, partial wave would leave most SMs idle)
  const int64_t want = 2 * cuda::sm_count() / (row_blocks * rank_tiles);
  const int64_t splits_max = ceil_div<int64_t>(p.K, lora_tc::kDownChunk);
  int64_t splits = std::clamp<int64_t>(want, 1, splits_max);
  const int64_t k_per_split = ceil_div<int64_t>(ceil_div<int64_t>(p.K, splits), lora_tc::kDownChunk) * lora_tc::kDownChunk;
  splits = ceil_div<int64_t>(p.K, k_per_split);
  TORCH_CHECK(row_blocks <= INT32_MAX && rank_tiles <= 65535, "gemma4::lora_down: too many rows or ranks for one launch");
  at::Tensor part = splits > 1 ? at::empty({splits, p.N, p.r}, out.options()) : out;
  const dim3 grid(row_blocks, splits, rank_tiles);
  lora_tc::lora_down_tc_kernel<<<grid, lora_tc::kDownWarps * 32, 0, cuda::stream()>>>(
      reinterpret_cast<const __nv_bfloat16*>(x.const_data_ptr()), weight.const_data_ptr<float>(), weight.stride(0),
      weight.stride(1), part.mutable_data_ptr<float>(), p.N, p.K, p.r, k_per_split, static_cast<float>(scale));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (splits > 1) sum_splits(part, out, splits, scale);
}

void lora_weight_grad_tc(const at::Tensor& x, const at::Tensor& d, at::Tensor& out, const lora::ThinProblem& p,
                         double scale) {
  const int64_t col_blocks = ceil_div<int64_t>(p.K, lora_tc::kWgCols), rank_tiles = ceil_div<int64_t>(p.r, lora_tc::kR);
  const int64_t want = 3 * cuda::sm_count() / (col_blocks * rank_tiles);  // (one wave, as above)
  int64_t splits = std::clamp<int64_t>(want, 1, ceil_div<int64_t>(p.N, lora_tc::kWgChunk));
  const int64_t rows_per_split = ceil_div<int64_t>(ceil_div<int64_t>(p.N, splits), lora_tc::kWgChunk) * lora_tc::kWgChunk;
  splits = ceil_div<int64_t>(p.N, rows_per_split);
  TORCH_CHECK(splits <= 65535 && rank_tiles <= 65535, "gemma4::lora_weight_grad: too many rows or ranks for one launch");
  at::Tensor part = splits > 1 ? at::empty({splits, p.r, p.K}, out.options()) : out;
  const dim3 grid(col_blocks, splits, rank_tiles);
  lora_tc::lora_weight_grad_tc_kernel<<<grid, lora_tc::kWgWarps * 32, 0, cuda::stream()>>>(
      reinterpret_cast<const __nv_bfloat16*>(x.const_data_ptr()), d.const_data_ptr<float>(),
      part.mutable_data_ptr<float>(), p.N, p.K, p.r, rows_per_split, static_cast<float>(scale));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (splits > 1) sum_splits(part, out, splits, scale);
}

// The tensor-core lora_up (lora_tc.cuh): bf16 out, M % 16 == 0, r <= 64, 16-byte aligned rows.
void lora_up_tc(const at::Tensor& down, const at::Tensor& weight, const std::optional<at::Tensor>& base,
                at::Tensor& out, const lora::ThinProblem& p, double scale) {
  const int64_t col_blocks = ceil_div<int64_t>(p.K, lora_tc::kUpCols);
  const int64_t row_groups = ceil_div<int64_t>(p.N, 16 * lora_tc::kUpWarps);  // 128 rows: one tile per warp
  // more row tiles per warp where the grid would still fill two blocks per SM
  const int64_t fill = row_groups * col_blocks / (2 * cuda::sm_count());
  const int tiles = static_cast<int>(std::clamp<int64_t>(fill, 1, lora_tc::kUpMaxTiles));
  const dim3 grid(ceil_div<int64_t>(row_groups, tiles), col_blocks);
  TORCH_CHECK(col_blocks <= 65535, "gemma4::lora_up: too many columns for one launch");
  lora_tc::lora_up_tc_kernel<<<grid, lora_tc::kUpWarps * 32, 0, cuda::stream()>>>(
      down.const_data_ptr<float>(), weight.const_data_ptr<float>(), weight.stride(0), weight.stride(1),
      base.has_value() ? reinterpret_cast<const __nv_bfloat16*>(base->const_data_ptr()) : nullptr,
      reinterpret_cast<__nv_bfloat16*>(out.mutable_data_ptr()), p.N, p.K, p.r, static_cast<float>(scale), tiles);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor lora_down_cuda(const at::Tensor& x, const at::Tensor& weight, double scale) {
  constexpr const char* op = "gemma4::lora_down";
  check_device(x, op, "x", c10::kCUDA);
  const c10::cuda::CUDAGuard guard(x.device());
  const lora::ThinProblem p = lora::check_lora_down(op, x, weight);
  at::Tensor out = at::empty({p.N, p.r}, x.options().dtype(at::kFloat));
  if (p.N == 0 || p.r == 0) return out;
  if (p.K == 0) return out.zero_();
  if (x.scalar_type() == at::kBFloat16 && p.K % 32 == 0 && vec8_ok(x.const_data_ptr())) {
    lora_down_tc(x, weight, out, p, scale);
    return out;
  }
  dispatch_activation(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const dim3 grid(ceil_div<int64_t>(p.N, kDownWarps * kDownRows), ceil_div<int64_t>(p.r, kR));
    auto launch = [&](auto kernel) {
      kernel<<<grid, kDownWarps * 32, 0, cuda::stream()>>>(
          x.const_data_ptr<T>(), weight.const_data_ptr<float>(), weight.stride(0), weight.stride(1),
          out.mutable_data_ptr<float>(), p.N, p.K, p.r, static_cast<float>(scale));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (vec4_ok<T>(x.const_data_ptr(), p.K)) launch(lora_down_kernel<T, true>); else launch(lora_down_kernel<T, false>);
  });
  return out;
}

at::Tensor lora_up_cuda(const at::Tensor& down, const at::Tensor& weight, double scale,
                        const std::optional<at::Tensor>& base, at::ScalarType dtype) {
  constexpr const char* op = "gemma4::lora_up";
  check_device(down, op, "down", c10::kCUDA);
  const c10::cuda::CUDAGuard guard(down.device());
  const lora::ThinProblem p = lora::check_lora_up(op, down, weight, base, dtype);  // p.K is M
  at::Tensor out = at::empty({p.N, p.K}, down.options().dtype(dtype));
  if (out.numel() == 0) return out;
  if (dtype == at::kBFloat16 && p.K % 16 == 0 && p.r <= 16 * lora_tc::kUpMaxRankSteps &&
      vec8_ok(out.const_data_ptr()) && (!base.has_value() || vec8_ok(base->const_data_ptr()))) {
    lora_up_tc(down, weight, base, out, p, scale);
    return out;
  }
  dispatch_activation(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* base_ptr = base.has_value() ? base->const_data_ptr<T>() : nullptr;
    // several 32-row passes per block reuse its staged factor columns, while enough blocks remain to fill
    // the GPU (a narrow output, M = 256, keeps one pass per block)
    const int64_t col_blocks = ceil_div<int64_t>(p.K, 4 * kUpColThreads);
    const int64_t fill = ceil_div<int64_t>(p.N, kUpRows) * col_blocks / (4 * cuda::sm_count());
    const int passes = static_cast<int>(std::clamp<int64_t>(fill, 1, kUpMaxPasses));
    const dim3 grid(ceil_div<int64_t>(p.N, kUpRows * passes), col_blocks);
    auto launch = [&](auto kernel) {
      kernel<<<grid, kUpThreads, 0, cuda::stream()>>>(
          down.const_data_ptr<float>(), weight.const_data_ptr<float>(), weight.stride(0), weight.stride(1),
          base_ptr, out.mutable_data_ptr<T>(), p.N, p.K, p.r, static_cast<float>(scale), passes);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    const bool vec = vec4_ok<T>(out.const_data_ptr(), p.K) && (!base_ptr || vec4_ok<T>(base_ptr, p.K));
    if (vec) launch(lora_up_kernel<T, true>); else launch(lora_up_kernel<T, false>);
  });
  return out;
}

at::Tensor lora_weight_grad_cuda(const at::Tensor& x, const at::Tensor& d, double scale) {
  constexpr const char* op = "gemma4::lora_weight_grad";
  check_device(x, op, "x", c10::kCUDA);
  const c10::cuda::CUDAGuard guard(x.device());
  const lora::ThinProblem p = lora::check_lora_weight_grad(op, x, d);
  at::Tensor out = at::empty({p.r, p.K}, x.options().dtype(at::kFloat));
  if (out.numel() == 0) return out;
  if (p.N == 0) return out.zero_();
  if (x.scalar_type() == at::kBFloat16 && p.K % 8 == 0 && vec8_ok(x.const_data_ptr())) {
    lora_weight_grad_tc(x, d, out, p, scale);
    return out;
  }
  // Split the rows so that about 8 blocks per SM run, each split at least one staged chunk of rows.
  const int64_t col_blocks = ceil_div<int64_t>(p.K, kWgCols), rank_tiles = ceil_div<int64_t>(p.r, kR);
  const int64_t want = ceil_div<int64_t>(8 * cuda::sm_count(), col_blocks * rank_tiles);
  const int64_t max_splits = ceil_div<int64_t>(p.N, kWgChunk);
  int64_t splits = std::max<int64_t>(1, std::min(want, max_splits));
  const int64_t rows_per_split = ceil_div<int64_t>(ceil_div<int64_t>(p.N, splits), kWgChunk) * kWgChunk;
  splits = ceil_div<int64_t>(p.N, rows_per_split);
  TORCH_CHECK(splits <= 65535 && rank_tiles <= 65535, op, ": too many rows or ranks for one launch");
  at::Tensor part = splits > 1 ? at::empty({splits, p.r, p.K}, out.options()) : out;
  dispatch_activation(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const dim3 grid(col_blocks, splits, rank_tiles);
    auto launch = [&](auto kernel) {
      kernel<<<grid, kWgWarps * 32, 0, cuda::stream()>>>(x.const_data_ptr<T>(), d.const_data_ptr<float>(),
                                                        part.mutable_data_ptr<float>(), p.N, p.K, p.r,
                                                        rows_per_split, static_cast<float>(scale));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (vec4_ok<T>(x.const_data_ptr(), p.K)) launch(lora_weight_grad_kernel<T, true>);
    else launch(lora_weight_grad_kernel<T, false>);
  });
  if (splits > 1) sum_splits(part, out, splits, scale);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gemma4, CUDA, m) {
  m.impl("lora_down", &lora_down_cuda);
  m.impl("lora_up", &lora_up_cuda);
  m.impl("lora_weight_grad", &lora_weight_grad_cuda);
}

}  // namespace gemma4
