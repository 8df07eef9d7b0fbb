"""gated_activation / gated_activation_backward vs reference.gated_activation (and autograd through
it); for bf16 also vs the plain bf16 computation transformers' MLP does (act(gate) * up in bf16)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cases() -> list[dict]:
    from gemma4.ops import reference as ref  # noqa: PLC0415
    from gemma4.ops.activation import gated_activation  # noqa: PLC0415

    ops = torch.ops.gemma4
    bf16 = torch.bfloat16
    # (name, [tokens, intermediate], dtype, activation)
    shapes = [
        ("[2048,6144] bf16 gelu_tanh", (2048, 6144), bf16, "gelu_tanh"),
        ("[2048,10240] bf16 gelu_tanh", (2048, 10240), bf16, "gelu_tanh"),
        ("[2048,6144] fp32 gelu_tanh", (2048, 6144), torch.float32, "gelu_tanh"),
        ("[2048,6144] bf16 silu", (2048, 6144), bf16, "silu"),
        ("decode [4,6144] bf16 gelu_tanh", (4, 6144), bf16, "gelu_tanh"),
    ]
    out = []
    for name, shape, dt, act in shapes:
        gate = (torch.randn(shape) * 2).to(dt)
        up = torch.randn(shape).to(dt)
        ours = lambda g=gate, u=up, a=act: gated_activation(g, u, a)  # noqa: E731
        out.append(dict(op="gated_activation", case=name, ours=ours,
                        baseline=lambda g=gate, u=up, a=act: ref.gated_activation(g, u, a), baseline_name="reference"))
        if dt == bf16:
            plain = (lambda g=gate, u=up: F.gelu(g, approximate="tanh") * u) if act == "gelu_tanh" else \
                (lambda g=gate, u=up: F.silu(g) * u)
            out.append(dict(op="gated_activation", case=name, ours=ours, baseline=plain, baseline_name="torch bf16"))
        if name.startswith("decode"):
            continue
        g = torch.randn(shape).to(dt)
        gr, ur = gate.clone().requires_grad_(), up.clone().requires_grad_()
        y = ref.gated_activation(gr, ur, act)
        out.append(dict(op="gated_activation_backward", case=name,
                        ours=lambda go=g, g=gate, u=up, a=act: ops.gated_activation_backward(go, g, u, a),
                        baseline=lambda y=y, gr=gr, ur=ur, g=g: torch.autograd.grad(y, (gr, ur), g, retain_graph=True),
                        baseline_name="reference"))
    return out
