"""Gated activations (GeGLU / SwiGLU): ``gemma4::gated_activation`` and its backward, with fake
kernels and autograd.

The C++ kernel is csrc/activation/gated_activation_cpu.cpp; the plain-PyTorch definition is
``reference.gated_activation``.
"""
from __future__ import annotations

import torch

from gemma4 import _native  # noqa: F401  (loads the operator library)

__all__ = ["gated_activation"]

_ACTIVATIONS = ("gelu_tanh", "gelu_pytorch_tanh", "silu")  # as csrc/common/activation_math.h


def gated_activation(gate: torch.Tensor, up: torch.Tensor, activation: str = "gelu_tanh") -> torch.Tensor:
    """``act(gate) * up`` elementwise, in one pass.

    ``act`` is ``"gelu_tanh"`` (transformers' ``gelu_pytorch_tanh``, Gemma's MLP; the alias
    ``"gelu_pytorch_tanh"`` is accepted too) or ``"silu"``. Computed in float32 (float64 for
    float64 inputs) and rounded once to the inputs' dtype.

    Args:
        gate, up: the same shape ``[..., I]`` and dtype (float32/float64/bfloat16/float16).
        activation: the activation's name; any other name raises RuntimeError.

    Returns:
        ``[..., I]`` in the inputs' dtype. Differentiable in ``gate`` and ``up``.
    """
    return torch.ops.gemma4.gated_activation(gate.contiguous(), up.contiguous(), activation)


def _check_activation(op: str, activation: str) -> None:
    # The same error as the C++ kernel, raised while tracing too (the fake kernels run no C++).
    if activation not in _ACTIVATIONS:
        raise RuntimeError(f'{op}: activation must be "gelu_tanh" or "silu", got "{activation}"')


@torch.library.register_fake("gemma4::gated_activation")
def _gated_activation_fake(gate, up, activation):
    _check_activation("gemma4::gated_activation", activation)
    return torch.empty_like(gate)


@torch.library.register_fake("gemma4::gated_activation_backward")
def _gated_activation_backward_fake(grad_out, gate, up, activation):
    _check_activation("gemma4::gated_activation_backward", activation)
    return torch.empty_like(gate), torch.empty_like(up)


def _setup_context(ctx, inputs, output):
    gate, up, activation = inputs
    ctx.save_for_backward(gate, up)
    ctx.activation = activation


def _backward(ctx, grad_out):
    gate, up = ctx.saved_tensors
    grad_gate, grad_up = torch.ops.gemma4.gated_activation_backward(grad_out.contiguous(), gate, up, ctx.activation)
    return grad_gate, grad_up, None


torch.library.register_autograd("gemma4::gated_activation", _backward, setup_context=_setup_context)
