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
// k slots {2t, 2t+1, 2t+8, 2t+9} of each 16-wide step; one scale per run needs the four lanes of a quad to
// hold the same run in a step. Each lane therefore holds 8 weights of a run (two steps), in this order:
//   int4: the 32-bit word pi(t) of the run's 16 bytes, pi = {0, 2, 1, 3} (the order the 8-byte loads and
//         one shuffle produce, see exchange_int4). Word w holds weights 4w..4w+3 (low nibbles) and
//         4w+16..4w+19 (high nibbles); the four bf16x2 pairs taken with shifts 0, 4, 8, 12 are
//         (4w, 4w+2), (4w+16, 4w+18), (4w+1, 4w+3), (4w+17, 4w+19).
//   int8: bytes 8t..8t+7 of the run's 32 bytes, pairs (8t, 8t+1), (8t+2, 8t+3), (8t+4, 8t+5), (8t+6, 8t+7).
// Step 0 uses pairs 0 (slots 2t, 2t+1) and 1 (slots 2t+8, 2t+9), step 1 pairs 2 and 3. The activations
// are laid out in the same order beforehand (run_offset), so a lane's B fragments are one 16-byte load.
#pragma once
#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace gemma4::quant_cuda {

// Offset within the 32-weight run of the j-th activation (j = 0..7) lane-in-quad t multiplies.
template <int BITS>
__host__ __device__ __forceinline__ int run_offset(int t, int j) {
  if constexpr (BITS == 4) {
    const int w = ((t & 1) << 1) | (t >> 1);  // pi(t)
    constexpr int kOff[8] = {0, 2, 16, 18, 1, 3, 17, 19};
    return 4 * w + kOff[j];
  } else {
    return 8 * t + j;
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

// Pair p (0..3) of a lane's 8 weights of one run (words w0, w1: int4 uses w0 only).
template <typename MT, int BITS>
__device__ __forceinline__ uint32_t weight_pair(uint32_t w0, uint32_t w1, int p) {
  if constexpr (BITS == 4) {
    return int4_pair<MT>(w0, 4 * p);
  } else {
    return int8_pair<MT>(p < 2 ? w0 : w1, p & 1);
  }
}

// 8 bytes from global memory, not kept in L1 (the weights stream once; L1 keeps the activations).
__device__ __forceinline__ uint2 load_stream8(const void* p) {
  uint2 v;
  asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0,%1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "l"(p));
  return v;
}

// int4: lane t of a quad loaded bytes 8t..8t+7 of 32 bytes = runs 0 and 1 of a row (lanes 0, 1: run 0;
// lanes 2, 3: run 1). One shuffle with lane t ^ 2 leaves each lane word pi(t) of both runs.
__device__ __forceinline__ void exchange_int4(uint2 v, int t, uint32_t& run0, uint32_t& run1) {
  const bool low = t < 2;
  const uint32_t recv = __shfl_xor_sync(0xffffffffu, low ? v.y : v.x, 2);
  run0 = low ? v.x : recv;
  run1 = low ? recv : v.y;
}

template <typename S>
__device__ __forceinline__ float scale_to_float(S s) {
  if constexpr (std::is_same_v<S, float>) {
    return s;
  } else {
    return static_cast<float>(s);
  }
}

}  // namespace gemma4::quant_cuda
