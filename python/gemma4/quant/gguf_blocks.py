"""GGUF (llama.cpp) quantized blocks: dequantization of every type gemma4 reads, and exact conversion of
Q4_0 / Q8_0 into the packed format of gemma4.quant.formats (so those weights stay quantized).

A GGUF tensor of shape [N, K] (ne = [K, N] in GGUF's order) is N rows of K / block_size blocks, each a
fixed number of bytes (llama.cpp's ggml-common.h layouts, little-endian):

* Q8_0  (32 weights, 34 bytes):  d fp16, qs int8[32];                   w = d * q
* Q4_0  (32 weights, 18 bytes):  d fp16, qs u8[16];                     w = d * (nibble - 8); byte j holds
                                 weight j (low nibble) and weight j + 16 (high nibble)
* Q4_K  (256 weights, 144 bytes): d fp16, dmin fp16, scales u8[12], qs u8[128]
* Q5_K  (256 weights, 176 bytes): d fp16, dmin fp16, scales u8[12], qh u8[32], qs u8[128]
* Q6_K  (256 weights, 210 bytes): ql u8[128], qh u8[64], scales int8[16], d fp16
* F32, F16, BF16: plain arrays.

K-quants: a super-block of 256 is 8 sub-blocks of 32. Q4_K/Q5_K give each sub-block a 6-bit scale sc and
6-bit min m (packed in the 12 scale bytes) and w = d * sc * q - dmin * m, q the 4-bit (Q5_K: plus a
fifth bit from qh) level; sub-blocks 2i and 2i + 1 share 32 bytes of qs (low nibbles, then high). Q6_K
has 16 sub-blocks of 16 with int8 scales and w = d * scale * (q - 32), q 6 bits from ql (4) and qh (2).

All dequantization is exact in float32 (products of an fp16 and small integers, as llama.cpp computes
them in float32), bit-identical to the `gguf` package's reference.
"""
from __future__ import annotations

import torch

__all__ = ["BLOCK", "dequantize", "q4_0_to_packed", "q8_0_to_packed"]

# type name -> (weights per block, bytes per block)
BLOCK = {"Q8_0": (32, 34), "Q4_0": (32, 18), "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210),
         "F32": (1, 4), "F16": (1, 2), "BF16": (1, 2)}


def _blocks(raw: torch.Tensor, qtype: str, shape: tuple[int, int]) -> torch.Tensor:
    """uint8 bytes -> [N * K / block, bytes per block], after checking the size."""
    n, k = shape
    per, size = BLOCK[qtype]
    if k % per:
        raise ValueError(f"{qtype}: a row of {k} weights is not whole blocks of {per}")
    want = n * (k // per) * size
    if raw.dtype != torch.uint8 or raw.numel() != want:
        raise ValueError(f"{qtype} [{n}, {k}]: expected {want} bytes, got {raw.numel()} ({raw.dtype})")
    return raw.reshape(-1, size)


def _f16(b: torch.Tensor) -> torch.Tensor:
    """[..., 2] little-endian bytes -> float32 of the fp16 they hold."""
    return b.contiguous().view(torch.float16).float()[..., 0]


def _scale_min_k4(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 12 packed bytes of a Q4_K/Q5_K super-block -> 6-bit (scales, mins) [B, 8] as float32."""
    s = s.to(torch.int32)
    lo_sc, lo_m = s[:, 0:4] & 63, s[:, 4:8] & 63                          # sub-blocks 0-3
    hi_sc = (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)                 # sub-blocks 4-7
    hi_m = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return torch.cat((lo_sc, hi_sc), 1).float(), torch.cat((lo_m, hi_m), 1).float()


def _nibbles_k(qs: torch.Tensor) -> torch.Tensor:
    """qs [B, 128] -> 4-bit levels [B, 8, 32]: sub-block 2i is the low nibbles of bytes 32i..32i+31, 2i+1
    their high nibbles."""
    q = qs.to(torch.int32).reshape(-1, 4, 32)
    return torch.stack((q & 0xF, q >> 4), 2).reshape(-1, 8, 32)


def dequantize(raw: torch.Tensor, qtype: str, shape: tuple[int, int]) -> torch.Tensor:
    """The float32 [N, K] weights a GGUF tensor of type `qtype` holds (raw: its uint8 bytes)."""
    if qtype not in BLOCK:
        raise ValueError(f"GGUF type {qtype} is not supported (supported: {', '.join(BLOCK)})")
    b = _blocks(raw, qtype, shape)
    n, k = shape
    if qtype == "F32":
        return b.contiguous().view(torch.float32).reshape(n, k).clone()
    if qtype in ("F16", "BF16"):
        return b.contiguous().view(torch.float16 if qtype == "F16" else torch.bfloat16).reshape(n, k).float()
    if qtype == "Q8_0":
        w = _f16(b[:, 0:2])[:, None] * b[:, 2:].contiguous().view(torch.int8).float()  # [B, 32]
    elif qtype == "Q4_0":
        q = b[:, 2:].to(torch.int32)
        levels = torch.cat((q & 0xF, q >> 4), 1) - 8  # [B, 32]: weights 0-15 low nibbles, 16-31 high
        w = _f16(b[:, 0:2])[:, None] * levels.float()
    elif qtype in ("Q4_K", "Q5_K"):
        d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])  # [B]
        sc, m = _scale_min_k4(b[:, 4:16])  # [B, 8]
        q = _nibbles_k(b[:, -128:])  # [B, 8, 32]
        if qtype == "Q5_K":  # fifth bit of sub-block j: bit j of qh[l]
            qh = b[:, 16:48].to(torch.int32)  # [B, 32]
            bits = (qh[:, None, :] >> torch.arange(8, dtype=torch.int32)[None, :, None]) & 1  # [B, 8, 32]
            q = q + 16 * bits
        w = (d[:, None] * sc)[..., None] * q.float() - (dmin[:, None] * m)[..., None]  # [B, 8, 32]
    else:  # Q6_K
        ql, qh = b[:, 0:128].to(torch.int32), b[:, 128:192].to(torch.int32)
        scales = b[:, 192:208].contiguous().view(torch.int8).float()  # [B, 16]
        d = _f16(b[:, 208:210])  # [B]
        halves = []
        for h in range(2):  # 128 weights each: ql[64h : 64h + 64], qh[32h : 32h + 32]
            lo, hi, bits = ql[:, 64 * h: 64 * h + 32], ql[:, 64 * h + 32: 64 * h + 64], qh[:, 32 * h: 32 * h + 32]
            quarter = [(lo & 0xF) | ((bits & 3) << 4), (hi & 0xF) | (((bits >> 2) & 3) << 4),
                       (lo >> 4) | (((bits >> 4) & 3) << 4), (hi >> 4) | (((bits >> 6) & 3) << 4)]
            halves.append(torch.stack(quarter, 1) - 32)  # [B, 4, 32]: weights 32i + l of this half
        q = torch.cat(halves, 1).reshape(-1, 16, 16).float()  # [B, 16 sub-blocks, 16]
        w = (d[:, None] * scales)[..., None] * q
    return w.reshape(n, k)


def q4_0_to_packed(raw: torch.Tensor, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_0 bytes -> (qweight uint8 [N, K/2], scales float16 [N, K/32]) in gemma4's int4 g32 format:
    the same nibbles (the qs array is our byte layout) and the same fp16 scale, so nothing is rounded."""
    n, k = shape
    b = _blocks(raw, "Q4_0", shape)
    return b[:, 2:].reshape(n, k // 2).clone(), b[:, 0:2].contiguous().view(torch.float16).reshape(n, k // 32)


def q8_0_to_packed(raw: torch.Tensor, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Q8_0 bytes -> (qweight int8 [N, K], scales float16 [N, K/32]) in gemma4's int8 g32 format."""
    n, k = shape
    b = _blocks(raw, "Q8_0", shape)
    return (b[:, 2:].contiguous().view(torch.int8).reshape(n, k),
            b[:, 0:2].contiguous().view(torch.float16).reshape(n, k // 32))
