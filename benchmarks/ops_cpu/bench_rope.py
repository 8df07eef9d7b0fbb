"""rope / rope_backward vs reference.rope (and autograd through it), Gemma 4 sizes."""
from __future__ import annotations

import torch


def _inv_freq(hd: int, proportional: bool) -> torch.Tensor:
    half = hd // 2
    if not proportional:  # sliding layers: base 1e4, every pair rotates
        return 1.0 / (10000.0 ** (torch.arange(half, dtype=torch.float32) * 2 / hd))
    f = torch.zeros(half)  # full layers: base 1e6, only the first quarter of the pairs rotates
    rot = half // 4
    f[:rot] = 1.0 / (1e6 ** (torch.arange(rot, dtype=torch.float32) * 2 / hd))
    return f


def cases() -> list[dict]:
    from gemma4.ops import reference as ref  # noqa: PLC0415
    from gemma4.ops.rope import rope  # noqa: PLC0415

    ops = torch.ops.gemma4
    bf16 = torch.bfloat16
    # (name, x shape [B,T,nH,hd], dtype, proportional, positions shared over the batch)
    shapes = [
        ("q [1,2048,8,256] bf16", (1, 2048, 8, 256), bf16, False, True),
        ("k [1,2048,1,256] bf16", (1, 2048, 1, 256), bf16, False, True),
        ("q [1,2048,8,512] bf16 proportional", (1, 2048, 8, 512), bf16, True, True),
        ("q [4,1024,8,256] bf16 pos [B,T]", (4, 1024, 8, 256), bf16, False, False),
        ("q [1,4096,16,256] bf16", (1, 4096, 16, 256), bf16, False, True),
        ("q [1,2048,8,256] fp32", (1, 2048, 8, 256), torch.float32, False, True),
        ("decode q [8,1,8,256] bf16", (8, 1, 8, 256), bf16, False, False),
    ]
    out = []
    for name, shape, dt, prop, shared in shapes:
        B, T, H, hd = shape
        x = torch.randn(shape).to(dt)
        pos = (torch.arange(T) + 17)[None].expand(1 if shared else B, T).contiguous()
        f = _inv_freq(hd, prop)
        out.append(dict(op="rope", case=name, ours=lambda x=x, p=pos, f=f: rope(x, p, f),
                        baseline=lambda x=x, p=pos, f=f: ref.rope(x, p, f), baseline_name="reference"))
        if name.startswith("decode"):
            continue
        g = torch.randn(shape).to(dt)
        xr = x.clone().requires_grad_()
        y = ref.rope(xr, pos, f)
        out.append(dict(op="rope_backward", case=name, ours=lambda g=g, p=pos, f=f: ops.rope_backward(g, p, f),
                        baseline=lambda y=y, xr=xr, g=g: torch.autograd.grad(y, xr, g, retain_graph=True),
                        baseline_name="reference"))
    return out
