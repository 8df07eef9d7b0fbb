"""attention / attention_backward vs reference.attention and torch.nn.functional.scaled_dot_product_attention.

Shapes: Gemma 4 E2B (nH=8 query heads, nKV=1 KV head, scale 1.0), batch 1:
  sliding layers  hd=256, window=512, T = 512, 1024, 2048, 4096 (prefill, S == T)
  full layers     hd=512, causal,     T = 1024, 2048
  decode          T=1 against S=4096 cached keys (sliding: the last 512 visible; full: all)
in float32 and bfloat16. SDPA gets the equivalent explicit boolean mask (it cannot skip the tiles a
sliding window hides), and is_causal=True for full layers (where it does skip them); enable_gqa=True,
so neither side copies K/V.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

NH, NKV = 8, 1


def _visible(T: int, S: int, window: int) -> torch.Tensor:
    """[T, S] bool: key j visible to query t (sits at S - T + t)."""
    p = torch.arange(T)[:, None] + (S - T)
    j = torch.arange(S)[None, :]
    m = j <= p
    if window > 0:
        m = m & (j > p - window)
    return m


def cases() -> list[dict]:
    from gemma4.ops import reference as ref  # noqa: PLC0415  (imports the op library: keep --filter cheap)
    from gemma4.ops.attention import attention  # noqa: PLC0415

    ops = torch.ops.gemma4
    out = []
    # (label, T, S, hd, window)
    shapes = [(f"sliding T={t}", t, t, 256, 512) for t in (512, 1024, 2048, 4096)]
    shapes += [(f"full T={t}", t, t, 512, 0) for t in (1024, 2048)]
    shapes += [("decode sliding S=4096", 1, 4096, 256, 512), ("decode full S=4096", 1, 4096, 512, 0)]
    for dt in (torch.float32, torch.bfloat16):
        dname = "fp32" if dt == torch.float32 else "bf16"
        for label, T, S, hd, window in shapes:
            q = torch.randn(1, T, NH, hd).to(dt)
            k = torch.randn(1, S, NKV, hd).to(dt)
            v = torch.randn(1, S, NKV, hd).to(dt)
            qs, ks, vs = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # SDPA layout, views
            mask = _visible(T, S, window)
            case = f"{label} nH={NH} nKV={NKV} hd={hd} W={window} {dname}"

            def ours(q=q, k=k, v=v, window=window):
                return attention(q, k, v, None, 1.0, window)

            out.append(dict(op="attention", case=case, ours=ours, baseline_name="sdpa explicit mask",
                            baseline=lambda qs=qs, ks=ks, vs=vs, mask=mask: F.scaled_dot_product_attention(
                                qs, ks, vs, attn_mask=mask, scale=1.0, enable_gqa=True).transpose(1, 2)))
            if T == S and window == 0:
                out.append(dict(op="attention", case=case, ours=ours, baseline_name="sdpa is_causal",
                                baseline=lambda qs=qs, ks=ks, vs=vs: F.scaled_dot_product_attention(
                                    qs, ks, vs, is_causal=True, scale=1.0, enable_gqa=True).transpose(1, 2)))
            if T <= 2048 or dt == torch.float32:  # the reference materialises [nH, T, S] scores
                out.append(dict(op="attention", case=case, ours=ours, baseline_name="reference",
                                baseline=lambda q=q, k=k, v=v, window=window: ref.attention(
                                    q, k, v, None, 1.0, window)[0]))

            # Backward (prefill T <= 2048): our op vs the autograd backward of SDPA / the reference
            # (forward not timed on either side).
            if T == 1 or T > 2048:
                continue
            o, lse = ops.attention(q, k, v, None, 1.0, window)
            g = torch.randn_like(o)
            bcase = case

            def ours_bwd(g=g, q=q, k=k, v=v, o=o, lse=lse, window=window):
                return ops.attention_backward(g, q, k, v, o, lse, None, 1.0, window)

            qr, kr, vr = (t.detach().clone().requires_grad_() for t in (qs, ks, vs))
            y = F.scaled_dot_product_attention(qr, kr, vr, attn_mask=mask, scale=1.0, enable_gqa=True)
            out.append(dict(op="attention_backward", case=bcase, ours=ours_bwd, baseline_name="sdpa explicit mask",
                            baseline=lambda y=y, ins=(qr, kr, vr), g=g: torch.autograd.grad(
                                y, ins, g.transpose(1, 2), retain_graph=True)))
            if T <= 1024:
                qa, ka, va = (t.detach().clone().requires_grad_() for t in (q, k, v))
                ya = ref.attention(qa, ka, va, None, 1.0, window)[0]
                out.append(dict(op="attention_backward", case=bcase, ours=ours_bwd, baseline_name="reference",
                                baseline=lambda y=ya, ins=(qa, ka, va), g=g: torch.autograd.grad(
                                    y, ins, g, retain_graph=True)))
    return out
