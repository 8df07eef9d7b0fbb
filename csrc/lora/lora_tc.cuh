// Tensor-core forms of gemma4::lora_down, lora_up and lora_weight_grad for a bf16 activation (the usual LoRA over a
// bf16 model). The SIMT kernels in lora_cuda.cu do 16 float32 FMAs per activation element read (r = 16):
// at 2 bytes an element that is the H200's FMA rate and its memory bandwidth at once, and they reach
// ~1-1.5 TB/s. Here the products run on bf16 tensor cores (mma.sync m16n8k16, float32 accumulation) and
// the kernels are left with reading the activation once.
//
// Float32 exactness. The activation is bf16, so exact in a bf16 operand. The float32 operand (the factor
// w, or d) is split into three bf16 parts, v = hi + mid + lo (hi = bf16(v), mid = bf16(v - hi),
// lo = bf16(v - hi - mid): 24 significant bits, float32's), and each product is three MMAs, smallest part
// first. bf16 x bf16 products are exact in float32; only the adds round. The tensor core's own
// accumulation is not IEEE round-to-nearest, so each MMA chain is short (one k-step: 32 products of each
// part, or 16 tokens) and starts from zero; its result is added to the float32 running sum with an
// ordinary add.
//
// Reduction order. Which physical k (or token) feeds which logical k of an MMA is free, as long as both
// operands agree: lora_down's lane (g, t) loads the 8 consecutive elements x[row g][8t .. 8t+7] of a 32-k
// step with one 16-byte load, and the factor's parts are read with the same map. lora_weight_grad maps
// the n slot g of its 8 n-tiles q to the columns 8g + q, so one 16-byte load per token serves all 8.
//
// lora_up reads its float32 down as A fragments and the factor as B fragments, both split: six of the
// nine part products (those above 2^-24 of the whole), smallest first.
//
// Reference: lora_down / lora_up / lora_weight_grad in python/gemma4/ops/reference.py.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

#include "attention/cuda/mma.cuh"  // mma16816: mma.sync m16n8k16, bf16 in, float32 accumulate

namespace gemma4::lora_tc {

using attn::cuda::mma16816;

constexpr int kR = 16;  // ranks per tile: one m16 (weight_grad) or two n8 (down) tiles

// v = hi + mid + lo in bf16 parts (see above).
struct Split3 {
  __nv_bfloat16 hi, mid, lo;
};
__device__ __forceinline__ Split3 split3(float v) {
  Split3 s;
  s.hi = __float2bfloat16_rn(v);
  const float r1 = v - __bfloat162float(s.hi);  // exact
  s.mid = __float2bfloat16_rn(r1);
  s.lo = __float2bfloat16_rn(r1 - __bfloat162float(s.mid));  // exact difference, rounded once
  return s;
}

// ---------------------------------------------------------------------------------------------------
// lora_down: out[N, r] (or one split's partial) = x[N, K] @ w[r, K]^T over the block's k range.
// A block: 8 warps, 16 rows each (the MMA's m), all 16 ranks of its rank tile (two n8 tiles). The
// factor's k-chunk is staged in shared memory as its three bf16 parts; the activation goes straight from
// global memory into A fragments (4 steps' 16-byte loads issued together).

constexpr int kDownWarps = 8, kDownRows = 16 * kDownWarps;  // 128 rows per block
constexpr int kDownChunk = 128;                              // factor columns staged per pass: 4 k-steps
constexpr int kDownStride = kDownChunk + 32;                 // 320-byte rows: a quarter-warp's 8 reads of
                                                             // 2 rows x 64 bytes hit 32 distinct banks

__global__ void __launch_bounds__(kDownWarps * 32, 2)
lora_down_tc_kernel(const __nv_bfloat16* __restrict__ x, const float* __restrict__ w, int64_t w_sr, int64_t w_sk,
                    float* __restrict__ out, int64_t N, int64_t K, int64_t r, int64_t k_per_split, float scale) {
  __shared__ __align__(16) __nv_bfloat16 ws[3][kR][kDownStride];  // [part][rank][k - k0]: lo, mid, hi
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t j0 = int64_t(blockIdx.z) * kR;
  const int64_t kbeg = int64_t(blockIdx.y) * k_per_split;
  const int64_t kend = kbeg + k_per_split < K ? kbeg + k_per_split : K;
  const int64_t ra = int64_t(blockIdx.x) * kDownRows + warp * 16 + g, rb = ra + 8;  // this lane's rows
  const bool rank_minor = w_sk != 1;  // a transposed factor [K, r]: stage along its unit stride
  float acc[2][4] = {};               // [n-tile][C fragment]

  for (int64_t k0 = kbeg; k0 < kend; k0 += kDownChunk) {
    const int kn = static_cast<int>(kend - k0 < kDownChunk ? kend - k0 : kDownChunk);  // a multiple of 32
    // the chunk's activation loads first: they are in flight while the factor is staged
    uint4 xa[kDownChunk / 32], xb[kDownChunk / 32];  // rows ra, rb: 8 elements of each k-step
#pragma unroll
    for (int s = 0; s < kDownChunk / 32; ++s) {
      const int64_t k = k0 + 32 * s + 8 * t;
      const bool step = 32 * s < kn;
      xa[s] = step && ra < N ? *reinterpret_cast<const uint4*>(x + ra * K + k) : make_uint4(0, 0, 0, 0);
      xb[s] = step && rb < N ? *reinterpret_cast<const uint4*>(x + rb * K + k) : make_uint4(0, 0, 0, 0);
    }
    __syncthreads();  // the previous chunk is consumed
    for (int i = threadIdx.x; i < kR * kDownChunk; i += kDownWarps * 32) {
      const int j = rank_minor ? i % kR : i / kDownChunk, kc = rank_minor ? i / kR : i % kDownChunk;
      const float v = (j0 + j < r && kc < kn) ? w[(j0 + j) * w_sr + (k0 + kc) * w_sk] : 0.f;
      const Split3 s = split3(v);
      ws[0][j][kc] = s.lo, ws[1][j][kc] = s.mid, ws[2][j][kc] = s.hi;
    }
    __syncthreads();
#pragma unroll
    for (int s = 0; s < kDownChunk / 32; ++s) {
      if (32 * s >= kn) break;
      // the two k16 halves: physical k 8t..8t+3 and 8t+4..8t+7 of the step
      const uint32_t a_lo[4] = {xa[s].x, xb[s].x, xa[s].y, xb[s].y};
      const uint32_t a_hi[4] = {xa[s].z, xb[s].z, xa[s].w, xb[s].w};
      float part[2][4] = {};
#pragma unroll
      for (int p = 0; p < 3; ++p) {
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          const uint4 b = *reinterpret_cast<const uint4*>(&ws[p][8 * q + g][32 * s + 8 * t]);
          mma16816<__nv_bfloat16>(part[q], a_lo, b.x, b.y);
          mma16816<__nv_bfloat16>(part[q], a_hi, b.z, b.w);
        }
      }
#pragma unroll
      for (int q = 0; q < 2; ++q)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[q][e] += part[q][e];
    }
  }
  // C fragment: (row g, ranks 2t, 2t+1), (row g+8, same), in each n-tile. One split: the result; several:
  // this split's unscaled partial [N, r] at out + split * N * r.
  const bool partial = gridDim.y > 1;
  float* dst = out + (partial ? int64_t(blockIdx.y) * N * r : 0);
  const float s = partial ? 1.f : scale;
#pragma unroll
  for (int q = 0; q < 2; ++q) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t n = e < 2 ? ra : rb, j = j0 + 8 * q + 2 * t + (e & 1);
      if (n < N && j < r) dst[n * r + j] = s * acc[q][e];
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// lora_up: out[N, M] = bf16(base + scale * down[N, r] @ w[M, r]^T), r <= 64.
// The MMA's m is 16 rows, its k the ranks (16 a step) and its n the columns: a block takes 64 columns as 8
// n-tiles, slot g of tile q being column 8g + q, so that lane (g, t)'s accumulators are the 16 consecutive
// columns 16t .. 16t+15 of its rows g and g+8: the base is read and out written with 16-byte accesses.
// The block's columns of the factor are staged once as bf16 parts, laid out [tile q][slot g][rank] so a
// warp's B reads are conflict-free; each warp then takes `tiles` row tiles of 16. Ranks: logical k 2t, 2t+1,
// 2t+8, 2t+9 of a step are the physical ranks 4t .. 4t+3 in both operands.

constexpr int kUpWarps = 8, kUpCols = 64;
constexpr int kUpMaxRankSteps = 4;  // r <= 64
constexpr int kUpMaxTiles = 4;      // row tiles per warp

__device__ __forceinline__ uint32_t pack_bf16(__nv_bfloat16 lo, __nv_bfloat16 hi) {
  return static_cast<uint32_t>(__bfloat16_as_ushort(lo)) | (static_cast<uint32_t>(__bfloat16_as_ushort(hi)) << 16);
}

// 8 bf16 of base (or zeros) widened, scale * acc added, rounded once, and stored.
__device__ __forceinline__ uint4 add_update(uint4 b, const float (&u)[8], float scale) {
  const __nv_bfloat16* e = reinterpret_cast<const __nv_bfloat16*>(&b);
  uint4 o;
  __nv_bfloat16* oe = reinterpret_cast<__nv_bfloat16*>(&o);
#pragma unroll
  for (int i = 0; i < 8; ++i) oe[i] = __float2bfloat16_rn(fmaf(scale, u[i], __bfloat162float(e[i])));
  return o;
}

__global__ void __launch_bounds__(kUpWarps * 32, 2)
lora_up_tc_kernel(const float* __restrict__ down, const float* __restrict__ w, int64_t w_sm, int64_t w_sj,
                  const __nv_bfloat16* __restrict__ base, __nv_bfloat16* __restrict__ out, int64_t N, int64_t M,
                  int64_t r, float scale, int tiles) {
  __shared__ __align__(16) __nv_bfloat16 ws[kUpMaxRankSteps][3][kUpCols][16];  // [step][part][8q + g][rank]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t mb = int64_t(blockIdx.y) * kUpCols;
  const int steps = static_cast<int>((r + 15) / 16);
  const bool rank_minor = w_sj == 1;  // B [M, r]; A.t() is column-minor: stage along the unit stride
  for (int i = threadIdx.x; i < steps * kUpCols * 16; i += kUpWarps * 32) {
    const int kt = i / (kUpCols * 16), rem = i % (kUpCols * 16);
    const int col = rank_minor ? rem / 16 : rem % kUpCols, j = rank_minor ? rem % 16 : rem / kUpCols;
    const int64_t jj = 16 * kt + j;
    const float v = (mb + col < M && jj < r) ? w[(mb + col) * w_sm + jj * w_sj] : 0.f;
    const Split3 s = split3(v);
    const int pos = (col % 8) * 8 + col / 8;  // column 8g + q at [q][g]
    ws[kt][0][pos][j] = s.lo, ws[kt][1][pos][j] = s.mid, ws[kt][2][pos][j] = s.hi;
  }
  __syncthreads();
  const int64_t c = mb + 16 * t;  // this lane's 16 columns (M % 16 == 0: all or none)
  const bool cols_ok = c < M;     // (a lane past M still takes part in every MMA: they are warp-wide)
  for (int tile = 0; tile < tiles; ++tile) {
    const int64_t row0 = ((int64_t(blockIdx.x) * tiles + tile) * kUpWarps + warp) * 16;
    if (row0 >= N) break;
    const int64_t ra = row0 + g, rb = ra + 8;
    uint4 base_a[2] = {}, base_b[2] = {};  // rows ra, rb: columns c .. c+7, c+8 .. c+15
    if (base != nullptr && cols_ok) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        if (ra < N) base_a[h] = *reinterpret_cast<const uint4*>(base + ra * M + c + 8 * h);
        if (rb < N) base_b[h] = *reinterpret_cast<const uint4*>(base + rb * M + c + 8 * h);
      }
    }
    float acc[8][4] = {};  // [tile q][C fragment]
    for (int kt = 0; kt < steps; ++kt) {
      float da[4], db[4];  // down[ra / rb][16 kt + 4t + i]
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t j = 16 * kt + 4 * t + i;
        da[i] = ra < N && j < r ? down[ra * r + j] : 0.f;
        db[i] = rb < N && j < r ? down[rb * r + j] : 0.f;
      }
      uint32_t a[3][4];  // [part]: (row g, ranks 4t, 4t+1), (row g+8, same), (row g, 4t+2, 4t+3), (row g+8, same)
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const Split3 a0 = split3(da[2 * i]), a1 = split3(da[2 * i + 1]);
        const Split3 b0 = split3(db[2 * i]), b1 = split3(db[2 * i + 1]);
        a[0][2 * i] = pack_bf16(a0.lo, a1.lo), a[0][2 * i + 1] = pack_bf16(b0.lo, b1.lo);
        a[1][2 * i] = pack_bf16(a0.mid, a1.mid), a[1][2 * i + 1] = pack_bf16(b0.mid, b1.mid);
        a[2][2 * i] = pack_bf16(a0.hi, a1.hi), a[2][2 * i + 1] = pack_bf16(b0.hi, b1.hi);
      }
#pragma unroll
      for (int q = 0; q < 8; ++q) {
        uint2 b[3];  // [part]: ranks 4t, 4t+1 | 4t+2, 4t+3 of column 8g + q
#pragma unroll
        for (int p = 0; p < 3; ++p) b[p] = *reinterpret_cast<const uint2*>(&ws[kt][p][8 * q + g][4 * t]);
        // lo.hi, hi.lo, mid.mid, mid.hi, hi.mid, hi.hi (parts: 0 lo, 1 mid, 2 hi)
        mma16816<__nv_bfloat16>(acc[q], a[0], b[2].x, b[2].y);
        mma16816<__nv_bfloat16>(acc[q], a[2], b[0].x, b[0].y);
        mma16816<__nv_bfloat16>(acc[q], a[1], b[1].x, b[1].y);
        mma16816<__nv_bfloat16>(acc[q], a[1], b[2].x, b[2].y);
        mma16816<__nv_bfloat16>(acc[q], a[2], b[1].x, b[1].y);
        mma16816<__nv_bfloat16>(acc[q], a[2], b[2].x, b[2].y);
      }
    }
    // acc[q][0], [1]: row ra, columns c + q, c + 8 + q; acc[q][2], [3]: row rb
    if (!cols_ok) continue;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float ua[8], ub[8];
#pragma unroll
      for (int q = 0; q < 8; ++q) ua[q] = acc[q][h], ub[q] = acc[q][2 + h];
      if (ra < N) *reinterpret_cast<uint4*>(out + ra * M + c + 8 * h) = add_update(base_a[h], ua, scale);
      if (rb < N) *reinterpret_cast<uint4*>(out + rb * M + c + 8 * h) = add_update(base_b[h], ub, scale);
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// lora_weight_grad: out[r, K] (or one split's partial) = d[N, r]^T @ x[N, K] over the block's rows.
// The MMA's m is the 16 ranks (d's parts as A fragments, shared by all n-tiles), its n the columns and its
// k the tokens. A warp takes 64 columns: lane (g, t) loads the 16 bytes x[token][8g .. 8g+7] of its four
// tokens 2t, 2t+1, 2t+8, 2t+9 of a 16-token step and pairs them by byte permutes into the B fragments of
// n-tiles q = 0..7 (slot g of tile q is column 8g + q). d's token chunk is staged as bf16 parts.

constexpr int kWgWarps = 4, kWgCols = 64 * kWgWarps;  // 256 columns per block
constexpr int kWgChunk = 64;                          // tokens of d staged per pass: 4 steps
constexpr int kWgStride = kWgChunk + 8;               // 144-byte rows: the 8 ranks g of a read hit 8 bank groups

// {lo half of a, lo half of b} or {hi half of a, hi half of b}: one bf16 of each of two tokens.
__device__ __forceinline__ uint32_t pair_lo(uint32_t a, uint32_t b) { return __byte_perm(a, b, 0x5410); }
__device__ __forceinline__ uint32_t pair_hi(uint32_t a, uint32_t b) { return __byte_perm(a, b, 0x7632); }

__global__ void __launch_bounds__(kWgWarps * 32, 3)
lora_weight_grad_tc_kernel(const __nv_bfloat16* __restrict__ x, const float* __restrict__ d, float* __restrict__ out,
                           int64_t N, int64_t K, int64_t r, int64_t rows_per_split, float scale) {
  __shared__ __align__(16) __nv_bfloat16 dsm[3][kR][kWgStride];  // [part][rank][token - n0]: lo, mid, hi
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t c0 = int64_t(blockIdx.x) * kWgCols + warp * 64 + 8 * g;  // this lane's 8 columns
  const bool cols_ok = c0 < K;  // (K % 8 == 0: all 8 or none)
  const int64_t j0 = int64_t(blockIdx.z) * kR;
  const int64_t nbeg = int64_t(blockIdx.y) * rows_per_split;
  const int64_t nend = nbeg + rows_per_split < N ? nbeg + rows_per_split : N;
  float acc[8][4] = {};  // [n-tile q][C fragment]

  for (int64_t n0 = nbeg; n0 < nend; n0 += kWgChunk) {
    const int rows = static_cast<int>(nend - n0 < kWgChunk ? nend - n0 : kWgChunk);
    __syncthreads();
    for (int i = threadIdx.x; i < kWgChunk * kR; i += kWgWarps * 32) {
      const int row = i / kR, j = i % kR;
      const float v = (row < rows && j0 + j < r) ? d[(n0 + row) * r + j0 + j] : 0.f;
      const Split3 s = split3(v);
      dsm[0][j][row] = s.lo, dsm[1][j][row] = s.mid, dsm[2][j][row] = s.hi;
    }
    __syncthreads();
#pragma unroll 2
    for (int s = 0; s < kWgChunk / 16; ++s) {
      if (16 * s >= rows) break;
      const int tok[4] = {16 * s + 2 * t, 16 * s + 2 * t + 1, 16 * s + 2 * t + 8, 16 * s + 2 * t + 9};
      uint4 xv[4];
#pragma unroll
      for (int u = 0; u < 4; ++u)
        xv[u] = cols_ok && tok[u] < rows ? *reinterpret_cast<const uint4*>(x + (n0 + tok[u]) * K + c0)
                                         : make_uint4(0, 0, 0, 0);  // (dsm's token is zero too)
      // B fragments of n-tile q: b0 = {tok 2t, 2t+1} at column 8g + q, b1 = {tok 2t+8, 2t+9}
      uint32_t b[8][2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const uint4 &lo = xv[2 * h], &hi = xv[2 * h + 1];
        b[0][h] = pair_lo(lo.x, hi.x), b[1][h] = pair_hi(lo.x, hi.x);
        b[2][h] = pair_lo(lo.y, hi.y), b[3][h] = pair_hi(lo.y, hi.y);
        b[4][h] = pair_lo(lo.z, hi.z), b[5][h] = pair_hi(lo.z, hi.z);
        b[6][h] = pair_lo(lo.w, hi.w), b[7][h] = pair_hi(lo.w, hi.w);
      }
      float part[8][4] = {};
#pragma unroll
      for (int p = 0; p < 3; ++p) {
        // A fragment: (rank g, tokens 2t, 2t+1), (rank g+8, same), (rank g, 2t+8, 2t+9), (rank g+8, same)
        const __nv_bfloat16* dp = &dsm[p][0][16 * s + 2 * t];
        const uint32_t a[4] = {*reinterpret_cast<const uint32_t*>(dp + g * kWgStride),
                               *reinterpret_cast<const uint32_t*>(dp + (g + 8) * kWgStride),
                               *reinterpret_cast<const uint32_t*>(dp + g * kWgStride + 8),
                               *reinterpret_cast<const uint32_t*>(dp + (g + 8) * kWgStride + 8)};
#pragma unroll
        for (int q = 0; q < 8; ++q) mma16816<__nv_bfloat16>(part[q], a, b[q][0], b[q][1]);
      }
#pragma unroll
      for (int q = 0; q < 8; ++q)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[q][e] += part[q][e];
    }
  }
  // C fragment of tile q: (rank g, slots 2t, 2t+1), (rank g+8, same); slot u of tile q is column
  // c0 - 8g + 8u + q, so this lane holds columns 16t .. 16t+15 of the warp's 64 for ranks g and g+8.
  const bool partial = gridDim.y > 1;
  float* dst = out + (partial ? int64_t(blockIdx.y) * r * K : 0);
  const float sc = partial ? 1.f : scale;
  const int64_t cw = c0 - 8 * g + 16 * t;  // the warp's first column + 16t
#pragma unroll
  for (int h = 0; h < 2; ++h) {  // rank g, then g + 8
    const int64_t j = j0 + g + 8 * h;
    if (j >= r) continue;
#pragma unroll
    for (int u = 0; u < 2; ++u) {  // slot 2t + u: columns cw + 8u + q
      if (cw + 8 * u >= K) continue;
      float4* o = reinterpret_cast<float4*>(dst + j * K + cw + 8 * u);
      o[0] = make_float4(sc * acc[0][2 * h + u], sc * acc[1][2 * h + u], sc * acc[2][2 * h + u], sc * acc[3][2 * h + u]);
      o[1] = make_float4(sc * acc[4][2 * h + u], sc * acc[5][2 * h + u], sc * acc[6][2 * h + u], sc * acc[7][2 * h + u]);
    }
  }
}

}  // namespace gemma4::lora_tc
