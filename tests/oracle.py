"""The transformers 5.17.0 oracle: random Gemma 4 models in every released checkpoint layout.

    hf_config("tiny-e2b")                      transformers Gemma4TextConfig of a preset
    make_hf_model("tiny-e2b", torch.float32)   Gemma4ForCausalLM, every parameter/buffer perturbed
    save_hf(model, dir, layout="causal")       Gemma4ForCausalLM.save_pretrained (keys model.*)
    save_hf(model, dir, layout="conditional")  Gemma4ForConditionalGeneration with a tiny vision
                                               tower (keys model.language_model.*, model.vision_tower.*)
    add_unused_shared_kv_tensors(dir)          add k_proj/v_proj/k_norm of KV-shared layers, as
                                               Google's original E2B/E4B uploads carry them

Weights are random but shaped like a trained model's, so no formula hides behind a weight of one
or zero: norm weights and layer scalars uniform(0.5, 1.5) (q/k norms times hd^-1/4, so attention
scores are O(1) under the 1.0 attention scale), router scales positive, linear weights
randn * fan_in^-1/2, embeddings scaled so logits are O(1-10) before the soft-cap (not saturated,
not all equal), router logits of std ~3 so top-k choices are rarely near-ties.
"""
from __future__ import annotations

import copy
import json
import os
import warnings
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from gemma4.presets import PRESETS

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import transformers
    from transformers import (Gemma4Config, Gemma4ForCausalLM, Gemma4ForConditionalGeneration, Gemma4TextConfig,
                              Gemma4UnifiedConfig, Gemma4UnifiedForCausalLM, Gemma4UnifiedForConditionalGeneration,
                              Gemma4UnifiedTextConfig, Gemma4UnifiedVisionConfig, Gemma4VisionConfig)

assert transformers.__version__ == "5.17.0", f"the oracle is transformers 5.17.0, found {transformers.__version__}"
transformers.logging.set_verbosity_error()

__all__ = ["hf_config", "make_hf_model", "perturb_", "save_hf", "add_unused_shared_kv_tensors", "preset_dict",
           "TINY_VISION_CONFIG"]

# A vision tower small enough to cost nothing, present only so the checkpoint has its tensors.
TINY_VISION_CONFIG = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          num_key_value_heads=2, head_dim=16, position_embedding_size=64)
# The 12B ("Unified") has no tower: a patch embedder and an audio embedder, here as small as they go.
TINY_UNIFIED_VISION_CONFIG = dict(patch_size=2, pooling_kernel_size=2, mm_embed_dim=16, mm_posemb_size=8)

# transformers' classes per text model type: (text config, causal LM, conditional-generation config, model)
HF_CLASSES = {"gemma4_text": (Gemma4TextConfig, Gemma4ForCausalLM, Gemma4Config, Gemma4ForConditionalGeneration),
              "gemma4_unified_text": (Gemma4UnifiedTextConfig, Gemma4UnifiedForCausalLM, Gemma4UnifiedConfig,
                                      Gemma4UnifiedForConditionalGeneration)}


def preset_dict(preset_name: str, **overrides: Any) -> dict[str, Any]:
    """The preset's config.json dict with overrides applied (a deep copy)."""
    d = copy.deepcopy(PRESETS[preset_name])
    d.update(copy.deepcopy(overrides))
    return d


def hf_config(preset_name: str, **overrides: Any) -> Gemma4TextConfig:
    """transformers' own reading of the preset's config.json dict (not ours: an independent oracle)."""
    d = preset_dict(preset_name, **overrides)
    text_config_class = HF_CLASSES[d.pop("model_type")][0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return text_config_class(**d)


@torch.no_grad()
def perturb_(model: torch.nn.Module, generator: torch.Generator | None = None) -> torch.nn.Module:
    """Overwrite every parameter and persistent buffer of a transformers Gemma 4 model in place.

    Raises if a tensor is not covered by a rule, so new parameters cannot slip through unperturbed.
    Non-persistent buffers (RoPE inverse frequencies, embedding scales) are derived constants and
    stay as they are.
    """
    g = generator
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    H = cfg.hidden_size

    def uniform_(t, lo=0.5, hi=1.5):
        t.copy_(torch.rand(t.shape, generator=g, dtype=torch.float32) * (hi - lo) + lo)

    def randn_(t, std):
        t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float32) * std)

    persistent = set(model.state_dict().keys())
    seen = set()
    for name, p in list(model.named_parameters()) + [(n, b) for n, b in model.named_buffers() if n in persistent]:
        if id(p) in seen:
            continue
        seen.add(id(p))
        leaf = name.rsplit(".", 1)[-1]
        if name.endswith("embed_tokens.weight"):
            # h0 = row * sqrt(H); logits = norm(h) . row: rows of std 2.5/sqrt(H) give logit std ~2.5.
            randn_(p, 2.5 * H**-0.5)
        elif name.endswith("embed_tokens_per_layer.weight"):
            randn_(p, 1.0)
        elif name.endswith("router.proj.weight"):
            # The router input is RMS-normalised then scaled by H^-1/2: weights of std 3
            # give router logits of std ~3, so top-k picks are well separated.
            randn_(p, 3.0)
        elif name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
            randn_(p, p.shape[-1] ** -0.5)
        elif name.endswith("self_attn.q_norm.weight") or name.endswith("self_attn.k_norm.weight"):
            # Attention scale is 1.0: the q/k norm weights carry 1/sqrt(hd). Weights of hd^-1/4 x
            # uniform(0.5, 1.5) give scores of std ~1, so softmax is neither one-hot (which would hide
            # errors in all other keys and amplify rounding) nor flat.
            uniform_(p)
            p.mul_(p.shape[0] ** -0.25)
        elif leaf in ("layer_scalar", "scale", "per_expert_scale", "std_scale") or (
                leaf == "weight" and "norm" in name.rsplit(".", 2)[-2]):
            uniform_(p)
        elif leaf == "weight" and p.dim() == 2:
            randn_(p, p.shape[1] ** -0.5)
        elif leaf == "bias" or leaf == "std_bias":
            randn_(p, 0.1)
        elif name.startswith("model.vision_tower") or name.startswith("model.embed_vision"):
            randn_(p, 0.02 if p.dim() > 1 else 1.0)  # vision tower: present, never used by text tests
        else:
            raise AssertionError(f"perturb_: no rule for {name} {tuple(p.shape)}")
    return model


def make_hf_model(preset_name: str, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa",
                  experts_implementation: str | None = None, generator: torch.Generator | None = None,
                  **overrides: Any) -> Gemma4ForCausalLM:
    """transformers' Gemma4ForCausalLM of a preset, every weight perturbed, in eval mode.

    experts_implementation: None = transformers' default (grouped_mm), except "eager" for float64,
    which grouped_mm does not support.
    """
    config = hf_config(preset_name, **overrides)
    config._attn_implementation = attn_implementation
    if experts_implementation is None and dtype == torch.float64:
        experts_implementation = "eager"
    if experts_implementation is not None:
        config._experts_implementation = experts_implementation
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HF_CLASSES[config.model_type][1](config)
    perturb_(model, generator)
    model.tie_weights()
    return model.to(dtype).eval()


def _text_config_dict(model: Gemma4ForCausalLM) -> dict[str, Any]:
    d = model.config.to_dict()
    for k in ("architectures", "transformers_version", "_name_or_path", "dtype"):
        d.pop(k, None)
    return d


def save_hf(model: Gemma4ForCausalLM, directory: str | os.PathLike, layout: str = "causal",
            max_shard_size: str | int = "5GB") -> str:
    """Save `model` as transformers would ship it; returns the directory.

    layout "causal": Gemma4ForCausalLM.save_pretrained (config model_type gemma4_text, keys model.*).
    layout "conditional": the released repos' form: a Gemma4ForConditionalGeneration (nested config
    model_type gemma4, tiny vision tower, no audio) whose language model holds the same weights
    (keys model.language_model.*, plus model.vision_tower.* and model.embed_vision.*).
    """
    directory = os.fspath(directory)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if layout == "causal":
            model.save_pretrained(directory, max_shard_size=max_shard_size)
        elif layout == "conditional":
            _, _, config_class, model_class = HF_CLASSES[model.config.model_type]
            if model.config.model_type == "gemma4_unified_text":
                vision = Gemma4UnifiedVisionConfig(**TINY_UNIFIED_VISION_CONFIG,
                                                   output_proj_dims=model.config.hidden_size).to_dict()
                config = config_class(text_config=_text_config_dict(model), vision_config=vision,
                                      audio_config={"audio_embed_dim": 8})
            else:
                config = config_class(text_config=_text_config_dict(model),
                                      vision_config=Gemma4VisionConfig(**TINY_VISION_CONFIG).to_dict(),
                                      audio_config=None)
            dtype = next(model.parameters()).dtype
            full = model_class(config)
            perturb_(full)
            full = full.to(dtype)
            result = full.model.language_model.load_state_dict(model.model.state_dict(), strict=True)
            assert not result.missing_keys and not result.unexpected_keys, result
            full.tie_weights()
            full.save_pretrained(directory, max_shard_size=max_shard_size)
        else:
            raise ValueError(f"layout must be 'causal' or 'conditional', got {layout!r}")
    return directory


def _checkpoint_files(directory: str) -> tuple[list[str], str | None]:
    index = os.path.join(directory, "model.safetensors.index.json")
    single = os.path.join(directory, "model.safetensors")
    if os.path.isfile(single):
        return [single], None
    with open(index) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    return [os.path.join(directory, f) for f in files], index


def add_unused_shared_kv_tensors(directory: str | os.PathLike, generator: torch.Generator | None = None) -> list[str]:
    """Add random k_proj / v_proj / k_norm tensors for every KV-shared layer, as Google's uploads have.

    transformers ignores them (`_keys_to_ignore_on_load_unexpected`); a loader must too. Returns the
    added keys. Works on either layout and on sharded checkpoints (adds to the first shard).
    """
    directory = os.fspath(directory)
    with open(os.path.join(directory, "config.json")) as f:
        raw = json.load(f)
    text = raw.get("text_config", raw)
    L, S = text["num_hidden_layers"], text.get("num_kv_shared_layers", 0)
    if not S:
        return []
    files, index = _checkpoint_files(directory)
    first = files[0]
    with safe_open(first, "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    all_keys = set(tensors)
    if index:
        with open(index) as f:
            all_keys = set(json.load(f)["weight_map"])
    prefix = "model.language_model." if any(k.startswith("model.language_model.") for k in all_keys) else "model."
    dtype = tensors[next(iter(tensors))].dtype
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = Gemma4TextConfig(**{k: v for k, v in text.items() if k != "model_type"})
    added = []
    for i in range(L - S, L):
        layer_cfg = cfg.per_layer_config[i]
        hd, nkv = layer_cfg.head_dim, layer_cfg.num_key_value_heads
        base = f"{prefix}layers.{i}.self_attn."
        new = {base + "k_proj.weight": torch.randn(nkv * hd, cfg.hidden_size, generator=generator) * cfg.hidden_size**-0.5,
               base + "v_proj.weight": torch.randn(nkv * hd, cfg.hidden_size, generator=generator) * cfg.hidden_size**-0.5,
               base + "k_norm.weight": torch.rand(hd, generator=generator) + 0.5}
        for k, t in new.items():
            assert k not in all_keys, f"{k} already in the checkpoint"
            tensors[k] = t.to(dtype)
            added.append(k)
    save_file(tensors, first, metadata=metadata)
    if index:
        with open(index) as f:
            idx = json.load(f)
        for k in added:
            idx["weight_map"][k] = os.path.basename(first)
            idx.setdefault("metadata", {})
            if "total_size" in idx["metadata"]:
                idx["metadata"]["total_size"] += tensors[k].numel() * tensors[k].element_size()
        with open(index, "w") as f:
            json.dump(idx, f, indent=2, sort_keys=True)
    return added
