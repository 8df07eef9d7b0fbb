// Decode GEMV for int4 weights in groups of 32 (Q4_0, Google's QAT, w4a16-ct): y = x @ dequant(W)^T for
// one row of int16-quantized activations. Written with AVX2 intrinsics and included by both ISA files
// (AVX-512 implies AVX2). The general tile (qgemm_tile_i16) folds every 32-weight block into float32
// on its own -- convert, two multiplies -- which costs as much as the block's arithmetic; this one
// reduces eight blocks' int32 sums together and folds them with one convert and one FMA.
//
// Per weight row, per step of 64 weights (32 bytes: blocks b and b+1 in the two 128-bit halves), each
// int16 lane holds two bytes -- four weights, one per nibble -- so four AND/shifts give four vectors
// w0..w3 (weights 2i, 2i+16, 2i+1, 2i+17 of each block) with no byte shuffle. x is stored in the same
// lane order by the caller (QgemmProblem::x16p, see kGemvQ4LaneBlock), pmaddwd multiplies exactly into
// int32, and the unsigned nibbles u = q + 8 are corrected once per block: sum(q x) = sum(u x) - 8 sum(x).
// Three hadds turn four steps (eight blocks) into one vector of block sums, lane L holding block
// kGemvQ4LaneBlock[L], then acc += float(sum - 8 sum x) * (weight scale * x scale). Exact int32 sums: a block's
// |sum u x| <= 32 * 15 * 32767 < 2^24.
//
// Reference: gemma4.ops.reference.qgemm. Include inside an ISA namespace, after qgemm_kernels.h's scale types.

template <class S>
inline __m256 gemv_q4_load8_scales(const S* s, int64_t count) {
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
  } else {  // the row's last, partial run of blocks: the missing ones weigh zero
    alignas(32) float f[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t i = 0; i < count; ++i) f[i] = scale_to_float(s[i]);
    v = _mm256_load_ps(f);
  }
  return _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(kGemvQ4LaneBlock[0], kGemvQ4LaneBlock[1], kGemvQ4LaneBlock[2],
                                                       kGemvQ4LaneBlock[3], kGemvQ4LaneBlock[4], kGemvQ4LaneBlock[5],
                                                       kGemvQ4LaneBlock[6], kGemvQ4LaneBlock[7]));
}

// int32 products of one 64-weight step (blocks 2t, 2t+1 of the row) with x: low half block 2t, high 2t+1.
inline __m256i gemv_q4_step(const uint8_t* w, const int16_t* xp) {
  const __m256i nib = _mm256_set1_epi16(0x000F);
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));  // 4 weights per int16 lane
  const __m256i w0 = _mm256_and_si256(v, nib);
  const __m256i w1 = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
  const __m256i w2 = _mm256_and_si256(_mm256_srli_epi16(v, 8), nib);
  const __m256i w3 = _mm256_srli_epi16(v, 12);
  const auto x = [xp](int j) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp + 16 * j)); };
  return _mm256_add_epi32(_mm256_add_epi32(_mm256_madd_epi16(w0, x(0)), _mm256_madd_epi16(w1, x(1))),
                          _mm256_add_epi32(_mm256_madd_epi16(w2, x(2)), _mm256_madd_epi16(w3, x(3))));
}

template <class S>
inline float gemv_q4_row(const QgemmProblem& p, int64_t n) {
  const int64_t B = p.K / 32;                               // blocks (= groups) per row, even
  const uint8_t* w = p.qw + n * (p.K / 2);                  // [K / 2] bytes
  const S* sc = static_cast<const S*>(p.scales) + n * B;    // [B]
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b0 = 0; b0 < B; b0 += 8) {
    const int64_t steps = B - b0 >= 8 ? 4 : (B - b0) / 2;
    // The run 2 KB ahead (measured: 1.2-1.4x over the hardware prefetcher alone on this EPYC).
    __builtin_prefetch(w + b0 * 16 + 2048);
    __builtin_prefetch(w + b0 * 16 + 2048 + 64);
    __m256i s[4];
    for (int t = 0; t < 4; ++t)
      s[t] = t < steps ? gemv_q4_step(w + (b0 + 2 * t) * 16, p.x16p + (b0 + 2 * t) * 32) : _mm256_setzero_si256();
    __m256i sum = _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]));  // lane order
    sum = _mm256_sub_epi32(sum, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.xsum8p + b0)));
    const __m256 scale = _mm256_mul_ps(gemv_q4_load8_scales(sc + b0, B - b0 < 8 ? B - b0 : 8),
                                       _mm256_loadu_ps(p.dxp + b0));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), scale, acc);
  }
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  return _mm_cvtss_f32(h);
}

template <class S>
inline void gemv_q4_rows(const QgemmProblem& p, int64_t n_begin, int64_t n_end) {
  for (int64_t n = n_begin; n < n_end; ++n) {
    float y = gemv_q4_row<S>(p, n);
    if (p.bias) y += p.bias[n];
    p.out[n] = y;
  }
}
