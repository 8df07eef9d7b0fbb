// How fast can HBM deliver the 31B gate_up int4 weight (43008 rows x 2688 bytes, bf16 scales g32) to SMs that read
// it in the x-resident GEMV's order (qgemv_resident.cuh) against other orders, with no math, or with a fixed
// amount of dependent ALU work per unit standing in for the dequantization? Standalone (no torch):
//   nvcc -O3 -arch=sm_90 -std=c++17 dev/cuda/stream_patterns.cu -o /tmp/sp && /tmp/sp
// Question (twenty-fourth session): the x-resident GEMV takes 48.8 us at one row on the H200 where the int16 GEMV
// (qgemv_x16.cuh, 512 contiguous bytes of a row per warp load) takes 38.1 on the same bytes. Is its access order
// (each warp 16 rows, 64 bytes of each per unit, 256 rows an SM at once) what holds it, or its instructions?
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "standalone_check.cuh"

constexpr int kN = 43008, kRowBytes = 2688, kRuns = kRowBytes / 16, kSpans = kRuns / 4, kTiles = kN / 16;

__device__ __forceinline__ void ld16(const void* p, uint32_t (&w)[4]) {
  asm volatile("ld.global.nc.L1::no_allocate.L2::128B.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3])
               : "l"(p));
}

// WORK dependent ALU operations on four chains, seeded by the unit's bytes: stands in for the ~170 instructions a
// unit of the real kernel spends on the dequantization and the MMAs.
template <int WORK>
__device__ __forceinline__ uint32_t work(const uint32_t (&a)[4], const uint32_t (&b)[4], uint32_t s) {
  uint32_t c0 = a[0] ^ b[0], c1 = a[1] ^ b[1], c2 = a[2] ^ b[2], c3 = a[3] ^ b[3] ^ s;
#pragma unroll
  for (int i = 0; i < WORK / 4; ++i) {
    c0 = c0 * 0x9E3779B1u + c1;
    c1 = c1 * 0x85EBCA77u + c2;
    c2 = c2 * 0xC2B2AE3Du + c3;
    c3 = c3 * 0x27D4EB2Fu + c0;
  }
  return c0 ^ c1 ^ c2 ^ c3;
}

struct Unit {
  uint32_t w[2][4];
  uint32_t s;
};

// Unit u of the block (tiles from tile0, kSpans units a tile) for lane (g, t): run 4 span + t of rows 16 tile + g
// and + 8, and (SCALES) their two scales.
template <bool SCALES>
__device__ __forceinline__ void load_unit(const uint8_t* qw, const uint16_t* sc, int tile0, int u, int g, int t,
                                          Unit& x) {
  const int tile = tile0 + u / kSpans, run = (u % kSpans) * 4 + t;
#pragma unroll
  for (int h = 0; h < 2; ++h) ld16(qw + (int64_t(tile) * 16 + h * 8 + g) * kRowBytes + run * 16, x.w[h]);
  x.s = SCALES ? uint32_t(sc[(tile * 16 + g) * int64_t(kRuns) + run]) ^
                     (uint32_t(sc[(tile * 16 + 8 + g) * int64_t(kRuns) + run]) << 16)
               : 0u;
}

// The x-resident order: one block an SM, 16 warps; the block's tiles' (tile, span) units cut into 16 contiguous
// ranges, one a warp; lane (g, t) loads run 4 span + t of rows 16 tile + g and + 8 (16 bytes each) and their two
// scales; D units in flight in registers.
template <int D, int WORK, bool SCALES>
__global__ void __launch_bounds__(512, 1) resident_order(const uint8_t* qw, const uint16_t* sc, uint32_t* out) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int tile0 = int(int64_t(blockIdx.x) * kTiles / gridDim.x), tile1 = int(int64_t(blockIdx.x + 1) * kTiles / gridDim.x);
  const int units = (tile1 - tile0) * kSpans;
  const int u0 = int(int64_t(warp) * units / 16), u1 = int(int64_t(warp + 1) * units / 16);
  auto load = [&](int u, Unit& x) { load_unit<SCALES>(qw, sc, tile0, u, g, t, x); };

  Unit buf[D];
#pragma unroll
  for (int d = 0; d < D; ++d)
    if (u0 + d < u1) load(u0 + d, buf[d]);
  uint32_t acc = 0;
  for (int u = u0; u < u1; u += D) {
#pragma unroll
    for (int d = 0; d < D; ++d) {
      if (u + d >= u1) break;
      acc += work<WORK>(buf[d].w[0], buf[d].w[1], buf[d].s);
      if (u + d + D < u1) load(u + d + D, buf[d]);
    }
  }
  out[blockIdx.x * blockDim.x + threadIdx.x] = acc;
}

// The same units and loads, but the block's 16 warps take them round robin (warp w: units w, w + 16, ...), so that
// at any moment an SM reads 16 consecutive spans of one or two tiles: 16-32 rows at once instead of 256.
template <int D, int WORK>
__global__ void __launch_bounds__(512, 1) cooperative_order(const uint8_t* qw, const uint16_t* sc, uint32_t* out) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int tile0 = int(int64_t(blockIdx.x) * kTiles / gridDim.x), tile1 = int(int64_t(blockIdx.x + 1) * kTiles / gridDim.x);
  const int units = (tile1 - tile0) * kSpans;
  auto load = [&](int u, Unit& x) { load_unit<true>(qw, sc, tile0, u, g, t, x); };

  Unit buf[D];
#pragma unroll
  for (int d = 0; d < D; ++d)
    if (warp + 16 * d < units) load(warp + 16 * d, buf[d]);
  uint32_t acc = 0;
  for (int u = warp; u < units; u += 16 * D) {
#pragma unroll
    for (int d = 0; d < D; ++d) {
      const int v = u + 16 * d;
      if (v >= units) break;
      acc += work<WORK>(buf[d].w[0], buf[d].w[1], buf[d].s);
      if (v + 16 * D < units) load(v + 16 * D, buf[d]);
    }
  }
  out[blockIdx.x * blockDim.x + threadIdx.x] = acc;
}

// The int16 GEMV's order (qgemv_x16.cuh): a warp takes 4 rows, lane l runs l, l + 32, ... of each (512 contiguous
// bytes of a row a load), two spans of 32 runs in flight; warps stride over row groups.
template <int WORK>
__global__ void __launch_bounds__(256) x16_order(const uint8_t* qw, const uint16_t* sc, uint32_t* out) {
  const int lane = threadIdx.x % 32;
  const int warps = gridDim.x * blockDim.x / 32;
  uint32_t acc = 0;
  for (int grp = (blockIdx.x * blockDim.x + threadIdx.x) / 32; grp < kN / 4; grp += warps) {
    for (int r0 = 0; r0 < kRuns; r0 += 64) {
      uint32_t w[2][4][4];
      uint32_t s = 0;
#pragma unroll
      for (int b = 0; b < 2; ++b)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int run = r0 + 32 * b + lane;
          const int64_t row = grp * 4 + r;
          if (run < kRuns) {
            ld16(qw + row * kRowBytes + run * 16, w[b][r]);
            s ^= sc[row * kRuns + run];
          } else {
            w[b][r][0] = w[b][r][1] = w[b][r][2] = w[b][r][3] = 0;
          }
        }
#pragma unroll
      for (int b = 0; b < 2; ++b)
#pragma unroll
        for (int r = 0; r < 4; r += 2) acc += work<WORK>(w[b][r], w[b][r + 1], s);  // WORK per 32 bytes a lane
    }
  }
  out[blockIdx.x * blockDim.x + threadIdx.x] = acc;
}


__device__ __forceinline__ uint32_t smem_u32(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }

// The x-resident order with each warp's units brought by the copy engine instead of register loads: warp w has SL
// one-unit slots (1 KB: 16 rows x 64 bytes, rows 64 bytes apart, so lanes 0-7 read 128 contiguous bytes) and its
// lane 0 asks for unit u + SL into the slot it has just read (cp.async.bulk.tensor.3d on an mbarrier a slot).
// Scales still by register loads, D = SL ahead.
template <int SL, int WORK>
__global__ void __launch_bounds__(512, 1) tma_resident(const __grid_constant__ CUtensorMap map, const uint16_t* sc,
                                                       uint32_t* out) {
  extern __shared__ __align__(128) uint8_t smem[];
  __shared__ __align__(8) uint64_t full[16][SL];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int tile0 = int(int64_t(blockIdx.x) * kTiles / gridDim.x), tile1 = int(int64_t(blockIdx.x + 1) * kTiles / gridDim.x);
  const int units = (tile1 - tile0) * kSpans;
  const int u0 = int(int64_t(warp) * units / 16), u1 = int(int64_t(warp + 1) * units / 16);
  uint8_t* ring = smem + warp * SL * 1024;
  auto issue = [&](int u, int k) {  // lane 0 only
    const int tile = tile0 + u / kSpans, run = (u % kSpans) * 4;
    const uint32_t bar = smem_u32(&full[warp][k]);
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(1024) : "memory");
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n"
        ::"r"(smem_u32(ring + k * 1024)), "l"(reinterpret_cast<uint64_t>(&map)), "r"(0), "r"(run), "r"(tile * 16),
        "r"(bar)
        : "memory");
  };
  auto scale = [&](int u) {
    const int tile = tile0 + u / kSpans, run = (u % kSpans) * 4 + t;
    return uint32_t(sc[(tile * 16 + g) * int64_t(kRuns) + run]) ^
           (uint32_t(sc[(tile * 16 + 8 + g) * int64_t(kRuns) + run]) << 16);
  };
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < SL; ++k) asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(smem_u32(&full[warp][k])));
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncwarp();
  if (lane == 0)
    for (int k = 0; k < SL; ++k)
      if (u0 + k < u1) issue(u0 + k, k);
  uint32_t s[SL];
#pragma unroll
  for (int k = 0; k < SL; ++k) s[k] = u0 + k < u1 ? scale(u0 + k) : 0u;
  uint32_t acc = 0, phase = 0;
  for (int u = u0; u < u1; u += SL) {
#pragma unroll
    for (int k = 0; k < SL; ++k) {
      if (u + k >= u1) break;
      const uint32_t bar = smem_u32(&full[warp][k]);
      uint32_t done = 0;
      while (!done)
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(bar), "r"(phase)
                     : "memory");
      uint32_t a[4], b[4];
      const uint8_t* slot = ring + k * 1024;
      *reinterpret_cast<uint4*>(a) = *reinterpret_cast<const uint4*>(slot + g * 64 + t * 16);
      *reinterpret_cast<uint4*>(b) = *reinterpret_cast<const uint4*>(slot + (g + 8) * 64 + t * 16);
      acc += work<WORK>(a, b, s[k]);
      if (u + k + SL < u1) s[k] = scale(u + k + SL);
      asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
      __syncwarp();
      if (lane == 0 && u + k + SL < u1) issue(u + k + SL, k);
    }
    phase ^= 1;
  }
  out[blockIdx.x * blockDim.x + threadIdx.x] = acc;
}

CUtensorMap unit_map(const void* base) {
  static PFN_cuTensorMapEncodeTiled_v12000 enc = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found{};
    CK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &found));
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  CUtensorMap map;
  const cuuint64_t dims[3] = {16, cuuint64_t(kRuns), cuuint64_t(kN)};
  const cuuint64_t pitch[2] = {16, cuuint64_t(kRowBytes)};
  const cuuint32_t box[3] = {16, 4, 16};
  const cuuint32_t step[3] = {1, 1, 1};
  const CUresult r = enc(&map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 3, const_cast<void*>(base), dims, pitch, box, step,
                         CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                         CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    std::printf("cuTensorMapEncodeTiled failed: %d\n", int(r));
    std::exit(1);
  }
  return map;
}

__global__ void fill(uint32_t* p, int64_t n, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    uint32_t v = uint32_t(i) * 2654435761u + seed;
    v ^= v >> 15, v *= 2246822519u, v ^= v >> 13;
    p[i] = v & 0x3FFF3FFFu;  // finite bf16 scale bits when read as uint16
  }
}

int main() {
  int sms = 0;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  constexpr int kBufs = 4;  // rotated: 4 x 145 MB, well past the 50-60 MB L2
  const int64_t wbytes = int64_t(kN) * kRowBytes, sbytes = int64_t(kN) * kRuns * 2;
  std::vector<uint8_t*> qw(kBufs);
  std::vector<uint16_t*> sc(kBufs);
  for (int b = 0; b < kBufs; ++b) {
    CK(cudaMalloc(&qw[b], wbytes));
    CK(cudaMalloc(&sc[b], sbytes));
    fill<<<1024, 256>>>(reinterpret_cast<uint32_t*>(qw[b]), wbytes / 4, 17 * b + 1);
    fill<<<1024, 256>>>(reinterpret_cast<uint32_t*>(sc[b]), sbytes / 4, 31 * b + 7);
  }
  uint32_t* out;
  CK(cudaMalloc(&out, int64_t(sms) * 4 * 512 * 4));
  CK(cudaDeviceSynchronize());
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  auto time = [&](const char* name, auto launch, bool scales) {
    std::vector<float> ts;
    for (int rep = 0; rep < 5 + 40; ++rep) {
      const int b = rep % kBufs;
      CK(cudaEventRecord(e0));
      launch(qw[b], sc[b]);
      CK(cudaEventRecord(e1));
      CK(cudaEventSynchronize(e1));
      CK(cudaGetLastError());
      float ms = 0;
      CK(cudaEventElapsedTime(&ms, e0, e1));
      if (rep >= 5) ts.push_back(ms * 1e3f);
    }
    std::sort(ts.begin(), ts.end());
    const double bytes = double(wbytes) + (scales ? double(sbytes) : 0.0);
    std::printf("%-34s median %6.1f us  (min %6.1f, max %6.1f)  %5.2f TB/s\n", name, ts[ts.size() / 2], ts[0],
                ts.back(), bytes / ts[ts.size() / 2] / 1e6);
  };
  std::printf("%d SMs; weight %.1f MB + scales %.1f MB\n", sms, wbytes / 1e6, sbytes / 1e6);
  std::vector<CUtensorMap> maps;
  for (int b = 0; b < kBufs; ++b) maps.push_back(unit_map(qw[b]));
  auto map_of = [&](const uint8_t* q) { return maps[std::find(qw.begin(), qw.end(), q) - qw.begin()]; };
  CK(cudaFuncSetAttribute(tma_resident<3, 0>, cudaFuncAttributeMaxDynamicSharedMemorySize, 48 * 1024));
  CK(cudaFuncSetAttribute(tma_resident<3, 160>, cudaFuncAttributeMaxDynamicSharedMemorySize, 48 * 1024));
  CK(cudaFuncSetAttribute(tma_resident<4, 160>, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024));
  CK(cudaFuncSetAttribute(tma_resident<6, 160>, cudaFuncAttributeMaxDynamicSharedMemorySize, 96 * 1024));
  for (int pass = 0; pass < 2; ++pass) {
    time("copy-read reference: x16 order", [&](auto q, auto s) { x16_order<0><<<sms * 3, 256>>>(q, s, out); }, true);
    time("x16 order, work 48 per 32 B", [&](auto q, auto s) { x16_order<48><<<sms * 3, 256>>>(q, s, out); }, true);
    time("resident D3, no scales, work 0", [&](auto q, auto s) { resident_order<3, 0, false><<<sms, 512>>>(q, s, out); }, false);
    time("resident D3, work 0", [&](auto q, auto s) { resident_order<3, 0, true><<<sms, 512>>>(q, s, out); }, true);
    time("resident D6, work 0", [&](auto q, auto s) { resident_order<6, 0, true><<<sms, 512>>>(q, s, out); }, true);
    time("resident D3, work 96", [&](auto q, auto s) { resident_order<3, 96, true><<<sms, 512>>>(q, s, out); }, true);
    time("resident D3, work 160", [&](auto q, auto s) { resident_order<3, 160, true><<<sms, 512>>>(q, s, out); }, true);
    time("cooperative D3, work 0", [&](auto q, auto s) { cooperative_order<3, 0><<<sms, 512>>>(q, s, out); }, true);
    time("cooperative D3, work 96", [&](auto q, auto s) { cooperative_order<3, 96><<<sms, 512>>>(q, s, out); }, true);
    time("tma SL3, work 0", [&](auto q, auto s) { tma_resident<3, 0><<<sms, 512, 48 * 1024>>>(map_of(q), s, out); }, true);
    time("tma SL3, work 160", [&](auto q, auto s) { tma_resident<3, 160><<<sms, 512, 48 * 1024>>>(map_of(q), s, out); }, true);
    time("tma SL4, work 160", [&](auto q, auto s) { tma_resident<4, 160><<<sms, 512, 64 * 1024>>>(map_of(q), s, out); }, true);
    time("tma SL6, work 160", [&](auto q, auto s) { tma_resident<6, 160><<<sms, 512, 96 * 1024>>>(map_of(q), s, out); }, true);
    time("cooperative D3, work 160", [&](auto q, auto s) { cooperative_order<3, 160><<<sms, 512>>>(q, s, out); }, true);
  }
  return 0;
}
