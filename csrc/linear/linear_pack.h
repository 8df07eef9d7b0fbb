// The packed GEMM's weight packing and k-block loop, shared by the AVX2 tile (linear_gemm.h) and the AVX-512
// one (linear_gemm_avx512.cpp). Include it *inside* the including file's namespace, after <immintrin.h> (on
// x86-64), with these in that namespace: `load8(const T*)` (8 weights of T as an __m256) and `widen(T)` (one
// as a float). Each including file so gets its own copy, compiled with its own flags: the AVX-512 file's copy
// must not be the one the linker keeps for the AVX2 code (linear_gemv_avx512.h says why).
//
// A weight micro-panel of NR rows holds dst[k * NR + j] = float(w(k, j)), k-major, so the microkernel loads NR
// consecutive outputs' weights of one k as vectors. The loop (gemm_panel) packs a task's panel of output
// columns per k-block of KC, then runs the microkernel over every packed group of x rows against each
// micro-panel: each output is one FMA chain per k-block, blocks added in order, whatever the tile.
// No #pragma once: a file may include it in one namespace only. The vector paths need CPU_CAPABILITY_AVX2 (the
// build defines it for every file, the AVX-512 ones included, when it compiles for AVX2).

#if defined(CPU_CAPABILITY_AVX2)
// The 8 x 8 transpose of r[0..7] (rows) into columns, in place.
inline void transpose8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}
#endif

// A weight micro-panel from a weight [N, K]: dst[k * NR + j] = float(w[j * K + k]) for j < rows (<= NR; zero
// beyond), k < kc. Full panels go through 8 x 8 transposes.
template <int NR, typename T>
inline void pack_w_panel(const T* w, int64_t K, int64_t rows, int64_t kc, float* dst) {
  int64_t k = 0;
#if defined(CPU_CAPABILITY_AVX2)
  if (rows == NR) {
    for (; k + 8 <= kc; k += 8)
      for (int j0 = 0; j0 < NR; j0 += 8) {
        __m256 r[8];
        for (int j = 0; j < 8; ++j) r[j] = load8(w + (j0 + j) * K + k);
        transpose8(r);
        for (int t = 0; t < 8; ++t) _mm256_storeu_ps(dst + (k + t) * NR + j0, r[t]);
      }
  }
#endif
  for (; k < kc; ++k)
    for (int j = 0; j < NR; ++j) dst[k * NR + j] = j < rows ? widen(w[j * K + k]) : 0.f;
}

// The same micro-panel from a weight stored k-major, wt[K, N] (the input gradient's g @ W, W [N_out, K_in]):
// dst[k * NR + j] = float(wt[k * ldw + j]) for j < cols (<= NR; zero beyond): a copy of NR values per k.
template <int NR, typename T>
inline void pack_kn_panel(const T* wt, int64_t ldw, int64_t cols, int64_t kc, float* dst) {
  for (int64_t k = 0; k < kc; ++k) {
    const T* src = wt + k * ldw;
#if defined(CPU_CAPABILITY_AVX2)
    if (cols == NR) {
      for (int j = 0; j < NR; j += 8) _mm256_storeu_ps(dst + k * NR + j, load8(src + j));
      continue;
    }
#endif
    for (int j = 0; j < NR; ++j) dst[k * NR + j] = j < cols ? widen(src[j]) : 0.f;
  }
}

// cbuf[m, i] (+)= sum over k in [k_begin, k_end) of x[m, k] * w(k, n0 + i), for m < groups * MR and i < nc
// (rounded up to NR; ldc >= that): one task's panel of output columns over one packed k-range, with w(k, n) =
// w[n * K + k] (a weight [N, K], y = x @ w^T) or, with KMajor, w[k * N + n] (a weight [K, N], y = x @ w).
// ap: x's rows packed in groups of MR for this k-range; bp: KC * nc floats of scratch. add: add to cbuf (a later
// k-range) rather than start it. micro(a, b, kc, c, ldc, add): the MR x NR microkernel. w: a pointer to the
// weight, or a PanelSource (panel_source.h) that packs its micro-panels itself (not KMajor).
template <bool KMajor, int MR, int NR, int64_t KC, typename Src, typename Micro>
inline void gemm_panel(const Src& w, int64_t K, int64_t N, int64_t k_begin, int64_t k_end, const float* ap,
                       int64_t groups, int64_t n0, int64_t nc, float* bp, float* cbuf, int64_t ldc, bool add,
                       const Micro& micro) {
  for (int64_t k0 = k_begin; k0 < k_end; k0 += KC) {
    const int64_t kc = k_end - k0 < KC ? k_end - k0 : KC;
    for (int64_t j = 0; j < nc; j += NR) {
      const int64_t cols = nc - j < NR ? nc - j : NR;
      if constexpr (!std::is_pointer_v<Src>) {
        static_assert(!KMajor && NR == 16, "a PanelSource packs kNR-row panels of a weight [N, K]");
        w.pack(w.ctx, n0 + j, cols, k0, kc, bp + j * kc);
      } else if constexpr (KMajor) {
        pack_kn_panel<NR>(w + k0 * N + n0 + j, N, cols, kc, bp + j * kc);
      } else {
        pack_w_panel<NR>(w + (n0 + j) * K + k0, K, cols, kc, bp + j * kc);
      }
    }
    const float* ablk = ap + (k0 - k_begin) * groups * MR;
    for (int64_t j = 0; j < nc; j += NR)
      for (int64_t g = 0; g < groups; ++g)
        micro(ablk + g * kc * MR, bp + j * kc, kc, cbuf + g * MR * ldc + j, ldc, add || k0 > k_begin);
  }
}
