// Tensor-core backward of gemma4::attention for bf16/fp16 (flash-attention 2 maths, two kernels).
// Reference: autograd through python/gemma4/ops/reference.py::attention; CPU twin:
// attention_kernels.h::backward. With P = exp(scale*S - lse), D = rowsum(dO * O) (bwd_delta):
//   dV = P^T dO,  dP = dO V^T,  dS = P * (dP - D),  dK = scale * dS^T Q,  dQ = scale * dS K.
// * dq kernel, one block per (query tile, head, batch), like the forward: Q and dO stay in shared
//   memory, K/V tiles stream through two cp.async stages; per tile S = Q K^T, dP = dO V^T, dQ += dS K.
// * dkdv kernel, one block per (key tile, KV head, batch): K and V stay in shared memory; the query
//   tiles of every head of the group that see the key tile stream past (two stages): S^T = K Q^T,
//   dP^T = V dO^T, dV += P^T dO, dK += dS^T Q. Summing the G heads of a group inside the block gives
//   grad_k/grad_v of the KV head directly (no atomics, no [B,S,nH,hd] temporary).
// Each output has one writer: no atomics, deterministic. This recomputes S and dP in both kernels
// (7 matrix products instead of flash-attention 2's 5) in exchange for no fp32 dQ accumulator traffic.
// Register budget: each warp owns 16 rows x HD/DSPLIT columns of one (dQ) or two (dK, dV)
// fp32 accumulators; DSPLIT warps share a row block and sum their partial S / dP through shared memory
// (xch_write / xch_sum), as the forward does at HD = 512.
// Masked keys (key_mask false) are zero rows in the K/V tiles of both kernels and get score -inf by a
// select (mma.cuh, "Masked keys"): non-finite values there change nothing, and their grad_k/grad_v
// rows are zero.
#pragma once
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <cmath>

#include "attention/cuda/args.h"
#include "attention/cuda/mma.cuh"

namespace gemma4::attn::cuda {

constexpr float kLog2e = 1.4426950408889634f;

// log2-domain lse of a row, +inf for a row that sees nothing (exp2(x - inf) = 0: no gradient).
__device__ __forceinline__ float lse2_of(float lse) { return lse == -INFINITY ? INFINITY : lse * kLog2e; }

template <int HD>
struct DqCfg {
  static constexpr int DSPLIT = HD == 512 ? 2 : 1;
  static constexpr int WM = HD == 512 ? 2 : 4;
  static constexpr int BM = 16 * WM;
  static constexpr int BN = HD >= 256 ? 32 : 64;
  static constexpr int NWARPS = WM * DSPLIT, NTHREADS = 32 * NWARPS;
  static constexpr int HDW = HD / DSPLIT;
  static constexpr int XCH = DSPLIT > 1 ? NWARPS * 32 * (BN / 2) : 0;  // floats per exchanged tile
  static constexpr size_t SMEM =
      2 * (2 * size_t(BM) * HD + 4 * size_t(BN) * HD) + 4 * (2 * XCH + 3 * BN + 2 * BM);
};

template <typename T, int HD>
__global__ void __launch_bounds__(DqCfg<HD>::NTHREADS, 1) flash_bwd_dq_kernel(const BwdArgs x) {
  using C = DqCfg<HD>;
  constexpr int BM = C::BM, BN = C::BN, HDW = C::HDW, NS = BN / 8, NO = HDW / 8;
  const Args& a = x.f;
  extern __shared__ __align__(128) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);
  T* sdO = sQ + BM * HD;
  T* sK = sdO + BM * HD;     // [2][BN][HD]
  T* sV = sK + 2 * BN * HD;  // [2][BN][HD]
  float* sX = reinterpret_cast<float*>(sV + 2 * BN * HD);  // [2][XCH]: partial S, partial dP
  float* sBias = sX + 2 * C::XCH;                           // [3][BN] key-mask bias, tile i in slot i % 3
  float* sL = sBias + 3 * BN;                               // [BM] lse2, [BM] delta

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp % C::WM, wd = warp / C::WM;
  const int qt = gridDim.x - 1 - blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z, g = h / (a.nH / a.nKV);
  const int q0 = qt * BM, nq = min(BM, a.T - q0);
  const int off = a.S - a.T;
  const int p_lo = off + q0, p_hi = off + q0 + nq - 1;
  const int kt_lo = a.window > 0 ? max(0, p_lo - a.window + 1) / BN : 0;
  const int kt_hi = p_hi / BN;

  const T* kb = static_cast<const T*>(a.k) + b * a.ksB + g * a.ksH;
  const T* vb = static_cast<const T*>(a.v) + b * a.vsB + g * a.vsH;
  const bool* mb = a.mask ? a.mask + b * a.msB : nullptr;
  // As in the forward: masked keys and keys past S are zero rows, from the tile's mask in shared memory,
  // which is read from global memory two tiles ahead.
  auto load_kv = [&](int kt, int stage, const float* bias) {
    const int k0 = kt * BN;
    const auto key_ok = [bias](int r) { return bias[r] == 0.f; };
    load_tile_if<T, HD, BN, C::NTHREADS>(sK + stage * BN * HD, kb + k0 * a.ksS, a.ksS, key_ok, tid);
    load_tile_if<T, HD, BN, C::NTHREADS>(sV + stage * BN * HD, vb + k0 * a.vsS, a.vsS, key_ok, tid);
  };
  auto key_bias = [&](int j) { return j < a.S && (mb == nullptr || mb[j * a.msS]) ? 0.f : -INFINITY; };
  load_tile<T, HD, BM, C::NTHREADS>(sQ, static_cast<const T*>(a.q) + b * a.qsB + h * a.qsH + q0 * a.qsT, a.qsT, nq,
                                    tid);
  load_tile<T, HD, BM, C::NTHREADS>(sdO, static_cast<const T*>(x.dout) + b * x.dsB + h * x.dsH + q0 * x.dsT, x.dsT,
                                    nq, tid);
  if (tid < BN) {
    sBias[tid] = key_bias(kt_lo * BN + tid);
    if (kt_lo < kt_hi) sBias[BN + tid] = key_bias((kt_lo + 1) * BN + tid);
  }
  if (tid < BM) {
    const int64_t row = (static_cast<int64_t>(b) * a.nH + h) * a.T + q0 + tid;
    sL[tid] = tid < nq ? lse2_of(static_cast<const float*>(a.lse)[row]) : INFINITY;
    sL[BM + tid] = tid < nq ? static_cast<const float*>(x.delta)[row] : 0.f;
  }
  __syncthreads();  // also publishes the first tile's mask to its copy
  load_kv(kt_lo, 0, sBias);
  cp_async_commit();

  const float sl2 = static_cast<float>(a.scale) * kLog2e;
  const int r_a = 16 * wm + (lane >> 2);
  const int pa = off + q0 + r_a, pb = pa + 8;
  const float lse2[2] = {sL[r_a], sL[r_a + 8]}, del[2] = {sL[BM + r_a], sL[BM + r_a + 8]};
  float dq[NO][4];
  zero(dq);

  for (int kt = kt_lo; kt <= kt_hi; ++kt) {
    const int it = kt - kt_lo, stage = it & 1;
    if (kt < kt_hi) load_kv(kt + 1, stage ^ 1, sBias + ((it + 1) % 3) * BN);
    float ahead_bias = 0.f;  // tile kt + 2's
    if (kt + 2 <= kt_hi && tid < BN) ahead_bias = key_bias((kt + 2) * BN + tid);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const T* sKs = sK + stage * BN * HD;
    const T* sVs = sV + stage * BN * HD;
    float s[NS][4], dp[NS][4];
    zero(s);
    zero(dp);
    gemm_abt<T, HD, NS>(s, sQ, 16 * wm, sKs, 0, wd * HDW, wd * HDW + HDW, lane);
    gemm_abt<T, HD, NS>(dp, sdO, 16 * wm, sVs, 0, wd * HDW, wd * HDW + HDW, lane);
    if constexpr (C::DSPLIT > 1) {
      xch_write(s, sX, warp, lane);
      xch_write(dp, sX + C::XCH, warp, lane);
      __syncthreads();
      xch_sum<NS, C::DSPLIT, C::WM>(s, sX, warp, lane);
      xch_sum<NS, C::DSPLIT, C::WM>(dp, sX + C::XCH, warp, lane);
    }
    const int k0 = kt * BN;
    const bool full = k0 + BN - 1 <= p_lo && (a.window <= 0 || k0 > p_hi - a.window);
    const float* bias = sBias + (it % 3) * BN;
#pragma unroll
    for (int j = 0; j < NS; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = 8 * j + 2 * (lane & 3) + (e & 1), r = e >> 1;
        float xs = masked_score(s[j][e] * sl2, bias[col]);
        if (!full && !visible(k0 + col, r ? pb : pa, a.window)) xs = -INFINITY;
        const float p = exp2f(xs - lse2[r]);
        s[j][e] = p * (dp[j][e] - del[r]);  // dS
      }
    uint32_t df[NS / 2][4];
    to_a_frags<T, NS / 2>(df, s);
    gemm_pb<T, HD, NS / 2, NO>(dq, df, sKs, 0, wd * HDW, lane);
    // Slot (it + 2) % 3 held tile kt - 1's mask, last read before the previous barrier.
    if (kt + 2 <= kt_hi && tid < BN) sBias[((it + 2) % 3) * BN + tid] = ahead_bias;
    __syncthreads();
  }

  const float scale = static_cast<float>(a.scale);
  T* dqb = static_cast<T*>(x.dq);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = r_a + 8 * r;
    if (row >= nq) continue;
    T* drow = dqb + ((static_cast<int64_t>(b) * a.T + q0 + row) * a.nH + h) * HD + wd * HDW;
#pragma unroll
    for (int j = 0; j < NO; ++j)
      *reinterpret_cast<uint32_t*>(drow + 8 * j + 2 * (lane & 3)) =
          pack2<T>(dq[j][2 * r] * scale, dq[j][2 * r + 1] * scale);
  }
}

template <int HD>
struct DkvCfg {
  static constexpr int DSPLIT = HD >= 256 ? HD / 128 : 1;  // dK + dV: 16 x HD/DSPLIT fp32 each per warp
  static constexpr int WM = HD == 512 ? 2 : 4;
  static constexpr int BN = 16 * WM;               // keys per block
  static constexpr int BM = HD >= 256 ? 32 : 64;  // queries per streamed tile
  static constexpr int NWARPS = WM * DSPLIT, NTHREADS = 32 * NWARPS;
  static constexpr int HDW = HD / DSPLIT;
  static constexpr int XCH = DSPLIT > 1 ? NWARPS * 32 * (BM / 2) : 0;
  static constexpr size_t SMEM =
      2 * (2 * size_t(BN) * HD + 4 * size_t(BM) * HD) + 4 * (2 * XCH + 4 * BM);
};

template <typename T, int HD>
__global__ void __launch_bounds__(DkvCfg<HD>::NTHREADS, 1) flash_bwd_dkdv_kernel(const BwdArgs x) {
  using C = DkvCfg<HD>;
  constexpr int BM = C::BM, BN = C::BN, HDW = C::HDW, NS = BM / 8, NO = HDW / 8;
  const Args& a = x.f;
  extern __shared__ __align__(128) unsigned char smem[];
  T* sK = reinterpret_cast<T*>(smem);
  T* sV = sK + BN * HD;
  T* sQ = sV + BN * HD;       // [2][BM][HD]
  T* sdO = sQ + 2 * BM * HD;  // [2][BM][HD]
  float* sX = reinterpret_cast<float*>(sdO + 2 * BM * HD);  // [2][XCH]
  float* sL = sX + 2 * C::XCH;                               // [2][BM] lse2, [2][BM] delta

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp % C::WM, wd = warp / C::WM;
  const int b = blockIdx.z, g = blockIdx.y, G = a.nH / a.nKV;
  const int k0 = blockIdx.x * BN, nk = min(BN, a.S - k0);
  const int off = a.S - a.T;
  // Query positions that see keys k0 .. k0+nk-1: p in [k0, k0+nk-1+window-1] (all p >= k0 without window).
  const int t_lo = max(0, k0 - off);
  const int t_hi = a.window > 0 ? min(a.T - 1, k0 + nk - 1 + a.window - 1 - off) : a.T - 1;
  const int qt_lo = t_lo / BM, nqt = t_hi >= t_lo ? t_hi / BM - qt_lo + 1 : 0;
  const int iters = nqt * G;  // (head in group, query tile), head-major

  const T* qbase = static_cast<const T*>(a.q) + b * a.qsB;
  const T* dbase = static_cast<const T*>(x.dout) + b * x.dsB;
  auto load_q = [&](int it, int stage) {
    const int h = g * G + it / nqt, t0 = (qt_lo + it % nqt) * BM, nq = min(BM, a.T - t0);
    load_tile<T, HD, BM, C::NTHREADS>(sQ + stage * BM * HD, qbase + h * a.qsH + t0 * a.qsT, a.qsT, nq, tid);
    load_tile<T, HD, BM, C::NTHREADS>(sdO + stage * BM * HD, dbase + h * x.dsH + t0 * x.dsT, x.dsT, nq, tid);
    if (tid < BM) {
      const int64_t row = (static_cast<int64_t>(b) * a.nH + h) * a.T + t0 + tid;
      sL[stage * BM + tid] = tid < nq ? lse2_of(static_cast<const float*>(a.lse)[row]) : INFINITY;
      sL[2 * BM + stage * BM + tid] = tid < nq ? static_cast<const float*>(x.delta)[row] : 0.f;
    }
  };
  // The block's keys, read once: keys past S and masked keys are zero rows, never read (mma.cuh,
  // "Masked keys"); the mask bytes are read here once per block.
  const bool* mb = a.mask ? a.mask + b * a.msB : nullptr;
  const auto key_ok = [&](int r) { return r < nk && (mb == nullptr || mb[(k0 + r) * a.msS]); };
  load_tile_if<T, HD, BN, C::NTHREADS>(sK, static_cast<const T*>(a.k) + b * a.ksB + g * a.ksH + k0 * a.ksS, a.ksS,
                                       key_ok, tid);
  load_tile_if<T, HD, BN, C::NTHREADS>(sV, static_cast<const T*>(a.v) + b * a.vsB + g * a.vsH + k0 * a.vsS, a.vsS,
                                       key_ok, tid);
  if (iters > 0) load_q(0, 0);
  cp_async_commit();

  const float sl2 = static_cast<float>(a.scale) * kLog2e;
  const int r_a = 16 * wm + (lane >> 2);  // key rows r_a, r_a + 8
  const int ja = k0 + r_a, jb = ja + 8;
  const float kbias[2] = {key_ok(r_a) ? 0.f : -INFINITY, key_ok(r_a + 8) ? 0.f : -INFINITY};
  float dk[NO][4], dv[NO][4];
  zero(dk);
  zero(dv);

  for (int it = 0; it < iters; ++it) {
    const int stage = it & 1;
    if (it + 1 < iters) load_q(it + 1, stage ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const T* sQs = sQ + stage * BM * HD;
    const T* sdOs = sdO + stage * BM * HD;
    const float* lse2 = sL + stage * BM;
    const float* del = sL + 2 * BM + stage * BM;
    float s[NS][4], dp[NS][4];
    zero(s);
    zero(dp);
    gemm_abt<T, HD, NS>(s, sK, 16 * wm, sQs, 0, wd * HDW, wd * HDW + HDW, lane);    // S^T
    gemm_abt<T, HD, NS>(dp, sV, 16 * wm, sdOs, 0, wd * HDW, wd * HDW + HDW, lane);  // dP^T
    if constexpr (C::DSPLIT > 1) {
      xch_write(s, sX, warp, lane);
      xch_write(dp, sX + C::XCH, warp, lane);
      __syncthreads();
      xch_sum<NS, C::DSPLIT, C::WM>(s, sX, warp, lane);
      xch_sum<NS, C::DSPLIT, C::WM>(dp, sX + C::XCH, warp, lane);
    }
    const int t0 = (qt_lo + it % nqt) * BM, p0 = off + t0;
    const bool full = k0 + BN - 1 <= p0 && (a.window <= 0 || k0 > p0 + BM - 1 - a.window);
#pragma unroll
    for (int j = 0; j < NS; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = 8 * j + 2 * (lane & 3) + (e & 1), r = e >> 1;
        float xs = masked_score(s[j][e] * sl2, kbias[r]);
        if (!full && !visible(r ? jb : ja, p0 + col, a.window)) xs = -INFINITY;
        const float p = exp2f(xs - lse2[col]);
        s[j][e] = p;                          // P^T
        dp[j][e] = p * (dp[j][e] - del[col]);  // dS^T
      }
    uint32_t pf[NS / 2][4];
    to_a_frags<T, NS / 2>(pf, s);
    gemm_pb<T, HD, NS / 2, NO>(dv, pf, sdOs, 0, wd * HDW, lane);
    to_a_frags<T, NS / 2>(pf, dp);
    gemm_pb<T, HD, NS / 2, NO>(dk, pf, sQs, 0, wd * HDW, lane);
    __syncthreads();
  }

  const float scale = static_cast<float>(a.scale);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = r_a + 8 * r;
    if (row >= nk) continue;
    const int64_t o = ((static_cast<int64_t>(b) * a.S + k0 + row) * a.nKV + g) * HD + wd * HDW;
    T* dkr = static_cast<T*>(x.dk) + o;
    T* dvr = static_cast<T*>(x.dv) + o;
#pragma unroll
    for (int j = 0; j < NO; ++j) {
      const int d = 8 * j + 2 * (lane & 3);
      *reinterpret_cast<uint32_t*>(dkr + d) = pack2<T>(dk[j][2 * r] * scale, dk[j][2 * r + 1] * scale);
      *reinterpret_cast<uint32_t*>(dvr + d) = pack2<T>(dv[j][2 * r], dv[j][2 * r + 1]);
    }
  }
}

template <typename T, int HD>
void flash_bwd(const BwdArgs& x, cudaStream_t stream) {
  const Args& a = x.f;
  {
    using C = DqCfg<HD>;
    auto kernel = flash_bwd_dq_kernel<T, HD>;
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(C::SMEM)));
    kernel<<<dim3((a.T + C::BM - 1) / C::BM, a.nH, a.B), C::NTHREADS, C::SMEM, stream>>>(x);
  }
  {
    using C = DkvCfg<HD>;
    auto kernel = flash_bwd_dkdv_kernel<T, HD>;
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(C::SMEM)));
    kernel<<<dim3((a.S + C::BN - 1) / C::BN, a.nKV, a.B), C::NTHREADS, C::SMEM, stream>>>(x);
  }
}

}  // namespace gemma4::attn::cuda
