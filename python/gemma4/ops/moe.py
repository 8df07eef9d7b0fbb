"""Mixture-of-experts routing and experts: ``gemma4::moe_route`` and ``gemma4::moe_experts``, their
backward ops, fake kernels and autograd.

The C++ kernels are csrc/moe/moe_route_cpu.cpp, moe_experts_cpu.cpp and
moe_experts_backward_cpu.cpp; the plain-PyTorch definitions are ``reference.moe_route`` and
``reference.moe_experts`` (transformers' Gemma4TextRouter after its projection, and
Gemma4TextExperts).
"""
from __future__ import annotations

import torch

from gemma4 import _native  # noqa: F401  (loads the operator library)

__all__ = ["moe_route", "moe_experts"]


def moe_route(logits: torch.Tensor, per_expert_scale: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k expert routing of Gemma 4's MoE layers.

    Per token row: ``p = softmax(logits)`` in float32 (float64 for float64 logits) over all E experts;
    ``indices`` = the ``top_k`` experts with the largest ``p``, largest first (equal probabilities:
    lower expert index first; NaN ranks highest, as in ``torch.topk``);
    ``weights = p[indices] / p[indices].sum() * per_expert_scale[indices]``.

    Args:
        logits: ``[N, E]`` router logits, float32/float64/bfloat16/float16 (made contiguous).
        per_expert_scale: ``[E]``, any float dtype (read in float32, float64 for float64 logits).
        top_k: experts per token, ``1 <= top_k <= E``.

    Returns:
        ``(weights, indices)``: ``weights`` float32 ``[N, top_k]`` (float64 for float64 logits),
        differentiable in ``logits`` and ``per_expert_scale`` (the top-k choice is held constant, as
        autograd through ``torch.topk`` does); ``indices`` int64 ``[N, top_k]``, not differentiable.
    """
    return torch.ops.gemma4.moe_route(logits.contiguous(), per_expert_scale.contiguous(), top_k)


def moe_experts(
    x: torch.Tensor,
    weights: torch.Tensor,
    indices: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    activation: str = "gelu_tanh",
) -> torch.Tensor:
    """The experts of a Gemma 4 MoE layer, applied to routed tokens.

    ``out[n] = sum_k weights[n, k] * down[e] @ (act(G_e @ x[n]) * (U_e @ x[n]))`` with
    ``e = indices[n, k]`` and ``gate_up[e] = [G_e; U_e]`` (rows ``0..Im-1`` gate, ``Im..2Im-1`` up) --
    the layout of transformers' ``Gemma4TextExperts.gate_up_proj`` / ``down_proj``. Tokens are grouped
    by expert and each expert's weights are read once; the expert weights stay in their dtype and
    everything accumulates in float32 (float64 for float64), rounded once to ``x.dtype``.

    Args:
        x: ``[N, H]`` hidden states, float32/float64/bfloat16/float16 (made contiguous).
        weights: ``[N, K]`` routing weights, float32 or ``x.dtype`` (e.g. from :func:`moe_route`).
        indices: ``[N, K]`` int64 expert ids, each in ``[0, E)`` (checked; out of range raises).
        gate_up: ``[E, 2*Im, H]`` in ``x.dtype``.
        down: ``[E, H, Im]`` in ``x.dtype``.
        activation: ``"gelu_tanh"`` (Gemma 4's gelu_pytorch_tanh) or ``"silu"``.

    Returns:
        ``[N, H]`` in ``x.dtype``. Differentiable in ``x``, ``weights``, ``gate_up`` and ``down``
        (each gradient in its input's dtype; experts no token chose get zero gradients);
        ``indices`` is not differentiable.
    """
    return torch.ops.gemma4.moe_experts(
        x.contiguous(), weights.contiguous(), indices.contiguous(), gate_up.contiguous(), down.contiguous(), activation
    )


# ---- fake kernels (shapes and dtypes only) for torch.compile / meta tensors ----


@torch.library.register_fake("gemma4::moe_route")
def _moe_route_fake(logits, per_expert_scale, top_k):
    n = logits.shape[0]
    wdtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return logits.new_empty((n, top_k), dtype=wdtype), logits.new_empty((n, top_k), dtype=torch.int64)


@torch.library.register_fake("gemma4::moe_route_backward")
def _moe_route_backward_fake(grad_weights, logits, per_expert_scale, indices):
    return torch.empty_like(logits), torch.empty_like(per_expert_scale)


@torch.library.register_fake("gemma4::moe_experts")
def _moe_experts_fake(x, weights, indices, gate_up, down, activation):
    return torch.empty_like(x)


@torch.library.register_fake("gemma4::moe_experts_backward")
def _moe_experts_backward_fake(grad_out, x, weights, indices, gate_up, down, activation):
    return torch.empty_like(x), torch.empty_like(weights), torch.empty_like(gate_up), torch.empty_like(down)


# ---- autograd ----


def _route_setup_context(ctx, inputs, output):
    logits, per_expert_scale, top_k = inputs
    weights, indices = output
    ctx.mark_non_differentiable(indices)
    ctx.save_for_backward(logits, per_expert_scale, indices)


def _route_backward(ctx, grad_weights, grad_indices):
    logits, per_expert_scale, indices = ctx.saved_tensors
    if grad_weights is None:
        return None, None, None
    grad_logits, grad_scale = torch.ops.gemma4.moe_route_backward(
        grad_weights.contiguous(), logits, per_expert_scale, indices
    )
    return grad_logits, grad_scale, None


torch.library.register_autograd("gemma4::moe_route", _route_backward, setup_context=_route_setup_context)


def _experts_setup_context(ctx, inputs, output):
    x, weights, indices, gate_up, down, activation = inputs
    ctx.save_for_backward(x, weights, indices, gate_up, down)
    ctx.activation = activation


def _experts_backward(ctx, grad_out):
    x, weights, indices, gate_up, down = ctx.saved_tensors
    grad_x, grad_weights, grad_gate_up, grad_down = torch.ops.gemma4.moe_experts_backward(
        grad_out.contiguous(), x, weights, indices, gate_up, down, ctx.activation
    )
    return grad_x, grad_weights, None, grad_gate_up, grad_down, None


torch.library.register_autograd("gemma4::moe_experts", _experts_backward, setup_context=_experts_setup_context)
