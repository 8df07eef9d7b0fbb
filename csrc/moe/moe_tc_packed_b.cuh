// PackedB: an int4 / int8 expert bank as the B operand of moe_gemm_tc.cuh's grouped GEMM, dequantized on its way
// into shared memory, so gemma4::moe_experts_quant's many-token forward and its backward need no dequantized copy
// of the banks (26B-A4B: 1.5 GB a layer in bf16). Each weight is rounded once from the exact q * scale in fp32,
// as quant/qdequant_cuda.cuh's kernel (and plain PyTorch's dequant(W).to(dtype)) rounds it: the GEMM therefore
// equals the dense one on the dequantized bank bit for bit. Layout: quant/qgemm_problem.h (int4: byte j of a
// 32-weight run holds weight j in its low nibble and 16 + j in its high one, levels stored + 8).
//
// A tile is 64 runs of 32 weights (BKMajor = false: 64 rows of the bank, k-tile one run each; BKMajor = true:
// 32 rows, two runs of 64 columns each); each of the 128 threads loads half a run (8 bytes of int4, 16 of int8)
// and its scale into registers in load, and writes its 16 values into the tile in store.
// Needs: the bank's packed length (the GEMM's K, or N when BKMajor) a multiple of 32, each scale group a multiple
// of 32 weights, and a 16-byte aligned bank (checked by the caller).
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <type_traits>

#include "moe/moe_gemm_tc.cuh"
#include "quant/qgemm_cuda.cuh"  // int4_levels, int8_level

namespace gemma4::moe_cuda {

// The scales' dtype, read at run time (one uniform branch a load) so that a bank's source is one type per format.
enum class ScaleKind : int { Float, BFloat16, Half };

template <typename T, int BITS>
struct PackedB {
  const uint8_t* q;     // [E, rows, len / 2] (int4) or [E, rows, len] (int8)
  const void* scales;   // [E, rows, G] in scale_kind
  ScaleKind scale_kind;
  int64_t rows, len;
  int G, group;  // group = len / G weights a scale

  using Raw = std::conditional_t<BITS == 4, uint2, uint4>;
  struct Tile {
    Raw raw;
    float scale;
    bool ok;
  };

  // This thread's half run: the bank row and first column, and where its 32-weight run starts in the tile.
  template <bool BKMajor>
  __device__ __forceinline__ static void place(int tid, int64_t k0, int64_t n0, int64_t& row, int64_t& col,
                                               int& tile_offset) {
    const int u = tid / 2;  // the run 0..63
    if constexpr (!BKMajor) {
      row = n0 + u;
      col = k0;
      tile_offset = u * kTcLd;
    } else {
      row = k0 + u / 2;
      col = n0 + 32 * (u % 2);
      tile_offset = (u / 2) * kTcLdb + 32 * (u % 2);
    }
  }

  template <bool BKMajor>
  __device__ __forceinline__ void load(Tile& t, void*, int e, int64_t k0, int64_t n0, int64_t N, int64_t K,
                                       int tid) const {
    int64_t row, col;
    int unused;
    place<BKMajor>(tid, k0, n0, row, col, unused);
    // Rows past the bank and runs past its length give zeros (the length is a multiple of 32: a run is in or out).
    t.ok = BKMajor ? row < K && col < N : row < N && col < K;
    if (!t.ok) {
      t.raw = Raw{};
      return;
    }
    const int half = tid % 2;
    const int64_t r = int64_t(e) * rows + row;
    const uint8_t* src = q + r * (BITS == 4 ? len / 2 : len) + (BITS == 4 ? col / 2 + 8 * half : col + 16 * half);
    t.raw = __ldg(reinterpret_cast<const Raw*>(src));
    const int64_t si = r * G + col / group;
    switch (scale_kind) {
      case ScaleKind::Float: t.scale = static_cast<const float*>(scales)[si]; break;
      case ScaleKind::BFloat16: t.scale = static_cast<float>(static_cast<const c10::BFloat16*>(scales)[si]); break;
      default: t.scale = static_cast<float>(static_cast<const c10::Half*>(scales)[si]); break;
    }
  }

  template <bool BKMajor>
  __device__ __forceinline__ void store(const Tile& t, void* smem, int tid) const {
    int64_t row, col;
    int offset;
    place<BKMajor>(tid, 0, 0, row, col, offset);
    const int half = tid % 2;
    T* run = static_cast<T*>(smem) + offset;  // the run's 32 weights in the tile
    alignas(16) T lo[8], hi[8];  // int4: weights 8h.. and 16 + 8h..; int8: weights 16h.. and 16h + 8..
    if constexpr (BITS == 4) {
      const uint32_t words[2] = {t.raw.x, t.raw.y};
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float2 q = quant_cuda::int4_levels(words[j / 4], j % 4);
        lo[j] = t.ok ? static_cast<T>(q.x * t.scale) : T(0);
        hi[j] = t.ok ? static_cast<T>(q.y * t.scale) : T(0);
      }
      *reinterpret_cast<uint4*>(run + 8 * half) = *reinterpret_cast<const uint4*>(lo);
      *reinterpret_cast<uint4*>(run + 16 + 8 * half) = *reinterpret_cast<const uint4*>(hi);
    } else {
      const uint32_t words[4] = {t.raw.x, t.raw.y, t.raw.z, t.raw.w};
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const float v = quant_cuda::int8_level(words[j / 4], j % 4) * t.scale;
        (j < 8 ? lo[j] : hi[j - 8]) = t.ok ? static_cast<T>(v) : T(0);
      }
      *reinterpret_cast<uint4*>(run + 16 * half) = *reinterpret_cast<const uint4*>(lo);
      *reinterpret_cast<uint4*>(run + 16 * half + 8) = *reinterpret_cast<const uint4*>(hi);
    }
  }
};

}  // namespace gemma4::moe_cuda
