// The CUDA qgemm's tiled GEMM on Hopper (sm_90a): y = x @ dequant(W)^T (+ bias) for bf16/fp16 x above the
// GEMV's rows, on warpgroup MMAs (wgmma). Reference: gemma4.ops.reference.qgemm; the mma.sync version it
// replaces on sm_90, and shares its loads, dequantization and split over K with: qgemm_tc.cuh.
//
// Operands swapped: the MMA computes y^T = W x^T, so the dequantized weight is the A operand, which wgmma
// takes from registers, and x the B operand, which it reads from shared memory by descriptor. The weight
// is dequantized once per block in registers (no 16-bit copy of it in shared memory or HBM), and x's tile
// sits in shared memory in the layout the MMA reads directly (K-major, 128-byte swizzle), so no warp
// ldmatrix-es it.
//
// Block: two consumer warpgroups, each 64 weight rows x all BM (64 or 128) x rows of the tile, 64 k a stage
// (m64nBMk16 x 4). Lane (g, t) of warp q of warpgroup w holds, as the A fragment, weight rows
// 64w + 16q + g and + 8 at k slots {2t, 2t+1, 2t+8, 2t+9} of each 16-wide step: two of run_fragments' B
// fragments (qgemm_tc.cuh: the same exact levels times the scale, rounded once to x's dtype, so the products
// are plain PyTorch's on dequant(W).to(dtype)). The accumulator D[row = weight row][col = x row] is fp32.
//
// Pipeline: all 256 threads stage x (swizzled), the packed weight and its scales with cp.async, STAGES deep,
// STAGES - 2 stages ahead; each stage a warpgroup dequantizes, issues its four MMAs and waits for them; two
// blocks an SM overlap one's dequantization with the other's MMAs. The buffers a load refills, stage
// i - 2's, are free once every thread has passed the barrier at the top of stage i.
//
// On the H200 (dev/cuda/experiments/README.md, "Hopper GEMM"): 31B gate_up int4 at 128 rows 160 us against
// 224 for the mma.sync GEMM and 120 for bf16 cuBLAS. Tried and slower: one block an SM (228 us), dequantizing
// into shared memory so that the MMAs could read both operands there and run under the next stage's
// dequantization (`wgmma_smem_a.patch`: 204 us; its stores cost issue slots the loop lacks).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>

#include "common/cuda_launch.cuh"
#include "quant/qgemm_cuda.cuh"
#include "quant/qgemm_cuda_dispatch.h"
#include "quant/qgemm_tc.cuh"
#include "quant/qgemm_wgmma.h"

namespace gemma4::quant_cuda {
namespace {

constexpr int kWgThreads = 256;  // two warpgroups
// Blocks an SM (registers and shared memory are sized for it): two, so that one block's dequantization runs
// under the other's MMAs (a warpgroup's own cannot: below).
constexpr int kWgBlocks = 2;

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

template <int BITS, int BM, typename S>
constexpr int wg_stage_bytes() {
  return BM * 128 + kWgBN * tc_w_stride<BITS>() + kWgBN * 2 * int(sizeof(S));
}
// Pipeline depth: up to 6 stages, as many as leave room for kWgBlocks blocks an SM (228 KB, 1 KB of it
// reserved per block); loads run STAGES - 2 stages ahead of the MMAs.
template <int BITS, int BM, typename S>
constexpr int wg_stages() {
  return std::min(6, ((233472 / kWgBlocks - 1024) - 1024) / wg_stage_bytes<BITS, BM, S>());
}
template <int BITS, int BM, typename S>
constexpr int wg_smem_bytes() {
  return wg_stages<BITS, BM, S>() * wg_stage_bytes<BITS, BM, S>() + 1024;  // + the slack that aligns x to 1024
}

template <typename MT, typename S, int BITS, int BM, typename T>
__global__ void __launch_bounds__(kWgThreads, kWgBlocks) qgemm_wgmma_kernel(const TcArgs a) {
  constexpr int WS = tc_w_stride<BITS>(), RUNB = 32 * BITS / 8;
  constexpr int XCH = 8, WCH = 64 * BITS / 8 / 16;  // 16-byte chunks per row and stage
  constexpr int XB = BM * 128, WB = kWgBN * WS;     // bytes of a stage's x and weight tiles
  constexpr int kWgStages = wg_stages<BITS, BM, S>(), kWgAhead = kWgStages - 2;
  static_assert(kWgBN * WCH % kWgThreads == 0 && 2 * kWgBN == kWgThreads && BM * XCH % kWgThreads == 0);
  extern __shared__ uint8_t smem_raw[];
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  uint8_t* xs = smem_raw + ((1024 - raw % 1024) % 1024);  // [STAGES][BM][128 bytes], 128-byte swizzle
  uint8_t* ws = xs + kWgStages * XB;                      // [STAGES][BN][WS]
  S* ss = reinterpret_cast<S*>(ws + kWgStages * WB);      // [STAGES][BN][2 runs]
  const uint32_t xs_addr = static_cast<uint32_t>(__cvta_generic_to_shared(xs));
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int row0 = warp * 16 + g;  // weight rows row0 and row0 + 8 of the block: warpgroup warp / 4

  const auto [tile, part, kb, ke] = tc_block(a);
  const int m0 = (tile % a.tiles_m) * BM, n0 = (tile / a.tiles_m) * kWgBN;
  const int64_t row_bytes = int64_t(a.K) * BITS / 8;
  const int stages = ke - kb;
  const MT* x = static_cast<const MT*>(a.x);
  const S* scales = static_cast<const S*>(a.scales);

  // Stage kb + i into buffer i % STAGES; rows past M / N and k past K zero-filled. x's 16-byte chunk c of
  // row r goes to chunk c ^ (r % 8) of its 128-byte row: the swizzle the descriptor names.
  const auto load_stage = [&](int i) {
    uint8_t* xb = xs + (i % kWgStages) * XB;
    uint8_t* wb = ws + (i % kWgStages) * WB;
    const int k0 = (kb + i) * 64;
#pragma unroll
    for (int it = 0; it < BM * XCH / kWgThreads; ++it) {
      const int r = (tid + it * kWgThreads) / XCH, c = (tid + it * kWgThreads) % XCH;
      const bool ok = m0 + r < a.M && k0 + 8 * c < a.K;
      tc_cp_async16(xb + r * 128 + ((c ^ (r % 8)) * 16), ok ? x + int64_t(m0 + r) * a.K + k0 + 8 * c : x, ok);
    }
#pragma unroll
    for (int it = 0; it < kWgBN * WCH / kWgThreads; ++it) {
      const int r = (tid + it * kWgThreads) / WCH, c = (tid + it * kWgThreads) % WCH;
      const bool ok = n0 + r < a.N && (k0 + 128 / BITS * c) < a.K;
      tc_cp_async16(wb + r * WS + 16 * c, ok ? a.qw + int64_t(n0 + r) * row_bytes + k0 * BITS / 8 + 16 * c : a.qw,
                    ok);
    }
  };
  // Scale slot tid of a stage: weight row tid / 2's scale of run tid % 2 (clamped, as in qgemm_tc_kernel),
  // loaded one stage before it is stored.
  const auto scale_of = [&](int i) {
    const int64_t n = min(n0 + tid / 2, a.N - 1);
    return __ldg(scales + n * a.G + min(2 * (kb + i) + tid % 2, a.runs - 1) * 32 / a.group);
  };

  float acc[BM / 2];
#pragma unroll
  for (int j = 0; j < BM / 2; ++j) acc[j] = 0.f;

#pragma unroll
  for (int i = 0; i < kWgAhead; ++i) {
    if (i < stages) load_stage(i);
    asm volatile("cp.async.commit_group;\n" ::);
  }
#pragma unroll
  for (int i = 0; i < kWgAhead - 1; ++i)
    if (i < stages) ss[i * 2 * kWgBN + tid] = scale_of(i);
  S pending = scale_of(min(kWgAhead - 1, stages - 1));

  for (int i = 0; i < stages; ++i) {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kWgAhead - 1));
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // cp.async's writes, seen by the MMA's reads
    // Stage i is in shared memory for every thread, and every warpgroup is done with its MMAs of stage
    // i - 1: buffers (i - 2) % STAGES are free.
    __syncthreads();
    if (i + kWgAhead < stages) load_stage(i + kWgAhead);
    asm volatile("cp.async.commit_group;\n" ::);
    if (i + kWgAhead - 1 < stages) ss[(i + kWgAhead - 1) % kWgStages * 2 * kWgBN + tid] = pending;
    if (i + kWgAhead < stages) pending = scale_of(i + kWgAhead);

    const uint8_t* wb = ws + (i % kWgStages) * WB;
    const S* sb = ss + (i % kWgStages) * 2 * kWgBN;
    uint32_t af[4][4];  // the A fragments of the stage's four 16-wide k steps
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      uint32_t lo[2][2], hi[2][2];  // rows row0, row0 + 8: [step of the run][k slots 2t.. | 2t+8..]
      run_fragments<MT, BITS>(wb + row0 * WS + RUNB * r, t, TcScale<S, MT>::make(sb[2 * row0 + r]), lo);
      run_fragments<MT, BITS>(wb + (row0 + 8) * WS + RUNB * r, t, TcScale<S, MT>::make(sb[2 * (row0 + 8) + r]), hi);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        af[2 * r + h][0] = lo[h][0];
        af[2 * r + h][1] = hi[h][0];
        af[2 * r + h][2] = lo[h][1];
        af[2 * r + h][3] = hi[h][1];
      }
    }
    const uint64_t desc = swizzled_tile_descriptor(xs_addr + (i % kWgStages) * XB);
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int s = 0; s < 4; ++s) wgmma_step<MT, BM>(acc, af[s], desc + 2 * s);  // k step s: 32 bytes on
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    // Wait for them here: ptxas serializes every MMA of a kernel in which registers an MMA reads are written
    // while MMAs are in flight, as dequantizing stage i + 1 under stage i's would be (measured: no faster).
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
  }
  fence_registers(acc);  // the accumulators are read only after the last wait
  asm volatile("cp.async.wait_group 0;\n" ::);

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
    constexpr int smem = wg_smem_bytes<BITS, BM, S>();
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

void launch_wgmma_kernel(const TcArgs& a, at::ScalarType x, at::ScalarType scales, int bits, int bm, int blocks) {
  dispatch_wgmma(x, scales, bits, bm, [&]<typename T, typename MT, typename S, int BITS, int BM>() {
    configure<T, MT, S, BITS, BM>();
    qgemm_wgmma_kernel<MT, S, BITS, BM, T>
        <<<blocks, kWgThreads, wg_smem_bytes<BITS, BM, S>(), cuda::stream()>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace gemma4::quant_cuda
