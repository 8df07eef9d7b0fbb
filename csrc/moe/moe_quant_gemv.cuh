// The quantized MoE experts at few tokens on CUDA (moe_experts_quant_cuda.cu): two grouped GEMVs over the
// experts' packed weights (gemma4::qgemm's layout, quant/qgemm_problem.h) that read the tiles of pairs from the
// device (moe_cuda.cuh: group_pairs_kernel), so that a call never waits on the host and can be captured in a CUDA
// graph. Reference: moe_experts_quant in python/gemma4/ops/reference.py.
//
//   gate/up: h[s, j] = T(act(T(g)) * T(u)),  g = x[token(s)] . dequant(G_e)[j],  u = x[token(s)] . dequant(U_e)[j]
//   down:    y_pair[pair(s), c] = w[pair(s)] * float(T(h[s] . dequant(D_e)[c]))
// for the sorted positions s of each tile of expert e (T: x's dtype); launch_sum_slots then adds each token's
// slots. The roundings are the composed path's (moe_experts_quant_composed.cpp: qgemm's outputs in T,
// gated_activation's in T, the routed sum in fp32, rounded once).
//
// One warp per output row (gate row j and up row Im + j together), kQWarps rows a block, one block column per
// tile. Lane l takes the 32-weight runs l, l + 32, ... of its rows: a run is 16 bytes (int4: byte i holds weights
// i and i + 16 in its low and high nibble, as level + 8) or 32 (int8), its levels are converted exactly to fp32
// (the float 2^23 + u, minus 2^23 + 8 or + 128), dotted with the run's 32 activations of each pair of the tile in
// fp32, and each run's sum is scaled once by its group's scale. A tile's activation rows (at most kQRows rows of
// x or h) stay in L1; an expert's weights are read once per tile, at decode once per call.
#pragma once
#include <cstdint>

#include "common/activation_math.h"  // Activation
#include "common/cuda_activation.cuh"
#include "common/cuda_reduce.cuh"
#include "common/cuda_vec.cuh"
#include "moe/moe_cuda.cuh"
#include "quant/qgemm_cuda.cuh"  // scale_to_float

namespace gemma4::moe_cuda {

constexpr int kQRows = 8;   // pairs a tile (group_pairs' BM)
constexpr int kQWarps = 8;  // output rows a block

struct QuantPairGemv {
  const void* a;          // activation rows of K values in T: x rows by token, or h rows by sorted position
  bool a_by_token;
  const uint8_t* qw;      // expert e's packed rows at qw + e * expert_bytes, row_bytes each
  const void* scales;     // [E, bank rows, G] in S
  int64_t expert_bytes, row_bytes;
  int rows;               // output rows: Im for gate/up (rows j and Im + j of the bank), H for down
  int K, G, runs_per_scale, slots;
  void* out;              // gate/up: h [P, Im] in T by sorted position; down: y_pair [P, H] fp32 by pair id
  const float* weights;   // down: the routing weights by pair id
  Activation act;         // gate/up
};

// Half H (0 or 1) of one run's levels as exact floats: weights 16 H .. 16 H + 15. v holds the run: 16 bytes
// (int4) or 32 (int8, two uint4).
template <int BITS>
__device__ __forceinline__ void half_levels(const uint4 (&v)[BITS / 4], int H, float (&f)[16]) {
  const uint32_t* w = reinterpret_cast<const uint32_t*>(v);
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      if constexpr (BITS == 4) {  // byte 4j + b: weight 4j + b (low nibble), 16 + 4j + b (high)
        f[4 * j + b] = __uint_as_float(0x4B000000u | ((w[j] >> (8 * b + 4 * H)) & 0xFu)) - 8388616.0f;
      } else {  // byte 16 H + 4j + b, signed; q + 128 in the mantissa
        f[4 * j + b] = __uint_as_float(0x4B000000u | (((w[4 * H + j] >> (8 * b)) & 0xFFu) ^ 0x80u)) - 8388736.0f;
      }
    }
}

template <int BITS>
__device__ __forceinline__ void load_run(const uint8_t* p, uint4 (&v)[BITS / 4]) {
#pragma unroll
  for (int i = 0; i < BITS / 4; ++i) v[i] = __ldg(reinterpret_cast<const uint4*>(p) + i);
}

// sum_i f[i] * x[i] over half a run, two fp32 chains.
__device__ __forceinline__ float half_dot(const float (&f)[16], const float (&x)[16]) {
  float d0 = 0.0f, d1 = 0.0f;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    d0 = fmaf(f[i], x[i], d0);
    d1 = fmaf(f[8 + i], x[8 + i], d1);
  }
  return d0 + d1;
}

// Grid (max_tiles, ceil(rows / kQWarps)), kQWarps warps. GATED: the gate/up kernel, else down. Every pointer the
// loads use is 16-byte aligned (the host checks x and the banks; h is its own allocation).
template <typename T, typename S, int BITS, bool GATED>
__global__ void __launch_bounds__(kQWarps * 32) quant_pair_gemv_kernel(const QuantPairGemv p, const GroupLayout g) {
  const int32_t e = g.tile_expert[blockIdx.x];
  if (e < 0) return;
  const int32_t row0 = g.tile_row0[blockIdx.x], nrows = g.tile_rows[blockIdx.x];
  const int lane = threadIdx.x % 32;
  const int j = blockIdx.y * kQWarps + threadIdx.x / 32;  // output row
  if (j >= p.rows) return;
  constexpr int RB = BITS == 4 ? 16 : 32;  // bytes a run
  const uint8_t* wg = p.qw + e * p.expert_bytes + int64_t(j) * p.row_bytes;
  const uint8_t* wu = wg + int64_t(p.rows) * p.row_bytes;  // gate/up: up row Im + j
  const int bank_rows = GATED ? 2 * p.rows : p.rows;
  const S* sg = static_cast<const S*>(p.scales) + (int64_t(e) * bank_rows + j) * p.G;
  const S* su = sg + int64_t(p.rows) * p.G;
  const T* arow[kQRows];
#pragma unroll
  for (int r = 0; r < kQRows; ++r) {
    const int64_t s = row0 + min(r, nrows - 1);  // rows past the tile repeat the last one, unused
    arow[r] = static_cast<const T*>(p.a) + (p.a_by_token ? g.sorted_pair[s] / p.slots : s) * int64_t(p.K);
  }
  float acc_g[kQRows] = {}, acc_u[kQRows] = {};
  const int runs = p.K / 32;
  for (int run = lane; run < runs; run += 32) {
    uint4 vg[BITS / 4], vu[BITS / 4];
    load_run<BITS>(wg + int64_t(run) * RB, vg);
    if constexpr (GATED) load_run<BITS>(wu + int64_t(run) * RB, vu);
    const int si = run / p.runs_per_scale;
    const float scg = quant_cuda::scale_to_float(sg[si]);
    const float scu = GATED ? quant_cuda::scale_to_float(su[si]) : 0.0f;
    // The run in two halves of 16 weights, each pair's run sum scaled once (whole runs took 159-173 registers
    // a thread in the gate/up kernel, halves 121-128).
    float rg[kQRows] = {}, ru[kQRows] = {};
#pragma unroll
    for (int H = 0; H < 2; ++H) {
      float fg[16], fu[16];
      half_levels<BITS>(vg, H, fg);
      if constexpr (GATED) half_levels<BITS>(vu, H, fu);
#pragma unroll
      for (int r = 0; r < kQRows; ++r) {
        if (r < nrows) {  // uniform over the block
          float xv[16];
          load_widened<true>(arow[r] + run * 32 + 16 * H, xv);
          rg[r] += half_dot(fg, xv);
          if constexpr (GATED) ru[r] += half_dot(fu, xv);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kQRows; ++r) {
      acc_g[r] = fmaf(rg[r], scg, acc_g[r]);
      if constexpr (GATED) acc_u[r] = fmaf(ru[r], scu, acc_u[r]);
    }
  }
#pragma unroll
  for (int r = 0; r < kQRows; ++r) {
    if (r >= nrows) break;  // uniform over the warp
    const float vg = cuda::warp_sum(acc_g[r]);
    if constexpr (GATED) {
      const float vu = cuda::warp_sum(acc_u[r]);
      if (lane == 0) {
        // qgemm rounds gate and up to T; gated_activation computes in fp32 from them and rounds once
        const float gt = static_cast<float>(static_cast<T>(vg)), ut = static_cast<float>(static_cast<T>(vu));
        const float h = p.act == Activation::Silu ? cuda::activate<Activation::Silu, cuda::kFastExpFor<T>>(gt) * ut
                                                  : cuda::activate<Activation::GeluTanh, cuda::kFastExpFor<T>>(gt) * ut;
        static_cast<T*>(p.out)[int64_t(row0 + r) * p.rows + j] = static_cast<T>(h);
      }
    } else if (lane == 0) {
      const int64_t pair = g.sorted_pair[row0 + r];
      // qgemm rounds y to T; the routed sum is fp32
      static_cast<float*>(p.out)[pair * p.rows + j] = p.weights[pair] * static_cast<float>(static_cast<T>(vg));
    }
  }
}

}  // namespace gemma4::moe_cuda
