"""generate's decode steps through C++ decoder layers (csrc/decode/decode_layers.h).

A batch-1 decode step of E2B spends ~4 ms of its ~30 (int4) outside the kernels: ~60 op calls a layer from
Python and ~20 nn.Module calls. `torch.classes.gemma4.DecodeLayers` calls the same ops in the same order from
C++, so its tokens and logits are bit-identical to the Python layers (tests/generation/test_decode_layers.py compares
them with torch.equal), which stay the reference and run wherever the C++ layers would not see what a user
added:

- a forward hook or pre-hook on any module of the decoder layers (or a global one), a module whose type is not
  the stock one (LoRA layers, a user's replacement) or whose `forward` was replaced on the instance;
- autograd (grad mode on), autocast, torch.compile tracing, tensors off the CPU;
- the prefill, and forward calls outside `generate` (the model checks nothing per call; generate checks once).

generate attaches a session to its cache for the duration of the call (`attached`); the layers are built at
the first decode step (the cache's buffers exist then) and rebuilt if the cache reallocates them. Hooks added
or modules swapped during a generate call are not seen by its remaining steps. `python_decode_layers()` turns
the C++ layers off inside a block (benchmarks and tests compare the two).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from gemma4 import linear_choice, ops  # noqa: F401  (ops loads the library that registers DecodeLayers)
from gemma4.quant.modules import QuantExperts, QuantLinear
from gemma4.switch import Switch

from .attention import Gemma4Attention
from .decoder import Gemma4DecoderLayer
from .linear import Linear
from .mlp import Gemma4Experts, Gemma4MLP, Gemma4Router
from .norm import Gemma4RMSNorm

__all__ = ["attached", "python_decode_layers", "unsupported_reason"]

_CPP_LAYERS = Switch()  # off inside python_decode_layers()

_LINEAR, _TORCH, _QUANT = 0, 1, 2  # DecodeLinear::Kind


def python_decode_layers():
    """Run generate's decode steps through the Python decoder layers inside the block."""
    return _CPP_LAYERS.off()


# the modules whose forward the C++ layers reproduce
_STOCK_TYPES = (Gemma4DecoderLayer, Gemma4Attention, Gemma4MLP, Gemma4RMSNorm, Linear, QuantLinear, Gemma4Router,
                Gemma4Experts, QuantExperts)


def unsupported_reason(text_model: nn.Module) -> str | None:
    """Why the C++ layers cannot stand in for `text_model.layers` (None: they can)."""
    hooks = torch.nn.modules.module
    if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
        return "a global forward hook is registered"
    for name, module in text_model.layers.named_modules():
        if isinstance(module, nn.ModuleList):
            continue
        if type(module) not in _STOCK_TYPES:
            return f"layers.{name} is a {type(module).__name__}"
        if module._forward_hooks or module._forward_pre_hooks:
            return f"layers.{name} has a forward hook"
        if "forward" in module.__dict__:
            return f"layers.{name} has its own forward"
    for i, layer in enumerate(text_model.layers):
        if len(_norm_eps(layer)) != 1:
            return f"the norms of layer {i} have different eps"
        if getattr(layer, "act", layer.mlp.activation) != layer.mlp.activation:
            return f"layer {i}'s per-layer input and MLP activations differ"
    if text_model.embed_tokens.weight.device.type != "cpu":
        return "the model is not on the CPU"
    return None


class _Session:
    """One generate call's C++ layers, rebuilt when what they were built for changes."""

    def __init__(self, text_model: nn.Module, cache):
        self.text_model, self.cache = text_model, cache
        self.layers, self.key = None, None

    def hidden(self, x: torch.Tensor, positions: torch.Tensor, ple: torch.Tensor | None) -> torch.Tensor | None:
        """The layers' output for one decode token, or None where the Python layers must run."""
        if (not _CPP_LAYERS.on or torch.is_grad_enabled() or x.device.type != "cpu" or torch.is_autocast_enabled("cpu")
                or torch.compiler.is_compiling()):
            return None
        if any(buffer is None for buffer in self.cache.key):  # a one-token prompt: its update allocates them
            return None
        key = (self.cache.layout_version, x.shape[0], x.dtype, linear_choice.gemma4_kernels_enabled())
        if key != self.key:
            self.layers, self.key = _build(self.text_model, self.cache, x), key
        return self.layers.step(x, positions, ple)


@contextlib.contextmanager
def attached(model: nn.Module, cache):
    """Inside the block, `model`'s decode steps over `cache` run through the C++ layers where they may."""
    text_model = getattr(model, "model", model)
    if cache is None or not _CPP_LAYERS.on or unsupported_reason(text_model) is not None:
        yield
        return
    cache.decode_session = _Session(text_model, cache)
    try:
        yield
    finally:
        cache.decode_session = None


# ---- building: each layer's tensors and sizes by the names csrc/decode/decode_layers.cpp reads ----

def _linear_fields(name: str, module: nn.Module, x: torch.Tensor, tensors: dict, ints: dict) -> None:
    """How the module computes y at these rows (Linear's rule, or QuantLinear's qgemm) and its tensors."""
    bias = module.bias
    if isinstance(module, QuantLinear):
        ints[f"{name}.kind"] = _QUANT
        module.layout_for(x)  # the layout its forward would run on (a one-token prompt has not run one yet)
        tensors[f"{name}.weight"], tensors[f"{name}.scales"] = module.qweight, module.scales
        if bias is not None:
            bias = bias if bias.dtype == x.dtype else bias.to(x.dtype)  # what its forward casts on every call
    else:
        rows = x.new_empty(()).expand(x.shape[0], 1, module.in_features)  # [B, 1, K]: only shape and dtype matter
        ours = linear_choice.uses_gemma4_kernel(rows, module.weight) and (bias is None or bias.dtype == x.dtype)
        ints[f"{name}.kind"] = _LINEAR if ours else _TORCH
        tensors[f"{name}.weight"] = module.weight
    if bias is not None:
        tensors[f"{name}.bias"] = bias


def _norm_eps(layer: Gemma4DecoderLayer) -> set[float]:
    """The eps of the layer's norms but the router's (the C++ layer reads one)."""
    router_norm = getattr(getattr(layer, "router", None), "norm", None)
    return {m.eps for m in layer.modules() if isinstance(m, Gemma4RMSNorm) and m is not router_norm}


def _cache_fields(spec, cache, tensors: dict) -> None:
    """The [B, S, nKV, hd] views a decode token is written through, its slot and the slot mask
    (Gemma4Cache.update's decode branch)."""
    i = spec.cache_index
    tensors["key_cache"], tensors["value_cache"] = cache.key[i].transpose(1, 2), cache.value[i].transpose(1, 2)
    ring = cache._is_ring(spec)
    tensors["slot"] = cache._ring_slot[spec.window] if ring else cache._write_index
    tensors["slot_mask"] = cache.ring_mask[spec.window] if ring else cache.full_mask


def _layer_fields(text_model: nn.Module, layer: Gemma4DecoderLayer, cache, x: torch.Tensor):
    spec, attn = layer.spec, layer.self_attn
    tensors = {"inv_freq": getattr(text_model, f"{spec.layer_type}_inv_freq"), "layer_scalar": layer.layer_scalar}
    ints = {"heads": attn.num_heads, "kv_heads": attn.num_kv_heads, "head_dim": attn.head_dim,
            "kv_source": spec.kv_source if spec.kv_shared else -1, "stores_shared_kv": int(spec.stores_shared_kv),
            "k_eq_v": int(not spec.kv_shared and attn.v_proj is None), "has_ple": int(spec.has_ple),
            "has_moe": int(spec.has_moe)}
    floats = {"eps": _norm_eps(layer).pop(), "rope_scaling": float(attn.rope_scaling)}
    for name in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                 "post_feedforward_layernorm"):
        tensors[name] = getattr(layer, name).weight
    tensors["q_norm"] = attn.q_norm.weight
    _linear_fields("q_proj", attn.q_proj, x, tensors, ints)
    _linear_fields("o_proj", attn.o_proj, x, tensors, ints)
    if not spec.kv_shared:
        _linear_fields("k_proj", attn.k_proj, x, tensors, ints)
        if attn.v_proj is not None:
            _linear_fields("v_proj", attn.v_proj, x, tensors, ints)
        tensors["k_norm"] = attn.k_norm.weight
        _cache_fields(spec, cache, tensors)
    for name in ("gate_proj", "up_proj", "down_proj"):
        _linear_fields(name, getattr(layer.mlp, name), x, tensors, ints)
    if spec.has_ple:
        _linear_fields("per_layer_input_gate", layer.per_layer_input_gate, x, tensors, ints)
        _linear_fields("per_layer_projection", layer.per_layer_projection, x, tensors, ints)
        tensors["post_per_layer_input_norm"] = layer.post_per_layer_input_norm.weight
    if spec.has_moe:
        _moe_fields(layer, x, tensors, ints, floats)
    return tensors, ints, floats


def _moe_fields(layer: Gemma4DecoderLayer, x: torch.Tensor, tensors: dict, ints: dict, floats: dict) -> None:
    router, experts = layer.router, layer.experts
    floats["router.eps"], floats["router.scalar_root_size"] = float(router.norm.eps), float(router.scalar_root_size)
    ints["router.top_k"] = router.top_k
    _linear_fields("router.proj", router.proj, x, tensors, ints)
    tensors["router.scale"], tensors["router.per_expert_scale"] = router.scale, router.per_expert_scale
    for name in ("pre_feedforward_layernorm_2", "post_feedforward_layernorm_1", "post_feedforward_layernorm_2"):
        tensors[name] = getattr(layer, name).weight
    quant = not isinstance(experts, Gemma4Experts)
    ints["quant_experts"] = int(quant)
    names = ("gate_up_proj_qweight", "gate_up_proj_scales", "down_proj_qweight", "down_proj_scales") if quant \
        else ("gate_up_proj", "down_proj")
    for name in names:
        tensors[f"experts.{name}"] = getattr(experts, name)


def _build(text_model: nn.Module, cache, x: torch.Tensor):
    layers = torch.classes.gemma4.DecodeLayers()
    for layer in text_model.layers:
        tensors, ints, floats = _layer_fields(text_model, layer, cache, x)
        layers.add_layer(tensors, ints, floats, layer.mlp.activation)
    return layers
