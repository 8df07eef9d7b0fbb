// Tensor-core split-KV decode of gemma4::attention (flash-decoding) for bf16/fp16: few query rows per KV
// head (T * nH/nKV <= 16), long caches. Reference: python/gemma4/ops/reference.py::attention.
//
// Decode is a stream over the cache: the kernel must keep enough bytes in flight to read K/V at HBM
// bandwidth, and read each K/V row once for all the query heads of its group.
// * One block = (key split, KV head g, batch b); its 16 query rows are every (position, head-in-group)
//   pair of the group (row r -> t = r / G, head g*G + r % G), so each K/V tile serves all G heads.
// * K/V tiles of BN keys stream through STAGES cp.async stages (two tiles in flight while one is used).
// * The warps (8; 4 at head_dim 64) split the head dimension: each computes S = Q K^T over its slice, the
//   slices are summed through shared memory (xch_write / xch_sum, same bits in every warp), every warp runs the
//   (identical) online softmax, and accumulates its slice of O = P V. Short per-warp chains matter more than
//   anything here: the loop is latency-bound per tile unless many warps share the work.
// * Each split writes its normalised partial output and lse to a workspace; combine_kernel (simple.cuh)
//   merges the splits. With one split the block writes out and lse directly.
// * Masked keys (key_mask false) are zero rows in the K/V tiles and get score -inf by a select
//   (mma.cuh, "Masked keys"): non-finite values there change nothing.
#pragma once
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <cmath>

#include "attention/cuda/args.h"
#include "attention/cuda/mma.cuh"
#include "attention/cuda/simple.cuh"  // combine

namespace gemma4::attn::cuda {


template <int HD>
struct DecCfg {
  static constexpr int NWARPS = HD >= 128 ? 8 : 4, NTHREADS = 32 * NWARPS;  // each warp >= 16 columns
  static constexpr int BN = HD >= 256 ? 32 : 64;
  static constexpr int STAGES = 3;
  static constexpr int KW = HD / NWARPS;  // head-dim slice per warp
  static constexpr int XCH = NWARPS * 32 * (BN / 2);
  static constexpr size_t SMEM =
      2 * (size_t(kDecodeRows) * HD + STAGES * 2 * size_t(BN) * HD) + 4 * (XCH + (STAGES + 1) * BN);
};

template <typename T, int HD>
__global__ void __launch_bounds__(DecCfg<HD>::NTHREADS, 1) flash_decode_kernel(const Args a, int splits, float* ws) {
  using C = DecCfg<HD>;
  constexpr int BN = C::BN, KW = C::KW, NS = BN / 8, NO = KW / 8, ST = C::STAGES;
  extern __shared__ __align__(128) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);
  T* sK = sQ + kDecodeRows * HD;  // [ST][BN][HD]
  T* sV = sK + ST * BN * HD;         // [ST][BN][HD]
  float* sX = reinterpret_cast<float*>(sV + ST * BN * HD);
  float* sBias = sX + C::XCH;  // [ST + 1][BN] key-mask bias, tile i in slot i % (ST + 1)

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int split = blockIdx.x, g = blockIdx.y, b = blockIdx.z;
  const int G = a.nH / a.nKV, rows = a.T * G;
  const int off = a.S - a.T;
  const int klo = a.window > 0 ? max(0, off - a.window + 1) : 0, khi = off + a.T - 1;
  const int per = ((khi - klo + 1 + splits - 1) / splits + BN - 1) / BN * BN;
  const int ks = klo + split * per, ke = min(khi + 1, ks + per);
  const int ntiles = ke > ks ? (ke - ks + BN - 1) / BN : 0;

  // Q rows: (t, head-in-group) pairs; rows past T*G are zero.
  {
    constexpr int CH = HD / 8;
    for (int i = tid; i < kDecodeRows * CH; i += C::NTHREADS) {
      const int r = i / CH, c = i % CH;
      const bool ok = r < rows;
      const T* src = static_cast<const T*>(a.q) + b * a.qsB +
                     (ok ? (r / G) * a.qsT + (g * G + r % G) * a.qsH + c * 8 : 0);
      cp_async16(sQ + r * HD + ((c ^ (r & 7)) << 3), src, ok);
    }
  }
  const T* kb = static_cast<const T*>(a.k) + b * a.ksB + g * a.ksH;
  const T* vb = static_cast<const T*>(a.v) + b * a.vsB + g * a.vsH;
  const bool* mb = a.mask ? a.mask + b * a.msB : nullptr;
  constexpr int NB = ST + 1;  // mask slots: tile i's is read by its copy (issued ST - 1 tiles ahead) and its softmax
  // Tile i into its stage; keys past the split and masked keys are zero rows, never read (mma.cuh,
  // "Masked keys"), from the tile's mask in shared memory.
  auto load_kv = [&](int i) {
    const int k0 = ks + i * BN, slot = i % ST;
    const float* bias = sBias + (i % NB) * BN;
    const auto key_ok = [bias](int r) { return bias[r] == 0.f; };
    load_tile_if<T, HD, BN, C::NTHREADS>(sK + slot * BN * HD, kb + k0 * a.ksS, a.ksS, key_ok, tid);
    load_tile_if<T, HD, BN, C::NTHREADS>(sV + slot * BN * HD, vb + k0 * a.vsS, a.vsS, key_ok, tid);
  };
  // Key-mask bias (0 or -inf) of tile i: the global load is issued a tile before the tile's copy and
  // its value stored after the current tile's products, so it never stalls the loop (a synchronous
  // load per tile did).
  auto key_bias = [&](int i) {
    const int j = ks + i * BN + tid;
    return j < ke && (mb == nullptr || mb[j * a.msS]) ? 0.f : -INFINITY;
  };
  if (tid < BN) {
#pragma unroll
    for (int i = 0; i < ST; ++i)
      if (i < ntiles) sBias[i * BN + tid] = key_bias(i);
  }
  __syncthreads();  // the first tiles' masks, read by their copies
#pragma unroll
  for (int i = 0; i < ST - 1; ++i) {
    if (i < ntiles) load_kv(i);
    cp_async_commit();
  }

  const float sl2 = static_cast<float>(a.scale * 1.4426950408889634);
  const int r_a = lane >> 2;  // rows r_a and r_a + 8
  const int pr[2] = {r_a < rows ? off + r_a / G : -1, r_a + 8 < rows ? off + (r_a + 8) / G : -1};
  float o[NO][4];
  zero(o);
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

  for (int i = 0; i < ntiles; ++i) {
    cp_async_wait<ST - 2>();
    __syncthreads();
    const bool ahead = i + ST - 1 < ntiles;
    if (ahead) load_kv(i + ST - 1);  // into the stage tile i-1 used
    float next_bias = 0.f;           // tile i + ST's
    if (i + ST < ntiles && tid < BN) next_bias = key_bias(i + ST);
    cp_async_commit();
    const int slot = i % ST, k0 = ks + i * BN;
    float s[NS][4];
    zero(s);
    gemm_abt<T, HD, NS>(s, sQ, 0, sK + slot * BN * HD, 0, warp * KW, warp * KW + KW, lane);
    xch_write(s, sX, warp, lane);
    __syncthreads();
    xch_sum<NS, C::NWARPS, 1>(s, sX, warp, lane);
    const float* bias = sBias + (i % NB) * BN;
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int j = 0; j < NS; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = 8 * j + 2 * (lane & 3) + (e & 1);
        float x = masked_score(s[j][e] * sl2, bias[col]);
        if (!visible(k0 + col, pr[e >> 1], a.window)) x = -INFINITY;
        s[j][e] = x;
        mx[e >> 1] = fmaxf(mx[e >> 1], x);
      }
    float alpha[2], mu[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = quad_max(mx[r]);
      mu[r] = mx[r] == -INFINITY ? 0.f : mx[r];
      alpha[r] = exp2f(m[r] - mu[r]);
      m[r] = mx[r];
      l[r] *= alpha[r];
    }
#pragma unroll
    for (int j = 0; j < NS; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float pe = exp2f(s[j][e] - mu[e >> 1]);
        s[j][e] = pe;
        l[e >> 1] += pe;
      }
#pragma unroll
    for (int j = 0; j < NO; ++j) {
      o[j][0] *= alpha[0]; o[j][1] *= alpha[0];
      o[j][2] *= alpha[1]; o[j][3] *= alpha[1];
    }
    uint32_t pf[NS / 2][4];
    to_a_frags<T, NS / 2>(pf, s);
    gemm_pb<T, HD, NS / 2, NO>(o, pf, sV + slot * BN * HD, 0, warp * KW, lane);
    // Slot (i + ST) % NB held tile i - 1's mask, last read before this iteration's first barrier; the
    // value is read (by tile i + ST's copy) after the next iteration's.
    if (i + ST < ntiles && tid < BN) sBias[((i + ST) % NB) * BN + tid] = next_bias;
  }
  cp_async_wait<0>();

  const int64_t BHT = static_cast<int64_t>(a.B) * a.nH * a.T;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = r_a + 8 * r;
    const float lsum = quad_sum(l[r]);
    if (row >= rows) continue;
    const int t = row / G, h = g * G + row % G;
    // l = 0: nothing visible (zeros, lse -inf); l = NaN (a NaN score among the visible keys): NaN for
    // both, as in the reference (combine_kernel passes a NaN split on).
    const float inv = lsum == 0.f ? 0.f : 1.f / lsum;
    const float lse = lsum == 0.f ? -INFINITY : (m[r] + log2f(lsum)) * 0.6931471805599453f;
    const int64_t grow = (static_cast<int64_t>(b) * a.nH + h) * a.T + t;
    const int d0 = warp * KW + 2 * (lane & 3);
    if (splits == 1) {
      T* orow = static_cast<T*>(a.out) + ((static_cast<int64_t>(b) * a.T + t) * a.nH + h) * HD;
#pragma unroll
      for (int j = 0; j < NO; ++j)
        *reinterpret_cast<uint32_t*>(orow + d0 + 8 * j) = pack2<T>(o[j][2 * r] * inv, o[j][2 * r + 1] * inv);
      if (warp == 0 && (lane & 3) == 0) static_cast<float*>(a.lse)[grow] = lse;
    } else {
      float* wrow = ws + (split * BHT + grow) * HD;
#pragma unroll
      for (int j = 0; j < NO; ++j)
        *reinterpret_cast<float2*>(wrow + d0 + 8 * j) = make_float2(o[j][2 * r] * inv, o[j][2 * r + 1] * inv);
      if (warp == 0 && (lane & 3) == 0) ws[splits * BHT * HD + split * BHT + grow] = lse;
    }
  }
}

template <typename T, int HD>
void flash_decode(const Args& a, int splits, float* ws, cudaStream_t stream) {
  using C = DecCfg<HD>;
  auto kernel = flash_decode_kernel<T, HD>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(C::SMEM)));
  kernel<<<dim3(splits, a.nKV, a.B), C::NTHREADS, C::SMEM, stream>>>(a, splits, ws);
  if (splits > 1) combine<T>(a, splits, ws, stream);
}

}  // namespace gemma4::attn::cuda
