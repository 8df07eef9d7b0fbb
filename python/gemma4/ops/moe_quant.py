"""The MoE experts on int4/int8 packed weights: ``gemma4::moe_experts_quant``, its backward op, fake kernels and
autograd.

The C++ kernels are csrc/moe/moe_experts_quant_cpu.cpp (the forward: each chosen expert through the CPU qgemm)
and moe_experts_quant_composed.cpp (the CUDA forward and every backward: a host loop over the experts composed
of ops); the plain-PyTorch definition is ``reference.moe_experts_quant``. The packed format is qgemm's
(gemma4/quant/formats.py), one matrix per expert.
"""
from __future__ import annotations

import torch

from gemma4 import _native  # noqa: F401  (loads the operator library)

from . import _fake_checks as chk
from .activation import check_activation

__all__ = ["moe_experts_quant"]

_X_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def moe_experts_quant(
    x: torch.Tensor,
    weights: torch.Tensor,
    indices: torch.Tensor,
    gate_up_qweight: torch.Tensor,
    gate_up_scales: torch.Tensor,
    down_qweight: torch.Tensor,
    down_scales: torch.Tensor,
    activation: str = "gelu_tanh",
) -> torch.Tensor:
    """The experts of a Gemma 4 MoE layer with weight-only quantized expert banks, applied to routed tokens.

    ``out[n] = sum_k weights[n, k] * y_e(x[n])`` with ``e = indices[n, k]``, where per expert
    ``[gate | up] = qgemm(x, gate_up_e)``, ``h = act(gate) * up`` and ``y_e = qgemm(h, down_e)`` (the
    ``gemma4::qgemm`` maths: products exact in float32, float32 sums), each of ``gate | up``, ``h`` and
    ``y_e`` rounded to ``x.dtype``; the routed outputs accumulate in float32, expert by expert, and are rounded
    once to ``x.dtype``. Tokens are grouped by expert and each chosen expert's weights are read once per call.
    On CPU the result is bit for bit that of calling qgemm, gated_activation and qgemm on each expert's tokens
    in a Python loop; on CUDA the op is such a loop on the host (one device-to-host copy of the counts).

    Args:
        x: ``[N, H]`` float32/bfloat16/float16 (made contiguous), H a multiple of 32.
        weights: ``[N, K]`` routing weights, float32 or ``x.dtype`` (e.g. from :func:`moe_route`).
        indices: ``[N, K]`` int64 expert ids, each in ``[0, E)`` (checked).
        gate_up_qweight: ``[E, 2*Im, H/2]`` uint8 (int4) or ``[E, 2*Im, H]`` int8; rows ``0..Im-1`` the gate,
            ``Im..2Im-1`` the up projection (transformers' ``gate_up_proj`` layout), Im a multiple of 32.
        gate_up_scales: ``[E, 2*Im, H // group]`` float32/bfloat16/float16, group a multiple of 32 dividing H
            (or H: per output channel).
        down_qweight: ``[E, H, Im/2]`` uint8 or ``[E, H, Im]`` int8.
        down_scales: ``[E, H, Im // group]``, its own group size (26B-A4B's Im = 704: groups of 32, 64 or Im).
        activation: ``"gelu_tanh"`` or ``"silu"``.

    Returns:
        ``[N, H]`` in ``x.dtype``. Differentiable in ``x`` and ``weights`` (gradients in their dtypes, computed
        in float32 with the weights dequantized one expert at a time); the quantized weights are frozen.
    """
    return torch.ops.gemma4.moe_experts_quant(x.contiguous(), weights, indices, gate_up_qweight, gate_up_scales,
                                              down_qweight, down_scales, activation)


# ---- fake kernels (csrc/moe/moe_experts_quant.h's checks, shapes and dtypes only) ----


def _check_bank(op, x, qweight, scales, e, rows, k, qname, sname):
    chk.same_device(op, x, **{qname: qweight, sname: scales})
    if qweight.dtype not in (torch.uint8, torch.int8):
        chk.fail(op, f"{qname} must be uint8 (packed int4) or int8, got {chk.dtype_name(qweight.dtype)}")
    if scales.dtype not in _X_DTYPES:
        chk.fail(op, f"{sname} must be float32, bfloat16 or float16, got {chk.dtype_name(scales.dtype)}")
    chk.dim(op, qname, qweight, 3)
    chk.dim(op, sname, scales, 3)
    chk.size(op, qname, qweight, 0, e)
    chk.size(op, qname, qweight, 1, rows)
    chk.size(op, qname, qweight, 2, k // 2 if qweight.dtype == torch.uint8 else k)
    chk.size(op, sname, scales, 0, e)
    chk.size(op, sname, scales, 1, rows)
    g = scales.shape[2]
    if not (g > 0 and k % g == 0 and (k // g) % 32 == 0):
        chk.fail(op, f"{sname}.size(2) must divide K = {k} into groups of a multiple of 32 weights, got shape "
                     f"{list(scales.shape)}")
    for name, t in ((qname, qweight), (sname, scales)):
        if not t.is_contiguous():
            chk.fail(op, f"{name} must be contiguous")


def _check_args(op, x, weights, indices, guq, gus, dnq, dns, activation, grad_out=None):
    check_activation(op, activation)
    chk.same_device(op, x, weights=weights, indices=indices)
    if x.dtype not in _X_DTYPES:
        chk.fail(op, f"x must be float32, bfloat16 or float16, got {chk.dtype_name(x.dtype)}")
    if weights.dtype not in (torch.float32, x.dtype):
        chk.fail(op, f"weights must be float32 or x's dtype ({chk.dtype_name(x.dtype)}), got "
                     f"{chk.dtype_name(weights.dtype)}")
    if indices.dtype != torch.int64:
        chk.fail(op, f"indices must be int64, got {chk.dtype_name(indices.dtype)}")
    chk.dim(op, "x", x, 2)
    chk.dim(op, "weights", weights, 2)
    chk.dim(op, "indices", indices, 2)
    if not x.is_contiguous():
        chk.fail(op, "x must be contiguous")
    n, h = x.shape
    chk.size(op, "indices", indices, 0, n)
    if weights.shape != indices.shape:
        chk.fail(op, f"weights must have the shape of indices {list(indices.shape)}, got {list(weights.shape)}")
    if not (h > 0 and h % 32 == 0):
        chk.fail(op, f"x.size(1) (the hidden size H) must be a positive multiple of 32, got {h}")
    chk.dim(op, "gate_up_qweight", guq, 3)
    e, rows = guq.shape[0], guq.shape[1]
    if e < 1:
        chk.fail(op, f"gate_up_qweight must hold at least one expert, got shape {list(guq.shape)}")
    if not (rows > 0 and rows % 64 == 0):
        chk.fail(op, f"gate_up_qweight.size(1) must be 2 * Im with Im a positive multiple of 32, got shape "
                     f"{list(guq.shape)}")
    im = rows // 2
    _check_bank(op, x, guq, gus, e, rows, h, "gate_up_qweight", "gate_up_scales")
    _check_bank(op, x, dnq, dns, e, h, im, "down_qweight", "down_scales")
    if grad_out is not None:
        chk.same_device(op, x, grad_out=grad_out)
        if grad_out.dtype != x.dtype:
            chk.fail(op, f"grad_out must have x's dtype ({chk.dtype_name(x.dtype)}), got "
                         f"{chk.dtype_name(grad_out.dtype)}")
        if grad_out.shape != x.shape:
            chk.fail(op, f"grad_out must have the shape of x {list(x.shape)}, got {list(grad_out.shape)}")


@torch.library.register_fake("gemma4::moe_experts_quant")
def _moe_experts_quant_fake(x, weights, indices, gate_up_qweight, gate_up_scales, down_qweight, down_scales,
                            activation):
    _check_args("gemma4::moe_experts_quant", x, weights, indices, gate_up_qweight, gate_up_scales, down_qweight,
                down_scales, activation)
    return x.new_empty(x.shape)


@torch.library.register_fake("gemma4::moe_experts_quant_backward")
def _moe_experts_quant_backward_fake(grad_out, x, weights, indices, gate_up_qweight, gate_up_scales, down_qweight,
                                     down_scales, activation):
    _check_args("gemma4::moe_experts_quant_backward", x, weights, indices, gate_up_qweight, gate_up_scales,
                down_qweight, down_scales, activation, grad_out)
    return x.new_empty(x.shape), weights.new_empty(weights.shape)


# ---- autograd: gradients for x and the routing weights; the packed weights and scales are frozen ----


def _setup_context(ctx, inputs, output):
    x, weights, indices, gate_up_qweight, gate_up_scales, down_qweight, down_scales, activation = inputs
    ctx.save_for_backward(x, weights, indices, gate_up_qweight, gate_up_scales, down_qweight, down_scales)
    ctx.activation = activation


def _backward(ctx, grad_out):
    saved = ctx.saved_tensors
    grad_x, grad_weights = torch.ops.gemma4.moe_experts_quant_backward(grad_out.contiguous(), *saved, ctx.activation)
    return (grad_x if ctx.needs_input_grad[0] else None, grad_weights if ctx.needs_input_grad[1] else None,
            None, None, None, None, None, None)


torch.library.register_autograd("gemma4::moe_experts_quant", _backward, setup_context=_setup_context)
