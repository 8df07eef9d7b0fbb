// Flash-attention style CPU kernels for gemma4::attention and gemma4::attention_backward.
//
// Computes, for q [B,T,nH,hd] and k, v [B,S,nKV,hd] (query t sits at key index p = S-T+t):
//   s[t,j] = scale * q[t] . k[j]   for the keys j visible to t (j <= p; j > p - window when window > 0;
//                                   key_mask[b, j] when given), query head h reading KV head h / (nH/nKV)
//   out[t] = softmax_j(s[t,:]) @ v,   lse[t] = logsumexp_j s[t,j]   (-inf and zeros when nothing is visible)
// Reference: python/gemma4/ops/reference.py::attention (the definition of correct).
//
// Shape of the computation (dev/attention/ holds the measured alternatives):
// * Work item = (batch b, KV head g, tile of query positions): the query rows of ALL G = nH/nKV heads
//   of the group are processed together (row i = (position, head-in-group)), so each K/V tile is read
//   once per group and reused across the heads; K/V are read through their strides (no GQA copy).
// * Per key tile: S^T = K . Q^T is computed with K rows broadcast against Q^T packed in column panels,
//   so the online-softmax statistics (column max, column sums, rescale) are plain vector ops across
//   query rows; then O = alpha * O + P . V. Both products use a register-blocked 6 x 16 micro-kernel
//   (Vectorized<float>, AVX2+FMA; Vectorized<double> for float64). It runs at the speed of MKL's
//   sgemm on these tiles (dev/attention/v2 vs v3), so no BLAS dependency is needed.
// * Key tiles entirely hidden by causality or the sliding window are never visited (the key range of
//   a query tile is computed up front); tiles entirely made of padding are skipped; tiles fully visible
//   skip the element-wise mask.
// * bf16/fp16 K/V tiles are converted to fp32 once per tile; everything accumulates in fp32 (float64
//   for float64 inputs).
// * Few work items (decode, T small): the key range is split across threads and the partial (O, m, l)
//   are merged afterwards (flash-decoding). Tiny query groups (M <= 4 rows) use dot products along hd
//   for S, which keeps the FMA units busy where the broadcast kernel would waste 7/8 of a vector.
// * Backward (flash-attention 2): D = rowsum(dO * O); per (b, g, key tile) work item, for every query
//   tile that sees it: recompute P = exp(S - lse), dV += P^T dO, dP = dO V^T, dS = P (dP - D),
//   dK += dS^T Q, dQ += dS K. dK/dV belong to the work item (no races); dQ goes to a per-thread fp32
//   buffer, summed at the end. Q and dO are packed once up front in the layouts the products want.
// * Forward: threads take work items from an atomic counter, largest first (causal tiles differ in
//   cost). Backward: a fixed cost-balanced share per worker, so grad_q is run-to-run deterministic.
#pragma once
#include <ATen/Parallel.h>

#include "attention/attention_checks.h"  // Params, BwdTensors: the problem the kernels solve
#include "attention/attention_decode_avx512bf16.h"  // bf16 decode products on vdpbf16ps
#include "common/vec_utils.h"  // VecIO
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#if defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <limits>
#include <memory>
#include <numeric>
#include <type_traits>
#include <vector>

namespace gemma4::attn {

using at::vec::Vectorized;

// ---------------------------------------------------------------------------------------------
// Small vector helpers.

// max(a, b) with maxps semantics: b when either is NaN (not at::vec::maximum, which propagates NaN).
#if defined(CPU_CAPABILITY_AVX2)
inline Vectorized<float> vmax(Vectorized<float> a, Vectorized<float> b) { return _mm256_max_ps(a, b); }
inline Vectorized<double> vmax(Vectorized<double> a, Vectorized<double> b) { return _mm256_max_pd(a, b); }
#else
template <typename A>
inline Vectorized<A> vmax(Vectorized<A> a, Vectorized<A> b) { return Vectorized<A>::blendv(b, a, a > b); }
#endif
// exp_u20 is inline (no call) and accurate to ~20 ulp, far inside the fp32 tolerance of softmax; it
// maps NaN to a finite value, so NaN is put back (a NaN score must make its row NaN, as in the reference).
inline Vectorized<float> vexp(Vectorized<float> x) { return Vectorized<float>::blendv(x.exp_u20(), x, x != x); }
inline Vectorized<double> vexp(Vectorized<double> x) { return x.exp(); }

// dst[0:n] = src[0:n] * mul converted to the accumulation type, zero-padded to npad.
template <typename T, typename A>
inline void load_row(const T* src, A* dst, int64_t n, int64_t npad, A mul) {
  using IO = VecIO<T>;
  static_assert(std::is_same_v<typename IO::A, A>, "rows are read in their accumulation type");
  int64_t d = 0;
  for (; d + IO::N <= n; d += IO::N) (IO::load(src + d) * Vectorized<A>(mul)).store(dst + d);
  for (; d < n; ++d) dst[d] = static_cast<A>(src[d]) * mul;
  for (; d < npad; ++d) dst[d] = A(0);
}

// dst[0:n] = src[0:n] * mul, rounded once to the output dtype.
template <typename T, typename A>
inline void store_row(const A* src, T* dst, int64_t n, A mul) {
  if constexpr (std::is_same_v<T, A>) {
    using V = Vectorized<A>;
    int64_t d = 0;
    for (; d + V::size() <= n; d += V::size()) (V::loadu(src + d) * V(mul)).store(dst + d);
    for (; d < n; ++d) dst[d] = src[d] * mul;
  } else {
    for (int64_t d = 0; d < n; ++d) dst[d] = static_cast<T>(src[d] * mul);
  }
}

// Rows of one KV head are hd-long pieces at a large stride ([B,S,nKV,hd] or a cache view), which the
// hardware prefetcher does not follow from row to row; decode streams them once, so ask for them early.
inline void prefetch_rows(const void* base, int64_t stride_bytes, int64_t rows, int64_t bytes) {
  const char* p = static_cast<const char*>(base);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(p + r * stride_bytes + o, 0, 2);  // read, keep in L2 (T1)
}

// The n rows of one K or V tile, [n x hdp] in the accumulation type. Padding keys (key_mask false,
// from the prefix counts cnt; null: no mask) become zero rows: their scores are masked anyway, and a
// zero row keeps a non-finite value there (an fp16 overflow at a padding position) out of the
// products, where its probability 0 would meet it as 0 * inf = NaN.
template <typename T, typename A>
inline void load_tile(const T* rows, int64_t stride, int64_t n, int64_t hd, int64_t hdp, const int32_t* cnt,
                      int64_t j0, A* dst) {
  for (int64_t j = 0; j < n; ++j) {
    if (cnt && cnt[j0 + j + 1] == cnt[j0 + j]) {
      std::fill(dst + j * hdp, dst + (j + 1) * hdp, A(0));
    } else {
      load_row(rows + j * stride, dst + j * hdp, hd, hdp, A(1));
    }
  }
}

// 1 / l and the log-sum-exp m + log l of a finished row: a row that saw nothing (l = 0) gives zeros
// and -inf; a NaN row (a NaN score among its visible keys) gives NaN for both.
template <typename A>
inline void finish_row(A m, A l, A& inv_l, A& lse) {
  if (l > A(0)) {
    inv_l = A(1) / l;
    lse = m + std::log(l);
  } else if (l == A(0)) {
    inv_l = A(0);
    lse = -std::numeric_limits<A>::infinity();
  } else {
    inv_l = lse = std::numeric_limits<A>::quiet_NaN();
  }
}

// Whether key j (absolute index) is visible to the query at key index pos: valid under the key mask
// (prefix counts cnt; null: no mask), not in the future, inside the sliding window (W > 0).
inline bool key_visible(const int32_t* cnt, int64_t j, int64_t pos, int64_t W) {
  return (!cnt || cnt[j + 1] != cnt[j]) && j <= pos && (W <= 0 || pos - j < W);
}

template <typename A>
inline A dot(const A* a, const A* b, int64_t n) {
  using V = Vectorized<A>;
  V acc(A(0));
  for (int64_t d = 0; d < n; d += V::size()) acc = at::vec::fmadd(V::loadu(a + d), V::loadu(b + d), acc);
  return hsum(acc);
}

template <typename A>
inline bool all_finite(const A* x, int64_t n) {
  // x * 0 is 0 for a finite x and NaN for inf or NaN; the sum of those is NaN iff one of them is.
  using V = Vectorized<A>;
  constexpr int64_t VS = V::size();
  const V zero(A(0));
  V acc[4] = {zero, zero, zero, zero};  // four chains: the loop runs at load speed, not FMA latency
  int64_t i = 0;
  for (; i + 4 * VS <= n; i += 4 * VS)
    for (int u = 0; u < 4; ++u) acc[u] = at::vec::fmadd(V::loadu(x + i + u * VS), zero, acc[u]);
  for (; i + VS <= n; i += VS) acc[0] = at::vec::fmadd(V::loadu(x + i), zero, acc[0]);
  A tail = A(0);
  for (; i < n; ++i) tail += x[i] * A(0);
  return hsum(acc[0] + acc[1] + acc[2] + acc[3]) + tail == A(0);
}

// Whether the non-padding rows of a K or V tile (n rows of hd at stride) are all finite.
template <typename T>
inline bool tile_finite(const T* rows, int64_t stride, int64_t n, int64_t hd, const int32_t* cnt, int64_t j0) {
  for (int64_t j = 0; j < n; ++j) {
    if (cnt && cnt[j0 + j + 1] == cnt[j0 + j]) continue;
    for (int64_t d = 0; d < hd; ++d)
      if (!std::isfinite(static_cast<acc_t<T>>(rows[j * stride + d]))) return false;
  }
  return true;
}

// Masked keys and non-finite K/V. The tile products give a masked key probability 0, which meets a
// non-finite value there (an fp16 overflow at a padded, future or out-of-window position) as
// 0 * inf = NaN, and the reference says a masked key contributes nothing at all. Padding keys are
// zero rows in the converted tiles (load_tile); a causal or window-masked key is visible to some rows
// of a tile and not others, so no tile-wide zeroing works. Such values are rare, so the fast path
// runs, and an item whose result holds a non-finite value (forward) or whose K/V tile does (backward)
// is redone by the *_exact forms below, which visit each (query row, visible key) pair alone.

// ---------------------------------------------------------------------------------------------
// Micro-kernels.

// C[MR x NV*VS] = init(C) + A[MR x K] . B[K x NV*VS]. A is read by broadcast at A[r*a_rs + k*a_ks]
// (so the same kernel serves A and A^T), B rows at B + k*ldb. init: 0 = zero, 1 = C, 2 = row_scale[r]*C.
// MR=6, NV=2 uses 12 accumulators + 2 B vectors + 1 broadcast = 15 of the 16 ymm registers.
template <typename A_t, int MR, int NV>
inline void mk(int64_t K, const A_t* __restrict Ap, int64_t a_rs, int64_t a_ks, const A_t* __restrict Bp,
               int64_t ldb, A_t* __restrict Cp, int64_t ldc, int init, const A_t* row_scale) {
  using V = Vectorized<A_t>;
  constexpr int VS = V::size();
  V c[MR][NV];
  if (init == 0) {
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) c[r][v] = V(A_t(0));
  } else {
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const V s(init == 2 ? row_scale[r] : A_t(1));
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) c[r][v] = V::loadu(Cp + r * ldc + v * VS) * s;
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    V b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = V::loadu(Bp + k * ldb + v * VS);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const V a(Ap[r * a_rs + k * a_ks]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) c[r][v] = at::vec::fmadd(a, b[v], c[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) c[r][v].store(Cp + r * ldc + v * VS);
}

template <typename A_t, int NV>
inline void mk_rows(int mr, int64_t K, const A_t* Ap, int64_t a_rs, int64_t a_ks, const A_t* Bp, int64_t ldb,
                    A_t* Cp, int64_t ldc, int init, const A_t* row_scale) {
  switch (mr) {
    case 6: mk<A_t, 6, NV>(K, Ap, a_rs, a_ks, Bp, ldb, Cp, ldc, init, row_scale); break;
    case 5: mk<A_t, 5, NV>(K, Ap, a_rs, a_ks, Bp, ldb, Cp, ldc, init, row_scale); break;
    case 4: mk<A_t, 4, NV>(K, Ap, a_rs, a_ks, Bp, ldb, Cp, ldc, init, row_scale); break;
    case 3: mk<A_t, 3, NV>(K, Ap, a_rs, a_ks, Bp, ldb, Cp, ldc, init, row_scale); break;
    case 2: mk<A_t, 2, NV>(K, Ap, a_rs, a_ks, Bp, ldb, Cp, ldc, init, row_scale); break;
    default: mk<A_t, 1, NV>(K, Ap, a_rs, a_ks, Bp, ldb, Cp, ldc, init, row_scale); break;
  }
}

// C[m x n] = init(C) + A[m x K] . B[K x n] for n a multiple of VS.
// B is either plain row-major (ldb, b_panel = 2*VS) or packed in column panels of 2*VS (each panel
// [K][2*VS], panels b_panel apart, the last panel possibly VS wide with row stride ldb_tail).
template <typename A_t>
inline void gemm_small(int64_t m, int64_t n, int64_t K, const A_t* Ap, int64_t a_rs, int64_t a_ks, const A_t* Bp,
                       int64_t ldb, int64_t ldb_tail, int64_t b_panel, A_t* Cp, int64_t ldc, int init,
                       const A_t* row_scale) {
  constexpr int VS = Vectorized<A_t>::size();
  constexpr int MR = 6;
  if (m <= 2 && b_panel == 2 * VS) {
    // One or two rows (decode of a small group): 4-vector panels keep enough FMA chains in flight.
    int64_t c0 = 0;
    for (; c0 + 4 * VS <= n; c0 += 4 * VS) {
      if (m == 2) mk<A_t, 2, 4>(K, Ap, a_rs, a_ks, Bp + c0, ldb, Cp + c0, ldc, init, row_scale);
      else mk<A_t, 1, 4>(K, Ap, a_rs, a_ks, Bp + c0, ldb, Cp + c0, ldc, init, row_scale);
    }
    for (; c0 < n; c0 += VS)
      mk_rows<A_t, 1>(static_cast<int>(m), K, Ap, a_rs, a_ks, Bp + c0, ldb, Cp + c0, ldc, init, row_scale);
    return;
  }
  const int64_t npanels = n / (2 * VS);
  const bool tail = (n % (2 * VS)) != 0;
  // Panel-outer: a B panel (K x 16) stays in L1 while all row blocks stream past it.
  for (int64_t p = 0; p < npanels; ++p)
    for (int64_t i0 = 0; i0 < m; i0 += MR)
      mk_rows<A_t, 2>(static_cast<int>(std::min<int64_t>(MR, m - i0)), K, Ap + i0 * a_rs, a_rs, a_ks,
                      Bp + p * b_panel, ldb, Cp + i0 * ldc + p * 2 * VS, ldc, init,
                      row_scale ? row_scale + i0 : nullptr);
  if (tail)
    for (int64_t i0 = 0; i0 < m; i0 += MR)
      mk_rows<A_t, 1>(static_cast<int>(std::min<int64_t>(MR, m - i0)), K, Ap + i0 * a_rs, a_rs, a_ks,
                      Bp + npanels * b_panel, ldb_tail, Cp + i0 * ldc + npanels * 2 * VS, ldc, init,
                      row_scale ? row_scale + i0 : nullptr);
}

// St[j*ldst + i] = K_j . Q_i (i < MI) as dot products along hd: for tiny query groups (decode).
template <typename A_t, int MI>
inline void dot_block(int64_t nk, int64_t hdv, const A_t* K, int64_t ldk, const A_t* Q, int64_t ldq, A_t* St,
                      int64_t ldst) {
  using V = Vectorized<A_t>;
  constexpr int VS = V::size();
  int64_t j = 0;
  for (; j + 4 <= nk; j += 4) {
    V c[4][MI];
    for (int r = 0; r < 4; ++r)
      for (int i = 0; i < MI; ++i) c[r][i] = V(A_t(0));
    for (int64_t d = 0; d < hdv; d += VS) {
      V qv[MI];
      for (int i = 0; i < MI; ++i) qv[i] = V::loadu(Q + i * ldq + d);
      for (int r = 0; r < 4; ++r) {
        const V kv = V::loadu(K + (j + r) * ldk + d);
        for (int i = 0; i < MI; ++i) c[r][i] = at::vec::fmadd(kv, qv[i], c[r][i]);
      }
    }
    for (int r = 0; r < 4; ++r)
      for (int i = 0; i < MI; ++i) St[(j + r) * ldst + i] = at::vec::vec_reduce_all<A_t>(std::plus<V>(), c[r][i]);
  }
  for (; j < nk; ++j) {
    V c[MI];
    for (int i = 0; i < MI; ++i) c[i] = V(A_t(0));
    for (int64_t d = 0; d < hdv; d += VS) {
      const V kv = V::loadu(K + j * ldk + d);
      for (int i = 0; i < MI; ++i) c[i] = at::vec::fmadd(kv, V::loadu(Q + i * ldq + d), c[i]);
    }
    for (int i = 0; i < MI; ++i) St[j * ldst + i] = at::vec::vec_reduce_all<A_t>(std::plus<V>(), c[i]);
  }
}

template <typename A_t>
inline void dot_rows(int64_t M, int64_t nk, int64_t hdv, const A_t* K, int64_t ldk, const A_t* Q, int64_t ldq,
                     A_t* St, int64_t ldst) {
  switch (M) {
    case 1: dot_block<A_t, 1>(nk, hdv, K, ldk, Q, ldq, St, ldst); break;
    case 2: dot_block<A_t, 2>(nk, hdv, K, ldk, Q, ldq, St, ldst); break;
    case 3: dot_block<A_t, 3>(nk, hdv, K, ldk, Q, ldq, St, ldst); break;
    default: dot_block<A_t, 4>(nk, hdv, K, ldk, Q, ldq, St, ldst); break;
  }
}
constexpr int64_t kDotMaxRows = 4;  // query groups up to this many rows use dot_rows for S

// S^T[n x Mp] = K[n x hd] . Q^T: via Q^T panels (Qt) or, for M <= kDotMaxRows, Q rows (Qr) and dot products
// (then times `dot_scale`, as Qr is unscaled). Padding columns M..Mp-1 are left zero for dot_rows.
template <typename A_t>
inline void scores_t(int64_t n, int64_t M, int64_t Mp, int64_t hd, int64_t hdp, const A_t* Kp, int64_t ldk,
                     const A_t* Qt, const A_t* Qr, A_t dot_scale, A_t* St) {
  constexpr int64_t VS = Vectorized<A_t>::size();
  if (M <= kDotMaxRows) {
    for (int64_t j = 0; j < n; ++j) std::fill(St + j * Mp, St + (j + 1) * Mp, A_t(0));
    dot_rows<A_t>(M, n, hdp, Kp, ldk, Qr, hdp, St, Mp);
    if (dot_scale != A_t(1))
      for (int64_t j = 0; j < n; ++j)
        for (int64_t i = 0; i < M; ++i) St[j * Mp + i] *= dot_scale;
  } else {
    gemm_small<A_t>(n, Mp, hd, Kp, ldk, 1, Qt, 2 * VS, VS, 2 * VS * hdp, St, Mp, 0, nullptr);
  }
}

// The tiling forward and backward derive alike from the problem and their tile sizes: G query heads a KV head,
// the head dim padded to whole vectors (hdp), BK keys a key tile, bq query positions a query tile (its bq * G
// rows: a KV group's heads together), nqt query tiles, Mpmax a query tile's rows padded to whole vectors.
struct Geometry {
  int64_t G, hdp, BK, bq, nqt, Mpmax;
};
template <typename T>
Geometry geometry(const Params<T>& P, int64_t bk, int64_t target_m) {
  constexpr int64_t VS = Vectorized<acc_t<T>>::size();
  const int64_t G = P.nH / P.nKV;
  const int64_t bq = std::max<int64_t>(1, std::min<int64_t>(P.Tq, target_m / G));
  return {G, (P.hd + VS - 1) / VS * VS, bk, bq, (P.Tq + bq - 1) / bq, (bq * G + VS - 1) / VS * VS};
}

// Tile sizes (dev/attention/tune_fwd.py): 64 keys x ~128 query rows keeps Q^T, O and the K/V tile in L2
// and one 16-column Q^T panel in L1; measured flat within noise around these values.
struct Tiles {
  int64_t bk = 64;         // keys per tile
  int64_t target_m = 128;  // query rows (positions x heads of a group) per work item
};

// Prefix counts of attendable keys per batch row: tile skip / full-visibility tests in O(1).
inline std::vector<int32_t> key_counts(const bool* mask, int64_t msB, int64_t msS, int64_t B, int64_t S) {
  std::vector<int32_t> cnt;
  if (!mask) return cnt;
  cnt.resize(B * (S + 1));
  for (int64_t b = 0; b < B; ++b) {
    int32_t* c = cnt.data() + b * (S + 1);
    c[0] = 0;
    for (int64_t j = 0; j < S; ++j) c[j + 1] = c[j] + (mask[b * msB + j * msS] ? 1 : 0);
  }
  return cnt;
}

// Sets the masked entries of S^T rows [j0, j0+n) to -inf (visible iff key valid, j <= pos, pos - j < W).
// pos[i] is the key index of query row i (-1 for padding rows: sees nothing).
template <typename A>
inline void apply_mask(A* St, int64_t n, int64_t Mp, int64_t j0, const int32_t* cnt, const A* pos, int64_t W,
                       int64_t S) {
  using V = Vectorized<A>;
  constexpr int64_t VS = V::size();
  const V ninf(-std::numeric_limits<A>::infinity());
  const V vw(static_cast<A>(W > 0 ? W : S + 1));
  for (int64_t j = 0; j < n; ++j) {
    A* row = St + j * Mp;
    const int64_t jabs = j0 + j;
    if (cnt && cnt[jabs + 1] == cnt[jabs]) {  // padding key
      for (int64_t i = 0; i < Mp; i += VS) ninf.store(row + i);
      continue;
    }
    const V vj(static_cast<A>(jabs));
    for (int64_t i = 0; i < Mp; i += VS) {
      const V p = V::loadu(pos + i);
      const V ok = (vj <= p) & ((p - vj) < vw);
      V::blendv(ninf, V::loadu(row + i), ok).store(row + i);
    }
  }
}

// Row i of a query group in a [B,T,nH,hd] tensor: position t0 + i / G, head g*G + i % G (the group's G heads of
// each position in turn).
template <typename T>
inline const T* group_row(const T* base, int64_t sB, int64_t sT, int64_t sH, int64_t b, int64_t g, int64_t G,
                          int64_t t0, int64_t i) {
  return base + b * sB + (t0 + i / G) * sT + (g * G + i % G) * sH;
}

// Packs the M rows (positions t0.., heads g*G..) of a [B,T,nH,hd] tensor: Qr row-major [M x hdp] (may be
// null) and Qt = (mul * rows)^T in column panels of 2*VS (may be null), zero columns M..Mp-1.
// Qt is written VS rows x VS columns at a time through a register transpose (a row-by-row scatter
// into the panels cost about as much as a 64-key tile's products in decode).
template <typename T, typename A>
inline void pack_rows(const T* base, int64_t sB, int64_t sT, int64_t sH, int64_t b, int64_t g, int64_t G,
                      int64_t t0, int64_t M, int64_t Mp, int64_t hd, int64_t hdp, A mul, A* Qt, A* Qr) {
  using IO = VecIO<T>;
  using V = Vectorized<A>;
  constexpr int64_t VS = V::size();
  static_assert(IO::N == VS, "one vector of T elements widens to one Vectorized<A>");
  auto src_row = [&](int64_t i) { return group_row(base, sB, sT, sH, b, g, G, t0, i); };
  if (Qr)  // rows >= M are never read
    for (int64_t i = 0; i < M; ++i) load_row(src_row(i), Qr + i * hdp, hd, hdp, A(1));
  if (!Qt) return;
  for (int64_t i0 = 0; i0 < Mp; i0 += VS) {  // VS rows: one VS-wide column block of one panel
    const int64_t p = i0 / (2 * VS), w = std::min<int64_t>(2 * VS, Mp - p * 2 * VS), c0 = i0 % (2 * VS);
    const T* src[VS];
    for (int64_t r = 0; r < VS; ++r) src[r] = i0 + r < M ? src_row(i0 + r) : nullptr;
    A* dst = Qt + p * 2 * VS * hdp + c0;
    for (int64_t d = 0; d < hdp; d += VS) {
      alignas(64) A blk[VS * VS];  // blk[r][e] = mul * row (i0 + r) [d + e]
      const int64_t n = std::min<int64_t>(VS, hd - d);
      for (int64_t r = 0; r < VS; ++r) {
        const V x = !src[r] ? V(A(0)) : n == VS ? IO::load(src[r] + d) : IO::load(src[r] + d, n);
        (x * V(mul)).store(blk + r * VS);
      }
      at::vec::transpose_mxn<A, VS, VS>(blk, VS, dst + d * w, w);
    }
  }
}

// Runs work(item, worker) for every item of `order` on the intra-op threads.
// Dynamic (forward): threads take items from an atomic counter in the given order (largest first), so
// uneven causal tiles balance across threads; each item's result is independent of who computes it.
// Static (backward): worker w gets a fixed "snake" share of the cost-sorted order (0 1 .. W-1 W-1 .. 0
// ..), so the per-worker dQ partial sums -- and hence grad_q -- are bit-identical from run to run for
// a given thread count, whatever the OS scheduling.
template <typename F>
inline void run_items(const std::vector<int64_t>& order, const F& work, bool dynamic = true) {
  const int64_t n = static_cast<int64_t>(order.size());
  if (n == 0) return;
  std::atomic<int64_t> next{0};
  const int64_t nworkers = std::min<int64_t>(at::get_num_threads(), n);
  at::parallel_for(0, nworkers, 1, [&](int64_t w0, int64_t w1) {
    if (dynamic) {
      for (;;) {
        const int64_t slot = next.fetch_add(1);
        if (slot >= n) break;
        work(order[slot], w0);
      }
      return;
    }
    for (int64_t w = w0; w < w1; ++w)  // one chunk may hold several workers when fewer threads run
      for (int64_t slot = 0; slot < n; ++slot) {
        const int64_t round = slot / nworkers, pos = slot % nworkers;
        if ((round % 2 == 0 ? pos : nworkers - 1 - pos) == w) work(order[slot], w);
      }
  });
}

inline std::vector<int64_t> order_by_cost(const std::vector<int64_t>& cost) {
  std::vector<int64_t> order(cost.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return cost[a] > cost[b]; });
  return order;
}

// ---------------------------------------------------------------------------------------------
// Forward.

// Decode splits a key range only into parts of at least this many multiply-adds per product
// (keys x query rows x head_dim), e.g. 48 keys of 8 rows at head_dim 256, 24 at 512: below it the
// second thread's start, the partial results and the merge (~2 us on 2 threads) cost more than half
// the work saves (dev/attention/decode_split.py).
constexpr int64_t kMinSplitWork = 48 * 8 * 256;

template <typename T>
void forward(const Params<T>& P, T* out, acc_t<T>* lse, const Tiles& tiles = Tiles()) {
  using A = acc_t<T>;
  using V = Vectorized<A>;
  constexpr int64_t VS = V::size();
  const int64_t B = P.B, Tq = P.Tq, S = P.S, nH = P.nH, nKV = P.nKV, hd = P.hd, W = P.window;
  const auto [G, hdp, BK, bq, nqt, Mpmax] = geometry(P, tiles.bk, tiles.target_m);
  const bool direct = std::is_same_v<T, A> && hd % VS == 0;  // K/V rows used in place
  const A scale = static_cast<A>(P.scale);
  const A NEG_INF = -std::numeric_limits<A>::infinity();
  const std::vector<int32_t> cnt = key_counts(P.mask, P.msB, P.msS, B, S);
  // bf16 query groups of at most 8 rows (decode) on AVX512-BF16 CPUs: both products on vdpbf16ps straight from
  // the bf16 K and V rows (attention_decode_avx512bf16.h), no fp32 tiles. P meets V rounded to bf16 (as in
  // flash attention's low-precision P.V), while l and the log-sum-exp keep its fp32 values.
  bool dp16 = false;
  if constexpr (std::is_same_v<T, c10::BFloat16>)
    dp16 = Mpmax <= bf16dp::kRows && hd % 32 == 0 && BK <= 128 && bf16dp::enabled();

  auto key_range = [&](int64_t qt, int64_t& ks, int64_t& ke) {  // keys seen by query tile qt: [ks, ke)
    const int64_t pmin = S - Tq + qt * bq, pmax = S - Tq + std::min(Tq, (qt + 1) * bq) - 1;
    ke = pmax + 1;
    ks = W > 0 ? std::max<int64_t>(0, pmin - W + 1) : 0;
  };

  // Too few (b, g, query tile) items for the threads (decode): split each key range in `nsplit` equal
  // parts, so that the items fill the threads evenly (base_items * nsplit a multiple of the thread
  // count: one part per thread in single-sequence decode), each part keeping at least kMinSplitWork.
  const int64_t nthreads = at::get_num_threads();
  const int64_t base_items = B * nKV * nqt;
  int64_t nsplit = 1;
  if (nthreads > 1 && base_items < 2 * nthreads) {
    int64_t ks, ke;
    key_range(nqt - 1, ks, ke);  // the last query tile sees the most keys
    const int64_t rows = (Tq - (nqt - 1) * bq) * G;
    const int64_t even = nthreads / std::gcd(base_items, nthreads);
    // vdpbf16ps does the products in under half the time, so the split pays from about three times the work
    const int64_t min_work = dp16 ? 3 * kMinSplitWork : kMinSplitWork;
    nsplit = std::max<int64_t>(1, std::min<int64_t>(even, (ke - ks) * rows * hd / min_work));
  }
  const int64_t nitems = base_items * nsplit;
  // One split item's partial results: O [Mpmax x hdp], then m [Mpmax], then l [Mpmax].
  const int64_t part_m = Mpmax * hdp, part_l = part_m + Mpmax, part_stride = part_l + Mpmax;
  std::unique_ptr<A[]> part(nsplit > 1 ? new A[nitems * part_stride] : nullptr);
  auto part_of = [&](int64_t item) { return part.get() + item * part_stride; };
  // Parts of each base item finished so far: the thread that finishes the last one merges them.
  std::unique_ptr<std::atomic<int64_t>[]> parts_done(nsplit > 1 ? new std::atomic<int64_t>[base_items] : nullptr);
  for (int64_t i = 0; nsplit > 1 && i < base_items; ++i) parts_done[i].store(0, std::memory_order_relaxed);

  auto split_range = [&](int64_t sp, int64_t& ks, int64_t& ke) {  // part sp of the key range [ks, ke)
    const int64_t n = ke - ks, k0 = ks;
    ks = k0 + n * sp / nsplit;
    ke = k0 + n * (sp + 1) / nsplit;
  };

  std::vector<int64_t> cost(nitems);
  for (int64_t it = 0; it < nitems; ++it) {
    int64_t ks, ke;
    key_range((it / nsplit) % nqt, ks, ke);
    split_range(it % nsplit, ks, ke);
    cost[it] = ke - ks;
  }

  // Per-worker scratch: one block, allocated on first use and left uninitialised (every entry is
  // written before it is read; zero-filling the K/V tiles cost ~2 us a call in decode).
  struct Scratch {
    std::unique_ptr<A[]> mem;
    A *Qt, *Qr, *St, *O, *Kc, *Vc, *row, *m, *l, *alpha, *pos;
    std::unique_ptr<uint16_t[]> mem16;  // dp16: Qb [8][hd] (the group's bf16 query rows), V2 [BK/2][hd][2]
    uint16_t *Qb = nullptr, *V2 = nullptr;
  };
  std::vector<Scratch> scratch(std::min<int64_t>(nthreads, std::max<int64_t>(nitems, 1)));
  auto init_scratch = [&](Scratch& s) {
    constexpr int64_t kAlign = 64 / sizeof(A);  // each buffer starts on a cache line
    const int64_t sizes[] = {Mpmax * hdp, kDotMaxRows * hdp, BK * Mpmax, Mpmax * hdp, BK * hdp, BK * hdp,
                             hdp, Mpmax, Mpmax, Mpmax, Mpmax};
    A** bufs[] = {&s.Qt, &s.Qr, &s.St, &s.O, &s.Kc, &s.Vc, &s.row, &s.m, &s.l, &s.alpha, &s.pos};
    auto up = [&](int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; };
    int64_t total = kAlign;
    for (int64_t n : sizes) total += up(n);
    s.mem.reset(new A[total]);
    A* p = s.mem.get() + (kAlign - reinterpret_cast<uintptr_t>(s.mem.get()) / sizeof(A) % kAlign) % kAlign;
    for (size_t k = 0; k < std::size(sizes); ++k) {
      *bufs[k] = p;
      p += up(sizes[k]);
    }
    if (dp16) {
      s.mem16.reset(new uint16_t[bf16dp::kRows * hd + (BK + 1) / 2 * hd * 2]);
      s.Qb = s.mem16.get();
      s.V2 = s.Qb + bf16dp::kRows * hd;
    }
  };

  // The exact form of one item's (O, m, l) over keys [ks, ke) (see key_visible above): per row, the max
  // score over the visible keys, then their probabilities and values; a NaN score makes the row NaN.
  auto forward_exact = [&](int64_t b, int64_t g, int64_t t0, int64_t M, int64_t ks, int64_t ke, Scratch& s) {
    const int32_t* c = P.mask ? cnt.data() + b * (S + 1) : nullptr;
    const int64_t pmin = S - Tq + t0;
    std::vector<A> sc(ke - ks);  // scores of the visible keys of one row
    for (int64_t i = 0; i < M; ++i) {
      const int64_t t = t0 + i / G, h = g * G + i % G, pos = pmin + i / G;
      load_row(P.q + b * P.qsB + t * P.qsT + h * P.qsH, s.row, hd, hdp, scale);
      A m = NEG_INF;
      bool nan_row = false;
      for (int64_t j = ks; j < ke; ++j) {
        if (!key_visible(c, j, pos, W)) continue;
        load_row(P.k + b * P.ksB + j * P.ksS + g * P.ksH, s.Kc, hd, hdp, A(1));
        sc[j - ks] = dot(s.row, s.Kc, hdp);
        nan_row |= std::isnan(sc[j - ks]);
        m = std::max(m, sc[j - ks]);
      }
      A* o = s.O + i * hdp;
      std::fill(o, o + hdp, A(0));
      A l = A(0);
      for (int64_t j = ks; j < ke && m != NEG_INF && !nan_row; ++j) {
        if (!key_visible(c, j, pos, W)) continue;
        const A pj = std::exp(sc[j - ks] - m);
        l += pj;
        load_row(P.v + b * P.vsB + j * P.vsS + g * P.vsH, s.Vc, hd, hdp, A(1));
        for (int64_t d = 0; d < hd; ++d) o[d] += pj * s.Vc[d];
      }
      if (nan_row) {
        l = std::numeric_limits<A>::quiet_NaN();
        std::fill(o, o + hdp, l);
      }
      s.m[i] = m;
      s.l[i] = l;
    }
  };

  // Row i of base item bi (batch b, KV head g, first query t0) from its parts, in part order whoever runs it
  // (so run-to-run deterministic): O = sum_s e^(m_s - m) O_s / sum_s e^(m_s - m) l_s. o: hdp scratch.
  auto merge_row = [&](int64_t bi, int64_t b, int64_t g, int64_t t0, int64_t i, A* o) {
    A mt = NEG_INF;
    bool nan_row = false;  // a NaN part makes the row NaN
    for (int64_t sp = 0; sp < nsplit; ++sp) {
      const A* pp = part_of(bi * nsplit + sp);
      const A li = pp[part_l + i];
      if (li > A(0)) mt = std::max(mt, pp[part_m + i]);
      nan_row |= std::isnan(li);
    }
    A lt = nan_row ? std::numeric_limits<A>::quiet_NaN() : A(0);
    std::fill(o, o + hdp, A(0));
    for (int64_t sp = 0; sp < nsplit && mt != NEG_INF && !nan_row; ++sp) {
      const A* pp = part_of(bi * nsplit + sp);
      const A li = pp[part_l + i];
      if (!(li > A(0))) continue;
      const A w = std::exp(pp[part_m + i] - mt);
      lt += li * w;
      for (int64_t d = 0; d < hd; ++d) o[d] += w * pp[i * hdp + d];
    }
    const int64_t t = t0 + i / G, h = g * G + i % G;
    A inv_l;
    finish_row(mt, lt, inv_l, lse[(b * nH + h) * Tq + t]);
    store_row<T, A>(o, out + ((b * Tq + t) * nH + h) * hd, hd, inv_l);
  };

  run_items(order_by_cost(cost), [&](int64_t it, int64_t worker) {
    Scratch& s = scratch[worker];
    if (!s.mem) init_scratch(s);
    const int64_t sp = it % nsplit, bi = it / nsplit, qt = bi % nqt, g = (bi / nqt) % nKV, b = bi / nqt / nKV;
    const int64_t t0 = qt * bq, nq = std::min(Tq, t0 + bq) - t0;
    const int64_t M = nq * G, Mp = (M + VS - 1) / VS * VS;
    const int64_t pmin = S - Tq + t0, pmax = pmin + nq - 1;
    int64_t ks, ke;
    key_range(qt, ks, ke);
    if (nsplit > 1) split_range(sp, ks, ke);  // this part's share of the keys
    if (dp16) {  // the group's rows as they are (the scale goes on the scores), zero rows up to 8
      for (int64_t i = 0; i < bf16dp::kRows; ++i) {
        uint16_t* dst = s.Qb + i * hd;
        if (i < M) std::memcpy(dst, group_row(P.q, P.qsB, P.qsT, P.qsH, b, g, G, t0, i), hd * sizeof(T));
        else std::fill(dst, dst + hd, uint16_t(0));
      }
    } else {
      pack_rows(P.q, P.qsB, P.qsT, P.qsH, b, g, G, t0, M, Mp, hd, hdp, scale, s.Qt,
                M <= kDotMaxRows ? s.Qr : static_cast<A*>(nullptr));
      if (M <= kDotMaxRows)  // dot_rows reads Qr: fold the scale in there instead
        for (int64_t i = 0; i < M * hdp; ++i) s.Qr[i] *= scale;
    }
    for (int64_t i = 0; i < Mp; ++i) s.pos[i] = i < M ? static_cast<A>(pmin + i / G) : A(-1);
    std::fill(s.m, s.m + Mp, NEG_INF);
    std::fill(s.l, s.l + Mp, A(0));
    const int32_t* c = P.mask ? cnt.data() + b * (S + 1) : nullptr;
    bool first = true;
    for (int64_t j0 = ks; j0 < ke; j0 += BK) {
      const int64_t n = std::min(BK, ke - j0);
      const int64_t valid = c ? c[j0 + n] - c[j0] : n;
      if (valid == 0) continue;  // all padding
      const bool full = valid == n && j0 + n - 1 <= pmin && (W <= 0 || j0 > pmax - W);
      const T* krow = P.k + b * P.ksB + j0 * P.ksS + g * P.ksH;
      const T* vrow = P.v + b * P.vsB + j0 * P.vsS + g * P.vsH;
      // This tile's V rows are needed after S; the next tile's K rows after this tile.
      prefetch_rows(vrow, P.vsS * sizeof(T), n, hd * sizeof(T));
      if (j0 + BK < ke) prefetch_rows(krow + BK * P.ksS, P.ksS * sizeof(T), std::min(BK, ke - j0 - BK), hd * sizeof(T));
      const A* Kp = nullptr;
      const A* Vp = nullptr;
      int64_t ldk = hdp, ldv = hdp;
      if constexpr (std::is_same_v<T, A>) {
        Kp = krow; Vp = vrow; ldk = P.ksS; ldv = P.vsS;
      }
      A* St = s.St;
      if constexpr (std::is_same_v<A, float>) {
        if (dp16) {  // Mp == 8: St [n x 8], as scores_t writes it
          bf16dp::scores(n, reinterpret_cast<const uint16_t*>(krow), P.ksS, s.Qb, hd, St);
          if (scale != A(1))
            for (int64_t i = 0; i < n * Mp; ++i) St[i] *= scale;
        }
      }
      if (!dp16) {
        if (!direct || valid < n) {  // converted copies; padding keys as zero rows
          load_tile(krow, P.ksS, n, hd, hdp, c, j0, s.Kc);
          load_tile(vrow, P.vsS, n, hd, hdp, c, j0, s.Vc);
          Kp = s.Kc; Vp = s.Vc; ldk = ldv = hdp;
        }
        scores_t<A>(n, M, Mp, hd, hdp, Kp, ldk, s.Qt, s.Qr, A(1), St);
      }
      if (!full) apply_mask(St, n, Mp, j0, c, s.pos, W, S);
      // Online softmax: m_new = max(m, colmax S); alpha = exp(m - m_new); P = exp(S - m_new); l = alpha l + sum P.
      for (int64_t i = 0; i < Mp; i += VS) {
        V mx = V::loadu(s.m + i);
        const V mo = mx;
        for (int64_t j = 0; j < n; ++j) mx = vmax(mx, V::loadu(St + j * Mp + i));
        const V use = V::blendv(mx, V(A(0)), mx == V(NEG_INF));  // nothing visible yet: avoid inf - inf
        vexp(mo - use).store(s.alpha + i);
        mx.store(s.m + i);
        V sum(A(0));
        for (int64_t j = 0; j < n; ++j) {
          const V p = vexp(V::loadu(St + j * Mp + i) - use);
          p.store(St + j * Mp + i);
          sum = sum + p;
        }
        (V::loadu(s.l + i) * V::loadu(s.alpha + i) + sum).store(s.l + i);
      }
      // O = alpha * O + P . V   (A = P read from S^T: a_rs = 1, a_ks = Mp)
      if constexpr (std::is_same_v<A, float>) {
        if (dp16) {
          bool pad[128];  // padding keys: zero V rows
          for (int64_t j = 0; c && j < n; ++j) pad[j] = c[j0 + j + 1] == c[j0 + j];
          bf16dp::values(n, St, reinterpret_cast<const uint16_t*>(vrow), P.vsS, c ? pad : nullptr, hd, s.V2, s.O,
                         hdp, first ? nullptr : s.alpha);
        }
      }
      if (!dp16) {
        gemm_small<A>(M, hdp, n, St, 1, Mp, Vp, ldv, ldv, 2 * VS, s.O, hdp, first ? 0 : 2, s.alpha);
      }
      first = false;
    }
    if (first) std::fill(s.O, s.O + M * hdp, A(0));  // no visible key at all
    if (!all_finite(s.O, M * hdp)) forward_exact(b, g, t0, M, ks, ke, s);
    if (nsplit > 1) {
      A* pp = part_of(it);
      std::memcpy(pp, s.O, sizeof(A) * M * hdp);
      std::memcpy(pp + part_m, s.m, sizeof(A) * M);
      std::memcpy(pp + part_l, s.l, sizeof(A) * M);
      // acq_rel: the last part's thread sees every other part's stores before it merges.
      if (parts_done[bi].fetch_add(1, std::memory_order_acq_rel) == nsplit - 1)
        for (int64_t i = 0; i < M; ++i) merge_row(bi, b, g, t0, i, s.row);
      return;
    }
    for (int64_t i = 0; i < M; ++i) {
      const int64_t t = t0 + i / G, h = g * G + i % G;
      A inv_l;
      finish_row(s.m[i], s.l[i], inv_l, lse[(b * nH + h) * Tq + t]);
      store_row<T, A>(s.O + i * hdp, out + ((b * Tq + t) * nH + h) * hd, hd, inv_l);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Backward.

// Measured flat (58-61 GF/s single-thread) for bk 64-128 x target_m 64-256; 32 is worse.
struct BwdTiles {
  int64_t bk = 64;         // keys per work item
  int64_t target_m = 128;  // query rows per query tile
};

template <typename T>
void backward(const Params<T>& P, const BwdTensors<T>& X, const BwdTiles& tiles = BwdTiles()) {
  using A = acc_t<T>;
  using V = Vectorized<A>;
  constexpr int64_t VS = V::size();
  const int64_t B = P.B, Tq = P.Tq, S = P.S, nH = P.nH, nKV = P.nKV, hd = P.hd, W = P.window;
  const auto [G, hdp, BK, bq, nqt, Mpmax] = geometry(P, tiles.bk, tiles.target_m);
  const int64_t nkt = (S + BK - 1) / BK;
  const bool direct = std::is_same_v<T, A> && hd % VS == 0;
  const A scale = static_cast<A>(P.scale);
  const A NEG_INF = -std::numeric_limits<A>::infinity(), POS_INF = std::numeric_limits<A>::infinity();
  const std::vector<int32_t> cnt = key_counts(P.mask, P.msB, P.msS, B, S);
  const int64_t nthreads = at::get_num_threads();

  // 1. Pack, per (b, g, query tile): Q^T panels (scaled), Q rows, dO^T panels, dO rows, and per row
  //    lse (+inf where nothing is visible, so P = exp(S - lse) = 0) and D = rowsum(dO * O).
  const int64_t blk = Mpmax * hdp, nblk = B * nKV * nqt;
  // Uninitialised on purpose (every read entry is written by the packing pass): a zero fill would
  // cost another pass over 4 x |q| floats.
  std::unique_ptr<A[]> Qt(new A[nblk * blk]), Qr(new A[nblk * blk]), dOt(new A[nblk * blk]), dOr(new A[nblk * blk]),
      L(new A[nblk * Mpmax]), D(new A[nblk * Mpmax]);
  at::parallel_for(0, nblk, 1, [&](int64_t k0, int64_t k1) {
    std::vector<A> orow(hdp);
    for (int64_t bi = k0; bi < k1; ++bi) {
      const int64_t qt = bi % nqt, g = (bi / nqt) % nKV, b = bi / nqt / nKV;
      const int64_t t0 = qt * bq, M = (std::min(Tq, t0 + bq) - t0) * G, Mp = (M + VS - 1) / VS * VS;
      pack_rows(P.q, P.qsB, P.qsT, P.qsH, b, g, G, t0, M, Mp, hd, hdp, scale, Qt.get() + bi * blk,
                Qr.get() + bi * blk);
      pack_rows(X.dout, X.dsB, X.dsT, X.dsH, b, g, G, t0, M, Mp, hd, hdp, A(1), dOt.get() + bi * blk,
                dOr.get() + bi * blk);
      for (int64_t i = 0; i < Mpmax; ++i) {
        A l = POS_INF, dsum = 0;
        if (i < M) {
          const int64_t t = t0 + i / G, h = g * G + i % G;
          const A li = X.lse[(b * nH + h) * Tq + t];
          l = li == NEG_INF ? POS_INF : li;
          load_row(X.out + b * X.osB + t * X.osT + h * X.osH, orow.data(), hd, hdp, A(1));
          const A* dr = dOr.get() + bi * blk + i * hdp;
          for (int64_t d = 0; d < hd; ++d) dsum += dr[d] * orow[d];
        }
        L[bi * Mpmax + i] = l;
        D[bi * Mpmax + i] = dsum;
      }
    }
  });

  // 2. Per (b, g, key tile): dK, dV of the tile; dQ into the worker's buffer [B, nKV, T, G, hdp].
  auto q_range = [&](int64_t kt, int64_t& q0, int64_t& q1) {  // query tiles that see key tile kt
    const int64_t j0 = kt * BK, j1 = std::min(S, j0 + BK) - 1;
    const int64_t tfirst = std::max<int64_t>(0, j0 - (S - Tq));                          // p >= j0
    const int64_t tlast = W > 0 ? std::min<int64_t>(Tq - 1, j1 + W - 1 - (S - Tq)) : Tq - 1;  // p - W < j1
    if (tlast < tfirst) { q0 = q1 = 0; return; }
    q0 = tfirst / bq;
    q1 = tlast / bq + 1;
  };
  const int64_t nitems = B * nKV * nkt;
  std::vector<int64_t> cost(nitems);
  for (int64_t it = 0; it < nitems; ++it) {
    int64_t q0, q1;
    q_range(it % nkt, q0, q1);
    cost[it] = q1 - q0;
  }
  struct Scratch {
    std::vector<A> St, dPt, Kc, Vc, dK, dV, pos, dQ;
  };
  std::vector<Scratch> scratch(std::min<int64_t>(nthreads, std::max<int64_t>(nitems, 1)));
  const int64_t dq_size = B * nKV * Tq * G * hdp;

  // The exact form of one key tile's work (see key_visible above): each (query row, visible key) pair
  // alone, with the same P = exp(S - lse), dV += P dO, dS = P (dO . v - D), dK += dS q, dQ += dS k.
  auto backward_exact = [&](int64_t b, int64_t g, int64_t j0, int64_t n, int64_t q0, int64_t q1, const int32_t* c,
                            const T* krow, const T* vrow, Scratch& s) {
    load_tile(krow, P.ksS, n, hd, hdp, c, j0, s.Kc.data());
    load_tile(vrow, P.vsS, n, hd, hdp, c, j0, s.Vc.data());
    for (int64_t qt = q0; qt < q1; ++qt) {
      const int64_t bi = (b * nKV + g) * nqt + qt;
      const int64_t t0 = qt * bq, M = (std::min(Tq, t0 + bq) - t0) * G, pmin = S - Tq + t0;
      A* dq = s.dQ.data() + ((b * nKV + g) * Tq + t0) * G * hdp;
      for (int64_t i = 0; i < M; ++i) {
        const A* qi = Qr.get() + bi * blk + i * hdp;
        const A* doi = dOr.get() + bi * blk + i * hdp;
        const A li = L[bi * Mpmax + i], di = D[bi * Mpmax + i];
        for (int64_t j = 0; j < n; ++j) {
          if (!key_visible(c, j0 + j, pmin + i / G, W)) continue;
          const A* kj = s.Kc.data() + j * hdp;
          const A* vj = s.Vc.data() + j * hdp;
          const A pj = std::exp(scale * dot(qi, kj, hdp) - li);
          const A ds = pj * (dot(doi, vj, hdp) - di);
          for (int64_t d = 0; d < hd; ++d) {
            s.dV[j * hdp + d] += pj * doi[d];
            s.dK[j * hdp + d] += ds * qi[d];
            dq[i * hdp + d] += ds * kj[d];
          }
        }
      }
    }
  };

  run_items(order_by_cost(cost), [&](int64_t it, int64_t worker) {
    Scratch& s = scratch[worker];
    if (s.St.empty()) {
      s.St.resize(BK * Mpmax); s.dPt.resize(BK * Mpmax); s.Kc.resize(BK * hdp); s.Vc.resize(BK * hdp);
      s.dK.resize(BK * hdp); s.dV.resize(BK * hdp); s.pos.resize(Mpmax); s.dQ.assign(dq_size, A(0));
    }
    const int64_t kt = it % nkt, g = (it / nkt) % nKV, b = it / nkt / nKV;
    const int64_t j0 = kt * BK, n = std::min(S, j0 + BK) - j0;
    const int32_t* c = P.mask ? cnt.data() + b * (S + 1) : nullptr;
    const int64_t valid = c ? c[j0 + n] - c[j0] : n;
    std::fill(s.dK.begin(), s.dK.end(), A(0));
    std::fill(s.dV.begin(), s.dV.end(), A(0));
    int64_t q0 = 0, q1 = 0;
    if (valid > 0) q_range(kt, q0, q1);
    const T* krow = P.k + b * P.ksB + j0 * P.ksS + g * P.ksH;
    const T* vrow = P.v + b * P.vsB + j0 * P.vsS + g * P.vsH;
    const A* Kp = s.Kc.data();
    const A* Vp = s.Vc.data();
    int64_t ldk = hdp, ldv = hdp;
    if (q1 > q0) {
      if constexpr (std::is_same_v<T, A>) {
        if (direct && valid == n) { Kp = krow; Vp = vrow; ldk = P.ksS; ldv = P.vsS; }
      }
      if (!direct || valid < n) {  // converted copies; padding keys as zero rows
        load_tile(krow, P.ksS, n, hd, hdp, c, j0, s.Kc.data());
        load_tile(vrow, P.vsS, n, hd, hdp, c, j0, s.Vc.data());
      }
    }
    const bool exact = q1 > q0 && !(tile_finite(krow, P.ksS, n, hd, c, j0) && tile_finite(vrow, P.vsS, n, hd, c, j0));
    if (exact) backward_exact(b, g, j0, n, q0, q1, c, krow, vrow, s);
    for (int64_t qt = q0; qt < q1 && !exact; ++qt) {
      const int64_t bi = (b * nKV + g) * nqt + qt;
      const int64_t t0 = qt * bq, nq = std::min(Tq, t0 + bq) - t0, M = nq * G, Mp = (M + VS - 1) / VS * VS;
      const int64_t pmin = S - Tq + t0, pmax = pmin + nq - 1;
      const bool full = valid == n && j0 + n - 1 <= pmin && (W <= 0 || j0 > pmax - W);
      const A* qt_p = Qt.get() + bi * blk;
      const A* qr_p = Qr.get() + bi * blk;
      const A* dot_p = dOt.get() + bi * blk;
      const A* dor_p = dOr.get() + bi * blk;
      const A* Lp = L.get() + bi * Mpmax;
      const A* Dp = D.get() + bi * Mpmax;
      A* St = s.St.data();
      A* dPt = s.dPt.data();
      // P^T = exp(S^T - lse) (masked entries -> 0)
      scores_t<A>(n, M, Mp, hd, hdp, Kp, ldk, qt_p, qr_p, scale, St);
      if (!full) {
        for (int64_t i = 0; i < Mp; ++i) s.pos[i] = i < M ? static_cast<A>(pmin + i / G) : A(-1);
        apply_mask(St, n, Mp, j0, c, s.pos.data(), W, S);
      }
      for (int64_t j = 0; j < n; ++j)
        for (int64_t i = 0; i < Mp; i += VS)
          vexp(V::loadu(St + j * Mp + i) - V::loadu(Lp + i)).store(St + j * Mp + i);
      // dV += P^T dO
      gemm_small<A>(n, hdp, M, St, Mp, 1, dor_p, hdp, hdp, 2 * VS, s.dV.data(), hdp, 1, nullptr);
      // dP^T = V dO^T ; dS^T = P^T * (dP^T - D)
      scores_t<A>(n, M, Mp, hd, hdp, Vp, ldv, dot_p, dor_p, A(1), dPt);
      for (int64_t j = 0; j < n; ++j)
        for (int64_t i = 0; i < Mp; i += VS)
          (V::loadu(St + j * Mp + i) * (V::loadu(dPt + j * Mp + i) - V::loadu(Dp + i))).store(dPt + j * Mp + i);
      // dK += dS^T Q (scale applied at the end) ; dQ += dS K (scale applied in the reduction)
      gemm_small<A>(n, hdp, M, dPt, Mp, 1, qr_p, hdp, hdp, 2 * VS, s.dK.data(), hdp, 1, nullptr);
      A* dq = s.dQ.data() + ((b * nKV + g) * Tq + t0) * G * hdp;
      gemm_small<A>(M, hdp, n, dPt, 1, Mp, Kp, ldk, ldk, 2 * VS, dq, hdp, 1, nullptr);
    }
    for (int64_t j = 0; j < n; ++j) {
      store_row<T, A>(s.dK.data() + j * hdp, X.dk + ((b * S + j0 + j) * nKV + g) * hd, hd, scale);
      store_row<T, A>(s.dV.data() + j * hdp, X.dv + ((b * S + j0 + j) * nKV + g) * hd, hd, A(1));
    }
  }, /*dynamic=*/false);

  // 3. grad_q = scale * sum over workers of their dQ buffers.
  at::parallel_for(0, B * Tq * nH, 16, [&](int64_t r0, int64_t r1) {
    std::vector<A> acc(hdp);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t h = r % nH, t = (r / nH) % Tq, b = r / nH / Tq;
      const int64_t off = (((b * nKV + h / G) * Tq + t) * G + h % G) * hdp;
      std::fill(acc.begin(), acc.end(), A(0));
      for (const Scratch& s : scratch) {
        if (s.dQ.empty()) continue;
        const A* src = s.dQ.data() + off;
        for (int64_t d = 0; d < hdp; d += VS) (V::loadu(acc.data() + d) + V::loadu(src + d)).store(acc.data() + d);
      }
      store_row<T, A>(acc.data(), X.dq + r * hd, hd, scale);
    }
  });
}

}  // namespace gemma4::attn
