"""Dense linear layer: ``gemma4::linear`` (y = x @ weight^T + bias), with a fake kernel and autograd.

The C++ kernels are csrc/linear/ (a weight-streaming GEMV for decode, a bf16-widening blocked GEMM
for prefill); the plain-PyTorch definition is ``reference.linear``. ``modeling/linear.py`` decides
per call whether this op or ``torch.nn.functional.linear`` runs (whichever is faster there).
"""
from __future__ import annotations

import torch

from gemma4 import _native  # noqa: F401  (loads the operator library)

from . import _fake_checks as chk

__all__ = ["linear"]


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``y = x @ weight.T + bias``, accumulated in float32 and rounded once to ``x.dtype``.

    Args:
        x: ``[..., K]``, float32 or bfloat16 (made contiguous if it is not).
        weight: ``[N, K]`` in ``x.dtype``, contiguous (an ``nn.Linear`` weight).
        bias: ``[N]`` in ``x.dtype``, or None.

    Returns:
        ``[..., N]`` in ``x.dtype``. Differentiable in all three (the backward is plain torch matmuls).
    """
    return torch.ops.gemma4.linear(x.contiguous(), weight, bias)


def _check(op, x, weight, bias):
    """csrc/linear/linear_checks.h's checks, for the fake kernel."""
    if x.dtype not in (torch.float32, torch.bfloat16):
        chk.fail(op, f"x must be float32 or bfloat16, got {chk.dtype_name(x.dtype)}")
    chk.dtype(op, "weight", weight, x.dtype)
    if x.dim() < 1:
        chk.fail(op, "x must have at least 1 dimension, got a scalar")
    chk.dim(op, "weight", weight, 2)
    chk.size(op, "weight", weight, 1, x.shape[-1])
    chk.same_device(op, x, weight=weight, bias=bias)
    if bias is not None:
        chk.dtype(op, "bias", bias, x.dtype)
        chk.dim(op, "bias", bias, 1)
        chk.size(op, "bias", bias, 0, weight.shape[0])


@torch.library.register_fake("gemma4::linear")
def _linear_fake(x, weight, bias):
    _check("gemma4::linear", x, weight, bias)
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _setup_context(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _backward(ctx, grad_out):
    x, weight = ctx.saved_tensors
    grad_x = grad_out @ weight if ctx.needs_input_grad[0] else None  # [..., K]
    grad_w = grad_b = None
    if ctx.needs_input_grad[1]:
        grad_w = grad_out.reshape(-1, grad_out.shape[-1]).t() @ x.reshape(-1, x.shape[-1])  # [N, K]
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_b = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)  # [N]
    return grad_x, grad_w, grad_b


torch.library.register_autograd("gemma4::linear", _backward, setup_context=_setup_context)
