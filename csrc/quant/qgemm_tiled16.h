// The int4 g32 kernel on the 16-row tiled layout (TiledProblem in qgemm_problem.h), AVX512-VNNI.
//
// Why a second layout: on the row layout (qgemm_g32.h) one vector holds several groups of one row, so every
// group's int32 sum must be reduced across lanes and scaled by itself (permutes, horizontal adds, a convert
// and an FMA per eight groups of a row); with the rows interleaved each int32 lane is one row, a group's 16
// rows fold with one convert and one FMA, and x is broadcast four activations at a time from memory into
// vpdpbusd. On a 2-core EPYC that issues one 512-bit vpdpbusd a cycle: E2B's up projection at one row of x
// 0.134 -> 0.070 ms (dev/perf/qgemm_interleaved.cpp; docs/quantization.md).
//
// Per group of 32 k and 16 rows: four 64-byte vectors (j = 0..3), each split into low nibbles (k = 32 g + 4 j + i)
// and high ones (k = 32 g + 16 + 4 j + i) as unsigned bytes; al += u * xl and ah += u * xh (two vpdpbusd each), then
// sum(q x16) = 256 ah + al - 8 sum(x16), exact in int32 (|256 ah| <= 256 * 32 * 15 * 127), and
// acc += float(sum) * (row scales * x scale).
// Reference: gemma4.ops.reference.qgemm on formats.untile16's row layout. Include inside the VNNI ISA namespace,
// after qgemm_kernels.h (scale types; and through qgemm_g32.h, scales16_as_float).

// How far ahead the tile walk prefetches: the row layout's distance and level (qgemm_g32.h's kPrefetchAhead: into
// L2, which keeps x in L1), here 32 groups. Into L2 instead of L1, E2B's int4 qhead decode step went 36.7 -> 34.1
// and 34.2 -> 33.5 ms (one process, alternating rounds).
constexpr int64_t kTiledPrefetchGroups = 32;

// y[m0 .. m0 + MB, 16 t .. 16 t + 15].
template <class S, int MB>
inline void tiled_tile(const TiledProblem& p, int64_t m0, int64_t t) {
  const int64_t G = p.G;
  const uint8_t* w = p.qw + t * G * 256;                         // [G, 4, 64]
  const S* sc = static_cast<const S*>(p.scales) + t * G * 16;    // [G, 16]
  const __m512i nib = _mm512_set1_epi8(0x0F);
  __m512 acc[MB];
  for (int m = 0; m < MB; ++m) acc[m] = _mm512_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    for (int line = 0; line < 4; ++line) _mm_prefetch(reinterpret_cast<const char*>(w + (g + kTiledPrefetchGroups) * 256 + 64 * line), _MM_HINT_T1);
    __m512i al[MB], ah[MB];
    for (int m = 0; m < MB; ++m) al[m] = ah[m] = _mm512_setzero_si512();
    for (int j = 0; j < 4; ++j) {
      const __m512i v = _mm512_loadu_si512(w + (g * 4 + j) * 64);
      const __m512i lo = _mm512_and_si512(v, nib), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nib);
      for (int m = 0; m < MB; ++m) {
        const int32_t* xq = p.xq + ((m0 + m) * G + g) * 16 + 4 * j;  // xl lo, xl hi, xh lo, xh hi
        al[m] = _mm512_dpbusd_epi32(al[m], lo, _mm512_set1_epi32(xq[0]));
        al[m] = _mm512_dpbusd_epi32(al[m], hi, _mm512_set1_epi32(xq[1]));
        ah[m] = _mm512_dpbusd_epi32(ah[m], lo, _mm512_set1_epi32(xq[2]));
        ah[m] = _mm512_dpbusd_epi32(ah[m], hi, _mm512_set1_epi32(xq[3]));
      }
    }
    const __m512 s = scales16_as_float(sc + g * 16, __mmask16(0xFFFF));  // the 16 rows' scales
    for (int m = 0; m < MB; ++m) {
      const int64_t i = (m0 + m) * G + g;
      const __m512i q = _mm512_sub_epi32(_mm512_add_epi32(_mm512_slli_epi32(ah[m], 8), al[m]), _mm512_set1_epi32(p.xsum8[i]));
      acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q), _mm512_mul_ps(s, _mm512_set1_ps(p.dx[i])), acc[m]);
    }
  }
  const __m512 b = p.bias ? _mm512_loadu_ps(p.bias + 16 * t) : _mm512_setzero_ps();
  for (int m = 0; m < MB; ++m) _mm512_storeu_ps(p.out + (m0 + m) * p.N + 16 * t, _mm512_add_ps(acc[m], b));
}

// Tiles [t_begin, t_end) against every x row, four rows a pass (the unpacked vectors feed 16 vpdpbusd), while
// the tile's weights (K / 2 * 16 bytes: 12 KB at K = 1536) stay in L1/L2.
template <class S>
inline void tiled_rows(const TiledProblem& p, int64_t t_begin, int64_t t_end) {
  for (int64_t t = t_begin; t < t_end; ++t) {
    int64_t m = 0;
    for (; m + 4 <= p.M; m += 4) tiled_tile<S, 4>(p, m, t);
    for (; m < p.M; ++m) tiled_tile<S, 1>(p, m, t);
  }
}

void qgemm_tiled_rows(const TiledProblem& p, int64_t t_begin, int64_t t_end) {
  switch (p.scale_type) {
    case ScaleType::f32: tiled_rows<float>(p, t_begin, t_end); break;
    case ScaleType::bf16: tiled_rows<Bf16Bits>(p, t_begin, t_end); break;
    case ScaleType::f16: tiled_rows<F16Bits>(p, t_begin, t_end); break;
  }
}
