// The int16-activation GEMV (qgemm_cuda.cu: x16_gemv_wins): one or two rows of bf16/fp16 x against int4 / int8
// weights, K a multiple of 32, on the CUDA cores' integer dot products instead of the tensor cores.
//
// Why: at one row the tensor-core GEMVs (qgemv_bulk.cuh, qgemm_cuda.cuh) fill 1 of an MMA's 8 columns and spend
// ~90 instructions a warp on each 32 x 32 block of weights (the exact bf16 conversion, the scale, ldmatrix), so
// their warps issue about half the time and they stop at ~2.8 TB/s, where the copies alone reach 3.3. Here x is
// quantized once to int16, as the CPU kernel does (qgemm_cpu.cpp: per 32 activations, scale = amax / 32767,
// round half to even; a block with NaN or inf gets a NaN scale), and each 8 weights cost two masks and four
// `dp2a` (int16 pair x two bytes, int32 accumulation): about one instruction a weight. The int16 rounding is at
// most amax / 65534 of a block, far under the bf16 rounding plain PyTorch's weight gets (2^-9 of each value).
//
// Layout (qgemm_problem.h): a row's 32-weight run is 16 bytes (int4: byte i holds weight i in its low nibble,
// i + 16 in its high one, as level + 8) or 32 (int8). Lane l of a warp takes runs l, l + 32, ... of kX16Rows
// consecutive rows, so each load of the warp is 512 contiguous bytes of a row, and the lane's x run (64 bytes of
// int16, from L1) serves all of its rows. Each run's integer sum is exact; it is scaled in fp32 (x's block
// scale times the weight's) into the lane's sum, and the lanes are added by a fixed butterfly: deterministic.
// Reference: gemma4.ops.reference.qgemm (the same y = x @ dequant(W)^T in float64 in the tests).
#pragma once
#include <cstdint>

#include "common/cuda_pdl.cuh"
#include "common/cuda_reduce.cuh"
#include "quant/qgemm_cuda.cuh"

namespace gemma4::quant_cuda {

constexpr int kX16Rows = 4;   // weight rows a warp: one x run serves them all
constexpr int kX16Warps = 8;  // warps a block at most: fewer where the blocks would not fill two waves
constexpr int kX16MaxM = 2;   // rows of x (each adds 16 registers of x and a dp2a per weight pair)

// Spans of 32 runs a lane loads before it multiplies: 2 (int4) or 1 (int8) keep 32 bytes of weights a lane and
// row in flight.
template <int BITS>
constexpr int x16_batch() {
  return BITS == 4 ? 2 : 1;
}

struct X16Args {
  const uint8_t* qw;     // [N, row_bytes]
  const void* scales;    // [N, G] in S
  const int16_t* x16;    // [M, K]: x / xscale of its block, rounded
  const float* xscale;   // [M, runs]
  const int* xoffset;    // [M, runs]: -8 x the block's int16 sum for int4 (the levels are stored + 8), 0 for int8
  const void* bias;      // [N] in T, or nullptr
  void* y;               // [M, N] in T
  int M, N, runs, G, group;
  int64_t K;
  int scale_shift;       // run >> scale_shift is the run's scale: log2(group / 32), or 31 with one scale a row
  int64_t row_bytes;
};

// x [M, K] -> x16, xscale, xoffset: one thread per 32-activation block (blocks = M * K / 32).
template <typename T, int BITS>
__global__ void qgemv_x16_prep_kernel(const T* __restrict__ x, int16_t* __restrict__ x16, float* __restrict__ xscale,
                                      int* __restrict__ xoffset, int64_t blocks) {
  cuda::pdl_launch_dependents();  // the GEMV's weight loads start now; it waits for this kernel before its x
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= blocks) return;
  uint4 raw[4];  // 32 activations, 64 bytes
#pragma unroll
  for (int i = 0; i < 4; ++i) raw[i] = reinterpret_cast<const uint4*>(x + b * 32)[i];
  const T* v = reinterpret_cast<const T*>(raw);
  float amax = 0.0f;
  bool finite = true;
#pragma unroll
  for (int i = 0; i < 32; ++i) {
    const float f = static_cast<float>(v[i]);
    amax = fmaxf(amax, fabsf(f));
    finite &= isfinite(f);
  }
  const float s = amax / 32767.0f;
  const float inv = finite && s > 0.0f ? 1.0f / s : 0.0f;
  uint32_t packed[16];
  int sum = 0;
#pragma unroll
  for (int i = 0; i < 32; i += 2) {
    const int q0 = __float2int_rn(fminf(fmaxf(static_cast<float>(v[i]) * inv, -32767.0f), 32767.0f));
    const int q1 = __float2int_rn(fminf(fmaxf(static_cast<float>(v[i + 1]) * inv, -32767.0f), 32767.0f));
    sum += q0 + q1;
    packed[i / 2] = (uint32_t(q0) & 0xFFFFu) | (uint32_t(q1) << 16);
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
    reinterpret_cast<uint4*>(x16 + b * 32)[i] = make_uint4(packed[4 * i], packed[4 * i + 1], packed[4 * i + 2], packed[4 * i + 3]);
  xscale[b] = finite ? s : __int_as_float(0x7fc00000);  // NaN: the block's rows come out NaN
  xoffset[b] = BITS == 4 ? -8 * sum : 0;
}

// d = c + a.lo16 * b.byte(hi ? 2 : 0) + a.hi16 * b.byte(hi ? 3 : 1): int16 pair a, bytes of b unsigned (int4
// levels + 8) or signed (int8).
template <bool HI, bool SIGNED_B>
__device__ __forceinline__ int dp2a(uint32_t a, uint32_t b, int c) {
  int d;
  if constexpr (HI && SIGNED_B) {
    asm("dp2a.hi.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  } else if constexpr (HI) {
    asm("dp2a.hi.s32.u32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  } else if constexpr (SIGNED_B) {
    asm("dp2a.lo.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  } else {
    asm("dp2a.lo.s32.u32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  }
  return d;
}

// The exact sum over one run of x16 * level: w the run's words (4 int4 or 8 int8), xw its 16 words of x pairs,
// offset the run's xoffset (int4's -8 x sum(x16)). int4 word j holds weights 4j..4j+3 in its low nibbles and
// 16 + 4j.. in its high ones, which are summed at 16x (no shift a word) and shifted once.
template <int BITS>
__device__ __forceinline__ int run_dot(const uint32_t (&w)[BITS], const uint32_t (&xw)[16], int offset) {
  int lo = offset;
  if constexpr (BITS == 4) {
    int hi = 0;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint32_t l = w[j] & 0x0F0F0F0Fu, h = w[j] & 0xF0F0F0F0u;
      lo = dp2a<false, false>(xw[2 * j], l, lo);
      lo = dp2a<true, false>(xw[2 * j + 1], l, lo);
      hi = dp2a<false, false>(xw[8 + 2 * j], h, hi);
      hi = dp2a<true, false>(xw[9 + 2 * j], h, hi);
    }
    return lo + (hi >> 4);  // hi is 16x an integer: the shift is exact
  } else {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      lo = dp2a<false, true>(xw[2 * j], w[j], lo);
      lo = dp2a<true, true>(xw[2 * j + 1], w[j], lo);
    }
    return lo;
  }
}

// Blocks of up to kX16Warps warps, each kX16Rows weight rows over all of K; y [MX, N] written whole (no split).
template <typename T, typename S, int BITS, int MX>
__global__ void __launch_bounds__(kX16Warps * 32) qgemv_x16_kernel(const X16Args a) {
  constexpr int R = kX16Rows, D = x16_batch<BITS>(), RB = 4 * BITS;  // RB: bytes a run
  const int lane = threadIdx.x % 32;
  const int n0 = (blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32) * R;
  if (n0 >= a.N) return;
  const uint8_t* wrow[R];  // rows past N read row N - 1 and are not written
  const S* srow[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int n = min(n0 + r, a.N - 1);
    wrow[r] = a.qw + n * a.row_bytes + lane * RB;
    srow[r] = static_cast<const S*>(a.scales) + int64_t(n) * a.G;
  }
  float acc[MX][R] = {};
  for (int base = 0; base < a.runs; base += 32 * D) {
    uint32_t w[D][R][BITS];  // [span][row][word]
#pragma unroll
    for (int d = 0; d < D; ++d) {
      if (base + 32 * d + lane >= a.runs) continue;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const uint8_t* p = wrow[r] + int64_t(base + 32 * d) * RB;
        load_stream<4>(p, *reinterpret_cast<uint32_t(*)[4]>(&w[d][r][0]));
        if constexpr (BITS == 8) load_stream<4>(p + 16, *reinterpret_cast<uint32_t(*)[4]>(&w[d][r][4]));
      }
    }
    if (base == 0) cuda::pdl_wait();  // x16 and its scales come from the prep kernel
#pragma unroll
    for (int d = 0; d < D; ++d) {
      const int run = base + 32 * d + lane;
      if (run >= a.runs) continue;
      uint32_t xw[MX][16];
      float xs[MX];
      int off[MX];
#pragma unroll
      for (int m = 0; m < MX; ++m) {
        const uint4* xp = reinterpret_cast<const uint4*>(a.x16 + m * a.K + run * 32);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const uint4 v = __ldg(xp + i);
          xw[m][4 * i] = v.x, xw[m][4 * i + 1] = v.y, xw[m][4 * i + 2] = v.z, xw[m][4 * i + 3] = v.w;
        }
        xs[m] = __ldg(a.xscale + m * a.runs + run);
        off[m] = __ldg(a.xoffset + m * a.runs + run);
      }
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float s = scale_to_float(srow[r][run >> a.scale_shift]);
#pragma unroll
        for (int m = 0; m < MX; ++m)
          acc[m][r] = fmaf(static_cast<float>(run_dot<BITS>(w[d][r], xw[m], off[m])), xs[m] * s, acc[m][r]);
      }
    }
  }
  const T* bias = static_cast<const T*>(a.bias);
  T* y = static_cast<T*>(a.y);
#pragma unroll
  for (int m = 0; m < MX; ++m)
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float v = cuda::warp_sum(acc[m][r]);
      const int n = n0 + r;
      if (lane == r + m * R && n < a.N) {
        if (bias != nullptr) v += static_cast<float>(bias[n]);
        y[int64_t(m) * a.N + n] = static_cast<T>(v);
      }
    }
}

}  // namespace gemma4::quant_cuda
