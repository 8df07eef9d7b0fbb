// Small register-blocked GEMM kernels for the MoE experts (forward and backward), CPU, AVX2 via
// at::vec::Vectorized<Acc> (8 floats or 4 doubles a lane group).
//
// Why our own and not BLAS: in a MoE layer each expert sees only a handful of tokens (1-16 rows at
// decode and small batches), so the expert GEMMs are skinny: reading the expert's weights dominates.
// The weights stay in their storage dtype (bf16 / fp16 / fp32 / fp64) and are widened to the
// accumulation type in registers as they stream past, so a bf16 expert is read once, at 2 bytes per
// weight, with fp32 accumulation and no converted copy. The alternatives measured worse or do not
// fit: at::native::cpublas::gemm's float/bf16 overloads are not exported by libtorch_cpu (only
// the slow fallback gemm_stub is); at::mm on bf16 rounds its output (gate/up) to bf16; converting
// each expert to fp32 for at::mm (what the reference does) triples the memory traffic, and MKL's
// sgemm on this machine ran 1-16-row products at a small fraction of peak.
//
// Two shapes of kernel:
//   gemm_nt    C(i, j) = sum_k A_i[k] * B[j, k]      "dot" form: both operands contiguous along k
//                                                    (x @ W^T with W [out, in], the forward GEMMs).
//   gemm_outer C(i, j) = sum_k A(i, k) * B_k[j]      "outer product" form: B rows contiguous along j
//                                                    (g @ W and G^T X of the backward pass).
// Results go to an epilogue functor, so callers fuse the store (scale by the routing weight, add
// into an fp32 accumulator, round to bf16, ...) into the kernel and no C temporary is needed.
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include <ATen/cpu/vec/vec.h>

#include "common/vec_utils.h"  // VecIO

namespace gemma4::moe {

template <typename Acc>
using Vec = at::vec::Vectorized<Acc>;

// Vec<Acc>::size() elements of T widened to Acc lanes (T == Acc, or bf16/fp16 with Acc = float);
// with n, the first n elements and zero lanes after them (they add nothing to a dot product).
template <typename Acc, typename T>
inline Vec<Acc> load_vec(const T* p) {
  static_assert(std::is_same_v<typename VecIO<T>::A, Acc>, "T is read in its accumulation type");
  return VecIO<T>::load(p);
}
template <typename Acc, typename T>
inline Vec<Acc> load_vec(const T* p, int64_t n) {
  static_assert(std::is_same_v<typename VecIO<T>::A, Acc>, "T is read in its accumulation type");
  return VecIO<T>::load(p, n);
}

// Accumulator registers. GCC keeps arrays of Vectorized<> objects in memory inside the k loops (it
// stores every accumulator to the stack on each iteration, a 3x slowdown); arrays of the raw vector
// type stay in registers. Vectorized<float/double> converts to and from __m256/__m256d for free.
#if defined(CPU_CAPABILITY_AVX2)
template <typename Acc>
struct Reg;
template <>
struct Reg<float> {
  using type = __m256;
  static type zero() { return _mm256_setzero_ps(); }
  static type fma(type a, type b, type c) { return _mm256_fmadd_ps(a, b, c); }
};
template <>
struct Reg<double> {
  using type = __m256d;
  static type zero() { return _mm256_setzero_pd(); }
  static type fma(type a, type b, type c) { return _mm256_fmadd_pd(a, b, c); }
};
#else
template <typename Acc>
struct Reg {
  using type = Vec<Acc>;
  static type zero() { return Vec<Acc>(Acc(0)); }
  static type fma(const type& a, const type& b, const type& c) { return at::vec::fmadd(a, b, c); }
};
#endif

// Store the first n lanes of v at p as T, rounding once.
template <typename T, typename Acc>
inline void store_vec(T* p, const Vec<Acc>& v, int64_t n) {
  static_assert(std::is_same_v<typename VecIO<T>::A, Acc>, "T is written from its accumulation type");
  if (n == Vec<Acc>::size()) {
    VecIO<T>::store(p, v);
  } else {
    VecIO<T>::store(p, v, n);
  }
}

// dst[0..n) = src[0..n) as T (the fp32 accumulators to the output dtype), vectorized.
template <typename T, typename Acc>
inline void store_row(T* dst, const Acc* src, int64_t n) {
  constexpr int64_t W = Vec<Acc>::size();
  for (int64_t i = 0; i < n; i += W) store_vec<T, Acc>(dst + i, Vec<Acc>::loadu(src + i, std::min(W, n - i)), std::min(W, n - i));
}

// ---------------------------------------------------------------------------------------------
// Dot form. One tile: MR rows of A against NR rows of B over the whole of k, so the MR*NR
// accumulators stay in registers and need one horizontal sum each at the end (cheap: k is the
// hidden or intermediate size, thousands). With the A vectors loaded first the tile needs
// MR*NR + MR + 1 registers: (3,4), (2,6) and (1,8) all fit the 16 ymm registers of AVX2.
template <int MR, int NR, typename Acc, typename T, typename Epi>
inline void dot_tile(int64_t K, const Acc* const* a, const T* b, int64_t ldb, int64_t i0, int64_t j0,
                     Epi& epi) {
  using V = Vec<Acc>;
  using R = Reg<Acc>;
  constexpr int64_t W = V::size();
  typename R::type acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = R::zero();
  int64_t k = 0;
  for (; k + W <= K; k += W) {
    typename R::type av[MR];
    for (int i = 0; i < MR; ++i) av[i] = V::loadu(a[i] + k);
    for (int j = 0; j < NR; ++j) {
      const typename R::type bv = load_vec<Acc>(b + j * ldb + k);
      for (int i = 0; i < MR; ++i) acc[i][j] = R::fma(av[i], bv, acc[i][j]);
    }
  }
  if (k < K) {  // tail of k: partial loads with zero lanes
    const int64_t n = K - k;
    typename R::type av[MR];
    for (int i = 0; i < MR; ++i) av[i] = V::loadu(a[i] + k, n);
    for (int j = 0; j < NR; ++j) {
      const typename R::type bv = load_vec<Acc>(b + j * ldb + k, n);
      for (int i = 0; i < MR; ++i) acc[i][j] = R::fma(av[i], bv, acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) epi(i0 + i, j0 + j, gemma4::hsum<Acc>(V(acc[i][j])));
}

// MR rows of A against B rows [j0, j1): NR-row tiles, then single rows.
template <int MR, int NR, typename Acc, typename T, typename Epi>
inline void dot_rows(int64_t K, const Acc* const* a, const T* b, int64_t ldb, int64_t i0, int64_t j0, int64_t j1,
                     Epi& epi) {
  int64_t j = j0;
  for (; j + NR <= j1; j += NR) dot_tile<MR, NR>(K, a, b + j * ldb, ldb, i0, j, epi);
  for (; j < j1; ++j) dot_tile<MR, 1>(K, a, b + j * ldb, ldb, i0, j, epi);
}

// C(i, j) = sum_k a[i][k] * b[j*ldb + k] for i < M, j < N; epi(i, j, value) receives each result once.
// a: M row pointers (Acc, k-contiguous); b: N rows of T.
// Loop order: blocks of JB rows of B outermost, so that at decode (M = 1..16) every weight row is
// read from memory once and the block is reused from L2 by all row tiles of A.
template <typename Acc, typename T, typename Epi>
void gemm_nt(int64_t M, int64_t N, int64_t K, const Acc* const* a, const T* b, int64_t ldb, Epi&& epi) {
  constexpr int64_t JB = 24;  // divisible by the NR of every row tile (4, 6, 8)
  for (int64_t j0 = 0; j0 < N; j0 += JB) {
    const int64_t j1 = std::min(N, j0 + JB);
    // Row tiles of 3; 4 leftover rows as 2 + 2 rather than 3 + 1 (a 1-row tile reads B for little work).
    int64_t i = 0;
    for (; M - i >= 3 && M - i != 4; i += 3) dot_rows<3, 4>(K, a + i, b, ldb, i, j0, j1, epi);
    for (; M - i >= 2; i += 2) dot_rows<2, 6>(K, a + i, b, ldb, i, j0, j1, epi);
    if (M - i == 1) dot_rows<1, 8>(K, a + i, b, ldb, i, j0, j1, epi);
  }
}

// ---------------------------------------------------------------------------------------------
// Outer-product form. A tile is MR rows (i) by NV vectors of columns (j); each step of k loads NV
// vectors of the B row k and broadcasts MR scalars A(i, k): MR*NV + NV + 1 registers.
// n: valid columns of the tile (< NV * lanes only for the last tile of a row, then NV == 1).
template <int MR, int NV, typename Acc, typename T, typename AFn, typename BFn, typename Epi>
inline void outer_tile(int64_t K, const AFn& a, const BFn& brow, int64_t i0, int64_t j0, int64_t n, Epi& epi) {
  using V = Vec<Acc>;
  using R = Reg<Acc>;
  constexpr int64_t W = V::size();
  // Blocked summation: a chain of KB fmas per block, blocks added into total. One chain over all of K
  // (K = H = 2816 in the backward) would have K roundings in series, several times plain PyTorch's error.
  constexpr int64_t KB = 32;
  V total[MR][NV];  // touched once per block, so it may live in memory
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) total[i][v] = V(Acc(0));
  const bool full = n == NV * W;
  for (int64_t k0 = 0; k0 < K; k0 += KB) {
    typename R::type acc[MR][NV];
    for (int i = 0; i < MR; ++i)
      for (int v = 0; v < NV; ++v) acc[i][v] = R::zero();
    for (int64_t k = k0; k < std::min(K, k0 + KB); ++k) {
      const T* bk = brow(k) + j0;
      typename R::type bv[NV];
      if (full) {
        for (int v = 0; v < NV; ++v) bv[v] = load_vec<Acc>(bk + v * W);
      } else {
        bv[0] = load_vec<Acc>(bk, n);  // NV == 1 here
      }
      for (int i = 0; i < MR; ++i) {
        const typename R::type av = V(a(i0 + i, k));
        for (int v = 0; v < NV; ++v) acc[i][v] = R::fma(av, bv[v], acc[i][v]);
      }
    }
    for (int i = 0; i < MR; ++i)
      for (int v = 0; v < NV; ++v) total[i][v] = total[i][v] + V(acc[i][v]);
  }
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) epi(i0 + i, j0 + v * W, total[i][v], std::min<int64_t>(W, n - v * W));
}

// All rows of A against the columns [j0, j0 + n) of B (one tile wide): row tiles of 4, then the rest.
template <int NV, typename Acc, typename T, typename AFn, typename BFn, typename Epi>
inline void outer_cols(int64_t M, int64_t K, const AFn& a, const BFn& brow, int64_t j0, int64_t n, Epi& epi) {
  int64_t i = 0;
  for (; i + 4 <= M; i += 4) outer_tile<4, NV, Acc, T>(K, a, brow, i, j0, n, epi);
  switch (M - i) {
    case 3: outer_tile<3, NV, Acc, T>(K, a, brow, i, j0, n, epi); break;
    case 2: outer_tile<2, NV, Acc, T>(K, a, brow, i, j0, n, epi); break;
    case 1: outer_tile<1, NV, Acc, T>(K, a, brow, i, j0, n, epi); break;
    default: break;
  }
}

// C(i, j) = sum_k a(i, k) * brow(k)[j] for i < M, j < N.
// a(i, k) -> Acc; brow(k) -> const T* (row k of B, at column 0); epi(i, j, Vec v, n) receives the
// n valid lanes v[0..n) = C(i, j..j+n) once.
// Column tiles outermost: the K x (2 vectors) panel of B read by a column tile stays in cache for
// all row tiles of A (B is the weight matrix, the large operand, in the backward GEMMs).
template <typename Acc, typename T, typename AFn, typename BFn, typename Epi>
void gemm_outer(int64_t M, int64_t N, int64_t K, const AFn& a, const BFn& brow, Epi&& epi) {
  constexpr int64_t W = Vec<Acc>::size();
  int64_t j = 0;
  for (; j + 2 * W <= N; j += 2 * W) outer_cols<2, Acc, T>(M, K, a, brow, j, 2 * W, epi);
  for (; j < N; j += W) outer_cols<1, Acc, T>(M, K, a, brow, j, std::min(W, N - j), epi);
}

}  // namespace gemma4::moe
