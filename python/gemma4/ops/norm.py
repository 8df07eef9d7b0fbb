"""RMSNorm as used by Gemma 4: ``gemma4::rms_norm`` and its backward, with fake kernels.

The C++ kernels are csrc/norm/rms_norm_cpu.cpp and rms_norm_backward_cpu.cpp, the autograd
rms_norm_autograd.cpp; the plain-PyTorch definition is ``reference.rms_norm``.
"""
from __future__ import annotations

import torch

from gemma4 import _native  # noqa: F401  (loads the operator library)

from . import _fake_checks as chk

__all__ = ["rms_norm"]


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """Root-mean-square normalisation over the last dimension.

    ``y = x * (mean(x**2, -1) + eps) ** -0.5 * weight``, computed in float32 (float64 for float64
    ``x``) and rounded once to ``x.dtype`` -- the same maths as transformers' Gemma4RMSNorm. Gemma 4
    multiplies by ``weight`` itself, not ``1 + weight``.

    Args:
        x: ``[..., D]``, float32/float64/bfloat16/float16, any strides.
        weight: ``[D]`` or None (no scale, e.g. Gemma 4's v-norm). Any float dtype; it is read in
            x's accumulation type, so a float32 weight with bfloat16 activations is fine.
        eps: added to the mean square, >= 0.

    Returns:
        ``[..., D]`` in ``x.dtype``. Differentiable in ``x`` and ``weight`` (the weight's gradient
        comes back in the weight's dtype).
    """
    return torch.ops.gemma4.rms_norm(x, weight, eps)


def _check(op, x, weight, eps, grad_out=None):
    """norm_checks.h's checks, for the fake kernels."""
    chk.same_device(op, x, weight=weight, grad_out=grad_out)
    chk.floating(op, "x", x)
    if x.dim() < 1:
        chk.fail(op, "x must have at least 1 dimension (the normalised one), got a scalar")
    if not (eps >= 0 and eps != float("inf")):
        chk.fail(op, f"eps must be a finite non-negative number, got {eps}")
    if weight is not None:
        chk.floating(op, "weight", weight)
        chk.dim(op, "weight", weight, 1)
        if weight.shape[0] != x.shape[-1]:
            chk.fail(op, f"weight must have x.size(-1) = {x.shape[-1]} elements, got shape {list(weight.shape)}")
    if grad_out is not None:
        chk.like(op, "grad_out", grad_out, "x", x)


@torch.library.register_fake("gemma4::rms_norm")
def _rms_norm_fake(x, weight, eps):
    _check("gemma4::rms_norm", x, weight, eps)
    return x.new_empty(x.shape)


@torch.library.register_fake("gemma4::rms_norm_backward")
def _rms_norm_backward_fake(grad_out, x, weight, eps):
    _check("gemma4::rms_norm_backward", x, weight, eps, grad_out)
    grad_weight = weight.new_empty(weight.shape) if weight is not None else x.new_empty((0,))
    return x.new_empty(x.shape), grad_weight

