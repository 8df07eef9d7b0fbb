"""Self-attention of one Gemma 4 layer, sliding or full, owning its K/V or reading another layer's."""
from __future__ import annotations

import torch
from torch import nn

from gemma4 import ops

from .linear import Linear
from .norm import Gemma4RMSNorm


class Gemma4Attention(nn.Module):
    """q/k RMSNorm with weights, weightless v norm, rotate-half RoPE, scale 1.0, causal (+window).

    A KV-shared layer has no k/v projections: it attends over the full-length K/V that its source
    layer produced earlier in the same forward (`shared_kv[spec.kv_source]`), cache or no cache.
    A full layer of a keys-as-values model (spec.k_eq_v) has no v_proj: V is the raw K projection.
    """

    def __init__(self, config, spec):
        super().__init__()
        H, nH, hd = config.hidden_size, config.num_attention_heads, spec.head_dim
        self.spec = spec
        self.num_heads, self.num_kv_heads, self.head_dim = nH, spec.num_kv_heads, hd
        bias = config.attention_bias
        self.q_proj = Linear(H, nH * hd, bias=bias)
        self.q_norm = Gemma4RMSNorm(hd, eps=config.rms_norm_eps)
        if not spec.kv_shared:
            self.k_proj = Linear(H, self.num_kv_heads * hd, bias=bias)
            self.v_proj = None if spec.k_eq_v else Linear(H, self.num_kv_heads * hd, bias=bias)
            self.k_norm = Gemma4RMSNorm(hd, eps=config.rms_norm_eps)
            self.v_norm = Gemma4RMSNorm(hd, eps=config.rms_norm_eps, with_scale=False)
        self.o_proj = Linear(nH * hd, H, bias=bias)
        self.scaling = 1.0  # the q/k norms carry the scale
        # yarn multiplies RoPE's cos and sin (so the rotated q and k) by its attention factor; 1 otherwise
        self.rope_scaling = spec.rope_frequencies()[1]

    def _rope(self, x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
        out = ops.rope(x, positions, inv_freq)  # [B,T,heads,hd]
        return out if self.rope_scaling == 1.0 else out * self.rope_scaling

    def project_kv(self, x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor):
        B, T, _ = x.shape
        k_raw = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim)  # [B,T,nKV,hd]
        v_raw = k_raw if self.v_proj is None else self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim)
        key = self._rope(self.k_norm(k_raw), positions, inv_freq)  # [B,T,nKV,hd]
        value = self.v_norm(v_raw)  # [B,T,nKV,hd]
        return key, value

    def forward(self, x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor,
                key_mask: torch.Tensor | None, shared_kv: dict, cache=None) -> torch.Tensor:
        B, T, _ = x.shape
        query = self.q_proj(x).view(B, T, self.num_heads, self.head_dim)  # [B,T,nH,hd]
        query = self._rope(self.q_norm(query), positions, inv_freq)  # [B,T,nH,hd]
        if self.spec.kv_shared:
            # the source layer's full-length K/V (cached past included) with its key mask and window
            key, value, key_mask, window = shared_kv[self.spec.kv_source]
        else:
            key, value = self.project_kv(x, positions, inv_freq)  # [B,T,nKV,hd]
            window = self.spec.window
            if cache is not None:
                key, value, key_mask, window = cache.update(self.spec, key, value, key_mask)
            if self.spec.stores_shared_kv:
                shared_kv[self.spec.index] = (key, value, key_mask, window)
        out = ops.attention(query, key, value, key_mask, self.scaling, window)  # [B,T,nH,hd]
        return self.o_proj(out.reshape(B, T, self.num_heads * self.head_dim))
