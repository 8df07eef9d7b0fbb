// The group-32 kernel for int4 (Q4_0, Google's QAT, w4a16-ct: the format most people run) and int8
// (Q8_0): y = x @ dequant(W)^T for int16-quantized activations, one or two x rows per pass over the
// weights. Written
// with AVX2 intrinsics and included by both ISA files (AVX-512 implies AVX2). The general tile
// (qgemm_tile_i16) folds every 32-weight block into float32 on its own -- a convert and two
// multiplies, as much as the block's arithmetic; this one reduces eight blocks' int32 sums together and
// folds them with one convert and one FMA.
//
// Per weight row, per step of 64 weights (blocks b and b+1), four int16 vectors w0..w3 hold weights
// 2i, 2i+16, 2i+1, 2i+17 of block b in their low 128-bit half and of block b+1 in the high half, made
// without a byte shuffle: int4 loads the step's 32 bytes and each int16 lane's four nibbles are one
// weight of each vector; int8 loads 16 bytes of each block per half and splits even and odd bytes.
// The caller stores x in the same lane order (QgemmProblem::x16p) and pmaddwd multiplies exactly into
// int32. int4's unsigned nibbles u = q + 8 are corrected once per block: sum(q x) = sum(u x) - 8 sum(x).
// Three hadds (on AVX-512's paired steps, g32_block_sums) turn four steps (eight blocks) into one vector of
// block sums, lane L holding block kG32LaneBlock[L], then acc += float(sum) * (weight scale * x scale).
// Exact int32: a block's |sum| <= 32 * 128 * 32767 < 2^31.
//
// On AVX-512, int8 takes qgemm_g32_q8wide.h's kernel instead (16 blocks a pass on 512-bit vectors, x in its own order).
//
// Reference: gemma4.ops.reference.qgemm. Include inside an ISA namespace, after qgemm_kernels.h's scale types.

// Eight consecutive groups' scales as float32, in lane order; `count` < 8 only at a row's end (zeros after).
template <class S>
inline __m256 g32_load8_scales(const S* s, int64_t count) {
  __m256 v;
  if (count == 8) {
    if constexpr (sizeof(S) == 4) {
      v = _mm256_loadu_ps(reinterpret_cast<const float*>(s));
    } else {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s));
      if constexpr (__is_same(S, Bf16Bits)) {
        v = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
      } else {
        v = _mm256_cvtph_ps(h);
      }
    }
  } else {
    alignas(32) float f[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t i = 0; i < count; ++i) f[i] = scale_to_float(s[i]);
    v = _mm256_load_ps(f);
  }
  const int* l = kG32LaneBlock;
  return _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7]));
}

// One 64-weight step's four weight vectors: int4 as u = q + 8 (0..15), int8 as q, one per int16 lane.
// w: the step's first byte (block b's; block b+1 follows it).
template <int BITS>
inline void g32_unpack(const uint8_t* w, __m256i out[4]) {
  if constexpr (BITS == 4) {
    const __m256i nib = _mm256_set1_epi16(0x000F);
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));  // 4 weights per int16 lane
    out[0] = _mm256_and_si256(v, nib);
    out[1] = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
    out[2] = _mm256_and_si256(_mm256_srli_epi16(v, 8), nib);
    out[3] = _mm256_srli_epi16(v, 12);
  } else {
    const auto half = [w](int off) {  // bytes off..off+15 of block b | of block b+1
      return _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(w + 32 + off), reinterpret_cast<const __m128i*>(w + off));
    };
    const __m256i v01 = half(0), v23 = half(16);
    out[0] = _mm256_srai_epi16(_mm256_slli_epi16(v01, 8), 8);  // even bytes: weights 2i
    out[1] = _mm256_srai_epi16(_mm256_slli_epi16(v23, 8), 8);  // 2i + 16
    out[2] = _mm256_srai_epi16(v01, 8);                         // odd bytes: 2i + 1
    out[3] = _mm256_srai_epi16(v23, 8);                         // 2i + 17
  }
}

// Their int32 products with one x row's step (xp: the step's first vector; vector j at xp + 32 j, the x layout
// pairing steps, qgemm_cpu.cpp's prepare_g32): low half block 2t, high 2t+1.
// With VNNI, vpdpwssd multiplies, adds pairs and accumulates in one instruction (the same exact int32 sums).
inline __m256i g32_dot(const __m256i w[4], const int16_t* xp) {
  const auto x = [xp](int j) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp + 32 * j)); };
#if defined(GEMMA4_QGEMM_VNNI)
  const __m256i s01 = _mm256_dpwssd_epi32(_mm256_madd_epi16(w[0], x(0)), w[1], x(1));
  return _mm256_dpwssd_epi32(_mm256_dpwssd_epi32(s01, w[2], x(2)), w[3], x(3));
#else
  return _mm256_add_epi32(_mm256_add_epi32(_mm256_madd_epi16(w[0], x(0)), _mm256_madd_epi16(w[1], x(1))),
                          _mm256_add_epi32(_mm256_madd_epi16(w[2], x(2)), _mm256_madd_epi16(w[3], x(3))));
#endif
}

#if defined(__AVX512BW__)
// Two int4 steps at once on 512-bit vectors (the weights' 64 bytes hold steps 2q and 2q + 1 back to back, and
// the x layout pairs them): the same four vectors per step, step 2q in the low 256 bits, 2q + 1 in the high.
// int4 only: its decode was bound by these instructions (28-33 GB/s with the weights in cache or in DRAM, int8
// 40-51 from cache), int8's by memory; with g32_block_sums one thread does 38 GB/s from cache.
inline void g32_unpack_q4_pair(const uint8_t* w, __m512i out[4]) {
  const __m512i nib = _mm512_set1_epi16(0x000F);
  const __m512i v = _mm512_loadu_si512(w);
  out[0] = _mm512_and_si512(v, nib);
  out[1] = _mm512_and_si512(_mm512_srli_epi16(v, 4), nib);
  out[2] = _mm512_and_si512(_mm512_srli_epi16(v, 8), nib);
  out[3] = _mm512_srli_epi16(v, 12);
}
// The pair's int32 products with one x row (xp: the pair's first vector): [step 2q | step 2q + 1] as g32_dot's.
inline __m512i g32_dot_pair(const __m512i w[4], const int16_t* xp) {
  const auto x = [xp](int j) { return _mm512_loadu_si512(xp + 32 * j); };
#if defined(GEMMA4_QGEMM_VNNI)
  const __m512i s01 = _mm512_dpwssd_epi32(_mm512_madd_epi16(w[0], x(0)), w[1], x(1));
  return _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(s01, w[2], x(2)), w[3], x(3));
#else
  return _mm512_add_epi32(_mm512_add_epi32(_mm512_madd_epi16(w[0], x(0)), _mm512_madd_epi16(w[1], x(1))),
                          _mm512_add_epi32(_mm512_madd_epi16(w[2], x(2)), _mm512_madd_epi16(w[3], x(3))));
#endif
}
// The eight blocks' int32 sums from two pairs' products (z0: blocks 0-3, z1: blocks 4-7, four partials each, in
// their 128-bit lanes), in lane order (kG32LaneBlock), as the three hadds of the 256-bit path leave them: two
// two-source permutes put the partials of block kG32LaneBlock[j] in lanes 2j and 2j + 1 (ia picks partials 0 and 2,
// ib 1 and 3), then each 64-bit lane's halves are added and narrowed. Six instructions against the 256-bit
// path's two extracts and three vphaddd (three uops each).
inline __m256i g32_block_sums(__m512i z0, __m512i z1) {
  const int* l = kG32LaneBlock;  // block L's partial r is lane 4 L + r of [z0 | z1]
  const __m512i ia = _mm512_setr_epi32(4 * l[0], 4 * l[0] + 2, 4 * l[1], 4 * l[1] + 2, 4 * l[2], 4 * l[2] + 2,
                                       4 * l[3], 4 * l[3] + 2, 4 * l[4], 4 * l[4] + 2, 4 * l[5], 4 * l[5] + 2,
                                       4 * l[6], 4 * l[6] + 2, 4 * l[7], 4 * l[7] + 2);
  const __m512i ib = _mm512_add_epi32(ia, _mm512_set1_epi32(1));
  const __m512i t = _mm512_add_epi32(_mm512_permutex2var_epi32(z0, ia, z1), _mm512_permutex2var_epi32(z0, ib, z1));
  return _mm512_cvtepi64_epi32(_mm512_add_epi32(t, _mm512_srli_epi64(t, 32)));  // low half of each 64-bit lane
}
#endif

inline float g32_hsum(__m256 v) {
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  return _mm_cvtss_f32(h);
}

// How far ahead in a row's weights g32_row prefetches. A prefetch at all was 1.2-1.4x over the hardware
// prefetcher alone; the distance, measured on E2B's int4 layer GEMVs plus its int4 head at one row of x, each
// shape over 256 MB of weights (past L3), 2 threads, the 2-core AVX-512 EPYC (dev/perf/qgemv_decode_shapes.py):
// 2 KB 33.3-35.3 ms a token, 4 KB 30.2-33.7, 8 KB 29.4-29.7, 16 KB 28.3-29.9; int8 g32 2 KB 57.1-59.5, 8 KB
// 56.6-56.7. In a decode step of the int4 model 40.1 -> 37.7-38.4 ms.
// Into L2 (T1), not L1: the lines in flight would push the int16 x out of the 32 KB L1, and x is read twice as
// many bytes as int8 weights. On rows of 12288 (E2B's wide down projection, x 24 KB) int8 streamed 22 GB/s from
// DRAM into L1 against 31-35 on rows of 1536; into L2 the wide rows run at 25-32 GB/s against the short ones'
// 30-37 (alternating builds, dev/perf/qgemv_long_rows.py), and E2B's int8 qhead decode step went 69.2 -> 55.8
// and 74.5 -> 54.0 ms (one process, the hint switched between rounds; docs/quantization.md).
constexpr int64_t kPrefetchAhead = 8192;

#if defined(__AVX512BW__)
#include "quant/qgemm_g32_q8wide.h"
#endif

// y[m0 .. m0 + MB, n] for one weight row n.
template <class S, int BITS, int MB>
inline void g32_row(const QgemmProblem& p, int64_t m0, int64_t n) {
  constexpr int kBlockBytes = BITS * 4;                     // 32 weights
  const int64_t B = p.K / 32, B8 = (B + 7) / 8 * 8;         // blocks (= groups) per row, even; padded
  const uint8_t* w = p.qw + n * B * kBlockBytes;            // [B * kBlockBytes] bytes
  const S* sc = static_cast<const S*>(p.scales) + n * B;    // [B]
  __m256 acc[MB];
  for (int m = 0; m < MB; ++m) acc[m] = _mm256_setzero_ps();
  for (int64_t b0 = 0; b0 < B; b0 += 8) {
    const int64_t steps = B - b0 >= 8 ? 4 : (B - b0) / 2;
    // The run kPrefetchAhead bytes ahead, into L2 (why that distance and level: at the constant).
    for (int line = 0; line < BITS / 2; ++line) __builtin_prefetch(w + b0 * kBlockBytes + kPrefetchAhead + 64 * line, 0, 2);
    __m256i sum[MB];  // per x row: the eight blocks' int32 sums, in lane order
    // x of step b0 / 2 + t of row m: pairs of steps are 128 int16 apart, the second of a pair 16 after the first
    const auto xstep = [&](int m, int t) { return p.x16p + (m0 + m) * B8 * 32 + b0 * 32 + (t / 2) * 128 + (t % 2) * 16; };
#if defined(__AVX512BW__)
    if (BITS == 4 && steps == 4) {
      __m512i z[MB][2];
      for (int q = 0; q < 2; ++q) {  // steps 2q, 2q + 1 together
        __m512i wv[4];
        g32_unpack_q4_pair(w + (b0 + 4 * q) * kBlockBytes, wv);
        for (int m = 0; m < MB; ++m) z[m][q] = g32_dot_pair(wv, xstep(m, 2 * q));
      }
      for (int m = 0; m < MB; ++m) sum[m] = g32_block_sums(z[m][0], z[m][1]);
    } else
#endif
    {
      __m256i s[MB][4];
      for (int t = 0; t < 4; ++t) {
        __m256i wv[4];
        if (t < steps) g32_unpack<BITS>(w + (b0 + 2 * t) * kBlockBytes, wv);
        for (int m = 0; m < MB; ++m) s[m][t] = t < steps ? g32_dot(wv, xstep(m, t)) : _mm256_setzero_si256();
      }
      for (int m = 0; m < MB; ++m)
        sum[m] = _mm256_hadd_epi32(_mm256_hadd_epi32(s[m][0], s[m][1]), _mm256_hadd_epi32(s[m][2], s[m][3]));
    }
    const __m256 ws = g32_load8_scales(sc + b0, B - b0 < 8 ? B - b0 : 8);
    for (int m = 0; m < MB; ++m) {
      const int64_t lanes = (m0 + m) * B8 + b0;
      if constexpr (BITS == 4) sum[m] = _mm256_sub_epi32(sum[m], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.xsum8p + lanes)));
      acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[m]), _mm256_mul_ps(ws, _mm256_loadu_ps(p.dxp + lanes)), acc[m]);
    }
  }
  for (int m = 0; m < MB; ++m) {
    float y = g32_hsum(acc[m]);
    if (p.bias) y += p.bias[n];
    p.out[(m0 + m) * p.N + n] = y;
  }
}

// Weight rows [nb, ne) against x rows m .. m + MB - 1: int8 on AVX-512 takes qgemm_g32_q8wide.h's kernel.
template <class S, int BITS, int MB>
inline void g32_row_range(const QgemmProblem& p, int64_t m, int64_t nb, int64_t ne) {
#if defined(__AVX512BW__)
  if constexpr (BITS == 8) {
    for (int64_t n = nb; n < ne; ++n) g32w_row<S, MB>(p, m, n);
    return;
  }
#endif
  for (int64_t n = nb; n < ne; ++n) g32_row<S, BITS, MB>(p, m, n);
}

// Weight rows [n_begin, n_end) against every x row: blocks of kQgemmRowBlock weight rows stay in cache
// while the x rows sweep them in pairs, or with VNNI in fours where four rows of int16 x fit in 16 KB of L1
// (K <= 2048): its 24 live vectors need AVX-512's 32 registers, and its cheaper dot products leave the
// unpacking as the larger cost to share.
template <class S, int BITS>
inline void g32_rows(const QgemmProblem& p, int64_t n_begin, int64_t n_end) {
  for (int64_t nb = n_begin; nb < n_end; nb += kQgemmRowBlock) {
    const int64_t ne = nb + kQgemmRowBlock < n_end ? nb + kQgemmRowBlock : n_end;
    int64_t m = 0;
#if defined(GEMMA4_QGEMM_VNNI)
    if (4 * p.K * 2 <= 16384)
      for (; m + 4 <= p.M; m += 4) g32_row_range<S, BITS, 4>(p, m, nb, ne);
#endif
    for (; m + 2 <= p.M; m += 2) g32_row_range<S, BITS, 2>(p, m, nb, ne);
    if (m < p.M) g32_row_range<S, BITS, 1>(p, m, nb, ne);
  }
}
