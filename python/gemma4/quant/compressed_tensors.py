"""compressed-tensors ``pack-quantized`` (llm-compressor's W4A16 / W8A16 exports, Google's
``*-qat-w4a16-ct`` checkpoints) to and from our packed format, and its config.json section.

On disk, per quantized Linear ``X`` (compressed-tensors ``compressors/pack_quantized``):

* ``X.weight_packed`` int32 ``[N, K * bits / 32]``: along K, element i of each 32-bit word sits at bit
  ``bits * i`` (element 0 in the lowest bits), stored offset-binary ``u = q + 2**(bits-1)``;
* ``X.weight_scale`` ``[N, K / group]`` (``[N, 1]`` per channel) in the checkpoint's float dtype;
* ``X.weight_shape`` int ``[2]`` = (N, K). Symmetric only here (no ``weight_zero_point``).

MoE expert banks are 3-D parameters, not Linears: we write ``gate_up_proj_packed`` /
``gate_up_proj_scale`` / ``gate_up_proj_shape`` (and ``down_proj_*``), each 2-D slice packed as above
(compressed-tensors packs N-D tensors per 2-D slice the same way). That naming is ours; transformers
does not read quantized Gemma 4 experts.
"""
from __future__ import annotations

import contextlib
import json
import os

import torch

from .config import QuantizationConfig

__all__ = ["pack_int32", "unpack_int32", "quantization_config_dict", "parse_quantization_config",
           "write_quantization_config", "compressed_tensors_state_dict"]


def pack_int32(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer levels ``q [..., K]`` -> int32 ``[..., K * bits / 32]`` (compressed-tensors' packing)."""
    per = 32 // bits
    *lead, k = q.shape
    u = (q.to(torch.int64) + (1 << (bits - 1))).reshape(*lead, k // per, per)  # offset binary
    shifts = torch.arange(per, device=q.device, dtype=torch.int64) * bits
    words = (u << shifts).sum(-1)  # [..., K/per] in 0 .. 2**32-1
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def unpack_int32(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """int32 ``[..., W]`` -> int8 levels ``[..., k]``."""
    per = 32 // bits
    words = packed.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(per, device=packed.device, dtype=torch.int64) * bits
    u = (words[..., None] >> shifts) & ((1 << bits) - 1)  # [..., W, per]
    return (u.reshape(*packed.shape[:-1], -1)[..., :k] - (1 << (bits - 1))).to(torch.int8)


def quantization_config_dict(config: QuantizationConfig, ignore: list[str]) -> dict:
    """The ``quantization_config`` section of config.json as llm-compressor writes it for W4A16/W8A16."""
    weights = {
        "num_bits": config.bits, "type": "int", "symmetric": True, "dynamic": False,
        "strategy": "group" if config.group_size else "channel", "group_size": config.group_size,
        "block_structure": None, "actorder": None, "observer": "minmax", "observer_kwargs": {},
    }
    return {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": None,
                                      "output_activations": None, "format": "pack-quantized"}},
        "ignore": sorted(ignore),
        "kv_cache_scheme": None,
        "sparsity_config": {},
        "transform_config": {},
        "global_compression_ratio": None,
    }


def parse_quantization_config(q: dict, where: str) -> tuple[QuantizationConfig, list[str]]:
    """config.json's ``quantization_config`` -> (our config, the ``ignore`` list). Raises CheckpointError
    naming the key for anything our kernels cannot run (asymmetric, float, activation quantization ...)."""
    from gemma4.errors import CheckpointError  # noqa: PLC0415

    def bad(msg, key):
        raise CheckpointError(msg, where, f"quantization_config.{key}")

    if q.get("quant_method") != "compressed-tensors":
        bad(f"quant_method {q.get('quant_method')!r} is not supported (compressed-tensors only)", "quant_method")
    if q.get("format") != "pack-quantized":
        bad(f"format {q.get('format')!r} is not supported (pack-quantized only)", "format")
    groups = q.get("config_groups") or {}
    if len(groups) != 1:
        bad(f"{len(groups)} config groups; exactly one (one weight format for every Linear) is supported",
            "config_groups")
    name, group = next(iter(groups.items()))
    w = group.get("weights") or {}
    key = f"config_groups.{name}.weights"
    if group.get("input_activations") or group.get("output_activations"):
        bad("activation quantization is not supported (weight-only)", f"config_groups.{name}.input_activations")
    if w.get("type") != "int" or w.get("num_bits") not in (4, 8):
        bad(f"weights of type {w.get('type')!r} with {w.get('num_bits')} bits: int4 and int8 only", key)
    if not w.get("symmetric", True):
        bad("asymmetric weights (zero points) are not supported", f"{key}.symmetric")
    if w.get("actorder"):
        bad("act-order (g_idx) weights are not supported", f"{key}.actorder")
    strategy = w.get("strategy")
    if strategy not in ("group", "channel"):
        bad(f"strategy {strategy!r}: group and channel are supported", f"{key}.strategy")
    targets = group.get("targets") or []
    if targets != ["Linear"]:
        bad(f"targets {targets!r}: only ['Linear'] is supported", f"config_groups.{name}.targets")
    config = QuantizationConfig(weights=f"int{w['num_bits']}",
                                group_size=w.get("group_size") if strategy == "group" else None,
                                modules_to_not_convert=[])
    return config, list(q.get("ignore") or [])


def write_quantization_config(model, path: str | os.PathLike) -> None:
    """Add ``quantization_config`` to a saved model's config.json (after checkpoint.save_pretrained)."""
    from torch import nn  # noqa: PLC0415

    ignore = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]  # quantized ones are not nn.Linear
    file = os.path.join(os.fspath(path), "config.json")
    with open(file, encoding="utf-8") as f:
        raw = json.load(f)
    raw["quantization_config"] = quantization_config_dict(model.quantization_config, ignore)
    with open(file, "w", encoding="utf-8") as f:
        f.write(json.dumps(raw, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def compressed_tensors_state_dict(model):
    """Within the block, model.state_dict() gives the quantized modules' tensors under compressed-tensors
    names (what save_pretrained writes)."""
    quantized = [m for m in model.modules() if hasattr(m, "save_as_compressed_tensors")]  # (modules.py)
    for m in quantized:
        m.save_as_compressed_tensors = True
    try:
        yield model
    finally:
        for m in quantized:
            m.save_as_compressed_tensors = False
