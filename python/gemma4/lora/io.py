"""PEFT's on-disk adapter format: adapter_config.json + adapter_model.safetensors.

Keys (PEFT 0.21, get_peft_model_state_dict): `base_model.model.<module path>.lora_A.weight` /
`.lora_B.weight` (adapter name removed), `<module path>(.base_layer)*.lora_A.weight` for LoRA on parameters
(one `.base_layer` per nesting level), and `<module path>.<key>` for every state-dict key of a
modules_to_save copy. The module path is transformers' name: `model.layers...` for an adapter made on
Gemma4ForCausalLM, `model.language_model.layers...` for one made on Gemma4ForConditionalGeneration
(gemma4.hf_format.keys.Layout maps both ways and detects which).

Files are read with gemma4.hf_format (one safetensors reader: truncated or corrupt files, and NaN/inf
weights, are one error naming the file and tensor). PEFT's pickle format (adapter_model.bin) is refused,
never opened: the package never unpickles.
"""
from __future__ import annotations

import os
import warnings

import torch

from ..errors import AdapterError, AdapterNotFoundError
from ..hf_format.config_json import read_json_object
from ..hf_format.keys import PEFT_PREFIX, Layout
from ..hf_format.safetensors import load_file, save_file
from .config import ADAPTER_CONFIG_NAME, LoraConfig

__all__ = ["PEFT_PREFIX", "ADAPTER_WEIGHTS_NAME", "ADAPTER_PICKLE_NAME", "Root", "read_adapter", "write_adapter"]

ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_PICKLE_NAME = "adapter_model.bin"

Root = Layout  # the adapter's root class: causal (Gemma4ForCausalLM) or conditional


def _weights_file(path: str) -> str:
    f = os.path.join(path, ADAPTER_WEIGHTS_NAME)
    if os.path.isfile(f):
        return f
    pickle = os.path.join(path, ADAPTER_PICKLE_NAME)
    if os.path.isfile(pickle):
        raise AdapterError(f"PEFT's pickle format is not read (gemma4 never unpickles); convert it once with a "
                           f"trusted tool, e.g. PeftModel.from_pretrained(...).save_pretrained(dir) which writes "
                           f"{ADAPTER_WEIGHTS_NAME}", pickle)
    raise AdapterNotFoundError(f"no {ADAPTER_WEIGHTS_NAME} in the adapter directory", path)


def read_adapter(path: str | os.PathLike) -> tuple[LoraConfig, dict[str, torch.Tensor], str, str]:
    """(config, tensors keyed without the base_model.model. prefix, weights file, config file)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise AdapterNotFoundError("adapter directory does not exist (only local adapters are supported; download a "
                                   "Hub adapter first, e.g. with huggingface_hub.snapshot_download)", path)
    config_file = os.path.join(path, ADAPTER_CONFIG_NAME)
    config = LoraConfig.from_pretrained(config_file)
    weights = _weights_file(path)
    tensors: dict[str, torch.Tensor] = {}
    for k, v in load_file(weights).items():
        key = k[len(PEFT_PREFIX):] if k.startswith(PEFT_PREFIX) else k
        if key in tensors:
            raise AdapterError(f"appears twice (with and without the {PEFT_PREFIX!r} prefix)", weights, k)
        tensors[key] = v
    if not tensors:
        raise AdapterError("the adapter file holds no tensors", weights)
    return config, tensors, weights, config_file


def write_adapter(path: str | os.PathLike, config: LoraConfig, tensors: dict[str, torch.Tensor],
                  root: Root) -> None:
    """Write adapter_config.json + adapter_model.safetensors as PeftModel.save_pretrained does."""
    path = os.fspath(path)
    if os.path.isfile(path):
        raise ValueError(f"Provided path ({path}) should be a directory, not a file")
    os.makedirs(path, exist_ok=True)
    save_file({PEFT_PREFIX + k: t for k, t in tensors.items()}, os.path.join(path, ADAPTER_WEIGHTS_NAME))
    extra = {}
    if config.task_type is None and config.auto_mapping is None:
        extra["auto_mapping"] = root.auto_mapping()  # what PEFT writes for a task-less adapter
    config.save_pretrained(path, **extra)
    stale = os.path.join(path, ADAPTER_PICKLE_NAME)
    if os.path.isfile(stale):
        warnings.warn(f"{stale} from an earlier save is left in place (PEFT prefers {ADAPTER_WEIGHTS_NAME}; gemma4 "
                      "never reads it)")


def check_base_model(config: LoraConfig, model_config, config_file: str) -> None:
    """Refuse an adapter whose adapter_config.json names a different base model, where that is detectable:
    auto_mapping naming another class, or base_model_name_or_path a local checkpoint whose config.json
    disagrees with this model's dimensions. (Hub ids are not resolved; the shape checks still apply.)"""
    mapping = config.auto_mapping or {}
    cls = mapping.get("base_model_class") if isinstance(mapping, dict) else None
    if cls is not None and cls not in Layout.known_classes():
        raise ValueError(f"{config_file}: auto_mapping.base_model_class is {cls!r}; this adapter was made for "
                         f"another model (expected one of {Layout.known_classes()})")
    base = config.base_model_name_or_path
    if not base or not os.path.isfile(os.path.join(base, "config.json")):
        return
    try:
        raw = read_json_object(os.path.join(base, "config.json"))
    except ValueError:
        return  # an unreadable base config proves nothing; the shape checks still apply
    text = raw.get("text_config", raw)
    text = text if isinstance(text, dict) else {}
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
