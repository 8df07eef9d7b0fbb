"""GGUF tensors -> our Gemma4ForCausalLM: names, types, and the tensor-by-tensor load.

Names (llama.cpp's gguf-py tensor map for MODEL_ARCH.GEMMA4, read in reverse; NAMES / BLOCK_NAMES
below). Gemma 4's converter applies no value transform to the text weights: its norm_shift is 0 (no
Gemma-style `1 + w`), no Q/K permutation, token_embd only cut to the tokenizer's size (which becomes
our vocab_size). What it does rename or reshape:
  router.scale           -> blk.N.ffn_gate_inp.scale        (a ".scale", kept F32)
  router.per_expert_scale -> blk.N.ffn_down_exps.scale
  layer_scalar           -> blk.N.layer_output_scale.weight
  experts.gate_up_proj [E, 2I, H] -> ffn_gate_up_exps (as is), or ffn_gate_exps + ffn_up_exps
                                     (the unfused form: concatenated back, gate first)
  rope_freqs (generated) -> not a weight: gguf_config reads partial_rotary_factor from it.
GGUF lists dimensions innermost first; the reader's numpy arrays are already row-major [out, in].

Types: Q4_0 and Q8_0 Linear weights and expert banks stay quantized: the modules become QuantLinear /
QuantExperts (gemma4.quant.modules, int4 / int8, groups of 32, float16 scales, GGUF's own) filled by
the exact byte conversions of gemma4.quant.gguf_blocks. Everything else (Q4_K, Q5_K, Q6_K, F16, BF16,
F32, and any embedding table) is dequantized exactly to float32 by gguf_blocks, then cast to the
model dtype, a chunk of rows at a time, so peak memory is the model plus one chunk.
"""
from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import torch
from torch import nn

from .gguf_config import GGUFFile, gguf_config
from .safetensors import check_finite

__all__ = ["load_gguf", "our_name", "gguf_path"]

NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
         "output.weight": "lm_head.weight", "per_layer_token_embd.weight": "model.embed_tokens_per_layer.weight",
         "per_layer_model_proj.weight": "model.per_layer_model_projection.weight",
         "per_layer_proj_norm.weight": "model.per_layer_projection_norm.weight"}
BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight", "layer_output_scale.weight": "layer_scalar",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight", "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight", "post_attention_norm.weight": "post_attention_layernorm.weight",
    "ffn_norm.weight": "pre_feedforward_layernorm.weight", "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
    "post_ffw_norm_1.weight": "post_feedforward_layernorm_1.weight",
    "post_ffw_norm_2.weight": "post_feedforward_layernorm_2.weight",
    "pre_ffw_norm_2.weight": "pre_feedforward_layernorm_2.weight",
    "ffn_gate_inp.weight": "router.proj.weight", "ffn_gate_inp.scale": "router.scale",
    "ffn_down_exps.scale": "router.per_expert_scale",
    "ffn_gate_up_exps.weight": "experts.gate_up_proj", "ffn_down_exps.weight": "experts.down_proj",
    "ffn_gate_exps.weight": "experts.gate_up_proj:gate", "ffn_up_exps.weight": "experts.gate_up_proj:up",
    "inp_gate.weight": "per_layer_input_gate.weight", "proj.weight": "per_layer_projection.weight",
    "post_norm.weight": "post_per_layer_input_norm.weight",
}
NOT_WEIGHTS = ("rope_freqs.weight",)
KEPT_QUANTIZED = {"Q4_0": 4, "Q8_0": 8}
_BLOCK = re.compile(r"blk\.(\d+)\.(.+)$")
_CHUNK_ELEMENTS = 1 << 20  # rows dequantized at a time: ~4 MB of float32


def our_name(name: str) -> tuple[str, str | None] | None:
    """GGUF tensor name -> (our state_dict name, "gate" | "up" half of gate_up_proj or None); None if unknown."""
    if name in NAMES:
        return NAMES[name], None
    m = _BLOCK.match(name)
    if m and m.group(2) in BLOCK_NAMES:
        target, _, half = BLOCK_NAMES[m.group(2)].partition(":")
        return f"model.layers.{m.group(1)}.{target}", half or None
    return None


@dataclasses.dataclass
class _Item:
    gguf: str
    key: str  # our state_dict name
    half: str | None
    qtype: str
    shape: tuple[int, ...]  # logical, row-major


def _plan(f: GGUFFile) -> list[_Item]:
    from ..quant.gguf_blocks import BLOCK  # noqa: PLC0415

    items = []
    for name, t in f.tensors.items():
        if name in NOT_WEIGHTS:
            continue
        mapped = our_name(name)
        if mapped is None:
            raise f.error("is not a Gemma 4 text-model tensor (vision/audio GGUFs are separate mmproj files)", name)
        qtype = t.tensor_type.name
        if qtype not in BLOCK:
            raise f.error(f"type {qtype} is not supported (supported: {', '.join(BLOCK)})", name)
        items.append(_Item(name, mapped[0], mapped[1], qtype, f.shape(name)))
    return items


def _quantized_modules(model: nn.Module, items: list[_Item]) -> dict[str, int]:
    """{module name: bits} of the Linears and expert banks whose every GGUF tensor is Q4_0 (4) / Q8_0 (8)."""
    from ..modeling.mlp import Gemma4Experts  # noqa: PLC0415

    types: dict[str, set[str]] = {}
    for it in items:
        module, _, attr = it.key.rpartition(".")
        owner = model.get_submodule(module) if module else model
        if (isinstance(owner, nn.Linear) and attr == "weight") or isinstance(owner, Gemma4Experts):
            types.setdefault(module, set()).add(it.qtype)
    return {m: KEPT_QUANTIZED[t.pop()] for m, t in types.items() if len(t) == 1 and next(iter(t)) in KEPT_QUANTIZED}


def _swap_quantized(model: nn.Module, bits: dict[str, int]) -> None:
    """The meta model's quantized modules become empty QuantLinear / QuantExperts (GGUF's g32, fp16 scales)."""
    from ..quant.config import QuantizationConfig  # noqa: PLC0415
    from ..quant.modules import QuantExperts, QuantLinear  # noqa: PLC0415

    for name, b in bits.items():
        old = model.get_submodule(name)
        if isinstance(old, nn.Linear):
            new = QuantLinear(old.in_features, old.out_features, old.bias is not None, b, 32, torch.float16,
                              dtype=old.weight.dtype, device="meta")
        else:
            e, two_im, h = old.gate_up_proj.shape
            new = QuantExperts(h, e, two_im // 2, old.activation, b, 32, torch.float16, device="meta")
        new.load_source = "gguf"
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, new)
    if bits:  # save_pretrained writes compressed-tensors with this (the most common width)
        counts = list(bits.values())
        model.quantization_config = QuantizationConfig(weights=f"int{max(set(counts), key=counts.count)}",
                                                       group_size=32, scale_dtype="float16",
                                                       modules_to_not_convert=[])
        model.quantization_skipped = []


def _target_shape(model: nn.Module, live: dict, it: _Item, bits: dict[str, int]) -> tuple[int, ...] | None:
    """The shape the GGUF tensor must have for its destination, or None when the model has no such tensor."""
    module, _, attr = it.key.rpartition(".")
    if module in bits:
        m = model.get_submodule(module)
        shape = m.shapes[attr] if hasattr(m, "shapes") else (m.out_features, m.in_features)
    elif it.key in live:
        shape = tuple(live[it.key].shape)
    else:
        return None
    if it.half:  # one half of gate_up_proj [E, 2I, H]
        shape = (shape[0], shape[1] // 2, shape[2])
    return tuple(shape)


def _raw(t, rows: slice | None = None) -> torch.Tensor:
    """A tensor's bytes (or those of some rows) as a fresh uint8 CPU tensor, read from the memory map."""
    data = t.data.reshape(-1, t.data.shape[-1]) if t.data.ndim > 1 else t.data.reshape(1, -1)
    if rows is not None:
        data = data[rows]
    return torch.from_numpy(np.array(data, copy=True).view(np.uint8).reshape(-1))


def _load_float(f: GGUFFile, it: _Item, dest: torch.Tensor) -> None:
    """Dequantize into dest (any float dtype / device) a chunk of rows at a time."""
    from ..quant.gguf_blocks import dequantize  # noqa: PLC0415

    t = f.tensors[it.gguf]
    k = it.shape[-1]
    n = int(np.prod(it.shape[:-1], dtype=np.int64)) if len(it.shape) > 1 else 1
    flat = dest.view(-1, k) if dest.dim() > 1 else dest.view(1, -1)  # [rows, K]
    step = max(1, _CHUNK_ELEMENTS // k)
    for start in range(0, n, step):
        rows = slice(start, min(n, start + step))
        w = dequantize(_raw(t, rows), it.qtype, (rows.stop - rows.start, k))  # [rows, K] float32
        check_finite(w, f.path, it.gguf)
        flat[rows].copy_(w)


def _load_packed(f: GGUFFile, it: _Item, module: nn.Module) -> None:
    """Q4_0 / Q8_0 bytes -> the quantized module's buffers, unchanged (gguf_blocks' exact conversions)."""
    from ..quant.gguf_blocks import q4_0_to_packed, q8_0_to_packed  # noqa: PLC0415

    convert = q4_0_to_packed if it.qtype == "Q4_0" else q8_0_to_packed
    *lead, k = it.shape
    q, s = convert(_raw(f.tensors[it.gguf]), (int(np.prod(lead)), k))  # [rows, K/2 or K], [rows, K/32] fp16
    if hasattr(module, "shapes"):  # QuantExperts: [E, N, ...] banks, gate_up possibly in two halves
        w = it.key.rpartition(".")[2]
        qbuf, sbuf = getattr(module, f"{w}_qweight"), getattr(module, f"{w}_scales")
        rows = slice(None) if it.half is None else \
            slice(0, lead[1]) if it.half == "gate" else slice(lead[1], 2 * lead[1])
        qbuf[:, rows].copy_(q.view(*lead, -1))
        sbuf[:, rows].copy_(s.view(*lead, -1))
    else:
        module.load_quantized(q, s)


def load_gguf(model_cls, file: str | os.PathLike, dtype=None, torch_dtype=None, device=None, progress: bool = True,
              overrides: dict | None = None):
    """Build `model_cls(config)` from a Gemma 4 GGUF file (config, weights; see the module docstring).

    dtype: the float dtype of unquantized weights ("auto"/None: the default dtype, float32, as
    transformers dequantizes GGUF). Raises CheckpointError naming the file and the key or tensor.
    """
    from ..checkpoint import _tied_aliases, finish_loading, materialize, resolve_dtype  # noqa: PLC0415
    from ..devices import parse_device  # noqa: PLC0415

    f = GGUFFile(file)
    config = gguf_config(f)
    if overrides:
        config = dataclasses.replace(config, **overrides, source=f.path)
    target_dtype = resolve_dtype(dtype, torch_dtype, config)
    config = dataclasses.replace(config, dtype=str(target_dtype).removeprefix("torch."), source=f.path)
    items = _plan(f)
    with torch.device("meta"):
        model = model_cls(config)
    model.to(target_dtype)
    bits = _quantized_modules(model, items)
    _swap_quantized(model, bits)

    aliases = _tied_aliases(model)
    live = model.state_dict(keep_vars=True)
    wanted = {k for k in live if k not in aliases and k.rpartition(".")[0] not in bits}
    for m in bits:
        wanted |= {f"{m}.{w}" for w in getattr(model.get_submodule(m), "shapes", ("weight",))}
    found, halves = set(), {}
    for it in items:
        shape = _target_shape(model, live, it, bits)
        if shape is None:
            raise f.error(f"maps to {it.key!r}, which this config's model does not have", it.gguf)
        if shape != it.shape:
            raise f.error(f"shape {list(it.shape)}, the model expects {list(shape)} (as {it.key})", it.gguf)
        if it.half is None:
            found.add(it.key)
        elif halves.setdefault(it.key, set()).add(it.half) is None and len(halves[it.key]) == 2:
            found.add(it.key)
    missing = sorted(wanted - found)
    if missing:
        raise f.error(f"{len(missing)} tensor(s) the model needs are missing: {', '.join(missing[:6])}", missing[0])

    materialize(model, aliases, parse_device(device))
    live = model.state_dict(keep_vars=True)
    from tqdm.auto import tqdm  # noqa: PLC0415

    with torch.no_grad():
        for it in tqdm(items, desc="Loading GGUF", unit="tensor", disable=not progress):
            module = it.key.rpartition(".")[0]
            if module in bits:
                _load_packed(f, it, model.get_submodule(module))
                continue
            dest = live[it.key]
            if it.half is not None:  # unfused expert half: rows [0, I) or [I, 2I) of each expert
                im = dest.shape[1] // 2
                dest = dest[:, :im] if it.half == "gate" else dest[:, im:]
                tmp = torch.empty(dest.shape, dtype=dest.dtype, device=dest.device)
                _load_float(f, it, tmp)
                dest.copy_(tmp)
            else:
                _load_float(f, it, dest.data)
    return finish_loading(model, aliases)


def gguf_path(path: str | os.PathLike, gguf_file: str | os.PathLike) -> str:
    """transformers' convention: gguf_file names a file inside the model directory (or is a path itself)."""
    candidate = os.path.join(os.fspath(path), os.fspath(gguf_file))
    if os.path.isfile(candidate) or not os.path.isfile(os.fspath(gguf_file)):
        return candidate
    return os.fspath(gguf_file)

