// The qgemm GEMV (M <= kGemvMaxRows rows of x) with the weights streamed through a per-warp ring of shared
// memory. Reference: gemma4.ops.reference.qgemm; helpers and exactness: qgemm_cuda.cuh.
//
// Why a ring: a weight-streaming GEMV needs many bytes in flight per SM (Little's law: at ~4.5 TB/s and ~1.5 us
// of loaded latency, ~50 KB an SM). Loads into registers hold them in registers (16 of ~76 in the int4 M <= 2
// kernel, which reached 42% of DRAM peak on the H200); cp.async into shared memory keeps kRingDepth - 1 stages
// of every warp in flight without registers, and one lane order serves every M (no 4-byte-lane shuffle). On
// the H200 it wins for int4 at 17-32 rows and at 5-8 rows on large weights, and loses at 1-4 rows
// (qgemm_cuda.cu: ring_gemv_wins; figures in dev/cuda/experiments/README.md).
//
// Work: each warp owns 32 weight rows (two 16-row MMA tiles) over a slice of K, like the earlier GEMV, and
// runs its own pipeline (no block-wide barrier until the epilogue). A stage is 64 bytes of each of the 32 rows
// (4 int4 runs or 2 int8 runs) and the rows' scales of those runs.
//
// Fragment order. ldmatrix.x4 on 16-byte row pieces gives lane (g = lane / 4, t = lane % 4) bytes 4t..4t+3 of
// rows g, g+8, g+16, g+24 of a piece. The k order inside a run is free as long as x is laid out the same way
// (ring_offset, used by the prep kernel):
//  * int4 (a piece is a run): byte i of a run holds weights i (low nibble) and i + 16 (high). Step s (0, 1) of
//    the run takes the nibble pairs at shift 8s (slots 2t, 2t+1: weights 4t+s, 4t+s+2) and 8s + 4 (slots
//    2t+8, 2t+9: weights 4t+s+16, 4t+s+18).
//  * int8 (a piece is half a run): step s is piece s; bytes 4t, 4t+1 fill slots 2t, 2t+1 and 4t+2, 4t+3 fill
//    slots 2t+8, 2t+9: weights 16s + 4t + i.
// B column c of every 8-column tile is x row 8 nt + c, so one tile serves 8 rows of x. Each run's two steps
// sum exactly in fp32 inside the MMA, and the run's scale is applied once per output, in fp32.
#pragma once
#include <cstdint>

#include "common/cuda_pdl.cuh"  // pdl_launch_dependents
#include "quant/qgemm_cuda.cuh"
#include "quant/qgemm_tc.cuh"  // tc_cp_async16, tc_ldsm_x4

namespace gemma4::quant_cuda {

constexpr int kRingRows = 32;                // weight rows per warp: two 16-row MMA tiles
constexpr int kRingPieces = 4;               // 16-byte pieces of each row per stage: 64 bytes
constexpr int kRingRowStride = 16 * kRingPieces + 16;  // 80 bytes: ldmatrix's 8 rows on distinct bank groups
constexpr int kRingDepth = 3;  // stages per warp, 2 in flight while one is used: 3 measured 2-17% faster than 4, 6 slower

template <int BITS>
constexpr int ring_runs() { return BITS == 4 ? kRingPieces : kRingPieces / 2; }  // runs per stage
// 4-byte words of scales per row and stage: the stage's runs' scales (at most one per run) from a 4-byte
// aligned start, which may add one 2-byte scale in front.
template <int BITS, typename S>
constexpr int ring_scale_words() {
  return (ring_runs<BITS>() * int(sizeof(S)) + (sizeof(S) == 2 ? 2 : 0) + 3) / 4;
}
template <int BITS, typename S>
constexpr int ring_stage_bytes() { return kRingRows * (kRingRowStride + 4 * ring_scale_words<BITS, S>()); }
template <int BITS, typename S>
constexpr int ring_warp_smem() { return kRingDepth * ring_stage_bytes<BITS, S>(); }

// Weight index within its run of k slot i (0..3: 2t, 2t+1, 2t+8, 2t+9) of step s that lane-in-quad t holds.
template <int BITS>
__host__ __device__ __forceinline__ int ring_offset(int t, int s, int i) {
  if constexpr (BITS == 4) {
    constexpr int kOff[4] = {0, 2, 16, 18};
    return 4 * t + s + kOff[i];
  } else {
    return 16 * s + 4 * t + i;
  }
}

// One run of 32 weight rows against NT 8-column tiles of x, in the fragment order above: w holds the lane's words
// of rows g, g+8, g+16, g+24 (one 16-byte piece for int4, two for int8), sc those rows' scales of the run, xb the
// lane's B fragments of the run's two steps. The two steps sum exactly in fp32 inside the MMA, and each output's
// sum is scaled once into acc (the C-fragment order of two 16-row tiles). Shared by the ring GEMV and the
// copy-engine GEMV (qgemv_bulk.cuh).
template <typename MT, int BITS, int NT>
__device__ __forceinline__ void ring_run_mma(const uint32_t (&w)[2][4], const float (&sc)[4], const uint4* xb,
                                             float (&acc)[2][NT][4]) {
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

struct RingArgs {
  const uint8_t* qw;   // [N, K/2] (int4) or [N, K] (int8), 16-byte aligned
  const void* scales;  // [N, G] in S, 4-byte aligned
  const uint4* xp;     // x in fragment order: [runs][NT][32 lanes] x 16 bytes (two steps' B fragments)
  const void* bias;    // [N] in T, or nullptr
  void* y;             // [M, N] in T
  float* partial;      // [parts, M, N] when parts > 1
  int M, N;
  int64_t K;
  int G;                  // scales per row
  int group;              // weights per scale
  int runs_per_scale;     // group / 32
  int runs;               // K / 32
  int64_t scale_words;    // ceil(bytes of scales / 4): the copies never read past them
  int runs_per_warp;      // of one K slice
  int parts;              // blocks per row group: 1 writes y, more write partial
};

// x [M, K] -> xp: one thread per (run, column tile, lane), the lane's B fragments of the run's two steps in
// 16 bytes (bf16/fp16 x as it is: exact), zeros for x rows past M.
template <typename T, typename MT, int BITS>
__global__ void qgemv_ring_prep_kernel(const T* __restrict__ x, uint4* __restrict__ xp, int M, int64_t K, int runs,
                                       int NT) {
  cuda::pdl_launch_dependents();  // the copy-engine GEMV after it starts its weight copies now (cuda_pdl.cuh)
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= int64_t(runs) * NT * 32) return;
  const int lane = i % 32, nt = (i / 32) % NT;
  const int64_t run = i / (32 * NT);
  const int m = nt * 8 + lane / 4, t = lane % 4;
  uint32_t o[4];
#pragma unroll
  for (int q = 0; q < 4; ++q) {  // q: (step, slot pair) = (q / 2, q % 2)
    float v[2];
#pragma unroll
    for (int e = 0; e < 2; ++e)
      v[e] = m < M ? static_cast<float>(x[m * K + run * 32 + ring_offset<BITS>(t, q / 2, 2 * (q % 2) + e)]) : 0.0f;
    if constexpr (std::is_same_v<MT, __nv_bfloat16>) {
      const __nv_bfloat162 h = __floats2bfloat162_rn(v[0], v[1]);
      o[q] = *reinterpret_cast<const uint32_t*>(&h);
    } else {
      const __half2 h = __floats2half2_rn(v[0], v[1]);
      o[q] = *reinterpret_cast<const uint32_t*>(&h);
    }
  }
  xp[i] = make_uint4(o[0], o[1], o[2], o[3]);
}

__device__ __forceinline__ void ring_cp_async4(void* smem, const void* gmem, int src_bytes) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
}

// Grid: (row groups of kRingRows weight rows, parts); block: warps, each a K slice of runs_per_warp runs.
template <typename MT, typename S, int BITS, int NT, typename T>
__global__ void __launch_bounds__(16 * 32) qgemv_ring_kernel(const RingArgs a) {
  cuda::pdl_wait();  // x in fragment order is the prep kernel's output (launch_split_gemv)
  constexpr int SR = ring_runs<BITS>(), SW = ring_scale_words<BITS, S>();
  constexpr int STAGE = ring_stage_bytes<BITS, S>(), WBYTES = kRingRows * kRingRowStride;
  constexpr int RB = BITS == 4 ? 16 : 32;  // bytes per run
  extern __shared__ __align__(16) uint8_t smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4;
  const int warps = blockDim.x / 32;
  uint8_t* ring = smem + warp * kRingDepth * STAGE;
  const int64_t row_bytes = a.K * BITS / 8;
  const int n0 = blockIdx.x * kRingRows;
  const int c0 = (blockIdx.y * warps + warp) * a.runs_per_warp, c1 = min(a.runs, c0 + a.runs_per_warp);
  const int stages = c1 > c0 ? (c1 - c0 + SR - 1) / SR : 0;

  // Copies: lane L fills piece L % 4 of rows L / 4 + 8j (j < 4) and the scale words of row L.
  const uint8_t* wsrc[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) wsrc[j] = a.qw + int64_t(min(n0 + lane / 4 + 8 * j, a.N - 1)) * row_bytes + 16 * (lane % 4);
  const int64_t srow = int64_t(min(n0 + lane, a.N - 1)) * a.G;  // this lane's row's first scale
  const auto issue = [&](int st) {
    uint8_t* buf = ring + (st % kRingDepth) * STAGE;
    const int r0 = c0 + st * SR;
    const bool ok = r0 + (lane % 4) * SR / kRingPieces < c1;  // the piece's run is in the slice
#pragma unroll
    for (int j = 0; j < 4; ++j)
      tc_cp_async16(buf + (lane / 4 + 8 * j) * kRingRowStride + 16 * (lane % 4), ok ? wsrc[j] + int64_t(r0) * RB : a.qw,
                    ok);
    const int64_t first = (srow + r0 / a.runs_per_scale) * int64_t(sizeof(S)) / 4;  // 4-byte word
    uint8_t* sdst = buf + WBYTES + lane * SW * 4;
#pragma unroll
    for (int w = 0; w < SW; ++w) {
      const bool in = first + w < a.scale_words;
      ring_cp_async4(sdst + 4 * w, static_cast<const uint32_t*>(a.scales) + (in ? first + w : 0), in ? 4 : 0);
    }
  };

  bool x_live[NT];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) x_live[nt] = nt * 8 + g < a.M;
  float acc[2][NT][4];
#pragma unroll
  for (int rt = 0; rt < 2; ++rt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) acc[rt][nt][0] = acc[rt][nt][1] = acc[rt][nt][2] = acc[rt][nt][3] = 0.0f;

  // The x fragments. x is read by every warp, from L2: with most of L1 given to the rings it does not stay in
  // L1, so with one column tile a stage's fragments are loaded a stage ahead (16 registers); more column tiles
  // load theirs run by run (ahead, they would spill).
  constexpr bool kXAhead = NT == 1;
  using XBuf = uint4[SR][NT];
  const auto load_x = [&](int st, XBuf& xb) {
    const int r0 = c0 + st * SR;
#pragma unroll
    for (int j = 0; j < SR; ++j)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int run = min(r0 + j, c1 - 1);  // past the slice: a valid address, never used
        xb[j][nt] = x_live[nt] ? __ldg(a.xp + (int64_t(run) * NT + nt) * 32 + lane) : make_uint4(0, 0, 0, 0);
      }
  };
  const auto compute = [&](int st, const XBuf& xs) {
    const uint8_t* buf = ring + (st % kRingDepth) * STAGE;
    const int r0 = c0 + st * SR;
    // Byte of run r0 + j's scale within each of this lane's rows' staged words (rows g + 8h, h < 4).
    const int base = r0 / a.runs_per_scale, rem = r0 % a.runs_per_scale;
    int sbyte[4];
#pragma unroll
    for (int h = 0; h < 4; ++h) {
      const int64_t n = min(n0 + g + 8 * h, a.N - 1);
      sbyte[h] = (g + 8 * h) * SW * 4 + int(((n * a.G + base) * int64_t(sizeof(S))) & 3);
    }
    int step = 0, r = rem;  // scales past the stage's first one
#pragma unroll
    for (int j = 0; j < SR; ++j) {
      if (r0 + j >= c1) break;
      uint4 xl[NT];
      if constexpr (!kXAhead) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
          xl[nt] = x_live[nt] ? __ldg(a.xp + (int64_t(r0 + j) * NT + nt) * 32 + lane) : make_uint4(0, 0, 0, 0);
      }
      const uint4* xb = kXAhead ? xs[j] : xl;
      uint32_t w[2][4];  // [piece of the run][rows g, g+8, g+16, g+24]
#pragma unroll
      for (int p = 0; p < (BITS == 4 ? 1 : 2); ++p)
        tc_ldsm_x4(w[p], buf + lane * kRingRowStride + 16 * (BITS == 4 ? j : 2 * j + p));
      float sc[4];
#pragma unroll
      for (int h = 0; h < 4; ++h)
        sc[h] = scale_to_float(*reinterpret_cast<const S*>(buf + WBYTES + sbyte[h] + step * int(sizeof(S))));
      ring_run_mma<MT, BITS, NT>(w, sc, xb, acc);
      if (++r == a.runs_per_scale) {
        r = 0;
        ++step;
      }
    }
  };

#pragma unroll
  for (int st = 0; st < kRingDepth - 1; ++st) {
    if (st < stages) issue(st);
    asm volatile("cp.async.commit_group;\n" ::);
  }
  XBuf xnext;
  if (kXAhead && stages > 0) load_x(0, xnext);
  for (int st = 0; st < stages; ++st) {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kRingDepth - 2));
    // Stage st has landed for every lane, and every lane is done with stage st - 1, whose buffer refills now.
    __syncwarp();
    if (st + kRingDepth - 1 < stages) issue(st + kRingDepth - 1);
    asm volatile("cp.async.commit_group;\n" ::);
    XBuf xcur;
    if constexpr (kXAhead) {
#pragma unroll
      for (int j = 0; j < SR; ++j)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) xcur[j][nt] = xnext[j][nt];
      if (st + 1 < stages) load_x(st + 1, xnext);
    }
    compute(st, xcur);
  }
  asm volatile("cp.async.wait_group 0;\n" ::);
  __syncthreads();  // the rings are free: the partial sums go where they were

  store_fragment_sums<T, NT>(acc, reinterpret_cast<float*>(smem), n0, a);
}

}  // namespace gemma4::quant_cuda
