// The many-token MoE GEMMs on tensor cores (bf16 / fp16, sm_80+): a grouped GEMM
//   C[s, n] = sum_k A[row(s), k] * B_e(k, n)     (A rows gathered by token or by sorted row)
// with B_e one expert's weight read as [N, K] (BKMajor = false: k contiguous, x @ W^T -- the
// forward and the recomputed g|u) or as [K, N] (BKMajor = true: n contiguous, g @ W -- dh and grad_x
// of the backward)
// over the row tiles of moe_cuda.cuh's grouping (tiles of at most 64 pairs of one expert).
// Block tile 64 x 64 x 32, 4 warps of 32 x 32 (2 x 2 WMMA 16x16x16 fragments, fp32 accumulators);
// A and B tiles staged in shared memory, double-buffered so the next tile's loads overlap this tile's
// MMAs; rows past the tile and k past K are zero-filled.
// Where B comes from is the kernel's BSrc: DenseB below (a bf16 / fp16 bank, 16-byte cp.async like A) or
// moe_tc_packed_b.cuh's PackedB (an int4 / int8 bank, dequantized into the tile on the way).
// Needs K % 8 == 0 (and N % 8 == 0 when BKMajor) and 16-byte aligned rows (checked by the caller). The epilogue goes through
// shared memory to apply the row map (sorted row or pair id) and the routing weight.
#pragma once
#include <mma.h>

#include <type_traits>

#include "moe/moe_cuda.cuh"

namespace gemma4::moe_cuda {

constexpr int kTcBM = 64, kTcBN = 64, kTcBK = 32, kTcThreads = 128, kTcPad = 8;
// Shared-memory row lengths (elements) of a B tile: [kTcBN][kTcLd] (k contiguous; A's too) or, when BKMajor,
// [kTcBK][kTcLdb] (n contiguous); 80 and 144 bytes, multiples of 16.
constexpr int kTcLd = kTcBK + kTcPad, kTcLdb = kTcBN + kTcPad;

// 16-byte global -> shared copy; src_bytes = 0 writes zeros.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
}

// A B source stages the block's B tile for k-tile [k0, k0 + kTcBK) and columns [n0, n0 + kTcBN) of expert e in
// two steps: load (at the start of the previous tile's MMAs) and store (after them, into the other buffer).
// DenseB: expert e's [N, K] (or [K, N]) weight in T at b + e * expert_stride, copied by cp.async in load.
template <typename T>
struct DenseB {
  const T* b;
  int64_t expert_stride;
  struct Tile {};  // nothing held in registers

  template <bool BKMajor>
  __device__ __forceinline__ void load(Tile&, void* smem, int e, int64_t k0, int64_t n0, int64_t N, int64_t K,
                                       int tid) const {
    T* tile = static_cast<T*>(smem);
    const T* w = b + int64_t(e) * expert_stride;
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int chunk = tid + c * kTcThreads;  // 0..255
      if constexpr (!BKMajor) {                // n row r (of 64), k chunk kc (of 4 chunks of 8)
        const int r = chunk / 4, kc = (chunk % 4) * 8;
        const bool ok = n0 + r < N && k0 + kc < K;
        cp_async16(tile + r * kTcLd + kc, ok ? w + (n0 + r) * K + k0 + kc : w, ok ? 16 : 0);
      } else {  // k row kr (of 32), n chunk nc (of 8 chunks of 8)
        const int kr = chunk / 8, nc = (chunk % 8) * 8;
        const bool ok = k0 + kr < K && n0 + nc < N;
        cp_async16(tile + kr * kTcLdb + nc, ok ? w + (k0 + kr) * N + n0 + nc : w, ok ? 16 : 0);
      }
    }
  }
  template <bool BKMajor>
  __device__ __forceinline__ void store(const Tile&, void*, int) const {}
};

template <typename T, typename BSrc = DenseB<T>>
struct TcGemm {
  const T* a;         // rows of K elements
  bool a_by_token;    // row = sorted_pair[s] / slots (else row = s)
  BSrc b;             // expert e's weight, [N, K] (or [K, N] when BKMajor)
  int64_t N, K, slots;
  float* out;         // [rows, N] fp32: row s, or row pair(s) when out_by_pair
  bool out_by_pair;
  const float* weights;  // routing weights by pair id, or nullptr
};
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

template <typename T>
struct WmmaType;
template <>
struct WmmaType<c10::BFloat16> { using type = __nv_bfloat16; };
template <>
struct WmmaType<c10::Half> { using type = __half; };

template <typename T, bool BKMajor, typename BSrc>
__global__ void __launch_bounds__(kTcThreads) pair_gemm_tc_kernel(TcGemm<T, BSrc> p, GroupLayout g) {
  using namespace nvcuda;
  using W = typename WmmaType<T>::type;
  constexpr int LD = kTcLd, LDB = kTcLdb;
  constexpr int B_STAGE = BKMajor ? kTcBK * LDB : kTcBN * LD;  // elements of one B buffer
  __shared__ __align__(128) unsigned char smem_raw[(2 * kTcBM * LD + 2 * B_STAGE) * sizeof(T)];
  W* As = reinterpret_cast<W*>(smem_raw);        // [2][kTcBM][LD]
  W* Bs = As + 2 * kTcBM * LD;                   // [2][kTcBN][LD], or [2][kTcBK][LDB] when BKMajor
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
  typename BSrc::Tile b_tile;

  // Stage k-tile kt into buffer buf: A 64 x 32 (256 chunks of 8, 2 per thread), B by its source (a packed
  // source holds it in registers until its store).
  auto stage = [&](int64_t kt, int buf) {
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int chunk = tid + c * kTcThreads;  // 0..255
      const int r = chunk / 4, kc = (chunk % 4) * 8;
      const int64_t k = kt * kTcBK + kc;
      const int64_t ar = arow[r];
      const bool a_ok = ar >= 0 && k < p.K;
      cp_async16(As + (buf * kTcBM + r) * LD + kc, a_ok ? p.a + ar * p.K + k : p.a, a_ok ? 16 : 0);
    }
    p.b.template load<BKMajor>(b_tile, Bs + buf * B_STAGE, e, kt * kTcBK, n0, p.N, p.K, tid);
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
  p.b.template store<BKMajor>(b_tile, Bs, tid);
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
      using BLayout = std::conditional_t<BKMajor, wmma::row_major, wmma::col_major>;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, W, BLayout> fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], As + (buf * kTcBM + wm + 16 * i) * LD + kk, LD);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        if constexpr (BKMajor) {
          wmma::load_matrix_sync(fb[j], Bs + buf * B_STAGE + kk * LDB + wn + 16 * j, LDB);
        } else {
          wmma::load_matrix_sync(fb[j], Bs + buf * B_STAGE + (wn + 16 * j) * LD + kk, LD);
        }
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
    // Buffer buf ^ 1 was last read by the previous tile's MMAs, which every warp finished before this tile's
    // __syncthreads above.
    if (kt + 1 < k_tiles) p.b.template store<BKMajor>(b_tile, Bs + (buf ^ 1) * B_STAGE, tid);
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

// The weight gradients on tensor cores: C_e[m, n] = sum over the sorted pairs s of expert e of
// A_s[m] * B_s[n] (A_s, B_s rows gathered by token or by sorted row, M and N multiples of 8), rounded
// to T; one launch for all experts, grid (E * m_tiles, n_tiles); an expert with no pairs gets zeros.
// Tiles stage 32 pairs x 64 rows of A (m contiguous: WMMA matrix_a col_major) and of B (row_major).
template <typename T>
struct TcWeightGrad {
  const T* a;
  bool a_by_token;
  const T* b;
  bool b_by_token;
  int64_t M, N, slots;
  T* out;  // [E, M, N]
};

template <typename T>
__global__ void __launch_bounds__(kTcThreads) weight_grad_tc_kernel(TcWeightGrad<T> p, GroupLayout g,
                                                                    int64_t m_tiles) {
  using namespace nvcuda;
  using W = typename WmmaType<T>::type;
  constexpr int LDA = kTcBM + kTcPad, LDB = kTcBN + kTcPad;  // 144-byte smem rows
  constexpr int A_STAGE = kTcBK * LDA, B_STAGE = kTcBK * LDB;
  constexpr int CLD = kTcBN + 4;
  constexpr size_t kStaging = 2 * (A_STAGE + B_STAGE) * sizeof(T), kCTile = kTcBM * CLD * sizeof(float);
  __shared__ __align__(128) unsigned char smem_raw[kStaging > kCTile ? kStaging : kCTile];
  W* As = reinterpret_cast<W*>(smem_raw);  // [2][kTcBK][LDA]
  W* Bs = As + 2 * A_STAGE;                // [2][kTcBK][LDB]

  const int64_t e = blockIdx.x / m_tiles;
  const int64_t m0 = (blockIdx.x % m_tiles) * kTcBM, n0 = int64_t(blockIdx.y) * kTcBN;
  const int32_t s0 = g.offsets[e], s1 = g.offsets[e + 1];
  const int tid = threadIdx.x, warp = tid / 32;

  auto stage = [&](int64_t kt, int buf) {
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int chunk = tid + c * kTcThreads;        // 0..255: 32 pair rows x 8 chunks of 8
      const int kr = chunk / 8, cc = (chunk % 8) * 8;
      const int64_t s = s0 + kt * kTcBK + kr;
      const bool row_ok = s < s1;
      const int64_t pair = row_ok ? g.sorted_pair[s] : 0;
      const int64_t ra = p.a_by_token ? pair / p.slots : s, rb = p.b_by_token ? pair / p.slots : s;
      const bool a_ok = row_ok && m0 + cc < p.M, b_ok = row_ok && n0 + cc < p.N;
      cp_async16(As + buf * A_STAGE + kr * LDA + cc, a_ok ? p.a + ra * p.M + m0 + cc : p.a, a_ok ? 16 : 0);
      cp_async16(Bs + buf * B_STAGE + kr * LDB + cc, b_ok ? p.b + rb * p.N + n0 + cc : p.b, b_ok ? 16 : 0);
    }
    cp_async_commit();
  };

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);
  const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;
  const int64_t k_tiles = (s1 - s0 + kTcBK - 1) / kTcBK;
  if (k_tiles > 0) stage(0, 0);
  for (int64_t kt = 0; kt < k_tiles; ++kt) {
    const int buf = kt % 2;
    if (kt + 1 < k_tiles) {
      stage(kt + 1, buf ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTcBK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, W, wmma::col_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, W, wmma::row_major> fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], As + buf * A_STAGE + kk * LDA + wm + 16 * i, LDA);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], Bs + buf * B_STAGE + kk * LDB + wn + 16 * j, LDB);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
    __syncthreads();
  }
  float* Cs = reinterpret_cast<float*>(smem_raw);
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(Cs + (wm + 16 * i) * CLD + wn + 16 * j, acc[i][j], CLD, wmma::mem_row_major);
  __syncthreads();
  T* out = p.out + e * p.M * p.N;
  for (int idx = tid; idx < kTcBM * kTcBN; idx += kTcThreads) {
    const int r = idx / kTcBN, c = idx % kTcBN;
    if (m0 + r < p.M && n0 + c < p.N) out[(m0 + r) * p.N + n0 + c] = static_cast<T>(Cs[r * CLD + c]);
  }
}

}  // namespace gemma4::moe_cuda
