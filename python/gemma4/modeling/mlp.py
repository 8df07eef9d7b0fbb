"""Feed-forward blocks: the dense GeGLU MLP, the MoE router and the expert bank."""
from __future__ import annotations

import torch
from torch import nn

from gemma4 import ops

from .linear import Linear
from .norm import Gemma4RMSNorm


class _Recompute:
    """Stands in for the activation act(gate) * up among the tensors autograd keeps for backward (the fresh,
    contiguous output of gated_activation, so a view of it is that output's as_strided)."""

    def __init__(self, gate: torch.Tensor, up: torch.Tensor, activation: str):
        self.gate, self.up, self.activation = gate, up, activation
        self.value = None  # computed at the first unpack, kept for the others (base GEMM and LoRA both use it)

    def __call__(self) -> torch.Tensor:
        if self.value is None:
            with torch.no_grad():
                self.value = ops.gated_activation(self.gate, self.up, self.activation)
        return self.value


def _other_saved_tensor_hooks() -> bool:
    """True when saved-tensor hooks are already active (gradient checkpointing, offloading, a user's), or when
    this forward runs inside a backward pass (checkpointing's recomputation)."""
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    task = getattr(torch._C, "_current_graph_task_id", None)
    return top is None or task is None or top(False) is not None or task() != -1


def _recomputing_activation(hidden: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, activation: str):
    """saved_tensors_hooks under which `hidden` (= act(gate) * up) is kept as a recipe, not as a tensor.

    down_proj's backward needs its input only for a weight gradient (LoRA's A, or a trained down_proj), and
    gated_activation's backward keeps gate and up anyway: recomputing the activation there (one elementwise
    pass) saves a [tokens, I] tensor per layer, e.g. 5.2 GiB of E2B's bf16 training step at B4 x T2048."""

    # The closures must not refer to `hidden` itself: autograd keeps the hooks with what they packed, and a
    # closure cell holding `hidden` would keep the very tensor this saves alive.
    storage, dtype = hidden.untyped_storage().data_ptr(), hidden.dtype
    recipe = _Recompute(gate, up, activation)

    def pack(t: torch.Tensor):
        # hidden or a view of it (F.linear saves the 2-D reshape): where the view sits in the recomputed tensor
        if t.dtype == dtype and t.untyped_storage().data_ptr() == storage:
            return t.shape, t.stride(), t.storage_offset()
        return t

    def unpack(saved):
        return recipe().as_strided(*saved) if isinstance(saved, tuple) else saved

    return torch.autograd.graph.saved_tensors_hooks(pack, unpack)


class Gemma4MLP(nn.Module):
    """down_proj(act(gate_proj(x)) * up_proj(x)); width I, or 2I in KV-shared layers of E2B."""

    def __init__(self, hidden_size: int, intermediate_size: int, activation: str):
        super().__init__()
        self.gate_proj = Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = Linear(intermediate_size, hidden_size, bias=False)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_proj(x), self.up_proj(x)  # [..., I]
        hidden = ops.gated_activation(gate, up, self.activation)  # [..., I]
        if (not hidden.requires_grad or torch.compiler.is_compiling() or not gate.requires_grad
                or _other_saved_tensor_hooks()):
            del gate, up  # nothing here needs them again: two [..., I] fewer alive under down_proj (prefill's peak)
            return self.down_proj(hidden)
        with _recomputing_activation(hidden, gate, up, self.activation):
            return self.down_proj(hidden)  # [..., H]


class Gemma4Router(nn.Module):
    """Chooses top_k experts per token from the pre-norm residual: weightless RMSNorm, * scale * H^-1/2,
    proj to E logits, then gemma4::moe_route (softmax fp32, top-k, renormalise, per-expert scale)."""

    def __init__(self, hidden_size: int, num_experts: int, top_k: int, eps: float):
        super().__init__()
        self.norm = Gemma4RMSNorm(hidden_size, eps=eps, with_scale=False)
        self.proj = Linear(hidden_size, num_experts, bias=False)
        self.scale = nn.Parameter(torch.ones(hidden_size))
        self.per_expert_scale = nn.Parameter(torch.ones(num_experts))
        self.scalar_root_size = hidden_size**-0.5
        self.top_k = top_k

    def forward(self, residual_flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.norm(residual_flat) * self.scale * self.scalar_root_size  # [N, H]
        logits = self.proj(z)  # [N, E]
        return ops.moe_route(logits, self.per_expert_scale, self.top_k)  # weights fp32 [N,K], idx [N,K]


class Gemma4Experts(nn.Module):
    """E experts with fused gate/up weights [E, 2*Im, H] and down weights [E, H, Im]."""

    def __init__(self, hidden_size: int, num_experts: int, moe_intermediate_size: int, activation: str):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * moe_intermediate_size, hidden_size))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden_size, moe_intermediate_size))
        self.activation = activation

    def forward(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return ops.moe_experts(x, weights, indices, self.gate_up_proj, self.down_proj, self.activation)  # [N, H]
