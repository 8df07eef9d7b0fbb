"""RMSNorm as used by Gemma 4: ``gemma4::rms_norm`` and its backward, with fake kernels and autograd.

The C++ kernels are csrc/norm/rms_norm_cpu.cpp and rms_norm_backward_cpu.cpp; the plain-PyTorch
definition is ``reference.rms_norm``.
"""
from __future__ import annotations

import torch

from gemma4 import _native  # noqa: F401  (loads the operator library)

__all__ = ["rms_norm"]


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """Root-mean-square normalisation over the last dimension.

    ``y = x * (mean(x**2, -1) + eps) ** -0.5 * weight``, computed in float32 (float64 for float64
    ``x``) and rounded once to ``x.dtype`` -- the same maths as transformers' Gemma4RMSNorm. Gemma 4
    multiplies by ``weight`` itself, not ``1 + weight``.

    Args:
        x: ``[..., D]``, float32/float64/bfloat16/float16 (made contiguous if it is not).
        weight: ``[D]`` or None (no scale, e.g. Gemma 4's v-norm). Any float dtype; it is read in
            x's accumulation type, so a float32 weight with bfloat16 activations is fine.
        eps: added to the mean square, >= 0.

    Returns:
        ``[..., D]`` in ``x.dtype``. Differentiable in ``x`` and ``weight`` (the weight's gradient
        comes back in the weight's dtype).
    """
    return torch.ops.gemma4.rms_norm(x.contiguous(), None if weight is None else weight.contiguous(), eps)


@torch.library.register_fake("gemma4::rms_norm")
def _rms_norm_fake(x, weight, eps):
    return torch.empty_like(x)


@torch.library.register_fake("gemma4::rms_norm_backward")
def _rms_norm_backward_fake(grad_out, x, weight, eps):
    grad_weight = torch.empty_like(weight) if weight is not None else x.new_empty((0,))
    return torch.empty_like(x), grad_weight


def _setup_context(ctx, inputs, output):
    x, weight, eps = inputs
    ctx.save_for_backward(x, weight)
    ctx.eps = eps


def _backward(ctx, grad_out):
    x, weight = ctx.saved_tensors
    grad_x, grad_weight = torch.ops.gemma4.rms_norm_backward(grad_out.contiguous(), x, weight, ctx.eps)
    return grad_x, (grad_weight if weight is not None else None), None


torch.library.register_autograd("gemma4::rms_norm", _backward, setup_context=_setup_context)
