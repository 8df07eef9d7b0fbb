// The tensor-core rate of the x-resident GEMV's mma.sync loop, beside wgmma_chain_probe.cu's warpgroup loop. That
// probe (H100, dev/device_runs/2026-12-07p-h100-wgmma-chain-probe.log) put register-A m64n16k16 wgmma at ~27 cycles
// an instruction an SM with no other work: 28 us for 31B gate_up's MMAs at 16 rows, a quarter of the tensor peak.
// This one does the same MMA work (31B gate_up at 16 rows: 864 m16n8k16 a warp at 16 warps a block, one block an
// SM) as the shipped kernel issues it: a warp's A fragment made by WORK dependent integer operations a register,
// NT m16n8k16 bf16 MMAs a k16 step (NT = 2: 16 x rows, two 8-column tiles; NT = 1: up to 8 rows), B from registers
// or, with LDS, loaded from shared memory each step as the kernel does. Standalone (no torch):
//   nvcc -O3 -gencode=arch=compute_90a,code=sm_90a -std=c++17 dev/cuda/mma_sync_rate_probe.cu -o /tmp/msr && /tmp/msr
// Prints, per configuration, the kernel time (median of 9 timings of 20 launches), cycles a step a warp, and the
// multiply-adds an SM a cycle (the H100's dense bf16 peak is 2048 at its 1.83 GHz boost figure, ~1900 at 1.98).
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <vector>

#include "standalone_check.cuh"

constexpr int kSmem = 200 * 1024;  // one block an SM, as the real kernel's 172 KB of x
constexpr int kBWords = 4096;      // B fragments the LDS steps walk through (16 KB)

template <int NT, int WORK, bool LDS>
__global__ void __launch_bounds__(512, 1) mma_kernel(int steps, int warps, float* out, long long* cycles) {
  extern __shared__ __align__(16) uint32_t bsm[];
  for (int i = threadIdx.x; i < kBWords; i += blockDim.x) {
    const uint32_t h = i * 0x9E3779B1u;
    bsm[i] = ((h >> 8) & 0x807F807Fu) | 0x3E003E00u;  // bf16 pairs of magnitude 0.125-0.25, random signs
  }
  __syncthreads();
  if (threadIdx.x / 32 >= warps) return;
  const int lane = threadIdx.x % 32;
  uint32_t seed = threadIdx.x * 0x85EBCA77u + blockIdx.x;
  uint32_t b[NT][2];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) b[nt][0] = bsm[nt * 64 + lane], b[nt][1] = bsm[nt * 64 + 32 + lane];
  float acc[NT][4] = {};
  const long long start = clock64();
  for (int s = 0; s < steps; ++s) {
    uint32_t a[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      uint32_t v = seed + r + s;
#pragma unroll
      for (int w = 0; w < WORK - 1; ++w) v = w % 2 == 0 ? v * v + 0x9E3779B1u : v ^ (v >> 7);  // no folding
      a[r] = (v & 0x807F807Fu) | 0x3F003F00u;  // bf16 pairs of magnitude 0.5-1
    }
    if constexpr (LDS) {  // this step's B fragments from shared memory, 8 bytes a lane a tile (LDS.64)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const uint2 v = reinterpret_cast<const uint2*>(bsm)[((s * NT + nt) * 32 + lane) % (kBWords / 2)];
        b[nt][0] = v.x, b[nt][1] = v.y;
      }
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
          "{%0, %1, %2, %3};\n"
          : "+f"(acc[nt][0]), "+f"(acc[nt][1]), "+f"(acc[nt][2]), "+f"(acc[nt][3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[nt][0]), "r"(b[nt][1]));
    }
    seed = seed * 3 + 1;
  }
  const long long stop = clock64();
  float sum = 0;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int j = 0; j < 4; ++j) sum += acc[nt][j];
  out[blockIdx.x * blockDim.x + threadIdx.x] = sum;
  if (lane == 0) cycles[blockIdx.x * 16 + threadIdx.x / 32] = stop - start;
}

template <int NT, int WORK, bool LDS = false>
void run(const char* name, int warps, int steps, const ProbeBuffers& p) {
  const auto kernel = mma_kernel<NT, WORK, LDS>;
  CK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  const float ms = median_ms([&] { kernel<<<p.sms, 512, kSmem>>>(steps, warps, p.out, p.cycles); });
  std::vector<long long> cyc(p.sms * 16);
  CK(cudaMemcpy(cyc.data(), p.cycles, cyc.size() * sizeof(long long), cudaMemcpyDeviceToHost));
  double sum = 0;
  for (int b = 0; b < p.sms; ++b)
    for (int w = 0; w < warps; ++w) sum += cyc[b * 16 + w];
  const double per_step = sum / (p.sms * warps) / steps;
  const double macs = double(warps) * NT * 16 * 8 * 16 / per_step;  // an SM a cycle, from the warps' own clocks
  std::printf("%-46s warps=%2d nt=%d work=%d steps=%4d: %7.2f us, %6.1f cycles a step, %6.0f MAC/SM/cycle\n", name,
              warps, NT, WORK, steps, ms * 1e3, per_step, macs);
}

int main() {
  const ProbeBuffers p = probe_buffers(16);
  // 31B gate_up at 16 rows: 43008 x 5376 weights = 903168 k16 steps of 16-row tiles, 6842 an SM, 432 a warp.
  run<2, 1>("16 rows, MMAs alone (B in registers)", 16, 432, p);
  run<2, 1, true>("16 rows, B loaded each step (LDS.64 a tile)", 16, 432, p);
  run<2, 4>("16 rows, 4 operations a register of A", 16, 432, p);
  run<2, 4, true>("16 rows, 4 operations, B loaded", 16, 432, p);
  run<1, 1>("8 rows, MMAs alone", 16, 432, p);
  run<2, 1>("16 rows, MMAs alone, 8 warps (twice the steps)", 8, 864, p);
  run<2, 1>("16 rows, MMAs alone, 4 warps (4x the steps)", 4, 1728, p);
  return 0;
}
