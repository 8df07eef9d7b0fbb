// Device pieces shared by the MoE expert kernels on CUDA (moe_experts_cuda.cu and
// moe_experts_backward_cuda.cu): the grouping of (token, slot) pairs by expert, and two grouped
// GEMMs that read the group layout from device memory, so no call ever waits on the host.
//
// Grouping (one block, group_pairs_kernel): a stable counting sort of the P = N*K pair ids
// p = n*K + k by e = indices[n, k] -> offsets [E+1], sorted_pair [P] (expert e owns sorted positions
// [offsets[e], offsets[e+1]), tokens ascending within it), and a list of row tiles: tile t covers
// sorted positions [row0, row0 + rows) of one expert, rows <= BM. At most ceil(P / BM) + min(E, P)
// tiles exist; unused entries have expert -1 and their blocks exit at once. An index outside
// [0, E) trips a device-side assert (as torch's own indexing kernels do): checking it on the host
// would need a sync.
//
// GEMMs (fp32 / fp64 accumulation; operands widened as they are staged in shared memory):
//   pair_gemm:   C[s, n] = sum_k A[row(s), k] * B_e[k, n] for the sorted rows s of each tile,
//                A rows gathered by token (x, grad_out) or by sorted position (h, dg|du);
//                B_e an expert's weight matrix read as [N, K] ("nt": k contiguous, x @ W^T) or
//                [K, N] ("nn": n contiguous, g @ W); the epilogue writes row s or row pair(s),
//                optionally times the routing weight.
//   weight_grad_gemm: C_e[m, n] = sum over the pairs s of expert e of A_s[m] * B_s[n] (the weight
//                gradients), one launch for all experts; an expert with no pairs gets zeros.
#pragma once
#include <cstdint>
#include <type_traits>

#include <c10/macros/Macros.h>  // CUDA_KERNEL_ASSERT

#include "common/cuda_activation.cuh"
#include "common/cuda_launch.cuh"
#include "common/cuda_reduce.cuh"
#include "common/cuda_vec.cuh"

namespace gemma4::moe_cuda {

using cuda::acc_t;

constexpr int kGroupThreads = 1024;
constexpr int kMaxExperts = 4096;  // shared-memory counters of the grouping kernel

// Where the grouping results live (device pointers) and the tile size they were built for.
struct GroupLayout {
  int32_t* offsets;      // [E + 1]
  int32_t* sorted_pair;  // [P]
  int32_t* tile_expert;  // [max_tiles]
  int32_t* tile_row0;    // [max_tiles]
  int32_t* tile_rows;    // [max_tiles]
  int64_t max_tiles;
  int BM;
};

inline int64_t max_tiles_for(int64_t P, int64_t E, int BM) { return (P + BM - 1) / BM + std::min(E, P); }

// static: each file that launches it (moe_grouping.cuh's group_pairs) gets its own copy; a kernel has no inline.
static __global__ void __launch_bounds__(kGroupThreads)
    group_pairs_kernel(const int64_t* __restrict__ indices, int64_t P, int64_t E, GroupLayout g) {
  __shared__ int32_t count[kMaxExperts];
  __shared__ int32_t cursor[kMaxExperts];
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) count[e] = 0;
  __syncthreads();
  for (int64_t p = threadIdx.x; p < P; p += blockDim.x) {
    const int64_t e = indices[p];
    CUDA_KERNEL_ASSERT(e >= 0 && e < E && "gemma4::moe_experts: indices must be in [0, E)");
    atomicAdd(&count[e], 1);  // integer counts: the same whatever the order
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t off = 0;
    int64_t t = 0;
    for (int64_t e = 0; e < E; ++e) {
      g.offsets[e] = off;
      cursor[e] = off;
      for (int32_t r = 0; r < count[e]; r += g.BM, ++t) {
        g.tile_expert[t] = static_cast<int32_t>(e);
        g.tile_row0[t] = off + r;
        g.tile_rows[t] = min(g.BM, count[e] - r);
      }
      off += count[e];
    }
    g.offsets[E] = off;
    for (; t < g.max_tiles; ++t) g.tile_expert[t] = -1;
  }
  __syncthreads();
  // Stable scatter by one warp, 32 pairs at a time in pair order: lanes with the same expert take
  // consecutive slots in lane order.
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    for (int64_t base = 0; base < P; base += 32) {
      const int64_t p = base + lane;
      const int32_t e = p < P ? static_cast<int32_t>(indices[p]) : -1;
      const unsigned same = __match_any_sync(0xffffffffu, e);
      const int rank = __popc(same & ((1u << lane) - 1u));
      if (e >= 0) g.sorted_pair[cursor[e] + rank] = static_cast<int32_t>(p);
      __syncwarp();
      if (e >= 0 && rank == 0) cursor[e] += __popc(same);
      __syncwarp();
    }
  }
}

// ---- pair_gemm ------------------------------------------------------------------------------
constexpr int kBM = 64, kBN = 64, kBK = 16, kGemmThreads = 256;  // 4 x 4 outputs per thread
// Blocked summation in the SIMT GEMMs (as moe_gemm.h's outer_tile on the CPU): each output sums
// kSumBlock products in a chain of its own, and the block sums are added into a running total. One
// fma chain over all of K (H = 2816 for gate|up and dh, the pairs of an expert for the weight
// gradients) rounds K times in series, several times plain PyTorch's error; blocks of 32 bring that
// to about 32 + K/32 roundings. Cost: 16 more accumulator registers and 16 adds per 32 x 16 fmas.
constexpr int kSumBlock = 32;
static_assert(kSumBlock % kBK == 0, "a sum block is whole k tiles");

template <typename TA, typename TB, typename Acc>
struct PairGemm {
  const TA* a;          // A rows: a + row * K
  bool a_by_token;      // row = sorted_pair[s] / slots (else row = s)
  const TB* b;          // expert e's matrix at b + e * b_expert_stride
  int64_t b_expert_stride;
  int64_t N, K;
  int64_t slots;        // top_k
  Acc* out;             // [rows, N]: row s, or row pair(s) when out_by_pair
  bool out_by_pair;
  const Acc* weights;   // routing weights by pair id, or nullptr (no scaling)
};

// The two SIMT GEMMs' register tile: thread (tx, ty) owns rows ty + 16i and columns tx + 16j of the
// 64x64 block; tile_fma runs one shared-memory k-tile through it, add_block folds a summation block
// (kSumBlock) into the running total.
template <typename Acc>
__device__ __forceinline__ void tile_fma(const Acc (&As)[kBK][kBM + 1], const Acc (&Bs)[kBK][kBN + 1], int tx,
                                         int ty, Acc (&acc)[4][4]) {
#pragma unroll
  for (int kk = 0; kk < kBK; ++kk) {
    Acc av[4], bv[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) av[i] = As[kk][ty + 16 * i];
#pragma unroll
    for (int j = 0; j < 4; ++j) bv[j] = Bs[kk][tx + 16 * j];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = fma(av[i], bv[j], acc[i][j]);
  }
}
template <typename Acc>
__device__ __forceinline__ void add_block(Acc (&total)[4][4], const Acc (&acc)[4][4]) {
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) total[i][j] += acc[i][j];
}

template <typename TA, typename TB, typename Acc, bool BNN>
__global__ void __launch_bounds__(kGemmThreads) pair_gemm_kernel(PairGemm<TA, TB, Acc> p, GroupLayout g) {
  const int64_t tile = blockIdx.x;
  const int32_t e = g.tile_expert[tile];
  if (e < 0) return;
  const int32_t row0 = g.tile_row0[tile], rows = g.tile_rows[tile];
  const int64_t n0 = int64_t(blockIdx.y) * kBN;
  __shared__ Acc As[kBK][kBM + 1];
  __shared__ Acc Bs[kBK][kBN + 1];
  __shared__ int64_t arow[kBM];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  if (tid < kBM) {
    int64_t r = -1;
    if (tid < rows) {
      const int64_t s = row0 + tid;
      r = p.a_by_token ? g.sorted_pair[s] / p.slots : s;
    }
    arow[tid] = r;
  }
  __syncthreads();
  const TB* b = p.b + int64_t(e) * p.b_expert_stride;
  Acc total[4][4] = {};
  for (int64_t kb = 0; kb < p.K; kb += kSumBlock) {
    Acc acc[4][4] = {};  // this block's partial sums (see kSumBlock)
    for (int64_t k0 = kb; k0 < p.K && k0 < kb + kSumBlock; k0 += kBK) {
      // A tile: row m = tid / 4, k = (tid % 4) * 4 + i.
      {
        const int m = tid / 4, kk = (tid % 4) * 4;
        const int64_t r = arow[m];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int64_t k = k0 + kk + i;
          As[kk + i][m] = (r >= 0 && k < p.K) ? static_cast<Acc>(p.a[r * p.K + k]) : Acc(0);
        }
      }
      if constexpr (!BNN) {  // B[k, n] = b[n * K + k]: n = tid / 4, k = (tid % 4) * 4 + i
        const int n = tid / 4, kk = (tid % 4) * 4;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int64_t k = k0 + kk + i;
          Bs[kk + i][n] = (n0 + n < p.N && k < p.K) ? static_cast<Acc>(b[(n0 + n) * p.K + k]) : Acc(0);
        }
      } else {  // B[k, n] = b[k * N + n]: k = tid / 16, n = (tid % 16) * 4 + i
        const int kk = tid / 16, n = (tid % 16) * 4;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int64_t k = k0 + kk;
          Bs[kk][n + i] = (n0 + n + i < p.N && k < p.K) ? static_cast<Acc>(b[k * p.N + n0 + n + i]) : Acc(0);
        }
      }
      __syncthreads();
      tile_fma(As, Bs, tx, ty, acc);
      __syncthreads();
    }
    add_block(total, acc);
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int m = ty + 16 * i;
    if (m >= rows) continue;
    const int64_t s = row0 + m;
    const int64_t pair = g.sorted_pair[s];
    const int64_t orow = p.out_by_pair ? pair : s;
    const Acc w = p.weights != nullptr ? p.weights[pair] : Acc(1);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + tx + 16 * j;
      if (n < p.N) p.out[orow * p.N + n] = p.weights != nullptr ? w * total[i][j] : total[i][j];
    }
  }
}

// ---- pair_gemv: the few-token path (decode) ---------------------------------------------------
// C[s, n] = sum_k A[row(s), k] * B_e[n, k] for tiles of at most kGemvRows rows, B read as [N, K]
// rows (k contiguous: x @ W^T). One warp per output n: it streams weight row n of expert e once in
// 16-byte packs and dots it with every row of the tile (those rows are small and stay in L1), so an
// expert's weights are read once per tile -- once per call when few tokens chose it.
// Gated = true fuses the gated activation: the warp streams gate row n and up row Im + n together
// and writes h[s, n] = act(g) * u (N = Im, B_e = [G_e; U_e]).
constexpr int kGemvRows = 8, kGemvWarps = 8;

template <typename TA, typename TB, typename Acc>
struct PairGemv {
  const TA* a;          // A rows: a + row * K
  bool a_by_token;      // row = sorted_pair[s] / slots (else row = s)
  const TB* b;          // expert e's matrix at b + e * b_expert_stride, rows of K
  int64_t b_expert_stride;
  int64_t N, K, slots;
  Acc* out;             // [rows, N]: row s, or row pair(s) when out_by_pair
  bool out_by_pair;
  const Acc* weights;   // routing weights by pair id, or nullptr
};

// NE consecutive elements of p (16-byte aligned when Vec) widened to Acc.
template <bool Vec, typename T, typename Acc, int NE>
__device__ __forceinline__ void load_widened(const T* p, Acc (&out)[NE]) {
  if constexpr (Vec) {
    constexpr int PN = cuda::Pack<T>::N;
    static_assert(NE % PN == 0, "whole packs");
#pragma unroll
    for (int q = 0; q < NE / PN; ++q) {
      const cuda::Pack<T> v = cuda::load_pack(p + q * PN);
#pragma unroll
      for (int i = 0; i < PN; ++i) out[q * PN + i] = static_cast<Acc>(v.v[i]);
    }
  } else {
#pragma unroll
    for (int i = 0; i < NE; ++i) out[i] = static_cast<Acc>(p[i]);
  }
}

template <typename TA, typename TB, typename Acc, bool Vec, bool Gated, Activation Act>
__global__ void __launch_bounds__(kGemvWarps * 32) pair_gemv_kernel(PairGemv<TA, TB, Acc> p, GroupLayout g) {
  constexpr int V = Vec ? cuda::Pack<TB>::N : 1;  // elements per lane per step
  const int32_t e = g.tile_expert[blockIdx.x];
  if (e < 0) return;
  const int32_t row0 = g.tile_row0[blockIdx.x], rows = g.tile_rows[blockIdx.x];
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.y) * kGemvWarps + threadIdx.x / 32;
  if (n >= p.N) return;
  const TA* arow[kGemvRows];
#pragma unroll
  for (int r = 0; r < kGemvRows; ++r) {
    const int64_t s = row0 + min(r, rows - 1);  // rows past the tile repeat the last one, unused
    arow[r] = p.a + (p.a_by_token ? g.sorted_pair[s] / p.slots : s) * p.K;
  }
  const TB* b = p.b + int64_t(e) * p.b_expert_stride;
  const TB* bg = b + n * p.K;                      // gate row (or the only row)
  const TB* bu = Gated ? b + (p.N + n) * p.K : bg;  // up row
  Acc acc_g[kGemvRows] = {}, acc_u[kGemvRows] = {};
#pragma unroll 2
  for (int64_t k = int64_t(lane) * V; k < p.K; k += 32 * V) {
    Acc wg[V], wu[V];
    load_widened<Vec>(bg + k, wg);
    if constexpr (Gated) load_widened<Vec>(bu + k, wu);
#pragma unroll
    for (int r = 0; r < kGemvRows; ++r) {
      if (r < rows) {
        Acc av[V];
        load_widened<Vec && (V * sizeof(TA)) % 16 == 0>(arow[r] + k, av);
#pragma unroll
        for (int i = 0; i < V; ++i) {
          acc_g[r] = fma(av[i], wg[i], acc_g[r]);
          if constexpr (Gated) acc_u[r] = fma(av[i], wu[i], acc_u[r]);
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kGemvRows; ++r) {
    if (r >= rows) break;  // uniform over the warp
    const Acc vg = cuda::warp_sum(acc_g[r]);
    Acc v = vg;
    if constexpr (Gated) v = cuda::activate<Act>(vg) * cuda::warp_sum(acc_u[r]);
    if (lane == 0) {
      const int64_t s = row0 + r;
      const int64_t pair = g.sorted_pair[s];
      const int64_t orow = p.out_by_pair ? pair : s;
      p.out[orow * p.N + n] = p.weights != nullptr ? p.weights[pair] * v : v;
    }
  }
}

// ---- weight_grad_gemm -------------------------------------------------------------------------
// C_e[m, n] = sum over sorted positions s of expert e of A_s[m] * B_s[n], rounded to TO;
// A_s = a + row_a(s) * M, B_s = b + row_b(s) * N, rows by token or by sorted position.
template <typename TA, typename TB, typename TO>
struct WeightGradGemm {
  const TA* a;
  bool a_by_token;
  const TB* b;
  bool b_by_token;
  int64_t M, N, slots;
  TO* out;  // [E, M, N]
};

template <typename TA, typename TB, typename TO, typename Acc>
__global__ void __launch_bounds__(kGemmThreads) weight_grad_gemm_kernel(WeightGradGemm<TA, TB, TO> p, GroupLayout g,
                                                                        int64_t m_tiles) {
  const int64_t e = blockIdx.x / m_tiles;
  const int64_t m0 = (blockIdx.x % m_tiles) * kBM, n0 = int64_t(blockIdx.y) * kBN;
  const int32_t s0 = g.offsets[e], s1 = g.offsets[e + 1];
  __shared__ Acc As[kBK][kBM + 1];
  __shared__ Acc Bs[kBK][kBN + 1];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  Acc total[4][4] = {};
  for (int32_t kb = s0; kb < s1; kb += kSumBlock) {
    Acc acc[4][4] = {};  // this block's partial sums (see kSumBlock)
    for (int32_t k0 = kb; k0 < s1 && k0 - kb < kSumBlock; k0 += kBK) {  // k0 - kb: no int32 overflow
      // Both tiles: k = tid / 16 (one sorted position), 4 consecutive m (n) from (tid % 16) * 4.
      const int kk = tid / 16, c = (tid % 16) * 4;
      const int32_t s = k0 + kk;
      int64_t ra = -1, rb = -1;
      if (s < s1) {
        const int64_t pair = g.sorted_pair[s];
        ra = p.a_by_token ? pair / p.slots : s;
        rb = p.b_by_token ? pair / p.slots : s;
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        As[kk][c + i] = (ra >= 0 && m0 + c + i < p.M) ? static_cast<Acc>(p.a[ra * p.M + m0 + c + i]) : Acc(0);
        Bs[kk][c + i] = (rb >= 0 && n0 + c + i < p.N) ? static_cast<Acc>(p.b[rb * p.N + n0 + c + i]) : Acc(0);
      }
      __syncthreads();
      tile_fma(As, Bs, tx, ty, acc);
      __syncthreads();
    }
    add_block(total, acc);
  }
  TO* out = p.out + e * p.M * p.N;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + ty + 16 * i;
    if (m >= p.M) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + tx + 16 * j;
      if (n < p.N) out[m * p.N + n] = static_cast<TO>(total[i][j]);
    }
  }
}

// ---- per-token sums over the top_k slots, in slot order --------------------------------------
// out[n, c] = sum_k buf[(n * K + k) * H + c], rounded once to T.
template <typename Acc, typename T>
__global__ void sum_slots_kernel(const Acc* __restrict__ buf, int64_t N, int64_t K, int64_t H, T* __restrict__ out) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < N * H; i += stride) {
    const int64_t n = i / H, c = i % H;
    Acc s = 0;
    for (int64_t k = 0; k < K; ++k) s += buf[(n * K + k) * H + c];
    out[i] = static_cast<T>(s);
  }
}

// ---- elementwise pieces --------------------------------------------------------------------
// h[s, j] = act(gu[s, j]) * gu[s, Im + j] (the forward's gated activation), computed in Acc and
// stored as HT (Acc, or bf16/fp16 for the tensor-core down projection).
template <Activation Act, typename Acc, typename HT>
__global__ void gated_rows_kernel(const Acc* __restrict__ gu, int64_t P, int64_t Im, HT* __restrict__ h) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < P * Im; i += stride) {
    const int64_t s = i / Im, j = i % Im;
    h[i] = static_cast<HT>(cuda::activate<Act>(gu[s * 2 * Im + j]) * gu[s * 2 * Im + Im + j]);
  }
}

// Backward, one warp per sorted row s (pair = sorted_pair[s], w its routing weight):
//   h = act(g) u;  grad_weights[pair] = <dh_raw, h>;  hw = w h;  dg = w dh_raw u act'(g);  du = w dh_raw act(g)
// gu [P, 2Im] holds g | u on entry and dg | du on exit (each element read, then written, by one lane).
// Low-precision copies for the tensor-core GEMMs (each nullptr when not wanted): dgdu_lp = dg | du (grad_x's
// GEMM) and hw_lp = w h (the down weight gradient's), rounded to DT.
template <Activation Act, typename Acc, typename WT, typename DT>
__global__ void expert_grad_rows_kernel(Acc* __restrict__ gu, const Acc* __restrict__ dh, const Acc* __restrict__ w,
                                        const int32_t* __restrict__ sorted_pair, int64_t P, int64_t Im,
                                        Acc* __restrict__ hw, WT* __restrict__ grad_w, DT* __restrict__ dgdu_lp,
                                        DT* __restrict__ hw_lp) {
  const int lane = threadIdx.x % 32;
  const int64_t s = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  if (s >= P) return;
  const int64_t pair = sorted_pair[s];
  const Acc wi = w[pair];
  Acc* g_row = gu + s * 2 * Im;
  Acc* u_row = g_row + Im;
  const Acc* d_row = dh + s * Im;
  Acc dot = 0;
  for (int64_t j = lane; j < Im; j += 32) {
    const Acc g = g_row[j], u = u_row[j], d = d_row[j];
    Acc a, da;
    cuda::activate_and_grad<Act>(g, a, da);
    const Acc h = a * u;
    dot = fma(d, h, dot);
    const Acc hwv = h * wi;
    if (hw != nullptr) hw[s * Im + j] = hwv;
    if (hw_lp != nullptr) hw_lp[s * Im + j] = static_cast<DT>(hwv);
    const Acc dhw = d * wi;
    const Acc dg = dhw * u * da, du = dhw * a;
    g_row[j] = dg;
    u_row[j] = du;
    if (dgdu_lp != nullptr) {
      dgdu_lp[s * 2 * Im + j] = static_cast<DT>(dg);
      dgdu_lp[s * 2 * Im + Im + j] = static_cast<DT>(du);
    }
  }
  dot = cuda::warp_sum(dot);
  if (lane == 0) grad_w[pair] = static_cast<WT>(dot);
}

// expert_grad_rows_kernel over the P sorted rows, grad_w [N, K] in T or float32 (the backward's two
// precisions of the routing-weight gradient); gu, dh, w, hw as the kernel's, in Acc.
template <typename T, typename Acc>
void launch_expert_grad_rows(Activation act, Acc* gu, const Acc* dh, const Acc* w, const int32_t* sorted_pair,
                             int64_t P, int64_t Im, Acc* hw, at::Tensor& grad_w, T* dgdu_lp, T* hw_lp) {
  if (P == 0) return;  // an empty grid is a launch error
  GEMMA4_DISPATCH_ACTIVATION(act, Act, [&] {
    auto launch = [&](auto* gw) {
      using WT = std::remove_pointer_t<decltype(gw)>;
      expert_grad_rows_kernel<Act, Acc, WT, T><<<cuda::ceil_div<int64_t>(P * 32, 256), 256, 0, cuda::stream()>>>(
          gu, dh, w, sorted_pair, P, Im, hw, gw, dgdu_lp, hw_lp);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (grad_w.scalar_type() == c10::CppTypeToScalarType<T>::value) launch(grad_w.mutable_data_ptr<T>());
    else launch(grad_w.mutable_data_ptr<float>());
  });
}

}  // namespace gemma4::moe_cuda
