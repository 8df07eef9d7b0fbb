// The qgemm GEMV (M <= 32 rows of x) with the weights brought in by the copy engine (TMA): one thread of a
// producer warp issues tensor copies (cp.async.bulk.tensor.2d, sm_90) of 32-row weight tiles into a ring of
// shared-memory stages, and consumer warps multiply them with mma.sync. Reference: gemma4.ops.reference.qgemm;
// helpers and exactness: qgemm_cuda.cuh; fragment order and x layout: the ring GEMV's (qgemv_ring.cuh:
// ring_offset, its prep kernel).
//
// Why: the register-loading GEMV reaches 42% of the H200's DRAM peak on the 31B gate_up shape at M = 1, bound
// by the loads it can keep in flight per SM (Nsight: 56% of cycles with no eligible warp; 16 of 76 registers
// hold weights in flight). The copy engine moves a 32-row x 128-byte tile per instruction, from L2 straight to
// shared memory: no registers, no L1 miss slots, and the bytes in flight per SM are bounded only by the stages.
// (One 1-D bulk copy per row and stage, 512 + 64 bytes each, was copy-bound at ~2.2 TB/s even with no math:
// dev/cuda/experiments/README.md.) The tiles land in the 128-byte swizzle, so that ldmatrix's eight rows fall
// on distinct bank groups; rows past N and bytes past K arrive as zeros.
//
// Work: a block owns kBulkRows = 32 weight rows (two 16-row MMA tiles) over a slice of K (a "part" when the
// rows are too few to fill the GPU: blockIdx.y). A stage is SR runs of each of the 32 rows (kBulkSegment bytes
// of weights a row, in 128-byte tiles) and one tile of the scales of those runs. The consumer warps take the
// stage's runs in turn (run j to warp j % kBulkConsumers) and keep their own sums of the same 32 rows, added in
// warp order at the end (store_fragment_sums): deterministic. Two mbarriers per stage: `full` (the copies'
// bytes have landed) and `empty` (every consumer warp is done with the buffer).
#pragma once
#include <cstdint>

#include <cuda.h>  // CUtensorMap

#include "quant/qgemm_cuda.cuh"
#include "quant/qgemm_tc.cuh"    // tc_ldsm_x4
#include "quant/qgemv_ring.cuh"  // ring_offset, qgemv_ring_prep_kernel (x in the same fragment order)

namespace gemma4::quant_cuda {

constexpr int kBulkRows = 32;       // weight rows per block: two 16-row MMA tiles
constexpr int kBulkConsumers = 8;   // consumer warps; one more warp issues the copies
constexpr int kBulkStages = 3;      // ring depth: kBulkStages - 1 stages in flight while one is used
constexpr int kBulkSegment = 512;   // weight bytes of each row per stage
constexpr int kBulkBox = 128;       // bytes of a row per weight tile: the 128-byte swizzle's span
constexpr int kBulkXAhead = 2;      // runs whose x fragments a consumer loads ahead (from L2), at most

template <int BITS>
constexpr int bulk_runs() { return kBulkSegment / (BITS == 4 ? 16 : 32); }  // runs per stage
constexpr int kBulkWeightBytes = kBulkRows * kBulkSegment;                   // of a stage
// Scale bytes of a stage, at most (one scale per run), rounded up to keep every stage 1024-byte aligned (the
// swizzle's period).
template <int BITS, typename S>
constexpr int bulk_stage_bytes() {
  return kBulkWeightBytes + (kBulkRows * bulk_runs<BITS>() * int(sizeof(S)) + 1023) / 1024 * 1024;
}
constexpr int kBulkBarrierBytes = 128;  // 2 kBulkStages mbarriers
// The barriers, then up to 1023 bytes to a 1024-byte boundary, then the stages.
template <int BITS, typename S>
constexpr int bulk_smem() { return kBulkBarrierBytes + 1024 + kBulkStages * bulk_stage_bytes<BITS, S>(); }

struct BulkArgs {
  CUtensorMap wmap;    // the packed weight as [N rows][row bytes] uint8, 32 x kBulkBox tiles, 128-byte swizzle
  CUtensorMap smap;    // the scales as [N rows][G] (2- or 4-byte elements), 32 x (SR / runs_per_scale) tiles
  const uint8_t* qw;   // [N, K/2] (int4) or [N, K] (int8), 16-byte aligned
  const void* scales;  // [N, G] in S, 16-byte aligned, G * sizeof(S) a multiple of 16 (bulk_gemv_fits)
  const uint4* xp;     // x in the ring GEMV's fragment order: [runs][NT][32 lanes] x 16 bytes
  const void* bias;    // [N] in T, or nullptr
  void* y;             // [M, N] in T
  float* partial;      // [parts, M, N] when parts > 1
  int M, N;
  int64_t K;
  int G;               // scales per row
  int group;           // weights per scale
  int runs_per_scale;  // group / 32
  int scale_shift;     // log2(runs_per_scale): 0, 1 or 2
  int runs;            // K / 32
  int runs_per_part;   // a multiple of the stage's runs
  int parts;           // blocks per row group: 1 writes y, more write partial
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void mbar_init(uint64_t* bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count));
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(smem_addr(bar)) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n}\n" ::"r"(smem_addr(bar)),
               "r"(bytes)
               : "memory");
}
// Waits until the phase of parity `parity` of the barrier has completed.
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done = 0;
  while (!done) {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(smem_addr(bar)), "r"(parity)
        : "memory");
  }
}
// The tile of `map` at element coordinates (x, y) into shared memory (1024-byte aligned for the swizzle),
// counted on `bar`. Elements outside the tensor arrive as zeros.
__device__ __forceinline__ void tensor_copy_2d(void* dst, const CUtensorMap* map, int x, int y, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
          smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(x), "r"(y), "r"(smem_addr(bar))
      : "memory");
}

// Grid: (row groups of kBulkRows weight rows, parts); block: kBulkConsumers + 1 warps.
// Built for every architecture of the build, run only on sm_90 and later (bulk_gemv_fits checks the device):
// the copies and the mbarriers' transaction counts are sm_90 instructions.
template <typename MT, typename S, int BITS, int NT, typename T>
__global__ void __launch_bounds__((kBulkConsumers + 1) * 32) qgemv_bulk_kernel(const __grid_constant__ BulkArgs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  __trap();
#else
  constexpr int SR = bulk_runs<BITS>(), STAGE = bulk_stage_bytes<BITS, S>();
  constexpr int RB = BITS == 4 ? 16 : 32;  // bytes per run
  extern __shared__ __align__(16) uint8_t smem[];
  uint64_t* full = reinterpret_cast<uint64_t*>(smem);
  uint64_t* empty = full + kBulkStages;
  uint8_t* stages = smem + kBulkBarrierBytes;
  stages += (1024 - smem_addr(stages) % 1024) % 1024;
  const int scs = SR / a.runs_per_scale * int(sizeof(S));  // scale bytes of a row per stage
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4;
  const int n0 = blockIdx.x * kBulkRows;
  const int c0 = blockIdx.y * a.runs_per_part, c1 = min(a.runs, c0 + a.runs_per_part);
  const int nstages = c1 > c0 ? (c1 - c0 + SR - 1) / SR : 0;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kBulkStages; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], kBulkConsumers);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  float acc[2][NT][4];
#pragma unroll
  for (int rt = 0; rt < 2; ++rt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) acc[rt][nt][0] = acc[rt][nt][1] = acc[rt][nt][2] = acc[rt][nt][3] = 0.0f;

  if (warp == kBulkConsumers) {
    // Producer: one thread issues each stage's weight tiles (the last stage of a slice may need fewer) and its
    // scale tile. Tiles past N or K arrive as zeros and count in full, so a stage expects whole tiles.
    if (lane == 0) {
      for (int st = 0; st < nstages; ++st) {
        const int slot = st % kBulkStages;
        if (st >= kBulkStages) mbar_wait(&empty[slot], (st / kBulkStages - 1) & 1);
        const int r0 = c0 + st * SR, r1 = min(c1, r0 + SR);
        const int tiles = ((r1 - r0) * RB + kBulkBox - 1) / kBulkBox;
        mbar_arrive_expect_tx(&full[slot], uint32_t(tiles * kBulkRows * kBulkBox + kBulkRows * scs));
        uint8_t* buf = stages + slot * STAGE;
        for (int b = 0; b < tiles; ++b)
          tensor_copy_2d(buf + b * kBulkRows * kBulkBox, &a.wmap, r0 * RB + b * kBulkBox, n0, &full[slot]);
        tensor_copy_2d(buf + kBulkWeightBytes, &a.smap, r0 / a.runs_per_scale, n0, &full[slot]);
      }
    }
  } else {
    // Consumer warp `warp`: runs warp, warp + kBulkConsumers, ... of every stage.
    bool x_live[NT];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) x_live[nt] = nt * 8 + g < a.M;
    const auto load_x = [&](int run, uint4 (&xb)[NT]) {
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
        xb[nt] = x_live[nt] && run < c1 ? __ldg(a.xp + (int64_t(run) * NT + nt) * 32 + lane) : make_uint4(0, 0, 0, 0);
    };
    constexpr int per_stage = SR / kBulkConsumers;  // this warp's runs a stage
    static_assert(SR % kBulkConsumers == 0, "every consumer takes the same number of runs a stage");
    const auto run_of = [&](int i) {  // this warp's i-th run of the slice: stage i / per_stage, run j of it
      return c0 + (i / per_stage) * SR + (i % per_stage) * kBulkConsumers + warp;
    };
    // The x fragments of this warp's next XA runs, in a ring of registers indexed by compile-time constants only
    // (the loop below is unrolled by per_stage, a multiple of XA).
    constexpr int XA = per_stage < kBulkXAhead ? per_stage : kBulkXAhead;
    static_assert(per_stage % XA == 0, "the x ring's slot of a run is the same in every stage");
    uint4 xq[XA][NT];
    const int total = nstages * per_stage;
#pragma unroll
    for (int q = 0; q < XA; ++q) load_x(run_of(q), xq[q]);
    int slot = 0;
    uint32_t parity = 0;
    for (int i0 = 0; i0 < total; i0 += per_stage) {
      mbar_wait(&full[slot], parity);
      const uint8_t* buf = stages + slot * STAGE;
      const int r0 = c0 + (i0 / per_stage) * SR;
#pragma unroll
      for (int jj = 0; jj < per_stage; ++jj) {
        const int j = jj * kBulkConsumers + warp;  // run within the stage
        const int q = jj % XA;
        uint4 xb[NT];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) xb[nt] = xq[q][nt];
        load_x(run_of(i0 + jj + XA), xq[q]);
        if (r0 + j >= c1) continue;  // the slice's last stage may hold fewer runs
        uint32_t w[2][4];  // [piece of the run][rows g, g+8, g+16, g+24]
#pragma unroll
        for (int p = 0; p < (BITS == 4 ? 1 : 2); ++p) {
          // 16-byte chunk c of the row segment: tile c / 8, chunk c % 8 of row `lane` there, swizzled by row % 8
          const int c = BITS == 4 ? j : 2 * j + p;
          tc_ldsm_x4(w[p], buf + (c / 8) * kBulkRows * kBulkBox + lane * kBulkBox + ((c % 8) ^ (lane % 8)) * 16);
        }
        float sc[4];
        const int sj = j >> a.scale_shift;  // the run's scale within the stage's
#pragma unroll
        for (int h = 0; h < 4; ++h)
          sc[h] = scale_to_float(
              *reinterpret_cast<const S*>(buf + kBulkWeightBytes + (g + 8 * h) * scs + sj * int(sizeof(S))));
        ring_run_mma<MT, BITS, NT>(w, sc, xb, acc);
      }
      __syncwarp();
      if (lane == 0) mbar_arrive(&empty[slot]);  // this warp is done with the buffer
      if (++slot == kBulkStages) {
        slot = 0;
        parity ^= 1;
      }
    }
  }
  __syncthreads();  // every copy has landed and been read: the stages hold the partial sums now
  store_fragment_sums<T, NT>(acc, reinterpret_cast<float*>(stages), n0, a);
#endif
}

}  // namespace gemma4::quant_cuda
