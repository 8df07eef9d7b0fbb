"""Rotary position embedding (rotate-half): ``gemma4::rope`` and its backward, with fake kernels.

The C++ kernel is csrc/rope/rope_cpu.cpp, the autograd rope_autograd.cpp; the plain-PyTorch definition
is ``reference.rope``.
"""
from __future__ import annotations

import torch

from gemma4 import _native  # noqa: F401  (loads the operator library)

from . import _fake_checks as chk

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
    return torch.ops.gemma4.rope(x, positions, inv_freq)


def _check(op, xname, x, positions, inv_freq):
    """rope_checks.h's checks, for the fake kernels."""
    chk.same_device(op, x, positions=positions, inv_freq=inv_freq)
    chk.floating(op, xname, x)
    chk.dim(op, xname, x, 4)
    if x.shape[3] % 2:
        chk.fail(op, f"{xname}.size(3) (head_dim) must be even, got shape {list(x.shape)}")
    chk.dtype(op, "positions", positions, torch.int64)
    chk.dim(op, "positions", positions, 2)
    if positions.shape[0] not in (1, x.shape[0]):
        chk.fail(op, f"positions.size(0) must be 1 or {xname}.size(0) = {x.shape[0]}, got shape "
                     f"{list(positions.shape)}")
    if positions.shape[1] != x.shape[1]:
        chk.fail(op, f"positions.size(1) must be {xname}.size(1) = {x.shape[1]}, got shape {list(positions.shape)}")
    chk.dtype(op, "inv_freq", inv_freq, torch.float32)
    chk.dim(op, "inv_freq", inv_freq, 1)
    if inv_freq.shape[0] != x.shape[3] // 2:
        chk.fail(op, f"inv_freq must have head_dim/2 = {x.shape[3] // 2} elements, got shape {list(inv_freq.shape)}")


@torch.library.register_fake("gemma4::rope")
def _rope_fake(x, positions, inv_freq):
    _check("gemma4::rope", "x", x, positions, inv_freq)
    return x.new_empty(x.shape)


@torch.library.register_fake("gemma4::rope_backward")
def _rope_backward_fake(grad_out, positions, inv_freq):
    _check("gemma4::rope_backward", "grad_out", grad_out, positions, inv_freq)
    return grad_out.new_empty(grad_out.shape)

