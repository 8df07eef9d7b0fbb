// gemma4::qgemm on CUDA: y = x @ dequant(qweight, scales)^T (+ bias), weight-only int4/int8. Same checks
// as the CPU op (quant_checks.h); reference: gemma4.ops.reference.qgemm; layout: qgemm_problem.h.
//
// Two paths, by M = the rows of x:
//  * M <= gemv_max_rows (32; 16 or 7 where the Hopper GEMM runs): a weight-streaming GEMV on tensor cores (device
//    helpers and the fragment order in qgemm_cuda.cuh). A small kernel first writes x in the MMA's fragment order
//    (bf16/fp16 x; fp32 x takes the other path), zero-padded to whole 8-column MMA tiles. Then each warp owns 32
//    weight rows (two 16-row tiles) over a slice of K: each lane loads 16, 8 or 4 bytes of a row per span
//    (load_bytes: int4 16 for M <= 2, where each lane's load already is its MMA fragment and the runs go to separate
//    MMA columns; 4 for M > 4, in qgemv_shuffle_kernel: 8 bytes and a shuffle), converts the levels exactly to
//    bf16/fp16 and multiplies all M rows with mma.sync, fp32 accumulation; each 32-weight run's sum is scaled in
//    fp32. A block's warps take consecutive K slices of the same rows and are added in warp order through shared
//    memory; where the rows are too few to fill the GPU, several blocks split K and a second kernel adds their sums
//    in a fixed order (plan_gemv): deterministic either way. The weights are read once for all M rows, so M = 1..32
//    costs about one pass. For int4 at the row counts of ring_gemv_wins, the GEMV streams the weights through
//    per-warp shared-memory rings (cp.async) instead, with its own x order (qgemv_ring.cuh); same split, same
//    fixed-order sums. On large weights up to 16 rows (bulk_gemv_wins), the copy engine (TMA) fills a block's
//    shared-memory stages and consumer warps multiply them (qgemv_bulk.cuh), with the ring's x order. At 9-16 rows of
//    int4, where the weight has two 16-row tiles an SM and x fits in shared memory, the x-resident GEMV takes over
//    from all of these (qgemv_resident.cuh: x copied once per block, the weights dequantized to x's dtype before the
//    MMA). At one row of x (two with int8), x is quantized to int16 and the CUDA cores' dp2a multiply it
//    (qgemv_x16.cuh): about one instruction a weight instead of the tensor-core fragments' three. Each GEMV is
//    launched to overlap its x prep kernel (cuda_pdl.cuh: on the H200 0.6-0.8 us of E2B gate_up's 8.8 and 13.9 us,
//    int4 and int8).
//  * more rows, up to 64-128 (tiled_gemm_wins), bf16/fp16 x: a tiled tensor-core GEMM that reads the packed weight
//    into shared memory and dequantizes it in registers (qgemm_tc.cuh), so the weight crosses HBM once in its packed
//    size instead of being written and read again at 16 bits; on an sm_90 GPU its wgmma version, up to 256 rows
//    (qgemm_wgmma_sm90a.cu, hopper_gemm_wins).
//  * larger M, and fp32 x at any M: the weight is dequantized into an [N, K] workspace in x's dtype (each value
//    rounded once from the exact q * scale, as plain PyTorch's dequant(W).to(dtype) does) and at::linear
//    multiplies (cuBLAS; fp32 follows torch's allow_tf32 setting like torch.matmul).
#include <torch/library.h>

#include <ATen/cuda/CUDAContext.h>  // getCurrentDeviceProperties
#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/zeros.h>

#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled

#include <array>
#include <optional>
#include <tuple>
#include <unordered_map>

#include "common/cuda_launch.cuh"
#include "common/cuda_pdl.cuh"
#include "common/cuda_vec.cuh"
#include "quant/qgemm_cuda.cuh"
#include "quant/qgemm_cuda_dispatch.h"
#include "quant/qgemm_cuda_path.h"
#include "quant/qdequant_cuda.cuh"
#include "quant/qgemm_tc.cuh"
#include "quant/qgemv_bulk.cuh"
#include "quant/qgemm_wgmma.h"
#include "quant/qgemv_resident.cuh"
#include "quant/qgemv_ring.cuh"
#include "quant/qgemv_x16.cuh"
#include "quant/quant_checks.h"

namespace gemma4::quant {
namespace {

using namespace quant_cuda;

// Up to this many activation rows the GEMV runs; above, the tiled GEMM. The GEMV reads the weights once
// whatever M, so it wins while its MMAs hide under the weight reads; benchmarks/gpu/bench_qgemm_gpu.py times
// both sides of the switch (M = 32 vs 64). Where the Hopper GEMM runs (below), up to 16 rows only, and 7 for int8
// on large weights (gemv_max_rows).
constexpr int64_t kGemvMaxRows = 32;
// Above the GEMV, the tiled GEMM on the packed weight (qgemm_tc.cuh) where it beat dequantize + cuBLAS on the
// H200 (dev/cuda/experiments/README.md): always up to 64 rows, and up to 128 on weights of 2^25 values or
// more, where the dequantize pass costs most (31B gate_up int4 at 128 rows: 225 against 435 us; E2B
// gate_up, 19M values: 38.9 against 39.0, int8 42.3 against 39.5). From 256 rows cuBLAS's wgmma pipeline
// amortizes the extra pass (31B gate_up int8: 540 against 473 us).
bool tiled_gemm_wins(int64_t M, int64_t N, int64_t K) {
  const int forced = cuda_path();
  if (forced == static_cast<int>(CudaPath::tiled)) return true;
  if (forced == static_cast<int>(CudaPath::dequant)) return false;
  return M <= 64 || (M <= 128 && N * K >= (int64_t(1) << 25));
}
#ifdef GEMMA4_SM90A
// On an sm_90 device of a build with sm_90a code (which runs on compute capability 9.0 alone), the Hopper
// GEMM (qgemm_wgmma_sm90a.cu) instead of the mma.sync one, and up to 256 rows at every weight size: on the H200
// (dev/cuda/experiments/README.md), int4 g32 at 64 / 128 / 256 rows, against the mma.sync GEMM and dequantize +
// cuBLAS: 31B gate_up 92 / 115 / 232 us against 140 / 224 / 463 and 432 / 436 / 478; 31B down 50 / 61 / 107
// against 78 / 125 / 219 and 226 / 230 / 249; E2B gate_up 16 / 21 / 27 against 24 / 39 / 57 and 37 / 39 / 44.
// At 1024 rows dequantize + cuBLAS won against the cp.async version of the Hopper GEMM (31B gate_up 926 against
// 1173), whose 64-256-row times were 8-20% above this one's.
bool hopper_gemm_wins(int64_t M) {
  const int forced = cuda_path();
  return forced == static_cast<int>(CudaPath::wgmma) || (forced == static_cast<int>(CudaPath::automatic) && M <= 256);
}
bool hopper_gemm_available() {
  const cudaDeviceProp* p = at::cuda::getCurrentDeviceProperties();  // torch's per-device cache
  return p->major == 9 && p->minor == 0;
}
#endif
// The most rows of x the GEMV takes. A forced GEMM route ("tiled", "wgmma") takes every M, so the tests run each
// GEMM from one row up and a device call can time a GEMM against the GEMV at the same M. Where the Hopper GEMM
// runs, 16: it beat every GEMV at 17-32 rows on the H100 (dev/device_runs/2026-12-06g-h100-resident-tiles-gemm.log,
// us, int4 g32, 17 / 20 / 24 / 32 rows): 31B gate_up 91.8-91.9 against 124.9-129.4, 31B down 49.7-50.2 against
// 60.8-64.1, E2B gate_up 15.8-16.2 against 16.9-17.0. int8 per channel on weights of 2^25 values or more, 7: the
// GEMM won there from 8 rows (dev/device_runs/2026-12-06i-h100-cuda-suite.log, us, 8 / 9 / 12 / 16 rows: 31B
// gate_up 106.5-107.0 against 116.4-124.6, 31B down 56.3-56.7 against 59.9-62.7) and lost on E2B gate_up (18.2
// against 13.9-15.1). Elsewhere 32: the mma.sync GEMM lost at 17-32 rows (130-132, 72.6-73.5, 22.1-22.5).
int64_t gemv_max_rows(int bits, int64_t N, int64_t K) {
  const int forced = cuda_path();
  if (forced == static_cast<int>(CudaPath::tiled) || forced == static_cast<int>(CudaPath::wgmma)) return 0;
#ifdef GEMMA4_SM90A
  if (forced == static_cast<int>(CudaPath::automatic) && hopper_gemm_available()) {
    return bits == 8 && N * K >= (int64_t(1) << 25) ? 7 : 16;
  }
#endif
  return kGemvMaxRows;
}
// Within the GEMV's rows, the ring GEMV (qgemv_ring.cuh) where it beat the register-loading kernels on the H200
// (dev/cuda/experiments/README.md): int4 with 17-32 rows (31B down 85 -> 59 us, 31B gate_up 127 -> 112, E2B
// gate_up 17.4 -> 17.0), and 3-8 rows on weights of 2^25 values or more (31B gate_up M = 4 76 -> 69, M = 8
// 86 -> 71; 31B down M = 8 64 -> 39; E2B gate_up, 19M values, 10.2 -> 15.2 at M = 8: its K slices are too short
// for the ring's prologue). It lost at 1-2 rows (31B gate_up 60 -> 67), on 31B gate_up at 9-16 rows (90 -> 97),
// and is even with int8 per channel. On an sm_90 GPU its 17-32 rows go to the Hopper GEMM (gemv_max_rows).
bool ring_gemv_wins(int bits, int64_t M, int64_t N, int64_t K) {
  if (cuda_path() == static_cast<int>(CudaPath::ring)) return true;
  return bits == 4 && (M > 16 || (M > 2 && M <= 8 && N * K >= (int64_t(1) << 25)));
}
// Within the GEMV's rows, the copy-engine GEMV (qgemv_bulk.cuh) where it beat the others on the H200
// (dev/cuda/experiments/README.md): 1-16 rows on weights of 2^25 values or more. int4 g32, us, against the
// routes before: 31B gate_up M = 1 57.1 -> 51.8, M = 4 69.3 -> 52.8, M = 8 70.9 -> 56.3, M = 16 91.0 -> 76.9;
// 31B down M = 1 32.6 -> 32.1, M = 8 39.4 -> 32.6, M = 16 69.5 -> 40.9. It lost at 17-32 rows (31B gate_up
// M = 32 112 -> 141) and on E2B gate_up (19M values: M = 1 8.7 -> 10.1).
bool bulk_gemv_wins(int64_t M, int64_t N, int64_t K) {
  const int forced = cuda_path();
  if (forced == static_cast<int>(CudaPath::bulk)) return true;
  return forced == static_cast<int>(CudaPath::automatic) && M <= 16 && N * K >= (int64_t(1) << 25);
}
// Within the GEMV's rows, the int16-activation GEMV (qgemv_x16.cuh) at one row of x, and two with int8 weights,
// where it beat every other route on the H200 (dev/device_runs/2026-12-04f-h200-x16-ab.log), us: int4 g32 at
// M = 1 31B gate_up 45.6 -> 37.1-37.7, 31B down 29.1 -> 25.3-25.9, E2B gate_up 8.2 -> 6.9, E2B q / kv / o / down
// 5.2 / 4.7 / 5.4 / 8.2 -> 4.2 / 3.8 / 4.2 / 7.8; int8 per channel at M = 1 31B gate_up 99.3 -> 68.1, E2B gate_up
// 13.2 -> 9.5, and at M = 2 100 -> 74 and 13.1 -> 10.7 (E2B down, 1536 rows of K = 6144, lost: 10.7 -> 12.3).
// int4 at M = 2 lost (31B gate_up 46 -> 52: a dp2a per weight pair and x row, and 127 registers).
bool x16_gemv_wins(int bits, int64_t M) {
  const int forced = cuda_path();
  if (forced == static_cast<int>(CudaPath::x16)) return true;
  return forced == static_cast<int>(CudaPath::automatic) && (M == 1 || (bits == 8 && M == 2));
}
// The shift from a 32-weight run's index to its scale's (run >> shift) with G scales a row of `group` weights: groups
// of 32, 64 or 128 weights, or one scale a row (31); -1 for any other group (the x16 and x-resident GEMVs need one).
int run_scale_shift(int64_t G, int64_t group) {
  return G == 1 ? 31 : group == 32 ? 0 : group == 64 ? 1 : group == 128 ? 2 : -1;
}
// Its runs need K a multiple of 32 and scales of 32, 64 or 128 weights, or one a row.
bool x16_gemv_fits(int64_t M, int64_t K, const at::Tensor& scales) {
  return M <= kX16MaxM && K % 32 == 0 && run_scale_shift(scales.size(1), K / scales.size(1)) >= 0;
}
// Within the GEMV's rows, the x-resident int4 GEMV (qgemv_resident.cuh) at 9-16 rows where its 16-row tiles give
// every SM's block at least two (below, a few SMs would stream the whole weight). int4 g32, bf16 x, us, against
// the routes before (dev/device_runs/2026-12-06*-resident-*.log): on the H100 31B gate_up M = 16 67.8 -> 59.3,
// M = 4 / 8 58.0 / 59.1 -> 53.5 / 54.3, E2B gate_up M = 16 14.6 -> 11.2; on the H200 a first version (its x copied by
// a dependent load-store loop, ~9 us slower on the H100 at 16 rows) already matched the copy-engine GEMV at 9-16
// rows (31B gate_up 64.2-68.0 -> 63.1-66.3, E2B 14.2-14.3 -> 12.3-13.8) and lost at 2-8 (47-49 -> 51-53): the
// H200's faster HBM favours the copy engine there, and the shipped version has not run on an H200. Two-span units
// (thirty-third session, H100): 31B gate_up 16 rows 59.2-60.5 -> 55.0-55.6, and 56.1-57.0 at 2-8 rows against
// `auto`'s 64.8-65.7 (dev/device_runs/2026-12-07{l,m}-*.log); 2-8 rows stay off this route until an H200 agrees.
bool resident_gemv_wins(int64_t M, int64_t N) {
  const int forced = cuda_path();
  if (forced == static_cast<int>(CudaPath::resident)) return true;
  return forced == static_cast<int>(CudaPath::automatic) && M >= 9 && N / 16 >= 2 * cuda::sm_count();
}
// int4, up to 16 rows, K a multiple of 32, scales of 32, 64 or 128 weights or one a row, and x short enough to stay
// in one block's shared memory.
bool resident_gemv_fits(int bits, int64_t M, int64_t K, const at::Tensor& scales) {
  const int64_t spans = resident_spans(K / 32);
  const int64_t smem = M <= 8 ? resident_smem<1>(spans) : resident_smem<2>(spans);
  return bits == 4 && M <= 16 && K % 32 == 0 && run_scale_shift(scales.size(1), K / scales.size(1)) >= 0 &&
         smem <= static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin);
}
// The 8- and 16-byte-lane GEMV (qgemv_kernel) asks L2 for whole 128-byte lines (load_stream's PF) on weights
// of 2^25 values or more. On the H200, against the kernel without it in the same call
// (dev/device_runs/2026-12-04-h200-l2pf.log): 31B gate_up int4 M = 1-2 59.4-60.0 -> 57.3-58.0 us, int8 per
// channel 2-5% faster at every M, 31B down within 1.5% either way. On E2B gate_up (19M values) the hint lost
// (int4 8.7 -> 9.5, int8 13.6 -> 15.0: dev/cuda/experiments/README.md). A run-time flag instead of the template
// parameter cost more than the hint gained (l2pf_runtime_flag.patch).
bool l2_prefetch_wins(int64_t N, int64_t K) { return N * K >= (int64_t(1) << 25); }
constexpr int kRowTiles = 2;  // 16-row MMA tiles per warp: 32 weight rows share each activation load
// Weight bytes one lane loads per row and span (qgemm_cuda.cuh), by the rows of x. More bytes per load means
// fewer load instructions, but R = 4 LB / run bytes runs per span leave only 8 / R x rows per MMA tile:
// int4 loads 16 bytes (4 runs a span) for M <= 2, 8 (2 runs) for M <= 4, and 4 (one run: the shuffle
// kernel) above; int8 loads 8 bytes (one run). On the H200 (dev/cuda/experiments/README.md), 16 bytes took
// the 31B gate_up int4 GEMV from 80 to 61 us at M = 1; 2 runs per span lose at M = 8 and up (87 against
// 80 us), their MMA tiles serving 4 x rows.
constexpr int load_bytes(int bits, int64_t M) { return bits == 8 ? 8 : M <= 2 ? 16 : M <= 4 ? 8 : 4; }
// The most x rows each load width serves (the kernel instances to build).
constexpr int64_t max_rows(int bits, int LB) { return bits == 8 || LB == 4 ? kGemvMaxRows : LB == 16 ? 2 : 4; }
// Spans loaded ahead together: 16 bytes of weights per lane and row (one span of 16-byte loads: two measured
// slower, their registers cutting the resident warps), and fewer with 4 or more column tiles of 8-byte
// loads (more registers spill past 128, ptxas -v).
constexpr int kUnroll(int LB, int NT) { return LB == 16 ? 1 : NT >= 4 ? 1 : 2; }
constexpr int kMaxWarps = 16;    // K slices (warps) per block
constexpr int kReduceSmem = 48 * 1024;  // the warps' partial sums, within the default shared-memory limit
constexpr int kMaxParts = 8;            // blocks per row group (their sums go through a workspace)

struct GemvArgs {
  const uint8_t* qw;   // [N, K/2] (int4) or [N, K] (int8)
  const void* scales;  // [N, G] in S
  const uint4* xp;     // x in fragment order: [spans][NT][R step pairs][32 lanes] x 16 bytes
  const void* bias;    // [N] in T, or nullptr
  void* y;             // [M, N] in T
  int M, N;
  int64_t K;
  int G;      // scales per row
  int group;  // weights per scale
  int runs;   // K / 32
  bool pair_scales;     // group 32 with G even and 2-scale-aligned rows: a run pair's scales are one load
  bool pair_shared;     // groups of a multiple of 64 weights, or one per row: run 2i and 2i + 1 share a scale
  int spans;            // spans (R runs) per row: ceil(runs / R)
  int spans_per_warp;   // of one K slice
  int parts;            // blocks per row group: 1 writes y, more write partial
  float* partial;       // [parts, M, N] when parts > 1
};

// x [M, K] -> xp in fragment order (qgemm_cuda.cuh): one thread per (span, column tile, step pair, lane),
// the lane's B fragments of two steps in 16 bytes (bf16/fp16 x as it is: exact), zeros where the lane's run
// is not its column's run, where the x row is past M and where the run is past K.
template <typename T, typename MT, int BITS, int LB>
__global__ void qgemv_prep_kernel(const T* __restrict__ x, uint4* __restrict__ xp, int M, int64_t K, int runs,
                                  int spans, int NT) {
  constexpr int R = 4 * LB / (BITS == 4 ? 16 : 32), XR = 8 / R;
  cuda::pdl_launch_dependents();  // the GEMV after it may start (cuda_pdl.cuh)
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= int64_t(spans) * NT * R * 32) return;
  const int lane = i % 32, p = (i / 32) % R, nt = (i / (32 * R)) % NT;
  const int64_t span = i / (32 * R * NT);
  const int g = lane / 4, t = lane % 4;
  const int m = nt * XR + g / R, r = g % R;
  const int64_t run = span * R + r;
  const bool live = (t * R) / 4 == r && m < M && run < runs;
  float v[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const int s = 2 * p + j / 4;
    v[j] = live ? static_cast<float>(x[m * K + run * 32 + run_offset<BITS, LB>(t, s, j % 4)]) : 0.0f;
  }
  uint32_t o[4];
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    if constexpr (std::is_same_v<MT, __nv_bfloat16>) {
      const __nv_bfloat162 h = __floats2bfloat162_rn(v[2 * q], v[2 * q + 1]);
      o[q] = *reinterpret_cast<const uint32_t*>(&h);
    } else {
      const __half2 h = __floats2half2_rn(v[2 * q], v[2 * q + 1]);
      o[q] = *reinterpret_cast<const uint32_t*>(&h);
    }
  }
  xp[i] = make_uint4(o[0], o[1], o[2], o[3]);
}

// Scales of runs q and q + 1 of a row (q + 1 only used when the lanes hold two runs per output, R >= 2).
template <typename S, int R>
__device__ __forceinline__ float2 run_scales(const S* srow, int q, const GemvArgs& a) {
  if constexpr (R >= 2) {
    if (a.pair_scales) {  // group 32: scale index = run, q even, q + 1 < runs
      if constexpr (sizeof(S) == 2) {
        const uint32_t v = __ldg(reinterpret_cast<const unsigned int*>(srow + q));
        S lo, hi;
        const uint16_t l16 = v & 0xFFFF, h16 = v >> 16;
        memcpy(&lo, &l16, 2);
        memcpy(&hi, &h16, 2);
        return make_float2(scale_to_float(lo), scale_to_float(hi));
      } else {
        return __ldg(reinterpret_cast<const float2*>(srow + q));
      }
    }
    const float s0 = scale_to_float(__ldg(srow + q * 32 / a.group));
    const float s1 = a.pair_shared ? s0 : scale_to_float(__ldg(srow + min(q + 1, a.runs - 1) * 32 / a.group));
    return make_float2(s0, s1);
  } else {
    const float s0 = scale_to_float(__ldg(srow + q * 32 / a.group));
    return make_float2(s0, s0);
  }
}

template <typename MT, typename S, int BITS, int NT, int LB, typename T, bool PF>
__global__ void __launch_bounds__(kMaxWarps * 32) qgemv_kernel(const GemvArgs a) {
  cuda::pdl_wait();  // x in fragment order is the prep kernel's output (launch_split_gemv)
  constexpr int RT = kRowTiles, U = kUnroll(LB, NT), NW = LB / 4;
  static_assert(LB >= 8, "int4 with 4-byte lanes: qgemv_shuffle_kernel");
  constexpr int R = 4 * LB / (BITS == 4 ? 16 : 32);  // runs per span
  constexpr int XR = 8 / R;                          // x rows per 8-column tile
  constexpr int AC = R >= 2 ? 2 : 4;  // accumulators per (row tile, column tile): R >= 2 adds the run pair
  constexpr int E = RT * NT * AC;     // accumulators per lane
  extern __shared__ float red[];      // [warps][E][32]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t row_bytes = BITS == 4 ? a.K / 2 : a.K;
  const int n0 = blockIdx.x * 16 * RT;
  const int my_run = (t * R) / 4;        // run of the span this lane's weight bytes belong to
  const int pair_run = R >= 2 ? (2 * t) % R : 0;  // first run of the lane's two D columns (R >= 2)
  const uint8_t* wrow[RT][2];  // this lane's LB bytes of span 0 of rows g and g + 8 of each tile
  const S* srow[RT][2];
#pragma unroll
  for (int rt = 0; rt < RT; ++rt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t n = min(n0 + rt * 16 + h * 8 + g, a.N - 1);  // rows past N compute junk, never stored
      wrow[rt][h] = a.qw + n * row_bytes + LB * t;
      srow[rt][h] = static_cast<const S*>(a.scales) + n * a.G;
    }
  // This warp's K slice: slice blockIdx.y * warps + warp of the row group's a.parts * warps.
  const int c0 = (blockIdx.y * (blockDim.x / 32) + warp) * a.spans_per_warp, c1 = min(a.spans, c0 + a.spans_per_warp);
  // B fragments: only the lanes whose run is their column's run, for x rows below M, hold nonzeros.
  bool x_live[NT];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) x_live[nt] = my_run == g % R && nt * XR + g / R < a.M;

  float acc[RT][NT][AC];
#pragma unroll
  for (int rt = 0; rt < RT; ++rt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int j = 0; j < AC; ++j) acc[rt][nt][j] = 0.0f;

  // Loads of U spans into one buffer (weights, then their scales), all in flight together.
  using WBuf = uint32_t[U][RT][2][NW];
  using SBuf = float2[U][RT][2];
  const auto load = [&](int c, WBuf& wv, SBuf& sv) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int cu = c + u;
      if (cu >= c1) break;
      const bool has = cu * R + my_run < a.runs;  // the last span may hold fewer than R runs
      // past the last run: any valid scale (its sums are zero); R >= 2 keeps q even (pair_scales: q + 1 < runs)
      const int q = R >= 2 ? min(cu * R + pair_run, a.runs - 1) & ~1 : min(cu * R, a.runs - 1);
#pragma unroll
      for (int rt = 0; rt < RT; ++rt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          if (has) {
            load_stream<NW, PF>(wrow[rt][h] + int64_t(cu) * 4 * LB, wv[u][rt][h]);
          } else {
#pragma unroll
            for (int k = 0; k < NW; ++k) wv[u][rt][h][k] = 0;
          }
          sv[u][rt][h] = run_scales<S, R>(srow[rt][h], q, a);
        }
    }
  };
  const auto compute = [&](int c, const WBuf& wv, const SBuf& sv) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int cu = c + u;
      if (cu >= c1) break;
#pragma unroll
      for (int p = 0; p < R; ++p) {  // step pairs: B fragments of two steps in one 16-byte load per column tile
        uint4 xb[NT];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
          xb[nt] = x_live[nt] ? __ldg(a.xp + ((int64_t(cu) * NT + nt) * R + p) * 32 + lane) : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int rt = 0; rt < RT; ++rt) {
          float d[NT][4];  // exact sums of the two steps, per D column; scaled once below
#pragma unroll
          for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int j = 0; j < 4; ++j) d[nt][j] = 0.0f;
#pragma unroll
          for (int ss = 0; ss < 2; ++ss) {
            const int s = 2 * p + ss;
            uint32_t af[4];  // {row g, row g+8} x {slots 2t.., 2t+8..}
            af[0] = weight_pair<MT, BITS>(wv[u][rt][0], s, 0);
            af[1] = weight_pair<MT, BITS>(wv[u][rt][1], s, 0);
            af[2] = weight_pair<MT, BITS>(wv[u][rt][0], s, 1);
            af[3] = weight_pair<MT, BITS>(wv[u][rt][1], s, 1);
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
              mma16816<MT>(d[nt], af, ss == 0 ? xb[nt].x : xb[nt].z, ss == 0 ? xb[nt].y : xb[nt].w);
          }
          const float2 s0 = sv[u][rt][0], s1 = sv[u][rt][1];  // rows g, g + 8
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
            if constexpr (AC == 2) {  // D columns 2t, 2t+1: runs pair_run, pair_run + 1 of one x row
              acc[rt][nt][0] = fmaf(s0.y, d[nt][1], fmaf(s0.x, d[nt][0], acc[rt][nt][0]));
              acc[rt][nt][1] = fmaf(s1.y, d[nt][3], fmaf(s1.x, d[nt][2], acc[rt][nt][1]));
            } else {  // D columns 2t, 2t+1: x rows 2t, 2t+1, one run
              acc[rt][nt][0] = fmaf(s0.x, d[nt][0], acc[rt][nt][0]);
              acc[rt][nt][1] = fmaf(s0.x, d[nt][1], acc[rt][nt][1]);
              acc[rt][nt][2] = fmaf(s1.x, d[nt][2], acc[rt][nt][2]);
              acc[rt][nt][3] = fmaf(s1.x, d[nt][3], acc[rt][nt][3]);
            }
          }
        }
      }
    }
  };
  for (int c = c0; c < c1; c += U) {
    WBuf wv;
    SBuf sv;
    load(c, wv, sv);
    compute(c, wv, sv);
  }

  // The K slices' partial sums, added in warp order. Accumulator (rt, nt, j) of lane (g, t) belongs to
  // n = n0 + rt*16 + g + 8 (j >= 2) and m = nt*8 + 2t + (j & 1) when AC = 4; with AC = 2 to
  // n = n0 + rt*16 + g + 8j and m = nt*XR + 2t / R, which lanes t and t + 1 share when R = 4 (their runs differ).
  float* mine = red + warp * E * 32;
#pragma unroll
  for (int rt = 0; rt < RT; ++rt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int j = 0; j < AC; ++j) mine[((rt * NT + nt) * AC + j) * 32 + lane] = acc[rt][nt][j];
  __syncthreads();
  constexpr int LPO = R == 4 ? 2 : 1;  // lanes per output
  const int warps = blockDim.x / 32;
  const T* bias = static_cast<const T*>(a.bias);
  T* y = static_cast<T*>(a.y);
  for (int i = threadIdx.x; i < E * 32; i += blockDim.x) {
    const int e = i / 32, ln = i % 32, j = e % AC, nt = (e / AC) % NT, rt = e / (AC * NT);
    if (ln % LPO != 0) continue;
    const int lg = ln / 4, lt = ln % 4;
    const int n = n0 + rt * 16 + lg + (AC == 4 ? (j >= 2 ? 8 : 0) : 8 * j);
    const int m = AC == 4 ? nt * 8 + 2 * lt + (j & 1) : nt * XR + 2 * lt / R;
    if (n >= a.N || m >= a.M) continue;
    float s = 0.0f;
    for (int w = 0; w < warps; ++w)
#pragma unroll
      for (int l = 0; l < LPO; ++l) s += red[w * E * 32 + i + l];
    if (a.parts > 1) {  // this block's share; qgemv_sum_parts_kernel adds the parts and the bias
      a.partial[(int64_t(blockIdx.y) * a.M + m) * a.N + n] = s;
      continue;
    }
    if (bias != nullptr) s += static_cast<float>(bias[n]);
    y[int64_t(m) * a.N + n] = static_cast<T>(s);
  }
}

// int4 with 4-byte lanes (M > 4): the earlier GEMV, kept because it measured faster there than the kernel
// above with one run per span (31B gate_up M = 8: 80 against 88-121 us, dev/cuda/experiments/README.md).
// Per 32-byte chunk (a run pair) of a row each lane issues one 8-byte load and one shuffle (exchange_int4)
// leaves it word pi(t) of both runs; x comes from qgemv_prep_kernel with LB = 4 (one run a span, all 8
// columns x rows). One block per row group (GemvArgs.parts = 1), spans_per_warp even.
template <typename MT, typename S, int NT, typename T>
__global__ void __launch_bounds__(kMaxWarps * 32) qgemv_shuffle_kernel(const GemvArgs a) {
  cuda::pdl_wait();  // as qgemv_kernel
  constexpr int RT = kRowTiles, U = 2;  // chunks loaded ahead: 2 x 4 independent 8-byte loads per lane
  extern __shared__ float red[];        // [warps][2 NT 4][32]: store_fragment_sums
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int n0 = blockIdx.x * 16 * RT;
  const uint8_t* wrow[RT][2];  // this lane's 8 bytes of chunk 0 of rows g and g + 8 of each tile
  const S* srow[RT][2];
#pragma unroll
  for (int rt = 0; rt < RT; ++rt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t n = min(n0 + rt * 16 + h * 8 + g, a.N - 1);  // rows past N compute junk, never stored
      wrow[rt][h] = a.qw + n * (a.K / 2) + 8 * t;
      srow[rt][h] = static_cast<const S*>(a.scales) + n * a.G;
    }
  const int chunks = (a.runs + 1) / 2, per_warp = a.spans_per_warp / 2;
  const int c0 = warp * per_warp, c1 = min(chunks, c0 + per_warp);

  float acc[RT][NT][4];
#pragma unroll
  for (int rt = 0; rt < RT; ++rt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[rt][nt][j] = 0.0f;

  for (int c = c0; c < c1; c += U) {
    // All loads of U chunks first (weights, then their scales), so they are in flight together.
    uint32_t wv[U][RT][2][2];
    float sv[U][RT][2][2];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int cu = c + u;
      if (cu >= c1) break;
#pragma unroll
      for (int rt = 0; rt < RT; ++rt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          // an odd number of runs: the last chunk's second run does not exist (lanes 2, 3)
          wv[u][rt][h][0] = wv[u][rt][h][1] = 0;
          if (t < 2 || 2 * cu + 1 < a.runs) load_stream<2>(wrow[rt][h] + int64_t(cu) * 32, wv[u][rt][h]);
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            const int run = min(cu * 2 + r, a.runs - 1);
            sv[u][rt][h][r] = scale_to_float(__ldg(srow[rt][h] + run * 32 / a.group));
          }
        }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int cu = c + u;
      if (cu >= c1) break;
      uint32_t wr[RT][2][2][1];  // [tile][row g, g + 8][run]: the lane's word pi(t) of the run
#pragma unroll
      for (int rt = 0; rt < RT; ++rt)
#pragma unroll
        for (int h = 0; h < 2; ++h)
          exchange_int4(make_uint2(wv[u][rt][h][0], wv[u][rt][h][1]), t, wr[rt][h][0][0], wr[rt][h][1][0]);
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int run = cu * 2 + r;
        if (run >= a.runs) break;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const uint4 xb = __ldg(a.xp + (int64_t(run) * NT + nt) * 32 + lane);  // this tile's B fragments
#pragma unroll
          for (int rt = 0; rt < RT; ++rt) {
            float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};  // the run's exact-product sums, then scaled once
#pragma unroll
            for (int s = 0; s < 2; ++s) {
              const uint32_t af[4] = {weight_pair<MT, 4>(wr[rt][0][r], s, 0), weight_pair<MT, 4>(wr[rt][1][r], s, 0),
                                      weight_pair<MT, 4>(wr[rt][0][r], s, 1), weight_pair<MT, 4>(wr[rt][1][r], s, 1)};
              mma16816<MT>(d, af, s == 0 ? xb.x : xb.z, s == 0 ? xb.y : xb.w);
            }
            acc[rt][nt][0] = fmaf(sv[u][rt][0][r], d[0], acc[rt][nt][0]);
            acc[rt][nt][1] = fmaf(sv[u][rt][0][r], d[1], acc[rt][nt][1]);
            acc[rt][nt][2] = fmaf(sv[u][rt][1][r], d[2], acc[rt][nt][2]);
            acc[rt][nt][3] = fmaf(sv[u][rt][1][r], d[3], acc[rt][nt][3]);
          }
        }
      }
    }
  }

  store_fragment_sums<T, NT>(acc, red, n0, a);
}

// y[m, n] = sum over the parts (in part order: deterministic) of partial[p, m, n] (+ bias[n]).
template <typename T>
__global__ void qgemv_sum_parts_kernel(const float* __restrict__ partial, const T* __restrict__ bias,
                                       T* __restrict__ y, int parts, int64_t MN, int N) {
  cuda::pdl_wait();  // the GEMV's partial sums
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= MN) return;
  float s = partial[i];
  for (int p = 1; p < parts; ++p) s += partial[p * MN + i];
  if (bias != nullptr) s += static_cast<float>(bias[i % N]);
  y[i] = static_cast<T>(s);
}

// How one GEMV launch splits its work: each row group of 32 weight rows gets `parts` blocks of `warps`
// warps, and each of those parts * warps warps a K slice of spans_per_warp spans.
struct GemvPlan {
  int warps = 1, parts = 1, spans_per_warp = 1;
};

// Blocks of w warps (w = 1..max_warps, 0 above) of `kernel` with its shared memory that fit on one SM of
// the current device. Cached per thread, kernel and device.
const std::array<int, kMaxWarps + 1>& resident_blocks(const void* kernel, int smem_per_warp, int max_warps) {
  struct Entry {
    int device = -1;
    std::array<int, kMaxWarps + 1> blocks{};
  };
  static thread_local std::unordered_map<const void*, Entry> cache;
  Entry& e = cache[kernel];
  const int d = c10::cuda::current_device();
  if (e.device != d) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, max_warps * smem_per_warp));
    for (int w = 1; w <= max_warps; ++w)
      C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&e.blocks[w], kernel, w * 32, w * smem_per_warp));
    e.device = d;
  }
  return e.blocks;
}

// Blocks of `threads` threads and `smem` bytes of shared memory of `kernel` that fit on one SM (at least 1),
// the kernel allowed that much shared memory. Cached per thread, kernel and device.
int blocks_per_sm(const void* kernel, int threads, int smem) {
  struct Entry {
    int device = -1, blocks = 1;
  };
  static thread_local std::unordered_map<const void*, Entry> cache;
  Entry& e = cache[kernel];
  const int d = c10::cuda::current_device();
  if (e.device != d) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&e.blocks, kernel, threads, smem));
    e.blocks = std::max(1, e.blocks);
    e.device = d;
  }
  return e.blocks;
}

// Lets `kernel` take the device's whole opt-in shared memory per block, once per thread, kernel and device (the
// calls of one kernel need different amounts: blocks_per_sm's one setting would refuse a later, larger call).
void allow_smem(const void* kernel) {
  static thread_local std::unordered_map<const void*, int> done;  // kernel -> device
  const int d = c10::cuda::current_device();
  const auto it = done.find(kernel);
  if (it != done.end() && it->second == d) return;
  const int optin = static_cast<int>(at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin);
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, optin));
  done[kernel] = d;
}

// The split that finishes first by a wave model (dev/cuda/experiments/README.md): a launch runs in waves of
// the blocks that fit on the GPU at once (occupancy), and each wave costs its warps' runs plus a fixed
// latency of about kWaveRuns runs (fitted on the H200 to two splits of the 31B gate_up shape). Few rows (31B
// down: 168 row groups) need several blocks per row group to fill the GPU; many rows want fewer, longer
// blocks. A split must also keep kMinWarpsPerSm warps on each SM (or all that fit): the loads in flight per
// SM bound a GEMV, and the model does not see that. Parts beyond one cost a pass over an fp32 [parts, M, N]
// workspace, kept well below the weights' bytes. Ties keep fewer parts, then fewer warps.
GemvPlan plan_gemv(int row_groups, int spans, int runs_per_span, int64_t MN, int64_t weight_bytes, int sms,
                   const std::array<int, kMaxWarps + 1>& resident) {
  constexpr int kWaveRuns = 40, kMinWarpsPerSm = 16;
  const auto search = [&](bool fill) {
    std::optional<GemvPlan> best;
    int64_t best_cost = INT64_MAX;
    int best_parts = 0, best_warps = 0;
    for (int w = 1; w <= std::min(kMaxWarps, spans); ++w) {
      if (resident[w] == 0) continue;
      for (int p = 1; p <= kMaxParts && w * p <= spans; ++p) {
        if (p > 1 && 8 * p * MN * int64_t(sizeof(float)) > weight_bytes) break;
        if (fill && int64_t(row_groups) * p * w < int64_t(sms) * std::min(kMinWarpsPerSm, resident[w] * w)) continue;
        const int spw = cuda::ceil_div(spans, w * p);
        const int64_t waves = cuda::ceil_div<int64_t>(int64_t(row_groups) * p, int64_t(resident[w]) * sms);
        const int64_t cost = waves * (int64_t(spw) * runs_per_span + kWaveRuns);
        if (std::tie(cost, p, w) < std::tie(best_cost, best_parts, best_warps)) {
          std::tie(best_cost, best_parts, best_warps) = std::tie(cost, p, w);
          best = GemvPlan{w, p, spw};
        }
      }
    }
    return best;
  };
  if (const auto plan = search(true)) return *plan;
  if (const auto plan = search(false)) return *plan;
  return GemvPlan{1, 1, spans};
}

// Launches a GEMV kernel: one block of `threads` per (row group, part); with more than one part the blocks write
// fp32 partial sums to a [parts, M, N] workspace and qgemv_sum_parts_kernel adds them (and the bias) in order.
template <typename T, typename Kernel, typename Args>
void launch_split_gemv(Kernel kernel, Args& a, int parts, int row_groups, int threads, int smem,
                       const at::TensorOptions& options) {
  const int64_t MN = int64_t(a.M) * a.N;
  a.parts = parts;
  at::Tensor partial;  // [parts, M, N]
  if (parts > 1) {
    partial = at::empty({parts, a.M, a.N}, options.dtype(at::kFloat));
    a.partial = partial.mutable_data_ptr<float>();
  }
  // Both overlap the launch before them (cuda_pdl.cuh): the GEMV its x prep kernel, the sum the GEMV.
  cuda::launch_dependent(kernel, dim3(row_groups, parts), dim3(threads), smem, a);
  if (parts > 1)
    cuda::launch_dependent(qgemv_sum_parts_kernel<T>, dim3(cuda::ceil_div<int64_t>(MN, 256)), dim3(256), 0,
                           static_cast<const float*>(a.partial), static_cast<const T*>(a.bias), static_cast<T*>(a.y),
                           parts, MN, a.N);
}

// The earlier GEMV's split, for qgemv_shuffle_kernel (int4, M > 4): one block per row group, its warps
// splitting K so that about kWarpsPerSm warps run per SM (K slices of whole run pairs: span_align 2).
GemvPlan plan_by_warps_per_sm(int row_groups, int spans, int span_align, int max_warps, int sms) {
  constexpr int kWarpsPerSm = 24;
  const int64_t want = cuda::ceil_div<int64_t>(int64_t(sms) * kWarpsPerSm, row_groups);
  const int warps = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({want, max_warps, spans})));
  const int spw = cuda::ceil_div(cuda::ceil_div(spans, warps), span_align) * span_align;
  return GemvPlan{cuda::ceil_div(spans, spw), 1, spw};
}

// Calls f.template operator()<NT>() for the GEMVs' 8-column MMA tiles: NT = 1, 2 or 4.
template <typename F>
void dispatch_column_tiles(int NT, F&& f) {
  if (NT == 1) {
    f.template operator()<1>();
  } else if (NT == 2) {
    f.template operator()<2>();
  } else {
    f.template operator()<4>();
  }
}

// The fields the GEMV's and the tiled GEMM's arguments share: weights, scales, bias, output and sizes.
template <typename Args>
void fill_operands(Args& a, const at::Tensor& qweight, const at::Tensor& scales, const std::optional<at::Tensor>& bias,
                   at::Tensor& y, int64_t K) {
  a.qw = static_cast<const uint8_t*>(qweight.const_data_ptr());
  a.scales = scales.const_data_ptr();
  a.bias = bias ? bias->const_data_ptr() : nullptr;
  a.y = y.mutable_data_ptr();
  a.M = static_cast<int>(y.size(0));
  a.N = static_cast<int>(y.size(1));
  a.K = static_cast<decltype(a.K)>(K);
  a.G = static_cast<int>(scales.size(1));
  a.group = static_cast<int>(K / a.G);
}

at::Tensor qgemv(const at::Tensor& x2, const at::Tensor& qweight, const at::Tensor& scales,
                 const std::optional<at::Tensor>& bias, int bits) {
  const int64_t M = x2.size(0), K = x2.size(1), N = qweight.size(0);
  const int runs = static_cast<int>(K / 32);
  at::Tensor y = at::empty({M, N}, x2.options());  // [M, N]
  GemvArgs a{};
  fill_operands(a, qweight, scales, bias, y, K);
  a.runs = runs;
  a.pair_scales = a.group == 32 && a.G % 2 == 0 &&
                  reinterpret_cast<uintptr_t>(a.scales) % (2 * scales.element_size()) == 0;
  a.pair_shared = a.group % 64 == 0 || a.G == 1;
  const int row_groups = static_cast<int>(cuda::ceil_div<int64_t>(N, 16 * kRowTiles));

  const int LBv = load_bytes(bits, M);
  const int R = 4 * LBv / (bits == 4 ? 16 : 32), XR = 8 / R;
  int NT = 1;  // 8-column MMA tiles: 1, 2 or 4
  while (NT * XR < M) NT *= 2;
  const int AC = R >= 2 ? 2 : 4;
  a.spans = static_cast<int>(cuda::ceil_div<int64_t>(runs, R));
  const int smem_per_warp = kRowTiles * NT * AC * 32 * static_cast<int>(sizeof(float));
  const int64_t weight_bytes = qweight.nbytes() + scales.nbytes();

  dispatch_x(x2.scalar_type(), [&]<typename T, typename MT>() {
    at::Tensor xp = at::empty({int64_t(a.spans) * NT * R * 32 * 4}, x2.options().dtype(at::kInt));  // 16 B a lane
    a.xp = reinterpret_cast<const uint4*>(xp.const_data_ptr());
    dispatch_bits(bits, [&]<int BITS>() {
      const auto with_lb = [&]<int LB>() {
        const int64_t threads = int64_t(a.spans) * NT * R * 32;
        qgemv_prep_kernel<T, MT, BITS, LB><<<cuda::ceil_div<int64_t>(threads, 256), 256, 0, cuda::stream()>>>(
            x2.const_data_ptr<T>(), reinterpret_cast<uint4*>(xp.mutable_data_ptr()), a.M, K, runs, a.spans, NT);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        dispatch_scale(scales.scalar_type(), [&]<typename S>() {
          const auto launch = [&]<int NTc>() {
            constexpr int XRc = 8 * (BITS == 4 ? 16 : 32) / (4 * LB);  // x rows per column tile
            if constexpr (NTc > 1 && (NTc / 2) * XRc >= max_rows(BITS, LB)) {
              TORCH_INTERNAL_ASSERT(false, "qgemv: no instance for ", NTc, " column tiles");  // not built
            } else {
              const auto kernel = [&] {
                if constexpr (LB == 4) {
                  return qgemv_shuffle_kernel<MT, S, NTc, T>;
                } else {
                  return l2_prefetch_wins(N, K) ? qgemv_kernel<MT, S, BITS, NTc, LB, T, true>
                                                : qgemv_kernel<MT, S, BITS, NTc, LB, T, false>;
                }
              }();
              const int max_warps = std::min(kMaxWarps, kReduceSmem / smem_per_warp);
              const GemvPlan plan =
                  LB == 4 ? plan_by_warps_per_sm(row_groups, a.spans, 2, max_warps, cuda::sm_count())
                          : plan_gemv(row_groups, a.spans, R, M * N, weight_bytes, cuda::sm_count(),
                                      resident_blocks(reinterpret_cast<const void*>(kernel), smem_per_warp, max_warps));
              a.spans_per_warp = plan.spans_per_warp;
              launch_split_gemv<T>(kernel, a, plan.parts, row_groups, plan.warps * 32, plan.warps * smem_per_warp,
                                   x2.options());
            }
          };
          dispatch_column_tiles(NT, launch);
        });
      };
      if constexpr (BITS == 4) {
        if (LBv == 16) {
          with_lb.template operator()<16>();
        } else if (LBv == 8) {
          with_lb.template operator()<8>();
        } else {
          with_lb.template operator()<4>();
        }
      } else {
        with_lb.template operator()<8>();
      }
    });
  });
  return y;
}

// x [M, K] in the ring GEMV's fragment order (qgemv_ring_prep_kernel): [runs][NT][32 lanes] x 16 bytes, for the
// ring and copy-engine GEMVs.
template <typename T, typename MT, int BITS>
at::Tensor ring_x_fragments(const at::Tensor& x2, int runs, int NT) {
  at::Tensor xp = at::empty({int64_t(runs) * NT * 32 * 4}, x2.options().dtype(at::kInt));  // 16 B a lane
  const int64_t threads = int64_t(runs) * NT * 32;
  qgemv_ring_prep_kernel<T, MT, BITS><<<cuda::ceil_div<int64_t>(threads, 256), 256, 0, cuda::stream()>>>(
      x2.const_data_ptr<T>(), reinterpret_cast<uint4*>(xp.mutable_data_ptr()), static_cast<int>(x2.size(0)),
      x2.size(1), runs, NT);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return xp;
}

// M <= kGemvMaxRows, bf16/fp16 x: the GEMV through per-warp shared-memory rings (qgemv_ring.cuh).
at::Tensor qgemv_ring(const at::Tensor& x2, const at::Tensor& qweight, const at::Tensor& scales,
                      const std::optional<at::Tensor>& bias, int bits) {
  const int64_t M = x2.size(0), K = x2.size(1), N = qweight.size(0);
  at::Tensor y = at::empty({M, N}, x2.options());  // [M, N]
  RingArgs a{};
  fill_operands(a, qweight, scales, bias, y, K);
  a.runs = static_cast<int>(K / 32);
  a.runs_per_scale = a.group / 32;
  a.scale_words = cuda::ceil_div<int64_t>(scales.nbytes(), 4);
  const int row_groups = static_cast<int>(cuda::ceil_div<int64_t>(N, kRingRows));
  const int NT = M <= 8 ? 1 : M <= 16 ? 2 : 4;  // 8-column MMA tiles
  const int64_t weight_bytes = qweight.nbytes() + scales.nbytes();
  const int smem_optin = static_cast<int>(at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin);
  dispatch_x(x2.scalar_type(), [&]<typename T, typename MT>() {
    dispatch_bits(bits, [&]<int BITS>() {
      const at::Tensor xp = ring_x_fragments<T, MT, BITS>(x2, a.runs, NT);
      a.xp = reinterpret_cast<const uint4*>(xp.const_data_ptr());
      dispatch_scale(scales.scalar_type(), [&]<typename S>() {
        const auto launch = [&]<int NTc>() {
          const auto kernel = qgemv_ring_kernel<MT, S, BITS, NTc, T>;
          constexpr int smem_per_warp = ring_warp_smem<BITS, S>();
          const int max_warps = std::min(kMaxWarps, smem_optin / smem_per_warp);
          const GemvPlan plan = plan_gemv(row_groups, a.runs, 1, M * N, weight_bytes, cuda::sm_count(),
                                          resident_blocks(reinterpret_cast<const void*>(kernel), smem_per_warp, max_warps));
          a.runs_per_warp = plan.spans_per_warp;
          launch_split_gemv<T>(kernel, a, plan.parts, row_groups, plan.warps * 32, plan.warps * smem_per_warp,
                               x2.options());
        };
        dispatch_column_tiles(NT, launch);
      });
    });
  });
  return y;
}

// Whether the copy-engine GEMV (qgemv_bulk.cuh) can run: it needs an sm_90 or later GPU, and scales whose rows, and
// each stage's share of a row, start on a 16-byte boundary (the copies' rule). That rules out one scale per row
// (int8 per channel) and some K (31B's K = 5376 with group 64 and 2-byte scales: 168 bytes a row).
// RG: the block's row groups, whose stage holds fewer runs of each row (bulk_runs).
template <int RG = 1>
bool bulk_gemv_fits(int bits, const at::Tensor& scales, int64_t K) {
  const int64_t ss = scales.element_size(), G = scales.size(1), runs_per_scale = K / G / 32;
  const int64_t stage_runs = bits == 4 ? bulk_runs<4, RG>() : bulk_runs<8, RG>();
  return at::cuda::getCurrentDeviceProperties()->major >= 9 && cuda::aligned16(scales.const_data_ptr()) &&
         G * ss % 16 == 0 && K * bits / 8 % kBulkBox == 0 &&
         (runs_per_scale == 1 || runs_per_scale == 2 || runs_per_scale == 4) && stage_runs / runs_per_scale * ss % 16 == 0 &&
         // units x blocks below 2^32 (bulk_first_unit): units are at most N K / 2^14, blocks below 2^10
         scales.size(0) * K < (int64_t(1) << 36);
}

// Row groups a block of the copy-engine GEMV owns (qgemv_bulk.cuh): two at one column tile (1-8 rows of x), where
// the stage's scales still fit the copies' rule. On the H200, int4 g32, us, one group against two in the same call
// (dev/device_runs/2026-12-04b-h200-bulk-rg.log): 31B gate_up M = 1 50.0 -> 46.6, M = 8 57.6 -> 48.8, 31B down
// within 1% (28.1 -> 28.2 at M = 1). Two groups at two column tiles lost (31B gate_up M = 9 67.7 -> 74.8: 103
// registers against 78), and so did deeper rings there (5-6 stages: 84 us at M = 9).
int bulk_row_groups(int NT, int bits, const at::Tensor& scales, int64_t K) {
  return NT == 1 && bulk_gemv_fits<2>(bits, scales, K) ? 2 : 1;
}

// Blocks of the copy-engine GEMV (qgemv_bulk.cuh), each an equal range of the row groups' stages. At two or more
// column tiles (9-32 rows of x), one block per slot on the GPU (`slots`: all resident at once) so that every SM
// gets the same work. At one column tile the blocks are whole row groups, or `parts` equal K slices of each (the
// fewest that finish first by a wave model, each wave costing its stages plus kFillStages for the pipeline to fill),
// where the even split measured slower. On the H200, int4 g32, us, the even split against this one in the same call
// (dev/device_runs/2026-12-04e-h200-bulk-streamk.log): 31B gate_up M = 12 / 16 74.4 / 76.0 -> 68.6 / 70.5 and 31B
// down 39.1 / 39.4 -> 35.1 / 35.8 (1344 and 336 row groups: some SMs had 11 blocks of 2 resident against 10, or 3
// against 2), but at M = 1 / 8 31B gate_up 47.2 / 49.8 -> 47.0 / 52.3 and 31B down 28.6 / 29.6 -> 29.7 / 30.4 (its
// row groups' sums then go through the workspace and the fixup kernel).
int plan_bulk_blocks(int NT, int64_t row_groups, int stages, int blocks_per_sm, int64_t MN, int64_t weight_bytes) {
  const int64_t slots = int64_t(blocks_per_sm) * cuda::sm_count();
  if (NT >= 2) return static_cast<int>(std::min(slots, row_groups * stages));
  constexpr int kFillStages = 2;
  int best = 1;
  int64_t best_cost = INT64_MAX;
  for (int p = 1; p <= kMaxParts && p <= stages; ++p) {
    if (p > 1 && 8 * p * MN * int64_t(sizeof(float)) > weight_bytes) break;
    const int64_t waves = cuda::ceil_div<int64_t>(row_groups * p, slots);
    const int64_t cost = waves * (cuda::ceil_div(stages, p) + kFillStages);
    if (cost < best_cost) std::tie(best, best_cost) = std::tie(p, cost);
  }
  return static_cast<int>(row_groups * best);
}

// cuTensorMapEncodeTiled through the runtime's driver entry point (no link against libcuda).
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found{};
    C10_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &found));
    TORCH_CHECK(found == cudaDriverEntryPointSuccess && f != nullptr,
                "gemma4::qgemm: the CUDA driver has no cuTensorMapEncodeTiled");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

// The copy engine's map of a row-major [rows, cols] tensor of `elem_bytes`-byte elements, in tiles of
// box_rows x box_cols; 16-byte aligned base and row pitch (bulk_gemv_fits; for the Hopper GEMM, qgemm_cuda
// aligns x and qweight, and K is a multiple of 32).
CUtensorMap tile_map_2d(const void* base, CUtensorMapDataType type, int64_t elem_bytes, int64_t rows, int64_t cols,
                        int box_rows, int box_cols, CUtensorMapSwizzle swizzle) {
  CUtensorMap map;
  const cuuint64_t dims[2] = {cuuint64_t(cols), cuuint64_t(rows)};
  const cuuint64_t pitch[1] = {cuuint64_t(cols * elem_bytes)};
  const cuuint32_t box[2] = {cuuint32_t(box_cols), cuuint32_t(box_rows)};
  const cuuint32_t step[2] = {1, 1};
  const CUresult r = tensor_map_encoder()(&map, type, 2, const_cast<void*>(base), dims, pitch, box, step,
                                          CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                          CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  TORCH_CHECK(r == CUDA_SUCCESS, "gemma4::qgemm: cuTensorMapEncodeTiled failed (CUresult ", int(r), ")");
  return map;
}

// The packed weight [rows, row_bytes] as the copy engine's 3-D tensor [row_bytes / kBulkBox][rows][kBulkBox]
// (innermost first: the chunk's bytes, the row, the row's 128-byte chunk), in boxes of a stage's chunks
// (segment / kBulkBox) of box_rows rows, 128-byte swizzle: one copy a stage (qgemv_bulk.cuh). row_bytes is a
// multiple of kBulkBox (bulk_gemv_fits).
CUtensorMap weight_map_3d(const void* base, int64_t rows, int64_t row_bytes, int box_rows, int segment) {
  CUtensorMap map;
  const cuuint64_t dims[3] = {cuuint64_t(kBulkBox), cuuint64_t(rows), cuuint64_t(row_bytes / kBulkBox)};
  const cuuint64_t pitch[2] = {cuuint64_t(row_bytes), cuuint64_t(kBulkBox)};
  const cuuint32_t box[3] = {cuuint32_t(kBulkBox), cuuint32_t(box_rows), cuuint32_t(segment / kBulkBox)};
  const cuuint32_t step[3] = {1, 1, 1};
  const CUresult r = tensor_map_encoder()(&map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 3, const_cast<void*>(base), dims, pitch,
                                          box, step, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                          CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  TORCH_CHECK(r == CUDA_SUCCESS, "gemma4::qgemm: cuTensorMapEncodeTiled (3-D) failed (CUresult ", int(r), ")");
  return map;
}

// M <= kGemvMaxRows, bf16/fp16 x, scales that bulk_gemv_fits: the GEMV fed by the copy engine (qgemv_bulk.cuh).
at::Tensor qgemv_bulk(const at::Tensor& x2, const at::Tensor& qweight, const at::Tensor& scales,
                      const std::optional<at::Tensor>& bias, int bits) {
  const int64_t M = x2.size(0), K = x2.size(1), N = qweight.size(0);
  at::Tensor y = at::empty({M, N}, x2.options());  // [M, N]
  BulkArgs a{};
  fill_operands(a, qweight, scales, bias, y, K);
  a.runs = static_cast<int>(K / 32);
  a.runs_per_scale = a.group / 32;  // 1, 2 or 4 (bulk_gemv_fits)
  a.scale_shift = a.runs_per_scale == 4 ? 2 : a.runs_per_scale - 1;
  const int NT = M <= 8 ? 1 : M <= 16 ? 2 : 4;  // 8-column MMA tiles
  const int RG = bulk_row_groups(NT, bits, scales, K);
  dispatch_x(x2.scalar_type(), [&]<typename T, typename MT>() {
    dispatch_bits(bits, [&]<int BITS>() {
      const at::Tensor xp = ring_x_fragments<T, MT, BITS>(x2, a.runs, NT);
      a.xp = reinterpret_cast<const uint4*>(xp.const_data_ptr());
      dispatch_scale(scales.scalar_type(), [&]<typename S>() {
        const auto launch = [&]<int NTc, int RGc>() {
          constexpr int SR = bulk_runs<BITS, RGc>(), ROWS = bulk_rows<RGc>();
          a.wmap = weight_map_3d(a.qw, N, K * BITS / 8, ROWS, bulk_segment<RGc>());
          const auto stype = sizeof(S) == 2 ? CU_TENSOR_MAP_DATA_TYPE_UINT16 : CU_TENSOR_MAP_DATA_TYPE_UINT32;
          a.smap = tile_map_2d(a.scales, stype, sizeof(S), N, a.G, ROWS, SR / a.runs_per_scale, CU_TENSOR_MAP_SWIZZLE_NONE);
          const auto kernel = qgemv_bulk_kernel<MT, S, BITS, NTc, RGc, T>;
          constexpr int smem = bulk_smem<BITS, S, NTc, RGc>(), threads = (kBulkConsumers + 1) * 32;
          const int stages = cuda::ceil_div(a.runs, SR);
          const int64_t row_groups = cuda::ceil_div<int64_t>(N, ROWS);
          a.stages = static_cast<uint32_t>(stages);
          a.units = static_cast<uint32_t>(row_groups * stages);
          const int blocks = plan_bulk_blocks(NTc, row_groups, stages,
                                              blocks_per_sm(reinterpret_cast<const void*>(kernel), threads, smem),
                                              M * N, qweight.nbytes() + scales.nbytes());
          bool split = false;  // whether a row group is shared by blocks: then the fixup kernel adds their sums
          for (int b = 1; b < blocks && !split; ++b) split = bulk_first_unit(b, a.units, blocks) % a.stages != 0u;
          at::Tensor partial;  // [blocks, 2, M, ROWS]
          if (split) {
            partial = at::empty({blocks, 2, M, ROWS}, x2.options().dtype(at::kFloat));
            a.partial = partial.mutable_data_ptr<float>();
          }
          cuda::launch_dependent(kernel, dim3(blocks), dim3(threads), smem, a);
          if (split)
            cuda::launch_dependent(qgemv_bulk_fixup_kernel<T>, dim3(cuda::ceil_div<int64_t>(M * N, 256)), dim3(256), 0,
                                   a, ROWS, blocks);
        };
        dispatch_column_tiles(NT, [&]<int NTc>() {
          if constexpr (NTc == 1) {
            if (RG == 2) return launch.template operator()<NTc, 2>();
          }
          launch.template operator()<NTc, 1>();
        });
      });
    });
  });
  return y;
}

// x16_gemv_fits, bf16/fp16 x: x quantized to int16 by a prep kernel, then the dp2a GEMV (qgemv_x16.cuh).
at::Tensor qgemv_x16(const at::Tensor& x2, const at::Tensor& qweight, const at::Tensor& scales,
                     const std::optional<at::Tensor>& bias, int bits) {
  const int64_t M = x2.size(0), K = x2.size(1), N = qweight.size(0);
  at::Tensor y = at::empty({M, N}, x2.options());  // [M, N]
  X16Args a{};
  fill_operands(a, qweight, scales, bias, y, K);
  a.runs = static_cast<int>(K / 32);
  a.scale_shift = run_scale_shift(a.G, a.group);  // >= 0: x16_gemv_fits
  a.row_bytes = K * bits / 8;
  // One buffer for the prep kernel's output: x16 [M, K] int16, then xscale and xoffset [M, runs] each.
  const int64_t blocks = M * a.runs;
  at::Tensor buf = at::empty({blocks * (32 * 2 + 8)}, x2.options().dtype(at::kByte));
  auto* x16 = reinterpret_cast<int16_t*>(buf.mutable_data_ptr());
  auto* xscale = reinterpret_cast<float*>(x16 + blocks * 32);
  auto* xoffset = reinterpret_cast<int*>(xscale + blocks);
  a.x16 = x16, a.xscale = xscale, a.xoffset = xoffset;
  dispatch_x(x2.scalar_type(), [&]<typename T, typename MT>() {
    dispatch_bits(bits, [&]<int BITS>() {
      qgemv_x16_prep_kernel<T, BITS><<<cuda::ceil_div<int64_t>(blocks, 128), 128, 0, cuda::stream()>>>(
          x2.const_data_ptr<T>(), x16, xscale, xoffset, blocks);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      dispatch_scale(scales.scalar_type(), [&]<typename S>() {
        const auto kernel = M == 1 ? qgemv_x16_kernel<T, S, BITS, 1> : qgemv_x16_kernel<T, S, BITS, 2>;
        int warps = kX16Warps;  // per block: fewer on small N, so that more SMs stream
        while (warps > 1 && cuda::ceil_div<int64_t>(N, kX16Rows * warps) < 2 * cuda::sm_count()) warps /= 2;
        const int64_t grid = cuda::ceil_div<int64_t>(N, kX16Rows * warps);
        cuda::launch_dependent(kernel, dim3(grid), dim3(warps * 32), 0, a);
      });
    });
  });
  return y;
}

// resident_gemv_fits, bf16/fp16 x: the x-resident int4 GEMV (qgemv_resident.cuh), one block an SM.
at::Tensor qgemv_resident(const at::Tensor& x2, const at::Tensor& qweight, const at::Tensor& scales,
                          const std::optional<at::Tensor>& bias) {
  const int64_t M = x2.size(0), K = x2.size(1), N = qweight.size(0);
  at::Tensor y = at::empty({M, N}, x2.options());  // [M, N]
  ResidentArgs a{};
  fill_operands(a, qweight, scales, bias, y, K);
  a.x = x2.const_data_ptr();
  a.runs = static_cast<int>(K / 32);
  a.spans = static_cast<int>(resident_spans(a.runs));
  a.scale_shift = run_scale_shift(a.G, a.group);  // >= 0: resident_gemv_fits
  a.tiles = static_cast<int>(cuda::ceil_div<int64_t>(N, 16));
  dispatch_x(x2.scalar_type(), [&]<typename T, typename MT>() {
    dispatch_scale(scales.scalar_type(), [&]<typename S>() {
      const auto launch = [&]<int NT>() {
        const auto kernel = qgemv_resident_kernel<T, MT, S, NT>;
        const int smem = static_cast<int>(resident_smem<NT>(a.spans)), threads = kResWarps * 32;
        allow_smem(reinterpret_cast<const void*>(kernel));
        // one block an SM (__launch_bounds__): x fills most of its shared memory, the registers the rest
        cuda::launch_dependent(kernel, dim3(std::min<int64_t>(cuda::sm_count(), a.tiles)), dim3(threads), smem, a);
      };
      if (M <= 8) {
        launch.template operator()<1>();
      } else {
        launch.template operator()<2>();
      }
    });
  });
  return y;
}

// The tiled GEMMs' arguments for y [M, N] (their tiling fields are run_tiled's).
TcArgs tiled_args(const at::Tensor& x2, const at::Tensor& qweight, const at::Tensor& scales,
                  const std::optional<at::Tensor>& bias, at::Tensor& y) {
  TcArgs a{};
  fill_operands(a, qweight, scales, bias, y, x2.size(1));
  a.x = x2.const_data_ptr();
  a.runs = static_cast<int>(x2.size(1) / 32);
  return a;
}

// Above the GEMV's rows: the tiled tensor-core GEMM on the packed weight (qgemm_tc.cuh).
at::Tensor qgemm_tc(const at::Tensor& x2, const at::Tensor& qweight, const at::Tensor& scales,
                    const std::optional<at::Tensor>& bias, int bits) {
  at::Tensor y = at::empty({x2.size(0), qweight.size(0)}, x2.options());  // [M, N]
  TcArgs a = tiled_args(x2, qweight, scales, bias, y);
  dispatch_x(x2.scalar_type(), [&]<typename T, typename MT>() {
    dispatch_bits(bits, [&]<int BITS>() {
      dispatch_scale(scales.scalar_type(), [&]<typename S>() { launch_qgemm_tc<T, MT, S, BITS>(a, x2.options()); });
    });
  });
  return y;
}

#ifdef GEMMA4_SM90A
// The tiled GEMM on warpgroup MMAs fed by the copy engine (qgemm_wgmma_sm90a.cu): 64 x rows a block up to 64
// rows, else 128.
at::Tensor qgemm_hopper(const at::Tensor& x2, const at::Tensor& qweight, const at::Tensor& scales,
                        const std::optional<at::Tensor>& bias, int bits) {
  const int64_t M = x2.size(0);
  at::Tensor y = at::empty({M, qweight.size(0)}, x2.options());  // [M, N]
  TcArgs a = tiled_args(x2, qweight, scales, bias, y);
  const at::ScalarType xt = x2.scalar_type(), st = scales.scalar_type();
  dispatch_x(xt, [&]<typename T, typename MT>() {
    const auto go = [&]<int BM>() {
      // The copy engine's maps: x in [BM x 64 k] tiles in the MMA's swizzled layout, the packed weight in
      // [kWgBN x 64 k] tiles (qgemm_wgmma_sm90a.cu).
      const int64_t K = x2.size(1), N = qweight.size(0);
      const CUtensorMap xmap =
          tile_map_2d(a.x, CU_TENSOR_MAP_DATA_TYPE_UINT16, 2, M, K, BM, 64, CU_TENSOR_MAP_SWIZZLE_128B);
      const CUtensorMap wmap = tile_map_2d(a.qw, CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, N, K * bits / 8, kWgBN, 64 * bits / 8,
                                           bits == 4 ? CU_TENSOR_MAP_SWIZZLE_32B : CU_TENSOR_MAP_SWIZZLE_64B);
      const int resident = wgmma_resident_blocks(xt, st, bits, BM);
      run_tiled<T, BM, kWgBN>(a, x2.options(), resident, [&](int blocks) {
        launch_wgmma_kernel(a, xmap, wmap, xt, st, bits, BM, blocks);
      });
    };
    if (M <= 64) {
      go.template operator()<64>();
    } else {
      go.template operator()<128>();
    }
  });
  return y;
}
#endif

at::Tensor qgemm_cuda(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                      const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "gemma4::qgemm";
  check_qgemm_args(x, qweight, scales, bias, op, c10::kCUDA);
  check_same_device(qweight, x, op, "qweight");
  check_same_device(scales, x, op, "scales");
  if (bias) check_same_device(*bias, x, op, "bias");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t K = x.size(-1), N = qweight.size(0), M = x.numel() / K;
  auto out_shape = x.sizes().vec();
  out_shape.back() = N;
  if (M == 0 || N == 0) return at::zeros(out_shape, x.options());
  TORCH_CHECK(N < (int64_t(1) << 31) && K < (int64_t(1) << 31), op, ": N and K must be below 2^31 on CUDA");
  const int bits = qweight_bits(qweight, op);
  // The vector loads need a 16-byte aligned base; a sliced qweight may not have one.
  const at::Tensor qw = cuda::aligned16(qweight.const_data_ptr()) ? qweight : qweight.clone();
  // x is copied to a 16-byte boundary where it does not start on one: the tiled GEMM's loads need it, and
  // cuBLAS picks its kernel by alignment, so an aligned copy keeps the result independent of where x starts.
  const at::Tensor x2 = cuda::aligned16(x.const_data_ptr()) ? x.reshape({M, K}) : x.reshape({M, K}).clone();  // [M, K]
  at::Tensor y;
  // fp32 x as three bf16 planes through the tensor cores measured 3-4x plain fp32's error on the H200
  // (their fp32 accumulation is not round-to-nearest), outside the 2x rule: fp32 dequantizes and uses cuBLAS.
  if (M <= gemv_max_rows(bits, N, K) && x.scalar_type() != at::kFloat) {
    if (x16_gemv_wins(bits, M) && x16_gemv_fits(M, K, scales)) {
      y = qgemv_x16(x2, qw, scales, bias, bits);  // [M, N]
    } else if (resident_gemv_wins(M, N) && resident_gemv_fits(bits, M, K, scales)) {
      y = qgemv_resident(x2, qw, scales, bias);  // [M, N]
    } else if (bulk_gemv_wins(M, N, K) && bulk_gemv_fits(bits, scales, K)) {
      y = qgemv_bulk(x2, qw, scales, bias, bits);  // [M, N]
    } else {
      // The ring's 4-byte scale copies need a 4-byte aligned base; a sliced scales tensor may not have one.
      const bool ring = ring_gemv_wins(bits, M, N, K) && reinterpret_cast<uintptr_t>(scales.const_data_ptr()) % 4 == 0;
      y = ring ? qgemv_ring(x2, qw, scales, bias, bits) : qgemv(x2, qw, scales, bias, bits);  // [M, N]
    }
#ifdef GEMMA4_SM90A
  } else if (x.scalar_type() != at::kFloat && hopper_gemm_wins(M) && hopper_gemm_available()) {
    y = qgemm_hopper(x2, qw, scales, bias, bits);  // [M, N]
#endif
  } else if (tiled_gemm_wins(M, N, K) && x.scalar_type() != at::kFloat) {
    y = qgemm_tc(x2, qw, scales, bias, bits);  // [M, N]
  } else {
    const at::Tensor w = dequantize_cuda(qw, scales, bits, K, x.scalar_type());  // [N, K]
    y = at::linear(x2, w, bias);                                                  // [M, N]
  }
  return y.view(out_shape);
}

}  // namespace
}  // namespace gemma4::quant

TORCH_LIBRARY_IMPL(gemma4, CUDA, m) { m.impl("qgemm", &gemma4::quant::qgemm_cuda); }
