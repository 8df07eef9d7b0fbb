// Tensor-core building blocks of the CUDA attention kernels (portable sm_80+ instructions):
// cp.async 16-byte copies into swizzled shared-memory tiles, ldmatrix, and mma.sync m16n8k16 with
// fp32 accumulation, wrapped in the two warp-level products every attention kernel is made of:
//   gemm_abt:  C[16 x 8NT] += A[16 x k] . B[8NT x k]^T   (A, B row-major tiles in shared memory)
//   gemm_pb:   C[16 x 8NT] += P[16 x 16KT] . B[16KT x 8NT] (P in registers, B row-major in shared memory)
// (S = Q K^T and dP = dO V^T are gemm_abt; O += P V, dQ += dS K, dV += P^T dO, dK += dS^T Q are gemm_pb.)
//
// Fragment layouts (PTX ISA, mma.m16n8k16): lane = 4*g + c.
//   A regs a0..a3: (row g, cols 2c..2c+1), (row g+8, same), (row g, cols 2c+8..), (row g+8, cols 2c+8..)
//   B regs b0, b1: (k 2c..2c+1, col g), (k 2c+8.., col g)
//   C floats c0..c3: (row g, cols 2c, 2c+1), (row g+8, cols 2c, 2c+1)
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

namespace gemma4::attn::cuda {

// Shared-memory tiles hold rows of HD elements (HD in {64,128,256,512}: >= 8 chunks of 16 bytes).
// The 16-byte chunk c of row r is stored at chunk c ^ (r & 7), so the 8 row addresses of an ldmatrix
// (same column, consecutive rows) fall in 8 different bank groups.
template <int HD>
__device__ __forceinline__ int swz(int row, int col) {
  return row * HD + ((((col >> 3) ^ (row & 7))) << 3) + (col & 7);
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool pred) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int n = pred ? 16 : 0;  // 0 source bytes: the 16 destination bytes are zero-filled
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Copies rows [0, ROWS) x [0, HD) of a global tile (row r at base + r * row_stride, unit stride within a
// row; rows with row_ok(r) false are zero-filled and not read) into a swizzled shared tile, NTHREADS
// threads cooperating.
template <typename T, int HD, int ROWS, int NTHREADS, typename RowOk>
__device__ __forceinline__ void load_tile_if(T* s, const T* base, int64_t row_stride, RowOk row_ok, int tid) {
  constexpr int CH = HD / 8;  // 16-byte chunks per row
  static_assert((ROWS * CH) % NTHREADS == 0 || ROWS * CH < NTHREADS, "tile not divisible among threads");
#pragma unroll
  for (int i = tid; i < ROWS * CH; i += NTHREADS) {
    const int r = i / CH, c = i % CH;
    const bool ok = row_ok(r);
    const T* src = ok ? base + r * row_stride + c * 8 : base;
    cp_async16(s + r * HD + ((c ^ (r & 7)) << 3), src, ok);
  }
}
// The same with rows >= nvalid zero-filled.
template <typename T, int HD, int ROWS, int NTHREADS>
__device__ __forceinline__ void load_tile(T* s, const T* base, int64_t row_stride, int nvalid, int tid) {
  load_tile_if<T, HD, ROWS, NTHREADS>(s, base, row_stride, [nvalid](int r) { return r < nvalid; }, tid);
}

// Masked keys (key_mask false) and the tensor-core kernels. A masked key must contribute nothing, even
// when its K/V row holds inf/NaN (an fp16 overflow at a padding position): in a tile product its
// probability 0 would meet such a value as 0 * inf = NaN, and adding a -inf bias to a NaN score gives
// NaN. So K/V tiles are loaded with masked rows zero-filled (load_tile_if with the key's mask: the
// row's bytes are never read), and a masked key's score is set to -inf by a select, never by
// arithmetic. The tiles then hold exactly what they hold when those rows are zero in memory, so the
// result is bit for bit that of the run with the rows zeroed. The kernels keep the mask of the next
// tiles in shared memory (a float per key: 0 visible, -inf masked), read from global memory two tiles
// ahead of its use, so neither the copies nor the products wait on a global load.
__device__ __forceinline__ float masked_score(float x, float key_bias) { return key_bias == 0.f ? x : -INFINITY; }

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const void* p) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}

template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                        uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma16816<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two fp32 values -> one register of two 16-bit values (lo in the low half: the lower column).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

template <int NT>
__device__ __forceinline__ void zero(float (&c)[NT][4]) {
#pragma unroll
  for (int j = 0; j < NT; ++j) c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.f;
}

// C[16 x 8NT] += A[a_row0 .. +16][k0 .. k1) . B[b_row0 .. +8NT][k0 .. k1)^T, A and B swizzled HD-row tiles.
template <typename T, int HD, int NT>
__device__ __forceinline__ void gemm_abt(float (&c)[NT][4], const T* sA, int a_row0, const T* sB, int b_row0,
                                         int k0, int k1, int lane) {
  static_assert(NT % 2 == 0, "gemm_abt takes B rows in pairs of 8");
#pragma unroll 4
  for (int k = k0; k < k1; k += 16) {
    uint32_t a[4];
    ldsm_x4(a, sA + swz<HD>(a_row0 + (lane & 15), k + (lane >> 4) * 8));
#pragma unroll
    for (int j = 0; j < NT; j += 2) {
      uint32_t b[4];
      ldsm_x4(b, sB + swz<HD>(b_row0 + 8 * j + (lane & 7) + (lane >> 4) * 8, k + ((lane >> 3) & 1) * 8));
      mma16816<T>(c[j], a, b[0], b[1]);
      mma16816<T>(c[j + 1], a, b[2], b[3]);
    }
  }
}

// C[16 x 8NT] += P[16 x 16KT] . B[b_row0 .. +16KT][d0 .. d0+8NT), P as A fragments, B a swizzled tile.
template <typename T, int HD, int KT, int NT>
__device__ __forceinline__ void gemm_pb(float (&c)[NT][4], const uint32_t (&p)[KT][4], const T* sB, int b_row0,
                                        int d0, int lane) {
  static_assert(NT % 2 == 0, "gemm_pb takes B columns in pairs of 8");
#pragma unroll
  for (int kt = 0; kt < KT; ++kt) {
#pragma unroll
    for (int j = 0; j < NT; j += 2) {
      uint32_t b[4];
      ldsm_x4_t(b, sB + swz<HD>(b_row0 + 16 * kt + (lane & 15), d0 + 8 * j + (lane >> 4) * 8));
      mma16816<T>(c[j], p[kt], b[0], b[1]);
      mma16816<T>(c[j + 1], p[kt], b[2], b[3]);
    }
  }
}

// The C fragments of a 16 x 16KT fp32 tile, rounded to T, as the A fragments of the next product.
template <typename T, int KT>
__device__ __forceinline__ void to_a_frags(uint32_t (&p)[KT][4], const float (&c)[2 * KT][4]) {
#pragma unroll
  for (int kt = 0; kt < KT; ++kt) {
    p[kt][0] = pack2<T>(c[2 * kt][0], c[2 * kt][1]);
    p[kt][1] = pack2<T>(c[2 * kt][2], c[2 * kt][3]);
    p[kt][2] = pack2<T>(c[2 * kt + 1][0], c[2 * kt + 1][1]);
    p[kt][3] = pack2<T>(c[2 * kt + 1][2], c[2 * kt + 1][3]);
  }
}

// Row reductions over the 4 lanes of a quad (the lanes that hold one accumulator row).
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffff, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffff, x, 1);
  return x + __shfl_xor_sync(0xffffffff, x, 2);
}

// Head-dim split: DSPLIT warps (w % WM equal) hold partial sums of the same 16 x 8NT tile. xch_write
// puts this warp's partial into buf ([NWARPS][32][NT*4] floats); after a __syncthreads, xch_sum gives
// every warp of the set the total, added in the same order (so the same bits) in each.
template <int NT>
__device__ __forceinline__ void xch_write(const float (&c)[NT][4], float* buf, int warp, int lane) {
  float* mine = buf + (warp * 32 + lane) * NT * 4;
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) mine[j * 4 + e] = c[j][e];
}
template <int NT, int DSPLIT, int WM>
__device__ __forceinline__ void xch_sum(float (&c)[NT][4], const float* buf, int warp, int lane) {
  zero(c);
#pragma unroll
  for (int w = 0; w < DSPLIT; ++w) {
    const float* part = buf + (((warp % WM) + w * WM) * 32 + lane) * NT * 4;
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) c[j][e] += part[j * 4 + e];
  }
}

}  // namespace gemma4::attn::cuda
