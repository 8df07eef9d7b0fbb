// The x-resident int4 GEMV (qgemm_cuda.cu: resident_gemv_wins): up to 16 rows of bf16/fp16 x held whole in a block's
// shared memory, the weights streamed from HBM by plain 16-byte loads straight into MMA fragments.
//
// Why another GEMV. The GEMVs of qgemm_cuda.cuh keep every product exact and scale each 32-weight run's sum in
// fp32, so an MMA's k slots must not mix runs: at 9-16 rows that forces one run per span (4-byte lanes and a
// shuffle) and a B fragment per run, and 31B gate_up took ~66 us at 16 rows against ~45 at one
// (dev/cuda/experiments/README.md). Here the weight is dequantized to x's dtype before the MMA, rounded once from
// the exact q * scale, which is what plain PyTorch does (x @ dequant(W).to(dtype)^T), so the k slots may mix
// runs freely and a lane's 16-byte load (one run of one row) is its whole A fragment for eight k16 steps.
//
// Work split. One block per SM (x takes most of its shared memory) owns a contiguous range of 16-row tiles;
// its units are (tile, two 128-weight spans) in row-major order, split evenly among its warps, so every warp
// streams the same number of spans whatever the tile count. A tile cut by a warp boundary is summed by the
// warps that share it, in warp order, through shared memory at the end: deterministic, no second kernel.
// Two spans a unit, not one: a unit's addresses, scales and loop control are shared by 16 MMA steps instead
// of 8 (they were ~30% of the kernel's instructions: dev/cuda/experiments/README.md), with the same
// weight bytes in flight a warp. Spans are padded to an even count (resident_spans), x being zero past K.
//
// Fragment order. For span `span` of a tile: lane (g = lane / 4, t = lane % 4) loads run 4 span + t of rows 16 tile + g
// and + g + 8 (16 bytes each). Step s (0..7) of the span takes word s / 2 of each: the slots 2t, 2t+1 of the
// A fragment are the nibble pair at shift 8 (s % 2), the slots 2t+8, 2t+9 the pair at shift 8 (s % 2) + 4
// (weight_pair, run_offset<4, 16>). x is stored in the same order once per block (fill_x): for step s, lane
// (g, t) and column tile nt, the B fragment holds x row 8 nt + g at the same run offsets of run 4 span + t.
// Reference: gemma4.ops.reference.qgemm (the layout: qgemm_problem.h).
#pragma once
#include <cstdint>
#include <type_traits>

#include "common/cuda_pdl.cuh"
#include "quant/qgemm_cuda.cuh"
#include "quant/qgemm_tc.cuh"  // TcScale, scaled_pair

namespace gemma4::quant_cuda {

constexpr int kResWarps = 16;  // per block, one block an SM

// Spans of a row as the kernel walks them: ceil(runs / 4) rounded up to whole units of two.
__host__ __device__ constexpr int64_t resident_spans(int64_t runs) { return 2 * ((runs + 7) / 8); }

struct ResidentArgs {
  const uint8_t* qw;   // [N, K/2] int4
  const void* scales;  // [N, G] in S
  const void* x;       // [M, K] in T, 16-byte aligned
  const void* bias;    // [N] in T, or nullptr
  void* y;             // [M, N] in T
  int M, N;
  int64_t K;
  int G;            // scales per row
  int group;        // weights per scale
  int runs;         // K / 32
  int spans;        // resident_spans(runs): 128-weight spans per row, even
  int tiles;        // ceil(N / 16)
  int scale_shift;  // run >> scale_shift = the run's scale (group 32 / 64 / 128: 0 / 1 / 2; per channel 31)
};

// Shared memory of a block: x in fragment order (spans x 8 steps x 32 lanes x NT tiles x 8 bytes; after the main
// loop the warps' last partial sums), then the warps' first partial sums (kResWarps x NT 4 x 32 floats).
template <int NT>
__host__ __device__ constexpr int64_t resident_x_bytes(int64_t spans) {
  const int64_t xs = spans * 8 * 32 * NT * 8, tails = int64_t(kResWarps) * NT * 4 * 32 * 4;
  return xs > tails ? xs : tails;
}
template <int NT>
__host__ __device__ constexpr int64_t resident_smem(int64_t spans) {
  return resident_x_bytes<NT>(spans) + int64_t(kResWarps) * NT * 4 * 32 * 4;
}

// x [M, K] -> shared memory in fragment order, rows M..8 NT-1 and runs past K zero. A thread takes one lane's
// record of half a span: run 4 span + t of x rows 8 nt + g at run offsets 8c..8c+7 (slots 2t, 2t+1) and
// 16+8c..16+8c+7 (slots 2t+8, 2t+9) -- the steps 4c..4c+3 -- and writes the lane's 8 NT bytes of each step in one
// store; pairs (k, k+2) of a chunk make the 32-bit B halves. Consecutive threads take c, then lanes: whole
// 64-byte runs of a row per thread pair, and consecutive lane records.
template <int NT>
__device__ __forceinline__ void fill_x(uint32_t* xs, const ResidentArgs& a) {
  constexpr int kBatch = NT == 1 ? 4 : 2;  // records in flight per thread (2 NT loads each)
  const auto* x = static_cast<const uint16_t*>(a.x);
  const int items = a.spans * 32 * 2;
  for (int first = threadIdx.x; first < items; first += kBatch * blockDim.x) {
    uint4 v[kBatch][NT][2];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int i = first + b * blockDim.x, c = i % 2, lane = (i / 2) % 32, span = i / 64;
      const int run = span * 4 + lane % 4;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int n = nt * 8 + lane / 4;
        const bool live = i < items && n < a.M && run < a.runs;
        const uint16_t* src = x + n * a.K + run * 32 + 8 * c;
        v[b][nt][0] = live ? *reinterpret_cast<const uint4*>(src) : make_uint4(0, 0, 0, 0);       // slots 2t, 2t+1
        v[b][nt][1] = live ? *reinterpret_cast<const uint4*>(src + 16) : make_uint4(0, 0, 0, 0);  // 2t+8, 2t+9
      }
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int i = first + b * blockDim.x, c = i % 2, lane = (i / 2) % 32, span = i / 64;
      if (i >= items) break;
      uint32_t rec[4][2 * NT];  // [step - 4c][nt, hi]
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int hi = 0; hi < 2; ++hi) {
          const uint4 w = v[b][nt][hi];
          rec[0][2 * nt + hi] = __byte_perm(w.x, w.y, 0x5410);  // k 0, 2: step 4c (nibble shift 0)
          rec[1][2 * nt + hi] = __byte_perm(w.x, w.y, 0x7632);  // k 1, 3: step 4c + 1 (shift 8)
          rec[2][2 * nt + hi] = __byte_perm(w.z, w.w, 0x5410);  // k 4, 6: step 4c + 2 (the next word)
          rec[3][2 * nt + hi] = __byte_perm(w.z, w.w, 0x7632);  // k 5, 7
        }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        uint32_t* dst = xs + ((int64_t(span) * 8 + 4 * c + j) * 32 + lane) * (2 * NT);
        if constexpr (NT == 2) {
          *reinterpret_cast<uint4*>(dst) = make_uint4(rec[j][0], rec[j][1], rec[j][2], rec[j][3]);
        } else {
          *reinterpret_cast<uint2*>(dst) = make_uint2(rec[j][0], rec[j][1]);
        }
      }
    }
  }
}

// The weights and scales of one unit for one lane: of its spans j = 0, 1, run 4 span + t of rows 16 tile + g
// (w[0][j], s[0][j]) and + 8 (w[1][j], s[1][j]).
template <typename S>
struct UnitLoad {
  uint32_t w[2][2][4];
  S s[2][2];
};

// Where a lane's next unit is: its two rows' first bytes and scales, kept from tile to tile, so a load is a
// few adds (the row and scale products were most of a unit's integer instructions). Rows past N read row N - 1
// (their sums are not stored) and runs past K the last run, whose scale SpanScales replaces by 0 (x is 0 there in
// shared memory, so they add exact zeros, even where that scale is not finite): every load is unconditional.
// Nothing here reads a loaded value: an instruction that did (the zeroing select, as it was) would stall the warp
// for the load's whole latency once a unit, however many units are in flight.
template <typename S>
struct UnitCursor {
  const uint8_t* w[2];
  const S* s[2];
  int tile, unit;  // block-relative tile, and the unit in it, of the next unit

  __device__ __forceinline__ void to_tile(const ResidentArgs& a, int tile0, int g) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t r = min((tile0 + tile) * 16 + h * 8 + g, a.N - 1);
      w[h] = a.qw + r * (a.K / 2);
      s[h] = static_cast<const S*>(a.scales) + r * a.G;
    }
  }
  __device__ __forceinline__ void load(UnitLoad<S>& u, const ResidentArgs& a, int tile0, int g, int t) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int rc = min((2 * unit + j) * 4 + t, a.runs - 1);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        load_stream<4, true>(w[h] + int64_t(rc) * 16, u.w[h][j]);
        u.s[h][j] = s[h][rc >> a.scale_shift];
      }
    }
    if (++unit == a.spans / 2) {
      unit = 0, ++tile;
      to_tile(a, tile0, g);
    }
  }
};

// The two scales of a unit's span j ready for scaled_pair; 0 where the lane's run is past K (`live` false).
template <typename MT, typename S>
struct SpanScales {
  using Scale = TcScale<S, MT>;
  typename Scale::type s[2];
  __device__ __forceinline__ void set(const UnitLoad<S>& u, int j, bool live) {
    s[0] = Scale::make_live(u.s[0][j], live);
    s[1] = Scale::make_live(u.s[1][j], live);
  }
};

// acc += one span's 16 rows x 128 weights (rows g: w0, g + 8: w1) times x's NT column tiles.
template <typename MT, typename S, int NT>
__device__ __forceinline__ void mma_span(float (&acc)[NT][4], const uint32_t (&w0)[4], const uint32_t (&w1)[4],
                                         const SpanScales<MT, S>& sc, const uint32_t* xs, int span, int lane) {
  const uint32_t* xl = xs + (int64_t(span) * 8 * 32 + lane) * (2 * NT);
  const auto s0 = sc.s[0], s1 = sc.s[1];
#pragma unroll
  for (int s = 0; s < 8; ++s) {
    // the dequantized weights, each rounded once from the exact q * scale (TcScale: in MT, or via fp32)
    const uint32_t w[4] = {scaled_pair<MT>(weight_pair<MT, 4>(w0, s, 0), s0),
                           scaled_pair<MT>(weight_pair<MT, 4>(w1, s, 0), s1),
                           scaled_pair<MT>(weight_pair<MT, 4>(w0, s, 1), s0),
                           scaled_pair<MT>(weight_pair<MT, 4>(w1, s, 1), s1)};
    uint32_t b[2 * NT];
    if constexpr (NT == 2) {
      const uint4 v = *reinterpret_cast<const uint4*>(xl + s * 32 * 2 * NT);
      b[0] = v.x, b[1] = v.y, b[2] = v.z, b[3] = v.w;
    } else {
      const uint2 v = *reinterpret_cast<const uint2*>(xl + s * 32 * 2 * NT);
      b[0] = v.x, b[1] = v.y;
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) mma16816<MT>(acc[nt], w, b[2 * nt], b[2 * nt + 1]);
  }
}

// y for one tile from C fragments: acc[nt][j] of lane (g, t) is y[m = 8 nt + 2t + (j & 1), n = 16 tile + g + 8 (j >= 2)].
template <typename T, int NT>
__device__ __forceinline__ void store_tile(const float (&acc)[NT][4], const ResidentArgs& a, int tile, int lane) {
  const T* bias = static_cast<const T*>(a.bias);
  T* y = static_cast<T*>(a.y);
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int m = nt * 8 + 2 * (lane % 4) + (j & 1), n = tile * 16 + lane / 4 + (j >= 2 ? 8 : 0);
      if (m >= a.M || n >= a.N) continue;
      float v = acc[nt][j];
      if (bias != nullptr) v += static_cast<float>(bias[n]);
      y[int64_t(m) * a.N + n] = static_cast<T>(v);
    }
}

// A warp's partial sums in shared memory, [NT 4][32] floats, each lane its own column.
template <int NT>
__device__ __forceinline__ void save_partial(float* dst, const float (&acc)[NT][4], int lane) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int j = 0; j < 4; ++j) dst[(nt * 4 + j) * 32 + lane] = acc[nt][j];
}

// Units of the block's warp w: [w U / W, (w + 1) U / W).
__device__ __forceinline__ int warp_first_unit(int w, int units) {
  return static_cast<int>(int64_t(w) * units / kResWarps);
}

template <typename T, typename MT, typename S, int NT>
__global__ void __launch_bounds__(kResWarps * 32, 1) qgemv_resident_kernel(const ResidentArgs a) {
  constexpr int E = NT * 4 * 32;  // floats of one warp's partial sums
  extern __shared__ uint4 smem_u4[];
  auto* xs = reinterpret_cast<uint32_t*>(smem_u4);
  float* heads = reinterpret_cast<float*>(smem_u4) + resident_x_bytes<NT>(a.spans) / 4;  // [kResWarps][E]
  float* tails = reinterpret_cast<float*>(smem_u4);  // [kResWarps][E], over x once every warp is done with it
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int per_tile = a.spans / 2;  // units a tile
  const int tile0 = static_cast<int>(int64_t(blockIdx.x) * a.tiles / gridDim.x);
  const int tile_end = static_cast<int>(int64_t(blockIdx.x + 1) * a.tiles / gridDim.x);
  const int units = (tile_end - tile0) * per_tile;
  const int u0 = warp_first_unit(warp, units), u1 = warp_first_unit(warp + 1, units);
  const int first_tile = u0 / per_tile;  // block-relative

  // The first unit's weights are asked for before x: they do not depend on the kernel before (cuda_pdl.cuh).
  UnitLoad<S> set_a, set_b;
  UnitCursor<S> next{{}, {}, first_tile, u0 % per_tile};
  next.to_tile(a, tile0, g);
  if (u0 < u1) next.load(set_a, a, tile0, g, t);
  cuda::pdl_wait();
  fill_x<NT>(xs, a);
  __syncthreads();

  float acc[NT][4] = {};
  const bool head_shared = u0 % per_tile != 0;  // another warp has the first tile's start
  int tile = first_tile, unit = u0 % per_tile;
  // Unit u from `cur`, the next unit's loads into `nxt` (free: its unit is done). A warp's weight and scale
  // loads share one scoreboard, so each wait for loaded registers is a wait for every load in flight: the
  // unit's scales are converted (its one wait) before the next unit is asked for, so the wait is for loads a
  // whole unit old, never for ones just issued (which stalled the warp a full memory latency each unit, a
  // quarter of its time: Nsight, dev/cuda/experiments/README.md).
  const auto run_unit = [&](UnitLoad<S>& cur, UnitLoad<S>& nxt, int u) {
    SpanScales<MT, S> sc[2];
#pragma unroll
    for (int j = 0; j < 2; ++j) sc[j].set(cur, j, (2 * unit + j) * 4 + t < a.runs);
    if (u + 1 < u1) next.load(nxt, a, tile0, g, t);
#pragma unroll
    for (int j = 0; j < 2; ++j) mma_span<MT, S, NT>(acc, cur.w[0][j], cur.w[1][j], sc[j], xs, 2 * unit + j, lane);
    if (++unit == per_tile) {  // the tile's last unit: a whole tile is written, a shared first one kept
      if (tile == first_tile && head_shared) {
        save_partial<NT>(heads + warp * E, acc, lane);
      } else {
        store_tile<T, NT>(acc, a, tile0 + tile, lane);
      }
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[nt][j] = 0.0f;
      unit = 0, ++tile;
    }
  };
  for (int u = u0; u < u1; u += 2) {
    run_unit(set_a, set_b, u);
    if (u + 1 < u1) run_unit(set_b, set_a, u + 1);
  }
  // A last tile that goes on in the next warp: the head slot when it is also the first tile, else the tail slot.
  const bool tail_open = unit != 0;
  if (tail_open && tile == first_tile) save_partial<NT>(heads + warp * E, acc, lane);
  __syncthreads();  // every warp is past x: its bytes take the tails
  if (tail_open && tile != first_tile) save_partial<NT>(tails + warp * E, acc, lane);
  __syncthreads();
  // A tile shared by warps is added by the warp that has its first unit, for which it is the last tile (it goes
  // on past u1), over every warp that has units of it, in warp order.
  const int last_tile = (u1 - 1) / per_tile;
  if (u0 == u1 || u1 % per_tile == 0 || last_tile * per_tile < u0) return;
  float sum[NT][4] = {};
  for (int w = 0; w < kResWarps; ++w) {
    const int b = warp_first_unit(w, units), e = warp_first_unit(w + 1, units);
    if (b == e || e <= last_tile * per_tile || b >= (last_tile + 1) * per_tile) continue;
    const float* part = (b / per_tile == last_tile ? heads : tails) + w * E;  // its first tile, or its last
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int j = 0; j < 4; ++j) sum[nt][j] += part[(nt * 4 + j) * 32 + lane];
  }
  store_tile<T, NT>(sum, a, tile0 + last_tile, lane);
}

}  // namespace gemma4::quant_cuda
