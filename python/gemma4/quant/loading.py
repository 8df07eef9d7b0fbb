"""Quantized loading: the ``prepare_model`` callback the checkpoint loader runs on the meta model.

* quantize-on-load (``quantization_config=QuantizationConfig(...)`` given, float checkpoint): targeted
  Linears / expert banks become empty QuantLinear / QuantExperts expecting the float ``weight``; each
  arrives alone through the load hook and is quantized on arrival, so peak memory is about the
  quantized model plus one float tensor.
* pre-quantized (config.json carries a compressed-tensors ``quantization_config``): the modules it
  quantized become QuantLinear / QuantExperts expecting ``weight_packed`` / ``weight_scale`` /
  ``weight_shape`` and repack them; nothing is dequantized.
"""
from __future__ import annotations

import json
import os
import re
import warnings

import torch
from torch import nn

from .compressed_tensors import parse_quantization_config
from .config import QuantizationConfig
from .convert import _fits, quantizable_modules, quantize_tied_head
from .modules import QuantExperts, QuantLinear

__all__ = ["make_preparer", "resolve_preparer", "checkpoint_quantization", "load_pretrained_quantized"]

_CG_PREFIX = "model.language_model."  # Gemma4ForConditionalGeneration's text-model prefix


def checkpoint_quantization(path: str | os.PathLike) -> dict | None:
    """The ``quantization_config`` section of ``path``/config.json (top level or in text_config), or None."""
    file = os.path.join(os.fspath(path), "config.json")
    if not os.path.isfile(file):
        return None
    with open(file, encoding="utf-8") as f:
        raw = json.load(f)
    return raw.get("quantization_config") or (raw.get("text_config") or {}).get("quantization_config")


def _ignored(name: str, ignore: list[str]) -> bool:
    """compressed-tensors' ignore list (module names or "re:" patterns, in either checkpoint layout)."""
    names = (name, _CG_PREFIX + name.removeprefix("model.")) if name.startswith("model.") else (name,)
    for entry in ignore:
        if entry.startswith("re:"):
            if any(re.match(entry[3:], n) for n in names):
                return True
        elif entry in names:
            return True
    return False


def make_preparer(path: str | os.PathLike, quantization_config: QuantizationConfig | None):
    """A ``prepare_model(model)`` for ``gemma4.checkpoint.load_pretrained``, or None when the checkpoint is
    float and no quantization was asked for."""
    stored = checkpoint_quantization(path)
    where = os.path.join(os.fspath(path), "config.json")
    if stored is not None:
        if quantization_config is not None:
            raise ValueError("from_pretrained: the checkpoint is already quantized (config.json has a "
                             "quantization_config); do not pass quantization_config as well")
        config, ignore = parse_quantization_config(stored, where)
        return lambda model: _prepare(model, config, "compressed-tensors", ignore)
    if quantization_config is None:
        return None
    if not isinstance(quantization_config, QuantizationConfig):
        raise TypeError("from_pretrained: quantization_config must be a gemma4.QuantizationConfig, got "
                        f"{type(quantization_config).__name__}")
    return lambda model: _prepare(model, quantization_config, "float", None)


def resolve_preparer(path, quantization_config, prepare_model):
    """The ``prepare_model`` from_pretrained hands the loader: the caller's own, or ours for a quantized
    checkpoint / a ``quantization_config`` (both at once is refused)."""
    if prepare_model is not None:
        if quantization_config is not None:
            raise ValueError("from_pretrained: pass quantization_config or prepare_model, not both")
        return prepare_model
    return make_preparer(path, quantization_config)


def load_pretrained_quantized(model_cls, path, quantization_config=None, prepare_model=None, **kwargs):
    """checkpoint.load_pretrained with the preparer for ``quantization_config`` (or for a quantized
    checkpoint), then the tied head when the config converts it (quantize_tied_head): what every
    from_pretrained does."""
    from ..checkpoint import load_pretrained  # noqa: PLC0415

    model = load_pretrained(model_cls, path, prepare_model=resolve_preparer(path, quantization_config, prepare_model),
                            **kwargs)
    if quantization_config is not None:
        quantize_tied_head(model, quantization_config)
    return model


def _prepare(model: nn.Module, config: QuantizationConfig, source: str, ignore: list[str] | None) -> None:
    """Swap the targeted modules of the meta model for empty quantized ones expecting `source` tensors."""
    skipped = []
    for name, module in quantizable_modules(model, config):
        if ignore is not None and _ignored(name, ignore):
            continue
        if not _fits(module, config.group_size):
            skipped.append(name)
            continue
        if isinstance(module, nn.Linear):
            new = QuantLinear(module.in_features, module.out_features, module.bias is not None, config.bits,
                              config.group_size, config.torch_scale_dtype, dtype=module.weight.dtype, device="meta")
        else:
            e, two_im, h = module.gate_up_proj.shape
            new = QuantExperts(h, e, two_im // 2, module.activation, config.bits, config.group_size,
                               config.torch_scale_dtype, device="meta")
        new.trained_grid, new.load_source = config.trained_grid, source
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, new)
    if skipped:
        warnings.warn(f"quantization: {len(skipped)} modules kept in full precision (input size not a multiple of "
                      f"32 and of group_size={config.group_size}): {', '.join(skipped[:6])}", stacklevel=3)
    model.quantization_config = config
    model.quantization_skipped = skipped
