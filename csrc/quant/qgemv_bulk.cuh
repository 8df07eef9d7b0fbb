// The qgemm GEMV (M <= 32 rows of x) with the weights brought in by the copy engine (TMA): one thread of a
// producer warp issues tensor copies (cp.async.bulk.tensor.3d / .2d, sm_90) of 32-row weight tiles into a ring of
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
// on distinct bank groups; rows past N and bytes past K arrive as zeros. One 3-D copy brings a stage's four
// tiles: the copies alone (no math) took 39.3 us on the 31B gate_up shape against 43.8 with a copy per tile.
//
// Work: a unit is one stage of one row group (RG groups of 32 weight rows, two 16-row MMA tiles each): SR runs of
// each row (bulk_segment bytes of weights a row, in 128-byte tiles) and one tile of the scales of those runs. The
// units, row group by row group, are cut into equal ranges, one a block (qgemm_cuda.cu: plan_bulk_blocks): whole row
// groups or equal K slices of each, or, at two or more column tiles, one range per block the GPU holds at once
// (stream-K), so that every SM gets the same work. The consumer warps take a stage's runs in turn (run j to warp
// j % kBulkConsumers) and keep their own sums; where a block's range leaves a row group, the warps' sums are added
// in warp order (flush_segment) and written to y when the block had the whole row group, else to its slot of a
// workspace, which qgemv_bulk_fixup_kernel adds in block order: deterministic. Two mbarriers per stage: `full` (the
// copies' bytes have landed) and `empty` (every consumer warp is done with the buffer).
#pragma once
#include <cstdint>
#include <cstring>  // memcpy

#include <cuda.h>  // CUtensorMap

#include "common/cuda_pdl.cuh"
#include "quant/copy_engine.cuh"
#include "quant/qgemm_cuda.cuh"
#include "quant/qgemv_ring.cuh"  // ring_offset, qgemv_ring_prep_kernel (x in the same fragment order)

namespace gemma4::quant_cuda {

constexpr int kBulkGroupRows = 32;     // weight rows of a row group: two 16-row MMA tiles
constexpr int kBulkConsumers = 8;      // consumer warps; one more warp issues the copies
constexpr int kBulkStages = 3;         // ring depth: kBulkStages - 1 stages in flight while one is used
constexpr int kBulkWeightBytes = 16384;  // weight bytes of a stage: 32 rows x 512 bytes, or 64 rows x 256
constexpr int kBulkBox = 128;          // bytes of a row per weight tile: the 128-byte swizzle's span
constexpr int kBulkXAhead = 2;         // runs whose x fragments a consumer loads ahead (from L2), at most

// A block owns RG row groups (32 RG weight rows). Every block reads its K slice of x from L2, as many bytes as
// its weights at one column tile and RG = 1; two row groups halve that. The stage keeps its bytes: a row's
// segment of a stage shrinks as the rows grow (qgemm_cuda.cu: bulk_row_groups says where two pay).
template <int RG>
constexpr int bulk_rows() { return kBulkGroupRows * RG; }
template <int RG>
constexpr int bulk_segment() { return kBulkWeightBytes / bulk_rows<RG>(); }  // weight bytes of each row per stage
template <int BITS, int RG>
constexpr int bulk_runs() { return bulk_segment<RG>() / (BITS == 4 ? 16 : 32); }  // runs per stage
// Scale bytes of a stage, at most (one scale per run: rows x runs is the same for every RG), rounded up to keep
// every stage 1024-byte aligned (the swizzle's period).
template <int BITS, typename S>
constexpr int bulk_stage_bytes() {
  return kBulkWeightBytes + (kBulkWeightBytes / (BITS == 4 ? 16 : 32) * int(sizeof(S)) + 1023) / 1024 * 1024;
}
constexpr int kBulkBarrierBytes = 128;  // 2 kBulkStages mbarriers
// Accumulators a lane holds: 2 RG 16-row tiles x NT column tiles x 4.
template <int NT, int RG>
constexpr int bulk_acc() { return 2 * RG * NT * 4; }
// The consumer warps' sums on their way to y (flush_segment): [consumers][accumulators][32 lanes] floats.
template <int NT, int RG>
constexpr int bulk_red_bytes() { return kBulkConsumers * bulk_acc<NT, RG>() * 32 * int(sizeof(float)); }
// The barriers, the sums, then up to 1023 bytes to a 1024-byte boundary, then the stages.
template <int BITS, typename S, int NT, int RG>
constexpr int bulk_smem() {
  return kBulkBarrierBytes + bulk_red_bytes<NT, RG>() + 1024 + kBulkStages * bulk_stage_bytes<BITS, S>();
}

struct BulkArgs {
  CUtensorMap wmap;    // the packed weight as [row bytes / kBulkBox][N rows][kBulkBox] uint8, segment / kBulkBox x
                       // rows x kBulkBox boxes, 128-byte swizzle
  CUtensorMap smap;    // the scales as [N rows][G] (2- or 4-byte elements), rows x (SR / runs_per_scale) tiles
  const uint8_t* qw;   // [N, K/2] (int4) or [N, K] (int8), 16-byte aligned
  const void* scales;  // [N, G] in S, 16-byte aligned, G * sizeof(S) a multiple of 16 (bulk_gemv_fits)
  const uint4* xp;     // x in the ring GEMV's fragment order: [runs][NT][32 lanes] x 16 bytes
  const void* bias;    // [N] in T, or nullptr
  void* y;             // [M, N] in T
  float* partial;      // [blocks][2][M][rows of a row group]: the sums of a block's first and last row groups
                       // when it has only part of them (bulk_slot)
  int M, N;
  int64_t K;
  int G;               // scales per row
  int group;           // weights per scale
  int runs_per_scale;  // group / 32
  int scale_shift;     // log2(runs_per_scale): 0, 1 or 2
  int runs;            // K / 32
  uint32_t stages;     // units (stages) of a row group: ceil(runs / SR)
  uint32_t units;      // row groups x stages
};

// Block b's units are [bulk_first_unit(b), bulk_first_unit(b + 1)); the block holding unit u. 32-bit: a 64-bit
// division is ~20 times the instructions, and these sit at every block's start and in every fixup thread (the
// fixup kernel with 64-bit ones cost ~3 us of 31B down's 29). bulk_gemv_fits keeps units x blocks below 2^32.
__host__ __device__ __forceinline__ uint32_t bulk_first_unit(uint32_t b, uint32_t units, uint32_t blocks) {
  return b * units / blocks;
}
__host__ __device__ __forceinline__ uint32_t bulk_block_of(uint32_t u, uint32_t units, uint32_t blocks) {
  return ((u + 1) * blocks - 1) / units;
}
// Block b's workspace slot for row group rg: 0 for the row group its range starts in, 1 for the one it ends in.
__host__ __device__ __forceinline__ int bulk_slot(uint32_t b, uint32_t rg, const BulkArgs& a, uint32_t blocks) {
  return bulk_first_unit(b, a.units, blocks) / a.stages == rg ? 0 : 1;
}

// ldmatrix.x4 at a shared address (qgemm_tc.cuh: tc_ldsm_x4 takes a generic pointer).
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
// The bits of a scale of type S at a shared address (zero-extended to 32 bits). Volatile like the ldmatrix:
// the copies that wrote it are ordered before it by the mbarrier wait only.
template <typename S>
__device__ __forceinline__ uint32_t lds_scale_bits(uint32_t addr) {
  if constexpr (sizeof(S) == 4) {
    return lds_u32(addr);
  } else {
    uint32_t v;
    asm volatile("ld.shared.u16 %0, [%1];\n" : "=r"(v) : "r"(addr));
    return v;
  }
}
template <typename S>
__device__ __forceinline__ float scale_bits_to_float(uint32_t v) {
  if constexpr (sizeof(S) == 4) {
    return __uint_as_float(v);
  } else {
    const uint16_t b = static_cast<uint16_t>(v);
    S s;
    memcpy(&s, &b, sizeof(S));
    return scale_to_float(s);
  }
}


// The consumer warps' sums of rows n0.. (a segment of a block's units within one row group) added in warp order
// through red, then written to y (+ bias) when the segment is the whole row group, else to the block's workspace
// slot; acc back to zero. Every consumer thread calls it (named barrier 1: the producer warp goes on copying).
// store_fragment_sums (qgemm_cuda.cuh) is the end-of-kernel form of the other GEMVs: a block barrier, one output.
// acc[rt][nt][j] of lane (g, t) belongs to y[m = nt*8 + 2t + (j & 1), n = n0 + rt*16 + g + (j >= 2 ? 8 : 0)].
template <typename T, int NT, int RT>
__device__ __forceinline__ void flush_segment(float (&acc)[RT][NT][4], float* red, int n0, bool whole, int slot,
                                              const BulkArgs& a) {
  constexpr int E = RT * NT * 4, C = kBulkConsumers * 32;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int rt = 0; rt < RT; ++rt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        red[(warp * E + (rt * NT + nt) * 4 + j) * 32 + lane] = acc[rt][nt][j];
        acc[rt][nt][j] = 0.0f;
      }
  asm volatile("bar.sync 1, %0;\n" ::"n"(C) : "memory");
  const T* bias = static_cast<const T*>(a.bias);
  T* y = static_cast<T*>(a.y);
  for (int i = threadIdx.x; i < E * 32; i += C) {
    const int e = i / 32, ln = i % 32, j = e % 4, nt = (e / 4) % NT, rt = e / (4 * NT);
    const int r = rt * 16 + ln / 4 + (j >= 2 ? 8 : 0), n = n0 + r, m = nt * 8 + 2 * (ln % 4) + (j & 1);
    if (n >= a.N || m >= a.M) continue;
    float s = red[i];
#pragma unroll
    for (int w = 1; w < kBulkConsumers; ++w) s += red[w * E * 32 + i];
    if (whole) {
      if (bias != nullptr) s += static_cast<float>(bias[n]);
      y[int64_t(m) * a.N + n] = static_cast<T>(s);
    } else {
      a.partial[((int64_t(blockIdx.x) * 2 + slot) * a.M + m) * (RT * 16) + r] = s;
    }
  }
  asm volatile("bar.sync 1, %0;\n" ::"n"(C) : "memory");  // red is free again
}

// Grid: plan_bulk_blocks's blocks, at most one a unit; block: kBulkConsumers + 1 warps. Launched
// with launch_dependent after the x prep kernel: the copies start at once, the consumers wait for x.
// Built for every architecture of the build, run only on sm_90 and later (bulk_gemv_fits checks the device):
// the copies and the mbarriers' transaction counts are sm_90 instructions.
template <typename MT, typename S, int BITS, int NT, int RG, typename T>
__global__ void __launch_bounds__((kBulkConsumers + 1) * 32) qgemv_bulk_kernel(const __grid_constant__ BulkArgs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  __trap();
#else
  constexpr int SR = bulk_runs<BITS, RG>(), STAGE = bulk_stage_bytes<BITS, S>(), ROWS = bulk_rows<RG>();
  constexpr int RB = BITS == 4 ? 16 : 32;  // bytes per run
  extern __shared__ __align__(16) uint8_t smem[];
  uint64_t* full = reinterpret_cast<uint64_t*>(smem);
  uint64_t* empty = full + kBulkStages;
  float* red = reinterpret_cast<float*>(smem + kBulkBarrierBytes);
  uint8_t* stages = smem + kBulkBarrierBytes + bulk_red_bytes<NT, RG>();
  stages += (1024 - smem_addr(stages) % 1024) % 1024;
  const int scs = SR / a.runs_per_scale * int(sizeof(S));  // scale bytes of a row per stage
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4;
  const uint32_t u0 = bulk_first_unit(blockIdx.x, a.units, gridDim.x);
  const int nunits = int(bulk_first_unit(blockIdx.x + 1, a.units, gridDim.x) - u0);
  const int row_stages = int(a.stages);  // units of a row group
  if (threadIdx.x == 0) {
    for (int s = 0; s < kBulkStages; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], kBulkConsumers);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  if (warp == kBulkConsumers) {
    // Producer: one thread issues each unit's weight copy and its scale tile. Bytes past N or K arrive as
    // zeros and count in full, so every stage expects whole boxes.
    if (lane == 0) {
      int rg = int(u0 / a.stages), st = int(u0 % a.stages);  // the unit's row group and stage
      for (int i = 0; i < nunits; ++i) {
        const int slot = i % kBulkStages;
        if (i >= kBulkStages) mbar_wait(&empty[slot], (i / kBulkStages - 1) & 1);
        const int r0 = st * SR;
        // One copy brings the stage's segment / kBulkBox weight tiles: the map's third dimension is the
        // row's 128-byte chunk (stride 128), so the tiles land one after another as separate copies would.
        mbar_arrive_expect_tx(&full[slot], uint32_t(kBulkWeightBytes + ROWS * scs));
        uint8_t* buf = stages + slot * STAGE;
        tensor_copy_3d(buf, &a.wmap, 0, rg * ROWS, r0 * RB / kBulkBox, &full[slot]);
        tensor_copy_2d(buf + kBulkWeightBytes, &a.smap, r0 / a.runs_per_scale, rg * ROWS, &full[slot]);
        if (++st == row_stages) {
          st = 0;
          ++rg;
        }
      }
    }
    return;  // the consumers' barriers (named barrier 1) count their own threads only
  }
  // Consumer warp `warp`: runs warp, warp + kBulkConsumers, ... of every stage. Every shared address the loop
  // reads is a 32-bit lane constant plus a compile-time offset plus the stage's base, and the loop has no
  // branch but the segment's end: written plainly, the compiler rebuilt the addresses (and the stages' alignment)
  // every run, 424 instructions a stage against 354 (bf16, int4, one column tile), and 66 registers against 56.
  constexpr int per_stage = SR / kBulkConsumers;  // this warp's runs a stage
  static_assert(SR % kBulkConsumers == 0, "every consumer takes the same number of runs a stage");
  constexpr int P = BITS == 4 ? 1 : 2;  // 16-byte pieces of a run
  // Run j = jj * kBulkConsumers + warp of a stage is 16-byte chunk c = P * j + p of the row segment: tile
  // c / 8, chunk c % 8 of row `lane` there, swizzled by row % 8. With c = 8 P jj + (P warp + p), the tile
  // grows by P per jj and the chunk within it is the lane's constant.
  uint32_t wl[P];
#pragma unroll
  for (int p = 0; p < P; ++p) {
    const int c = P * warp + p;
    wl[p] = uint32_t((c / 8) * ROWS * kBulkBox + lane * kBulkBox + ((c % 8) ^ (lane % 8)) * 16);
  }
  // The run's scale within the stage's is j >> scale_shift = jj * (kBulkConsumers >> shift) + (warp >> shift).
  const int sstep = (kBulkConsumers >> a.scale_shift) * int(sizeof(S));
  uint32_t sl[4];  // rows g + 8h of the first row group; group rg's are 32 rg rows on
#pragma unroll
  for (int h = 0; h < 4; ++h)
    sl[h] = uint32_t(kBulkWeightBytes + (g + 8 * h) * scs + (warp >> a.scale_shift) * int(sizeof(S)));
  const uint32_t sgroup = uint32_t(kBulkGroupRows * scs);
  bool x_live[NT];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) x_live[nt] = nt * 8 + g < a.M;
  const uint4* xl = a.xp + lane;
  // Runs past K get zero x. They are multiplied all the same (no branch in the loop): only a row group's last
  // stage has any, and there the copies filled their weights and scales with zeros, so they add exact zeros.
  // (A 32-bit index: it would overflow only with xp past 32 GB; a 64-bit one cost 5 registers, and the
  // fourth block an SM.)
  const auto load_x = [&](int run, uint4 (&xb)[NT]) {
    const int off = run * NT * 32;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
      xb[nt] = x_live[nt] && run < a.runs ? __ldg(xl + off + nt * 32) : make_uint4(0, 0, 0, 0);
  };
  float acc[2 * RG][NT][4];  // 16-row tiles: rows 16 rt.. of the row group
#pragma unroll
  for (int rt = 0; rt < 2 * RG; ++rt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) acc[rt][nt][0] = acc[rt][nt][1] = acc[rt][nt][2] = acc[rt][nt][3] = 0.0f;
  int rg = int(u0 / a.stages), st = int(u0 % a.stages);
  int seg_start = st;  // the stage this block's segment of row group rg started at
  int slot_of_seg = 0;  // workspace slot: 0 for the block's first row group, 1 after
  cuda::pdl_wait();     // x is the prep kernel's output
  // The x fragments of this warp's next XA runs, in a ring of registers indexed by compile-time constants only
  // (the loop below is unrolled by per_stage, a multiple of XA).
  constexpr int XA = per_stage < kBulkXAhead ? per_stage : kBulkXAhead;
  static_assert(per_stage % XA == 0, "the x ring's slot of a run is the same in every stage");
  uint4 xq[XA][NT];
#pragma unroll
  for (int q = 0; q < XA; ++q) load_x(st * SR + q * kBulkConsumers + warp, xq[q]);  // per_stage >= XA
  const uint32_t s0 = smem_addr(stages);
  int slot = 0;
  uint32_t parity = 0;
  for (int i = 0; i < nunits; ++i) {
    const uint32_t sb = s0 + uint32_t(slot * STAGE);
    const int nst = st + 1 == row_stages ? 0 : st + 1;  // the next unit's stage (of row group rg + 1 when 0)
    const int rw = st * SR + warp, nrw = nst * SR + warp;  // this warp's first run of this stage and the next
    mbar_wait(&full[slot], parity);
    // The stage's weight fragments and scales of this warp into registers first, and the buffer back to the
    // producer before the math: the copy into it is then in flight while this warp multiplies (without the
    // math the copies alone run ~25% faster).
    uint32_t w[per_stage][RG][2][4];  // [run][row group][piece of the run][rows g, g+8, g+16, g+24 of the group]
    uint32_t sb16[per_stage][RG][4];  // the scales' bits, [run][row group][rows g + 8h of the group]
#pragma unroll
    for (int jj = 0; jj < per_stage; ++jj) {
#pragma unroll
      for (int r = 0; r < RG; ++r) {
#pragma unroll
        for (int p = 0; p < P; ++p)
          ldsm_x4(w[jj][r][p], sb + wl[p] + uint32_t((P * jj * ROWS + r * kBulkGroupRows) * kBulkBox));
        const uint32_t so = sb + uint32_t(jj * sstep) + r * sgroup;
#pragma unroll
        for (int h = 0; h < 4; ++h) sb16[jj][r][h] = lds_scale_bits<S>(so + sl[h]);
      }
    }
    __syncwarp();
    if (lane == 0) mbar_arrive(&empty[slot]);  // this warp is done with the buffer
    if (++slot == kBulkStages) {
      slot = 0;
      parity ^= 1;
    }
#pragma unroll
    for (int jj = 0; jj < per_stage; ++jj) {
      const int q = jj % XA;
      uint4 xb[NT];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) xb[nt] = xq[q][nt];
      // this warp's run XA runs on: jj + XA of this stage, or of the next unit's
      load_x(jj + XA < per_stage ? rw + (jj + XA) * kBulkConsumers : nrw + (jj + XA - per_stage) * kBulkConsumers,
             xq[q]);
#pragma unroll
      for (int r = 0; r < RG; ++r) {  // the same x fragments against each row group
        float sc[4];
#pragma unroll
        for (int h = 0; h < 4; ++h) sc[h] = scale_bits_to_float<S>(sb16[jj][r][h]);
        ring_run_mma<MT, BITS, NT>(w[jj][r], sc, xb, reinterpret_cast<float(&)[2][NT][4]>(acc[2 * r]));
      }
    }
    if (nst == 0 || i + 1 == nunits) {  // the block leaves row group rg
      flush_segment<T, NT, 2 * RG>(acc, red, rg * ROWS, seg_start == 0 && nst == 0, slot_of_seg, a);
      seg_start = 0;
      slot_of_seg = 1;
    }
    st = nst;
    rg += nst == 0;
  }
#endif
}

// y for the row groups that more than one block had: their workspace slots added in block order (+ bias). One
// thread per element of y; the others were written by the GEMV. Launched with launch_dependent after it.
template <typename T>
__global__ void qgemv_bulk_fixup_kernel(const __grid_constant__ BulkArgs a, int rows, uint32_t blocks) {
  cuda::pdl_wait();
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= int64_t(a.M) * a.N) return;
  const int m = int(i / a.N), n = int(i % a.N);
  const uint32_t rg = uint32_t(n / rows);
  const uint32_t first = bulk_block_of(rg * a.stages, a.units, blocks);
  const uint32_t last = bulk_block_of((rg + 1) * a.stages - 1, a.units, blocks);
  if (first == last) return;
  float s = 0.0f;
  for (uint32_t b = first; b <= last; ++b)
    s += a.partial[((int64_t(b) * 2 + bulk_slot(b, rg, a, blocks)) * a.M + m) * rows + (n - rg * rows)];
  if (a.bias != nullptr) s += static_cast<float>(static_cast<const T*>(a.bias)[n]);
  static_cast<T*>(a.y)[i] = static_cast<T>(s);
}

}  // namespace gemma4::quant_cuda
