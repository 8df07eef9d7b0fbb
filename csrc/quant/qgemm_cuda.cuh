// Device helpers of the CUDA qgemm (qgemm_cuda.cu): the tensor-core MMA, the exact int4/int8 -> bf16/fp16
// conversions, and the order in which one lane of the GEMV holds the weights of a 32-weight run.
//
// Why tensor cores for a GEMV: at M = 16 an fp32-FMA GEMV does 32 FMAs per int4 weight byte, four times
// what the FMA units sustain at HBM rate; mma.sync (m16n8k16) does it at a fraction of its peak, so
// M = 1..32 all cost about one read of the weights.
// Exactness: the weight levels q (-8..7, -128..127) are exact in bf16 and fp16, and so are bf16/fp16
// activations, so every product is exact and summed in fp32 inside the MMA; the scale is applied in fp32
// to each 32-weight run's partial sum. (fp32 activations split into three bf16 terms were tried and
// measured 3-4x plain fp32's error on the H200: the MMA's fp32 accumulation does not round to nearest.
// qgemm_cuda sends fp32 x to dequantize + cuBLAS instead.)
//
// Fragment order. The MMA's A fragment gives lane (g = lane / 4, t = lane % 4) rows g and g + 8 and the
// k slots {2t, 2t+1, 2t+8, 2t+9} of each 16-wide step. Each lane loads LB contiguous bytes of a row (8 or
// 16), so the four lanes of a quad cover a span of 4 LB bytes = R runs (R = 4 LB / run bytes: int4 16-byte
// runs, int8 32-byte runs), and lane t's bytes all belong to run t R / 4 of the span. Nothing moves between
// lanes: in every k step of a span the quad holds R different runs, each with its own scale, and the MMA
// keeps them apart in its output columns. B column c stands for x row c / R and run c % R: it holds x's
// values in the k slots of the lanes that hold run c % R, and zeros in the others. So D column c is the
// exact sum of run c % R for x row c / R over all 2R steps of the span, and its scale is applied once, in
// fp32 (8 / R x rows per 8-column tile: the cost is the tile count at M > 8 / R).
// One exception: int4 with 4 bytes per lane (R = 1, for M > 4) loads 8 bytes of a run pair and exchanges
// half with a neighbour lane (exchange_int4), as lane t's 4 bytes alone would use half of each 32-byte sector.
// A lane's own order. Step s (0..2R-1) of a span uses the lane's 32-bit word j (int4 j = s / 2: two steps
// per word, int8 j = s); b = the lane's first byte within its run (4 pi(t) for int4 with LB = 4):
//   int4: byte i of a run holds weights i (low nibble) and i + 16 (high). The bf16x2 pairs taken with
//         nibble shift 8e and 8e + 4 (e = s % 2) are weights (b+4j+e, b+4j+e+2) for slots 2t, 2t+1 and
//         (b+4j+e+16, b+4j+e+18) for slots 2t+8, 2t+9.
//   int8: bytes b+4j, b+4j+1 for slots 2t, 2t+1 and b+4j+2, b+4j+3 for slots 2t+8, 2t+9.
// The activations are laid out in the same order beforehand (run_offset), so a lane's B fragments for two
// steps are one 16-byte load.
#pragma once
#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace gemma4::quant_cuda {

// Weight index within its 32-weight run of k slot i (0..3: 2t, 2t+1, 2t+8, 2t+9) of step s that lane-in-quad
// t supplies when lanes load LB bytes (see the fragment order above).
template <int BITS, int LB>
__host__ __device__ __forceinline__ int run_offset(int t, int s, int i) {
  if constexpr (BITS == 4) {
    constexpr int kOff[4] = {0, 2, 16, 18};
    // LB = 4: the lane holds word pi(t) = {0, 2, 1, 3}[t] of each run (exchange_int4)
    const int b = LB == 4 ? 4 * (((t & 1) << 1) | (t >> 1)) : (LB * t) % 16;
    return b + 4 * (s / 2) + s % 2 + kOff[i];
  } else {
    return (LB * t) % 32 + 4 * s + i;
  }
}

// d += a * b, m16n8k16, fp32 accumulation; MT (the 16-bit operand type) is __nv_bfloat16 (bf16 and fp32
// activations) or __half.
template <typename MT>
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<MT, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

__device__ __forceinline__ uint32_t lop3_and_or(uint32_t a, uint32_t mask, uint32_t bits) {
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(r) : "r"(a), "r"(mask), "r"(bits));  // (a & mask) | bits
  return r;
}

// The int4 pair at nibble shift `shift` (0, 4, 8, 12) of word w, as two exact levels q = u - 8.
// Magic numbers: bf16 0x4300 = 128 (unit step there), fp16 0x6400 = 1024; OR-ing u into the mantissa
// gives 128 + u (1024 + u), minus 136 (1032) is q -- exact.
template <typename MT>
__device__ __forceinline__ uint32_t int4_pair(uint32_t w, int shift) {
  if constexpr (std::is_same_v<MT, __nv_bfloat16>) {
    uint32_t v = lop3_and_or(w >> shift, 0x000F000Fu, 0x43004300u);
    __nv_bfloat162 r = __hsub2(*reinterpret_cast<__nv_bfloat162*>(&v), __floats2bfloat162_rn(136.0f, 136.0f));
    return *reinterpret_cast<uint32_t*>(&r);
  } else {
    uint32_t v = lop3_and_or(w >> shift, 0x000F000Fu, 0x64006400u);
    __half2 r = __hsub2(*reinterpret_cast<__half2*>(&v), __floats2half2_rn(1032.0f, 1032.0f));
    return *reinterpret_cast<uint32_t*>(&r);
  }
}

// The int8 pair of bytes (2i, 2i+1) of word w (i = 0 or 1), exact. fp16: 1024 + (q + 128) minus 1152.
// bf16 cannot hold 128 + u for u up to 255, so it goes through fp32 (2^23 + u) and one exact rounding.
template <typename MT>
__device__ __forceinline__ uint32_t int8_pair(uint32_t w, int i) {
  const uint32_t u = w ^ 0x80808080u;  // q + 128 in each byte
  if constexpr (std::is_same_v<MT, __nv_bfloat16>) {
    const float f0 = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7650 + 2 * i)) - 8388736.0f;
    const float f1 = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7651 + 2 * i)) - 8388736.0f;
    __nv_bfloat162 r = __floats2bfloat162_rn(f0, f1);
    return *reinterpret_cast<uint32_t*>(&r);
  } else {
    uint32_t v = __byte_perm(u, 0x64646464u, i == 0 ? 0x4140 : 0x4342);
    __half2 r = __hsub2(*reinterpret_cast<__half2*>(&v), __floats2half2_rn(1152.0f, 1152.0f));
    return *reinterpret_cast<uint32_t*>(&r);
  }
}

// The bf16x2 / fp16x2 pair of step s for slots 2t, 2t+1 (hi = 0) or 2t+8, 2t+9 (hi = 1), from the lane's words.
template <typename MT, int BITS, int NW>
__device__ __forceinline__ uint32_t weight_pair(const uint32_t (&w)[NW], int s, int hi) {
  if constexpr (BITS == 4) {
    return int4_pair<MT>(w[s / 2], 8 * (s % 2) + 4 * hi);
  } else {
    return int8_pair<MT>(w[s], hi);
  }
}

// NW 32-bit words (4, 8 or 16 bytes) from global memory, not kept in L1 (the weights stream once; L1 keeps the
// activations and scales). PF: ask L2 for the whole 128-byte line (the .L2::128B hint), so that the lane's next
// span of the row, in the same line, is in L2 when it is loaded: more bytes in flight per load instruction,
// which is what bounds the GEMV (qgemm_cuda.cu: l2_prefetch_wins).
template <int NW, bool PF = false>
__device__ __forceinline__ void load_stream(const void* p, uint32_t (&w)[NW]) {
  static_assert(NW == 1 || NW == 2 || NW == 4);
  if constexpr (NW == 1) {
    if constexpr (PF) {
      asm volatile("ld.global.nc.L1::no_allocate.L2::128B.u32 %0, [%1];\n" : "=r"(w[0]) : "l"(p));
    } else {
      asm volatile("ld.global.nc.L1::no_allocate.u32 %0, [%1];\n" : "=r"(w[0]) : "l"(p));
    }
  } else if constexpr (NW == 2) {
    if constexpr (PF) {
      asm volatile("ld.global.nc.L1::no_allocate.L2::128B.v2.u32 {%0,%1}, [%2];\n" : "=r"(w[0]), "=r"(w[1]) : "l"(p));
    } else {
      asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0,%1}, [%2];\n" : "=r"(w[0]), "=r"(w[1]) : "l"(p));
    }
  } else if constexpr (PF) {
    asm volatile("ld.global.nc.L1::no_allocate.L2::128B.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3])
                 : "l"(p));
  } else {
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3])
                 : "l"(p));
  }
}

// int4 with LB = 4 (one run per span): lane t of a quad loaded bytes 8t..8t+7 of 32 bytes = runs 0 and 1 of
// a row (lanes 0, 1: run 0; lanes 2, 3: run 1), full 32-byte sectors; one shuffle with lane t ^ 2 leaves
// each lane word pi(t) of both runs, pi = {0, 2, 1, 3}.
__device__ __forceinline__ void exchange_int4(uint2 v, int t, uint32_t& run0, uint32_t& run1) {
  const bool low = t < 2;
  const uint32_t recv = __shfl_xor_sync(0xffffffffu, low ? v.y : v.x, 2);
  run0 = low ? v.x : recv;
  run1 = low ? recv : v.y;
}

// The GEMV epilogue for accumulators in the MMA's C-fragment order: acc[rt][nt][j] of lane (g, t) belongs to
// y[m = nt*8 + 2t + (j & 1), n = n0 + rt*16 + g + (j >= 2 ? 8 : 0)] (RT 16-row tiles). The block's warps
// (consecutive K slices) are added in warp order through red ([warps][RT NT 4][32] floats of shared memory, free
// when called), then written to y (+ bias), or, when a.parts > 1, to part blockIdx.y of a.partial (the sum-parts
// kernel adds the bias). Args: GemvArgs or RingArgs (M, N, bias, y, parts, partial).
template <typename T, int NT, int RT = 2, typename Args>
__device__ __forceinline__ void store_fragment_sums(const float (&acc)[RT][NT][4], float* red, int n0, const Args& a) {
  constexpr int E = RT * NT * 4;  // accumulators per lane
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
#pragma unroll
  for (int rt = 0; rt < RT; ++rt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int j = 0; j < 4; ++j) red[(warp * E + (rt * NT + nt) * 4 + j) * 32 + lane] = acc[rt][nt][j];
  __syncthreads();
  const T* bias = static_cast<const T*>(a.bias);
  T* y = static_cast<T*>(a.y);
  for (int i = threadIdx.x; i < E * 32; i += blockDim.x) {
    const int e = i / 32, ln = i % 32, j = e % 4, nt = (e / 4) % NT, rt = e / (4 * NT);
    const int n = n0 + rt * 16 + ln / 4 + (j >= 2 ? 8 : 0), m = nt * 8 + 2 * (ln % 4) + (j & 1);
    if (n >= a.N || m >= a.M) continue;
    float s = red[i];
    for (int w = 1; w < warps; ++w) s += red[w * E * 32 + i];
    if (a.parts > 1) {
      a.partial[(int64_t(blockIdx.y) * a.M + m) * a.N + n] = s;
      continue;
    }
    if (bias != nullptr) s += static_cast<float>(bias[n]);
    y[int64_t(m) * a.N + n] = static_cast<T>(s);
  }
}

template <typename S>
__device__ __forceinline__ float scale_to_float(S s) {
  if constexpr (std::is_same_v<S, float>) {
    return s;
  } else {
    return static_cast<float>(s);
  }
}

// The exact levels in byte j (0..3) of a word of packed weights (layout: qgemm_problem.h): int4 holds two, its
// low nibble (.x) and high nibble (.y), each stored + 8; int8 one, signed.
__device__ __forceinline__ float2 int4_levels(uint32_t word, int j) {
  const uint32_t byte = (word >> (8 * j)) & 0xFF;
  return make_float2(static_cast<float>(static_cast<int>(byte & 0xF) - 8),
                     static_cast<float>(static_cast<int>(byte >> 4) - 8));
}
__device__ __forceinline__ float int8_level(uint32_t word, int j) {
  return static_cast<float>(static_cast<int8_t>((word >> (8 * j)) & 0xFF));
}

}  // namespace gemma4::quant_cuda
