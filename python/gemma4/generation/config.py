"""GenerationConfig with transformers 5.17's field names, defaults and file format.

As in transformers 5.17, every field defaults to None ("unset"); `generate` fills unset fields first from
the model's generation config (generation_config.json, or the model config's special tokens), then from
the global defaults below. `from_pretrained(dir)` reads `dir/generation_config.json`; `save_pretrained`
writes only the fields that differ from a fresh GenerationConfig(), as transformers does.
"""
from __future__ import annotations

import copy
import json
import os
from numbers import Integral, Real
from typing import Any

from gemma4.errors import ArgumentError, ArgumentTypeError

__all__ = ["GenerationConfig", "GENERATION_CONFIG_NAME"]

GENERATION_CONFIG_NAME = "generation_config.json"

# transformers 5.17 GenerationConfig.__init__ fields, in its order (all default to None).
_FIELDS = (
    # length
    "max_length", "max_new_tokens", "min_length", "min_new_tokens", "early_stopping", "max_time", "stop_strings",
    # strategy
    "do_sample", "num_beams", "use_mtp",
    # cache
    "use_cache", "cache_implementation", "cache_config", "max_cache_len",
    # logits manipulation
    "temperature", "top_k", "top_p", "min_p", "top_h", "typical_p", "epsilon_cutoff", "eta_cutoff",
    "repetition_penalty", "encoder_repetition_penalty", "length_penalty", "no_repeat_ngram_size", "bad_words_ids",
    "renormalize_logits", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens", "sequence_bias",
    "token_healing", "guidance_scale", "watermarking_config",
    # outputs
    "num_return_sequences", "output_attentions", "output_hidden_states", "output_scores", "output_logits",
    "return_dict_in_generate",
    # special tokens
    "pad_token_id", "bos_token_id", "eos_token_id",
    # encoder-decoder
    "encoder_no_repeat_ngram_size", "decoder_start_token_id",
    # assistant generation
    "is_assistant", "num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold",
    "prompt_lookup_num_tokens", "max_matching_ngram_size", "assistant_early_exit", "assistant_lookbehind",
    "target_lookbehind", "assistant_ensemble_weight", "speculation_type",
    # performance
    "compile_config", "disable_compile", "continuous_batching_config",
    # deprecated upstream
    "low_memory", "penalty_alpha", "dola_layers", "diversity_penalty", "num_beam_groups", "constraints",
    "force_words_ids",
    "prefill_chunk_size",
)
_METADATA = ("_from_model_config", "transformers_version")

# transformers 5.17 GenerationConfig._get_default_generation_params(): applied when unset by both the
# user and the model's generation config.
_GLOBAL_DEFAULTS: dict[str, Any] = {
    "max_length": 20, "min_length": 0, "do_sample": False, "use_cache": True, "early_stopping": False,
    "num_beams": 1, "temperature": 1.0, "top_k": 50, "top_p": 1.0, "typical_p": 1.0, "repetition_penalty": 1.0,
    "length_penalty": 1.0, "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None,
    "num_return_sequences": 1, "output_scores": False, "return_dict_in_generate": False,
    "forced_bos_token_id": None, "forced_eos_token_id": None, "remove_invalid_values": False,
    "exponential_decay_length_penalty": None, "suppress_tokens": None, "begin_suppress_tokens": None,
    "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "encoder_repetition_penalty": 1.0, "num_assistant_tokens": 20,
    "num_assistant_tokens_schedule": "constant", "assistant_confidence_threshold": 0.4, "assistant_lookbehind": 10,
    "target_lookbehind": 10, "num_beam_groups": 1, "diversity_penalty": 0.0,
}

_EXTRA_OUTPUT_FLAGS = ("output_attentions", "output_hidden_states", "output_scores", "output_logits")


def _check_int(name: str, value: Any, low: int) -> None:
    """None, or an int >= low (bool is not an int here)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ArgumentTypeError(f"`{name}` must be an integer >= {low}, but is {value!r} ({type(value).__name__})")
    if value < low:
        raise ArgumentError(f"`{name}` must be an integer >= {low}, but is {value}")


def _check_id_list(name: str, value: Any) -> None:
    """None, a token id, or a non-empty list (or 1-D tensor) of token ids."""
    if value is None:
        return
    if hasattr(value, "tolist") and not isinstance(value, (list, tuple)):  # a tensor or array
        value = value.tolist()
    ids = value if isinstance(value, (list, tuple)) else [value]
    if not ids:
        raise ArgumentError(f"`{name}` is an empty list: give a token id, a non-empty list of them, or None")
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, Integral):
            raise ArgumentTypeError(f"`{name}` must hold integer token ids, but is {value!r}")
        if i < 0:
            raise ArgumentError(f"`{name}` holds {i}: token ids are >= 0")


class GenerationConfig:
    """Parameters of `generate` (transformers' names). Unknown keyword arguments become attributes."""

    def __init__(self, **kwargs: Any):
        for name in _FIELDS:
            setattr(self, name, kwargs.pop(name, None))
        self._from_model_config = kwargs.pop("_from_model_config", None)
        self.transformers_version = kwargs.pop("transformers_version", None)
        kwargs.pop("_commit_hash", None)
        if not self._from_model_config:
            for key, value in kwargs.items():  # custom entries, kept as attributes (as transformers)
                setattr(self, key, value)
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ArgumentError (a ValueError; ArgumentTypeError, also a TypeError, for a wrong type) naming the
        field, for values that can never work: transformers' eager checks plus the type and range of every
        length, count and special-token id generate reads."""
        if self.early_stopping not in (None, True, False, "never"):
            raise ArgumentError(f"`early_stopping` must be a boolean or 'never', but is {self.early_stopping}.")
        if self.max_new_tokens is not None:
            _check_int("max_new_tokens", self.max_new_tokens, 1)
        for name in ("max_length", "min_length", "min_new_tokens", "no_repeat_ngram_size"):
            _check_int(name, getattr(self, name), 0)
        for name in ("num_return_sequences", "prefill_chunk_size"):
            _check_int(name, getattr(self, name), 1)
        if self.max_time is not None and (isinstance(self.max_time, bool) or not isinstance(self.max_time, Real)
                                          or not self.max_time > 0):
            raise ArgumentError(f"`max_time` must be a positive number of seconds, but is {self.max_time!r}")
        for name in ("temperature", "top_p", "min_p", "repetition_penalty"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, Real)):
                raise ArgumentTypeError(f"`{name}` must be a number, but is {value!r}")
        if self.temperature is not None and self.do_sample and not self.temperature > 0:
            raise ArgumentError(f"`temperature` (={self.temperature}) has to be a strictly positive float; for greedy "
                                "decoding set `do_sample=False`.")
        if self.top_p is not None and not 0.0 <= float(self.top_p) <= 1.0:
            raise ArgumentError(f"`top_p` has to be a float >= 0 and <= 1, but is {self.top_p}")
        if self.min_p is not None and not 0.0 <= float(self.min_p) <= 1.0:
            raise ArgumentError(f"`min_p` has to be a float in the [0, 1] interval, but is {self.min_p}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, Integral)
                                       or self.top_k < 0):
            raise ArgumentError(f"`top_k` has to be a non-negative integer, but is {self.top_k}")
        if self.repetition_penalty is not None and not self.repetition_penalty > 0:
            raise ArgumentError(f"`repetition_penalty` has to be a strictly positive float, but is "
                                f"{self.repetition_penalty}")
        for name in ("pad_token_id", "bos_token_id", "forced_bos_token_id", "decoder_start_token_id"):
            _check_int(name, getattr(self, name), 0)
        for name in ("eos_token_id", "forced_eos_token_id"):
            _check_id_list(name, getattr(self, name))

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _get_default_generation_params() -> dict[str, Any]:
        return dict(_GLOBAL_DEFAULTS)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> "GenerationConfig":
        return_unused_kwargs = kwargs.pop("return_unused_kwargs", False)
        config = cls(**{**config_dict, **kwargs})
        unused = config.update(**kwargs)
        return (config, unused) if return_unused_kwargs else config

    @classmethod
    def from_pretrained(cls, pretrained_model_name: str | os.PathLike, config_file_name: str | None = None,
                        **kwargs: Any) -> "GenerationConfig":
        """Read `generation_config.json` from a local directory (or the file itself); kwargs override fields."""
        path = os.fspath(pretrained_model_name)
        file = path if os.path.isfile(path) else os.path.join(path, config_file_name or GENERATION_CONFIG_NAME)
        if not os.path.isfile(file):
            raise OSError(f"{path}: no {config_file_name or GENERATION_CONFIG_NAME} (only local directories are "
                          "supported)")
        try:
            with open(file, encoding="utf-8") as f:
                config_dict = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise OSError(f"{file} is not a valid JSON file ({e})") from None
        if not isinstance(config_dict, dict):
            raise OSError(f"{file}: expected a JSON object, found {type(config_dict).__name__}")
        try:
            if kwargs.pop("_from_model_config", False):
                return cls.from_model_config(config_dict)
            return cls.from_dict(config_dict, **kwargs)
        except ArgumentError as e:
            raise type(e)(f"{file}: {e}") from None

    @classmethod
    def from_model_config(cls, model_config: Any) -> "GenerationConfig":
        """The generation parameters present in a model config (a Gemma4Config or a config.json dict):
        for Gemma 4 that is bos/eos/pad token ids (read from text_config when the top level lacks them)."""
        if isinstance(model_config, dict):
            d = dict(model_config)
            text = d.get("text_config") or {}
        else:
            d = {name: getattr(model_config, name) for name in ("bos_token_id", "eos_token_id", "pad_token_id")
                 if hasattr(model_config, name)}
            text = {}
        d.pop("_from_model_config", None)
        d = {k: v for k, v in d.items() if v is not None and k in _FIELDS}
        for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if k not in d and text.get(k) is not None:
                d[k] = text[k]
        config = cls(**d, _from_model_config=True)
        if not config.return_dict_in_generate and any(getattr(config, f) for f in _EXTRA_OUTPUT_FLAGS):
            config.return_dict_in_generate = True
        return config

    @classmethod
    def for_model_config(cls, model_config: Any) -> "GenerationConfig":
        """What a model loaded from a checkpoint directory uses: its generation_config.json when the
        directory has one (the directory is where `model_config` was read from), else from_model_config."""
        source = getattr(model_config, "__dict__", {}).get("_source")
        if isinstance(source, str) and source and not source.startswith("<"):
            directory = source if os.path.isdir(source) else os.path.dirname(source)
            if os.path.isfile(os.path.join(directory, GENERATION_CONFIG_NAME)):
                return cls.from_pretrained(directory)
        return cls.from_model_config(model_config)

    # ------------------------------------------------------------------ updates and serialisation
    def update(self, defaults_only: bool = False, allow_custom_entries: bool = False, **kwargs: Any) -> dict:
        """Set the attributes named in kwargs (only unset ones when defaults_only); returns the unused kwargs."""
        used = []
        before = dict(self.__dict__)  # a failed update leaves the config as it was
        for key, value in kwargs.items():
            if allow_custom_entries and not hasattr(self, key):
                setattr(self, key, value)
                used.append(key)
            elif hasattr(self, key) and not key.startswith("_"):
                if not defaults_only or getattr(self, key) is None:
                    setattr(self, key, value)
                    used.append(key)
        try:
            self.validate()
        except ArgumentError:
            self.__dict__.clear()
            self.__dict__.update(before)
            raise
        return {k: v for k, v in kwargs.items() if k not in used}

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(dict(self.__dict__))

    def to_diff_dict(self) -> dict[str, Any]:
        default = GenerationConfig().to_dict()
        return {k: v for k, v in self.to_dict().items()
                if k not in default or k == "transformers_version" or v != default[k]}

    def to_json_string(self, use_diff: bool = True, ignore_metadata: bool = False) -> str:
        d = self.to_diff_dict() if use_diff else self.to_dict()
        if ignore_metadata:
            for k in _METADATA:
                d.pop(k, None)
        return json.dumps(d, indent=2, sort_keys=True, default=str) + "\n"

    def to_json_file(self, json_file_path: str | os.PathLike, use_diff: bool = True) -> None:
        with open(json_file_path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string(use_diff=use_diff))

    def save_pretrained(self, save_directory: str | os.PathLike, config_file_name: str | None = None) -> None:
        if os.path.isfile(save_directory):
            raise AssertionError(f"Provided path ({save_directory}) should be a directory, not a file")
        os.makedirs(save_directory, exist_ok=True)
        self.to_json_file(os.path.join(save_directory, config_file_name or GENERATION_CONFIG_NAME))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GenerationConfig):
            return NotImplemented
        return self.to_json_string(use_diff=False, ignore_metadata=True) == \
            other.to_json_string(use_diff=False, ignore_metadata=True)

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string(ignore_metadata=True)}"
