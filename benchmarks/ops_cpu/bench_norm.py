"""rms_norm / rms_norm_backward vs reference.rms_norm (and autograd through it), Gemma 4 sizes."""
from __future__ import annotations

import torch


def cases() -> list[dict]:
    from gemma4.ops import reference as ref  # noqa: PLC0415  (imports the op library: keep --filter cheap)
    from gemma4.ops.norm import rms_norm  # noqa: PLC0415

    ops = torch.ops.gemma4
    eps = 1e-6
    bf16 = torch.bfloat16
    # (name, x shape, x dtype, weight dtype or None)
    shapes = [
        ("T=2048 H=1536 bf16", (1, 2048, 1536), bf16, bf16),
        ("T=4096 H=2560 bf16", (1, 4096, 2560), bf16, bf16),
        ("T=2048 H=2560 fp32", (1, 2048, 2560), torch.float32, torch.float32),
        ("T=2048 H=2560 bf16, fp32 w", (1, 2048, 2560), bf16, torch.float32),
        ("q-norm [1,2048,8,256] bf16", (1, 2048, 8, 256), bf16, bf16),
        ("q-norm [1,1024,16,512] bf16", (1, 1024, 16, 512), bf16, bf16),
        ("v-norm [1,2048,2,256] bf16 no w", (1, 2048, 2, 256), bf16, None),
        ("PLE [1,1024,35,256] bf16", (1, 1024, 35, 256), bf16, bf16),
        ("decode [4,1,2560] bf16", (4, 1, 2560), bf16, bf16),
    ]
    out = []
    for name, shape, dt, wdt in shapes:
        x = torch.randn(shape).to(dt)
        w = None if wdt is None else (1 + 0.1 * torch.randn(shape[-1])).to(wdt)
        out.append(dict(op="rms_norm", case=name, ours=lambda x=x, w=w: rms_norm(x, w, eps),
                        baseline=lambda x=x, w=w: ref.rms_norm(x, w, eps), baseline_name="reference"))
        if name.startswith("decode"):
            continue
        # Backward: our op vs the backward of the reference's autograd graph (forward not timed).
        g = torch.randn(shape).to(dt)
        xr = x.clone().requires_grad_()
        wr = None if w is None else w.clone().requires_grad_()
        inputs = (xr,) if wr is None else (xr, wr)
        y = ref.rms_norm(xr, wr, eps)
        out.append(dict(op="rms_norm_backward", case=name,
                        ours=lambda x=x, w=w, g=g: ops.rms_norm_backward(g, x, w, eps),
                        baseline=lambda y=y, inputs=inputs, g=g: torch.autograd.grad(y, inputs, g, retain_graph=True),
                        baseline_name="reference"))
    return out
