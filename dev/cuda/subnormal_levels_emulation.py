"""Checks on the CPU that the x-resident GEMV's SubnormalLevels (csrc/quant/qgemv_resident.cuh) give the same bf16
weights as its RoundedLevels, bit for bit, from the same 32-bit words of int4 levels and the same bf16 scales.

RoundedLevels: the nibble at bits `shift` of each half OR 0x4300 is 128 + u; minus 136 is q (exact); times s,
rounded once to bf16. SubnormalLevels: the nibble moved to bits 4-7 is the bf16 number 16 u 2^-133; one fma with
s 2^129 and -8 s, rounded once. Both are emulated exactly (float64 holds every product and sum here; bf16 is the
top half of a float32, rounded to nearest even), over every nibble value, random words, and scales drawn across
bf16's whole range (subnormal, tiny, ordinary, near the 0.5 limit, beyond it), 0 and NaN. The one difference
allowed is the sign of a zero weight (q = 0 with s < 0: -0 against the fma's +0), which no sum can see. Units whose scales
fail `finite()` take RoundedLevels on the GPU, so they are only checked to be flagged. What this cannot check is
the hardware: that the GPU's fma.rn.bf16x2 keeps subnormal inputs (PTX gives it no flush-to-zero); the CUDA tests
do, on a GPU.

    python dev/cuda/subnormal_levels_emulation.py
"""
import numpy as np


def bf16_bits_to_f64(h: np.ndarray) -> np.ndarray:
    return (h.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def f64_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round to bf16, nearest even (x must be exact in float32, as every value here is, or beyond its range: inf)."""
    with np.errstate(over="ignore"):
        f = x.astype(np.float32)
    exact = np.isinf(f) | np.isnan(x) | (f.astype(np.float64) == x)
    assert exact.all(), "not exact in float32"
    b = f.view(np.uint32)
    rounded = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    return np.where(np.isnan(f), 0x7FC0, rounded).astype(np.uint16)


def halves(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (w & 0xFFFF).astype(np.uint16), (w >> 16).astype(np.uint16)


def rounded_levels(w: np.ndarray, shift: int, s: np.ndarray) -> list[np.ndarray]:
    v = ((w >> shift) & 0x000F000F) | 0x43004300
    return [f64_to_bf16_bits((bf16_bits_to_f64(h) - 136.0) * bf16_bits_to_f64(s)) for h in halves(v)]


def subnormal_levels(w: np.ndarray, shift: int, s: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """The weights, and finite(): s 2^129 did not overflow (and s is finite)."""
    sf = bf16_bits_to_f64(s)
    mul = f64_to_bf16_bits(bf16_bits_to_f64(f64_to_bf16_bits(sf * 2.0**64)) * 2.0**65)  # two exact multiplies
    add = f64_to_bf16_bits(sf * -8.0)
    finite = (mul & 0x7F80) != 0x7F80
    v = ((w << 4) if shift == 0 else (w >> (shift - 4))) & 0x00F000F0
    out = [f64_to_bf16_bits(bf16_bits_to_f64(h) * bf16_bits_to_f64(mul) + bf16_bits_to_f64(add)) for h in halves(v)]
    return out, finite


def scales(rng: np.random.Generator, n: int) -> np.ndarray:
    """bf16 bit patterns of both signs: random exponents across the range, the edges, 0 and NaN."""
    exps = rng.integers(0, 127, n)  # biased exponents 0 (subnormal) .. 126 (just under 1)
    bits = (exps << 7) | rng.integers(0, 128, n)
    edges = [0x0000, 0x0001, 0x007F, 0x0080, 0x3EFF, 0x3F00, 0x3F01, 0x7F80, 0x7FC0, 0x3C00, 0x2000]
    bits = np.concatenate([bits, edges])
    sign = rng.integers(0, 2, bits.size) << 15
    return (bits | sign).astype(np.uint16)


def main() -> None:
    rng = np.random.default_rng(0)
    s = scales(rng, 200_000)
    w = rng.integers(0, 2**32, s.size, dtype=np.uint64).astype(np.uint32)
    w[:16] = np.uint32(0x11111111) * np.arange(16, dtype=np.uint32)  # every nibble value in every position
    checked = flagged = 0
    for shift in (0, 4, 8, 12):
        old = rounded_levels(w, shift, s)
        with np.errstate(invalid="ignore"):  # the flagged scales' inf * 0
            new, finite = subnormal_levels(w, shift, s)
        small = np.abs(bf16_bits_to_f64(s)) < 0.5
        assert np.array_equal(finite, small & ~np.isnan(bf16_bits_to_f64(s))), "finite() is not |s| < 0.5"
        for o, n in zip(old, new):
            bad = finite & (o != n) & ((o | n) != 0x8000)  # -0 (0 x s < 0) and +0 (8 s - 8 s) add the same
            assert not bad.any(), f"shift {shift}: {bad.sum()} weights differ, e.g. scale {s[bad][:4]}"
        checked += 2 * int(finite.sum())
        flagged += 2 * int((~finite).sum())
    print(f"SubnormalLevels == RoundedLevels bit for bit on {checked} weights; {flagged} flagged for the fallback "
          f"(|s| >= 0.5 or not finite)")


if __name__ == "__main__":
    main()
