// The problem description the CUDA attention kernels read (plain data, passed by value to kernels),
// and the launchers attention_cuda.cu calls. Semantics are gemma4::attention's (registration.cpp):
// query t of q [B,T,nH,hd] sits at key index p = S-T+t of k/v [B,S,nKV,hd]; key j is visible iff
// j <= p, j > p - window (window > 0), key_mask[b, j]; query head h reads KV head h / (nH/nKV).
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace gemma4::attn::cuda {

struct Args {
  const void* q; int64_t qsB, qsT, qsH;  // element strides; the last dimension has stride 1
  const void* k; int64_t ksB, ksS, ksH;
  const void* v; int64_t vsB, vsS, vsH;
  const bool* mask; int64_t msB, msS;    // nullptr: no key mask
  int B, T, S, nH, nKV, hd, window;      // window <= 0: none
  double scale;
  void* out;  // contiguous [B,T,nH,hd], q's dtype
  void* lse;  // contiguous [B,nH,T], float (double for double)
};

// Extra inputs and outputs of the backward. grad_q/k/v are contiguous and fully written.
struct BwdArgs {
  Args f;                                   // f.out / f.lse: the saved forward outputs (read)
  int64_t osB, osT, osH;                    // strides of the saved out
  const void* dout; int64_t dsB, dsT, dsH;  // grad_out, last dimension stride 1
  void* delta;                              // workspace [B,nH,T] (acc type): rowsum(dout * out)
  void* dq;                                 // [B,T,nH,hd]
  void* dk;                                 // [B,S,nKV,hd]
  void* dv;                                 // [B,S,nKV,hd]
};

__host__ __device__ inline bool visible(int j, int p, int window) {
  return j <= p && (window <= 0 || j > p - window);
}

// Tensor-core kernels: bf16/fp16 (T = __nv_bfloat16 / __half), HD in {64,128,256,512}, 16-byte aligned
// rows (strides multiples of 8 elements). flash_fwd.cuh / flash_bwd.cuh.
template <typename T, int HD>
void flash_fwd(const Args& a, cudaStream_t stream);
template <typename T, int HD>
void flash_bwd(const BwdArgs& a, cudaStream_t stream);

// Dynamic shared memory (bytes) the tensor-core kernels of head_dim HD ask for. attention_cuda.cu
// falls back to the simple kernels on GPUs that cannot give a block that much (sm_86/sm_89 offer
// 99 KB per block, sm_80 163 KB, sm_90 227 KB).
struct FlashSmem {
  size_t fwd, bwd, decode;
};
template <int HD>
FlashSmem flash_smem();

// Split-KV decode on tensor cores (flash_decode.cuh): T * nH/nKV <= kDecodeRows query rows per KV head.
// ws: decode_workspace_elems floats when splits > 1.
constexpr int kDecodeRows = 16;
template <typename T, int HD>
void flash_decode(const Args& a, int splits, float* ws, cudaStream_t stream);

// Splits of the key range so that the blocks fill the multiprocessors in one wave (one block per SM at
// head_dim >= 256, two below, where two fit), each split at least two tiles long.
inline int decode_splits(const Args& a, int num_sms) {
  const int per_sm = a.hd <= 128 ? 2 : 1, tile = a.hd >= 256 ? 32 : 64;
  const int64_t keys = a.window > 0 ? std::min<int64_t>(a.S, a.window + a.T - 1) : a.S;
  const int64_t base = static_cast<int64_t>(a.B) * a.nKV;
  int64_t splits = static_cast<int64_t>(num_sms) * per_sm / base;
  splits = std::min<int64_t>(splits, (keys + 2 * tile - 1) / (2 * tile));
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(splits, 1024)));
}
inline int64_t decode_workspace_elems(const Args& a, int splits) {
  return splits > 1 ? static_cast<int64_t>(splits) * a.B * a.nH * a.T * (a.hd + 1) : 0;
}

// Warp-per-row-group kernels for every dtype and head_dim (simple.cuh): decode (split over the keys,
// then combined), float32/float64, head dims without a tensor-core instantiation.
// ws_* are device workspaces of the sizes simple_fwd_workspace() returns (in acc-type elements).
struct SimplePlan {
  int rows;    // query rows (t, head-in-group) per warp
  int splits;  // key-range splits per row group
  int64_t workspace_elems;
};
template <typename T>
SimplePlan simple_fwd_plan(const Args& a, int num_sms);
template <typename T>
void simple_fwd(const Args& a, const SimplePlan& plan, void* workspace, cudaStream_t stream);
// After a tensor-core forward: recompute the rows whose output came out non-finite.
template <typename T>
void simple_redo_fwd(const Args& a, cudaStream_t stream);
// redo: after a tensor-core backward, recompute only the non-finite rows of grad_q, grad_k, grad_v.
template <typename T>
void simple_bwd(const BwdArgs& a, cudaStream_t stream, bool redo = false);
// delta = rowsum(dout * out) in the acc type (both backward paths).
template <typename T>
void bwd_delta(const BwdArgs& a, cudaStream_t stream);

}  // namespace gemma4::attn::cuda
