"""Feed-forward blocks: the dense GeGLU MLP, the MoE router and the expert bank."""
from __future__ import annotations

import torch
from torch import nn

from gemma4 import ops

from .linear import Linear
from .norm import Gemma4RMSNorm

class Gemma4MLP(nn.Module):
    """down_proj(act(gate_proj(x)) * up_proj(x)); width I, or 2I in KV-shared layers of E2B."""

    def __init__(self, hidden_size: int, intermediate_size: int, activation: str):
        super().__init__()
        self.gate_proj = Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = Linear(intermediate_size, hidden_size, bias=False)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = ops.gated_activation(self.gate_proj(x), self.up_proj(x), self.activation)  # [..., I]
        return self.down_proj(hidden)


class Gemma4Router(nn.Module):
    """Chooses top_k experts per token from the pre-norm residual: weightless RMSNorm, * scale * H^-1/2,
    proj to E logits, then gemma4::moe_route (softmax fp32, top-k, renormalise, per-expert scale)."""

    def __init__(self, hidden_size: int, num_experts: int, top_k: int, eps: float):
        super().__init__()
        self.norm = Gemma4RMSNorm(hidden_size, eps=eps, with_scale=False)
        self.proj = Linear(hidden_size, num_experts, bias=False)
        self.scale = nn.Parameter(torch.ones(hidden_size))
        self.per_expert_scale = nn.Parameter(torch.ones(num_experts))
        self.scalar_root_size = hidden_size**-0.5
        self.top_k = top_k

    def forward(self, residual_flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.norm(residual_flat) * self.scale * self.scalar_root_size  # [N, H]
        logits = self.proj(z)  # [N, E]
        return ops.moe_route(logits, self.per_expert_scale, self.top_k)  # weights fp32 [N,K], idx [N,K]


class Gemma4Experts(nn.Module):
    """E experts with fused gate/up weights [E, 2*Im, H] and down weights [E, H, Im]."""

    def __init__(self, hidden_size: int, num_experts: int, moe_intermediate_size: int, activation: str):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * moe_intermediate_size, hidden_size))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden_size, moe_intermediate_size))
        self.activation = activation

    def forward(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return ops.moe_experts(x, weights, indices, self.gate_up_proj, self.down_proj, self.activation)  # [N, H]
