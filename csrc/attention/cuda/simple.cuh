// Warp-per-row-group CUDA attention (no tensor cores): the decode path of every dtype (split over the
// keys, flash-decoding) and the correct simple path for float32/float64 and for head dims without a
// tensor-core instantiation. Reference: python/gemma4/ops/reference.py::attention.
//
// * A warp owns R query rows of one (batch, KV group): row r = t * G + (h % G), so the G query heads of a
//   KV head share every K/V row the warp loads (decode: T = 1, R = G rows, one pass over the cache).
// * Lanes split the head dimension: lane holds DPL elements, in 16-byte vectors of VEC elements when
//   rows are aligned (element i at d = (i / VEC) * 32 * VEC + lane * VEC + i % VEC).
// * Keys are taken CK at a time: CK rows are loaded before any is used (more bytes in flight per warp),
//   scores reduced across the warp by butterfly shuffles, one online-softmax rescale per chunk.
// * Decode: the key range is split across warps ("splits"), each writes a normalised partial output
//   and its lse to a workspace, and combine_kernel merges them (weights exp(lse_s - max)).
// * Backward (float32/float64, odd head dims): delta = rowsum(dO * O); grad_q by warps over query row
//   groups walking their keys; grad_k/grad_v by warps over key pairs walking the queries that see them.
//   No atomics: each output element has one writer, so the result is deterministic.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <type_traits>

#include "attention/cuda/args.h"
#include "common/cuda_reduce.cuh"
#include "common/cuda_vec.cuh"

namespace gemma4::attn::cuda {

template <typename T>
using acc = gemma4::cuda::acc_t<T>;

template <typename T>
__host__ __device__ constexpr int vec_elems() { return 16 / static_cast<int>(sizeof(T)); }

// Query rows per warp: keeps q + o (R * DPL * 2 values) within ~128 registers.
template <typename T>
__host__ __device__ constexpr int simple_rows(int dpl) {
  const int budget = std::is_same_v<T, double> ? 32 : 64;
  const int r = budget / dpl;
  return r > 8 ? 8 : (r < 1 ? 1 : r);
}

__device__ __forceinline__ float ex(float x) { return expf(x); }
__device__ __forceinline__ double ex(double x) { return exp(x); }
__device__ __forceinline__ float lg(float x) { return logf(x); }
__device__ __forceinline__ double lg(double x) { return log(x); }

template <int DPL, int VEC>
__device__ __forceinline__ int lane_d(int i, int lane) {
  return (i / VEC) * 32 * VEC + lane * VEC + i % VEC;
}

// x[i] = row[d(i)] * mul (0 past hd).
template <typename T, int DPL, int VEC, typename A>
__device__ __forceinline__ void load_row(A (&x)[DPL], const T* row, int hd, int lane, A mul) {
#pragma unroll
  for (int i0 = 0; i0 < DPL; i0 += VEC) {
    const int d = lane_d<DPL, VEC>(i0, lane);
    if constexpr (VEC > 1) {
      alignas(16) T e[VEC];
      if (d < hd) *reinterpret_cast<uint4*>(e) = *reinterpret_cast<const uint4*>(row + d);
#pragma unroll
      for (int u = 0; u < VEC; ++u) x[i0 + u] = d < hd ? static_cast<A>(e[u]) * mul : A(0);
    } else {
      x[i0] = d < hd ? static_cast<A>(row[d]) * mul : A(0);
    }
  }
}

template <typename T, int DPL, int VEC, typename A>
__device__ __forceinline__ void store_row(T* row, const A (&x)[DPL], int hd, int lane, A mul) {
#pragma unroll
  for (int i = 0; i < DPL; ++i) {
    const int d = lane_d<DPL, VEC>(i, lane);
    if (d < hd) row[d] = static_cast<T>(x[i] * mul);
  }
}

template <typename A, int DPL>
__device__ __forceinline__ A dot(const A (&x)[DPL], const A (&y)[DPL]) {
  A s = 0;
#pragma unroll
  for (int i = 0; i < DPL; ++i) s += x[i] * y[i];
  return gemma4::cuda::warp_sum(s);
}

// Whether a row (hd elements, laid out as load_row reads it) is finite; the same answer in every lane.
template <typename T, int DPL, int VEC>
__device__ __forceinline__ bool row_finite(const T* row, int hd, int lane) {
  using A = acc<T>;
  A x[DPL];
  load_row<T, DPL, VEC>(x, row, hd, lane, A(1));
  bool ok = true;
#pragma unroll
  for (int i = 0; i < DPL; ++i) ok &= isfinite(x[i]);
  return __all_sync(0xffffffffu, ok);
}

// Whether rows r0 .. r0+nr-1 of KV group (b, g) (row = position * G + head in group) of a
// [B, T, nH, hd] tensor (out or grad_q) are all finite.
template <typename T, int DPL, int VEC>
__device__ __forceinline__ bool group_rows_finite(const void* base, const Args& a, int b, int g, int r0, int nr,
                                                  int lane) {
  const int G = a.nH / a.nKV;
  bool finite = true;
  for (int i = 0; i < nr; ++i) {
    const int t = (r0 + i) / G, h = g * G + (r0 + i) % G;
    finite &= row_finite<T, DPL, VEC>(
        static_cast<const T*>(base) + ((static_cast<int64_t>(b) * a.T + t) * a.nH + h) * a.hd, a.hd, lane);
  }
  return finite;
}

// Key range [lo, hi] (inclusive) that rows at key positions p_min..p_max can see.
__device__ __forceinline__ void key_range(int p_min, int p_max, int window, int& lo, int& hi) {
  lo = window > 0 ? max(0, p_min - window + 1) : 0;
  hi = p_max;
}

// REDO: after a tensor-core kernel wrote out and lse, recompute only this warp's rows if one of them
// is non-finite (see "Masked keys and non-finite K/V" in attention_kernels.h: the tile products meet a
// masked key's inf/NaN as 0 * inf; this kernel never multiplies a masked key's values). splits == 1.
template <typename T, int DPL, int VEC, bool REDO = false>
__global__ void __launch_bounds__(128) simple_fwd_kernel(const Args a, int splits, acc<T>* ws) {
  using A = acc<T>;
  constexpr int R = simple_rows<T>(DPL);
  constexpr int CK = DPL >= 16 ? 2 : 4;
  const int lane = threadIdx.x & 31;
  const int split = blockIdx.y * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (split >= splits) return;
  const int G = a.nH / a.nKV, rows = a.T * G;
  const int b = blockIdx.z / a.nKV, g = blockIdx.z % a.nKV;
  const int r0 = blockIdx.x * R, nr = min(R, rows - r0);
  const int off = a.S - a.T;
  if constexpr (REDO) {
    if (group_rows_finite<T, DPL, VEC>(a.out, a, b, g, r0, nr, lane)) return;
  }

  const T* kb = static_cast<const T*>(a.k) + b * a.ksB + g * a.ksH;
  const T* vb = static_cast<const T*>(a.v) + b * a.vsB + g * a.vsH;
  const bool* mb = a.mask ? a.mask + b * a.msB : nullptr;
  A q[R][DPL], o[R][DPL], m[R], l[R];
  int pos[R];
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const int r = r0 + (i < nr ? i : 0), t = r / G, h = g * G + r % G;
    pos[i] = i < nr ? off + t : -1;  // -1: a padding row, sees nothing
    load_row<T, DPL, VEC>(q[i], static_cast<const T*>(a.q) + b * a.qsB + t * a.qsT + h * a.qsH, a.hd, lane,
                          static_cast<A>(a.scale));
    m[i] = -INFINITY;
    l[i] = 0;
#pragma unroll
    for (int d = 0; d < DPL; ++d) o[i][d] = 0;
  }
  int klo, khi;
  key_range(off + r0 / G, off + (r0 + nr - 1) / G, a.window, klo, khi);
  const int chunk = (khi - klo + 1 + splits - 1) / splits;
  const int ks = klo + split * chunk, ke = min(khi + 1, ks + chunk);

  for (int j0 = ks; j0 < ke; j0 += CK) {
    A kv[CK][DPL];
    bool ok[CK];
#pragma unroll
    for (int c = 0; c < CK; ++c) {
      const int j = min(j0 + c, ke - 1);
      ok[c] = j0 + c < ke && (mb == nullptr || mb[j * a.msS]);
      load_row<T, DPL, VEC>(kv[c], kb + j * a.ksS, a.hd, lane, A(1));
    }
    A s[R][CK];
    bool vis[R][CK];
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
      for (int c = 0; c < CK; ++c) {
        const A d = dot(q[i], kv[c]);
        vis[i][c] = ok[c] && visible(j0 + c, pos[i], a.window);
        s[i][c] = vis[i][c] ? d : -INFINITY;
      }
#pragma unroll
    for (int c = 0; c < CK; ++c) load_row<T, DPL, VEC>(kv[c], vb + min(j0 + c, ke - 1) * a.vsS, a.hd, lane, A(1));
#pragma unroll
    for (int i = 0; i < R; ++i) {
      A mx = m[i];
#pragma unroll
      for (int c = 0; c < CK; ++c) mx = s[i][c] > mx ? s[i][c] : mx;
      const A mu = mx == -INFINITY ? A(0) : mx;
      const A alpha = ex(m[i] - mu);
      m[i] = mx;
      A p[CK], ps = 0;
#pragma unroll
      for (int c = 0; c < CK; ++c) ps += (p[c] = ex(s[i][c] - mu));
      l[i] = l[i] * alpha + ps;
#pragma unroll
      for (int d = 0; d < DPL; ++d) {
        A x = o[i][d] * alpha;
#pragma unroll
        for (int c = 0; c < CK; ++c) x += vis[i][c] ? p[c] * kv[c][d] : A(0);  // a masked key adds nothing
        o[i][d] = x;
      }
    }
  }

  const int64_t BHT = static_cast<int64_t>(a.B) * a.nH * a.T;
#pragma unroll
  for (int i = 0; i < R; ++i) {
    if (i >= nr) break;
    const int r = r0 + i, t = r / G, h = g * G + r % G;
    // A row that saw nothing (l = 0): zeros and lse -inf. A NaN score among the visible keys left
    // l = NaN (the max skips NaN, its probability does not): NaN for both, as in the reference and
    // the CPU's finish_row (a test on l > 0 would turn it into a row that saw nothing).
    const A inv = l[i] == A(0) ? A(0) : A(1) / l[i];
    const A lse = l[i] == A(0) ? A(-INFINITY) : m[i] + lg(l[i]);
    const int64_t row = (static_cast<int64_t>(b) * a.nH + h) * a.T + t;
    if (splits == 1) {
      store_row<T, DPL, VEC>(static_cast<T*>(a.out) + ((static_cast<int64_t>(b) * a.T + t) * a.nH + h) * a.hd,
                             o[i], a.hd, lane, inv);
      if (lane == 0) static_cast<A*>(a.lse)[row] = lse;
    } else {
      store_row<A, DPL, VEC>(ws + (split * BHT + row) * a.hd, o[i], a.hd, lane, inv);
      if (lane == 0) ws[splits * BHT * a.hd + split * BHT + row] = lse;
    }
  }
}

// Max over the block (blockDim.x a multiple of 32); every thread gets it. Ends with a barrier.
template <typename A>
__device__ __forceinline__ A block_max(A v, A* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = gemma4::cuda::warp_max(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  A t = lane < warps ? scratch[lane] : A(-INFINITY);
  t = gemma4::cuda::warp_max(t);
  __syncthreads();
  return t;
}

// Merges the normalised partial outputs of the splits (simple_fwd_kernel or flash_decode_kernel).
// Block = (b, h, t) row x 32 columns of hd, 8 warps: the weights exp(lse_s - max) / sum go to shared
// memory once, warp k sums splits k, k+8, ... for its 32 columns (many independent coalesced loads in
// flight: this pass is latency-bound otherwise), and warp 0 adds the 8 parts in a fixed order.
constexpr int kCombineWarps = 8;
template <typename T>
__global__ void __launch_bounds__(32 * kCombineWarps) combine_kernel(const Args a, int splits, const acc<T>* ws) {
  using A = acc<T>;
  extern __shared__ __align__(16) unsigned char combine_smem[];
  A* w = reinterpret_cast<A*>(combine_smem);  // [splits]
  __shared__ A red[32];
  __shared__ A part[kCombineWarps][32];
  const int64_t BHT = static_cast<int64_t>(a.B) * a.nH * a.T;
  const int64_t row = blockIdx.x;
  const int lane = threadIdx.x & 31, grp = threadIdx.x >> 5, d = blockIdx.y * 32 + lane;
  const A* lses = ws + splits * BHT * a.hd;
  A M = -INFINITY;
  for (int s = threadIdx.x; s < splits; s += blockDim.x) M = fmax(M, lses[s * BHT + row]);  // skips NaN
  M = block_max(M, red);
  A sum = 0;
  for (int s = threadIdx.x; s < splits; s += blockDim.x) {
    // A NaN split (a NaN score among its visible keys) makes the row NaN: its weight is NaN even
    // when every other split saw nothing (M = -inf).
    const A ls = lses[s * BHT + row];
    const A e = isnan(ls) ? ls : (M == -INFINITY ? A(0) : ex(ls - M));
    w[s] = e;
    sum += e;
  }
  sum = gemma4::cuda::block_sum(sum, red);  // its barriers also publish w
  A x = 0;
  if (d < a.hd) {
#pragma unroll 4
    for (int s = grp; s < splits; s += kCombineWarps) x += w[s] * ws[(s * BHT + row) * a.hd + d];
  }
  part[grp][lane] = x;
  __syncthreads();
  if (grp != 0) return;
  A y = 0;
#pragma unroll
  for (int k = 0; k < kCombineWarps; ++k) y += part[k][lane];
  const int t = row % a.T, h = (row / a.T) % a.nH, b = row / (static_cast<int64_t>(a.T) * a.nH);
  const A inv = sum == A(0) ? A(0) : A(1) / sum;  // NaN stays NaN (see simple_fwd_kernel's epilogue)
  if (d < a.hd) static_cast<T*>(a.out)[((static_cast<int64_t>(b) * a.T + t) * a.nH + h) * a.hd + d] =
      static_cast<T>(y * inv);
  if (blockIdx.y == 0 && lane == 0) static_cast<A*>(a.lse)[row] = sum == A(0) ? A(-INFINITY) : M + lg(sum);
}

template <typename T>
void combine(const Args& a, int splits, const acc<T>* ws, cudaStream_t stream) {
  const int64_t BHT = static_cast<int64_t>(a.B) * a.nH * a.T;
  combine_kernel<T><<<dim3(BHT, (a.hd + 31) / 32), 32 * kCombineWarps, splits * sizeof(acc<T>), stream>>>(
      a, splits, ws);
}

// ---- backward ----

template <typename T, int DPL, int VEC>
__global__ void __launch_bounds__(128) delta_kernel(const BwdArgs x) {
  using A = acc<T>;
  const Args& a = x.f;
  const int64_t BHT = static_cast<int64_t>(a.B) * a.nH * a.T;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= BHT) return;
  const int lane = threadIdx.x & 31;
  const int t = row % a.T, h = (row / a.T) % a.nH, b = row / (static_cast<int64_t>(a.T) * a.nH);
  A o[DPL], d[DPL];
  load_row<T, DPL, VEC>(o, static_cast<const T*>(a.out) + b * x.osB + t * x.osT + h * x.osH, a.hd, lane, A(1));
  load_row<T, DPL, VEC>(d, static_cast<const T*>(x.dout) + b * x.dsB + t * x.dsT + h * x.dsH, a.hd, lane, A(1));
  const A s = dot(o, d);
  if (lane == 0) static_cast<A*>(x.delta)[row] = s;
}

// REDO (after the tensor-core backward): recompute only rows whose grad is non-finite, as in the forward.
template <typename T, int DPL, int VEC, bool REDO = false>
__global__ void __launch_bounds__(128) simple_dq_kernel(const BwdArgs x) {
  using A = acc<T>;
  constexpr int R = simple_rows<T>(DPL) / 2 > 0 ? simple_rows<T>(DPL) / 2 : 1;
  const Args& a = x.f;
  const int lane = threadIdx.x & 31;
  const int G = a.nH / a.nKV, rows = a.T * G;
  const int r0 = (blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * R;
  if (r0 >= rows) return;
  const int nr = min(R, rows - r0);
  const int b = blockIdx.z / a.nKV, g = blockIdx.z % a.nKV;
  const int off = a.S - a.T;
  if constexpr (REDO) {
    if (group_rows_finite<T, DPL, VEC>(x.dq, a, b, g, r0, nr, lane)) return;
  }
  const T* kb = static_cast<const T*>(a.k) + b * a.ksB + g * a.ksH;
  const T* vb = static_cast<const T*>(a.v) + b * a.vsB + g * a.vsH;
  const bool* mb = a.mask ? a.mask + b * a.msB : nullptr;
  A q[R][DPL], dO[R][DPL], dq[R][DPL], lse[R], del[R];
  int pos[R];
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const int r = r0 + (i < nr ? i : 0), t = r / G, h = g * G + r % G;
    load_row<T, DPL, VEC>(q[i], static_cast<const T*>(a.q) + b * a.qsB + t * a.qsT + h * a.qsH, a.hd, lane,
                          A(1));
    load_row<T, DPL, VEC>(dO[i], static_cast<const T*>(x.dout) + b * x.dsB + t * x.dsT + h * x.dsH, a.hd, lane,
                          A(1));
    const int64_t row = (static_cast<int64_t>(b) * a.nH + h) * a.T + t;
    lse[i] = static_cast<const A*>(a.lse)[row];
    del[i] = static_cast<const A*>(x.delta)[row];
    pos[i] = i < nr && lse[i] != A(-INFINITY) ? off + t : -1;
#pragma unroll
    for (int d = 0; d < DPL; ++d) dq[i][d] = 0;
  }
  int klo, khi;
  key_range(off + r0 / G, off + (r0 + nr - 1) / G, a.window, klo, khi);
  const A scale = static_cast<A>(a.scale);
  for (int j = klo; j <= khi; ++j) {
    if (mb && !mb[j * a.msS]) continue;
    A k[DPL], v[DPL];
    load_row<T, DPL, VEC>(k, kb + j * a.ksS, a.hd, lane, A(1));
    load_row<T, DPL, VEC>(v, vb + j * a.vsS, a.hd, lane, A(1));
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const A s = dot(q[i], k) * scale, dp = dot(dO[i], v);
      if (!visible(j, pos[i], a.window)) continue;
      const A ds = ex(s - lse[i]) * (dp - del[i]);
#pragma unroll
      for (int d = 0; d < DPL; ++d) dq[i][d] += ds * k[d];
    }
  }
#pragma unroll
  for (int i = 0; i < R; ++i) {
    if (i >= nr) break;
    const int r = r0 + i, t = r / G, h = g * G + r % G;
    store_row<T, DPL, VEC>(static_cast<T*>(x.dq) + ((static_cast<int64_t>(b) * a.T + t) * a.nH + h) * a.hd, dq[i],
                           a.hd, lane, scale);
  }
}

template <typename T, int DPL, int VEC, bool REDO = false>
__global__ void __launch_bounds__(128) simple_dkdv_kernel(const BwdArgs x) {
  using A = acc<T>;
  constexpr int KR = simple_rows<T>(DPL) / 2 > 0 ? simple_rows<T>(DPL) / 2 : 1;
  const Args& a = x.f;
  const int lane = threadIdx.x & 31;
  const int j0 = (blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * KR;
  if (j0 >= a.S) return;
  const int nk = min(KR, a.S - j0);
  const int G = a.nH / a.nKV;
  const int b = blockIdx.z / a.nKV, g = blockIdx.z % a.nKV;
  const int off = a.S - a.T;
  if constexpr (REDO) {
    bool finite = true;
    for (int c = 0; c < nk; ++c) {
      const int64_t o = ((static_cast<int64_t>(b) * a.S + j0 + c) * a.nKV + g) * a.hd;
      finite &= row_finite<T, DPL, VEC>(static_cast<const T*>(x.dk) + o, a.hd, lane) &&
                row_finite<T, DPL, VEC>(static_cast<const T*>(x.dv) + o, a.hd, lane);
    }
    if (finite) return;
  }
  const bool* mb = a.mask ? a.mask + b * a.msB : nullptr;
  A k[KR][DPL], v[KR][DPL], dk[KR][DPL], dv[KR][DPL];
  bool ok[KR];
#pragma unroll
  for (int c = 0; c < KR; ++c) {
    const int j = j0 + (c < nk ? c : 0);
    ok[c] = c < nk && (mb == nullptr || mb[j * a.msS]);
    load_row<T, DPL, VEC>(k[c], static_cast<const T*>(a.k) + b * a.ksB + j * a.ksS + g * a.ksH, a.hd, lane, A(1));
    load_row<T, DPL, VEC>(v[c], static_cast<const T*>(a.v) + b * a.vsB + j * a.vsS + g * a.vsH, a.hd, lane, A(1));
#pragma unroll
    for (int d = 0; d < DPL; ++d) dk[c][d] = dv[c][d] = 0;
  }
  // Queries that can see keys j0 .. j0+nk-1: positions p in [j0, j0+nk-1+window-1].
  const int t_lo = max(0, j0 - off);
  const int t_hi = a.window > 0 ? min(a.T - 1, j0 + nk - 1 + a.window - 1 - off) : a.T - 1;
  const A scale = static_cast<A>(a.scale);
  for (int t = t_lo; t <= t_hi; ++t) {
    for (int hh = 0; hh < G; ++hh) {
      const int h = g * G + hh;
      const int64_t row = (static_cast<int64_t>(b) * a.nH + h) * a.T + t;
      const A lse = static_cast<const A*>(a.lse)[row];
      if (lse == A(-INFINITY)) continue;
      const A del = static_cast<const A*>(x.delta)[row];
      A q[DPL], dO[DPL];
      load_row<T, DPL, VEC>(q, static_cast<const T*>(a.q) + b * a.qsB + t * a.qsT + h * a.qsH, a.hd, lane, A(1));
      load_row<T, DPL, VEC>(dO, static_cast<const T*>(x.dout) + b * x.dsB + t * x.dsT + h * x.dsH, a.hd, lane,
                            A(1));
#pragma unroll
      for (int c = 0; c < KR; ++c) {
        const A s = dot(q, k[c]) * scale, dp = dot(dO, v[c]);
        if (!ok[c] || !visible(j0 + c, off + t, a.window)) continue;
        const A p = ex(s - lse), ds = p * (dp - del);
#pragma unroll
        for (int d = 0; d < DPL; ++d) {
          dv[c][d] += p * dO[d];
          dk[c][d] += ds * q[d];
        }
      }
    }
  }
#pragma unroll
  for (int c = 0; c < KR; ++c) {
    if (c >= nk) break;
    const int64_t o = ((static_cast<int64_t>(b) * a.S + j0 + c) * a.nKV + g) * a.hd;
    store_row<T, DPL, VEC>(static_cast<T*>(x.dk) + o, dk[c], a.hd, lane, scale);
    store_row<T, DPL, VEC>(static_cast<T*>(x.dv) + o, dv[c], a.hd, lane, A(1));
  }
}

}  // namespace gemma4::attn::cuda
