// How many int4 weights a cycle one core can multiply with int16-exact activations, at best.
//
// Issue 10 asks the int4 g32 GEMV at M = 1 for 3x torch's _weight_int4pack_mm_for_cpu. On the AVX2 EPYC
// that was met (3.0-4.0x); on the AVX-512 EPYC torch's kernel is ~3x faster than there, so 3x of it
// means ~230 G weights/s on two cores from the caches. This measures the instruction rates that
// bound any kernel here, in cycles (a dependent scalar add chain, one cycle an add, is the clock):
//   - vpdpwssd / vpdpbusd on zmm, independent accumulators (throughput);
//   - the idealised inner loop of a row-interleaved layout (16 rows x 8 k per 64 bytes, llama.cpp's
//     repack idea) with activations split into two exact int8 planes (x16 = 256 xh + xl), two vpdpbusd
//     per plane per 64 bytes, broadcast x from memory: nothing but unpack and products, no block folding;
//   - the same with one int8 plane (llama.cpp's Q8 activations; fails the error rule, for scale only).
// Build: g++ -O2 -mavx512f -mavx512bw -mavx512vnni dev/perf/vnni_ceiling.cpp -o /tmp/vnni && /tmp/vnni
#include <immintrin.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <type_traits>
#include <vector>

static double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Seconds per cycle: a chain of dependent 64-bit adds retires one a cycle.
static double seconds_per_cycle() {
  const int64_t n = 400000000;
  uint64_t a = 1;
  const double t0 = now_s();
  for (int64_t i = 0; i < n; ++i) asm volatile("add $1, %0" : "+r"(a));
  return (now_s() - t0) / n;
}

template <class Body>
static double cycles_per_iter(int64_t iters, double spc, Body body) {
  body(iters / 10);  // warm
  const double t0 = now_s();
  body(iters);
  return (now_s() - t0) / spc / iters;
}

// One pass (n times) over `vecs` 64-byte weight vectors, as the interleaved kernel's inner loop would.
template <int PLANES>
static void interleaved_pass(const uint8_t* w, const int32_t* x, int64_t vecs, int64_t n) {
  const __m512i nib = _mm512_set1_epi8(0x0F);
  __m512i l0 = _mm512_setzero_si512(), l1 = l0, h0 = l0, h1 = l0;
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t i = 0; i < vecs; i += 2) {
      const int32_t* xp = x + ((8 * i) & 1023);
      const __m512i v0 = _mm512_loadu_si512(w + 64 * i), v1 = _mm512_loadu_si512(w + 64 * i + 64);
      const __m512i lo0 = _mm512_and_si512(v0, nib), hi0 = _mm512_and_si512(_mm512_srli_epi16(v0, 4), nib);
      const __m512i lo1 = _mm512_and_si512(v1, nib), hi1 = _mm512_and_si512(_mm512_srli_epi16(v1, 4), nib);
      l0 = _mm512_dpbusd_epi32(l0, lo0, _mm512_set1_epi32(xp[0]));
      l1 = _mm512_dpbusd_epi32(l1, hi0, _mm512_set1_epi32(xp[1]));
      l0 = _mm512_dpbusd_epi32(l0, lo1, _mm512_set1_epi32(xp[2]));
      l1 = _mm512_dpbusd_epi32(l1, hi1, _mm512_set1_epi32(xp[3]));
      if constexpr (PLANES == 2) {
        h0 = _mm512_dpbusd_epi32(h0, lo0, _mm512_set1_epi32(xp[4]));
        h1 = _mm512_dpbusd_epi32(h1, hi0, _mm512_set1_epi32(xp[5]));
        h0 = _mm512_dpbusd_epi32(h0, lo1, _mm512_set1_epi32(xp[6]));
        h1 = _mm512_dpbusd_epi32(h1, hi1, _mm512_set1_epi32(xp[7]));
      }
    }
    asm volatile("" : "+v"(l0), "+v"(l1), "+v"(h0), "+v"(h1));
  }
}

int main() {
  const double spc = seconds_per_cycle();
  std::printf("clock %.2f GHz\n", 1e-9 / spc);
  const int64_t iters = 20000000;

  // Throughput of 8 independent vpdpwssd / vpdpbusd zmm per iteration.
  const auto dp = [&](bool bytes) {
    return cycles_per_iter(iters, spc, [&](int64_t n) {
      __m512i a0 = _mm512_set1_epi32(1), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
      const __m512i u = _mm512_set1_epi32(0x01020304), v = _mm512_set1_epi32(0x05060708);
      for (int64_t i = 0; i < n; ++i) {
        if (bytes) {
          a0 = _mm512_dpbusd_epi32(a0, u, v); a1 = _mm512_dpbusd_epi32(a1, u, v);
          a2 = _mm512_dpbusd_epi32(a2, u, v); a3 = _mm512_dpbusd_epi32(a3, u, v);
          a4 = _mm512_dpbusd_epi32(a4, u, v); a5 = _mm512_dpbusd_epi32(a5, u, v);
          a6 = _mm512_dpbusd_epi32(a6, u, v); a7 = _mm512_dpbusd_epi32(a7, u, v);
        } else {
          a0 = _mm512_dpwssd_epi32(a0, u, v); a1 = _mm512_dpwssd_epi32(a1, u, v);
          a2 = _mm512_dpwssd_epi32(a2, u, v); a3 = _mm512_dpwssd_epi32(a3, u, v);
          a4 = _mm512_dpwssd_epi32(a4, u, v); a5 = _mm512_dpwssd_epi32(a5, u, v);
          a6 = _mm512_dpwssd_epi32(a6, u, v); a7 = _mm512_dpwssd_epi32(a7, u, v);
        }
        asm volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5), "+v"(a6), "+v"(a7));
      }
    }) / 8;
  };
  const double c_wssd = dp(false), c_busd = dp(true);
  std::printf("vpdpwssd zmm: %.2f cycles each (%.1f int16 products a cycle)\n", c_wssd, 32 / c_wssd);
  std::printf("vpdpbusd zmm: %.2f cycles each (%.1f int8 products a cycle)\n", c_busd, 64 / c_busd);

  // The idealised interleaved inner loop over a cache-resident weight panel (64 KB: L2), two accumulators
  // (16 rows each) per plane: per 64 bytes (128 weights), one load, and / shift / and, and two vpdpbusd
  // per activation plane with x broadcast from memory.
  std::vector<uint8_t> w(1 << 16);
  std::vector<int32_t> x(1 << 10);
  for (auto& b : w) b = static_cast<uint8_t>(std::rand());
  for (auto& v : x) v = std::rand();
  const int64_t vecs = static_cast<int64_t>(w.size()) / 64;
  const auto inner = [&](auto planes) {
    return cycles_per_iter(4000, spc, [&](int64_t n) { interleaved_pass<decltype(planes)::value>(w.data(), x.data(), vecs, n); }) / vecs;
  };
  const double c2 = inner(std::integral_constant<int, 2>()), c1 = inner(std::integral_constant<int, 1>());
  std::printf("interleaved, two int8 planes (int16-exact): %.2f cycles / 128 weights = %.1f weights a cycle\n", c2,
              128 / c2);
  std::printf("interleaved, one int8 plane (Q8 activations): %.2f cycles / 128 weights = %.1f weights a cycle\n", c1,
              128 / c1);
  return 0;
}
