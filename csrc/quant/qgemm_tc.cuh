// The CUDA qgemm for more activation rows than the GEMV's (bf16/fp16 x): a tiled tensor-core GEMM that reads
// the packed int4/int8 weight directly, y = x @ dequant(W)^T (+ bias). Reference: gemma4.ops.reference.qgemm.
// Where it runs instead of dequantize-into-a-workspace + cuBLAS (which writes and reads the whole 16-bit
// weight on every call): qgemm_cuda.cu's tiled_gemm_wins.
//
// Block tile BM x BN x BK = (16 MTILES) x 128 x 64 (x rows x weight rows x k), 4 warps side by side along
// the weight rows, each warp all BM x rows x 32 weight rows, computed with mma.sync m16n8k16 (fp32
// accumulation): x is the A operand (ldmatrix from shared memory), the weight the B operand (its B
// fragment "col" layout is W's own [N, K] row-major order). x, the packed weight and the stage's scales are
// staged in shared memory by cp.async, STAGES deep, rows and k past the ends zero-filled. Of the layouts
// measured on the H200 (dev/cuda/experiments/README.md) this one, a warp owning every x row of the block,
// dequantizes each weight once per block and reuses each x fragment for 4 weight tiles; 128 threads of up to
// 255 registers, two blocks an SM.
//
// Dequantization happens in registers, once per block and weight: lane (g, t) needs, of weight row g of an
// 8-row tile and each 16-wide k step, the k slots {2t, 2t+1, 2t+8, 2t+9}. In a 32-weight int4 run byte i
// holds weights i (low nibble) and i + 16 (high), so bytes {2t, 2t+1, 2t+8, 2t+9} of the run give the lane
// both steps of the run: two 32-bit shared loads and one byte permute gather them, the low nibbles are
// step 0 and the high nibbles step 1. int8 runs are 32 bytes: the lane reads words 4h + t/2 and
// 4h + 2 + t/2 for step h. Each weight becomes exact q (magic-number conversion, qgemm_cuda.cuh) and is
// multiplied by its scale with a single rounding to x's dtype -- the same 16-bit weight as plain PyTorch's
// dequant(W).to(x.dtype) -- so the result is plain PyTorch's matmul on the dequantized weight, accumulated
// in fp32: in bf16x2 / fp16x2 when the scales have x's dtype (the hardware multiply rounds once), through
// fp32 otherwise (q * s is exact in fp32, then one rounding).
#pragma once
#include <ATen/ops/empty.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "common/cuda_launch.cuh"
#include "quant/qgemm_cuda.cuh"

namespace gemma4::quant_cuda {

constexpr int kTcWarpsM = 1, kTcWarpsN = 4, kTcThreads = 32 * kTcWarpsM * kTcWarpsN;  // warps: x rows x weight rows
constexpr int kTcNTiles = 4;                          // 8-row weight tiles per warp
constexpr int kTcBN = kTcWarpsN * kTcNTiles * 8;      // 128 weight rows per block
constexpr int kTcBK = 64;                             // k per stage: two 32-weight runs
constexpr int kTcXStride = kTcBK + 8;  // x tile row, elements: 144 bytes, so ldmatrix's 8 rows hit 8 bank groups

// Weight tile row, bytes: the stage's two runs plus 16 bytes of padding (48 or 80 bytes: 3 or 5 16-byte
// units, odd, so the 8 rows of a tile read in one instruction fall in 8 different bank groups).
template <int BITS>
constexpr int tc_w_stride() { return kTcBK * BITS / 8 + 16; }

// Pipeline depth: 4 stages, but 3 for int8, whose 4 would not leave room for two 128-row blocks per SM.
template <int BITS>
constexpr int tc_stages() { return BITS == 4 ? 4 : 3; }

// Per stage: the x tile, the weight tile and the weight rows' scales of the stage's two runs.
template <int BITS, int MTILES, typename S>
constexpr int tc_smem_bytes() {
  return tc_stages<BITS>() *
         (kTcWarpsM * MTILES * 16 * kTcXStride * 2 + kTcBN * tc_w_stride<BITS>() + kTcBN * 2 * int(sizeof(S)));
}

struct TcArgs {
  const void* x;       // [M, K] in T, rows 16-byte aligned
  const uint8_t* qw;   // [N, K/2] (int4) or [N, K] (int8), 16-byte aligned
  const void* scales;  // [N, G] in S
  const void* bias;    // [N] in T, or nullptr
  void* y;             // [M, N] in T
  float* partial;      // [tiles - unsplit, splits, BM, BN]: the split tiles' sums (nullptr when none)
  int M, N, K, G, group, runs;
  int tiles_m, ktiles;  // BM-row tiles of x; 64-k stages of K
  int unsplit, splits;  // tiles 0..unsplit-1 take one block each; the rest `splits` blocks over K
};

// Which tiles a launch splits over K (plan_tc): the blocks of the last, partial wave of tiles.
struct TcPlan {
  int unsplit = 0, splits = 1, blocks = 0;
};

__device__ __forceinline__ void tc_cp_async16(void* smem, const void* gmem, bool pred) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(pred ? 16 : 0));
}

__device__ __forceinline__ void tc_ldsm_x4(uint32_t (&r)[4], const void* p) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}

// A block's tile and its stages [kb, ke) of the plan in a (run_tiled): tiles 0..unsplit-1 whole (part -1), the
// rest `splits` blocks each, part `part` of the tile's stages. Tiles are numbered x-row tiles fastest, so the
// blocks sharing a weight tile run together and read it from HBM once.
struct TcBlock {
  int tile, part, kb, ke;
};
__device__ __forceinline__ TcBlock tc_block(const TcArgs& a) {
  if (int(blockIdx.x) < a.unsplit) return TcBlock{int(blockIdx.x), -1, 0, a.ktiles};
  const int q = blockIdx.x - a.unsplit, part = q % a.splits;
  return TcBlock{a.unsplit + q / a.splits, part, part * a.ktiles / a.splits, (part + 1) * a.ktiles / a.splits};
}

// True when the scale type S (c10::BFloat16 / c10::Half / float) is the MMA operand type MT.
template <typename S, typename MT>
constexpr bool scale_is_operand() {
  return (std::is_same_v<S, c10::BFloat16> && std::is_same_v<MT, __nv_bfloat16>) ||
         (std::is_same_v<S, c10::Half> && std::is_same_v<MT, __half>);
}

// A scale ready for scaled_pair: the 16-bit value twice (S is MT) or the float.
template <typename S, typename MT>
struct TcScale {
  using type = std::conditional_t<scale_is_operand<S, MT>(), uint32_t, float>;
  __device__ __forceinline__ static type make(S s) {
    if constexpr (scale_is_operand<S, MT>()) {
      uint16_t b;
      memcpy(&b, &s, 2);
      return uint32_t(b) * 0x00010001u;
    } else {
      return scale_to_float(s);
    }
  }
  // The same, or 0 where `live` is false; the 16-bit value is doubled by one byte permute whose selector picks
  // zero bytes instead (a select on the 16-bit value and the multiply took four instructions more).
  __device__ __forceinline__ static type make_live(S s, bool live) {
    if constexpr (scale_is_operand<S, MT>()) {
      uint16_t b;
      memcpy(&b, &s, 2);
      return __byte_perm(uint32_t(b), 0u, live ? 0x1010u : 0x4444u);
    } else {
      return live ? scale_to_float(s) : 0.0f;
    }
  }
};

// The exact pair of levels q (an MT pair) times the scale, rounded once to MT.
template <typename MT, typename SC>
__device__ __forceinline__ uint32_t scaled_pair(uint32_t q, SC s) {
  if constexpr (std::is_same_v<SC, uint32_t>) {
    if constexpr (std::is_same_v<MT, __nv_bfloat16>) {
      const __nv_bfloat162 r = __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&q),
                                       *reinterpret_cast<const __nv_bfloat162*>(&s));
      return *reinterpret_cast<const uint32_t*>(&r);
    } else {
      const __half2 r = __hmul2(*reinterpret_cast<const __half2*>(&q), *reinterpret_cast<const __half2*>(&s));
      return *reinterpret_cast<const uint32_t*>(&r);
    }
  } else {
    if constexpr (std::is_same_v<MT, __nv_bfloat16>) {
      const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&q));
      const __nv_bfloat162 r = __floats2bfloat162_rn(f.x * s, f.y * s);
      return *reinterpret_cast<const uint32_t*>(&r);
    } else {
      const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&q));
      const __half2 r = __floats2half2_rn(f.x * s, f.y * s);
      return *reinterpret_cast<const uint32_t*>(&r);
    }
  }
}

// The words of a weight row's run that lane t's fragments come from: of each 16 bytes (an int4 run; an int8 run's
// two halves), the word at byte 4 (t >> 1) and the word 8 bytes on.
template <int BITS>
struct RunWords {
  uint32_t w[BITS == 4 ? 2 : 4];
};
// The B fragments (b[h][0..1] for the run's steps h = 0, 1) of lane (g, t) from those words, scaled.
template <typename MT, int BITS, typename SC>
__device__ __forceinline__ void words_fragments(const RunWords<BITS>& v, int t, SC s, uint32_t (&b)[2][2]) {
  if constexpr (BITS == 4) {
    const uint32_t u = __byte_perm(v.w[0], v.w[1], (t & 1) ? 0x7632 : 0x5410);  // bytes 2t, 2t+1, 2t+8, 2t+9
    const uint32_t p01 = __byte_perm(u, 0, 0x4140), p23 = __byte_perm(u, 0, 0x4342);  // at bits 0 and 16
    b[0][0] = scaled_pair<MT>(int4_pair<MT>(p01, 0), s);  // weights 2t, 2t+1 (low nibbles)
    b[0][1] = scaled_pair<MT>(int4_pair<MT>(p23, 0), s);  // 2t+8, 2t+9
    b[1][0] = scaled_pair<MT>(int4_pair<MT>(p01, 4), s);  // 16 + ... (high nibbles)
    b[1][1] = scaled_pair<MT>(int4_pair<MT>(p23, 4), s);
  } else {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      b[h][0] = scaled_pair<MT>(int8_pair<MT>(v.w[2 * h], t & 1), s);      // 16h + 2t
      b[h][1] = scaled_pair<MT>(int8_pair<MT>(v.w[2 * h + 1], t & 1), s);  // 16h + 2t + 8
    }
  }
}
// The same from the run in shared memory (`run` points at its first byte).
template <typename MT, int BITS, typename SC>
__device__ __forceinline__ void run_fragments(const uint8_t* run, int t, SC s, uint32_t (&b)[2][2]) {
  RunWords<BITS> v;
#pragma unroll
  for (int h = 0; h < (BITS == 4 ? 1 : 2); ++h) {
    v.w[2 * h] = *reinterpret_cast<const uint32_t*>(run + 16 * h + 4 * (t >> 1));
    v.w[2 * h + 1] = *reinterpret_cast<const uint32_t*>(run + 16 * h + 8 + 4 * (t >> 1));
  }
  words_fragments<MT, BITS>(v, t, s, b);
}

template <typename MT, typename S, int BITS, int MTILES, typename T>
__global__ void __launch_bounds__(kTcThreads, 2) qgemm_tc_kernel(const TcArgs a) {
  constexpr int BM = kTcWarpsM * MTILES * 16, WS = tc_w_stride<BITS>(), RUNB = 32 * BITS / 8;
  constexpr int XCH = kTcBK / 8, WCH = kTcBK * BITS / 8 / 16;  // 16-byte chunks per row and stage
  constexpr int STAGES = tc_stages<BITS>();
  constexpr int SPT = 2 * kTcBN / kTcThreads;  // scales a thread stages: of 2 runs x BN rows
  static_assert(BM * XCH % kTcThreads == 0 && kTcBN * WCH % kTcThreads == 0 && 2 * kTcBN % kTcThreads == 0);
  extern __shared__ __align__(16) uint8_t smem[];
  MT* xs = reinterpret_cast<MT*>(smem);                                      // [STAGES][BM][kTcXStride]
  uint8_t* ws = smem + STAGES * BM * kTcXStride * sizeof(MT);                // [STAGES][BN][WS]
  S* ss = reinterpret_cast<S*>(ws + STAGES * kTcBN * WS);                    // [STAGES][BN][2 runs]
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int wm = warp / kTcWarpsN, wn = warp % kTcWarpsN;
  const auto [tile, part, kb, ke] = tc_block(a);
  const int m0 = (tile % a.tiles_m) * BM, n0 = (tile / a.tiles_m) * kTcBN;
  const int64_t row_bytes = int64_t(a.K) * BITS / 8;
  const int stages = ke - kb;
  const MT* x = static_cast<const MT*>(a.x);
  const S* scales = static_cast<const S*>(a.scales);

  // Stage kb + i into buffer i % STAGES: BM x rows and BN weight rows, 64 k each; k past K (an odd run
  // count's last stage) and rows past M / N are zero-filled.
  const auto load_stage = [&](int i) {
    MT* xb = xs + (i % STAGES) * BM * kTcXStride;
    uint8_t* wb = ws + (i % STAGES) * kTcBN * WS;
    const int k0 = (kb + i) * kTcBK;
#pragma unroll
    for (int it = 0; it < BM * XCH / kTcThreads; ++it) {
      const int r = (tid + it * kTcThreads) / XCH, c = (tid + it * kTcThreads) % XCH;
      const bool ok = m0 + r < a.M && k0 + 8 * c < a.K;
      tc_cp_async16(xb + r * kTcXStride + 8 * c, ok ? x + int64_t(m0 + r) * a.K + k0 + 8 * c : x, ok);
    }
#pragma unroll
    for (int it = 0; it < kTcBN * WCH / kTcThreads; ++it) {
      const int r = (tid + it * kTcThreads) / WCH, c = (tid + it * kTcThreads) % WCH;
      const bool ok = n0 + r < a.N && (k0 + 128 / BITS * c) < a.K;  // a chunk is 32 (int4) or 16 (int8) weights
      tc_cp_async16(wb + r * WS + 16 * c, ok ? a.qw + int64_t(n0 + r) * row_bytes + k0 * BITS / 8 + 16 * c : a.qw,
                    ok);
    }
  };
  // The scales go through shared memory too: slot u = tid + kTcThreads * v (v < SPT) of a stage holds weight
  // row u / 2's scale of the stage's run u % 2 (clamped to valid rows and runs: the zero-filled x of a missing
  // run makes its products zero). cp.async copies 4 bytes at least, so a plain load is issued one stage
  // ahead of its store (`pending`): SPT registers a thread, where holding every lane's scales spilled.
  const auto scale_of = [&](int i, int v) {
    const int u = tid + kTcThreads * v;
    const int64_t n = min(n0 + u / 2, a.N - 1);
    return __ldg(scales + n * a.G + min(2 * (kb + i) + u % 2, a.runs - 1) * 32 / a.group);
  };

  float acc[MTILES][kTcNTiles][4];
#pragma unroll
  for (int mt = 0; mt < MTILES; ++mt)
#pragma unroll
    for (int j = 0; j < kTcNTiles; ++j) acc[mt][j][0] = acc[mt][j][1] = acc[mt][j][2] = acc[mt][j][3] = 0.f;

#pragma unroll
  for (int i = 0; i < STAGES - 1; ++i) {
    if (i < stages) load_stage(i);
    asm volatile("cp.async.commit_group;\n" ::);
  }
#pragma unroll
  for (int i = 0; i < STAGES - 2; ++i)
    if (i < stages)
#pragma unroll
      for (int v = 0; v < SPT; ++v) ss[i * 2 * kTcBN + tid + kTcThreads * v] = scale_of(i, v);
  S pending[SPT];
#pragma unroll
  for (int v = 0; v < SPT; ++v) pending[v] = scale_of(min(STAGES - 2, stages - 1), v);

  for (int i = 0; i < stages; ++i) {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(STAGES - 2));
    // Stage i has landed for all threads, and every thread is done with stage i - 1: its buffers, (i - 1) %
    // STAGES, are free to refill, and so is the scale slot of stage i - 2.
    __syncthreads();
    if (i + STAGES - 1 < stages) load_stage(i + STAGES - 1);
    asm volatile("cp.async.commit_group;\n" ::);
#pragma unroll
    for (int v = 0; v < SPT; ++v) {
      if (i + STAGES - 2 < stages) ss[(i + STAGES - 2) % STAGES * 2 * kTcBN + tid + kTcThreads * v] = pending[v];  // read from i + 1 on
      if (i + STAGES - 1 < stages) pending[v] = scale_of(i + STAGES - 1, v);
    }

    const MT* xb = xs + (i % STAGES) * BM * kTcXStride;
    const uint8_t* wb = ws + (i % STAGES) * kTcBN * WS;
    const S* sb = ss + (i % STAGES) * 2 * kTcBN;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      uint32_t b[kTcNTiles][2][2];  // [tile][step of the run][reg]
#pragma unroll
      for (int j = 0; j < kTcNTiles; ++j) {
        const int row = wn * kTcNTiles * 8 + 8 * j + g;
        run_fragments<MT, BITS>(wb + row * WS + RUNB * r, t, TcScale<S, MT>::make(sb[2 * row + r]), b[j]);
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
#pragma unroll
        for (int mt = 0; mt < MTILES; ++mt) {
          uint32_t af[4];
          const int row = wm * MTILES * 16 + 16 * mt + (lane & 15);
          tc_ldsm_x4(af, xb + row * kTcXStride + 32 * r + 16 * h + (lane >> 4) * 8);
#pragma unroll
          for (int j = 0; j < kTcNTiles; ++j) mma16816<MT>(acc[mt][j], af, b[j][h][0], b[j][h][1]);
        }
      }
    }
  }
  asm volatile("cp.async.wait_group 0;\n" ::);

  // Epilogue: acc[mt][j] holds y rows (g, g + 8) of tile mt and weight rows (2t, 2t + 1) of tile j. A split
  // tile's part goes whole into its slot of the workspace; qgemm_tc_fixup_kernel adds the parts.
  if (part >= 0) {
    float* p = a.partial + (int64_t(tile - a.unsplit) * a.splits + part) * BM * kTcBN;  // [BM, BN]
#pragma unroll
    for (int j = 0; j < kTcNTiles; ++j)
#pragma unroll
      for (int mt = 0; mt < MTILES; ++mt)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          const int r = wm * MTILES * 16 + 16 * mt + g + 8 * hh, c = wn * kTcNTiles * 8 + 8 * j + 2 * t;
          *reinterpret_cast<float2*>(p + r * kTcBN + c) = make_float2(acc[mt][j][2 * hh], acc[mt][j][2 * hh + 1]);
        }
    return;
  }
  const T* bias = static_cast<const T*>(a.bias);
  T* y = static_cast<T*>(a.y);
#pragma unroll
  for (int j = 0; j < kTcNTiles; ++j) {
    const int n = n0 + wn * kTcNTiles * 8 + 8 * j + 2 * t;
    if (n >= a.N) continue;
    const bool pair = n + 1 < a.N;
    const float b0 = bias ? static_cast<float>(bias[n]) : 0.f;
    const float b1 = bias && pair ? static_cast<float>(bias[n + 1]) : 0.f;
#pragma unroll
    for (int mt = 0; mt < MTILES; ++mt)
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int m = m0 + wm * MTILES * 16 + 16 * mt + g + 8 * hh;
        if (m >= a.M) continue;
        T* out = y + int64_t(m) * a.N + n;
        out[0] = static_cast<T>(acc[mt][j][2 * hh] + b0);
        if (pair) out[1] = static_cast<T>(acc[mt][j][2 * hh + 1] + b1);
      }
  }
}

// y = the split tiles' parts added in order, + bias, rounded once. One thread per 4 columns of a tile row;
// grid: (split tiles) * BM / 4 blocks of 4 rows (BN threads). BN: the tiles' weight rows.
template <typename T, int BM, int BN>
__global__ void __launch_bounds__(BN) qgemm_tc_fixup_kernel(const TcArgs a) {
  constexpr int kRowThreads = BN / 4;
  const int q = blockIdx.x / (BM / 4), r = blockIdx.x % (BM / 4) * 4 + threadIdx.x / kRowThreads;
  const int c = threadIdx.x % kRowThreads * 4;
  const int tile = a.unsplit + q, m = (tile % a.tiles_m) * BM + r, n0 = (tile / a.tiles_m) * BN + c;
  if (m >= a.M) return;
  const float* p = a.partial + int64_t(q) * a.splits * BM * BN + r * BN + c;
  float4 s = *reinterpret_cast<const float4*>(p);
  for (int part = 1; part < a.splits; ++part) {
    const float4 v = *reinterpret_cast<const float4*>(p + int64_t(part) * BM * BN);
    s.x += v.x, s.y += v.y, s.z += v.z, s.w += v.w;
  }
  const float v[4] = {s.x, s.y, s.z, s.w};
  const T* bias = static_cast<const T*>(a.bias);
  T* y = static_cast<T*>(a.y) + int64_t(m) * a.N;
#pragma unroll
  for (int i = 0; i < 4; ++i)
    if (n0 + i < a.N) y[n0 + i] = static_cast<T>(v[i] + (bias ? static_cast<float>(bias[n0 + i]) : 0.f));
}

// The split that finishes first by a wave model. `slots` blocks run at once (SMs x resident blocks); whole
// waves of tiles run unsplit, and the last, partial wave's tiles are split over K into as many parts as fill
// the slots (at least kMinStages stages a part), if that is faster counting the fp32 parts' round trip
// through memory. Time in stages of one block: a block's stage is 2 BM BN 64 FLOP at the ~300 TFLOP/s this
// kernel reaches over the H200's 132 SMs (31B gate_up, 1024 rows), the parts move at 3 TB/s. Without a split the last wave runs
// whole stage counts on few SMs: 31B gate_up at 128 rows is 336 tiles on 264 slots, 2 waves for 1.27
// waves of work; 31B down, 42 tiles, would use a sixth of the GPU.
inline TcPlan plan_tc(int tiles, int ktiles, int slots, int bm, int bn, int sms) {
  constexpr int kMinStages = 4;
  constexpr double kFlopsPerSm = 300e12 / 132, kBytesPerS = 3e12;
  TcPlan plan{tiles, 1, tiles};
  const int full = tiles / slots * slots, rest = tiles - full;
  const int splits = std::min(rest > 0 ? slots / rest : 1, ktiles / kMinStages);
  if (splits < 2) return plan;
  const double stage_s = 2.0 * bm * bn * kTcBK / (kFlopsPerSm * sms / slots);
  const double parts_s = 2.0 * rest * splits * bm * bn * sizeof(float) / kBytesPerS;
  const double whole = double(cuda::ceil_div(tiles, slots)) * ktiles * stage_s;
  const double split = (double(full / slots) * ktiles + cuda::ceil_div(ktiles, splits)) * stage_s + parts_s;
  if (split < whole) plan = TcPlan{full, splits, full + rest * splits};
  return plan;
}

// Runs a tiled GEMM of BM x rows by BN weight rows a tile (tiles x-row tiles fastest, `resident` blocks an SM)
// on the current stream: fills a's tiling and split fields (plan_tc), allocates the split parts' workspace
// (torch's caching allocator, so the call can be captured in a CUDA graph), calls launch(blocks) for the
// GEMM kernel, then adds the parts.
template <typename T, int BM, int BN, typename L>
void run_tiled(TcArgs& a, const at::TensorOptions& device, int resident, L&& launch) {
  a.tiles_m = cuda::ceil_div(a.M, BM);
  a.ktiles = cuda::ceil_div(a.runs, 2);
  const int tiles = a.tiles_m * cuda::ceil_div(a.N, BN), sms = cuda::sm_count();
  const TcPlan plan = plan_tc(tiles, a.ktiles, sms * std::max(resident, 1), BM, BN, sms);
  a.unsplit = plan.unsplit;
  a.splits = plan.splits;
  at::Tensor partial;
  if (plan.unsplit < tiles) {
    partial = at::empty({int64_t(tiles - plan.unsplit) * plan.splits * BM * BN}, device.dtype(at::kFloat));
    a.partial = partial.mutable_data_ptr<float>();
  }
  launch(plan.blocks);
  if (plan.unsplit < tiles) {
    qgemm_tc_fixup_kernel<T, BM, BN><<<(tiles - plan.unsplit) * (BM / 4), BN, 0, cuda::stream()>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// Launches the GEMM: MTILES = 4 (64 x rows a block) up to 64 rows, else 8 (128).
template <typename T, typename MT, typename S, int BITS>
void launch_qgemm_tc(TcArgs a, const at::TensorOptions& device) {
  const auto go = [&]<int MTILES>() {
    constexpr int BM = kTcWarpsM * MTILES * 16, smem = tc_smem_bytes<BITS, MTILES, S>();
    const auto kernel = qgemm_tc_kernel<MT, S, BITS, MTILES, T>;
    static thread_local int configured_device = -1, resident = 0;  // the shared-memory opt-in is per device
    const int d = c10::cuda::current_device();
    if (configured_device != d) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
      C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, kTcThreads, smem));
      configured_device = d;
    }
    run_tiled<T, BM, kTcBN>(a, device, resident, [&](int blocks) {
      kernel<<<blocks, kTcThreads, smem, cuda::stream()>>>(a);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  };
  if (a.M <= 64) {
    go.template operator()<4>();
  } else {
    go.template operator()<8>();
  }
}

}  // namespace gemma4::quant_cuda
