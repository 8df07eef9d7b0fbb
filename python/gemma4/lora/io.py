"""PEFT's on-disk adapter format: adapter_config.json + adapter_model.safetensors (or .bin).

Keys (PEFT 0.21, get_peft_model_state_dict): `base_model.model.<module path>.lora_A.weight` /
`.lora_B.weight` (adapter name removed), `<module path>(.base_layer)*.lora_A.weight` for LoRA on parameters
(one `.base_layer` per nesting level), and `<module path>.<key>` for every state-dict key of a
modules_to_save copy. The module path is transformers' name: `model.layers...` for an adapter made on
Gemma4ForCausalLM, `model.language_model.layers...` for one made on Gemma4ForConditionalGeneration.
"""
from __future__ import annotations

import json
import os
import warnings

import torch

from .config import ADAPTER_CONFIG_NAME, LoraConfig

__all__ = ["PEFT_PREFIX", "ADAPTER_WEIGHTS_NAME", "ADAPTER_PICKLE_NAME", "Root", "read_adapter", "write_adapter"]

PEFT_PREFIX = "base_model.model."
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_PICKLE_NAME = "adapter_model.bin"

# transformers' classes an adapter for this model can have been made on, and where their text model lives
_TRANSFORMERS_LIBRARY = "transformers.models.gemma4.modeling_gemma4"
_ROOT_CLASSES = {"causal": "Gemma4ForCausalLM", "conditional": "Gemma4ForConditionalGeneration"}
# Gemma4ForConditionalGeneration's non-text parts: adapters made on it may carry LoRA for them
_MULTIMODAL_PREFIXES = ("model.vision_tower.", "model.audio_tower.", "model.embed_vision.", "model.embed_audio.",
                        "model.multi_modal_projector.")


class Root:
    """Maps our module paths to the transformers model's the adapter was made on, and back.

    causal:      ours "model.layers.0.mlp" <-> "model.layers.0.mlp"
    conditional: ours "model.layers.0.mlp" <-> "model.language_model.layers.0.mlp"; "lm_head" <-> "lm_head"
    """

    def __init__(self, kind: str):
        if kind not in _ROOT_CLASSES:
            raise ValueError(f"adapter layout must be 'causal' or 'conditional', got {kind!r}")
        self.kind = kind

    @property
    def transformers_class(self) -> str:
        return _ROOT_CLASSES[self.kind]

    def to_hf(self, path: str) -> str:
        if self.kind == "conditional" and (path == "model" or path.startswith("model.")):
            return "model.language_model" + path[len("model"):]
        return path

    def from_hf(self, hf_path: str) -> str | None:
        """Our path for a transformers path, or None when it is outside the text model."""
        if self.kind == "conditional":
            if hf_path == "model.language_model" or hf_path.startswith("model.language_model."):
                return "model" + hf_path[len("model.language_model"):]
            if hf_path == "lm_head" or hf_path.startswith("lm_head."):
                return hf_path
            return None
        return hf_path

    def is_multimodal(self, hf_key: str) -> bool:
        return self.kind == "conditional" and hf_key.startswith(_MULTIMODAL_PREFIXES)

    @classmethod
    def detect(cls, keys, source: str) -> "Root":
        """causal or conditional from the (prefix-stripped) keys of an adapter file."""
        keys = list(keys)
        if any(k.startswith("model.language_model.") for k in keys):
            return cls("conditional")
        for k in keys:
            if not (k.startswith("model.") or k.startswith("lm_head.")):
                raise ValueError(f"{source}: key {PEFT_PREFIX + k!r} is not under a Gemma 4 model "
                                 "(expected base_model.model.model.* or base_model.model.lm_head.*)")
        if any(k.startswith(_MULTIMODAL_PREFIXES) for k in keys):
            return cls("conditional")  # only multimodal towers adapted: rejected later as empty for the text model
        return cls("causal")

    def auto_mapping(self) -> dict:
        return {"base_model_class": self.transformers_class, "parent_library": _TRANSFORMERS_LIBRARY}


def _weights_file(path: str) -> str:
    for name in (ADAPTER_WEIGHTS_NAME, ADAPTER_PICKLE_NAME):
        f = os.path.join(path, name)
        if os.path.isfile(f):
            return f
    raise FileNotFoundError(f"no {ADAPTER_WEIGHTS_NAME} (or {ADAPTER_PICKLE_NAME}) in {path}")


def read_adapter(path: str | os.PathLike) -> tuple[LoraConfig, dict[str, torch.Tensor], str, str]:
    """(config, tensors keyed without the base_model.model. prefix, weights file, config file)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"adapter directory {path} does not exist (only local adapters are supported; "
                                "download a Hub adapter first, e.g. with huggingface_hub.snapshot_download)")
    config_file = os.path.join(path, ADAPTER_CONFIG_NAME)
    config = LoraConfig.from_pretrained(config_file)
    weights = _weights_file(path)
    if weights.endswith(".safetensors"):
        from safetensors.torch import load_file  # noqa: PLC0415

        raw = load_file(weights, device="cpu")
    else:
        raw = torch.load(weights, map_location="cpu", weights_only=True)
    tensors: dict[str, torch.Tensor] = {}
    for k, v in raw.items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"{weights}: entry {k!r} is not a tensor")
        key = k[len(PEFT_PREFIX):] if k.startswith(PEFT_PREFIX) else k
        if key in tensors:
            raise ValueError(f"{weights}: key {k!r} appears twice (with and without the {PEFT_PREFIX!r} prefix)")
        tensors[key] = v
    if not tensors:
        raise ValueError(f"{weights}: the adapter file holds no tensors")
    return config, tensors, weights, config_file


def write_adapter(path: str | os.PathLike, config: LoraConfig, tensors: dict[str, torch.Tensor],
                  root: Root) -> None:
    """Write adapter_config.json + adapter_model.safetensors as PeftModel.save_pretrained does."""
    from safetensors.torch import save_file  # noqa: PLC0415

    path = os.fspath(path)
    if os.path.isfile(path):
        raise ValueError(f"Provided path ({path}) should be a directory, not a file")
    os.makedirs(path, exist_ok=True)
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for k, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        storage = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if storage in seen:
            t = t.clone()  # safetensors refuses aliased tensors
        seen.add((t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()))
        out[PEFT_PREFIX + k] = t
    save_file(out, os.path.join(path, ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})
    extra = {}
    if config.task_type is None and config.auto_mapping is None:
        extra["auto_mapping"] = root.auto_mapping()  # what PEFT writes for a task-less adapter
    config.save_pretrained(path, **extra)
    stale = os.path.join(path, ADAPTER_PICKLE_NAME)
    if os.path.isfile(stale):
        warnings.warn(f"{stale} from an earlier save is left in place; PEFT prefers {ADAPTER_WEIGHTS_NAME}")


def check_base_model(config: LoraConfig, model_config, config_file: str) -> None:
    """Refuse an adapter whose adapter_config.json names a different base model, where that is detectable:
    auto_mapping naming another class, or base_model_name_or_path a local checkpoint whose config.json
    disagrees with this model's dimensions. (Hub ids are not resolved; the shape checks still apply.)"""
    mapping = config.auto_mapping or {}
    cls = mapping.get("base_model_class") if isinstance(mapping, dict) else None
    if cls is not None and cls not in _ROOT_CLASSES.values():
        raise ValueError(f"{config_file}: auto_mapping.base_model_class is {cls!r}; this adapter was made for "
                         f"another model (expected one of {sorted(_ROOT_CLASSES.values())})")
    base = config.base_model_name_or_path
    if not base or not os.path.isfile(os.path.join(base, "config.json")):
        return
    with open(os.path.join(base, "config.json"), encoding="utf-8") as f:
        try:
            raw = json.load(f)
        except json.JSONDecodeError:
            return
    text = raw.get("text_config", raw) if isinstance(raw, dict) else {}
    model_type = str(text.get("model_type", raw.get("model_type", "")))
    if model_type and not model_type.startswith("gemma4"):
        raise ValueError(f"{config_file}: base_model_name_or_path {base!r} is a {model_type!r} model, not Gemma 4")
    for field in ("hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "hidden_size_per_layer_input", "num_experts",
                  "moe_intermediate_size"):
        if field in text and getattr(model_config, field, None) is not None and \
                text[field] != getattr(model_config, field):
            raise ValueError(f"{config_file}: base_model_name_or_path {base!r} has {field}={text[field]!r} but "
                             f"this model has {field}={getattr(model_config, field)!r}: the adapter was made for "
                             "a different base model")
