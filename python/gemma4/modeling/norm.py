"""RMSNorm module over the native gemma4::rms_norm operator."""
from __future__ import annotations

import torch
from torch import nn

from gemma4 import ops


class Gemma4RMSNorm(nn.Module):
    """x * (mean(x^2) + eps)^-1/2 * weight. Gemma 4 multiplies by w (not 1 + w); with_scale=False
    is the weightless variant used for v_norm and the MoE router input (no checkpoint tensor)."""

    def __init__(self, dim: int, eps: float = 1e-6, with_scale: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if with_scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.rms_norm(x, self.weight, self.eps)
