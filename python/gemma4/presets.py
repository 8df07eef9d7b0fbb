"""Gemma 4 variants as data: a shared Gemma 4 base, and each variant as what differs from it.

`GEMMA4_BASE` holds the values every released Gemma 4 text model shares (gemma4-architecture.md
tables 1.2-1.3); a variant writes only its own numbers, gpt-fast style, with its layer pattern
written out literally. `PRESETS[name]` is the full flat config.json-style dict (`model_type:
"gemma4_text"`, the legacy `global_head_dim` / `num_global_key_value_heads` form the released files
use); `get_preset(name, **overrides)` turns it into a `Gemma4Config`. A new variant is a new entry
here (or `get_preset(name, **overrides)`), not new model code.

Released values: gemma4-architecture.md table 1.2 (text configs of google/gemma-4-E2B, -E4B, -31B,
-26B-A4B; `eos_token_id` is the base repos' 1, the -it repos list [1, 106] at the top level) and its
"12B" note (Gemma 4 12B "Unified": model_type gemma4_unified_text, whose config.json has no PLE or MoE
keys, so its presets drop them).

Test configs keep each release's feature set at toy widths (vocab 512, hidden 64, 4 query heads,
2 sliding KV heads, head_dim 32 / global 64, window 8 so 20-40 token tests cross it):
  tiny-e2b      PLE, KV sharing (5 of 10 layers; shared layers read a sliding and a full
                source), double-wide MLP on the shared layers, 4:1 pattern
  tiny-e4b      PLE, KV sharing (6 of 12 layers, both types), 5:1 pattern
  tiny-31b      attention_k_eq_v with 1 global KV head, no PLE, bidirectional "vision"
  tiny-26b-a4b  MoE (8 experts, top-2, width 32) beside the dense MLP, attention_k_eq_v
  tiny-12b      gemma4_unified_text (the 12B's type): no PLE/MoE keys, attention_k_eq_v, 1 global KV head
  small-e2b     E2B's widths (vocab 262144) with 5 layers, 2 of them KV-shared: benchmarks
  default       the embedded default model (gemma4/default_model, docs/default_model.md)
"""
from __future__ import annotations

import copy
from typing import Any

from .config import Gemma4Config
from .hf_format.config_json import UNIFIED_ABSENT

__all__ = ["PRESETS", "GEMMA4_BASE", "get_preset", "preset_dict", "RELEASED", "TEST_PRESETS"]

S = "sliding_attention"
F = "full_attention"

# What all four releases share. Every key a preset dict holds is here, so a variant's entry below
# reads as its difference from Gemma 4.
GEMMA4_BASE: dict[str, Any] = {
    "model_type": "gemma4_text",
    "vocab_size": 262144,
    "vocab_size_per_layer_input": 262144,
    "head_dim": 256,
    "global_head_dim": 512,
    "num_global_key_value_heads": None,
    "attention_k_eq_v": False,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-06,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "bos_token_id": 2,
    "tie_word_embeddings": True,
    "rope_parameters": {  # gemma4-architecture.md 1.3: identical in all four releases
        S: {"rope_type": "default", "rope_theta": 10000.0},
        F: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1000000.0},
    },
    "attention_bias": False,
    "attention_dropout": 0.0,
    "sliding_window": 512,
    "final_logit_softcapping": 30.0,
    "use_bidirectional_attention": None,
    "hidden_size_per_layer_input": 0,
    "num_kv_shared_layers": 0,
    "use_double_wide_mlp": False,
    "enable_moe_block": False,
    "num_experts": None,
    "top_k_experts": None,
    "moe_intermediate_size": None,
    "dtype": "bfloat16",
}

# The small (E) models: per-layer embeddings and KV sharing.
_E_MODELS = {"hidden_size_per_layer_input": 256}
# The large models: a longer context, wider window, K=V full layers, bidirectional vision tokens.
_LARGE = {"max_position_embeddings": 262144, "sliding_window": 1024, "attention_k_eq_v": True,
          "use_bidirectional_attention": "vision"}
# Gemma 4 12B "Unified": its own model type, the large models' attention settings, no PLE or MoE.
_UNIFIED = {"model_type": "gemma4_unified_text", **_LARGE}
# Test widths shared by the tiny-* configs (float32 by default: no dtype).
_TINY = {"vocab_size": 512, "vocab_size_per_layer_input": 512, "hidden_size": 64, "intermediate_size": 96,
         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "global_head_dim": 64,
         "sliding_window": 8, "dtype": None}

# The large models' attention (K=V full layers, 1 global KV head) at test widths: tiny-31b, and the base
# of tiny-26b-a4b and tiny-12b.
_TINY_LARGE = {
    **_TINY,
    **{k: v for k, v in _LARGE.items() if k != "sliding_window"},
    "num_hidden_layers": 12,
    "num_global_key_value_heads": 1,
    "layer_types": [S, S, S, S, S, F,  S, S, S, S, S, F],
}

_VARIANTS: dict[str, dict[str, Any]] = {
    # ---------------------------------------------------------------- released checkpoints
    "gemma-4-E2B": {
        **_E_MODELS,
        "hidden_size": 1536,
        "intermediate_size": 6144,
        "num_hidden_layers": 35,
        "num_attention_heads": 8,
        "num_key_value_heads": 1,
        "layer_types": [
            S, S, S, S, F,  S, S, S, S, F,  S, S, S, S, F,  S, S, S, S, F,  S, S, S, S, F,  # 0-24
            S, S, S, S, F,  S, S, S, S, F,  # 25-34
        ],
        "num_kv_shared_layers": 20,
        "use_double_wide_mlp": True,
    },
    "gemma-4-E4B": {
        **_E_MODELS,
        "hidden_size": 2560,
        "intermediate_size": 10240,
        "num_hidden_layers": 42,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "layer_types": [
            S, S, S, S, S, F,  S, S, S, S, S, F,  S, S, S, S, S, F,  S, S, S, S, S, F,  # 0-23
            S, S, S, S, S, F,  S, S, S, S, S, F,  S, S, S, S, S, F,  # 24-41
        ],
        "num_kv_shared_layers": 18,
    },
    "gemma-4-31B": {
        **_LARGE,
        "hidden_size": 5376,
        "intermediate_size": 21504,
        "num_hidden_layers": 60,
        "num_attention_heads": 32,
        "num_key_value_heads": 16,
        "num_global_key_value_heads": 4,
        "layer_types": [
            S, S, S, S, S, F,  S, S, S, S, S, F,  S, S, S, S, S, F,  S, S, S, S, S, F,  # 0-23
            S, S, S, S, S, F,  S, S, S, S, S, F,  S, S, S, S, S, F,  S, S, S, S, S, F,  # 24-47
            S, S, S, S, S, F,  S, S, S, S, S, F,  # 48-59
        ],
    },
    "gemma-4-26B-A4B": {
        **_LARGE,
        "hidden_size": 2816,
        "intermediate_size": 2112,
        "num_hidden_layers": 30,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "num_global_key_value_heads": 2,
        "layer_types": [
            S, S, S, S, S, F,  S, S, S, S, S, F,  S, S, S, S, S, F,  S, S, S, S, S, F,  # 0-23
            S, S, S, S, S, F,  # 24-29
        ],
        "enable_moe_block": True,
        "num_experts": 128,
        "top_k_experts": 8,
        "moe_intermediate_size": 704,
    },
    "gemma-4-12B": {
        **_UNIFIED,
        "hidden_size": 3840,
        "intermediate_size": 15360,
        "num_hidden_layers": 48,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "num_global_key_value_heads": 1,
        "layer_types": [
            S, S, S, S, S, F,  S, S, S, S, S, F,  S, S, S, S, S, F,  S, S, S, S, S, F,  # 0-23
            S, S, S, S, S, F,  S, S, S, S, S, F,  S, S, S, S, S, F,  S, S, S, S, S, F,  # 24-47
        ],
    },
    # ---------------------------------------------------------------- test configs
    "tiny-e2b": {
        **_TINY,                          # intermediate 192 on the KV-shared layers 5-9 (double-wide)
        "num_hidden_layers": 10,
        "layer_types": [S, S, S, S, F,  S, S, S, S, F],  # shared 5-9 read layer 3 (sliding), 4 (full)
        "hidden_size_per_layer_input": 16,
        "num_kv_shared_layers": 5,
        "use_double_wide_mlp": True,
    },
    "tiny-e4b": {
        **_TINY,
        "num_hidden_layers": 12,
        "layer_types": [S, S, S, S, S, F,  S, S, S, S, S, F],  # shared 6-11 read layer 4 (sliding), 5 (full)
        "hidden_size_per_layer_input": 16,
        "num_kv_shared_layers": 6,
    },
    "tiny-31b": _TINY_LARGE,
    "tiny-26b-a4b": {
        **_TINY_LARGE,
        "enable_moe_block": True,
        "num_experts": 8,
        "top_k_experts": 2,
        "moe_intermediate_size": 32,
    },
    "tiny-12b": {**_TINY_LARGE, "model_type": _UNIFIED["model_type"]},  # the 31B's tiny twin, unified type
    "small-e2b": {
        **_E_MODELS,
        "hidden_size": 1536,
        "intermediate_size": 6144,        # 12288 on the KV-shared layers 3-4 (double-wide)
        "num_hidden_layers": 5,
        "num_attention_heads": 8,
        "num_key_value_heads": 1,
        "layer_types": [S, S, F,  S, F],  # shared 3-4 read layer 1 (sliding), 2 (full)
        "num_kv_shared_layers": 2,
        "use_double_wide_mlp": True,
    },
    "default": {  # the embedded default model (scripts/train_default_model.py trains it from this)
        "vocab_size": 4096,
        "vocab_size_per_layer_input": 4096,
        "hidden_size": 128,
        "intermediate_size": 512,         # 1024 on the KV-shared layers 4-5 (double-wide)
        "num_hidden_layers": 6,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "global_head_dim": 64,
        "max_position_embeddings": 2048,
        "eos_token_id": [1, 106],
        "sliding_window": 64,
        "layer_types": [S, S, F,  S, S, F],  # KV-shared 4 (sliding) and 5 (full) read layers 3 and 2
        "hidden_size_per_layer_input": 32,
        "num_kv_shared_layers": 2,
        "use_double_wide_mlp": True,
        "dtype": "float32",
    },
}



def _flat(diff: dict[str, Any]) -> dict[str, Any]:
    d = {**copy.deepcopy(GEMMA4_BASE), **copy.deepcopy(diff)}
    if d["model_type"] == "gemma4_unified_text":  # its config.json has no PLE / MoE keys
        for k in UNIFIED_ABSENT:
            del d[k]
    return d


PRESETS: dict[str, dict[str, Any]] = {name: _flat(diff) for name, diff in _VARIANTS.items()}

RELEASED = ("gemma-4-E2B", "gemma-4-E4B", "gemma-4-31B", "gemma-4-26B-A4B", "gemma-4-12B")
TEST_PRESETS = ("tiny-e2b", "tiny-e4b", "tiny-31b", "tiny-26b-a4b", "tiny-12b")


def preset_dict(name: str, **overrides: Any) -> dict[str, Any]:
    """The named variant's config.json dict (a copy) with `overrides` applied.

    Raises KeyError for an unknown preset and TypeError for an override that is not one of its keys
    (a misspelled `sliding_windw=16` must not be silently ignored).
    """
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    d = copy.deepcopy(PRESETS[name])
    unknown = sorted(set(overrides) - set(d))
    if unknown:
        raise TypeError(f"get_preset({name!r}): unknown override(s) {', '.join(unknown)}; a preset's keys are "
                        f"the Gemma4Config fields: {', '.join(sorted(k for k in d if k != 'model_type'))}")
    d.update(copy.deepcopy(overrides))
    return d


def get_preset(name: str, **overrides: Any) -> Gemma4Config:
    """The named variant as a Gemma4Config; keyword arguments override config.json keys."""
    return Gemma4Config.from_dict(preset_dict(name, **overrides), source=f"preset {name!r}")
