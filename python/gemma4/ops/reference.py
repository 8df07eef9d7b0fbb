"""Plain-PyTorch references for every gemma4 operator.

Used by tests and docs only: the model never calls these. Each follows the operator's schema in
csrc/registration.cpp and computes in float32 (float64 for float64 inputs), rounding once at the end.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F


def _acc(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    xf = x.to(_acc(x))
    y = xf * torch.pow(xf.pow(2).mean(-1, keepdim=True) + eps, -0.5)
    if weight is not None:
        y = y * weight.to(_acc(x))
    return y.to(x.dtype)


def rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """x [B,T,nH,hd]; positions [B|1,T]; inv_freq [hd/2]. Rotate-half (GPT-NeoX) convention."""
    acc = _acc(x)
    angles = positions.to(acc)[..., None] * inv_freq.to(acc)  # [B|1, T, hd/2]
    emb = torch.cat((angles, angles), dim=-1)[:, :, None, :]  # [B|1, T, 1, hd]
    xf = x.to(acc)
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (xf * emb.cos() + rotated * emb.sin()).to(x.dtype)


def attention(q, k, v, key_mask=None, scale: float = 1.0, window: int = 0):
    """q [B,T,nH,hd], k/v [B,S,nKV,hd] -> (out [B,T,nH,hd], lse [B,nH,T] fp32)."""
    B, T, nH, hd = q.shape
    S, nKV = k.shape[1], k.shape[2]
    acc = _acc(q)
    groups = nH // nKV
    qf = q.to(acc).transpose(1, 2)  # [B, nH, T, hd]
    kf = k.to(acc).transpose(1, 2).repeat_interleave(groups, dim=1)  # [B, nH, S, hd]
    vf = v.to(acc).transpose(1, 2).repeat_interleave(groups, dim=1)
    qi = torch.arange(T, device=q.device)[:, None] + (S - T)  # key index of each query
    kj = torch.arange(S, device=q.device)[None, :]
    allowed = kj <= qi
    if window > 0:
        allowed = allowed & (kj > qi - window)
    allowed = allowed[None, None]  # [1, 1, T, S]
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :].bool()
    # A masked key contributes nothing, even a non-finite one (an fp16 overflow at a padded, future or
    # out-of-window position): then K and V are masked per (query, key) before any product, so that
    # neither the forward nor autograd's backward forms 0 * inf.
    finite = bool(torch.isfinite(kf).all() and torch.isfinite(vf).all())
    if finite:
        scores = qf @ kf.transpose(-1, -2) * scale  # [B, nH, T, S]
    else:
        kq = torch.where(allowed[..., None], kf[:, :, None], 0.0)  # [B, nH, T, S, hd]
        scores = (qf[:, :, :, None] * kq).sum(-1) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # [B, nH, T]; -inf where nothing is visible
    # softmax normalises with the row maximum (stable for huge scores); a row that sees nothing gets
    # zeros, while a NaN among visible scores still makes its row NaN.
    visible = allowed.expand(B, nH, T, S).any(-1, keepdim=True)  # [B, nH, T, 1]
    probs = torch.where(visible, torch.softmax(scores, dim=-1), 0.0)
    if finite:
        out = probs @ vf  # [B, nH, T, hd]
    else:
        out = (probs[..., None] * torch.where(allowed[..., None], vf[:, :, None], 0.0)).sum(-2)
    out = out.transpose(1, 2)  # [B, T, nH, hd]
    return out.to(q.dtype).contiguous(), lse.to(torch.float32 if acc == torch.float32 else acc)


def _gelu_tanh(u: torch.Tensor) -> torch.Tensor:
    """0.5 u (1 + tanh(z)) written as u * sigmoid(2 z), z = sqrt(2/pi) (u + 0.044715 u^3): the same
    function without the cancellation of 1 + tanh(z) for negative u (transformers' form loses all
    relative accuracy near u = -7)."""
    z = 0.7978845608028654 * (u + 0.044715 * u * u * u)
    return u * torch.sigmoid(2 * z)


def gated_activation(gate: torch.Tensor, up: torch.Tensor, activation: str = "gelu_tanh") -> torch.Tensor:
    acc = _acc(gate)
    g = gate.to(acc)
    if activation == "gelu_tanh":
        a = _gelu_tanh(g)
    elif activation == "silu":
        a = F.silu(g)
    else:
        raise ValueError(f"unknown activation {activation!r}")
    return (a * up.to(acc)).to(gate.dtype)


def moe_route(logits: torch.Tensor, per_expert_scale: torch.Tensor, top_k: int):
    """logits [N,E] -> (weights fp32 [N,K], indices int64 [N,K]), as transformers' Gemma4TextRouter."""
    acc = _acc(logits)
    probs = torch.softmax(logits.to(acc), dim=-1)
    weights, indices = torch.topk(probs, top_k, dim=-1)
    weights = weights / weights.sum(-1, keepdim=True)
    weights = weights * per_expert_scale.to(acc)[indices]
    return weights, indices


def moe_experts(x, weights, indices, gate_up, down, activation: str = "gelu_tanh"):
    """x [N,H], weights [N,K], indices [N,K], gate_up [E,2Im,H], down [E,H,Im] -> [N,H]."""
    acc = _acc(x)
    Im = down.shape[-1]
    out = torch.zeros(x.shape, dtype=acc, device=x.device)
    for e in indices.unique().tolist():
        token, slot = (indices == e).nonzero(as_tuple=True)
        xe = x[token].to(acc)  # [n_e, H]
        gu = xe @ gate_up[e].to(acc).t()  # [n_e, 2Im]
        h = gated_activation(gu[:, :Im], gu[:, Im:], activation)
        o = h @ down[e].to(acc).t()  # [n_e, H]
        out.index_add_(0, token, o * weights[token, slot].to(acc)[:, None])
    return out.to(x.dtype)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] @ weight [N, K]^T (+ bias [N]) in float32 (float64 for float64), rounded once."""
    acc = _acc(x)
    y = x.to(acc) @ weight.to(acc).t()  # [..., N]
    if bias is not None:
        y = y + bias.to(acc)
    return y.to(x.dtype)


def linear_grad_input(grad_out: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """grad_out [..., N] @ weight [N, K] in float32 (float64 for float64), rounded once."""
    acc = _acc(grad_out)
    return (grad_out.to(acc) @ weight.to(acc)).to(grad_out.dtype)  # [..., K]


def softcap(logits: torch.Tensor, cap: float) -> torch.Tensor:
    return cap * torch.tanh(logits / cap)


def softcap_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, row_weight: torch.Tensor,
                          cap: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(losses [n], gradient [n,V]) of row_weight * CE(cap * tanh(logits / cap), targets), out of place.

    The cap in the logits' dtype (as transformers rounds it), the rest in float32 (float64 for float64);
    the gradient rounded once to the logits' dtype.
    """
    acc = _acc(logits)
    t = torch.tanh(logits / cap) if cap is not None else None  # [n,V] logits dtype
    capped = (t * cap if t is not None else logits).to(acc)  # [n,V]
    logp = torch.log_softmax(capped, dim=-1)  # [n,V]
    w = row_weight.to(acc)[:, None]  # [n,1]
    losses = -(logp.gather(1, targets[:, None]) * w).squeeze(1)  # [n]
    onehot = torch.zeros_like(logp).scatter_(1, targets[:, None], 1.0)  # [n,V]
    grad = w * (logp.exp() - onehot)  # [n,V]
    if t is not None:
        grad = grad * (1 - t.to(acc) ** 2)
    return losses, grad.to(logits.dtype)


# ---- LoRA's thin GEMMs (gemma4::lora_down / lora_up / lora_weight_grad) ----
# In float32, or float64 when any input is float64 (the tests' exact reference).

def _lora_acc(*tensors: torch.Tensor | None) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def lora_down(x: torch.Tensor, weight: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * x [N, K] @ weight [r, K]^T -> [N, r] in the accumulation dtype."""
    acc = _lora_acc(x, weight)
    return (x.to(acc) @ weight.to(acc).t()) * scale


def lora_up(down: torch.Tensor, weight: torch.Tensor, scale: float, base: torch.Tensor | None,
            dtype: torch.dtype) -> torch.Tensor:
    """base [N, M] + scale * down [N, r] @ weight [M, r]^T, summed in the accumulation dtype, rounded to dtype."""
    acc = _lora_acc(down, weight, base)
    out = (down.to(acc) @ weight.to(acc).t()) * scale  # [N, M]
    if base is not None:
        out = base.to(acc) + out
    return out.to(dtype)


def lora_weight_grad(x: torch.Tensor, d: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * d [N, r]^T @ x [N, K] -> [r, K] in the accumulation dtype."""
    acc = _lora_acc(x, d)
    return (d.to(acc).t() @ x.to(acc)) * scale


__all__ = ["rms_norm", "rope", "attention", "gated_activation", "moe_route", "moe_experts", "linear", "linear_grad_input", "softcap",
           "softcap_cross_entropy", "lora_down", "lora_up", "lora_weight_grad"]


# ---- quantized linear (gemma4::qgemm) ----

def dequantize(qweight: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Packed weights -> [N, K]: uint8 [N, K/2] int4 (32-weight runs of 16 bytes, byte j = weight j low
    nibble + weight j+16 high nibble, stored q+8) or int8 [N, K]; times scales [N, K/group]. The 16-row tiled
    layout (uint8 [N/16, K/8, 64], scales [N/16, K/32, 16]: bytes 4 r + i of vector (t, c) are byte 4 c + i of row
    16 t + r) is read back into rows first."""
    if qweight.dim() == 3:
        t, c, _ = qweight.shape
        qweight = qweight.reshape(t, c, 16, 4).permute(0, 2, 1, 3).reshape(16 * t, 4 * c)  # [N, K/2]
        scales = scales.permute(0, 2, 1).reshape(16 * t, -1)  # [N, K/32]
    if qweight.dtype == torch.uint8:
        n = qweight.shape[0]
        runs = qweight.reshape(n, -1, 16).to(torch.int16)  # [N, K/32, 16]
        q = (torch.cat((runs & 0xF, runs >> 4), dim=-1) - 8).reshape(n, -1)  # [N, K]
    else:
        q = qweight
    n, k = q.shape
    groups = scales.shape[1]
    w = q.to(dtype).reshape(n, groups, k // groups) * scales.to(dtype)[:, :, None]  # [N, G, group]
    return w.reshape(n, k)


def qgemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None):
    """y = x @ dequantize(qweight, scales)^T (+ bias), in float32 (float64 for float64 x)."""
    acc = _acc(x)
    y = x.to(acc) @ dequantize(qweight, scales, acc).t()  # [..., N]
    if bias is not None:
        y = y + bias.to(acc)
    return y.to(x.dtype)


__all__ += ["dequantize", "qgemm"]


# ---- MoE experts on packed weights (gemma4::moe_experts_quant) ----

def moe_experts_quant(x, weights, indices, gate_up_qweight, gate_up_scales, down_qweight, down_scales,
                      activation: str = "gelu_tanh"):
    """moe_experts on the dequantized expert banks: each chosen expert's gate_up [2Im, H] and down [H, Im]
    dequantized in float32 (float64 for float64 x), the same maths, rounded once to x.dtype."""
    acc = _acc(x)
    Im = gate_up_qweight.shape[1] // 2
    out = torch.zeros(x.shape, dtype=acc, device=x.device)
    for e in indices.unique().tolist():
        token, slot = (indices == e).nonzero(as_tuple=True)
        xe = x[token].to(acc)  # [n_e, H]
        gu = xe @ dequantize(gate_up_qweight[e], gate_up_scales[e], acc).t()  # [n_e, 2Im]
        h = gated_activation(gu[:, :Im], gu[:, Im:], activation)
        o = h @ dequantize(down_qweight[e], down_scales[e], acc).t()  # [n_e, H]
        out.index_add_(0, token, o * weights[token, slot].to(acc)[:, None])
    return out.to(x.dtype)


__all__ += ["moe_experts_quant"]
