// What does a warpgroup's "dequantize a span, issue its register-A wgmmas, wait for them" cost on its own? The
// warpgroup x-resident GEMV (dev/cuda/experiments/resident_wgmma.patch) took 59 us at one row on the H100's 31B
// gate_up, 12 more than the mma.sync kernel it was built from, and its loads and x copy were ruled out. This probe
// runs only its MMA loop: no global loads, no x copy, A fragments made by WORK dependent integer operations a
// register (the dequantization stands in: ~4 instructions a register of A in the real kernel), then
// `wgmma.fence`, CHAIN m64n16k16 bf16 MMAs (B from shared memory, NACC accumulators taken in turn), commit, wait.
// One block an SM (the real kernel's shared memory), WG warpgroups a block, ITERS spans a warpgroup (54 is 31B
// gate_up's spans a warpgroup at four a block). Standalone (no torch):
//   nvcc -O3 -gencode=arch=compute_90a,code=sm_90a -std=c++17 dev/cuda/wgmma_chain_probe.cu -o /tmp/wcp && /tmp/wcp
// Prints, per configuration, the kernel time (median of 9 timings of 20 launches) and cycles a span a warpgroup.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "standalone_check.cuh"

constexpr int kSmem = 200 * 1024;  // one block an SM, as the real kernel's 172 KB of x
constexpr int kTiles = 16;         // B tiles of 16 x 16 bf16 (512 bytes each) the steps walk through

// No-swizzle K-major descriptor of a 16 x 16 bf16 tile: four 8 x 16-byte core matrices, K-adjacent 128 bytes apart
// (leading byte offset), N-adjacent 256 apart (stride byte offset).
__device__ __forceinline__ uint64_t tile_desc(uint32_t smem_addr) {
  return uint64_t((smem_addr >> 4) & 0x3FFF) | (uint64_t(128 >> 4) << 16) | (uint64_t(256 >> 4) << 32);
}

__device__ __forceinline__ void wgmma16(float (&d)[8], const uint32_t (&a)[4], uint64_t desc) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7}, {%8, %9, %10, %11}, "
      "%12, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
}

// MMA false: the work alone (the A registers still consumed, by an XOR into the output).
template <int CHAIN, int NACC, int WORK, bool MMA>
__global__ void __launch_bounds__(512, 1) chain_kernel(int iters, int warpgroups, float* out, long long* cycles) {
  extern __shared__ __align__(1024) uint8_t smem[];
  auto* b16 = reinterpret_cast<uint32_t*>(smem);
  for (int i = threadIdx.x; i < kTiles * 512 / 4; i += blockDim.x) {
    const uint32_t h = i * 0x9E3779B1u;
    b16[i] = ((h >> 8) & 0x807F807Fu) | 0x3E003E00u;  // bf16 pairs of magnitude 0.125-0.25, random signs
  }
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  __syncthreads();
  if (threadIdx.x / 128 >= warpgroups) return;  // whole warpgroups leave
  const uint32_t base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  uint32_t seed = threadIdx.x * 0x85EBCA77u + blockIdx.x;
  float acc[NACC][8] = {};
  uint32_t sink = 0;
  const long long start = clock64();
  for (int it = 0; it < iters; ++it) {
    uint32_t a[CHAIN][4];
#pragma unroll
    for (int st = 0; st < CHAIN; ++st)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        uint32_t v = seed + st * 4 + r + it;
#pragma unroll
        for (int w = 0; w < WORK - 1; ++w) v = w % 2 == 0 ? v * v + 0x9E3779B1u : v ^ (v >> 7);  // no folding
        a[st][r] = (v & 0x807F807Fu) | 0x3F003F00u;  // bf16 pairs of magnitude 0.5-1
      }
    if constexpr (MMA) {
      asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
      for (int st = 0; st < CHAIN; ++st) wgmma16(acc[st % NACC], a[st], tile_desc(base + (st % kTiles) * 512));
      asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
      asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    } else {
#pragma unroll
      for (int st = 0; st < CHAIN; ++st) sink ^= a[st][0] ^ a[st][1] ^ a[st][2] ^ a[st][3];
    }
    seed = seed * 3 + 1;
  }
  const long long stop = clock64();
  float s = static_cast<float>(sink & 1);
#pragma unroll
  for (int c = 0; c < NACC; ++c)
#pragma unroll
    for (int j = 0; j < 8; ++j) s += acc[c][j];
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
  if (threadIdx.x % 128 == 0) cycles[blockIdx.x * 4 + threadIdx.x / 128] = stop - start;
}

template <int CHAIN, int NACC, int WORK, bool MMA = true>
void run(const char* name, int warpgroups, int iters, const ProbeBuffers& p) {
  const auto kernel = chain_kernel<CHAIN, NACC, WORK, MMA>;
  CK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  const float ms = median_ms([&] { kernel<<<p.sms, 512, kSmem>>>(iters, warpgroups, p.out, p.cycles); });
  std::vector<long long> cyc(p.sms * 4);
  CK(cudaMemcpy(cyc.data(), p.cycles, cyc.size() * sizeof(long long), cudaMemcpyDeviceToHost));
  double sum = 0;
  int n = 0;
  for (int b = 0; b < p.sms; ++b)
    for (int w = 0; w < warpgroups; ++w) sum += cyc[b * 4 + w], ++n;
  std::printf("%-44s wg=%d chain=%2d acc=%d work=%d iters=%3d: %7.2f us, %6.0f cycles a span\n", name, warpgroups,
              CHAIN, NACC, WORK, iters, ms * 1e3, sum / n / iters);
}

int main() {
  const ProbeBuffers p = probe_buffers(4);
  // The real kernel: 4 warpgroups, 8 MMAs a span, one accumulator, ~4 instructions a register of A.
  run<8, 1, 4>("span of 8, as resident_wgmma", 4, 54, p);
  run<8, 1, 4, false>("the same work, no MMAs", 4, 54, p);
  run<8, 1, 1>("no work (one LOP3 a register)", 4, 54, p);
  run<8, 1, 1>("no work, one warpgroup an SM", 1, 54, p);
  run<8, 2, 4>("two accumulators in turn", 4, 54, p);
  run<16, 1, 4>("unit of 16, three warpgroups (unit_batch)", 3, 36, p);
  run<16, 1, 1>("unit of 16, no work, three warpgroups", 3, 36, p);
  run<8, 1, 4>("span of 8, two warpgroups", 2, 54, p);
  run<4, 1, 4>("half span (4 MMAs), 4 warpgroups", 4, 108, p);
  return 0;
}
