// Experiment record, not built: the first copy-engine GEMV (2026-12-04), one 1-D cp.async.bulk per weight row and
// stage (512 bytes) and one per row for its scales (64 bytes). Measured copy-bound (dev/cuda/experiments/README.md);
// replaced by 2-D tensor copies in csrc/quant/qgemv_bulk.cuh. Its host side was qgemv_bulk() without the two
// tile_map_2d calls. The bulk_*.patch files apply to this file as csrc/quant/qgemv_bulk.cuh.
// The qgemm GEMV (M <= 32 rows of x) with the weights brought in by the copy engine: one producer warp issues
// bulk copies (cp.async.bulk, sm_90) of whole row segments into a ring of shared-memory stages, and consumer
// warps multiply them with mma.sync. Reference: gemma4.ops.reference.qgemm; helpers and exactness:
// qgemm_cuda.cuh; fragment order and x layout: the ring GEMV's (qgemv_ring.cuh: ring_offset, its prep kernel).
//
// Why: the register-loading GEMV reaches 42% of the H200's DRAM peak on the 31B gate_up shape at M = 1, bound
// by the loads it can keep in flight per SM (Nsight: 56% of cycles with no eligible warp; 16 of 76 registers
// hold weights in flight). A bulk copy moves a whole 512-byte segment of a weight row per instruction, from L2
// straight to shared memory: no registers, no L1 miss slots, and the bytes in flight per SM are bounded only by
// the stages (kBulkStages - 1 of them, ~50 KB a block). Each row's segments are contiguous, so DRAM sees long
// runs of one row instead of 64-byte pieces of 32 rows.
//
// Work: a block owns kBulkRows = 32 weight rows (two 16-row MMA tiles) over a slice of K (a "part" when the
// rows are too few to fill the GPU: blockIdx.y). A stage is SR runs of each of the 32 rows (512 bytes of
// weights a row) and the scales of those runs. Lane i of the producer warp copies row i. The consumer warps
// take the stage's runs in turn (run j to warp j % kBulkConsumers) and keep their own sums of the same 32 rows,
// added in warp order at the end (store_fragment_sums): deterministic. Two mbarriers per stage: `full`
// (the copies' bytes have landed) and `empty` (every consumer warp is done with the buffer).
#pragma once
#include <cstdint>

#include "quant/qgemm_cuda.cuh"
#include "quant/qgemm_tc.cuh"    // tc_ldsm_x4
#include "quant/qgemv_ring.cuh"  // ring_offset, qgemv_ring_prep_kernel (x in the same fragment order)

namespace gemma4::quant_cuda {

constexpr int kBulkRows = 32;       // weight rows per block: two 16-row MMA tiles
constexpr int kBulkConsumers = 4;   // consumer warps; one more warp issues the copies
constexpr int kBulkStages = 4;      // ring depth: kBulkStages - 1 stages in flight while one is used
constexpr int kBulkSegment = 512;   // weight bytes of each row per stage
constexpr int kBulkRowStride = kBulkSegment + 16;  // ldmatrix's 8 rows on distinct 16-byte bank groups
constexpr int kBulkXAhead = 4;      // runs whose x fragments a consumer loads ahead (from L2)

template <int BITS>
constexpr int bulk_runs() { return kBulkSegment / (BITS == 4 ? 16 : 32); }  // runs per stage
// Scale bytes of one row per stage, at most (one scale per run).
template <int BITS, typename S>
constexpr int bulk_scale_stride() { return bulk_runs<BITS>() * int(sizeof(S)); }
template <int BITS, typename S>
constexpr int bulk_stage_bytes() { return kBulkRows * (kBulkRowStride + bulk_scale_stride<BITS, S>()); }
constexpr int kBulkBarrierBytes = 128;  // 2 kBulkStages mbarriers, then the stages (16-byte aligned)
template <int BITS, typename S>
constexpr int bulk_smem() { return kBulkBarrierBytes + kBulkStages * bulk_stage_bytes<BITS, S>(); }

struct BulkArgs {
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
// `bytes` (a multiple of 16) from global memory to shared memory (both 16-byte aligned), counted on `bar`.
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                   smem_addr(dst)),
               "l"(src), "r"(bytes), "r"(smem_addr(bar))
               : "memory");
}

// Grid: (row groups of kBulkRows weight rows, parts); block: kBulkConsumers + 1 warps.
// Built for every architecture of the build, run only on sm_90 and later (bulk_gemv_fits checks the device):
// the copies and the mbarriers' transaction counts are sm_90 instructions.
template <typename MT, typename S, int BITS, int NT, typename T>
__global__ void __launch_bounds__((kBulkConsumers + 1) * 32) qgemv_bulk_kernel(const BulkArgs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  __trap();
#else
  constexpr int SR = bulk_runs<BITS>(), SCS = bulk_scale_stride<BITS, S>();
  constexpr int STAGE = bulk_stage_bytes<BITS, S>(), WBYTES = kBulkRows * kBulkRowStride;
  constexpr int RB = BITS == 4 ? 16 : 32;  // bytes per run
  extern __shared__ __align__(16) uint8_t smem[];
  uint64_t* full = reinterpret_cast<uint64_t*>(smem);
  uint64_t* empty = full + kBulkStages;
  uint8_t* stages = smem + kBulkBarrierBytes;
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
    // Producer: lane i copies row n0 + i's weight segment and its scales (rows past N copy row N - 1: junk
    // sums, never stored). Every row copies the same byte counts, so a stage expects 32 times one row's.
    const int64_t n = min(n0 + lane, a.N - 1);
    const uint8_t* wsrc = a.qw + n * (a.K * BITS / 8);
    const uint8_t* ssrc = static_cast<const uint8_t*>(a.scales) + n * a.G * int64_t(sizeof(S));
    const int row_scale_bytes = a.G * int(sizeof(S));
    for (int st = 0; st < nstages; ++st) {
      const int slot = st % kBulkStages;
      if (st >= kBulkStages) mbar_wait(&empty[slot], (st / kBulkStages - 1) & 1);
      const int r0 = c0 + st * SR, r1 = min(c1, r0 + SR);
      const int wbytes = (r1 - r0) * RB;
      // The stage's scales, from a 16-byte boundary (r0 / runs_per_scale * sizeof(S) is one: SR / runs_per_scale
      // scales are a multiple of 16 bytes) to the next one past its last scale, within the row.
      const int sb0 = r0 / a.runs_per_scale * int(sizeof(S));
      const int sb1 = min(row_scale_bytes, ((r1 - 1) / a.runs_per_scale * int(sizeof(S)) + int(sizeof(S)) + 15) & ~15);
      if (lane == 0) mbar_arrive_expect_tx(&full[slot], kBulkRows * uint32_t(wbytes + sb1 - sb0));
      __syncwarp();
      uint8_t* buf = stages + slot * STAGE;
      bulk_copy(buf + lane * kBulkRowStride, wsrc + int64_t(r0) * RB, wbytes, &full[slot]);
      bulk_copy(buf + WBYTES + lane * SCS, ssrc + sb0, sb1 - sb0, &full[slot]);
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
    // The x fragments of this warp's next kBulkXAhead runs, in a ring of registers (indexed by compile-time
    // constants only: the loop below is unrolled by kBulkXAhead).
    uint4 xq[kBulkXAhead][NT];
    const int stride = kBulkConsumers;  // runs between two of this warp's runs
    const auto run_of = [&](int i) {  // this warp's i-th run overall: stage i / per, run within it
      constexpr int per = SR / kBulkConsumers;
      return c0 + (i / per) * SR + (i % per) * stride + warp;
    };
    static_assert(SR % kBulkConsumers == 0, "every consumer takes the same number of runs a stage");
    static_assert((SR / kBulkConsumers) % kBulkXAhead == 0, "the x ring's slot of a run is the same in every stage");
    constexpr int per_stage = SR / kBulkConsumers;
    const int total = nstages * per_stage;
#pragma unroll
    for (int q = 0; q < kBulkXAhead; ++q) load_x(run_of(q), xq[q]);
    int slot = 0;
    uint32_t parity = 0;
    for (int i0 = 0; i0 < total; i0 += per_stage) {
      mbar_wait(&full[slot], parity);
      const uint8_t* buf = stages + slot * STAGE;
      const int r0 = c0 + (i0 / per_stage) * SR;
#pragma unroll
      for (int jj = 0; jj < per_stage; ++jj) {
        const int j = jj * stride + warp;  // run within the stage
        const int q = jj % kBulkXAhead;
        uint4 xb[NT];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) xb[nt] = xq[q][nt];
        load_x(run_of(i0 + jj + kBulkXAhead), xq[q]);
        if (r0 + j >= c1) continue;  // the slice's last stage may hold fewer runs
        uint32_t w[2][4];  // [piece of the run][rows g, g+8, g+16, g+24]
#pragma unroll
        for (int p = 0; p < (BITS == 4 ? 1 : 2); ++p)
          tc_ldsm_x4(w[p], buf + lane * kBulkRowStride + 16 * (BITS == 4 ? j : 2 * j + p));
        float sc[4];
        const int sj = j / a.runs_per_scale;
#pragma unroll
        for (int h = 0; h < 4; ++h)
          sc[h] = scale_to_float(*reinterpret_cast<const S*>(buf + WBYTES + (g + 8 * h) * SCS + sj * int(sizeof(S))));
#pragma unroll
        for (int rt = 0; rt < 2; ++rt) {
          float d[NT][4];
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) d[nt][0] = d[nt][1] = d[nt][2] = d[nt][3] = 0.0f;
#pragma unroll
          for (int s = 0; s < 2; ++s) {
            uint32_t af[4];  // {row g, row g+8} x {slots 2t.., 2t+8..}
            if constexpr (BITS == 4) {
              af[0] = int4_pair<MT>(w[0][2 * rt], 8 * s);
              af[1] = int4_pair<MT>(w[0][2 * rt + 1], 8 * s);
              af[2] = int4_pair<MT>(w[0][2 * rt], 8 * s + 4);
              af[3] = int4_pair<MT>(w[0][2 * rt + 1], 8 * s + 4);
            } else {
              af[0] = int8_pair<MT>(w[s][2 * rt], 0);
              af[1] = int8_pair<MT>(w[s][2 * rt + 1], 0);
              af[2] = int8_pair<MT>(w[s][2 * rt], 1);
              af[3] = int8_pair<MT>(w[s][2 * rt + 1], 1);
            }
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
              mma16816<MT>(d[nt], af, s == 0 ? xb[nt].x : xb[nt].z, s == 0 ? xb[nt].y : xb[nt].w);
          }
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
            acc[rt][nt][0] = fmaf(sc[2 * rt], d[nt][0], acc[rt][nt][0]);
            acc[rt][nt][1] = fmaf(sc[2 * rt], d[nt][1], acc[rt][nt][1]);
            acc[rt][nt][2] = fmaf(sc[2 * rt + 1], d[nt][2], acc[rt][nt][2]);
            acc[rt][nt][3] = fmaf(sc[2 * rt + 1], d[nt][3], acc[rt][nt][3]);
          }
        }
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
