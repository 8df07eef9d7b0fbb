"""Rotary position embedding (rotate-half): ``gemma4::rope`` and its backward, with fake kernels and
autograd.

The C++ kernel is csrc/rope/rope_cpu.cpp; the plain-PyTorch definition is ``reference.rope``.
"""
from __future__ import annotations

import torch

from gemma4 import _native  # noqa: F401  (loads the operator library)

__all__ = ["rope"]


def rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate pairs ``(x[..., j], x[..., j + hd/2])`` by the angle ``positions * inv_freq[j]``.

    ``y[j] = x[j] cos(a_j) - x[j + hd/2] sin(a_j)``, ``y[j + hd/2] = x[j + hd/2] cos(a_j) + x[j] sin(a_j)``
    with ``a_j = positions[b, t] * inv_freq[j]`` in float32 (float64 for float64 ``x``); the result is
    rounded once to ``x.dtype``. Zero entries of ``inv_freq`` (Gemma 4's proportional RoPE on
    full-attention layers) leave those dimensions unchanged.

    Args:
        x: ``[B, T, nH, hd]`` (``hd`` even), float32/float64/bfloat16/float16.
        positions: int64 ``[B, T]``, or ``[1, T]`` shared by the whole batch.
        inv_freq: float32 ``[hd / 2]``.

    Returns:
        ``[B, T, nH, hd]`` in ``x.dtype``. Differentiable in ``x`` (the backward rotates by ``-a``).
    """
    return torch.ops.gemma4.rope(x.contiguous(), positions.contiguous(), inv_freq.contiguous())


@torch.library.register_fake("gemma4::rope")
def _rope_fake(x, positions, inv_freq):
    return torch.empty_like(x)


@torch.library.register_fake("gemma4::rope_backward")
def _rope_backward_fake(grad_out, positions, inv_freq):
    return torch.empty_like(grad_out)


def _setup_context(ctx, inputs, output):
    _, positions, inv_freq = inputs
    ctx.save_for_backward(positions, inv_freq)


def _backward(ctx, grad_out):
    positions, inv_freq = ctx.saved_tensors
    return torch.ops.gemma4.rope_backward(grad_out.contiguous(), positions, inv_freq), None, None


torch.library.register_autograd("gemma4::rope", _backward, setup_context=_setup_context)
