"""Next-token cross-entropy through the LM head and soft-cap, chunked over tokens.

The plain computation materialises float32 logits [tokens, V] (V = 262144: 1 GiB per 1024 tokens)
and keeps them for backward. Here each chunk of tokens goes through the head, the soft-cap and the
float32 log-softmax, contributes its loss, and is dropped; backward recomputes the chunk's logits.
Forward value and gradients equal transformers' (logits in the model dtype, soft-cap in the model
dtype, cross-entropy in float32, mean over labels != -100).
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

IGNORE_INDEX = -100


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """labels [B,T] -> the next token's label at each position, -100 at the end (transformers' shift)."""
    return F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, cap: float | None) -> torch.Tensor:
    logits = hidden @ weight.t()  # [n, V] model dtype
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits


class _ChunkedHeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, cap, chunk_size):
        # hidden [N,H], weight [V,H], targets [N] (-100 = ignored); returns the summed loss (fp32).
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk_size):
            t = targets[start:start + chunk_size]
            logits = _chunk_logits(hidden[start:start + chunk_size], weight, cap).float()  # [n,V]
            total = total + F.cross_entropy(logits, t, ignore_index=IGNORE_INDEX, reduction="sum")
        ctx.save_for_backward(hidden, weight, targets)
        ctx.cap, ctx.chunk_size = cap, chunk_size
        return total

    @staticmethod
    def backward(ctx, grad_total):
        hidden, weight, targets = ctx.saved_tensors
        cap, chunk_size = ctx.cap, ctx.chunk_size
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if ctx.needs_input_grad[1] else None
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start:start + chunk_size]  # [n,H]
            t = targets[start:start + chunk_size]  # [n]
            logits = _chunk_logits(h, weight, cap)  # [n,V] model dtype (recomputed)
            probs = torch.softmax(logits.float(), dim=-1)  # [n,V] fp32
            valid = t != IGNORE_INDEX
            probs[valid, t[valid]] -= 1.0  # d(sum CE)/d(logits) = softmax - onehot
            grad_logits = probs * valid[:, None] * grad_total  # [n,V]
            if cap is not None:  # d(cap*tanh(l/cap))/dl = 1 - (capped/cap)^2
                grad_logits = grad_logits * (1.0 - (logits.float() / cap) ** 2)
            grad_logits = grad_logits.to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[start:start + chunk_size] = grad_logits @ weight  # [n,H]
            if grad_weight is not None:
                grad_weight += grad_logits.t().float() @ h.float()  # [V,H]
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None


def chunked_causal_lm_loss(hidden: torch.Tensor, head_weight: torch.Tensor, labels: torch.Tensor,
                           softcap: float | None, chunk_size: int = 1024) -> torch.Tensor:
    """Mean next-token cross-entropy of hidden [B,T,H] through head_weight [V,H] and the soft-cap."""
    targets = shift_labels(labels).reshape(-1).to(hidden.device)  # [B*T]
    total = _ChunkedHeadCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), head_weight, targets,
                                           softcap, chunk_size)
    return total / (targets != IGNORE_INDEX).sum()
