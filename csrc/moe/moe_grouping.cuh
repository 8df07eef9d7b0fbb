// Host side of the grouping of (token, slot) pairs by expert (moe_cuda.cuh: group_pairs_kernel), shared by the
// MoE expert ops on CUDA (moe_experts_cuda.cu, moe_experts_quant_cuda.cu): the device buffers of one grouping,
// its limits, the per-token sum over the slots that ends every forward, and the elementwise kernels' grid.
#pragma once
#include <algorithm>
#include <cstdint>

#include <ATen/ops/empty.h>

#include "common/cuda_launch.cuh"
#include "moe/moe_cuda.cuh"

namespace gemma4::moe_cuda {

// The grouping kernel's limits (its shared-memory counters, int32 positions) for E experts and P pairs.
inline bool within_cuda_limits(int64_t E, int64_t P) { return E <= kMaxExperts && P < (int64_t(1) << 31); }

// The same limits as errors; weights names the expert bank.
inline void check_cuda_limits(const char* op, int64_t E, int64_t P, const char* weights) {
  TORCH_CHECK(E <= kMaxExperts, op, ": at most ", kMaxExperts, " experts on CUDA (", weights, ".size(0)), got ", E);
  TORCH_CHECK(P < (int64_t(1) << 31), op, ": at most 2^31 - 1 (token, slot) pairs on CUDA, got ", P);
}

// Device buffers of one grouping, built by group_pairs_kernel on the current stream.
struct Grouping {
  at::Tensor storage;
  GroupLayout layout;
};

// indices: int64 [N, K] on the device; tiles of at most BM pairs of one expert.
inline Grouping group_pairs(const at::Tensor& indices, int64_t E, int BM) {
  const int64_t P = indices.numel();
  Grouping g;
  g.layout.BM = BM;
  g.layout.max_tiles = max_tiles_for(P, E, BM);
  g.storage = at::empty({E + 1 + P + 3 * g.layout.max_tiles}, indices.options().dtype(at::kInt));
  int32_t* base = g.storage.mutable_data_ptr<int32_t>();
  g.layout.offsets = base;
  g.layout.sorted_pair = base + E + 1;
  g.layout.tile_expert = g.layout.sorted_pair + P;
  g.layout.tile_row0 = g.layout.tile_expert + g.layout.max_tiles;
  g.layout.tile_rows = g.layout.tile_row0 + g.layout.max_tiles;
  group_pairs_kernel<<<1, kGroupThreads, 0, cuda::stream()>>>(indices.const_data_ptr<int64_t>(), P, E, g.layout);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return g;
}

// Blocks of 256 threads for an elementwise kernel over n values (grid-stride beyond 16 blocks an SM).
inline unsigned elementwise_blocks(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>(cuda::ceil_div<int64_t>(std::max<int64_t>(n, 1), 256),
                                                 int64_t(cuda::sm_count()) * 16));
}

// out[n, c] = sum over the K slots of buf[(n * K + k) * H + c] in slot order, rounded once to T.
template <typename Acc, typename T>
void launch_sum_slots(const Acc* buf, int64_t N, int64_t K, int64_t H, T* out) {
  const int64_t blocks = std::min<int64_t>(cuda::ceil_div<int64_t>(N * H, 256), int64_t(cuda::sm_count()) * 16);
  sum_slots_kernel<Acc, T><<<static_cast<unsigned>(blocks), 256, 0, cuda::stream()>>>(buf, N, K, H, out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace gemma4::moe_cuda
