// The x-resident int4 GEMV on warpgroup MMAs (sm_90a): qgemv_resident.cuh's kernel with the MMA swapped for
// wgmma, so that x is read by the tensor cores straight from shared memory, once for 64 weight rows, instead of
// by every warp into registers for its 16 (dev/cuda/experiments/README.md: at 16 rows those reads, 4 bytes of x a
// weight byte, and their LDS instructions were what the kernel's own work grew by against one row).
//
// The weights are loaded and dequantized exactly as there (UnitCursor, SpanScales, span_step_fragment: a lane's
// 16-byte load of one run is its A fragment for a span's 8 k16 steps, the weight rounded once from q * scale), and
// x sits in shared memory in the same k order (fill_x_swizzled), now as the wgmma B operand: K-major, 128-byte
// swizzle, 16 rows (rows past M zero). A warpgroup's four warps take four 16-row tiles (a "quad", 64 rows) over
// the same two spans at once: m64n16k16, one MMA a k16 step for 64 rows. A register-A wgmma cannot have its next A
// written while one is in flight (ptxas C7513; qgemm_wgmma_sm90a.cu), so a warpgroup dequantizes a span, issues
// its 8 MMAs and waits for them; the block's other three warpgroups fill the wait.
//
// Work split: the quads' (quad, unit) steps, unit = two spans, in row-major order, split evenly over every
// warpgroup of the grid (one block of four an SM), so that no SM has a quad more than another. A quad cut by a
// warpgroup boundary is summed by the warpgroups that share it into their partial slots, then added in warpgroup
// order, with the bias, by resident_wgmma_fixup_kernel (deterministic).
// Reference: gemma4.ops.reference.qgemm (the layout: qgemm_problem.h).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>

#include "common/cuda_launch.cuh"
#include "common/cuda_pdl.cuh"
#include "quant/copy_engine.cuh"  // smem_addr
#include "quant/qgemm_cuda_dispatch.h"
#include "quant/qgemv_resident.cuh"
#include "quant/qgemv_resident_wgmma.h"
#include "quant/wgmma_sm90a.cuh"

namespace gemma4::quant_cuda {
namespace {

constexpr int kQuadWarps = 4;                       // a warpgroup: one 16-row tile a warp
constexpr int kWgResThreads = kResWarps * 32;       // four warpgroups a block, one block an SM
constexpr int kQuadFloats = kQuadWarps * 8 * 32;    // a warpgroup's accumulators: [warp][8][lane]

struct WgResidentArgs {
  ResidentArgs r;
  float* partial;    // [warpgroups][2][kQuadFloats]: a warpgroup's cut first (0) and last (1) quad
  int pairs;         // units (two spans) a row: r.spans / 2
  int64_t steps;     // quads * pairs
  int64_t warpgroups;
};

// The first step of warpgroup w, and the warpgroup that has step s.
__host__ __device__ __forceinline__ int64_t wg_first_step(int64_t w, const WgResidentArgs& a) {
  return w * a.steps / a.warpgroups;
}
__device__ __forceinline__ int64_t wg_of_step(int64_t s, const WgResidentArgs& a) {
  return ((s + 1) * a.warpgroups - 1) / a.steps;
}

// x [M, K] -> shared memory as 64-k chunks of 16 rows x 128 bytes (rows 8 apart 1024 bytes), 128-byte swizzle: the
// 16-byte unit u of row n at u ^ (n % 8). The k order is the resident kernel's (fill_x): slots 2t + e and 2t + 8 + e
// of span `span`'s step s hold x at run offsets b(s) + 2e and 16 + b(s) + 2e of run 4 span + t, b(s) = 8 (s / 4) +
// 4 (s % 4 / 2) + s % 2. A thread takes 8 consecutive x of a run (16 bytes: c, h) and writes the pairs of 4 steps,
// kFillBatch such loads in flight: one at a time, the copy waited a full L2 latency per load (21 a thread on 31B
// gate_up: ~12 us of a 59 us call on the H100, dev/device_runs/2026-12-07n-h100-resident-wgmma.log).
constexpr int kFillBatch = 6;
__device__ __forceinline__ void fill_x_swizzled(uint8_t* xs, const ResidentArgs& a) {
  const auto* x = static_cast<const uint16_t*>(a.x);
  const int items = 16 * a.spans * 16;
  const auto piece = [&](int i, int& c, int& h, int& t, int& span, int& n) {
    c = i % 2, h = i / 2 % 2, t = i / 4 % 4, span = i / 16 % a.spans, n = i / (16 * a.spans);
  };
  for (int first = threadIdx.x; first < items; first += kFillBatch * blockDim.x) {
    uint4 v[kFillBatch];
#pragma unroll
    for (int b = 0; b < kFillBatch; ++b) {
      int c, h, t, span, n;
      const int i = first + b * blockDim.x;
      piece(i, c, h, t, span, n);
      const int run = span * 4 + t;
      v[b] = i < items && n < a.M && run < a.runs
                 ? *reinterpret_cast<const uint4*>(x + int64_t(n) * a.K + run * 32 + 16 * h + 8 * c)
                 : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int b = 0; b < kFillBatch; ++b) {
      int c, h, t, span, n;
      const int i = first + b * blockDim.x;
      if (i >= items) break;
      piece(i, c, h, t, span, n);
      const uint4 w = v[b];
      const uint32_t pair[4] = {__byte_perm(w.x, w.y, 0x5410), __byte_perm(w.x, w.y, 0x7632),   // steps 4c, 4c + 1
                                __byte_perm(w.z, w.w, 0x5410), __byte_perm(w.z, w.w, 0x7632)};  // 4c + 2, 4c + 3
      uint8_t* row = xs + (span * 2 + c) * 2048 + n * 128;
#pragma unroll
      for (int j = 0; j < 4; ++j) *reinterpret_cast<uint32_t*>(row + ((2 * j + h) ^ (n % 8)) * 16 + 4 * t) = pair[j];
    }
  }
}

// d[64 x 16] += a[64 x 16] (registers) * b[16 x 16] (shared memory, K-major), fp32, issued asynchronously by
// the warpgroup. d[i][j] of lane (g, t): weight row g + 8 (j / 2) of the warp's tile, x row 8 i + 2 t + j % 2.
template <typename MT>
__device__ __forceinline__ void wgmma_m64n16(float (&d)[2][4], const uint32_t (&a)[4], uint64_t desc) {
#define GEMMA4_WGMMA_N16(TY)                                                                            \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n"                                             \
               "wgmma.mma_async.sync.aligned.m64n16k16.f32." TY "." TY                                  \
               " {%0, %1, %2, %3, %4, %5, %6, %7}, {%8, %9, %10, %11}, %12, p, 1, 1, 0;\n}\n"            \
               : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), \
                 "+f"(d[1][2]), "+f"(d[1][3])                                                           \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1))
  if constexpr (std::is_same_v<MT, __nv_bfloat16>) {
    GEMMA4_WGMMA_N16("bf16");
  } else {
    GEMMA4_WGMMA_N16("f16");
  }
#undef GEMMA4_WGMMA_N16
}

template <typename T, typename MT, typename S>
__global__ void __launch_bounds__(kWgResThreads, 1) qgemv_resident_wgmma_kernel(const __grid_constant__ WgResidentArgs w) {
  const ResidentArgs& a = w.r;
  extern __shared__ __align__(16) uint8_t smem_raw[];
  uint8_t* xs = smem_raw + (1024 - smem_addr(smem_raw) % 1024) % 1024;  // the swizzle needs 1024-byte alignment
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4, q = warp % kQuadWarps;
  const int P = w.pairs;
  const int64_t wg = int64_t(blockIdx.x) * (kResWarps / kQuadWarps) + warp / kQuadWarps;
  const int64_t s0 = wg_first_step(wg, w), s1 = wg_first_step(wg + 1, w);
  const int first_quad = static_cast<int>(s0 / P);
  const bool head_cut = s0 % P != 0;

  // The first unit's weights are asked for before x (cuda_pdl.cuh). The cursor's tile is 4 quad (+ q: tile0).
  UnitLoad<S> set_a, set_b;
  UnitCursor<S, kQuadWarps> next{{}, {}, first_quad * kQuadWarps, static_cast<int>(s0 % P)};
  next.to_tile(a, q, g);
  if (s0 < s1) next.load(set_a, a, q, g, t);
  cuda::pdl_wait();
  fill_x_swizzled(xs, a);
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // the MMAs read x through the async proxy
  __syncthreads();
  // The descriptor's high word is constant and its start address (the low 14 bits, in 16-byte units) stays below
  // 2^14 for any offset into shared memory, so steps move it with 32-bit adds (64-bit ones cost ~8 instructions an
  // MMA, SASS).
  const uint64_t desc0 = swizzled_tile_descriptor(smem_addr(xs));
  const uint32_t desc_lo = static_cast<uint32_t>(desc0), desc_hi = static_cast<uint32_t>(desc0 >> 32);

  float acc[2][4] = {};
  int quad = first_quad, pair = static_cast<int>(s0 % P);
  // A quad done by this warpgroup alone is stored; a cut one goes to the warpgroup's slot for the fixup.
  const auto finish = [&](bool cut) {
    if (cut) {
      float* p = w.partial + (wg * 2 + (quad == first_quad ? 0 : 1)) * kQuadFloats + q * 8 * 32 + lane;
#pragma unroll
      for (int j = 0; j < 8; ++j) p[j * 32] = acc[j / 4][j % 4];
    } else {
      store_tile<T, 2>(acc, a, quad * kQuadWarps + q, lane);
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[j / 4][j % 4] = 0.0f;
  };
  // Step s from `cur`, the next step's loads into `nxt` (as qgemv_resident_kernel's run_unit).
  const auto run_unit = [&](UnitLoad<S>& cur, UnitLoad<S>& nxt, int64_t s) {
    SpanScales<MT, S> sc[2];
#pragma unroll
    for (int j = 0; j < 2; ++j) sc[j].set(cur, j, (2 * pair + j) * 4 + t < a.runs);
    if (s + 1 < s1) next.load(nxt, a, q, g, t);
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      uint32_t af[8][4];  // the span's 8 A fragments, written before its first MMA and not again until its last is done
#pragma unroll
      for (int st = 0; st < 8; ++st) span_step_fragment<MT, S>(af[st], cur.w[0][j], cur.w[1][j], sc[j], st);
      const uint32_t span_lo = desc_lo + (2 * pair + j) * 2 * (2048 >> 4);  // the span's two 64-k chunks
      asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
      for (int st = 0; st < 8; ++st) {
        const uint32_t lo = span_lo + (st / 4) * (2048 >> 4) + 2 * (st % 4);
        wgmma_m64n16<MT>(acc, af[st], (uint64_t(desc_hi) << 32) | lo);
      }
      asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
      asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
      fence_registers(acc[0]);
      fence_registers(acc[1]);
    }
    if (++pair == P) {
      finish(quad == first_quad && head_cut);
      pair = 0, ++quad;
    }
  };
  for (int64_t s = s0; s < s1; s += 2) {
    run_unit(set_a, set_b, s);
    if (s + 1 < s1) run_unit(set_b, set_a, s + 1);
  }
  if (pair != 0) finish(true);  // the last quad goes on in the next warpgroup
}

// One block (a warpgroup's 128 threads) per warpgroup boundary b = blockIdx.x + 1. The boundary that is the first
// inside a cut quad adds the partial sums of every warpgroup that has steps of it, in warpgroup order, and the bias.
template <typename T>
__global__ void __launch_bounds__(kQuadWarps * 32) resident_wgmma_fixup_kernel(const WgResidentArgs w) {
  cuda::pdl_wait();
  const int64_t b = blockIdx.x + 1, P = w.pairs, sb = wg_first_step(b, w);
  const int64_t quad = sb / P;
  if (sb % P == 0 || wg_first_step(b - 1, w) > quad * P) return;  // between quads, or not the quad's first cut
  const int q = threadIdx.x / 32, lane = threadIdx.x % 32;
  float sum[2][4] = {};
  for (int64_t c = wg_of_step(quad * P, w), last = wg_of_step(quad * P + P - 1, w); c <= last; ++c) {
    const int slot = wg_first_step(c, w) / P == quad ? 0 : 1;
    const float* p = w.partial + (c * 2 + slot) * kQuadFloats + q * 8 * 32 + lane;
#pragma unroll
    for (int j = 0; j < 8; ++j) sum[j / 4][j % 4] += p[j * 32];
  }
  store_tile<T, 2>(sum, w.r, static_cast<int>(quad) * kQuadWarps + q, lane);
}

}  // namespace

void launch_resident_wgmma(const ResidentArgs& r, at::ScalarType x, at::ScalarType scales,
                           const at::TensorOptions& options) {
  WgResidentArgs w{};
  w.r = r;
  w.pairs = r.spans / 2;
  const int64_t quads = cuda::ceil_div<int64_t>(r.N, 16 * kQuadWarps);
  w.steps = quads * w.pairs;
  const int blocks = static_cast<int>(std::min<int64_t>(cuda::sm_count(), cuda::ceil_div<int64_t>(w.steps, 4)));
  w.warpgroups = int64_t(blocks) * (kResWarps / kQuadWarps);
  const at::Tensor partial = at::empty({w.warpgroups * 2 * kQuadFloats}, options.dtype(at::kFloat));
  w.partial = partial.data_ptr<float>();
  const int smem = static_cast<int>(int64_t(r.spans) * 4096 + 1024);  // x, and the alignment slack
  dispatch_x(x, [&]<typename T, typename MT>() {
    dispatch_scale(scales, [&]<typename S>() {
      const auto kernel = qgemv_resident_wgmma_kernel<T, MT, S>;
      static thread_local int configured = -1;
      if (configured != c10::cuda::current_device()) {
        const int optin = static_cast<int>(at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin);
        C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, optin));
        configured = c10::cuda::current_device();
      }
      cuda::launch_dependent(kernel, dim3(blocks), dim3(kWgResThreads), smem, w);
      if (w.warpgroups > 1) {
        cuda::launch_dependent(resident_wgmma_fixup_kernel<T>, dim3(w.warpgroups - 1), dim3(kQuadWarps * 32), 0, w);
      }
    });
  });
}

}  // namespace gemma4::quant_cuda
