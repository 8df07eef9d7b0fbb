"""Causal / sliding-window grouped-query attention: ``gemma4::attention`` and its backward, with fake
kernels.

The C++ kernels are csrc/attention/attention_cpu.cpp and attention_backward_cpu.cpp (flash-attention
style, tiled with an online softmax; see attention_kernels.h), the autograd attention_autograd.cpp; the
plain-PyTorch definition is ``reference.attention``.
"""
from __future__ import annotations

import torch

from gemma4 import _native  # noqa: F401  (loads the operator library)

from . import _fake_checks as chk

__all__ = ["attention", "attention_cpu_isa"]


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    scale: float = 1.0,
    window: int = 0,
) -> torch.Tensor:
    """Causal grouped-query attention with an optional sliding window and key padding mask.

    Query ``t`` sits at key index ``p = S - T + t``, so the same call serves prefill (``S == T``) and
    decoding against a cache (``S > T``). Key ``j`` is visible to query ``t`` iff ``j <= p``, and, when
    ``window > 0``, ``j > p - window`` (the last ``window`` keys including the query's own), and
    ``key_mask[b, j]`` when a mask is given. Query head ``h`` reads KV head ``h // (nH // nKV)``
    (no copy of K/V is made). ``out[t] = softmax(scale * q[t] . k[visible]) @ v[visible]``; a query
    that sees no key gets zeros (and a zero gradient).

    Args:
        q: ``[B, T, nH, hd]``; float32/float64/bfloat16/float16; last dim unit-stride, other strides free.
        k, v: ``[B, S, nKV, hd]`` with ``S >= T`` and ``nH % nKV == 0``; same dtype as ``q``; last dim
            unit-stride, other strides free (e.g. ``cache[:, :, :S].transpose(1, 2)`` of a
            ``[B, nKV, T_max, hd]`` cache works without a copy). ``hd <= 512``.
        key_mask: optional bool ``[B, S]``, True = may be attended (left padding: False at the front).
        scale: multiplies the scores (Gemma 4 uses 1.0: q and k are RMS-normed).
        window: sliding window length in keys (including the query itself); ``<= 0`` means none.

    Returns:
        ``out`` ``[B, T, nH, hd]`` (contiguous) in ``q.dtype``, computed in float32 (float64 for
        float64). Differentiable in ``q``, ``k`` and ``v`` (``grad_k``/``grad_v`` summed over the query
        heads of each group). The op also returns the row log-sum-exp (``torch.ops.gemma4.attention``),
        which is saved for the backward and is not differentiable.
    """
    out, _ = torch.ops.gemma4.attention(q, k, v, key_mask, float(scale), int(window))
    return out


def attention_cpu_isa(request: str = "") -> str:
    """The instruction set of the CPU attention's bf16 decode products (query groups of at most 8 rows: one
    decoded token of a model with at most 8 query heads per KV head): ``""`` reports it, ``"avx512bf16"``
    (``vdpbf16ps`` on the bf16 K/V rows; the default where the CPU has AVX512_BF16) or ``"avx2"`` (fp32 FMAs on
    widened tiles); ``"auto"``, ``"avx2"`` or ``"avx512bf16"`` selects it. Returns the one in use."""
    return torch.ops.gemma4.attention_cpu_isa(request)


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


_MAX_HEAD_DIM = 512  # as kMaxHeadDim in csrc/attention/attention_checks.h


def _check(op, q, k, v, key_mask):
    """attention_checks.h's checks of the forward's arguments, for the fake kernels."""
    chk.same_device(op, q, k=k, v=v, key_mask=key_mask)
    chk.floating(op, "q", q)
    chk.dtype(op, "k", k, q.dtype)
    chk.dtype(op, "v", v, q.dtype)
    for name, t in (("q", q), ("k", k), ("v", v)):
        chk.dim(op, name, t, 4)
    chk.size(op, "k", k, 0, q.shape[0])
    chk.size(op, "k", k, 3, q.shape[3])
    for d in range(4):
        chk.size(op, "v", v, d, k.shape[d])
    T, nH, hd, S, nKV = q.shape[1], q.shape[2], q.shape[3], k.shape[1], k.shape[2]
    if S < T:
        chk.fail(op, f"k/v length S (k.size(1) = {S}) must be >= the query length T (q.size(1) = {T})")
    if nKV == 0 or nH % nKV:
        chk.fail(op, f"q heads (q.size(2) = {nH}) must be a multiple of the k/v heads (k.size(2) = {nKV})")
    if not 1 <= hd <= _MAX_HEAD_DIM:
        chk.fail(op, f"head_dim (q.size(3)) must be in [1, {_MAX_HEAD_DIM}], got {hd}")
    if key_mask is not None:
        chk.dtype(op, "key_mask", key_mask, torch.bool)
        chk.dim(op, "key_mask", key_mask, 2)
        chk.size(op, "key_mask", key_mask, 0, q.shape[0])
        chk.size(op, "key_mask", key_mask, 1, S)


@torch.library.register_fake("gemma4::attention")
def _attention_fake(q, k, v, key_mask, scale, window):
    _check("gemma4::attention", q, k, v, key_mask)
    B, T, nH, hd = q.shape
    out = q.new_empty((B, T, nH, hd))
    lse = q.new_empty((B, nH, T), dtype=_lse_dtype(q.dtype))
    return out, lse


@torch.library.register_fake("gemma4::attention_backward")
def _attention_backward_fake(grad_out, q, k, v, out, lse, key_mask, scale, window):
    op = "gemma4::attention_backward"
    _check(op, q, k, v, key_mask)
    chk.same_device(op, q, grad_out=grad_out, out=out, lse=lse)
    for name, t in (("grad_out", grad_out), ("out", out)):
        chk.dtype(op, name, t, q.dtype)
        chk.dim(op, name, t, 4)
        for d in range(4):
            chk.size(op, name, t, d, q.shape[d])
    chk.dtype(op, "lse", lse, _lse_dtype(q.dtype))
    chk.dim(op, "lse", lse, 3)
    for d, want in enumerate((q.shape[0], q.shape[2], q.shape[1])):
        chk.size(op, "lse", lse, d, want)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)

