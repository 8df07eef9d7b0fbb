// Quantized GEMM kernels, written once over an instruction-set "Isa" traits struct and instantiated by
// qgemm_isa_avx2.cpp and qgemm_isa_avx512.cpp (each compiled with its own flags, each in its own
// namespace). The ATen-free problem struct and the packed layout are described in qgemm_problem.h;
// the plain-PyTorch reference is gemma4.ops.reference.qgemm.
//
// Method: weights are dequantized in registers to float32 (exactly: q * scale has <= 8 + 24 bits) and
// multiplied with float32 activations by FMA, so the only rounding is float32 accumulation -- no
// int8 activation quantization (llama.cpp's trick is faster but its error is several times that of a
// bf16 matmul, which breaks the project's error rule).
//
// Blocking: a tile is MB activation rows x NR weight rows over the whole K, with MB*NR*P independent
// accumulators (P partial sums per pair keep >= 8 FMA chains in flight to hide FMA latency). Decode
// (M = 1) uses 1 x 4 tiles; larger M uses 4 x 2 tiles, so each unpacked weight vector feeds 4 FMAs.
// Weight rows are walked in blocks of kQgemmRowBlock so a block stays in L2 while the x row blocks sweep it.
//
// This header must be included inside an ISA-specific namespace, after the Isa struct is defined.
// It includes only its sibling qgemm_g32.h (intrinsics too), so no inline function from another header
// is compiled with the ISA's flags here.

// A finished MB x NR tile: out[m0 + m, n0 + r] = the lanes of acc[m][r] summed, plus the bias.
template <int MB, int NR>
inline void store_tile(const QgemmProblem& p, int64_t m0, int64_t n0, const typename Isa::F (&acc)[MB][NR]) {
#pragma GCC unroll 4
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < NR; ++r) {
      float y = Isa::hsum(acc[m][r]);
      if (p.bias) y += p.bias[n0 + r];
      p.out[(m0 + m) * p.N + n0 + r] = y;
    }
}

// Scale element -> float32 (exact for all three types).
inline float scale_to_float(float s) { return s; }
struct Bf16Bits { uint16_t v; };
struct F16Bits { uint16_t v; };
inline float scale_to_float(Bf16Bits s) {
  uint32_t u = static_cast<uint32_t>(s.v) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}
inline float scale_to_float(F16Bits s) { return _cvtsh_ss(s.v); }

// One 32-weight run of a weight row as float32 q * scale, in K order (32 / Isa::L vectors), rounded once: int4,
// stored as u = q + 8, as u * s - 8 s in one FMA (exact but where 8 s overflows), int8 as q * s. src: the run's
// first byte; s, off: its scale and -8 * scale, broadcast.
template <int BITS>
inline void dequant_run(const uint8_t* src, typename Isa::F s, typename Isa::F off, typename Isa::F* w) {
  constexpr int V = 32 / Isa::L;
  if constexpr (BITS == 4) {
    Isa::unpack_u4(src, w);
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) w[v] = Isa::fmadd(w[v], s, off);
  } else {
    Isa::load_i8(reinterpret_cast<const int8_t*>(src), w);
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) w[v] = Isa::mul(w[v], s);
  }
}

template <class S, int BITS, int MB, int NR>
inline void qgemm_tile(const QgemmProblem& p, int64_t m0, int64_t n0) {
  using F = typename Isa::F;
  constexpr int L = Isa::L;                 // float32 lanes per vector
  constexpr int V = 32 / L;                 // vectors per 32-weight run
  constexpr int P = MB * NR >= 8 ? 1 : 2;   // partial sums per (m, r)
  const int64_t K = p.K, G = p.G;
  const int64_t row_bytes = BITS == 4 ? K / 2 : K;
  const S* scales = static_cast<const S*>(p.scales);
  const float* x0 = p.x + m0 * K;

  F acc[MB][NR][P];  // the current block of kQgemmSumRuns runs
  F tot[MB][NR];     // the blocks' sums
#pragma GCC unroll 16
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < NR; ++r) {
      tot[m][r] = Isa::zero();
      for (int q = 0; q < P; ++q) acc[m][r][q] = Isa::zero();
    }
  // Blocked summation: a lane's running sum over all of K (264 terms at K = 2112) grows its rounding
  // error past plain PyTorch's (MKL sums in blocks); folding every kQgemmSumRuns runs keeps it level.
  const auto fold = [&] {
#pragma GCC unroll 16
    for (int m = 0; m < MB; ++m)
      for (int r = 0; r < NR; ++r) {
        F a = acc[m][r][0];
        if constexpr (P == 2) a = Isa::add(a, acc[m][r][1]);
        tot[m][r] = Isa::add(tot[m][r], a);
        for (int q = 0; q < P; ++q) acc[m][r][q] = Isa::zero();
      }
  };
  int runs_in_block = 0;

  for (int64_t g = 0; g < G; ++g) {
    F s[NR], off[NR];
#pragma GCC unroll 4
    for (int r = 0; r < NR; ++r) {
      const float sc = scale_to_float(scales[(n0 + r) * G + g]);
      s[r] = Isa::set1(sc);
      off[r] = Isa::set1(-8.0f * sc);  // int4's offset (dequant_run)
    }
    const int64_t k_end = (g + 1) * p.group;
    for (int64_t k = g * p.group; k < k_end; k += 32) {
#pragma GCC unroll 4
      for (int r = 0; r < NR; ++r) {
        F w[V];
        dequant_run<BITS>(p.qw + (n0 + r) * row_bytes + (BITS == 4 ? k / 2 : k), s[r], off[r], w);
#pragma GCC unroll 4
        for (int m = 0; m < MB; ++m)
#pragma GCC unroll 4
          for (int v = 0; v < V; ++v)
            acc[m][r][v % P] = Isa::fmadd(w[v], Isa::loadx(x0 + m * K + k + v * L), acc[m][r][v % P]);
      }
      if (++runs_in_block == kQgemmSumRuns) {
        fold();
        runs_in_block = 0;
      }
    }
  }
  fold();
  store_tile<MB, NR>(p, m0, n0, tot);
}

// The int16-activation tile (see qgemm_problem.h): per x block, exact int32 sums of w * x16 by
// pmaddwd, then acc += float(sum) * (weight scale * x block scale).
template <class S, int BITS, int MB, int NR>
inline void qgemm_tile_i16(const QgemmProblem& p, int64_t m0, int64_t n0) {
  using F = typename Isa::F;
  using I = typename Isa::I;
  constexpr int W = 32 / Isa::L16;  // int16 vectors per 32-weight run
  const int64_t K = p.K, G = p.G, XB = K / p.xblock;
  const int64_t row_bytes = BITS == 4 ? K / 2 : K;
  const S* scales = static_cast<const S*>(p.scales);
  const int16_t* x0 = p.x16 + m0 * K;
  const float* xs0 = p.xscale + m0 * XB;

  F acc[MB][NR];
#pragma GCC unroll 16
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < NR; ++r) acc[m][r] = Isa::zero();

  for (int64_t g = 0; g < G; ++g) {
    F s[NR];
#pragma GCC unroll 4
    for (int r = 0; r < NR; ++r) s[r] = Isa::set1(scale_to_float(scales[(n0 + r) * G + g]));
    for (int64_t kb = g * p.group; kb < (g + 1) * p.group; kb += p.xblock) {
      I sum[MB][NR];
#pragma GCC unroll 16
      for (int m = 0; m < MB; ++m)
        for (int r = 0; r < NR; ++r) sum[m][r] = Isa::izero();
      for (int64_t k = kb; k < kb + p.xblock; k += 32) {
#pragma GCC unroll 4
        for (int r = 0; r < NR; ++r) {
          I w[W];
          const uint8_t* src = p.qw + (n0 + r) * row_bytes + (BITS == 4 ? k / 2 : k);
          // The next tile's rows, one cache line per line read here: the hardware prefetcher does not
          // follow NR interleaved row streams, and without this decode runs at DRAM latency, not bandwidth.
          // Into L2 (T1): NR rows ahead is 48 KB at K = 12288, past L1, and into L1 the lines in flight
          // evicted x. int8 per channel (the default int8) at one row of x from DRAM, 2 threads, 1536 x 12288
          // / 12288 x 1536: 649-790 / 938-1067 us into L1, 590-661 / 641-680 into L2; E2B's int8 qhead
          // decode step 106.8 -> 81.4 ms (one process, alternating; docs/quantization.md).
          if ((k & (BITS == 4 ? 127 : 63)) == 0) __builtin_prefetch(src + NR * row_bytes, 0, 2);
          if constexpr (BITS == 4) {
            Isa::unpack_i16_q4(src, w);
          } else {
            Isa::unpack_i16_q8(reinterpret_cast<const int8_t*>(src), w);
          }
#pragma GCC unroll 4
          for (int m = 0; m < MB; ++m)
#pragma GCC unroll 2
            for (int v = 0; v < W; ++v)
              sum[m][r] = Isa::add_i32(sum[m][r], Isa::madd16(w[v], Isa::load16(x0 + m * K + k + v * Isa::L16)));
        }
      }
#pragma GCC unroll 4
      for (int m = 0; m < MB; ++m) {
        const F dx = Isa::set1(xs0[m * XB + kb / p.xblock]);
#pragma GCC unroll 4
        for (int r = 0; r < NR; ++r) acc[m][r] = Isa::fmadd(Isa::to_float(sum[m][r]), Isa::mul(dx, s[r]), acc[m][r]);
      }
    }
  }
  store_tile<MB, NR>(p, m0, n0, acc);
}

// Every activation row against weight rows [n0, n1), in tiles of MB x NR.
template <class S, int BITS, int MB, int NR>
inline void qgemm_row_block(const QgemmProblem& p, int64_t m0, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + NR <= n1; n += NR) qgemm_tile<S, BITS, MB, NR>(p, m0, n);
  for (; n < n1; ++n) qgemm_tile<S, BITS, MB, 1>(p, m0, n);
}

template <class S, int BITS, int MB, int NR>
inline void qgemm_row_block_i16(const QgemmProblem& p, int64_t m0, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + NR <= n1; n += NR) qgemm_tile_i16<S, BITS, MB, NR>(p, m0, n);
  for (; n < n1; ++n) qgemm_tile_i16<S, BITS, MB, 1>(p, m0, n);
}

#include "quant/qgemm_g32.h"

template <class S, int BITS>
inline void qgemm_rows_typed(const QgemmProblem& p, int64_t n_begin, int64_t n_end) {
  if (p.x16p || p.x16w) {
    g32_rows<S, BITS>(p, n_begin, n_end);
    return;
  }
  if (p.x16) {
    for (int64_t nb = n_begin; nb < n_end; nb += kQgemmRowBlock) {
      const int64_t ne = nb + kQgemmRowBlock < n_end ? nb + kQgemmRowBlock : n_end;
      int64_t m = 0;
      for (; m + 2 <= p.M; m += 2) qgemm_row_block_i16<S, BITS, 2, 2>(p, m, nb, ne);
      if (m < p.M) qgemm_row_block_i16<S, BITS, 1, 4>(p, m, nb, ne);
    }
    return;
  }
  for (int64_t nb = n_begin; nb < n_end; nb += kQgemmRowBlock) {
    const int64_t ne = nb + kQgemmRowBlock < n_end ? nb + kQgemmRowBlock : n_end;
    int64_t m = 0;
    for (; m + 4 <= p.M; m += 4) qgemm_row_block<S, BITS, 4, 2>(p, m, nb, ne);
    switch (p.M - m) {
      case 3: qgemm_row_block<S, BITS, 3, 2>(p, m, nb, ne); break;
      case 2: qgemm_row_block<S, BITS, 2, 2>(p, m, nb, ne); break;
      case 1: qgemm_row_block<S, BITS, 1, 4>(p, m, nb, ne); break;
      default: break;
    }
  }
}

template <int BITS>
inline void qgemm_rows_bits(const QgemmProblem& p, int64_t n_begin, int64_t n_end) {
  switch (p.scale_type) {
    case ScaleType::f32: qgemm_rows_typed<float, BITS>(p, n_begin, n_end); break;
    case ScaleType::bf16: qgemm_rows_typed<Bf16Bits, BITS>(p, n_begin, n_end); break;
    case ScaleType::f16: qgemm_rows_typed<F16Bits, BITS>(p, n_begin, n_end); break;
  }
}

void qgemm_rows(const QgemmProblem& p, int64_t n_begin, int64_t n_end) {
  if (p.bits == 4) {
    qgemm_rows_bits<4>(p, n_begin, n_end);
  } else {
    qgemm_rows_bits<8>(p, n_begin, n_end);
  }
}
