// The standalone probes' (stream_patterns.cu, wgmma_chain_probe.cu, mma_sync_rate_probe.cu) shared pieces: CK(call),
// the CUDA error check (print and exit), median_ms, their kernel timer, and the one-block-an-SM probes' buffers.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x)                                                                              \
  do {                                                                                     \
    cudaError_t e = (x);                                                                   \
    if (e != cudaSuccess) {                                                                \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e), __FILE__, __LINE__); \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)

// launch() `launches` times back to back, timed with events 10 times, the first a warm-up: the median, ms a launch.
template <typename F>
float median_ms(F&& launch, int launches = 20) {
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  std::vector<float> ms;
  for (int rep = 0; rep < 10; ++rep) {
    CK(cudaEventRecord(e0));
    for (int l = 0; l < launches; ++l) launch();
    CK(cudaEventRecord(e1));
    CK(cudaEventSynchronize(e1));
    float t = 0;
    CK(cudaEventElapsedTime(&t, e0, e1));
    if (rep > 0) ms.push_back(t / launches);
  }
  CK(cudaGetLastError());
  CK(cudaEventDestroy(e0));
  CK(cudaEventDestroy(e1));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// One block an SM: an output float for each of a block's 512 threads (so that nothing is folded away) and `slots`
// cycle counters a block.
struct ProbeBuffers {
  int sms;
  float* out;
  long long* cycles;
};
inline ProbeBuffers probe_buffers(int slots) {
  ProbeBuffers p{};
  CK(cudaDeviceGetAttribute(&p.sms, cudaDevAttrMultiProcessorCount, 0));
  CK(cudaMalloc(&p.out, p.sms * 512 * sizeof(float)));
  CK(cudaMalloc(&p.cycles, p.sms * slots * sizeof(long long)));
  CK(cudaMemset(p.cycles, 0, p.sms * slots * sizeof(long long)));
  return p;
}
