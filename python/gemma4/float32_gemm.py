"""bfloat16/float16 GEMMs computed in float32 on CPUs that have no native low-precision GEMM.

torch's CPU bf16/fp16 GEMM is fast only through oneDNN on CPUs with AVX512-BF16/AMX (AVX512-FP16 for
fp16); elsewhere it falls back to a generic loop. Measured on the AVX2-only 2-core AMD EPYC of the
benchmarks (1 thread): bf16 x @ W.T 9 GFLOP/s and grad @ W (a Linear's input gradient) 0.9 GFLOP/s,
against 40-55 GFLOP/s for float32 (MKL). Upcasting the operands and rounding the float32 result once
gives the numbers of a bf16 GEMM with float32 accumulation (a product of two bf16 or fp16 numbers is
exact in float32; only the summation order differs), at float32 speed. bf16 goes through gemma4's own
CPU ops (gemma4::linear, linear_grad_input), which widen inside the kernel; fp16 pays for float32
copies of the operands while torch's GEMM runs. Where the native GEMM exists nothing changes.

`is_plain_linear` says which modules the fast paths built on this (LoRA's base GEMM, the fused loss's
head) may bypass: an nn.Linear whose forward is nn.Linear's or one marked `plain_linear_forward` (a
forward that only picks the kernel for y = x @ W.T + b, as gemma4.modeling.linear.Linear's), with no
forward hooks. A subclass that overrides forward again, or a QuantLinear (not an nn.Linear), is called.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from gemma4 import ops
from gemma4.linear_choice import NATIVE_LOWP_GEMM, own_bf16_kernels

__all__ = ["is_plain_linear", "linear", "needs_float32_gemm", "plain_linear_forward"]


def needs_float32_gemm(t: torch.Tensor) -> bool:
    """True for a CPU bf16/fp16 tensor on a CPU whose torch has no native GEMM for that dtype."""
    return t.device.type == "cpu" and not NATIVE_LOWP_GEMM.get(t.dtype, True)


class _Float32Linear(torch.autograd.Function):
    """F.linear(x, weight, bias) with every GEMM (forward and backward) done in float32.

    bf16 with a contiguous weight: gemma4::linear and linear_grad_input, which widen the operands inside the
    kernel (the same numbers without float32 copies of the weight); fp16: upcast copies and torch's GEMMs."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        # x only when the weight trains (a frozen LoRA base needs just the weight for grad_x)
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, weight)
        ctx.has_bias, ctx.x_dtype = bias is not None, x.dtype
        if own_bf16_kernels(x, weight) and (bias is None or bias.dtype == x.dtype):
            return ops.linear(x, weight, bias)  # [..., out]
        out = F.linear(x.float(), weight.float(), None if bias is None else bias.float())  # [..., out] fp32
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            if own_bf16_kernels(grad, weight):
                grad_x = ops.linear_grad_input(grad, weight)  # [..., in]
            else:
                grad_x = (grad.float() @ weight.float()).to(ctx.x_dtype)  # [..., in]
        if ctx.needs_input_grad[1]:
            g = grad.reshape(-1, grad.shape[-1]).float()  # [rows, out]
            grad_w = (g.t() @ x.reshape(-1, x.shape[-1]).float()).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.reshape(-1, grad.shape[-1]).float().sum(0).to(weight.dtype)
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear; in float32 (same numbers, float32 speed) for bf16/fp16 on CPUs without a native GEMM.

    Under autocast F.linear is used as is (autocast chooses the dtypes)."""
    if x.dtype == weight.dtype and needs_float32_gemm(x) and not torch.is_autocast_enabled(x.device.type):
        return _Float32Linear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


_PLAIN_FORWARDS: list[Callable] = [nn.Linear.forward]


def plain_linear_forward(forward: Callable) -> Callable:
    """Decorator for an nn.Linear subclass's forward that computes exactly F.linear(x, self.weight, self.bias)
    (only the kernel differs), so that code computing that itself may skip it."""
    _PLAIN_FORWARDS.append(forward)
    return forward


def is_plain_linear(module: nn.Module) -> bool:
    """True when module(x) is y = x @ module.weight.T + module.bias and nothing else (see the module docstring)."""
    if not isinstance(module, nn.Linear) or module._forward_hooks or module._forward_pre_hooks:
        return False
    forward = type(module).forward
    return any(forward is f for f in _PLAIN_FORWARDS)
