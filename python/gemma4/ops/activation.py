"""Gated activations (GeGLU / SwiGLU): ``gemma4::gated_activation`` and its backward, with fake
kernels.

The C++ kernel is csrc/activation/gated_activation_cpu.cpp, the autograd
gated_activation_autograd.cpp; the plain-PyTorch definition is
``reference.gated_activation``.
"""
from __future__ import annotations

import torch

from gemma4 import _native  # noqa: F401  (loads the operator library)

from . import _fake_checks as chk

__all__ = ["gated_activation"]

_ACTIVATIONS = ("gelu_tanh", "gelu_pytorch_tanh", "silu")  # as parse_activation in csrc/common/checks.h


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
    return torch.ops.gemma4.gated_activation(gate, up, activation)


def check_activation(op: str, activation: str) -> None:
    """The C++ parse_activation's error, for the fake kernels (moe_experts' too)."""
    if activation not in _ACTIVATIONS:
        chk.fail(op, f'activation must be "gelu_tanh" or "silu", got "{activation}"')


def _check(op, gate, up, activation, grad_out=None):
    """activation_checks.h's checks, for the fake kernels."""
    check_activation(op, activation)
    chk.same_device(op, gate, up=up, grad_out=grad_out)
    chk.floating(op, "gate", gate)
    chk.like(op, "up", up, "gate", gate)
    if grad_out is not None:
        chk.like(op, "grad_out", grad_out, "gate", gate)


@torch.library.register_fake("gemma4::gated_activation")
def _gated_activation_fake(gate, up, activation):
    _check("gemma4::gated_activation", gate, up, activation)
    return gate.new_empty(gate.shape)


@torch.library.register_fake("gemma4::gated_activation_backward")
def _gated_activation_backward_fake(grad_out, gate, up, activation):
    _check("gemma4::gated_activation_backward", gate, up, activation, grad_out)
    return gate.new_empty(gate.shape), up.new_empty(up.shape)

