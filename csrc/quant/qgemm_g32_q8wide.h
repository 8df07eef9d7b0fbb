// int8 in groups of 32 (Q8_0) on 512-bit vectors: y = x @ dequant(W)^T for int16-quantized activations, sixteen
// blocks (512 weights) of a weight row a pass. AVX-512BW only; included by qgemm_g32.h inside an ISA namespace.
//
// One 64-byte load holds blocks b and b + 1. Its int16 lanes L = 0..15 hold weights 2L (low byte) and 2L + 1 (high
// byte) of block b, lanes 16..31 those of block b + 1; two shifts sign-extend the even weights and one the odd, in
// place, so no byte shuffle is needed. The caller lays x out to match (QgemmProblem::x16w, prepare_g32): per pair of
// blocks, their 32 even-k activations, then their 32 odd-k ones. Then pmaddwd (+ vpdpwssd with VNNI) gives exact
// int32 sums in which lanes 0-7 belong to block b and 8-15 to block b + 1. Eight such vectors (16 blocks) are
// reduced to one vector of block sums by two unpack rounds and one 128-bit-lane round (g32w_block_sums), lane L
// holding block kG32WideLaneBlock[L]; then acc += float(sum) * (weight scale * x scale), as qgemm_g32.h's kernel.
//
// Why a second int8 kernel: on a 2-core Intel Xeon (AVX-512, AMX; 2026-12-06; the two builds swapped between
// processes, rounds alternating) E2B's 315 int8 decode projections in a row, from DRAM, streamed 18.2-20.1 GB/s on
// the 256-bit kernel and 20.4-22.2 on this one (dev/perf/gemv_sequence_rates.py int8), and the int8 decode step
// took 114.5-114.7 against 101.7-103.1 ms a token (docs/quantization.md). The int32 block sums are the same
// numbers; only the order of the float32 additions across blocks differs.
//
// Reference: gemma4.ops.reference.qgemm.

// Sixteen scales as float32, those outside mask m zero (the tiled int4 kernel's groups of 16 rows use it too).
template <class S>
inline __m512 scales16_as_float(const S* s, __mmask16 m) {
  if constexpr (sizeof(S) == 4) {
    return _mm512_maskz_loadu_ps(m, s);
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(m, s);
    if constexpr (__is_same(S, Bf16Bits)) {
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    } else {
      return _mm512_cvtph_ps(h);
    }
  }
}

// Sixteen consecutive groups' scales as float32 (zeros after `count` < 16, at a row's end), in lane order.
template <class S>
inline __m512 g32w_load16_scales(const S* s, int64_t count) {
  const __m512 v = scales16_as_float(s, count >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << count) - 1));
  const int* l = kG32WideLaneBlock;
  const __m512i order = _mm512_setr_epi32(l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7], l[8], l[9], l[10], l[11],
                                          l[12], l[13], l[14], l[15]);
  return _mm512_permutexvar_ps(order, v);
}

// One pair of blocks: the int32 products of its weights (w: block b's first byte) with one x row (xp: the pair's
// 32 even-k then 32 odd-k activations). Lanes 0-7: block b, 8-15: block b + 1.
inline __m512i g32w_dot(__m512i even, __m512i odd, const int16_t* xp) {
  const __m512i xe = _mm512_loadu_si512(xp), xo = _mm512_loadu_si512(xp + 32);
#if defined(GEMMA4_QGEMM_VNNI)
  return _mm512_dpwssd_epi32(_mm512_madd_epi16(even, xe), odd, xo);
#else
  return _mm512_add_epi32(_mm512_madd_epi16(even, xe), _mm512_madd_epi16(odd, xo));
#endif
}

// Two pairs' products z0, z1 (blocks 4q .. 4q + 3) -> per 128-bit lane the four blocks' partials side by side.
inline __m512i g32w_join(__m512i z0, __m512i z1) {
  return _mm512_add_epi32(_mm512_unpacklo_epi32(z0, z1), _mm512_unpackhi_epi32(z0, z1));
}

// Four joined vectors a[0..3] -> the sixteen block sums, lane L holding block kG32WideLaneBlock[L].
inline __m512i g32w_block_sums(const __m512i a[4]) {
  const __m512i c0 = _mm512_add_epi32(_mm512_unpacklo_epi64(a[0], a[1]), _mm512_unpackhi_epi64(a[0], a[1]));
  const __m512i c1 = _mm512_add_epi32(_mm512_unpacklo_epi64(a[2], a[3]), _mm512_unpackhi_epi64(a[2], a[3]));
  // c0's 128-bit lanes 0, 1 hold the first blocks of pairs 0-3, lanes 2, 3 their second blocks; c1 pairs 4-7
  return _mm512_add_epi32(_mm512_shuffle_i32x4(c0, c1, 0x88), _mm512_shuffle_i32x4(c0, c1, 0xDD));
}

// 16 blocks of one weight row from block b0 (w, sc: the row's weights and scales) into acc[0 .. MB): all 8 pairs when
// kFull, else the row's last `pairs` (the padded x is zero after them, and no weight byte past the row is read).
template <class S, int MB, bool kFull>
inline void g32w_pass(const QgemmProblem& p, int64_t m0, const int8_t* w, const S* sc, int64_t b0, int pairs,
                      __m512 acc[MB]) {
  const int64_t B = p.K / 32, B16 = g32w_blocks16(p.K);  // blocks per row (even), padded
  for (int line = 0; line < 8; ++line) __builtin_prefetch(w + b0 * 32 + kPrefetchAhead + 64 * line, 0, 2);
  __m512i a[MB][4];
  for (int q = 0; q < 4; ++q) {
    __m512i z[MB][2];
    for (int h = 0; h < 2; ++h) {
      const int t = 2 * q + h;  // pair t: blocks b0 + 2t, b0 + 2t + 1
      if (kFull || t < pairs) {
        const __m512i v = _mm512_loadu_si512(w + (b0 + 2 * t) * 32);
        const __m512i even = _mm512_srai_epi16(_mm512_slli_epi16(v, 8), 8), odd = _mm512_srai_epi16(v, 8);
        for (int m = 0; m < MB; ++m) z[m][h] = g32w_dot(even, odd, p.x16w + (m0 + m) * B16 * 32 + (b0 + 2 * t) * 32);
      } else {
        for (int m = 0; m < MB; ++m) z[m][h] = _mm512_setzero_si512();
      }
    }
    for (int m = 0; m < MB; ++m) a[m][q] = g32w_join(z[m][0], z[m][1]);
  }
  const __m512 ws = g32w_load16_scales(sc + b0, B - b0);
  for (int m = 0; m < MB; ++m) {
    const __m512 s = _mm512_mul_ps(ws, _mm512_loadu_ps(p.dxw + (m0 + m) * B16 + b0));
    acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(g32w_block_sums(a[m])), s, acc[m]);
  }
}

// y[m0 .. m0 + MB, n] for one weight row n.
template <class S, int MB>
inline void g32w_row(const QgemmProblem& p, int64_t m0, int64_t n) {
  const int64_t B = p.K / 32;
  const int8_t* w = reinterpret_cast<const int8_t*>(p.qw) + n * p.K;  // [K]
  const S* sc = static_cast<const S*>(p.scales) + n * B;               // [B]
  __m512 acc[MB];
  for (int m = 0; m < MB; ++m) acc[m] = _mm512_setzero_ps();
  int64_t b0 = 0;
  for (; b0 + 16 <= B; b0 += 16) g32w_pass<S, MB, true>(p, m0, w, sc, b0, 8, acc);
  if (b0 < B) g32w_pass<S, MB, false>(p, m0, w, sc, b0, static_cast<int>((B - b0) / 2), acc);
  for (int m = 0; m < MB; ++m) {
    float y = _mm512_reduce_add_ps(acc[m]);
    if (p.bias) y += p.bias[n];
    p.out[(m0 + m) * p.N + n] = y;
  }
}
