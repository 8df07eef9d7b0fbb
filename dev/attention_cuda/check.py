"""CUDA gemma4::attention / attention_backward: correctness on the GPU machine, in one call.

For random shapes covering every kernel path (tensor-core flash forward/backward at head_dim 64-512,
split-KV decode, the simple fp32/fp64 path, odd head dims, strided cache views, masks, windows, GQA):
  * float32/float64: out, lse and gradients against reference.attention in float64 (tight);
  * bfloat16/float16: error against the float32 reference at most 2x plain PyTorch's low-precision
    error (the test-suite rule), and lse against float64;
  * every dtype: agreement with our CPU kernel on the same inputs (same rules).
Prints one line per case and a summary; exits 1 on any failure. Usage (repo root):
  GEMMA4_LIB_DIR=build/x PYTHONPATH=python:. python3 dev/attention_cuda/check.py
"""
import sys
import traceback

import torch

import gemma4._native  # noqa: F401
from gemma4.ops import reference
from tests.helpers import assert_lowp_close, tight_tol
from tests.ops.test_attention import SHAPES, _mask, _plain_lowp

# (B, T, S, nH, nKV, hd, window, mask)
FLASH = [
    (2, 300, 300, 8, 2, 64, 0, None),
    (1, 257, 257, 4, 4, 128, 100, "left"),
    (1, 200, 520, 8, 1, 256, 0, "random"),
    (1, 129, 129, 8, 8, 512, 64, None),
    (2, 100, 100, 16, 2, 512, 0, "full"),
    (1, 3, 2000, 8, 1, 512, 0, None),      # T*G = 24: flash with a long cache
    (1, 700, 700, 2, 1, 256, 128, "left"),
]
DECODE = [
    (1, 1, 4096, 8, 1, 512, 0, None),
    (2, 1, 3000, 16, 2, 256, 1024, "left"),
    (3, 1, 1500, 4, 4, 128, 0, "random"),
    (2, 2, 2222, 8, 2, 512, 0, "full"),
]
CASES = SHAPES + FLASH + DECODE
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def inputs(shape, dtype, dev, strided):
    B, T, S, nH, nKV, hd, window, kind = shape
    if strided:  # k/v as views of a [B, nKV, Tmax, hd] cache, q a slice of a fused projection
        ck = torch.randn(B, nKV, S + 16, hd, dtype=dtype, device=dev)
        cv = torch.randn(B, nKV, S + 16, hd, dtype=dtype, device=dev)
        k, v = ck[:, :, :S].transpose(1, 2), cv[:, :, :S].transpose(1, 2)
        q = torch.randn(B, T, nH, 2 * hd, dtype=dtype, device=dev)[..., hd:]
    else:
        q = torch.randn(B, T, nH, hd, dtype=dtype, device=dev)
        k = torch.randn(B, S, nKV, hd, dtype=dtype, device=dev)
        v = torch.randn(B, S, nKV, hd, dtype=dtype, device=dev)
    m = _mask(kind, B, T, S)
    return q, k, v, (m.to(dev) if m is not None else None), hd ** -0.5, window


def ref_grads(q, k, v, km, scale, window, go, dtype):
    qd, kd, vd = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    out, _ = reference.attention(qd, kd, vd, km, scale, window)
    out.backward(go.to(dtype))
    return qd.grad, kd.grad, vd.grad


def cpu(*ts):
    return [t.detach().cpu() if t is not None else None for t in ts]


def plain_out(q, k, v, km, scale, window):
    """The test suite's plain low-precision PyTorch attention (run on the CPU copies)."""
    return _plain_lowp(*cpu(q, k, v, km), scale, window).to(q.device)


def plain_grads(q, k, v, km, scale, window, go):
    qp, kp, vp = (t.requires_grad_() for t in cpu(q, k, v))
    _plain_lowp(qp, kp, vp, cpu(km)[0], scale, window).backward(go.cpu())
    return qp.grad.to(q.device), kp.grad.to(q.device), vp.grad.to(q.device)


def close(ours, ref_hi, plain, dtype, what, terms=None):
    """terms: magnitude of the products summed into each element (backward), for references that are
    exactly zero: window=1 makes dS = P * (dP - D) with P = 1 and dP == D in exact arithmetic, which plain
    autograd reproduces bit-exactly while any flash backward (D = rowsum(dO * O), dP by another summation
    order) leaves fp32 rounding of the hd-long dot products: allowed there, 4 fp32 ulps of those terms."""
    if dtype in (torch.bfloat16, torch.float16):
        if terms is not None and ref_hi.abs().max().item() == 0:
            err = ours.double().abs().max().item()
            assert err <= 4 * torch.finfo(torch.float32).eps * terms, f"{what}: {err:.3e} where the reference is 0"
            return
        assert_lowp_close(ours, ref_hi, plain)
    else:
        torch.testing.assert_close(ours.double(), ref_hi.double(), **tight_tol(dtype), msg=lambda m: f"{what}: {m}")


def check(shape, dtype, strided):
    dev = "cuda"
    q, k, v, km, scale, window = inputs(shape, dtype, dev, strided)
    out, lse = torch.ops.gemma4.attention(q, k, v, km, scale, window)
    torch.cuda.synchronize()
    hi = torch.float32 if dtype in (torch.bfloat16, torch.float16) else torch.float64
    ref_out, ref_lse = reference.attention(q.to(hi), k.to(hi), v.to(hi), km, scale, window)
    ref64_out, ref64_lse = reference.attention(q.double(), k.double(), v.double(), km, scale, window)
    plain = plain_out(q, k, v, km, scale, window) if hi == torch.float32 else None
    finite = torch.isfinite(ref64_lse)
    assert torch.equal(torch.isfinite(lse), finite), "lse -inf pattern"
    torch.testing.assert_close(lse[finite].double(), ref64_lse[finite], **tight_tol(
        torch.float64 if dtype == torch.float64 else torch.float32))
    close(out, ref_out, plain, dtype, "out")
    # agreement with the CPU kernel on the same inputs: both meet the rule, so they differ by at most
    # twice the allowed error (exactly the tight tolerance in float32/float64)
    out_c, _ = torch.ops.gemma4.attention(*cpu(q, k, v, km), scale, window)
    if plain is None:
        torch.testing.assert_close(out.cpu().double(), out_c.double(), **tight_tol(dtype))
    else:
        close(out_c, ref_out.cpu(), plain.cpu(), dtype, "cpu out")
        e_pl = (plain.double() - ref_out.double()).abs().max().item()
        ulp = torch.finfo(dtype).eps * ref_out.abs().max().item()
        assert (out.cpu().double() - out_c.double()).abs().max().item() <= 4 * e_pl + 2 * ulp, "cuda vs cpu"
    # backward
    go = torch.randn(out.shape, dtype=dtype, device=dev)
    grads = torch.ops.gemma4.attention_backward(go, q, k, v, out, lse, km, scale, window)
    rg = ref_grads(q, k, v, km, scale, window, go, hi)
    pg = plain_grads(q, k, v, km, scale, window, go) if hi == torch.float32 else (None,) * 3
    for name, g, r, p in zip("qkv", grads, rg, pg):
        assert g.dtype == dtype and g.shape == r.shape
        terms = go.abs().max().item() * max(v.abs().max().item(), k.abs().max().item(), q.abs().max().item()) * (
            q.shape[-1] * max(q.abs().max().item(), k.abs().max().item()))
        close(g, r, p, dtype, f"grad_{name}", terms)
    return max((out.double() - ref64_out).abs().max().item(), 0.0)


def main():
    torch.manual_seed(0)
    fails = 0
    n = 0
    for shape in CASES:
        for dtype in DTYPES:
            for strided in (False, True):
                if strided and shape[5] < 8:
                    continue
                n += 1
                tag = f"{shape} {str(dtype)[6:]} {'strided' if strided else 'contig'}"
                try:
                    err = check(shape, dtype, strided)
                    print(f"ok   {tag}  max|out-ref64| {err:.2e}", flush=True)
                except Exception as e:  # noqa: BLE001 - report every failing case, then exit 1
                    fails += 1
                    print(f"FAIL {tag}: {type(e).__name__}: {str(e)[:400]}", flush=True)
                    if fails <= 3:
                        traceback.print_exc()
    # determinism of the backward (no atomics): bit-identical runs
    q, k, v, km, scale, window = inputs((1, 300, 300, 8, 2, 256, 100, "left"), torch.bfloat16, "cuda", False)
    out, lse = torch.ops.gemma4.attention(q, k, v, km, scale, window)
    go = torch.randn_like(out)
    g1 = torch.ops.gemma4.attention_backward(go, q, k, v, out, lse, km, scale, window)
    g2 = torch.ops.gemma4.attention_backward(go, q, k, v, out, lse, km, scale, window)
    det = all(torch.equal(a, b) for a, b in zip(g1, g2))
    print(f"backward deterministic: {det}")
    fails += 0 if det else 1
    print(f"SUMMARY: {n - fails + (0 if det else 1)}/{n} cases passed, {fails} failures")
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
