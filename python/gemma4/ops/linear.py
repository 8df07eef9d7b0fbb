"""Dense linear layer: ``gemma4::linear`` (y = x @ weight^T + bias), with a fake kernel.

The C++ kernels are csrc/linear/ (a weight-streaming GEMV for decode, a bf16-widening blocked GEMM
for prefill), the autograd csrc/linear/linear_autograd.cpp; the plain-PyTorch definition is
``reference.linear``. ``modeling/linear.py`` decides per call whether this op or
``torch.nn.functional.linear`` runs (whichever is faster there).
"""
from __future__ import annotations

import torch

from gemma4 import _native  # noqa: F401  (loads the operator library)

from . import _fake_checks as chk

__all__ = ["linear", "linear_cpu_isa", "linear_grad_input"]


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``y = x @ weight.T + bias``, accumulated in float32 and rounded once to ``x.dtype``.

    Args:
        x: ``[..., K]``, float32 or bfloat16 (made contiguous if it is not).
        weight: ``[N, K]`` in ``x.dtype`` (or bfloat16 under float32 ``x``: float32 results without a float32
            copy of the weight), contiguous (an ``nn.Linear`` weight).
        bias: ``[N]`` in ``x.dtype``, or None.

    Returns:
        ``[..., N]`` in ``x.dtype``. Differentiable in all three (the input gradient is ``linear_grad_input``,
        the weight's a torch matmul).

    On the CPU, subnormal values (below 1.2e-38) in the inputs and products count as zero: Intel CPUs take a
    slow microcode assist for each (csrc/common/flush_denormals.h), and no fp32 sum of normal magnitude shows them.
    """
    return torch.ops.gemma4.linear(x.contiguous(), weight, bias)


def linear_grad_input(grad_out: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``grad_out @ weight``: ``linear``'s input gradient, accumulated in float32 and rounded once.

    Args:
        grad_out: ``[..., N]``, float32 or bfloat16 (made contiguous if it is not).
        weight: ``[N, K]`` in ``grad_out.dtype`` (or bfloat16 under float32 ``grad_out``), contiguous.

    Returns:
        ``[..., K]`` in ``grad_out.dtype``. Differentiable in both.
    """
    return torch.ops.gemma4.linear_grad_input(grad_out.contiguous(), weight)



def linear_cpu_isa(request: str = "") -> str:
    """The CPU decode kernel's (x of at most 8 rows) instruction set: ``""`` reports it (``"avx2"`` or
    ``"avx512"``); ``"auto"`` (the default: AVX-512 where the CPU and OS support AVX-512 F/BW/VL), ``"avx2"`` or
    ``"avx512"`` selects it. Returns the one in use."""
    return torch.ops.gemma4.linear_cpu_isa(request)

def _check_weight_dtype(op, weight, dtype):
    """check_weight_dtype of csrc/linear/linear_checks.h: x's dtype, or bf16 under fp32 x."""
    if dtype == torch.float32:
        if weight.dtype not in (torch.float32, torch.bfloat16):
            chk.fail(op, f"weight must be Float or BFloat16, got {chk.dtype_name(weight.dtype)}")
    else:
        chk.dtype(op, "weight", weight, dtype)


def _check_activation_and_weight(op, a, name, weight, weight_dim):
    """check_activation_and_weight of csrc/linear/linear_checks.h: the checks both ops make."""
    if a.dtype not in (torch.float32, torch.bfloat16):
        chk.fail(op, f"{name} must be float32 or bfloat16, got {chk.dtype_name(a.dtype)}")
    _check_weight_dtype(op, weight, a.dtype)
    if a.dim() < 1:
        chk.fail(op, f"{name} must have at least 1 dimension, got a scalar")
    chk.dim(op, "weight", weight, 2)
    chk.size(op, "weight", weight, weight_dim, a.shape[-1])
    chk.same_device(op, a, weight=weight)


def _check(op, x, weight, bias):
    """csrc/linear/linear_checks.h's checks, for the fake kernel."""
    _check_activation_and_weight(op, x, "x", weight, 1)
    chk.same_device(op, x, bias=bias)
    if bias is not None:
        chk.dtype(op, "bias", bias, x.dtype)
        chk.dim(op, "bias", bias, 1)
        chk.size(op, "bias", bias, 0, weight.shape[0])


@torch.library.register_fake("gemma4::linear")
def _linear_fake(x, weight, bias):
    _check("gemma4::linear", x, weight, bias)
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _check_grad_input(op, grad_out, weight):
    """csrc/linear/linear_checks.h's checks of linear_grad_input, for the fake kernel."""
    _check_activation_and_weight(op, grad_out, "grad_out", weight, 0)


@torch.library.register_fake("gemma4::linear_grad_input")
def _linear_grad_input_fake(grad_out, weight):
    _check_grad_input("gemma4::linear_grad_input", grad_out, weight)
    return grad_out.new_empty((*grad_out.shape[:-1], weight.shape[1]))


# Autograd: csrc/linear/linear_autograd.cpp (in C++, so that calls under torch.no_grad skip Python).
