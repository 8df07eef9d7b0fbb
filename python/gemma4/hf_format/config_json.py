"""config.json in both directions: Hugging Face's Gemma 4 config forms <-> Gemma4Config.

Read (`config_kwargs`, which Gemma4Config.from_dict calls):
* the nested multimodal form (`model_type: "gemma4"`, text under `text_config`; the top-level
  token ids, `dtype` and `tie_word_embeddings` fill in what the text config lacks);
* the flat text form (`model_type: "gemma4_text"`);
* Gemma 4 12B ("Unified"): `gemma4_unified` (nested, text under `text_config` of type
  `gemma4_unified_text`) and the flat `gemma4_unified_text`. Its text config has no PLE and MoE keys
  (they are absent from the model) and its own class defaults (UNIFIED_DEFAULTS), applied here;
* full-layer overrides either as the legacy `global_head_dim` / `num_global_key_value_heads`
  fields (transformers <= 5.5, Google's uploads) or as `per_layer_config` (transformers >= the
  heterogeneity refactor, e.g. 5.17: keys are zero-padded layer indices such as "05", values hold
  `head_dim` and, for K=V models, `num_key_value_heads`; overrides equal to the global value are
  dropped). When `per_layer_config` is present it wins and the legacy fields are ignored, as in
  transformers;
* `moe_intermediate_size` or the stale `expert_intermediate_size` (the former is preferred);
* `dtype` or `torch_dtype`.
Anything that is not a Gemma 4 text config raises ConfigError naming the file and the dotted key.

Write (`config_to_dict`): the flat `gemma4_text` form (architectures ["Gemma4ForCausalLM"]), or
`gemma4_unified_text` (["Gemma4UnifiedForCausalLM"], without the PLE and MoE keys) for a unified
config, with the overrides both as 5.17's `per_layer_config` and as the legacy fields.

transformers' post-init rules for `layer_types` (default 5:1 pattern, last layer forced to full
attention) and the layer-type names live here too, so this module needs nothing from
gemma4.config (which imports it).

`read_json_object` is the one reader of small JSON files (config.json, adapter_config.json,
index files): a missing file, invalid JSON, non-UTF-8 text or a value that is not an object is one
error naming the file.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import warnings
from typing import Any

from ..errors import ConfigError, ConfigNotFoundError

__all__ = ["config_kwargs", "config_to_dict", "per_layer_config", "read_json_object", "resolve_layer_types",
           "CONFIG_NAME", "REQUIRED_KEYS", "SLIDING_ATTENTION", "FULL_ATTENTION", "LAYER_TYPES", "MAX_LAYERS"]

CONFIG_NAME = "config.json"

SLIDING_ATTENTION = "sliding_attention"
FULL_ATTENTION = "full_attention"
LAYER_TYPES = (SLIDING_ATTENTION, FULL_ATTENTION)
# More layers than this is a typo or an attack (released Gemma 4: at most 60); refused before the
# layer list is even built.
MAX_LAYERS = 1024

# Keys a config.json must carry: every other field falls back to transformers' class default.
REQUIRED_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads", "head_dim")

# Per-layer overrides transformers' Gemma 4 modules read from `per_layer_config`.
PER_LAYER_KEYS = ("head_dim", "num_key_value_heads")

# The text model types, the nested type that holds each, and the transformers class that loads the flat form.
TEXT_TYPES = {"gemma4_text": ("gemma4", "Gemma4ForCausalLM"),
              "gemma4_unified_text": ("gemma4_unified", "Gemma4UnifiedForCausalLM")}
# Gemma4UnifiedTextConfig's class defaults where they differ from Gemma4TextConfig's, and the PLE/MoE
# fields its model lacks (off for us).
UNIFIED_DEFAULTS = {"sliding_window": 1024, "use_bidirectional_attention": "vision",
                    "max_position_embeddings": 262_144}
UNIFIED_ABSENT = {"hidden_size_per_layer_input": 0, "enable_moe_block": False, "vocab_size_per_layer_input": None,
                  "num_experts": None, "top_k_experts": None, "moe_intermediate_size": None}

# Top-level keys of the nested form that may stand in for missing text-config keys.
_NESTED_FALLBACK_KEYS = ("pad_token_id", "eos_token_id", "bos_token_id", "tie_word_embeddings")


def read_json_object(path: str, error: type[ConfigError] = ConfigError,
                     not_found: type[Exception] = ConfigNotFoundError) -> dict[str, Any]:
    """The JSON object in `path`; `error(message, path)` for anything else (missing, invalid, not UTF-8, a list)."""
    if not os.path.isfile(path):
        raise not_found("file does not exist", path)
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
        d = json.loads(text)
    except UnicodeDecodeError as e:
        raise error(f"not UTF-8 text ({e.reason} at byte {e.start})", path) from None
    except json.JSONDecodeError as e:
        raise error(f"invalid JSON (line {e.lineno}, column {e.colno}: {e.msg})", path) from None
    except OSError as e:
        raise error(f"cannot read: {e.strerror or e}", path) from None
    if not isinstance(d, dict):
        raise error(f"expected a JSON object, got {type(d).__name__}", path)
    return d


def config_kwargs(d: dict[str, Any], field_names: list[str], source: str = "<dict>") -> tuple[dict[str, Any], str]:
    """(Gemma4Config keyword arguments, key prefix) from a config.json dict (nested or flat form).

    field_names: Gemma4Config's fields. The prefix is "text_config." for the nested form (so errors
    name the key as the file has it), else "". Raises ConfigError naming `source` and the key for
    anything that is not a Gemma 4 text config; unknown keys (transformers bookkeeping, vision/audio
    configs) are ignored. `d` is not modified.
    """
    if not isinstance(d, dict):
        raise ConfigError(f"expected a JSON object, got {type(d).__name__}", source)
    model_type = d.get("model_type")
    nested = {outer: inner for inner, (outer, _) in TEXT_TYPES.items()}
    top: dict[str, Any] = {}
    if model_type in nested:
        text = d.get("text_config")
        if not isinstance(text, dict):
            raise ConfigError(f"a {model_type!r} config needs a 'text_config' object"
                              + (" (it is null)" if "text_config" in d else " (it is missing)"), source,
                              "text_config")
        prefix = "text_config."
        text_type = text.get("model_type", nested[model_type])
        if text_type != nested[model_type]:
            raise ConfigError(f"expected model_type {nested[model_type]!r}, got {text_type!r}", source,
                              prefix + "model_type")
        top = d
    elif model_type in TEXT_TYPES:
        text, prefix, text_type = d, "", model_type
    elif model_type is None:
        raise ConfigError("missing; a Gemma 4 config.json has model_type 'gemma4', 'gemma4_text', "
                          "'gemma4_unified' or 'gemma4_unified_text'", source, "model_type")
    else:
        hint = " (an earlier Gemma generation)" if isinstance(model_type, str) and model_type.startswith("gemma") else ""
        raise ConfigError(f"{model_type!r} is not a Gemma 4 text model; expected 'gemma4', 'gemma4_text', "
                          f"'gemma4_unified' or 'gemma4_unified_text'{hint}", source, "model_type")
    unified = text_type == "gemma4_unified_text"
    if unified:
        present = [k for k, off in UNIFIED_ABSENT.items() if text.get(k) not in (None, off, 0)]
        if present:
            raise ConfigError("a gemma4_unified_text model has no per-layer embeddings and no MoE block; "
                              f"remove {', '.join(prefix + k for k in present)}", source, prefix + present[0])

    missing = [k for k in REQUIRED_KEYS if text.get(k) is None]
    if missing:
        raise ConfigError(f"required key(s) missing: {', '.join(prefix + k for k in missing)}", source,
                          prefix + missing[0])

    kwargs: dict[str, Any] = {}
    for name in field_names:
        if name in text:
            kwargs[name] = text[name]
        elif name in _NESTED_FALLBACK_KEYS and name in top:
            kwargs[name] = top[name]
    kwargs.pop("dtype", None)
    kwargs["model_type"] = text_type
    if unified:
        kwargs.update({k: v for k, v in UNIFIED_DEFAULTS.items() if k not in text})
        kwargs.update({k: v for k, v in UNIFIED_ABSENT.items() if v is not None})
    for holder in (text, top):
        dt = holder.get("dtype") or holder.get("torch_dtype")
        if dt is not None:
            kwargs["dtype"] = dt
            break
    if kwargs.get("moe_intermediate_size") is None and text.get("expert_intermediate_size") is not None:
        kwargs["moe_intermediate_size"] = text["expert_intermediate_size"]
    if "hidden_size_per_layer_input" not in text and not unified:
        warnings.warn(f"{source}: no 'hidden_size_per_layer_input'; using transformers' class default 256 "
                      "(per-layer embeddings ON). Released 31B/26B-A4B configs set it to 0.", stacklevel=3)

    per_layer_config = text.get("per_layer_config")
    if per_layer_config is not None:
        kwargs.update(_per_layer_config_to_fields(text, per_layer_config, source, prefix))

    return kwargs, prefix


def config_to_dict(config) -> dict[str, Any]:
    """The flat `gemma4_text` config.json form (architectures ["Gemma4ForCausalLM"]).

    transformers 5.17 loads it into a Gemma4TextConfig equal to one built from the same values:
    the full-layer overrides are written as `per_layer_config` exactly as 5.17 writes them
    (zero-padded layer keys, only values that differ from the global ones), and also as the
    legacy `global_head_dim` / `num_global_key_value_heads` so that versions before the
    per_layer_config refactor read them too (5.17 pops and ignores the legacy keys when
    per_layer_config is present).
    """
    config.layers  # validate  # noqa: B018
    out: dict[str, Any] = {"architectures": [TEXT_TYPES[config.model_type][1]]}
    for f in dataclasses.fields(config):
        out[f.name] = copy.deepcopy(getattr(config, f.name))
    if config.model_type == "gemma4_unified_text":
        for k in UNIFIED_ABSENT:
            out.pop(k)
    out["per_layer_config"] = per_layer_config(config)
    return out


def per_layer_config(config) -> dict[str, dict[str, int]]:
    """Full-layer overrides in transformers 5.17's serialised `per_layer_config` form."""
    overrides: dict[int, dict[str, int]] = {}
    for i, t in enumerate(config.layer_types):
        if t != FULL_ATTENTION:
            continue
        o = {}
        if config.global_head_dim != config.head_dim:
            o["head_dim"] = config.global_head_dim
        kv = config.num_global_key_value_heads if config.attention_k_eq_v else None
        if kv is not None and kv != config.num_key_value_heads:
            o["num_key_value_heads"] = kv
        if o:
            overrides[i] = o
    if not overrides:
        return {}
    width = len(str(max(overrides)))
    return {str(i).zfill(width): o for i, o in overrides.items()}


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def resolve_layer_types(layer_types, num_layers, source, key) -> list[str]:
    """transformers' post-init: default 5:1 pattern; the last layer is forced to full attention."""
    if not is_int(num_layers) or not 1 <= num_layers <= MAX_LAYERS:
        raise ConfigError(f"must be an integer in [1, {MAX_LAYERS}], got {num_layers!r}", source,
                          key.removesuffix("layer_types") + "num_hidden_layers")
    if layer_types is None:
        return [SLIDING_ATTENTION if (i + 1) % 6 else FULL_ATTENTION for i in range(num_layers)]
    if not isinstance(layer_types, (list, tuple)):
        raise ConfigError(f"must be a list of layer types, got {layer_types!r}", source, key)
    if len(layer_types) != num_layers:
        raise ConfigError(f"has {len(layer_types)} entries but num_hidden_layers is {num_layers}", source, key)
    for i, t in enumerate(layer_types):
        if t not in LAYER_TYPES:
            raise ConfigError(f"entry {i} is {t!r}; expected 'sliding_attention' or 'full_attention'", source, key)
    if layer_types[-1] != FULL_ATTENTION:
        warnings.warn(f"{source}: the last layer must use full attention, got {layer_types[-1]!r}; forcing "
                      "'full_attention' (as transformers does)", stacklevel=4)
        layer_types = list(layer_types)
        layer_types[-1] = FULL_ATTENTION
    return list(layer_types) if isinstance(layer_types, tuple) else layer_types


def _per_layer_config_to_fields(text: dict, per_layer_config: Any, source: str, prefix: str) -> dict[str, Any]:
    """Turn transformers' `per_layer_config` into global_head_dim / num_global_key_value_heads.

    Gemma 4's modules read only `head_dim` and `num_key_value_heads` per layer. Every released
    model overrides them on full layers only, identically on all of them; anything else cannot be
    a Gemma 4 checkpoint and is refused rather than silently misread.
    """
    key = prefix + "per_layer_config"
    if not isinstance(per_layer_config, dict):
        raise ConfigError(f"must be an object keyed by layer index, got {per_layer_config!r}", source, key)
    L = text["num_hidden_layers"]
    types = resolve_layer_types(text.get("layer_types"), L, source, prefix + "layer_types")
    head_dim, num_kv = text["head_dim"], text["num_key_value_heads"]
    overrides: dict[int, dict] = {}
    for raw_idx, o in per_layer_config.items():
        k = f"{key}.{raw_idx}"
        idx = raw_idx if is_int(raw_idx) else (int(raw_idx) if isinstance(raw_idx, str) and raw_idx.isdigit() else None)
        if idx is None or not 0 <= idx < L:
            raise ConfigError(f"layer index must be an integer in [0, {L}), got {raw_idx!r}", source, k)
        if idx in overrides:
            raise ConfigError(f"layer {idx} appears twice", source, k)
        if not isinstance(o, dict):
            raise ConfigError(f"must be an object of overrides, got {o!r}", source, k)
        for name, v in o.items():
            if name not in PER_LAYER_KEYS:
                raise ConfigError(f"per-layer override of {name!r} is not supported by Gemma 4 (only "
                                  f"{', '.join(PER_LAYER_KEYS)})", source, f"{k}.{name}")
            if not is_int(v) or v < 1:
                raise ConfigError(f"must be a positive integer, got {v!r}", source, f"{k}.{name}")
        overrides[idx] = o
    full = [i for i, t in enumerate(types) if t == FULL_ATTENTION]
    for i, o in overrides.items():
        if types[i] == SLIDING_ATTENTION and (o.get("head_dim", head_dim) != head_dim
                                              or o.get("num_key_value_heads", num_kv) != num_kv):
            raise ConfigError(f"overrides sliding layer {i}; Gemma 4 only overrides full-attention layers",
                              source, f"{key}.{i}")
    head_dims = {overrides.get(i, {}).get("head_dim", head_dim) for i in full}
    kv_heads = {overrides.get(i, {}).get("num_key_value_heads", num_kv) for i in full}
    if len(head_dims) > 1 or len(kv_heads) > 1:
        raise ConfigError("full-attention layers must all have the same head_dim and num_key_value_heads "
                          f"(got head_dim {sorted(head_dims)}, num_key_value_heads {sorted(kv_heads)})", source, key)
    out: dict[str, Any] = {"global_head_dim": head_dims.pop() if head_dims else head_dim, "layer_types": types}
    kv = kv_heads.pop() if kv_heads else num_kv
    if kv != num_kv:
        if text.get("attention_k_eq_v") is not True:
            raise ConfigError("overrides num_key_value_heads of full layers, which Gemma 4 supports only with "
                              "attention_k_eq_v (num_global_key_value_heads)", source, key)
        out["num_global_key_value_heads"] = kv
    else:
        out["num_global_key_value_heads"] = None
    legacy = text.get("global_head_dim")
    if legacy is not None and legacy != out["global_head_dim"]:
        warnings.warn(f"{source}: {prefix}global_head_dim={legacy} is ignored because per_layer_config is present "
                      f"(full layers use head_dim {out['global_head_dim']}), as transformers does", stacklevel=3)
    return out
