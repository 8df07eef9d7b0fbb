// The CUDA qgemm's tiled GEMM on Hopper (sm_90a): y = x @ dequant(W)^T (+ bias) for bf16/fp16 x above the
// GEMV's rows, on warpgroup MMAs (wgmma) fed by the copy engine (TMA). Reference: gemma4.ops.reference.qgemm;
// the mma.sync version it replaces on sm_90, and shares its dequantization and split over K with: qgemm_tc.cuh.
//
// Operands swapped: the MMA computes y^T = W x^T, so the dequantized weight is the A operand, which wgmma
// takes from registers, and x the B operand, which it reads from shared memory by descriptor. The weight
// is dequantized once per block in registers (no 16-bit copy of it in shared memory or HBM), and x's tile
// arrives in shared memory in the layout the MMA reads directly (K-major, 128-byte swizzle, written so by the
// copy engine), so no warp ldmatrix-es it.
//
// Block: four consumer warpgroups, each 64 weight rows x all BM (64 or 128) x rows of the tile, 64 k a stage
// (m64nBMk16 x 4); one block an SM. Lane (g, t) of warp q of warpgroup w holds, as the A fragment, weight rows
// 64w + 16q + g and + 8 at k slots {2t, 2t+1, 2t+8, 2t+9} of each 16-wide step: two of words_fragments' B
// fragments (qgemm_tc.cuh: the same exact levels times the scale, rounded once to x's dtype, so the products
// are plain PyTorch's on dequant(W).to(dtype)). The accumulator D[row = weight row][col = x row] is fp32.
//
// Pipeline: thread 0 issues each stage's two tensor copies (x tile; packed weight tile, 32- or 64-byte swizzle
// so that the fragment loads of a warp's 8 rows hit distinct banks) on the stage's `full` mbarrier, STAGES - 2
// stages ahead; each warp arrives on the stage's `empty` mbarrier once its MMAs of the stage are done, and
// thread 0 waits on it before refilling the slot. The warpgroups meet at no block barrier, and each x tile
// crosses L2 once per 256 weight rows. Each thread loads its own rows' scales a stage ahead (__ldg).
//
// A warpgroup waits for its MMAs every stage: with A in registers, ptxas serializes every MMA of a kernel in
// which registers an MMA reads are written while MMAs are in flight (C7513), as dequantizing stage i + 1 under
// stage i's would be; the four warpgroups an SM overlap one's dequantization with another's MMAs instead.
//
// On the H200 (dev/cuda/experiments/README.md, "Hopper GEMM fed by the copy engine" and "Fewer instructions a
// stage"): 31B gate_up int4 at 128 rows 115 us (the cp.async version with two 128-row blocks an SM: 154; bf16
// cuBLAS 119-121), int8 per channel 131 (188). What bounds it is the instructions a warp issues per stage
// (Nsight: tensor pipe 51% busy, 0.9 eligible warps a scheduler, at 235 instructions a stage), hence the scale
// index kept without a division, the loop's addresses kept as 32-bit lane constants and the scales loaded in
// pairs (~150 now).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>

#include "common/cuda_launch.cuh"
#include "quant/copy_engine.cuh"
#include "quant/qgemm_cuda.cuh"
#include "quant/qgemm_cuda_dispatch.h"
#include "quant/qgemm_tc.cuh"
#include "quant/qgemm_wgmma.h"

namespace gemma4::quant_cuda {
namespace {

// Shared-memory matrix descriptor of a K-major tile with 128-byte swizzle: rows of 64 16-bit k, eight-row
// groups 1024 bytes apart (stride byte offset), leading byte offset unused (1), tile base 1024-byte aligned.
__device__ __forceinline__ uint64_t swizzled_tile_descriptor(uint32_t smem_addr) {
  return uint64_t((smem_addr & 0x3FFFFu) >> 4) | (uint64_t(1) << 16) | (uint64_t(1024 >> 4) << 32) |
         (uint64_t(1) << 62);
}

#define GEMMA4_F8(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
                     "+f"(d[i + 6]), "+f"(d[i + 7])
#define GEMMA4_WGMMA_N64(TY)                                                                                        \
  asm volatile(                                                                                                     \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                                                                  \
      "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY                                                       \
      " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
      "%23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"                   \
      : GEMMA4_F8(0), GEMMA4_F8(8), GEMMA4_F8(16), GEMMA4_F8(24)                                                    \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1))
#define GEMMA4_WGMMA_N128(TY)                                                                                       \
  asm volatile(                                                                                                     \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                                                                  \
      "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY                                                      \
      " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
      "%23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, "    \
      "%44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "        \
      "{%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"                                                                 \
      : GEMMA4_F8(0), GEMMA4_F8(8), GEMMA4_F8(16), GEMMA4_F8(24), GEMMA4_F8(32), GEMMA4_F8(40), GEMMA4_F8(48),      \
        GEMMA4_F8(56)                                                                                               \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1))

// d[64 x BM] += a[64 x 16] (registers) * b[16 x BM] (shared memory, K-major), fp32 accumulation, issued
// asynchronously by the warpgroup.
template <typename MT, int BM>
__device__ __forceinline__ void wgmma_step(float (&d)[BM / 2], const uint32_t (&a)[4], uint64_t desc) {
  constexpr bool bf16 = std::is_same_v<MT, __nv_bfloat16>;
  if constexpr (BM == 64 && bf16) {
    GEMMA4_WGMMA_N64("bf16");
  } else if constexpr (BM == 64) {
    GEMMA4_WGMMA_N64("f16");
  } else if constexpr (bf16) {
    GEMMA4_WGMMA_N128("bf16");
  } else {
    GEMMA4_WGMMA_N128("f16");
  }
}
#undef GEMMA4_WGMMA_N64
#undef GEMMA4_WGMMA_N128
#undef GEMMA4_F8

// Keeps the compiler from moving reads or writes of v across the point where the asynchronous MMAs are known
// to be done with it.
template <int N>
__device__ __forceinline__ void fence_registers(float (&v)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(v[i])::"memory");
}

constexpr int kWgThreads = 2 * kWgBN;  // a warpgroup (128 threads) per 64 weight rows
constexpr int kWgBarrierBytes = 1024;  // full + empty mbarriers; keeps the tiles after them 1024-byte aligned

template <int BITS, int BM>
constexpr int wg_stage_bytes() {
  return BM * 128 + kWgBN * 64 * BITS / 8;
}
template <int BITS, int BM>
constexpr int wg_stages() {
  return std::min(8, (232448 - kWgBarrierBytes - 1024) / wg_stage_bytes<BITS, BM>());
}
template <int BITS, int BM>
constexpr int wg_smem_bytes() {
  return wg_stages<BITS, BM>() * wg_stage_bytes<BITS, BM>() + kWgBarrierBytes + 1024;
}

template <typename MT, typename S, int BITS, int BM, typename T>
__global__ void __launch_bounds__(kWgThreads, 1)
    qgemm_wgmma_kernel(const __grid_constant__ TcArgs a, const __grid_constant__ CUtensorMap xmap,
                       const __grid_constant__ CUtensorMap wmap) {
  constexpr int WROW = 64 * BITS / 8;  // bytes of a weight row a stage: 32 (int4) or 64
  constexpr int XB = BM * 128, WB = kWgBN * WROW;
  constexpr int ST = wg_stages<BITS, BM>(), AHEAD = ST - 2;
  extern __shared__ __align__(16) uint8_t smem_raw[];
  uint64_t* full = reinterpret_cast<uint64_t*>(smem_raw);
  uint64_t* empty = full + ST;
  uint8_t* xs = smem_raw + kWgBarrierBytes;
  xs += (1024 - smem_addr(xs) % 1024) % 1024;  // [ST][BM][128 bytes], 128-byte swizzle
  uint8_t* ws = xs + ST * XB;                   // [ST][BN][WROW], 32- or 64-byte swizzle
  const uint32_t xs_addr = smem_addr(xs);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int row0 = warp * 16 + g;  // weight rows row0 and row0 + 8 of the block: warpgroup warp / 4

  const auto [tile, part, kb, ke] = tc_block(a);
  const int m0 = (tile % a.tiles_m) * BM, n0 = (tile / a.tiles_m) * kWgBN;
  const int stages = ke - kb;
  const S* scales = static_cast<const S*>(a.scales);

  if (tid == 0) {
    for (int s = 0; s < ST; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], kWgThreads / 32);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
  // Stage kb + i into slot i % ST: whole boxes, rows past M / N and k past K arriving as zeros.
  const auto issue = [&](int i) {
    const int slot = i % ST;
    mbar_arrive_expect_tx(&full[slot], XB + WB);
    tensor_copy_2d(xs + slot * XB, &xmap, (kb + i) * 64, m0, &full[slot]);
    tensor_copy_2d(ws + slot * WB, &wmap, (kb + i) * WROW, n0, &full[slot]);
  };
  if (tid == 0)
    for (int i = 0; i < min(AHEAD, stages); ++i) issue(i);

  // The lane's scales of a stage, [row0 | row0 + 8][run 0 | 1], loaded a stage before they are used, stage after
  // stage. Run c's scale is c / rps (rps = group / 32 runs share one), clamped to the row's last scale (a run past
  // K multiplies zero x, as in qgemm_tc_kernel). The two rows' pointers move on as the runs cross groups, so the
  // loop has no division and no 64-bit address product (31 -> ~20 instructions a stage, SASS).
  const int64_t na = min(n0 + row0, a.N - 1), nb = min(n0 + row0 + 8, a.N - 1);
  const int rps = a.group / 32;
  int sq = 2 * kb / rps, sr = 2 * kb % rps;  // the next run to load: its scale and its place in the group
  const S* pa = scales + na * a.G + min(sq, a.G - 1);
  const S* pb = scales + nb * a.G + min(sq, a.G - 1);
  // With one scale a run (group 32), an even run count and aligned rows, a stage's two scales of a row are one
  // load: 2 loads a stage instead of 4, and no group bookkeeping (~150 instructions a stage instead of 163; on the
  // H200 31B gate_up int4 at 128 rows 120.8 -> 115.4 us, int8 per channel, which takes the other branch, 1-2%
  // slower: dev/device_runs/2026-12-04e-h200-wgmma-paired-scales.log).
  using Pair = std::conditional_t<sizeof(S) == 2, uint32_t, uint2>;
  const bool paired = rps == 1 && a.runs % 2 == 0 && a.G % 2 == 0 &&
                      reinterpret_cast<uintptr_t>(scales) % sizeof(Pair) == 0;
  const auto load_scales = [&](S(&v)[4]) {
    if (paired) {
      const Pair qa = __ldg(reinterpret_cast<const Pair*>(pa)), qb = __ldg(reinterpret_cast<const Pair*>(pb));
      memcpy(&v[0], &qa, sizeof(Pair));
      memcpy(&v[2], &qb, sizeof(Pair));
      pa += 2;
      pb += 2;
      return;
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      v[r] = __ldg(pa);
      v[2 + r] = __ldg(pb);
      if (++sr == rps) {
        sr = 0;
        if (++sq < a.G) {
          ++pa;
          ++pb;
        }
      }
    }
  };
  // The shared addresses of the lane's words of a stage's weight tile (slot 0; a slot is WB bytes on), for runs r
  // = 0, 1 of row row0 and its 16-byte halves h (int8; an int4 run is one): chunk c of row n sits at chunk
  // c ^ (n / 4 % 2) (int4, 32-byte swizzle) or c ^ (n / 2 % 4) (int8, 64-byte); row0 + 8 (8 WROW bytes on)
  // shares the term. Kept as 32-bit lane constants, and the barriers' addresses likewise: computed from the
  // pointers each stage they cost ~40 instructions of the loop's ~180 (SASS).
  constexpr int HALVES = BITS == 4 ? 1 : 2;
  const int swz = BITS == 4 ? (row0 >> 2) & 1 : (row0 >> 1) & 3;
  uint32_t woff[2][HALVES];
#pragma unroll
  for (int r = 0; r < 2; ++r)
#pragma unroll
    for (int h = 0; h < HALVES; ++h)
      woff[r][h] = smem_addr(ws) + uint32_t(row0 * WROW + 16 * ((HALVES * r + h) ^ swz) + 4 * (t >> 1));
  const uint32_t full0 = smem_addr(full), empty0 = smem_addr(empty);  // slot s's barriers: 8 s bytes on

  float acc[BM / 2];
#pragma unroll
  for (int j = 0; j < BM / 2; ++j) acc[j] = 0.f;
  S next[4];
  if (stages > 0) load_scales(next);

  // Stage i in slot `slot`: refill the slot of stage i + AHEAD - ST (thread 0), wait for stage i's bytes,
  // dequantize its A fragments into af and issue its four MMAs (committed, not waited for).
  const auto mma_stage = [&](int i, int slot, uint32_t parity, uint32_t(&af)[4][4]) {
    S sc[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) sc[e] = next[e];
    if (i + 1 < stages) load_scales(next);
    if (tid == 0 && i + AHEAD < stages) {
      const int j = i + AHEAD;
      if (j >= ST) mbar_wait(&empty[j % ST], (j / ST - 1) & 1);  // every warp done with stage j - ST
      issue(j);
    }
    mbar_wait(full0 + 8 * slot, parity);

    const uint32_t so = uint32_t(slot * WB);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      uint32_t lo[2][2], hi[2][2];  // rows row0, row0 + 8: [step of the run][k slots 2t.. | 2t+8..]
      RunWords<BITS> va, vb;
#pragma unroll
      for (int h = 0; h < HALVES; ++h) {
        const uint32_t w = woff[r][h] + so;
        va.w[2 * h] = lds_u32(w);
        va.w[2 * h + 1] = lds_u32(w + 8);
        vb.w[2 * h] = lds_u32(w + 8 * WROW);
        vb.w[2 * h + 1] = lds_u32(w + 8 * WROW + 8);
      }
      words_fragments<MT, BITS>(va, t, TcScale<S, MT>::make(sc[r]), lo);
      words_fragments<MT, BITS>(vb, t, TcScale<S, MT>::make(sc[2 + r]), hi);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        af[2 * r + h][0] = lo[h][0];
        af[2 * r + h][1] = hi[h][0];
        af[2 * r + h][2] = lo[h][1];
        af[2 * r + h][3] = hi[h][1];
      }
    }
    const uint64_t desc = swizzled_tile_descriptor(xs_addr + slot * XB);
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int s = 0; s < 4; ++s) wgmma_step<MT, BM>(acc, af[s], desc + 2 * s);
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
  };
  int slot = 0;
  uint32_t parity = 0;
  for (int i = 0; i < stages; ++i) {
    uint32_t af[4][4];
    mma_stage(i, slot, parity, af);
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    __syncwarp();
    if (lane == 0) mbar_arrive(empty0 + 8 * slot);  // the warp is done with the slot: its MMAs have completed
    if (++slot == ST) {
      slot = 0;
      parity ^= 1;
    }
  }
  fence_registers(acc);  // the accumulators are read only after the last wait

  // Epilogue: acc[4j + e] of lane (g, t) is weight row row0 + 8 (e / 2), x row 8j + 2t + e % 2. A split tile's
  // part goes to its [BM, BN] slot of the workspace (qgemm_tc_fixup_kernel adds the parts and the bias).
  if (part >= 0) {
    float* p = a.partial + (int64_t(tile - a.unsplit) * a.splits + part) * BM * kWgBN;  // [BM, BN]
#pragma unroll
    for (int j = 0; j < BM / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) p[(8 * j + 2 * t + e % 2) * kWgBN + row0 + 8 * (e / 2)] = acc[4 * j + e];
    return;
  }
  const T* bias = static_cast<const T*>(a.bias);
  T* y = static_cast<T*>(a.y);
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const int n = n0 + row0 + 8 * hh;
    if (n >= a.N) continue;
    const float b = bias ? static_cast<float>(bias[n]) : 0.f;
#pragma unroll
    for (int j = 0; j < BM / 8; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int m = m0 + 8 * j + 2 * t + e;
        if (m < a.M) y[int64_t(m) * a.N + n] = static_cast<T>(acc[4 * j + 2 * hh + e] + b);
      }
  }
}

// Calls f.template operator()<T, MT, S, BITS, BM>() for the run-time types.
template <typename F>
void dispatch_wgmma(at::ScalarType xt, at::ScalarType st, int bits, int bm, F&& f) {
  dispatch_x(xt, [&]<typename T, typename MT>() {
    dispatch_scale(st, [&]<typename S>() {
      dispatch_bits(bits, [&]<int BITS>() {
        if (bm == 64) {
          f.template operator()<T, MT, S, BITS, 64>();
        } else {
          f.template operator()<T, MT, S, BITS, 128>();
        }
      });
    });
  });
}

// The shared-memory opt-in, once per kernel and device; returns the blocks an SM holds.
template <typename T, typename MT, typename S, int BITS, int BM>
int configure() {
  static thread_local int configured_device = -1, resident = 0;
  const int d = c10::cuda::current_device();
  if (configured_device != d) {
    constexpr int smem = wg_smem_bytes<BITS, BM>();
    const auto kernel = qgemm_wgmma_kernel<MT, S, BITS, BM, T>;
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, kWgThreads, smem));
    configured_device = d;
  }
  return resident;
}

}  // namespace

int wgmma_resident_blocks(at::ScalarType x, at::ScalarType scales, int bits, int bm) {
  int resident = 0;
  dispatch_wgmma(x, scales, bits, bm, [&]<typename T, typename MT, typename S, int BITS, int BM>() {
    resident = configure<T, MT, S, BITS, BM>();
  });
  return resident;
}

void launch_wgmma_kernel(const TcArgs& a, const CUtensorMap& xmap, const CUtensorMap& wmap, at::ScalarType x,
                         at::ScalarType scales, int bits, int bm, int blocks) {
  dispatch_wgmma(x, scales, bits, bm, [&]<typename T, typename MT, typename S, int BITS, int BM>() {
    configure<T, MT, S, BITS, BM>();
    qgemm_wgmma_kernel<MT, S, BITS, BM, T>
        <<<blocks, kWgThreads, wg_smem_bytes<BITS, BM>(), cuda::stream()>>>(a, xmap, wmap);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace gemma4::quant_cuda
