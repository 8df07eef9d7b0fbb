"""Linear: an nn.Linear whose forward runs gemma4::linear where that op beats torch's F.linear.

Same parameters, state_dict keys and isinstance(nn.Linear) as nn.Linear, so checkpoint loading,
LoRA wrapping and quantization swaps see no difference; its forward is marked plain
(float32_gemm.is_plain_linear), so LoRA's base GEMM and the fused loss's head take their fast paths.
Which kernel runs is decided per call by gemma4.linear_choice (the rule and its measurements).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gemma4 import ops
from gemma4.float32_gemm import plain_linear_forward
from gemma4.linear_choice import torch_linear_only, uses_gemma4_kernel

__all__ = ["Linear", "torch_linear_only", "uses_gemma4_kernel"]


class Linear(nn.Linear):
    """nn.Linear (weight [out, in], optional bias) computed by gemma4::linear where it is faster."""

    @plain_linear_forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias  # (each nn.Module attribute read is a Python __getattr__ call)
        if uses_gemma4_kernel(x, weight) and (bias is None or bias.dtype == x.dtype):
            return ops.linear(x, weight, bias)  # [..., out]
        return F.linear(x, weight, bias)
