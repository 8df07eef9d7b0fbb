"""Typed wrappers over torch.ops.gemma4.*: fake kernels for torch.compile, autograd, docs.

The model calls only these. Plain-PyTorch references for tests live in ops/reference.py.
"""
from gemma4 import _native  # noqa: F401  (loads libgemma4_ops.so, which registers the operators)

from .activation import gated_activation
from .attention import attention
from .linear import linear, linear_cpu_isa, linear_grad_input
from .lora import lora_down, lora_up, lora_weight_grad
from .loss import softcap_cross_entropy
from .moe import moe_experts, moe_route
from .moe_quant import moe_experts_quant
from .norm import rms_norm
from .quant import qgemm
from .rope import rope

__all__ = ["rms_norm", "rope", "attention", "gated_activation", "moe_route", "moe_experts", "moe_experts_quant", "qgemm", "linear",
           "linear_cpu_isa", "linear_grad_input", "softcap_cross_entropy", "lora_down", "lora_up", "lora_weight_grad"]
