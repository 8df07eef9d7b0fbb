"""Dense linear layer: ``gemma4::linear`` (y = x @ weight^T + bias), with a fake kernel and autograd.

The C++ kernels are csrc/linear/ (a weight-streaming GEMV for decode, a bf16-widening blocked GEMM
for prefill); the plain-PyTorch definition is ``reference.linear``. ``modeling/linear.py`` decides
per call whether this op or ``torch.nn.functional.linear`` runs (whichever is faster there).
"""
from __future__ import annotations

import torch

from gemma4 import _native  # noqa: F401  (loads the operator library)

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


@torch.library.register_fake("gemma4::linear")
def _linear_fake(x, weight, bias):
    torch._check(weight.dim() == 2, lambda: f"gemma4::linear: weight must have 2 dimensions, got {weight.shape}")
    torch._check(weight.shape[1] == x.shape[-1],
                 lambda: f"gemma4::linear: weight.size(1) must be {x.shape[-1]}, got shape {tuple(weight.shape)}")
    torch._check(weight.dtype == x.dtype, lambda: f"gemma4::linear: weight must be {x.dtype}, got {weight.dtype}")
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
