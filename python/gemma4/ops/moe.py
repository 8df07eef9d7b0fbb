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

from . import _fake_checks as chk
from .activation import check_activation

__all__ = ["moe_route", "moe_experts"]


def moe_route(logits: torch.Tensor, per_expert_scale: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k expert routing of Gemma 4's MoE layers.

    Per token row: ``p = softmax(logits)`` in float32 (float64 for float64 logits) over all E experts;
    ``indices`` = the ``top_k`` experts with the largest ``p``, largest first (equal probabilities:
    lower expert index first; NaN ranks highest, as in ``torch.topk``);
    ``weights = p[indices] / p[indices].sum() * per_expert_scale[indices]``.

    Args:
        logits: ``[N, E]`` router logits, float32/float64/bfloat16/float16.
        per_expert_scale: ``[E]``, any float dtype (read in float32, float64 for float64 logits).
        top_k: experts per token, ``1 <= top_k <= E``.

    Returns:
        ``(weights, indices)``: ``weights`` float32 ``[N, top_k]`` (float64 for float64 logits),
        differentiable in ``logits`` and ``per_expert_scale`` (the top-k choice is held constant, as
        autograd through ``torch.topk`` does); ``indices`` int64 ``[N, top_k]``, not differentiable.
    """
    return torch.ops.gemma4.moe_route(logits, per_expert_scale, top_k)


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
        x: ``[N, H]`` hidden states, float32/float64/bfloat16/float16.
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
    return torch.ops.gemma4.moe_experts(x, weights, indices, gate_up, down, activation)


# ---- fake kernels (shapes and dtypes only) for torch.compile / meta tensors ----


def _check_route(op, logits, scale):
    """moe_checks.h's checks shared by moe_route and its backward, for the fake kernels."""
    chk.same_device(op, logits, per_expert_scale=scale)
    chk.floating(op, "logits", logits)
    chk.floating(op, "per_expert_scale", scale)
    chk.dim(op, "logits", logits, 2)
    chk.dim(op, "per_expert_scale", scale, 1)
    if logits.shape[1] < 1:
        chk.fail(op, f"logits must have at least one expert column, got shape {list(logits.shape)}")
    chk.size(op, "per_expert_scale", scale, 0, logits.shape[1])


def _check_indices(op, indices, n):
    if indices.dtype != torch.int64:
        chk.fail(op, f"indices must be int64, got {chk.dtype_name(indices.dtype)}")
    chk.dim(op, "indices", indices, 2)
    chk.size(op, "indices", indices, 0, n)


def _check_experts(op, x, weights, indices, gate_up, down, activation, grad_out=None):
    """moe_checks.h's checks of moe_experts and its backward, for the fake kernels."""
    check_activation(op, activation)
    chk.same_device(op, x, weights=weights, indices=indices, gate_up=gate_up, down=down, grad_out=grad_out)
    chk.floating(op, "x", x)
    if weights.dtype not in (torch.float32, x.dtype):
        chk.fail(op, f"weights must be float32 or x's dtype ({chk.dtype_name(x.dtype)}), got "
                     f"{chk.dtype_name(weights.dtype)}")
    for name, t in (("gate_up", gate_up), ("down", down)):
        if t.dtype != x.dtype:
            chk.fail(op, f"{name} must have x's dtype ({chk.dtype_name(x.dtype)}), got {chk.dtype_name(t.dtype)}")
    chk.dim(op, "x", x, 2)
    chk.dim(op, "weights", weights, 2)
    _check_indices(op, indices, x.shape[0])
    chk.dim(op, "gate_up", gate_up, 3)
    chk.dim(op, "down", down, 3)
    if weights.shape != indices.shape:
        chk.fail(op, f"weights must have the shape of indices {list(indices.shape)}, got {list(weights.shape)}")
    E, Im = gate_up.shape[0], down.shape[2]
    if E < 1:
        chk.fail(op, f"gate_up must hold at least one expert, got shape {list(gate_up.shape)}")
    if gate_up.shape[1] != 2 * Im:
        chk.fail(op, f"gate_up.size(1) must be 2 * down.size(2) = {2 * Im}, got gate_up {list(gate_up.shape)} "
                     f"and down {list(down.shape)}")
    chk.size(op, "gate_up", gate_up, 2, x.shape[1])
    chk.size(op, "down", down, 0, E)
    chk.size(op, "down", down, 1, x.shape[1])
    if grad_out is not None:
        if grad_out.dtype != x.dtype:
            chk.fail(op, f"grad_out must have x's dtype ({chk.dtype_name(x.dtype)}), got "
                         f"{chk.dtype_name(grad_out.dtype)}")
        if grad_out.shape != x.shape:
            chk.fail(op, f"grad_out must have the shape of x {list(x.shape)}, got {list(grad_out.shape)}")


@torch.library.register_fake("gemma4::moe_route")
def _moe_route_fake(logits, per_expert_scale, top_k):
    op = "gemma4::moe_route"
    _check_route(op, logits, per_expert_scale)
    E = logits.shape[1]
    if not 1 <= top_k <= E:
        chk.fail(op, f"top_k must be in [1, {E}] (the number of experts), got {top_k}")
    n = logits.shape[0]
    wdtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return logits.new_empty((n, top_k), dtype=wdtype), logits.new_empty((n, top_k), dtype=torch.int64)


@torch.library.register_fake("gemma4::moe_route_backward")
def _moe_route_backward_fake(grad_weights, logits, per_expert_scale, indices):
    op = "gemma4::moe_route_backward"
    _check_route(op, logits, per_expert_scale)
    chk.same_device(op, logits, grad_weights=grad_weights, indices=indices)
    chk.floating(op, "grad_weights", grad_weights)
    _check_indices(op, indices, logits.shape[0])
    E, K = logits.shape[1], indices.shape[1]
    if not 1 <= K <= E:
        chk.fail(op, f"indices.size(1) (top_k) must be in [1, {E}], got {K}")
    if grad_weights.shape != indices.shape:
        chk.fail(op, f"grad_weights must have the shape of indices {list(indices.shape)}, got "
                     f"{list(grad_weights.shape)}")
    return logits.new_empty(logits.shape), per_expert_scale.new_empty(per_expert_scale.shape)


@torch.library.register_fake("gemma4::moe_experts")
def _moe_experts_fake(x, weights, indices, gate_up, down, activation):
    _check_experts("gemma4::moe_experts", x, weights, indices, gate_up, down, activation)
    return x.new_empty(x.shape)


@torch.library.register_fake("gemma4::moe_experts_backward")
def _moe_experts_backward_fake(grad_out, x, weights, indices, gate_up, down, activation):
    _check_experts("gemma4::moe_experts_backward", x, weights, indices, gate_up, down, activation, grad_out)
    return (x.new_empty(x.shape), weights.new_empty(weights.shape), gate_up.new_empty(gate_up.shape),
            down.new_empty(down.shape))


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
        grad_weights, logits, per_expert_scale, indices
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
        grad_out, x, weights, indices, gate_up, down, ctx.activation
    )
    return grad_x, grad_weights, None, grad_gate_up, grad_down, None


torch.library.register_autograd("gemma4::moe_experts", _experts_backward, setup_context=_experts_setup_context)
