"""Next-token cross-entropy through the LM head and the soft-cap: fused, chunked over tokens.

The plain computation (transformers) materialises logits [tokens, V] (V = 262144: 1 GiB of float32 per
1024 tokens), upcasts them, keeps them and several same-sized intermediates for backward, and does two
head GEMMs (logits, then grad_hidden = grad_logits @ W). Here, for a plain Linear head (nn.Linear or
gemma4's Linear: float32_gemm.is_plain_linear), each chunk of tokens goes through

    logits = h @ W.T -> soft-cap -> float32 log-softmax -> loss and d loss / d logits (closed form)
    -> grad_hidden = grad_logits @ W            (and grad_W += grad_logits.T @ h when W trains)

inside the forward pass, so the gradient costs the two GEMMs the plain computation does and no third
(no recomputation), no [tokens, V] tensor outlives its chunk, and backward only scales the stored
gradients by the incoming one. The elementwise chain (soft-cap, log-softmax, loss, gradient) is one op,
gemma4::softcap_cross_entropy, which overwrites each chunk's logits with their gradient in three passes
per row and makes no [chunk, V] temporary (under torch.compile the composed torch ops, which inductor fuses).

The loss is the mean over labels != -100 (transformers' ForCausalLMLoss): a row's gradient carries the
weight valid/count, computed from the targets with no data-dependent indexing (invalid targets are
clamped to 0 and weighted 0), so torch.compile(fullgraph=True) traces it.

A head that is not a plain Linear (LoRA on the head, a quantized head, a modules_to_save copy, one with a
forward hook) goes the generic way: per chunk, head(h) under autograd inside a non-reentrant checkpoint
(recomputed in backward), so any module works and only one chunk's logits exist at a time.

Numbers: logits and the soft-cap in the model dtype (as transformers), log-softmax in float32; the
float32 value equals the plain loss to rounding, gradients too (tests/training/test_loss.py).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from gemma4 import ops
from gemma4.float32_gemm import is_plain_linear, needs_float32_gemm
from gemma4.linear_choice import uses_gemma4_kernel

IGNORE_INDEX = -100

# Tokens per chunk: the head GEMMs' M dimension. Measured (dev/train/bench_loss.py, 256 tokens, 1 thread,
# CPU time, AVX2 EPYC): 10.1 s at 256 against 11.0 s at 128; larger chunks only grow the one logits
# buffer, 256 x V in the model dtype (256 MiB in float32 for V = 262144).
DEFAULT_CHUNK_SIZE = 256


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """labels [B,T] -> the next token's label at each position, -100 at the end (transformers' shift)."""
    return F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]


def soft_cap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Gemma's final logit soft-cap, tanh(logits / cap) * cap in the logits' dtype as upstream (None: no cap). The
    model's forward and the greedy head (generation/greedy_head.py) both call it: the same ops, the same roundings."""
    return _softcap(logits, cap)[0]


def _softcap(logits: torch.Tensor, cap: float | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(cap * tanh(logits / cap), the tanh) in the logits' dtype, as transformers rounds it; (logits, None)
    without a cap."""
    if cap is None:
        return logits, None
    t = torch.tanh(logits / cap)
    return t * cap, t


def _chunk_loss_and_grad(logits: torch.Tensor, targets: torch.Tensor, row_weight: torch.Tensor,
                         cap: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """For a chunk of rows, composed of torch ops (the torch.compile path): (sum of row_weight * cross-entropy,
    float32 gradient of that sum w.r.t. logits).

    logits [r,V] model dtype (pre-cap), targets [r] in [0, V), row_weight [r] float32 (0 = ignored row).
    """
    capped, t = _softcap(logits, cap)  # [r,V] model dtype
    logp = torch.log_softmax(capped.float(), dim=-1)  # [r,V] fp32
    picked = logp.gather(1, targets[:, None]).squeeze(1)  # [r]
    loss = -(picked * row_weight).sum()
    # d/d capped of sum_r w_r * (lse_r - capped[r, t_r]) = w * (softmax - onehot)
    w = row_weight[:, None]  # [r,1]
    grad = logp.exp_().mul_(w).scatter_add_(1, targets[:, None], -w)  # [r,V] fp32
    if t is not None:  # d capped / d logits = 1 - tanh^2
        grad = torch.ops.aten.tanh_backward(grad, t.float())
    return loss, grad


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """sum_i row_weight_i * CE(softcap(hidden_i @ weight.T), target_i), gradients computed in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, row_weight, cap, chunk_size, need_hidden, need_weight):
        # hidden [N,H] model dtype, weight [V,H], targets [N] in [0, V), row_weight [N] fp32
        N, V = hidden.shape[0], weight.shape[0]
        n_max = min(chunk_size, N)
        compiling = torch.compiler.is_compiling()
        total = hidden.new_zeros((), dtype=torch.float32)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        # CPU fp32: gemma4::linear's packed GEMM runs this wide GEMM (H -> V) and grad_hidden's (V -> H) faster
        # than MKL's sgemm on the benchmarks' EPYC; it returns a fresh [n,V] per chunk (freed before the next
        # one is made).
        own_gemm = not compiling and hidden.dtype == torch.float32 and (
            weight.dtype == torch.bfloat16 or uses_gemma4_kernel(hidden[:n_max], weight))  # bf16: a frozen head
        logits_buf = None if own_gemm else hidden.new_empty((n_max, V))  # logits, then their gradient
        for start in range(0, N, chunk_size):
            end = min(start + chunk_size, N)
            h = hidden[start:end]  # [n,H]
            if own_gemm:
                logits = None  # drop the previous chunk's buffer first
                logits = ops.linear(h, weight)  # [n,V]
            else:
                logits = logits_buf[:end - start]  # [n,V]
                torch.mm(h, weight.t(), out=logits)
            if compiling:  # inductor fuses the composed chain into a few kernels
                loss, grad = _chunk_loss_and_grad(logits, targets[start:end], row_weight[start:end], cap)
                logits.copy_(grad)
            else:  # one kernel: the loss of each row, its gradient written over the logits
                loss = ops.softcap_cross_entropy(logits, targets[start:end], row_weight[start:end], cap).sum()
            total = total + loss
            if grad_hidden is not None and own_gemm:
                grad_hidden[start:end] = ops.linear_grad_input(logits, weight)  # [n,H]
            elif grad_hidden is not None:
                torch.mm(logits, weight, out=grad_hidden[start:end])  # [n,H]
            if grad_weight is not None:
                grad_weight.add_(torch.mm(logits.t(), h))  # [V,H]; float32 accumulation over chunks
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_total.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_total).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None, None, None


def _checkpointed_chunk_loss(head: nn.Module, h: torch.Tensor, targets: torch.Tensor, row_weight: torch.Tensor,
                             cap: float | None) -> torch.Tensor:
    capped, _ = _softcap(head(h), cap)  # [n,V]
    return F.cross_entropy(capped.float(), targets, reduction="none").mul(row_weight).sum()


def chunked_causal_lm_loss(hidden: torch.Tensor, head: nn.Module | torch.Tensor, labels: torch.Tensor,
                           softcap: float | None, chunk_size: int = DEFAULT_CHUNK_SIZE) -> torch.Tensor:
    """Mean next-token cross-entropy of hidden [B,T,H] through the LM head and the soft-cap (float32 scalar).

    head: the head module (a plain Linear without bias, float32_gemm.is_plain_linear, takes the fused path;
    any other module, e.g. LoRA or quantized, is called per chunk under checkpoint), or a head weight [V,H].
    labels [B,T]: token ids, -100 where a position does not count; shifted by one inside.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    H = hidden.shape[-1]
    targets = shift_labels(labels).reshape(-1).to(hidden.device)  # [N]
    valid = targets != IGNORE_INDEX  # [N]
    count = valid.sum()
    row_weight = valid.float() / count  # [N]: the mean's weights, 0 on ignored rows (NaN if none counts, as upstream)
    safe_targets = torch.where(valid, targets, 0)  # [N] in [0, V)
    hidden2 = hidden.reshape(-1, H)  # [N,H]
    weight = head if isinstance(head, torch.Tensor) else None
    if is_plain_linear(head) and head.bias is None:  # nn.Linear or gemma4's Linear: logits = h @ W.T
        weight = head.weight
    if weight is not None:
        if needs_float32_gemm(weight):  # no native bf16/fp16 GEMM on this CPU: the head GEMMs in float32
            # A frozen bf16 head stays as it is: gemma4::linear and linear_grad_input take a bf16 weight under
            # float32 hidden states (the same numbers, without a float32 copy of the head: 1.6 GB for E2B's).
            frozen_bf16 = (weight.dtype == torch.bfloat16 and not weight.requires_grad
                           and not torch.compiler.is_compiling() and uses_gemma4_kernel(hidden2, weight))
            hidden2 = hidden2.float()
            if not frozen_bf16:
                weight = weight.float()
        return _FusedLinearCrossEntropy.apply(hidden2, weight, safe_targets, row_weight, softcap, chunk_size,
                                              hidden2.requires_grad, weight.requires_grad)
    total = hidden2.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden2.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        total = total + checkpoint(_checkpointed_chunk_loss, head, hidden2[rows], safe_targets[rows],
                                   row_weight[rows], softcap, use_reentrant=False)
    return total
