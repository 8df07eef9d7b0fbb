"""The packed format and the quantizers: bit-exact against definitions written here from the format
description, and quantization error at the level the literature's round-to-nearest gives."""
import pytest
import torch

from gemma4.ops import reference
from gemma4.quant import formats


def _pack_by_definition(q):
    """Byte j of each 32-weight run = (q[j] + 8) | (q[j + 16] + 8) << 4, written element by element."""
    n, k = q.shape
    out = torch.zeros(n, k // 2, dtype=torch.uint8)
    for i in range(n):
        for r in range(k // 32):
            for j in range(16):
                lo, hi = int(q[i, 32 * r + j]) + 8, int(q[i, 32 * r + j + 16]) + 8
                out[i, 16 * r + j] = lo | (hi << 4)
    return out


def test_pack_int4_matches_definition_all_levels():
    q = torch.randint(-8, 8, (3, 96), dtype=torch.int8)
    q[0, :16] = torch.arange(-8, 8)  # every level, in both nibbles
    q[0, 16:32] = torch.arange(7, -9, -1)
    packed = formats.pack_int4(q)
    assert torch.equal(packed, _pack_by_definition(q))
    assert torch.equal(formats.unpack_int4(packed), q)


def test_dequantize_is_exact():
    for qweight, group in ((formats.pack_int4(torch.randint(-8, 8, (5, 128), dtype=torch.int8)), 32),
                           (torch.randint(-128, 128, (5, 128), dtype=torch.int8), 64),
                           (torch.randint(-128, 128, (5, 128), dtype=torch.int8), 128)):
        mags = torch.tensor([1e-6, 1.0, 1e3, 3e4, 1e-30])[:, None]  # extreme scales
        scales = (torch.randn(5, 128 // group) * mags).to(torch.bfloat16)
        q = formats.levels(qweight).double()
        want = q * scales.double().repeat_interleave(group, dim=1)  # float64: exact
        assert torch.equal(formats.dequantize(qweight, scales, torch.float64), want)
        assert torch.equal(formats.dequantize(qweight, scales).double(), want)  # exact in float32 too
        assert torch.equal(reference.dequantize(qweight, scales, torch.float64), want)


def _rel_err(w, wq, x):
    return ((x @ wq.t() - x @ w.t()).norm() / (x @ w.t()).norm()).item()


@pytest.mark.parametrize("scheme,anchor", [("q4_0", 0.0858), ("int8-channel", 0.0087), ("int8-g32", 0.0053)])
def test_quantization_error_matches_literature(scheme, anchor):
    """Relative output error of round-to-nearest on Gaussian weights (shared/quantization.md 6.3)."""
    w, x = torch.randn(512, 4096), torch.randn(64, 4096)  # the anchors are for K = 4096
    if scheme == "q4_0":
        qw, s = formats.quantize_int4(w, 32, torch.float32)
        assert formats.unpack_int4(qw).unique().numel() == 16
    else:
        qw, s = formats.quantize_int8(w, None if scheme == "int8-channel" else 32, torch.float32)
    err = _rel_err(w, formats.dequantize(qw, s), x)
    assert abs(err - anchor) <= 0.05 * anchor, (scheme, err, anchor)


def test_quantize_uses_the_stored_scale():
    """Levels are rounded against the scale as stored: requantizing a dequantized weight is lossless."""
    w = torch.randn(64, 256)
    for qw, s in (formats.quantize_int4(w, 64, torch.bfloat16), formats.quantize_int8(w, None, torch.float16)):
        group = 256 // s.shape[1]
        deq = formats.dequantize(qw, s)
        again = formats.quantize_int4(deq, group, s.dtype) if qw.dtype == torch.uint8 else \
            formats.quantize_int8(deq, None, s.dtype)
        assert torch.equal(formats.dequantize(*again), deq)


def test_trained_grid_recovers_qat_weights():
    """Weights that sit on a grid level * step (step bf16, the largest level anywhere in -8..7) come back
    exactly, where Q4_0's amax/-8 rule does not. (Many of these bf16 weights are not exactly level * step:
    the product needs up to 12 significant bits. About 96% come back equal; 131K weights make that
    fraction steady to +-0.2%, where 16K swung across 95% with the seed.)"""
    n, k = 512, 256
    q = torch.randint(-8, 8, (n, k), dtype=torch.int8)
    top = torch.randint(3, 9, (n, k // 32))  # each group's largest level magnitude: 3..8
    q = q.reshape(n, k // 32, 32).clamp(-top[..., None], torch.minimum(top[..., None], torch.tensor(7)))
    step = (torch.rand(n, k // 32) * 0.01 + 1e-3).to(torch.bfloat16)
    w = (q.float() * step.float()[..., None]).reshape(n, k).to(torch.bfloat16)
    qw, s, exact = formats.quantize_int4_trained_grid(w, 32, torch.bfloat16)
    assert exact >= 0.95
    deq = formats.dequantize(qw, s).to(torch.bfloat16)
    assert (deq == w).float().mean().item() == pytest.approx(exact)
    naive = formats.dequantize(*formats.quantize_int4(w, 32, torch.bfloat16)).to(torch.bfloat16)
    assert (naive == w).float().mean().item() < exact


def test_bad_group_sizes():
    with pytest.raises(ValueError, match="groups of 128"):
        formats.quantize_int4(torch.randn(4, 704), 128)
    with pytest.raises(ValueError, match="multiple of 32"):
        formats.pack_int4(torch.zeros(2, 48, dtype=torch.int8))


@pytest.mark.parametrize("bits", [4, 8])
def test_compressed_tensors_packing_is_bit_exact(bits):
    """Our int32 packing against its definition (element i of a word at bit bits*i, offset binary) and,
    when installed, against the compressed-tensors package's own pack_to_int32."""
    from gemma4.quant.compressed_tensors import pack_int32, unpack_int32

    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1))
    q = torch.randint(lo, hi, (3, 64), dtype=torch.int8)
    q[0, : hi - lo] = torch.arange(lo, hi)[:64]  # every level
    packed = pack_int32(q, bits)
    per = 32 // bits
    for i in range(3):
        for w in range(64 // per):
            word = sum((int(q[i, w * per + j]) - lo) << (bits * j) for j in range(per))
            assert packed[i, w].item() & 0xFFFFFFFF == word
    assert torch.equal(unpack_int32(packed, bits, 64), q)
    ct = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
    assert torch.equal(ct.pack_to_int32(q, bits), packed)


def test_quantizers_in_row_chunks_equal_whole(monkeypatch):
    """Large weights are quantized a few rows at a time (bounded temporaries); the chunked result is
    bit-identical to quantizing the whole weight at once."""
    w = (torch.randn(300, 256) * torch.rand(300, 1) * 0.1).to(torch.bfloat16)
    whole = (formats.quantize_int4(w, 32, torch.bfloat16), formats.quantize_int8(w, None, torch.bfloat16),
             formats.quantize_int8(w, 64, torch.float16), formats.quantize_int4_trained_grid(w, 32, torch.bfloat16))
    monkeypatch.setattr(formats, "_CHUNK_ELEMENTS", 256 * 7)  # 7 rows a chunk, the last one shorter
    chunked = (formats.quantize_int4(w, 32, torch.bfloat16), formats.quantize_int8(w, None, torch.bfloat16),
               formats.quantize_int8(w, 64, torch.float16), formats.quantize_int4_trained_grid(w, 32, torch.bfloat16))
    for a, b in zip(whole, chunked):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert whole[3][2] == chunked[3][2]  # the exact fraction
