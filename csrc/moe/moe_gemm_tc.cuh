// The many-token path of the MoE forward on tensor cores (bf16 / fp16, sm_80+): a grouped GEMM
//   C[s, n] = sum_k A[row(s), k] * B_e[n, k]     (A rows gathered by token or by sorted row,
//                                                 B_e = one expert's [N, K] weight, k contiguous)
// over the row tiles of moe_cuda.cuh's grouping (tiles of at most 64 pairs of one expert).
// Block tile 64 x 64 x 32, 4 warps of 32 x 32 (2 x 2 WMMA 16x16x16 fragments, fp32 accumulators);
// A and B tiles staged in shared memory with 16-byte cp.async, double-buffered so the next tile's
// loads overlap this tile's MMAs; rows past the tile and k past K are zero-filled by cp.async.
// Needs K % 8 == 0 and 16-byte aligned rows (checked by the caller). The epilogue goes through
// shared memory to apply the row map (sorted row or pair id) and the routing weight.
#pragma once
#include <mma.h>

#include "moe/moe_cuda.cuh"

namespace gemma4::moe_cuda {

constexpr int kTcBM = 64, kTcBN = 64, kTcBK = 32, kTcThreads = 128, kTcPad = 8;

template <typename T>
struct TcGemm {
  const T* a;         // rows of K elements
  bool a_by_token;    // row = sorted_pair[s] / slots (else row = s)
  const T* b;         // expert e at b + e * b_expert_stride, [N, K]
  int64_t b_expert_stride;
  int64_t N, K, slots;
  float* out;         // [rows, N] fp32: row s, or row pair(s) when out_by_pair
  bool out_by_pair;
  const float* weights;  // routing weights by pair id, or nullptr
};

// 16-byte global -> shared copy; src_bytes = 0 writes zeros.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

template <typename T>
struct WmmaType;
template <>
struct WmmaType<c10::BFloat16> { using type = __nv_bfloat16; };
template <>
struct WmmaType<c10::Half> { using type = __half; };

template <typename T>
__global__ void __launch_bounds__(kTcThreads) pair_gemm_tc_kernel(TcGemm<T> p, GroupLayout g) {
  using namespace nvcuda;
  using W = typename WmmaType<T>::type;
  constexpr int LD = kTcBK + kTcPad;  // smem row length (elements): 80 bytes, a multiple of 16
  __shared__ __align__(128) unsigned char smem_raw[2 * (kTcBM + kTcBN) * LD * sizeof(T)];
  W* As = reinterpret_cast<W*>(smem_raw);        // [2][kTcBM][LD]
  W* Bs = As + 2 * kTcBM * LD;                   // [2][kTcBN][LD]
  __shared__ int64_t arow[kTcBM];

  const int32_t e = g.tile_expert[blockIdx.x];
  if (e < 0) return;
  const int32_t row0 = g.tile_row0[blockIdx.x], rows = g.tile_rows[blockIdx.x];
  const int64_t n0 = int64_t(blockIdx.y) * kTcBN;
  const int tid = threadIdx.x, warp = tid / 32;
  if (tid < kTcBM) {
    const int64_t s = row0 + tid;
    arow[tid] = tid < rows ? (p.a_by_token ? g.sorted_pair[s] / p.slots : s) : -1;
  }
  __syncthreads();
  const T* b = p.b + int64_t(e) * p.b_expert_stride;

  // Stage k-tile kt into buffer buf: A 64 x 32 (256 chunks of 8, 2 per thread), B likewise.
  auto stage = [&](int64_t kt, int buf) {
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int chunk = tid + c * kTcThreads;  // 0..255
      const int r = chunk / 4, kc = (chunk % 4) * 8;
      const int64_t k = kt * kTcBK + kc;
      const int64_t ar = arow[r];
      const bool a_ok = ar >= 0 && k < p.K;
      cp_async16(As + (buf * kTcBM + r) * LD + kc, a_ok ? p.a + ar * p.K + k : p.a, a_ok ? 16 : 0);
      const bool b_ok = n0 + r < p.N && k < p.K;
      cp_async16(Bs + (buf * kTcBN + r) * LD + kc, b_ok ? b + (n0 + r) * p.K + k : b, b_ok ? 16 : 0);
    }
    cp_async_commit();
  };

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);
  const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;  // this warp's 32 x 32 corner

  const int64_t k_tiles = (p.K + kTcBK - 1) / kTcBK;
  stage(0, 0);
  for (int64_t kt = 0; kt < k_tiles; ++kt) {
    const int buf = kt % 2;
    if (kt + 1 < k_tiles) {
      stage(kt + 1, buf ^ 1);
      cp_async_wait<1>();  // tile kt has landed; kt + 1 may still be in flight
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTcBK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, W, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, W, wmma::col_major> fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], As + (buf * kTcBM + wm + 16 * i) * LD + kk, LD);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], Bs + (buf * kTcBN + wn + 16 * j) * LD + kk, LD);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
    __syncthreads();  // buffer buf is overwritten by the next iteration's stage
  }

  // Epilogue through shared memory (the staging buffers are free now): C tile [64][64 + 4] fp32.
  constexpr int CLD = kTcBN + 4;
  static_assert(kTcBM * CLD * sizeof(float) <= sizeof(smem_raw), "C tile fits in the staging buffers");
  float* Cs = reinterpret_cast<float*>(smem_raw);
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(Cs + (wm + 16 * i) * CLD + wn + 16 * j, acc[i][j], CLD, wmma::mem_row_major);
  __syncthreads();
  for (int idx = tid; idx < kTcBM * kTcBN; idx += kTcThreads) {
    const int r = idx / kTcBN, c = idx % kTcBN;
    if (r >= rows || n0 + c >= p.N) continue;
    const int64_t s = row0 + r;
    const int64_t pair = g.sorted_pair[s];
    const float v = Cs[r * CLD + c];
    p.out[(p.out_by_pair ? pair : s) * p.N + n0 + c] = p.weights != nullptr ? p.weights[pair] * v : v;
  }
}

}  // namespace gemma4::moe_cuda
