// The decode GEMV's walk over weight rows, shared by the AVX2 (linear_cpu.cpp) and AVX-512
// (linear_gemv_avx512.cpp) kernels: which row count M runs, how many weight rows a tile takes, and the
// tile-by-tile loop. Templates only, over the caller's tile (a lambda, unique to each file), and no other
// header than <type_traits>: the AVX-512 file includes it under AVX-512 flags (qgemm_problem.h says why that
// matters).
#pragma once
#include <cstdint>
#include <type_traits>

namespace gemma4::linear {

template <int N>
using Int = std::integral_constant<int, N>;

// Weight rows per tile for M rows of x: R * M accumulators fit the registers of the AVX2 kernel.
template <int M>
constexpr int tile_rows() { return M <= 2 ? 4 : (M <= 4 ? 2 : 1); }

// f(Int<M>{}) for the run-time row count M of x, 1..8.
template <class F>
void with_rows(int64_t M, const F& f) {
  switch (M) {
    case 1: return f(Int<1>{});
    case 2: return f(Int<2>{});
    case 3: return f(Int<3>{});
    case 4: return f(Int<4>{});
    case 5: return f(Int<5>{});
    case 6: return f(Int<6>{});
    case 7: return f(Int<7>{});
    default: return f(Int<8>{});
  }
}

// Weight rows [n0, n1) tile by tile, the last (n1 - n0) % R one by one: tile(Int<R>{}, n, out + (n - n0) * M)
// computes rows n .. n + R into out[r * M + m].
template <int M, class Tile>
void walk_rows(int64_t n0, int64_t n1, float* out, const Tile& tile) {
  constexpr int R = tile_rows<M>();
  int64_t n = n0;
  for (; n + R <= n1; n += R) tile(Int<R>{}, n, out + (n - n0) * M);
  for (; n < n1; ++n) tile(Int<1>{}, n, out + (n - n0) * M);
}

}  // namespace gemma4::linear
