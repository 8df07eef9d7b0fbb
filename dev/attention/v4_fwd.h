// v4: v2 + software prefetch of the next K/V tile rows (decode streams K/V once, and rows of one
// KV head are 1 KB pieces at a large stride, which the hardware prefetcher does not follow),
// + small-M paths: GEMM1 as dot products along hd when M <= 4, GEMM2 with 4-vector panels for m <= 2.
// S^T[j][i] = K_j . Q_i is computed with K rows broadcast and Q^T packed in column panels, so the
// online softmax runs vectorised across query rows (column max / column sums are plain vector ops).
#pragma once
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace dev_attn4 {

using at::vec::Vectorized;

inline Vectorized<float> vmax(Vectorized<float> a, Vectorized<float> b) { return _mm256_max_ps(a, b); }
inline Vectorized<double> vmax(Vectorized<double> a, Vectorized<double> b) { return _mm256_max_pd(a, b); }
inline Vectorized<float> vexp(Vectorized<float> x) { return x.exp_u20(); }
inline Vectorized<double> vexp(Vectorized<double> x) { return x.exp(); }

// Row conversion to the accumulation type (dst zero-padded up to npad), times `mul`.
template <typename A>
inline void load_row(const A* src, A* dst, int64_t n, int64_t npad, A mul) {
  using V = Vectorized<A>;
  int64_t d = 0;
  for (; d + V::size() <= n; d += V::size()) (V::loadu(src + d) * V(mul)).store(dst + d);
  for (; d < n; ++d) dst[d] = src[d] * mul;
  for (; d < npad; ++d) dst[d] = A(0);
}
inline void load_row(const c10::BFloat16* src, float* dst, int64_t n, int64_t npad, float mul) {
  int64_t d = 0;
  const __m256 m = _mm256_set1_ps(mul);
  for (; d + 8 <= n; d += 8) {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + d));
    __m256 f = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    _mm256_storeu_ps(dst + d, _mm256_mul_ps(f, m));
  }
  for (; d < n; ++d) dst[d] = static_cast<float>(src[d]) * mul;
  for (; d < npad; ++d) dst[d] = 0.f;
}
inline void load_row(const c10::Half* src, float* dst, int64_t n, int64_t npad, float mul) {
  int64_t d = 0;
  const __m256 m = _mm256_set1_ps(mul);
  for (; d + 8 <= n; d += 8) {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + d));
    _mm256_storeu_ps(dst + d, _mm256_mul_ps(_mm256_cvtph_ps(h), m));
  }
  for (; d < n; ++d) dst[d] = static_cast<float>(src[d]) * mul;
  for (; d < npad; ++d) dst[d] = 0.f;
}

// Prefetch rows [r0, r1) of a strided matrix (row length `bytes`) into L2.
inline void prefetch_rows(const void* base, int64_t stride_bytes, int64_t r0, int64_t r1, int64_t bytes) {
  const char* p = static_cast<const char*>(base);
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t o = 0; o < bytes; o += 64) _mm_prefetch(p + r * stride_bytes + o, _MM_HINT_T1);
}

// S^T[j][i] = K_j . Q_i for small M: vectors along hd, 4 keys x MI queries per block, horizontal sums.
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

// C[MR x NV*VS] (=|+=) A[MR x K] . B[K x NV*VS]; A read by broadcast at A[r*a_rs + k*a_ks],
// B rows at B + k*ldb. init: 0 = start from zero, 1 = accumulate, 2 = scale C rows by row_scale first.
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

// C[m x n] (=|+=) A[m x K] . B[K x n], n a multiple of VS; column panels of 2 vectors (+1 tail).
// b_panel: distance between consecutive 2*VS-wide column panels of B (packed panels) or 2*VS
// (plain row-major B).
template <typename A_t>
inline void gemm_small(int64_t m, int64_t n, int64_t K, const A_t* Ap, int64_t a_rs, int64_t a_ks,
                       const A_t* Bp, int64_t ldb_full, int64_t ldb_tail, int64_t b_panel, A_t* Cp,
                       int64_t ldc, int init, const A_t* row_scale, bool panel_outer) {
  constexpr int VS = Vectorized<A_t>::size();
  constexpr int MR = 6;
  if (m <= 2 && b_panel == 2 * VS) {  // plain row-major B: 4-vector panels keep 4+ FMA chains busy
    int64_t c0 = 0;
    for (; c0 + 4 * VS <= n; c0 += 4 * VS) {
      if (m == 2) mk<A_t, 2, 4>(K, Ap, a_rs, a_ks, Bp + c0, ldb_full, Cp + c0, ldc, init, row_scale);
      else mk<A_t, 1, 4>(K, Ap, a_rs, a_ks, Bp + c0, ldb_full, Cp + c0, ldc, init, row_scale);
    }
    for (; c0 < n; c0 += VS) mk_rows<A_t, 1>(static_cast<int>(m), K, Ap, a_rs, a_ks, Bp + c0, ldb_full, Cp + c0, ldc, init, row_scale);
    return;
  }
  const int64_t npanels = n / (2 * VS), tail = (n % (2 * VS)) / VS;
  auto do_panel = [&](int64_t p, int64_t i0) {
    const int mr = static_cast<int>(std::min<int64_t>(MR, m - i0));
    mk_rows<A_t, 2>(mr, K, Ap + i0 * a_rs, a_rs, a_ks, Bp + p * b_panel, ldb_full, Cp + i0 * ldc + p * 2 * VS,
                    ldc, init, row_scale ? row_scale + i0 : nullptr);
  };
  auto do_tail = [&](int64_t i0) {
    const int mr = static_cast<int>(std::min<int64_t>(MR, m - i0));
    mk_rows<A_t, 1>(mr, K, Ap + i0 * a_rs, a_rs, a_ks, Bp + npanels * b_panel, ldb_tail,
                    Cp + i0 * ldc + npanels * 2 * VS, ldc, init, row_scale ? row_scale + i0 : nullptr);
  };
  if (panel_outer) {
    for (int64_t p = 0; p < npanels; ++p)
      for (int64_t i0 = 0; i0 < m; i0 += MR) do_panel(p, i0);
    if (tail)
      for (int64_t i0 = 0; i0 < m; i0 += MR) do_tail(i0);
  } else {
    for (int64_t i0 = 0; i0 < m; i0 += MR) {
      for (int64_t p = 0; p < npanels; ++p) do_panel(p, i0);
      if (tail) do_tail(i0);
    }
  }
}

struct Tune {
  int64_t bk = 64;      // keys per tile
  int64_t target_m = 128;  // query rows (heads x positions) per work item
  bool gemm2_panel_outer = true;
};

template <typename T>
struct FwdParams {
  const T* q; int64_t qsB, qsT, qsH;
  const T* k; int64_t ksB, ksS, ksH;
  const T* v; int64_t vsB, vsS, vsH;
  const bool* mask; int64_t msB, msS;
  T* out;  // contiguous [B,T,nH,hd]
  void* lse;  // acc type, contiguous [B,nH,T]
  int64_t B, T_, S, nH, nKV, hd, G, window;
  double scale;
};

template <typename T>
void forward(const FwdParams<T>& P, const Tune& tune) {
  using A = std::conditional_t<std::is_same_v<T, double>, double, float>;
  using V = Vectorized<A>;
  constexpr int64_t VS = V::size();
  const int64_t B = P.B, Tq = P.T_, S = P.S, nH = P.nH, nKV = P.nKV, hd = P.hd, G = P.G, W = P.window;
  const int64_t hdp = (hd + VS - 1) / VS * VS;
  const int64_t BK = tune.bk;
  const int64_t bq = std::max<int64_t>(1, std::min<int64_t>(Tq, tune.target_m / G));
  const int64_t nqt = (Tq + bq - 1) / bq;
  const int64_t Mmax = bq * G, Mpmax = (Mmax + VS - 1) / VS * VS;
  const bool direct = std::is_same_v<T, A> && hd % VS == 0;  // read K/V rows in place
  const A scale = static_cast<A>(P.scale);
  const A NEG_INF = -std::numeric_limits<A>::infinity();
  A* lse_out = static_cast<A*>(P.lse);

  // Prefix counts of attendable keys per batch row, so tiles can be skipped / left unmasked.
  std::vector<int32_t> cnt;
  if (P.mask) {
    cnt.resize(B * (S + 1));
    for (int64_t b = 0; b < B; ++b) {
      int32_t* c = cnt.data() + b * (S + 1);
      c[0] = 0;
      for (int64_t j = 0; j < S; ++j) c[j + 1] = c[j] + (P.mask[b * P.msB + j * P.msS] ? 1 : 0);
    }
  }

  // Key range of query tile qt: [ks, ke).
  auto key_range = [&](int64_t qt, int64_t& ks, int64_t& ke) {
    const int64_t t0 = qt * bq, t1 = std::min(Tq, t0 + bq);
    const int64_t pmin = S - Tq + t0, pmax = S - Tq + t1 - 1;
    ke = pmax + 1;
    ks = W > 0 ? std::max<int64_t>(0, pmin - W + 1) : 0;
  };

  // Work items: (b, g, qt, split). Split the key range when there are too few items (decode).
  const int64_t nthreads = at::get_num_threads();
  const int64_t base_items = B * nKV * nqt;
  int64_t nsplit = 1;
  if (base_items < 2 * nthreads) {
    int64_t ks, ke;
    key_range(nqt - 1, ks, ke);
    const int64_t ktiles = (ke - ks + BK - 1) / BK;
    nsplit = std::max<int64_t>(1, std::min<int64_t>((4 * nthreads + base_items - 1) / base_items, ktiles / 2));
  }
  const int64_t nitems = base_items * nsplit;
  // Partial results of split items: O [Mp x hdp], m, l per row.
  std::vector<A> part;
  if (nsplit > 1) part.resize(nitems * (Mpmax * hdp + 2 * Mpmax));

  // Order items by decreasing cost (number of key tiles), grabbed dynamically by the threads.
  std::vector<int64_t> order(nitems);
  std::vector<int64_t> cost(nitems);
  for (int64_t it = 0; it < nitems; ++it) {
    const int64_t qt = (it / nsplit) % nqt;
    int64_t ks, ke;
    key_range(qt, ks, ke);
    cost[it] = (ke - ks) / nsplit;
    order[it] = it;
  }
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return cost[a] > cost[b]; });
  std::atomic<int64_t> next{0};

  const int64_t nworkers = std::min(nthreads, nitems);
  at::parallel_for(0, nworkers, 1, [&](int64_t, int64_t) {
    // Per-thread scratch.
    std::vector<A> Qr(4 * hdp), Qt(Mpmax * hdp), St(BK * Mpmax), O(Mpmax * hdp), Kc(direct ? 0 : BK * hdp),
        Vc(direct ? 0 : BK * hdp), row(hdp), m(Mpmax), l(Mpmax), alpha(Mpmax), mx(Mpmax), pos(Mpmax);
    for (;;) {
      const int64_t slot = next.fetch_add(1);
      if (slot >= nitems) break;
      const int64_t it = order[slot];
      const int64_t sp = it % nsplit, qt = (it / nsplit) % nqt, g = (it / nsplit / nqt) % nKV,
                    b = it / nsplit / nqt / nKV;
      const int64_t t0 = qt * bq, nq = std::min(Tq, t0 + bq) - t0;
      const int64_t M = nq * G, Mp = (M + VS - 1) / VS * VS;
      int64_t ks, ke;
      key_range(qt, ks, ke);
      const int64_t pmin = S - Tq + t0, pmax = pmin + nq - 1;
      if (nsplit > 1) {  // this split's share of key tiles
        const int64_t ntile = (ke - ks + BK - 1) / BK, per = (ntile + nsplit - 1) / nsplit;
        const int64_t a0 = ks + sp * per * BK;
        ke = std::min(ke, a0 + per * BK);
        ks = std::min(a0, ke);
      }
      // Pack Q^T (scaled) into column panels of 2*VS (last may be VS): panel p at Qt + p*2VS*hdp.
      for (int64_t i = 0; i < Mp; ++i) {
        if (i < M) {
          const int64_t t = t0 + i / G, h = g * G + i % G;
          load_row(P.q + b * P.qsB + t * P.qsT + h * P.qsH, row.data(), hd, hdp, scale);
          pos[i] = static_cast<A>(S - Tq + t);
        } else {
          std::fill(row.begin(), row.end(), A(0));
          pos[i] = A(-1);  // sees no key
        }
        const int64_t p = i / (2 * VS), w = std::min<int64_t>(2 * VS, Mp - p * 2 * VS), c = i % (2 * VS);
        if (M <= 4 && i < M) std::copy(row.begin(), row.end(), Qr.data() + i * hdp);
        A* dst = Qt.data() + p * 2 * VS * hdp + c;
        for (int64_t d = 0; d < hdp; ++d) dst[d * w] = row[d];
      }
      std::fill(m.begin(), m.end(), NEG_INF);
      std::fill(l.begin(), l.end(), A(0));
      bool first = true;
      const int32_t* c = P.mask ? cnt.data() + b * (S + 1) : nullptr;
      for (int64_t j0 = ks; j0 < ke; j0 += BK) {
        const int64_t n = std::min(BK, ke - j0);
        int64_t valid = n;
        if (c) {
          valid = c[j0 + n] - c[j0];
          if (valid == 0) continue;  // every key of the tile is padding
        }
        const bool full = valid == n && j0 + n - 1 <= pmin && (W <= 0 || j0 > pmax - W);
        const A* Kp;
        const A* Vp;
        int64_t ldk, ldv;
        if constexpr (std::is_same_v<T, A>) {
          if (direct) {
            Kp = P.k + b * P.ksB + j0 * P.ksS + g * P.ksH;
            Vp = P.v + b * P.vsB + j0 * P.vsS + g * P.vsH;
            ldk = P.ksS;
            ldv = P.vsS;
          }
        }
        if (!direct) {
          for (int64_t j = 0; j < n; ++j) {
            load_row(P.k + b * P.ksB + (j0 + j) * P.ksS + g * P.ksH, Kc.data() + j * hdp, hd, hdp, A(1));
            load_row(P.v + b * P.vsB + (j0 + j) * P.vsS + g * P.vsH, Vc.data() + j * hdp, hd, hdp, A(1));
          }
          Kp = Kc.data();
          Vp = Vc.data();
          ldk = ldv = hdp;
        }
        // Prefetch this tile's V rows (used after GEMM1) and the next tile's K rows.
        prefetch_rows(P.v + b * P.vsB + j0 * P.vsS + g * P.vsH, P.vsS * sizeof(T), 0, n, hd * sizeof(T));
        if (j0 + BK < ke)
          prefetch_rows(P.k + b * P.ksB + (j0 + BK) * P.ksS + g * P.ksH, P.ksS * sizeof(T), 0,
                        std::min(BK, ke - j0 - BK), hd * sizeof(T));
        // S^T[n x Mp] = K[n x hd] . Q^T[hd x Mp]
        if (M <= 4) {
          for (int64_t i = M; i < Mp; ++i)
            for (int64_t j = 0; j < n; ++j) St[j * Mp + i] = A(0);
          switch (M) {
            case 1: dot_block<A, 1>(n, hdp, Kp, ldk, Qr.data(), hdp, St.data(), Mp); break;
            case 2: dot_block<A, 2>(n, hdp, Kp, ldk, Qr.data(), hdp, St.data(), Mp); break;
            case 3: dot_block<A, 3>(n, hdp, Kp, ldk, Qr.data(), hdp, St.data(), Mp); break;
            default: dot_block<A, 4>(n, hdp, Kp, ldk, Qr.data(), hdp, St.data(), Mp); break;
          }
        } else {
          gemm_small<A>(n, Mp, hd, Kp, ldk, 1, Qt.data(), 2 * VS, VS, 2 * VS * hdp, St.data(), Mp, 0, nullptr,
                        false);
        }
        // Mask and column max.
        for (int64_t i = 0; i < Mp; i += VS) V(NEG_INF).store(mx.data() + i);
        for (int64_t j = 0; j < n; ++j) {
          A* srow = St.data() + j * Mp;
          const int64_t jabs = j0 + j;
          if (!full) {
            if (c && c[jabs + 1] == c[jabs]) {
              for (int64_t i = 0; i < Mp; i += VS) V(NEG_INF).store(srow + i);
              continue;
            }
            const V vj(static_cast<A>(jabs));
            const V vw(static_cast<A>(W > 0 ? W : (S + 1)));
            for (int64_t i = 0; i < Mp; i += VS) {
              const V p = V::loadu(pos.data() + i);
              // visible iff j <= pos and pos - j < W
              const V ok = (vj <= p) & ((p - vj) < vw);
              V s = V::blendv(V(NEG_INF), V::loadu(srow + i), ok);
              s.store(srow + i);
              vmax(V::loadu(mx.data() + i), s).store(mx.data() + i);
            }
          } else {
            for (int64_t i = 0; i < Mp; i += VS) vmax(V::loadu(mx.data() + i), V::loadu(srow + i)).store(mx.data() + i);
          }
        }
        // Online softmax update: m_new, alpha = exp(m_old - m_new); P = exp(S - m_new).
        for (int64_t i = 0; i < Mp; i += VS) {
          const V mo = V::loadu(m.data() + i);
          const V mn = vmax(mo, V::loadu(mx.data() + i));
          const V use = V::blendv(mn, V(A(0)), mn == V(NEG_INF));
          vexp(mo - use).store(alpha.data() + i);
          mn.store(m.data() + i);
          use.store(mx.data() + i);
        }
        // P and its column sums.
        for (int64_t i = 0; i < Mp; i += VS) {
          const V use = V::loadu(mx.data() + i);
          V acc(A(0));
          for (int64_t j = 0; j < n; ++j) {
            A* sp_ = St.data() + j * Mp + i;
            const V p = vexp(V::loadu(sp_) - use);
            p.store(sp_);
            acc = acc + p;
          }
          (V::loadu(l.data() + i) * V::loadu(alpha.data() + i) + acc).store(l.data() + i);
        }
        // O = alpha * O + P . V
        gemm_small<A>(M, hdp, n, St.data(), 1, Mp, Vp, ldv, ldv, 2 * VS, O.data(), hdp, first ? 0 : 2,
                      alpha.data(), tune.gemm2_panel_outer);
        first = false;
      }
      if (first) {  // no visible tile at all
        std::fill(O.begin(), O.begin() + M * hdp, A(0));
      }
      if (nsplit > 1) {
        A* pp = part.data() + it * (Mpmax * hdp + 2 * Mpmax);
        std::memcpy(pp, O.data(), sizeof(A) * M * hdp);
        std::memcpy(pp + Mpmax * hdp, m.data(), sizeof(A) * M);
        std::memcpy(pp + Mpmax * hdp + Mpmax, l.data(), sizeof(A) * M);
        continue;
      }
      for (int64_t i = 0; i < M; ++i) {
        const int64_t t = t0 + i / G, h = g * G + i % G;
        const A li = l[i];
        const A inv = li > A(0) ? A(1) / li : A(0);
        T* dst = P.out + ((b * Tq + t) * nH + h) * hd;
        const A* src = O.data() + i * hdp;
        if constexpr (std::is_same_v<T, A>) {
          int64_t d = 0;
          for (; d + VS <= hd; d += VS) (V::loadu(src + d) * V(inv)).store(dst + d);
          for (; d < hd; ++d) dst[d] = src[d] * inv;
        } else {
          for (int64_t d = 0; d < hd; ++d) dst[d] = static_cast<T>(src[d] * inv);
        }
        lse_out[(b * nH + h) * Tq + t] = li > A(0) ? m[i] + std::log(li) : NEG_INF;
      }
    }
  });

  if (nsplit > 1) {  // combine the splits of each (b, g, qt)
    at::parallel_for(0, base_items, 1, [&](int64_t s0, int64_t s1) {
      std::vector<A> o(hdp);
      for (int64_t bi = s0; bi < s1; ++bi) {
        const int64_t qt = bi % nqt, g = (bi / nqt) % nKV, b = bi / nqt / nKV;
        const int64_t t0 = qt * bq, nq = std::min(Tq, t0 + bq) - t0, M = nq * G;
        for (int64_t i = 0; i < M; ++i) {
          A mt = NEG_INF;
          for (int64_t sp = 0; sp < nsplit; ++sp) {
            const A* pp = part.data() + (bi * nsplit + sp) * (Mpmax * hdp + 2 * Mpmax);
            if (pp[Mpmax * hdp + Mpmax + i] > A(0)) mt = std::max(mt, pp[Mpmax * hdp + i]);
          }
          A lt = 0;
          std::fill(o.begin(), o.end(), A(0));
          if (mt != NEG_INF) {
            for (int64_t sp = 0; sp < nsplit; ++sp) {
              const A* pp = part.data() + (bi * nsplit + sp) * (Mpmax * hdp + 2 * Mpmax);
              const A li = pp[Mpmax * hdp + Mpmax + i];
              if (!(li > A(0))) continue;
              const A w = std::exp(pp[Mpmax * hdp + i] - mt);
              lt += li * w;
              for (int64_t d = 0; d < hd; ++d) o[d] += w * pp[i * hdp + d];
            }
          }
          const int64_t t = t0 + i / G, h = g * G + i % G;
          const A inv = lt > A(0) ? A(1) / lt : A(0);
          T* dst = P.out + ((b * Tq + t) * nH + h) * hd;
          for (int64_t d = 0; d < hd; ++d) dst[d] = static_cast<T>(o[d] * inv);
          lse_out[(b * nH + h) * Tq + t] = lt > A(0) ? mt + std::log(lt) : NEG_INF;
        }
      }
    });
  }
}

}  // namespace dev_attn4
