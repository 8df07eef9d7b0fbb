// Tensor-core forward of gemma4::attention (flash-attention 2 schedule) for bf16/fp16.
// Reference: python/gemma4/ops/reference.py::attention; CPU twin: attention_kernels.h::forward.
//
// One thread block = (tile of BM query positions, query head h, batch b); it reads KV head h/(nH/nKV)
// through its strides (GQA without a copy; the heads of a group share K/V tiles through L2).
// * The Q tile stays in shared memory; K/V tiles of BN keys stream through two cp.async stages
//   (the next tile's copy overlaps this tile's products).
// * Warp w owns 16 query rows (w % WM) and the head-dim slice (w / WM) of the output. At HD = 512 a
//   warp cannot hold 16 x 512 fp32 accumulators, so DSPLIT = 2 warps share each row block: each computes
//   S over its half of the head dimension, the halves are summed through shared memory (both warps get
//   the same S bit for bit), and each accumulates its half of O = P V.
// * Online softmax in base 2 (scores pre-multiplied by scale*log2 e); P is rounded to the input dtype
//   for the P V product (as flash-attention and SDPA do); row sums stay fp32.
// * Key tiles wholly hidden by causality or the sliding window are never visited; tiles wholly visible
//   skip the per-element causal test. Masked keys (key_mask false) are zero rows in the K/V tiles
//   and get score -inf by a select (mma.cuh, "Masked keys"): non-finite values there change nothing.
// * Rows with no visible key: m stays -inf, l = 0 -> output 0 and lse -inf (the CPU convention).
#pragma once
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <cmath>

#include "attention/cuda/args.h"
#include "attention/cuda/mma.cuh"

namespace gemma4::attn::cuda {

template <int HD>
struct FwdCfg {
  static constexpr int DSPLIT = HD == 512 ? 2 : 1;  // warps sharing a row block (head-dim split)
  static constexpr int WM = HD == 256 ? 8 : 4;       // warps along the query rows
  static constexpr int BM = 16 * WM;                 // query rows per block
  static constexpr int BN = HD == 512 ? 32 : 64;     // keys per tile
  static constexpr int NWARPS = WM * DSPLIT;
  static constexpr int NTHREADS = NWARPS * 32;
  static constexpr int HDW = HD / DSPLIT;  // output columns per warp
  static constexpr int XCH = DSPLIT > 1 ? NWARPS * 32 * (BN / 2) : 0;  // exchange floats
  static constexpr size_t SMEM =
      sizeof(uint16_t) * (size_t(BM) * HD + 4 * size_t(BN) * HD) + sizeof(float) * (XCH + 3 * BN);
};

template <typename T, int HD>
__global__ void __launch_bounds__(FwdCfg<HD>::NTHREADS, 1) flash_fwd_kernel(const Args a) {
  using C = FwdCfg<HD>;
  constexpr int BM = C::BM, BN = C::BN, HDW = C::HDW, NS = BN / 8, NO = HDW / 8;
  extern __shared__ __align__(128) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);
  T* sK = sQ + BM * HD;      // [2][BN][HD]
  T* sV = sK + 2 * BN * HD;  // [2][BN][HD]
  float* sX = reinterpret_cast<float*>(sV + 2 * BN * HD);  // [NWARPS][32][BN/2] partial scores
  float* sBias = sX + C::XCH;                               // [3][BN] key-mask bias, tile i in slot i % 3

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp % C::WM, wd = warp / C::WM;
  const int qt = gridDim.x - 1 - blockIdx.x;  // longest causal tiles first
  const int h = blockIdx.y, b = blockIdx.z;
  const int g = h / (a.nH / a.nKV);
  const int q0 = qt * BM, nq = min(BM, a.T - q0);
  const int off = a.S - a.T;
  const int p_lo = off + q0, p_hi = off + q0 + nq - 1;
  const int kt_lo = a.window > 0 ? max(0, p_lo - a.window + 1) / BN : 0;
  const int kt_hi = p_hi / BN;

  const T* qb = static_cast<const T*>(a.q) + b * a.qsB + h * a.qsH + q0 * a.qsT;
  const T* kb = static_cast<const T*>(a.k) + b * a.ksB + g * a.ksH;
  const T* vb = static_cast<const T*>(a.v) + b * a.vsB + g * a.vsH;
  const bool* mb = a.mask ? a.mask + b * a.msB : nullptr;

  // K/V tile kt into a stage; bias: the tile's key-mask bias in shared memory. Keys past S and masked
  // keys are zero rows, never read (mma.cuh, "Masked keys").
  auto load_kv = [&](int kt, int stage, const float* bias) {
    const int k0 = kt * BN;
    const auto key_ok = [bias](int r) { return bias[r] == 0.f; };
    load_tile_if<T, HD, BN, C::NTHREADS>(sK + stage * BN * HD, kb + k0 * a.ksS, a.ksS, key_ok, tid);
    load_tile_if<T, HD, BN, C::NTHREADS>(sV + stage * BN * HD, vb + k0 * a.vsS, a.vsS, key_ok, tid);
  };
  // Key-mask bias of key j (0 or -inf): read from global memory two tiles ahead into a register and
  // stored after this tile's products, so the (synchronous) global load never stalls the loop.
  auto key_bias = [&](int j) { return j < a.S && (mb == nullptr || mb[j * a.msS]) ? 0.f : -INFINITY; };

  load_tile<T, HD, BM, C::NTHREADS>(sQ, qb, a.qsT, nq, tid);  // in flight while the masks are read
  if (tid < BN) {
    sBias[tid] = key_bias(kt_lo * BN + tid);
    if (kt_lo < kt_hi) sBias[BN + tid] = key_bias((kt_lo + 1) * BN + tid);
  }
  __syncthreads();  // the first tile's mask, read by its copy
  load_kv(kt_lo, 0, sBias);
  cp_async_commit();

  const float sl2 = static_cast<float>(a.scale * 1.4426950408889634);
  float o[NO][4];
  zero(o);
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const int r_a = 16 * wm + (lane >> 2);  // this lane's rows r_a and r_a + 8 of the tile
  const int pa = off + q0 + r_a, pb = pa + 8;

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
    float s[NS][4];
    zero(s);
    gemm_abt<T, HD, NS>(s, sQ, 16 * wm, sKs, 0, wd * HDW, wd * HDW + HDW, lane);
    if constexpr (C::DSPLIT > 1) {  // sum the head-dim parts of S
      xch_write(s, sX, warp, lane);
      __syncthreads();
      xch_sum<NS, C::DSPLIT, C::WM>(s, sX, warp, lane);
    }

    // Scale, mask, and the running row maxima.
    const int k0 = kt * BN;
    const bool full = k0 + BN - 1 <= p_lo && (a.window <= 0 || k0 > p_hi - a.window);
    const float* bias = sBias + (it % 3) * BN;
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int j = 0; j < NS; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = 8 * j + 2 * (lane & 3) + (e & 1);
        float x = masked_score(s[j][e] * sl2, bias[col]);
        if (!full && !visible(k0 + col, e < 2 ? pa : pb, a.window)) x = -INFINITY;
        s[j][e] = x;
        mx[e >> 1] = fmaxf(mx[e >> 1], x);
      }
    float alpha[2], mu[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = quad_max(mx[r]);
      mu[r] = mx[r] == -INFINITY ? 0.f : mx[r];  // a row that has seen nothing yet: exp2 gives 0, not NaN
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
    gemm_pb<T, HD, NS / 2, NO>(o, pf, sVs, 0, wd * HDW, lane);
    // Slot (it + 2) % 3 held tile kt - 1's mask, last read before the previous barrier.
    if (kt + 2 <= kt_hi && tid < BN) sBias[((it + 2) % 3) * BN + tid] = ahead_bias;
    __syncthreads();  // the next iteration's copy overwrites this stage and reads the mask just stored
  }

  // Epilogue: normalise, write out (q's dtype) and lse (fp32, natural log).
  T* ob = static_cast<T*>(a.out);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float lsum = quad_sum(l[r]);
    // l = 0: the row saw nothing (zeros, lse -inf); l = NaN (a NaN score among the visible keys): NaN
    // for both, as in the reference.
    const float inv = lsum == 0.f ? 0.f : 1.f / lsum;
    const int row = r_a + 8 * r;
    if (row < nq) {
      const int t = q0 + row;
      T* orow = ob + ((static_cast<int64_t>(b) * a.T + t) * a.nH + h) * HD + wd * HDW;
#pragma unroll
      for (int j = 0; j < NO; ++j) {
        const uint32_t v = pack2<T>(o[j][2 * r] * inv, o[j][2 * r + 1] * inv);
        *reinterpret_cast<uint32_t*>(orow + 8 * j + 2 * (lane & 3)) = v;
      }
      if (wd == 0 && (lane & 3) == 0)
        static_cast<float*>(a.lse)[(static_cast<int64_t>(b) * a.nH + h) * a.T + t] =
            lsum == 0.f ? -INFINITY : (m[r] + log2f(lsum)) * 0.6931471805599453f;
    }
  }
}

template <typename T, int HD>
void flash_fwd(const Args& a, cudaStream_t stream) {
  using C = FwdCfg<HD>;
  auto kernel = flash_fwd_kernel<T, HD>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(C::SMEM)));
  const dim3 grid((a.T + C::BM - 1) / C::BM, a.nH, a.B);
  kernel<<<grid, C::NTHREADS, C::SMEM, stream>>>(a);
}

}  // namespace gemma4::attn::cuda
