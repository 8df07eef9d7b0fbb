"""GGUF block dequantization bit-exact against a reference written here, weight by weight, from llama.cpp's
block definitions (and against the `gguf` package's own dequantize); Q4_0 / Q8_0 convert into the packed
format with nothing rounded."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gemma4.quant import formats, gguf_blocks

TYPES = ["Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K", "F32", "F16", "BF16"]
# byte offsets of each block's fp16 scale fields
FP16_FIELDS = {"Q8_0": [0], "Q4_0": [0], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}
EXTREME_F16 = [65504.0, -65504.0, 6.1e-5, 6e-8, -3e-7, 0.0, 1.0]


def random_bytes(qtype: str, n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """Random blocks: every bit pattern of the level bytes, finite fp16 scales (ordinary and extreme)."""
    per, size = gguf_blocks.BLOCK[qtype]
    blocks = n * k // per
    if qtype in ("F32", "F16", "BF16"):
        dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[qtype]
        return (torch.randn(n, k, generator=gen) * 3).to(dtype).reshape(-1).view(torch.uint8)
    raw = torch.randint(0, 256, (blocks, size), dtype=torch.uint8, generator=gen)
    for off in FP16_FIELDS[qtype]:
        d = (torch.randn(blocks, generator=gen) * 0.01).to(torch.float16)
        d[: len(EXTREME_F16)] = torch.tensor(EXTREME_F16, dtype=torch.float16)[: blocks]
        raw[:, off: off + 2] = d.view(torch.uint8).reshape(blocks, 2)
    return raw.reshape(-1)


def reference(raw: np.ndarray, qtype: str, n: int, k: int) -> np.ndarray:
    """llama.cpp's dequantize_row_* for each block, one weight at a time, in float32."""
    f16 = lambda b, o: np.float32(np.frombuffer(bytes(b[o:o + 2]), np.float16)[0])  # noqa: E731
    per, size = gguf_blocks.BLOCK[qtype]
    if qtype in ("F32", "F16"):
        return np.frombuffer(raw.tobytes(), np.float32 if qtype == "F32" else np.float16).astype(np.float32).reshape(n, k)
    if qtype == "BF16":
        return (np.frombuffer(raw.tobytes(), np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(n, k)
    out = np.zeros(n * k, np.float32)
    for bi in range(n * k // per):
        b, y = raw[bi * size:(bi + 1) * size], out[bi * per:(bi + 1) * per]
        if qtype == "Q8_0":
            d = f16(b, 0)
            for j in range(32):
                y[j] = d * np.float32(np.int8(b[2 + j]))
        elif qtype == "Q4_0":
            d = f16(b, 0)
            for j in range(16):
                y[j] = d * np.float32((int(b[2 + j]) & 0xF) - 8)
                y[j + 16] = d * np.float32((int(b[2 + j]) >> 4) - 8)
        elif qtype in ("Q4_K", "Q5_K"):
            d, dmin, sc = f16(b, 0), f16(b, 2), [int(v) for v in b[4:16]]

            def scale_min(j):
                if j < 4:
                    return sc[j] & 63, sc[j + 4] & 63
                return (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4), (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4)
            qs = [int(v) for v in b[size - 128:]]
            qh = [int(v) for v in b[16:48]] if qtype == "Q5_K" else None
            for c in range(4):  # 64 weights: sub-blocks 2c (low nibbles) and 2c + 1 (high nibbles)
                (s1, m1), (s2, m2) = scale_min(2 * c), scale_min(2 * c + 1)
                d1, mm1, d2, mm2 = d * np.float32(s1), dmin * np.float32(m1), d * np.float32(s2), dmin * np.float32(m2)
                for lane in range(32):
                    q1, q2 = qs[32 * c + lane] & 0xF, qs[32 * c + lane] >> 4
                    if qh is not None:
                        q1 += 16 if qh[lane] & (1 << (2 * c)) else 0
                        q2 += 16 if qh[lane] & (2 << (2 * c)) else 0
                    y[64 * c + lane] = d1 * np.float32(q1) - mm1
                    y[64 * c + 32 + lane] = d2 * np.float32(q2) - mm2
        else:  # Q6_K
            ql, qh = [int(v) for v in b[0:128]], [int(v) for v in b[128:192]]
            sc = [int(np.int8(v)) for v in b[192:208]]
            d = f16(b, 208)
            for half in range(2):
                L, H, S = ql[64 * half:], qh[32 * half:], sc[8 * half:]
                for lane in range(32):
                    i = lane // 16
                    q1 = ((L[lane] & 0xF) | ((H[lane] & 3) << 4)) - 32
                    q2 = ((L[lane + 32] & 0xF) | (((H[lane] >> 2) & 3) << 4)) - 32
                    q3 = ((L[lane] >> 4) | (((H[lane] >> 4) & 3) << 4)) - 32
                    q4 = ((L[lane + 32] >> 4) | (((H[lane] >> 6) & 3) << 4)) - 32
                    for quarter, q in enumerate((q1, q2, q3, q4)):
                        y[128 * half + 32 * quarter + lane] = d * np.float32(S[i + 2 * quarter]) * np.float32(q)
    return out.reshape(n, k)


@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_matches_the_block_definition(qtype):
    gen = torch.Generator().manual_seed(torch.randint(0, 2**31, ()).item())
    n, k = 3, 512
    raw = random_bytes(qtype, n, k, gen)
    got = gguf_blocks.dequantize(raw, qtype, (n, k))
    want = torch.from_numpy(reference(raw.numpy(), qtype, n, k))
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.nan_to_num(), want.nan_to_num()), (got - want).abs().max()
    gguf = pytest.importorskip("gguf")  # requirements-dev pins it: the format's maintainers' reference too
    theirs = gguf.quants.dequantize(raw.numpy().reshape(n, -1), getattr(gguf.GGMLQuantizationType, qtype))
    assert torch.equal(got.nan_to_num(), torch.from_numpy(np.asarray(theirs, np.float32)).reshape(n, k).nan_to_num())


def test_q4_0_and_q8_0_convert_without_rounding():
    """Q4_0 / Q8_0 become gemma4's int4 / int8 groups of 32 with the same fp16 scales: dequantizing the
    packed weight gives exactly the GGUF weights, and every int4 level occurs."""
    gen = torch.Generator().manual_seed(0)
    n, k = 8, 704  # 26B-A4B's expert width: 22 blocks of 32
    for qtype, convert in (("Q4_0", gguf_blocks.q4_0_to_packed), ("Q8_0", gguf_blocks.q8_0_to_packed)):
        raw = random_bytes(qtype, n, k, gen)
        qweight, scales = convert(raw, (n, k))
        assert scales.dtype == torch.float16 and formats.group_of(qweight, scales) == 32
        assert torch.equal(formats.dequantize(qweight, scales), gguf_blocks.dequantize(raw, qtype, (n, k)))
        if qtype == "Q4_0":
            assert set(formats.levels(qweight).unique().tolist()) == set(range(-8, 8))


def test_bad_sizes_and_types():
    with pytest.raises(ValueError, match="expected 36 bytes"):
        gguf_blocks.dequantize(torch.zeros(35, dtype=torch.uint8), "Q4_0", (2, 32))
    with pytest.raises(ValueError, match="not whole blocks of 256"):
        gguf_blocks.dequantize(torch.zeros(144, dtype=torch.uint8), "Q4_K", (1, 128))
    with pytest.raises(ValueError, match="IQ2_XS is not supported"):
        gguf_blocks.dequantize(torch.zeros(4, dtype=torch.uint8), "IQ2_XS", (1, 4))
