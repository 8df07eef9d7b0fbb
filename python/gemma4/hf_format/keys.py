"""Tensor and module names: Hugging Face checkpoints and PEFT adapters <-> our Gemma4ForCausalLM.

Our modules mirror transformers' Gemma4ForCausalLM, so only the prefix of the text model differs:

  layout        transformers class                 text model at            our name
  causal        Gemma4ForCausalLM                  model.X                  model.X
  conditional   Gemma4ForConditionalGeneration     model.language_model.X   model.X
  (both)                                           lm_head.weight           lm_head.weight

Gemma4ForConditionalGeneration's multimodal parts (MULTIMODAL_PREFIXES) are not part of the text
model: checkpoints' tensors under them are skipped, adapters' LoRA for them is refused.
PEFT adapters prefix every key with `base_model.model.` (PEFT_PREFIX).
"""
from __future__ import annotations

import re
from typing import Iterable

__all__ = ["CONDITIONAL_PREFIX", "CAUSAL_PREFIX", "MULTIMODAL_PREFIXES", "SHARED_KV_UNUSED", "PEFT_PREFIX",
           "Layout", "map_checkpoint_key", "is_multimodal_key", "shared_kv_unused_pattern"]

CONDITIONAL_PREFIX = "model.language_model."
CAUSAL_PREFIX = "model."
# The one list of Gemma4ForConditionalGeneration's non-text parts (towers, embedders, projector).
# Gemma 4 12B ("Unified") has no towers: a patch embedder (vision_embedder) and the two projectors.
MULTIMODAL_PREFIXES = ("model.vision_tower.", "model.embed_vision.", "model.audio_tower.", "model.embed_audio.",
                       "model.multi_modal_projector.", "model.vision_embedder.")
# Projections a KV-shared layer does not have (present, unused, in Google's original uploads).
SHARED_KV_UNUSED = ("k_proj", "v_proj", "k_norm", "v_norm")
PEFT_PREFIX = "base_model.model."

_TRANSFORMERS_CLASSES = {"causal": "Gemma4ForCausalLM", "conditional": "Gemma4ForConditionalGeneration"}
TRANSFORMERS_LIBRARY = "transformers.models.gemma4.modeling_gemma4"


def is_multimodal_key(hf_key: str) -> bool:
    """True for names under Gemma4ForConditionalGeneration's vision/audio parts."""
    return hf_key.startswith(MULTIMODAL_PREFIXES)


class Layout:
    """Which transformers class names were written with, and the name map both ways.

    causal:      ours "model.layers.0.mlp" <-> "model.layers.0.mlp"
    conditional: ours "model.layers.0.mlp" <-> "model.language_model.layers.0.mlp"; "lm_head" <-> "lm_head"
    """

    def __init__(self, kind: str):
        if kind not in _TRANSFORMERS_CLASSES:
            raise ValueError(f"layout must be 'causal' or 'conditional', got {kind!r}")
        self.kind = kind

    def __repr__(self) -> str:
        return f"Layout({self.kind!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Layout) and other.kind == self.kind

    @property
    def transformers_class(self) -> str:
        return _TRANSFORMERS_CLASSES[self.kind]

    def to_hf(self, name: str) -> str:
        """Our module or tensor name -> the name in this layout."""
        if self.kind == "conditional" and (name == "model" or name.startswith(CAUSAL_PREFIX)):
            return "model.language_model" + name[len("model"):]
        return name

    def from_hf(self, hf_name: str) -> str | None:
        """A name in this layout -> ours, or None when it is outside the text model."""
        if self.kind == "conditional":
            if hf_name == "model.language_model" or hf_name.startswith(CONDITIONAL_PREFIX):
                return "model" + hf_name[len("model.language_model"):]
            if hf_name == "lm_head" or hf_name.startswith("lm_head."):
                return hf_name
            return None
        return hf_name

    def is_multimodal(self, hf_key: str) -> bool:
        """True for a name under the multimodal parts (which only the conditional layout has)."""
        return self.kind == "conditional" and is_multimodal_key(hf_key)

    @classmethod
    def detect(cls, keys: Iterable[str], source: str) -> "Layout":
        """PEFT root detection: causal or conditional from an adapter's (prefix-stripped) keys."""
        keys = list(keys)
        if any(k.startswith(CONDITIONAL_PREFIX) for k in keys):
            return cls("conditional")
        for k in keys:
            if not (k.startswith(CAUSAL_PREFIX) or k.startswith("lm_head.")):
                raise ValueError(f"{source}: key {PEFT_PREFIX + k!r} is not under a Gemma 4 model "
                                 "(expected base_model.model.model.* or base_model.model.lm_head.*)")
        if any(is_multimodal_key(k) for k in keys):
            return cls("conditional")  # only multimodal parts adapted: refused later as empty for the text model
        return cls("causal")

    def auto_mapping(self) -> dict:
        """PEFT's auto_mapping entry for a task-less adapter made on this class."""
        return {"base_model_class": self.transformers_class, "parent_library": TRANSFORMERS_LIBRARY}

    @staticmethod
    def known_classes() -> list[str]:
        return sorted(_TRANSFORMERS_CLASSES.values())


def map_checkpoint_key(key: str) -> str | None:
    """Checkpoint tensor name (either layout) -> our state_dict name; None for multimodal tensors to skip."""
    if is_multimodal_key(key):
        return None
    if key.startswith(CONDITIONAL_PREFIX):
        return Layout("conditional").from_hf(key)
    return key  # model.* and lm_head.weight are already our names; anything else is reported unexpected


def shared_kv_unused_pattern(shared_layers: Iterable[int]) -> re.Pattern:
    """Our names of the unused K/V tensors Google's uploads carry for the given KV-shared layers."""
    shared = [str(i) for i in shared_layers]
    if not shared:
        return re.compile(r"(?!)")  # matches nothing
    return re.compile(r"model\.layers\.(%s)\.self_attn\.(%s)\.(weight|bias)$" % ("|".join(shared),
                                                                              "|".join(SHARED_KV_UNUSED)))
