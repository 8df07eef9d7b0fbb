"""Linear: an nn.Linear whose forward runs gemma4::linear where that op beats torch's F.linear.

Same parameters, state_dict keys and isinstance(nn.Linear) as nn.Linear, so checkpoint loading,
LoRA wrapping and quantization swaps see no difference; its forward is marked plain
(float32_gemm.is_plain_linear), so LoRA's base GEMM and the fused loss's head take their fast paths.
Which kernel runs is decided per call from what benchmarks/bench_linear_cpu.py measured
(docs/performance.md has the numbers):

- CPU, float32 or bfloat16 weights and input of the same dtype, a contiguous weight;
- at most DECODE_ROWS rows of input (decode): ours streams the weights once, bf16 widened in
  registers (about 2x torch's bf16 rate; in fp32 on par with MKL's sgemv, except that for small fp32
  weights torch's lower call overhead wins);
- more rows (prefill): ours runs its packed GEMM (linear_gemm.h), bf16 widened while the weights are
  packed: several times faster than torch's bf16 matmul on CPUs without AVX512-BF16, and faster than
  MKL's multi-threaded sgemm at most Gemma 4 projections in fp32 (the op itself keeps the sgemm for the
  shapes where it measured faster).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from gemma4 import ops
from gemma4.float32_gemm import plain_linear_forward

DECODE_ROWS = 8  # gemma4::linear's weight-streaming kernel takes up to this many rows
SMALL_FP32_WEIGHT = 1 << 20  # fp32 weights with fewer elements: F.linear (its call costs ~15 us less)
_enabled = True  # False inside torch_linear_only()

__all__ = ["Linear", "torch_linear_only", "uses_gemma4_kernel"]


@contextlib.contextmanager
def torch_linear_only():
    """Run every Linear through F.linear inside the block (benchmarks and tests compare the two)."""
    global _enabled
    before, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = before


def uses_gemma4_kernel(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True where gemma4::linear is the faster choice for y = x @ weight.T (see the module docstring)."""
    if not _enabled or x.device.type != "cpu" or weight.device.type != "cpu" or x.dtype != weight.dtype:
        return False
    if torch.is_autocast_enabled("cpu"):  # F.linear follows autocast's dtype policy; our op does not
        return False
    if x.dtype not in (torch.float32, torch.bfloat16) or not weight.is_contiguous():
        return False
    if x.dtype == torch.bfloat16:
        return True
    rows = x.numel() // max(x.shape[-1], 1) if x.dim() else 0
    return rows > DECODE_ROWS or weight.numel() >= SMALL_FP32_WEIGHT


class Linear(nn.Linear):
    """nn.Linear (weight [out, in], optional bias) computed by gemma4::linear where it is faster."""

    @plain_linear_forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if uses_gemma4_kernel(x, self.weight):
            if self.bias is None or self.bias.dtype == x.dtype:
                return ops.linear(x, self.weight, self.bias)  # [..., out]
        return F.linear(x, self.weight, self.bias)
