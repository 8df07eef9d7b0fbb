"""moe_route / moe_experts (+ backward) vs reference.moe_route / reference.moe_experts and
transformers' Gemma4TextExperts eager loop.

Shapes: Gemma 4 26B-A4B's MoE layer (H=2816, Im=704, E=128 experts, top-8), at token counts a
2-core CPU handles: N = 1 (decode), 16 and 128 tokens, bf16 and fp32 expert weights.
The expert weights are built once per dtype and shared by the cases (1.5 GB bf16, 3 GB fp32).
The training-step case (forward + backward) uses 16 experts of the same size.
"""
from __future__ import annotations

import warnings

import torch

H, IM, E, K = 2816, 704, 128, 8
TOKENS = [1, 16, 128]


def _hf_experts(gate_up: torch.Tensor, down: torch.Tensor):
    """transformers' Gemma4TextExperts (eager loop) sharing our weight tensors, or None."""
    try:
        from transformers.models.gemma4.configuration_gemma4 import Gemma4TextConfig  # noqa: PLC0415
        from transformers.models.gemma4.modeling_gemma4 import Gemma4TextExperts  # noqa: PLC0415
    except ImportError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = Gemma4TextConfig(hidden_size=8, num_experts=E, moe_intermediate_size=8, top_k_experts=K,
                               hidden_activation="gelu_pytorch_tanh", experts_implementation="eager",
                               vocab_size=16, num_hidden_layers=1, enable_moe_block=True)
    mod = Gemma4TextExperts(cfg)  # tiny placeholders, replaced by views of the real weights
    mod.gate_up_proj = torch.nn.Parameter(gate_up, requires_grad=False)
    mod.down_proj = torch.nn.Parameter(down, requires_grad=False)
    mod.hidden_dim, mod.intermediate_dim = gate_up.shape[2], down.shape[2]
    return mod


def cases() -> list[dict]:
    from gemma4.ops import reference as ref  # noqa: PLC0415  (imports the op library: keep --filter cheap)
    from gemma4.ops.moe import moe_experts, moe_route  # noqa: PLC0415

    ops = torch.ops.gemma4
    out = []

    # Routing: softmax over 128 experts, top-8, renormalise, per-expert scale.
    scale = 0.5 + torch.rand(E)
    for n in [1, 128, 2048]:
        logits = torch.randn(n, E)
        out.append(dict(op="moe_route", case=f"N={n} E={E} K={K} fp32", ours=lambda l=logits: moe_route(l, scale, K),
                        baseline=lambda l=logits: ref.moe_route(l, scale, K), baseline_name="reference"))
        gw = torch.randn(n, K)
        _, idx = moe_route(logits, scale, K)
        lr, sr = logits.clone().requires_grad_(), scale.clone().requires_grad_()
        wr, _ = ref.moe_route(lr, sr, K)
        out.append(dict(op="moe_route_backward", case=f"N={n} E={E} K={K} fp32",
                        ours=lambda l=logits, g=gw, i=idx: ops.moe_route_backward(g, l, scale, i),
                        baseline=lambda w=wr, g=gw, lr=lr, sr=sr: torch.autograd.grad(w, (lr, sr), g, retain_graph=True),
                        baseline_name="reference"))

    # Experts.
    for dt, name in [(torch.bfloat16, "bf16"), (torch.float32, "fp32")]:
        gate_up = (torch.randn(E, 2 * IM, H) * H ** -0.5).to(dt)
        down = (torch.randn(E, H, IM) * IM ** -0.5).to(dt)
        hf = _hf_experts(gate_up, down)
        for n in TOKENS:
            x = torch.randn(n, H).to(dt)
            w, idx = moe_route(torch.randn(n, E), scale, K)
            case = f"N={n} H={H} Im={IM} E={E} K={K} {name}"
            ours = lambda x=x, w=w, idx=idx, gu=gate_up, dn=down: moe_experts(x, w, idx, gu, dn, "gelu_tanh")  # noqa: E731
            out.append(dict(op="moe_experts", case=case, ours=ours,
                            baseline=lambda x=x, w=w, idx=idx, gu=gate_up, dn=down: ref.moe_experts(x, w, idx, gu, dn, "gelu_tanh"),
                            baseline_name="reference"))
            if hf is not None:
                out.append(dict(op="moe_experts", case=case, ours=ours,
                                baseline=lambda x=x, w=w, idx=idx, hf=hf: hf(x, idx, w),
                                baseline_name="transformers Gemma4TextExperts"))
    # Training step (forward + backward through autograd, all four gradients) on a layer with fewer
    # experts: autograd through the reference takes minutes at E=128 on 2 cores. No graph is kept
    # between calls (a retained reference graph holds gigabytes of fp32 expert copies).
    e_small, k_small = 16, 4
    gate_up = (torch.randn(e_small, 2 * IM, H) * H ** -0.5).to(torch.bfloat16)
    down = (torch.randn(e_small, H, IM) * IM ** -0.5).to(torch.bfloat16)
    for n in [16]:
        x = torch.randn(n, H).to(torch.bfloat16)
        w, idx = moe_route(torch.randn(n, e_small), 0.5 + torch.rand(e_small), k_small)
        g = torch.randn(n, H).to(torch.bfloat16)

        def step(fn, x=x, w=w, idx=idx, g=g, gu=gate_up, dn=down):
            leaves = [t.detach().requires_grad_() for t in (x, w, gu, dn)]  # views: no weight copies
            y = fn(leaves[0], leaves[1], idx, leaves[2], leaves[3], "gelu_tanh")
            return torch.autograd.grad(y, leaves, g)

        out.append(dict(op="moe_experts fwd+bwd", case=f"N={n} H={H} Im={IM} E={e_small} K={k_small} bf16",
                        ours=lambda step=step: step(moe_experts), baseline=lambda step=step: step(ref.moe_experts),
                        baseline_name="reference"))
    return out
