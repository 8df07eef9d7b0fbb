"""LoRA's thin GEMMs: ``gemma4::lora_down``, ``lora_up`` and ``lora_weight_grad``, with fake kernels and autograd.

A LoRA update over a bf16 model with float32 factors (PEFT's default, ``autocast_adapter_dtype``) is three
thin products and their gradients. PEFT forms them from float32 copies of the activation, the base output
and the output gradient; these ops read each in its own dtype and widen it in registers (CUDA), so the
copies never exist. The C++ kernels are csrc/lora/ (CPU: ATen's float32 GEMM on the widened activation,
the same maths as PEFT's; CUDA: bandwidth-bound thin kernels); the plain-PyTorch definitions are
``reference.lora_down`` / ``lora_up`` / ``lora_weight_grad``. lora/layers.py composes them:
``out = lora_up(lora_down(x, A), B, scaling, base_out)``; each op's gradient is the other ops, so the
backward is the same three kernels (autograd in C++: csrc/lora/lora_autograd.cpp).
"""
from __future__ import annotations

import torch

from gemma4 import _native  # noqa: F401  (loads the operator library)

from . import _fake_checks as chk

__all__ = ["lora_down", "lora_up", "lora_weight_grad"]

_ACTIVATIONS = (torch.float32, torch.bfloat16, torch.float16)


def lora_down(x: torch.Tensor, weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``scale * x @ weight.T`` in float32: a LoRA factor applied to an activation (``x @ A.T``).

    Args:
        x: ``[N, K]`` float32/bfloat16/float16 (made contiguous if it is not), read in its own dtype.
        weight: float32 ``[r, K]``, any strides (``B.t()`` of a ``[K, r]`` factor needs no copy).
        scale: a factor applied to the float32 sums.

    Returns:
        float32 ``[N, r]``. Differentiable in ``x`` and ``weight``.
    """
    return torch.ops.gemma4.lora_down(x.contiguous(), weight, scale)


def lora_up(down: torch.Tensor, weight: torch.Tensor, scale: float = 1.0, base: torch.Tensor | None = None,
            dtype: torch.dtype | None = None) -> torch.Tensor:
    """``base + scale * down @ weight.T``, summed in float32 and rounded once to ``dtype``.

    Args:
        down: float32 ``[N, r]`` (made contiguous if it is not).
        weight: float32 ``[M, r]``, any strides.
        scale: LoRA's scaling.
        base: ``[N, M]`` in ``dtype`` (the base layer's output; made contiguous if it is not), or None.
        dtype: float32/bfloat16/float16; default ``base.dtype``, else float32.

    Returns:
        ``[N, M]`` in ``dtype``. Differentiable in ``down``, ``weight`` and ``base``.
    """
    if dtype is None:
        dtype = base.dtype if base is not None else torch.float32
    return torch.ops.gemma4.lora_up(down.contiguous(), weight, scale,
                                    None if base is None else base.contiguous(), dtype)


def lora_weight_grad(x: torch.Tensor, d: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``scale * d.T @ x`` in float32: a LoRA factor's gradient (``grad_A = gd.T @ x``), the same on every run.

    Args:
        x: ``[N, K]`` float32/bfloat16/float16 (made contiguous if it is not), read in its own dtype.
        d: float32 ``[N, r]`` (made contiguous if it is not).
        scale: a factor applied to the float32 sums.

    Returns:
        float32 ``[r, K]``. Differentiable in ``x`` and ``d``.
    """
    return torch.ops.gemma4.lora_weight_grad(x.contiguous(), d.contiguous(), scale)


# ---- fake kernels: csrc/lora/lora_checks.h's checks ----

def _activation(op, name, x):
    if x.dtype not in _ACTIVATIONS:
        chk.fail(op, f"{name} must be float32, bfloat16 or float16, got {chk.dtype_name(x.dtype)}")
    chk.dim(op, name, x, 2)
    if not x.is_contiguous():
        chk.fail(op, f"{name} must be contiguous")


def _factor(op, name, w, like):
    chk.same_device(op, like, **{name: w})
    chk.dtype(op, name, w, torch.float32)
    chk.dim(op, name, w, 2)


@torch.library.register_fake("gemma4::lora_down")
def _lora_down_fake(x, weight, scale):
    op = "gemma4::lora_down"
    _activation(op, "x", x)
    _factor(op, "weight", weight, x)
    chk.size(op, "weight", weight, 1, x.shape[1])
    return x.new_empty((x.shape[0], weight.shape[0]), dtype=torch.float32)


@torch.library.register_fake("gemma4::lora_up")
def _lora_up_fake(down, weight, scale, base, dtype):
    op = "gemma4::lora_up"
    chk.dtype(op, "down", down, torch.float32)
    chk.dim(op, "down", down, 2)
    if not down.is_contiguous():
        chk.fail(op, "down must be contiguous")
    _factor(op, "weight", weight, down)
    chk.size(op, "weight", weight, 1, down.shape[1])
    if dtype not in _ACTIVATIONS:
        chk.fail(op, f"dtype must be float32, bfloat16 or float16, got {chk.dtype_name(dtype)}")
    if base is not None:
        chk.same_device(op, down, base=base)
        chk.dtype(op, "base", base, dtype)
        chk.dim(op, "base", base, 2)
        chk.size(op, "base", base, 0, down.shape[0])
        chk.size(op, "base", base, 1, weight.shape[0])
        if not base.is_contiguous():
            chk.fail(op, "base must be contiguous")
    return down.new_empty((down.shape[0], weight.shape[0]), dtype=dtype)


@torch.library.register_fake("gemma4::lora_weight_grad")
def _lora_weight_grad_fake(x, d, scale):
    op = "gemma4::lora_weight_grad"
    _activation(op, "x", x)
    chk.same_device(op, x, d=d)
    chk.dtype(op, "d", d, torch.float32)
    chk.dim(op, "d", d, 2)
    chk.size(op, "d", d, 0, x.shape[0])
    if not d.is_contiguous():
        chk.fail(op, "d must be contiguous")
    return x.new_empty((d.shape[1], x.shape[1]), dtype=torch.float32)


# ---- autograd: csrc/lora/lora_autograd.cpp (each op's gradient is made of the three ops; in C++ so that
# the calls, a GPU training step's ~1,200 of them, do not each pass through Python) ----
