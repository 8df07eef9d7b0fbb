"""One Gemma 4 decoder layer: attention, the dense MLP (+ MoE beside it), PLE, layer_scalar."""
from __future__ import annotations

import torch
from torch import nn

from gemma4 import ops

from .attention import Gemma4Attention
from .linear import Linear
from .mlp import Gemma4Experts, Gemma4MLP, Gemma4Router
from .norm import Gemma4RMSNorm


class Gemma4DecoderLayer(nn.Module):
    def __init__(self, config, spec):
        super().__init__()
        H, eps = config.hidden_size, config.rms_norm_eps
        act = config.activation_op  # "gelu_tanh" or "silu"
        self.spec = spec
        self.self_attn = Gemma4Attention(config, spec)
        self.mlp = Gemma4MLP(H, spec.intermediate_size, act)
        self.input_layernorm = Gemma4RMSNorm(H, eps)
        self.post_attention_layernorm = Gemma4RMSNorm(H, eps)
        self.pre_feedforward_layernorm = Gemma4RMSNorm(H, eps)
        self.post_feedforward_layernorm = Gemma4RMSNorm(H, eps)
        # Scales the whole hidden state at the end of the layer; a persistent buffer in checkpoints.
        self.register_buffer("layer_scalar", torch.ones(1))
        if spec.has_ple:
            P = config.hidden_size_per_layer_input
            self.act = act
            self.per_layer_input_gate = Linear(H, P, bias=False)
            self.per_layer_projection = Linear(P, H, bias=False)
            self.post_per_layer_input_norm = Gemma4RMSNorm(H, eps)
        if spec.has_moe:
            self.router = Gemma4Router(H, config.num_experts, config.top_k_experts, eps)
            self.experts = Gemma4Experts(H, config.num_experts, config.moe_intermediate_size, act)
            self.post_feedforward_layernorm_1 = Gemma4RMSNorm(H, eps)
            self.post_feedforward_layernorm_2 = Gemma4RMSNorm(H, eps)
            self.pre_feedforward_layernorm_2 = Gemma4RMSNorm(H, eps)

    def feed_forward(self, residual: torch.Tensor) -> torch.Tensor:
        mlp_out = self.mlp(self.pre_feedforward_layernorm(residual))  # [B,T,H]
        if not self.spec.has_moe:
            return self.post_feedforward_layernorm(mlp_out)
        # MoE beside the dense MLP: the router reads the pre-norm residual, experts their own pre-norm.
        residual_flat = residual.reshape(-1, residual.shape[-1])  # [N,H]
        weights, indices = self.router(residual_flat)  # [N,K] fp32, [N,K]
        expert_out = self.experts(self.pre_feedforward_layernorm_2(residual_flat), weights, indices)  # [N,H]
        expert_out = self.post_feedforward_layernorm_2(expert_out.view(residual.shape))
        return self.post_feedforward_layernorm(self.post_feedforward_layernorm_1(mlp_out) + expert_out)

    def per_layer_input(self, x: torch.Tensor, ple_i: torch.Tensor) -> torch.Tensor:
        gate = self.per_layer_input_gate(x)  # [B,T,P]
        # ple_i is a strided view of [B,T,L,P]; the op takes any strides (its C++ side copies if it must)
        ple_i = ple_i if ple_i.dtype == gate.dtype else ple_i.to(gate.dtype)
        gated = ops.gated_activation(gate, ple_i, self.act)  # act(gate) * ple_i  [B,T,P]
        return self.post_per_layer_input_norm(self.per_layer_projection(gated))  # [B,T,H]

    def forward(self, x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor,
                key_mask: torch.Tensor | None, shared_kv: dict, ple_i: torch.Tensor | None = None,
                cache=None) -> torch.Tensor:
        attn = self.self_attn(self.input_layernorm(x), positions, inv_freq, key_mask, shared_kv, cache)
        x = x + self.post_attention_layernorm(attn)  # [B,T,H]
        x = x + self.feed_forward(x)
        if ple_i is not None:
            x = x + self.per_layer_input(x, ple_i)
        return x * self.layer_scalar
