"""Writes a variant of the x-resident GEMV (csrc/quant/qgemv_resident.cuh) into a copy of the tree, so that a device
call can time it beside the tree (dev/device_runs/resident_energy.sh, resident_ncu_variants.sh). Two kinds:

One part of the per-span work taken out, to see what it costs in time and board power (wrong sums, timing only):
  nolds  the x fragments are not read from shared memory (the MMA's B operand is the weight fragment)
  nodeq  the weights go to the MMA as loaded (a shift, no conversion to bf16 and no multiply by the scale)
  nomma  no MMA: the fragments are folded into the accumulator by a few integer instructions
  noscale  no scale loads: each span's two scales are made from its run index by a few instructions (nodeq drops
           the scale loads too, as dead code)
  noweight  no weight loads: each span's words are made from its run index by a few integer instructions

The same work in another shape or order (right sums):
  w20 / w24 / w32  20, 24 or 32 warps a block (measured with one-span units, as w20 / w24g1 / w32g1, at d3a3d34)
  deqfirst  a span's eight steps dequantized first (32 registers of A fragments), then its LDS and MMAs: the
           dequantization as 32 independent chains instead of a step's 4 between MMAs
  ldsall  a span's eight x fragments asked for from shared memory before its first MMA, not each just before its
          step's MMAs
  startpf  the warp's next four units' weight and scale lines asked into L2 (`prefetch.global.L2`, one line a
           row and unit) before the x copy, so that HBM is busy while x fills shared memory (one row of the x
           copy waits for nothing else; at 16 rows it reads 172 KB a block from L2)
  pfnext  every unit, the unit after the one just asked for (u + 2) asked into L2 (`prefetch.global.L2`): lanes
          t = 0, 1 its rows' 128-byte weight lines (one a row), t = 2, 3 their scale lines, from the cursor's row
          pointers (a few instructions, no registers held): two units' bytes in flight a warp, one in registers
  pfnext2  the same for u + 3 (within the tile; none at a tile's last unit); both lost 10-12 us (H100, thirty-fourth
           session)
  l2hint  the weight and scale loads with the `.L2::256B` prefetch hint (the tree: 128B on the weights, none on the
          scales): a row's 256-byte block of weights is 4 spans, of 2-byte g32 scales 32 spans

The instruction stream of another design on this layout (wrong sums, timing only):
  scaleafter  the scale-after-MMA form (dev/cuda/experiments/README.md, end of "The warpgroup MMA loop measured"):
              a step's A fragment is the levels 128 + u alone (a shift and a LOP3, no HADD2 / HMUL2), each run's
              two steps go into a run accumulator whose C is the run's -136 sum(x) (one broadcast LDS a run), and
              one FFMA an output and run adds it times the fp32 scale; a lane's scales are 8-byte loads (the 4
              runs of a span a row) converted at use. That form needs a weight layout whose MMAs keep runs apart
              (a lane holding a quarter of each of 4 runs); on this one the runs mix, so only the time is right.
              Its scale loads assume 2-byte scales in groups of 32 (the timed shapes' int4 g32 bf16)

Variants join with "_": noweight_w24 is both edits. Measured: dev/cuda/experiments/README.md.

    python dev/cuda/resident_energy_variants.py TREE VARIANT
"""
import sys
from pathlib import Path

NEXT_LOAD = "    if (u + 1 < u1) next.load(nxt, a, tile0, g, t);\n"


def prefetch_unit(unit: str) -> str:
    """pfnext: the lines of the cursor's tile at unit `unit` into L2 (lanes t = 0, 1 the weights of rows g and
    g + 8, t = 2, 3 their scales)."""
    return f"""    {{  // pfnext: a later unit's weight and scale lines into L2, no registers held
      const int pu = {unit};
      const void* p = t < 2 ? static_cast<const void*>(next.w[t] + pu * 128)
                            : static_cast<const void*>(next.s[t - 2] + ((8 * pu) >> a.scale_shift));
      asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
    }}
"""


# The head of mma_span's step loop: a step's dequantized A fragment (deqfirst and scaleafter edit it).
STEP_DEQUANT = """#pragma unroll
  for (int s = 0; s < 8; ++s) {
    // the dequantized weights, each rounded once from the exact q * scale (TcScale: in MT, or via fp32)
    const uint32_t w[4] = {scaled_pair<MT>(weight_pair<MT, 4>(w0, s, 0), s0),
                           scaled_pair<MT>(weight_pair<MT, 4>(w1, s, 0), s1),
                           scaled_pair<MT>(weight_pair<MT, 4>(w0, s, 1), s0),
                           scaled_pair<MT>(weight_pair<MT, 4>(w1, s, 1), s1)};"""


SCALE_AFTER = [
    ("""  S s[2][2];
};""",
     """  uint2 s[2][2];  // scaleafter: the scales of the span's 4 runs a row
};"""),
    ('u.s[h][j] = s[h][rc >> a.scale_shift];',
     'u.s[h][j] = *reinterpret_cast<const uint2*>(s[h] + min((2 * unit + j) * 4, a.G - 4));'),
    ("""// acc += one span's 16 rows x 128 weights (rows g: w0, g + 8: w1) times x's NT column tiles.""",
     """// scaleafter: d = a b + c, c in registers of its own (the run's first MMA starts its accumulator)
template <typename MT>
__device__ __forceinline__ void mma16816_c(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1,
                                           float4 c) {
  if constexpr (std::is_same_v<MT, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(c.x), "f"(c.y), "f"(c.z), "f"(c.w));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(c.x), "f"(c.y), "f"(c.z), "f"(c.w));
  }
}

// acc += one span's 16 rows x 128 weights (rows g: w0, g + 8: w1) times x's NT column tiles."""),
    ("""  using Scale = TcScale<S, MT>;
  typename Scale::type s[2];
  __device__ __forceinline__ void set(const UnitLoad<S>& u, int j, bool live) {
    s[0] = Scale::make_live(u.s[0][j], live);
    s[1] = Scale::make_live(u.s[1][j], live);
  }""",
     """  uint2 s[2];  // scaleafter: 4 bf16 scales a row, zero past K
  __device__ __forceinline__ void set(const UnitLoad<S>& u, int j, bool live) {
    s[0] = live ? u.s[0][j] : make_uint2(0, 0);
    s[1] = live ? u.s[1][j] : make_uint2(0, 0);
  }"""),
    (STEP_DEQUANT,
     """  // scaleafter: a run's -136 sum(x) for the lane's two x columns of each tile, twice (the C fragment's rows g and
  // g + 8: one LDS.128 a tile lands as the MMA's C quad, no moves), a stand-in read of x's bytes broadcast among
  // the lanes of one t, as the real sums would be
  const float4* cs = reinterpret_cast<const float4*>(xs) + (int64_t(span) * 4 * 4 + lane % 4) * NT;
  constexpr uint32_t kLevelBits = std::is_same_v<MT, __nv_bfloat16> ? 0x43004300u : 0x64006400u;
  float racc[NT][4];  // run s / 2's sums
#pragma unroll
  for (int s = 0; s < 8; ++s) {
    const int r = s / 2;
    const uint32_t w[4] = {lop3_and_or(w0[s / 2] >> (8 * (s % 2)), 0x000F000Fu, kLevelBits),
                           lop3_and_or(w1[s / 2] >> (8 * (s % 2)), 0x000F000Fu, kLevelBits),
                           lop3_and_or(w0[s / 2] >> (8 * (s % 2) + 4), 0x000F000Fu, kLevelBits),
                           lop3_and_or(w1[s / 2] >> (8 * (s % 2) + 4), 0x000F000Fu, kLevelBits)};"""),
    ("""#pragma unroll
    for (int nt = 0; nt < NT; ++nt) mma16816<MT>(acc[nt], w, b[2 * nt], b[2 * nt + 1]);
  }
}""",
     """#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      if (s % 2 == 0) {
        mma16816_c<MT>(racc[nt], w, b[2 * nt], b[2 * nt + 1], cs[r * 4 * NT + nt]);
      } else {
        mma16816<MT>(racc[nt], w, b[2 * nt], b[2 * nt + 1]);
      }
    }
    if (s % 2 == 0) continue;
    // the scales of run r, rows g and g + 8, bf16 bits to fp32 at use
    const float f0 = __uint_as_float(r % 2 == 0 ? (r < 2 ? s0.x : s0.y) << 16 : (r < 2 ? s0.x : s0.y) & 0xFFFF0000u);
    const float f1 = __uint_as_float(r % 2 == 0 ? (r < 2 ? s1.x : s1.y) << 16 : (r < 2 ? s1.x : s1.y) & 0xFFFF0000u);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      acc[nt][0] = fmaf(f0, racc[nt][0], acc[nt][0]);
      acc[nt][1] = fmaf(f0, racc[nt][1], acc[nt][1]);
      acc[nt][2] = fmaf(f1, racc[nt][2], acc[nt][2]);
      acc[nt][3] = fmaf(f1, racc[nt][3], acc[nt][3]);
    }
  }
}"""),
]

EDITS = {
    "nolds": [("*reinterpret_cast<const uint4*>(xl + s * 32 * 2 * NT)", "make_uint4(w[0], w[1], w[2], w[3])")],
    "nodeq": [(
        """    const uint32_t w[4] = {scaled_pair<MT>(weight_pair<MT, 4>(w0, s, 0), s0),
                           scaled_pair<MT>(weight_pair<MT, 4>(w1, s, 0), s1),
                           scaled_pair<MT>(weight_pair<MT, 4>(w0, s, 1), s0),
                           scaled_pair<MT>(weight_pair<MT, 4>(w1, s, 1), s1)};""",
        """    (void)s0, (void)s1;
    const uint32_t w[4] = {w0[s / 2], w1[s / 2], w0[s / 2] >> 4, w1[s / 2] >> 4};""")],
    "noscale": [("u.s[h][j] = s[h][rc >> a.scale_shift];",
                 "u.s[h][j] = S(float((rc + h) & 7) * 0.25f + 0.5f);")],
    "noweight": [("load_stream<4, true>(w[h] + int64_t(rc) * 16, u.w[h][j]);",
                  "for (int i = 0; i < 4; ++i) u.w[h][j][i] = "
                  "uint32_t(rc) * 0x9E3779B1u + uint32_t(i * 0x7F4A7C15 + h);")],
    "w20": [("constexpr int kResWarps = 16;", "constexpr int kResWarps = 20;")],
    "w24": [("constexpr int kResWarps = 16;", "constexpr int kResWarps = 24;")],
    "deqfirst": [(
        STEP_DEQUANT,
        """  uint32_t wf[8][4];
#pragma unroll
  for (int s = 0; s < 8; ++s) {
    wf[s][0] = scaled_pair<MT>(weight_pair<MT, 4>(w0, s, 0), s0);
    wf[s][1] = scaled_pair<MT>(weight_pair<MT, 4>(w1, s, 0), s1);
    wf[s][2] = scaled_pair<MT>(weight_pair<MT, 4>(w0, s, 1), s0);
    wf[s][3] = scaled_pair<MT>(weight_pair<MT, 4>(w1, s, 1), s1);
  }
#pragma unroll
  for (int s = 0; s < 8; ++s) {
    const uint32_t(&w)[4] = wf[s];""")],
    "ldsall": [
        ("""  const auto s0 = sc.s[0], s1 = sc.s[1];
""", """  const auto s0 = sc.s[0], s1 = sc.s[1];
  using XV = std::conditional_t<NT == 2, uint4, uint2>;
  XV xv[8];
#pragma unroll
  for (int s = 0; s < 8; ++s) xv[s] = *reinterpret_cast<const XV*>(xl + s * 32 * 2 * NT);
"""),
        ("const uint4 v = *reinterpret_cast<const uint4*>(xl + s * 32 * 2 * NT);", "const uint4 v = xv[s];"),
        ("const uint2 v = *reinterpret_cast<const uint2*>(xl + s * 32 * 2 * NT);", "const uint2 v = xv[s];")],
    "l2hint": [
        ("load_stream<4, true>(w[h] + int64_t(rc) * 16, u.w[h][j]);",
         """asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];\\n"
                   : "=r"(u.w[h][j][0]), "=r"(u.w[h][j][1]), "=r"(u.w[h][j][2]), "=r"(u.w[h][j][3])
                   : "l"(w[h] + int64_t(rc) * 16));"""),
        ("u.s[h][j] = s[h][rc >> a.scale_shift];", "u.s[h][j] = scale_256(s[h] + (rc >> a.scale_shift));"),
        ("""template <typename S>
struct UnitCursor {""", """template <typename S>
__device__ __forceinline__ S scale_256(const S* p) {
  S v;
  if constexpr (sizeof(S) == 2) {
    unsigned short b;
    asm volatile("ld.global.nc.L2::256B.b16 %0, [%1];\\n" : "=h"(b) : "l"(p));
    memcpy(&v, &b, 2);
  } else {
    unsigned int b;
    asm volatile("ld.global.nc.L2::256B.b32 %0, [%1];\\n" : "=r"(b) : "l"(p));
    memcpy(&v, &b, 4);
  }
  return v;
}
template <typename S>
struct UnitCursor {""")],
    "startpf": [(
        """  if (u0 < u1) next.load(set_a, a, tile0, g, t);
  cuda::pdl_wait();""",
        """  if (u0 < u1) next.load(set_a, a, tile0, g, t);
  for (int i = 0; i < 2; ++i) {  // startpf: units u0 + 1 .. u0 + 4 into L2 while x is copied
    const int u = u0 + 1 + lane / 16 + 2 * i;
    if (u >= u1) break;
    const int64_t r = min((tile0 + u / per_tile) * 16 + lane % 16, a.N - 1);
    const int rc = min(8 * (u % per_tile), a.runs - 1);
    asm volatile("prefetch.global.L2 [%0];\\n" ::"l"(a.qw + r * (a.K / 2) + int64_t(rc) * 16));
    const S* sp = static_cast<const S*>(a.scales) + r * a.G + (rc >> a.scale_shift);
    asm volatile("prefetch.global.L2 [%0];\\n" ::"l"(sp));
  }
  cuda::pdl_wait();""")],
    "pfnext": [(NEXT_LOAD, NEXT_LOAD + prefetch_unit("next.unit"))],
    "pfnext2": [(NEXT_LOAD, NEXT_LOAD + "    if (next.unit + 1 < per_tile) " + prefetch_unit("next.unit + 1").lstrip())],
    "w32": [("constexpr int kResWarps = 16;", "constexpr int kResWarps = 32;")],
    "scaleafter": SCALE_AFTER,
    "nomma": [(
        "for (int nt = 0; nt < NT; ++nt) mma16816<MT>(acc[nt], w, b[2 * nt], b[2 * nt + 1]);",
        "for (int nt = 0; nt < NT; ++nt) acc[nt][0] += __uint_as_float((w[0] ^ w[1] ^ w[2] ^ w[3] ^ b[2 * nt] ^ "
        "b[2 * nt + 1]) & 0x3F800000u);")],
}


def main(tree: str, variant: str) -> None:
    path = Path(tree) / "csrc/quant/qgemv_resident.cuh"
    text = path.read_text()
    for old, new in (edit for part in variant.split("_") for edit in EDITS[part]):
        if text.count(old) != 1:
            raise SystemExit(f"{variant}: expected one {old[:60]!r} in {path}")
        text = text.replace(old, new)
    path.write_text(text)


if __name__ == "__main__":
    main(*sys.argv[1:3])
