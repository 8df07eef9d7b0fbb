"""Our packed weight format, the quantizers that fill it, and exact conversions to and from it.

Packed format (what ``gemma4::qgemm`` reads), for a linear weight ``W [N, K]`` (out, in):

* int4: ``qweight`` uint8 ``[N, K/2]``. Each run of 32 weights along K is 16 bytes; byte j holds weight
  j in its low nibble and weight j+16 in its high nibble, stored offset-binary ``u = q + 8`` with
  ``q`` in -8..7. This is the ``qs`` array of a GGUF Q4_0 block, so Q4_0 converts by copying bytes.
* int8: ``qweight`` int8 ``[N, K]``.
* ``scales [N, K // group]`` in float32, bfloat16 or float16; ``w[n, k] = q[n, k] * scales[n, k // group]``.
  ``group`` is 32, 64, 128 (any multiple of 32 dividing K) or K (one scale per output channel).

On AVX512-VNNI CPUs QuantLinear keeps int4 groups of 32 in a second layout for inference, 16 rows interleaved
(``tile16`` / ``untile16`` below); files, state dicts and other devices only ever see the layout above.

Every function here is exact: packing and unpacking are bit permutations, and quantizers compute the
integer levels against the scale *as stored* (rounded to its dtype), so dequantizing gives exactly the
weights the kernels multiply with.
"""
from __future__ import annotations

import torch

from .. import huge_pages

__all__ = [
    "pack_int4", "unpack_int4", "dequantize", "quantize_int4", "quantize_int8", "quantize_int4_trained_grid",
    "group_of", "tile16", "tile16_", "untile16", "tileable",
]


def group_of(qweight: torch.Tensor, scales: torch.Tensor) -> int:
    """The group size of a packed weight: K // scales.shape[1]."""
    k = qweight.shape[1] * (2 if qweight.dtype == torch.uint8 else 1)
    return k // scales.shape[1]


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Integer levels ``q [N, K]`` in -8..7 (any integer dtype), K % 32 == 0 -> uint8 ``[N, K/2]``."""
    n, k = q.shape
    if k % 32:
        raise ValueError(f"pack_int4: K must be a multiple of 32, got {k}")
    u = (q.to(torch.int16) + 8).to(torch.uint8).reshape(n, k // 32, 2, 16)  # [N, runs, low|high, 16]
    return (u[:, :, 0] | (u[:, :, 1] << 4)).reshape(n, k // 2)


def unpack_int4(qweight: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, K/2]`` -> int8 levels ``[N, K]`` in -8..7."""
    n = qweight.shape[0]
    runs = qweight.reshape(n, -1, 16)  # [N, K/32, 16]
    u = torch.stack((runs & 0xF, runs >> 4), dim=2)  # [N, K/32, 2, 16]
    return (u.to(torch.int8) - 8).reshape(n, -1)


def levels(qweight: torch.Tensor) -> torch.Tensor:
    """The integer levels ``q [N, K]`` (int8) of a packed int4 (uint8) or int8 weight."""
    return unpack_int4(qweight) if qweight.dtype == torch.uint8 else qweight


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Packed weight (row or tiled layout) -> ``[N, K]`` in ``dtype`` (exact in float32/float64; rounded once for
    bf16/fp16)."""
    if qweight.dim() == 3:
        qweight, scales = untile16(qweight, scales)
    q = levels(qweight)
    n, k = q.shape
    g = scales.shape[1]
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    w = q.to(acc).reshape(n, g, k // g) * scales.to(acc)[:, :, None]  # [N, G, group]
    return w.reshape(n, k).to(dtype)


# ---- the 16-row tiled int4 layout: CPU inference on AVX512-VNNI (csrc/quant/qgemm_tiled16.h) ----
# qweight uint8 [N/16, K/8, 64]: vector (t, c) holds the 4-byte word c of rows 16 t .. 16 t + 15 of the row layout, side
# by side, so one 512-bit vector is the same 8 weights of 16 rows; scales [N/16, K/32, 16]: a group's 16 rows' scales.
# Only the CPU op reads it; QuantLinear makes it for its forward and turns it back for anything else (state_dict,
# saving, other devices).

def tileable(qweight: torch.Tensor, scales: torch.Tensor) -> bool:
    """Whether a row-layout weight has the tiled layout: int4 in groups of 32, a multiple of 16 rows."""
    return qweight.dim() == 2 and qweight.dtype == torch.uint8 and qweight.shape[0] % 16 == 0 \
        and scales.shape[1] * 16 == qweight.shape[1]


def tile16(qweight: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row layout (uint8 [N, K/2], scales [N, K/32]) -> tiled (uint8 [N/16, K/8, 64], scales [N/16, K/32, 16])."""
    if not tileable(qweight, scales):
        raise ValueError(f"tile16: needs int4 groups of 32 on a multiple of 16 rows, got qweight {qweight.dtype} "
                         f"{tuple(qweight.shape)} with scales {tuple(scales.shape)}")
    n, half_k = qweight.shape
    words = qweight.contiguous().view(torch.int32).reshape(n // 16, 16, half_k // 4)  # [T, 16, K/8]
    # In huge pages on the CPU, as the loader places weights (gemma4/huge_pages.py): decode streams these.
    tiles = huge_pages.empty_strided((n // 16, half_k // 4, 16), (half_k * 4, 16, 1), torch.int32, qweight.device)
    q = tiles.copy_(words.transpose(1, 2)).view(torch.uint8)  # [T, K/8, 64]
    s = scales.reshape(n // 16, 16, -1).transpose(1, 2).contiguous()  # [T, K/32, 16]
    return q, s


def tile16_(qweight: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """tile16 in place, a block of 16-row tiles at a time: the results are views of qweight's and scales' own
    memory, so the weight never exists twice (tile16 makes a whole copy: the 226 MB int4 head of E2B at once).
    Each tile's bytes sit at the same place in both layouts, so a block is permuted through a small copy. Only
    for buffers nothing else holds (their old row-layout views would see tiled bytes)."""
    if not tileable(qweight, scales) or not qweight.is_contiguous() or not scales.is_contiguous():
        raise ValueError(f"tile16_: needs contiguous int4 groups of 32 on a multiple of 16 rows, got qweight "
                         f"{qweight.dtype} {tuple(qweight.shape)} with scales {tuple(scales.shape)}")
    n, half_k = qweight.shape
    step = 16 * max(1, (4 << 20) // (16 * half_k))  # rows of 4 MB of weights a block, whole tiles
    for r0 in range(0, n, step):
        q, sc = tile16(qweight[r0:r0 + step], scales[r0:r0 + step])  # the block's tiles, a copy
        qweight[r0:r0 + step].view(-1).copy_(q.view(-1))  # tile t's bytes sit where its rows were
        scales[r0:r0 + step].view(-1).copy_(sc.view(-1))
    return qweight.view(n // 16, half_k // 4, 64), scales.view(n // 16, -1, 16)  # [T, K/8, 64], [T, K/32, 16]


def untile16(qweight: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """tile16's inverse (exact)."""
    t, c, _ = qweight.shape
    q = qweight.contiguous().view(torch.int32).transpose(1, 2).contiguous().view(torch.uint8).reshape(16 * t, 4 * c)
    s = scales.transpose(1, 2).contiguous().reshape(16 * t, -1)  # [N, K/32]
    return q, s


def _groups(w: torch.Tensor, group_size: int | None) -> tuple[torch.Tensor, int]:
    n, k = w.shape
    group = k if group_size is None else group_size
    if k % 32 or group % 32 or k % group:
        raise ValueError(f"weights of input size {k} cannot be quantized in groups of {group}: "
                         f"K must be a multiple of 32 and of the group size, itself a multiple of 32")
    return w.float().reshape(n, k // group, group), group  # [N, G, group]


# Elements quantized at a time: a quantizer's float64 temporaries are about ten times its input, so a
# weight goes through in row chunks of about 512K elements (~40 MB of temporaries at most), and
# quantizing while loading costs about one weight more than the quantized model, not ten weights.
_CHUNK_ELEMENTS = 1 << 19


def chunk_rows(k: int) -> int:
    """Rows of a [N, k] weight quantized at a time."""
    return max(1, _CHUNK_ELEMENTS // max(1, k))


def _by_rows(quantizer, w: torch.Tensor, *args):
    """quantizer(w, *args) applied to row chunks of w, the results concatenated along the rows."""
    rows = chunk_rows(w.shape[1])
    if w.shape[0] <= rows:
        return quantizer(w, *args)
    parts = [quantizer(chunk, *args) for chunk in w.split(rows)]
    return tuple(torch.cat(items) for items in zip(*parts))


def _levels_for(wg: torch.Tensor, scale: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """round(w / scale) clamped to [lo, hi]; zero where the scale is zero."""
    inv = torch.where(scale != 0, 1.0 / scale.double(), torch.zeros_like(scale, dtype=torch.float64))
    return torch.round(wg.double() * inv[..., None]).clamp_(lo, hi).to(torch.int8)


def quantize_int4(w: torch.Tensor, group_size: int | None = 32, scale_dtype: torch.dtype = torch.float32):
    """Round-to-nearest int4, GGUF Q4_0's rule: per group the weight of largest magnitude ``m`` maps to
    level -8 (``scale = m / -8``), so all 16 levels are used. Returns ``(qweight uint8 [N, K/2],
    scales [N, G] in scale_dtype)``."""
    return _by_rows(_quantize_int4, w, group_size, scale_dtype)


def _quantize_int4(w: torch.Tensor, group_size: int | None, scale_dtype: torch.dtype):
    wg, _ = _groups(w, group_size)  # [N, G, group]
    idx = wg.abs().argmax(dim=-1, keepdim=True)
    signed_max = wg.gather(-1, idx)[..., 0]  # [N, G]
    scales = (signed_max / -8.0).to(scale_dtype)
    q = _levels_for(wg, scales.float(), -8, 7)
    return pack_int4(q.reshape(w.shape)), scales


def quantize_int8(w: torch.Tensor, group_size: int | None = None, scale_dtype: torch.dtype = torch.float32):
    """Symmetric round-to-nearest int8 (``scale = absmax / 127``), per output channel (group_size None)
    or per group. Returns ``(qweight int8 [N, K], scales [N, G] in scale_dtype)``."""
    return _by_rows(_quantize_int8, w, group_size, scale_dtype)


def _quantize_int8(w: torch.Tensor, group_size: int | None, scale_dtype: torch.dtype):
    wg, _ = _groups(w, group_size)
    scales = (wg.abs().amax(dim=-1) / 127.0).to(scale_dtype)  # [N, G]
    q = _levels_for(wg, scales.float(), -127, 127)
    return q.reshape(w.shape), scales


def quantize_int4_trained_grid(w: torch.Tensor, group_size: int = 32, scale_dtype: torch.dtype = torch.bfloat16):
    """int4 for quantization-aware-trained weights (Google's ``*-qat-q4_0-unquantized``), whose values
    already sit on a grid ``level * step`` per group. The step is recovered by search: the group's
    largest magnitude ``a`` is ``m * step`` for some level ``m`` in 1..8, so each candidate
    ``a / m`` (rounded to ``scale_dtype``) is tried and the one reproducing the most weights exactly (in
    ``w``'s dtype) wins; a group no candidate beats falls back to Q4_0 rounding.

    Returns ``(qweight, scales, exact)`` where ``exact`` is the fraction of weights reproduced exactly.
    """
    hits = _by_rows(_trained_grid_hits, w, group_size, scale_dtype)
    return hits[0], hits[1], hits[2].sum().item() / w.numel()


def _trained_grid_hits(w: torch.Tensor, group_size: int, scale_dtype: torch.dtype):
    """quantize_int4_trained_grid on some rows: (qweight, scales, [1] count of exact weights)."""
    wg, _ = _groups(w, group_size)  # [N, G, group] float32 (exact copy of bf16/fp16 values)
    amax = wg.abs().amax(dim=-1)  # [N, G]
    target = wg.to(w.dtype)
    best_q = best_s = None
    best_hits = torch.full(amax.shape, -1, dtype=torch.int64)
    for m in range(1, 9):
        s = (amax / m).to(scale_dtype)
        q = _levels_for(wg, s.float(), -8, 7)
        hits = ((q.float() * s.float()[..., None]).to(w.dtype) == target).sum(-1)  # [N, G]
        better = hits > best_hits
        best_hits = torch.where(better, hits, best_hits)
        best_q = q if best_q is None else torch.where(better[..., None], q, best_q)
        best_s = s if best_s is None else torch.where(better, s, best_s)
    q4, s4 = quantize_int4(w, group_size, scale_dtype)  # Q4_0 fallback
    q4 = unpack_int4(q4).reshape(wg.shape)
    hits4 = ((q4.float() * s4.float()[..., None]).to(w.dtype) == target).sum(-1)
    use4 = hits4 > best_hits
    q = torch.where(use4[..., None], q4, best_q)
    scales = torch.where(use4, s4, best_s)
    exact = torch.maximum(hits4, best_hits).sum().reshape(1)
    return pack_int4(q.reshape(w.shape)), scales, exact
