"""LoraConfig: PEFT 0.21's LoRA configuration, same field names and defaults, same adapter_config.json.

Every field PEFT writes is accepted, so any adapter_config.json that PEFT 0.21 saves reads back. What this
package cannot honour is refused by `check_supported` with a message naming the field, never ignored:
DoRA, LoRA biases, fan_in_fan_out, the other LoRA variants, base-mutating initialisations, and so on.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any, Optional, Union

from gemma4.errors import AdapterConfigError, AdapterNotFoundError
from gemma4.hf_format.config_json import read_json_object

__all__ = ["LoraConfig", "ADAPTER_CONFIG_NAME", "PEFT_FORMAT_VERSION"]

ADAPTER_CONFIG_NAME = "adapter_config.json"
PEFT_FORMAT_VERSION = "0.21.0"  # the PEFT release whose on-disk format this package reads and writes

# init_lora_weights values that only decide how a fresh adapter starts (a saved adapter loads the same whatever
# the value was), and those that rewrite the base weights or change the forward, so an adapter trained with
# them does not apply to the unmodified base model.
_INIT_HARMLESS_ON_LOAD = (True, False, "gaussian", "eva", "orthogonal")
_INIT_FOR_CREATION = (True, False, "gaussian")


@dataclass
class LoraConfig:
    """LoRA configuration with PEFT's field names and defaults (peft.LoraConfig, 0.21).

    The fields that matter here:
        r (int, 8), lora_alpha (int, 8): rank and alpha; scaling = lora_alpha / r, or lora_alpha / sqrt(r)
            with use_rslora=True.
        target_modules (list of names | regex str | "all-linear" | None): modules to adapt. A list entry
            matches a module whose full name equals it or ends with "." + it; a string is a regex that must
            match the full module name (re.fullmatch) -- PEFT's rules.
        exclude_modules (list | regex str | None): same rules, removes matches.
        target_parameters (list of str | None): nn.Parameters to adapt directly, e.g.
            ["experts.gate_up_proj", "experts.down_proj"] for the 3-D MoE expert banks (PEFT's ParamWrapper).
        rank_pattern / alpha_pattern (dict regex -> int): per-module r / alpha; a key applies to a module
            whose name matches `(.*\\.)?(key)$`; the first matching key wins.
        layers_to_transform (int | list[int] | None), layers_pattern (str | list | None): restrict to layers.
        lora_dropout (float, 0.0): dropout on the LoRA input (training mode only).
        modules_to_save (list[str] | None): modules trained fully and saved whole (a copy per adapter);
            a module matches when its full name ends with the entry (plain string suffix, as PEFT).
        init_lora_weights (True | False | "gaussian"): how add_adapter starts A (B is zero unless False).
        inference_mode (bool): written as true by save, as PEFT does.
    Unsupported settings raise ValueError from `check_supported` (called by add_adapter/load_adapter).
    """

    task_type: Optional[str] = None
    peft_type: Optional[str] = "LORA"
    auto_mapping: Optional[dict] = None
    peft_version: Optional[str] = None
    base_model_name_or_path: Optional[str] = None
    revision: Optional[str] = None
    inference_mode: bool = False
    r: int = 8
    target_modules: Optional[Union[list[str], str]] = None
    exclude_modules: Optional[Union[list[str], str]] = None
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    fan_in_fan_out: bool = False
    bias: str = "none"
    use_rslora: bool = False
    modules_to_save: Optional[list[str]] = None
    init_lora_weights: Union[bool, str] = True
    layers_to_transform: Optional[Union[list[int], int]] = None
    layers_pattern: Optional[Union[list[str], str]] = None
    rank_pattern: Optional[dict] = field(default_factory=dict)
    alpha_pattern: Optional[dict] = field(default_factory=dict)
    megatron_config: Optional[dict] = None
    megatron_core: Optional[str] = "megatron.core"
    trainable_token_indices: Optional[Union[list[int], dict]] = None
    loftq_config: Union[dict, Any] = field(default_factory=dict)
    eva_config: Optional[Any] = None
    corda_config: Optional[Any] = None
    lora_ga_config: Optional[Any] = None
    use_dora: bool = False
    velora_config: Optional[Any] = None
    alora_invocation_tokens: Optional[list[int]] = None
    use_qalora: bool = False
    qalora_group_size: int = 16
    monteclora_config: Optional[Any] = None
    layer_replication: Optional[list] = None
    lora_bias: bool = False
    target_parameters: Optional[list[str]] = None
    use_bdlora: Optional[Any] = None
    arrow_config: Optional[Any] = None
    kasa_config: Optional[Any] = None
    ensure_weight_tying: bool = False

    def __post_init__(self):
        # peft's PeftType/TaskType are str enums: keep their values
        self.peft_type = getattr(self.peft_type, "value", self.peft_type)
        self.task_type = getattr(self.task_type, "value", self.task_type)
        if self.peft_type is not None and str(self.peft_type).upper() != "LORA":
            raise ValueError(f"adapter_config.json: peft_type {self.peft_type!r} is not LoRA; only LoRA adapters "
                             "are supported")
        self.peft_type = "LORA"
        if isinstance(self.target_modules, (set, tuple)):
            self.target_modules = sorted(self.target_modules)
        if isinstance(self.exclude_modules, (set, tuple)):
            self.exclude_modules = sorted(self.exclude_modules)
        if isinstance(self.target_parameters, str):
            raise TypeError("LoraConfig: `target_parameters` must be a list of strings or None.")
        if isinstance(self.target_parameters, (set, tuple)):
            self.target_parameters = list(self.target_parameters)
        if isinstance(self.modules_to_save, (set, tuple)):
            self.modules_to_save = list(self.modules_to_save)
        self.rank_pattern = dict(self.rank_pattern or {})
        self.alpha_pattern = dict(self.alpha_pattern or {})
        # PEFT's own consistency checks (config.py __post_init__), with its messages.
        if isinstance(self.target_modules, str) and self.layers_to_transform is not None:
            raise ValueError("`layers_to_transform` cannot be used when `target_modules` is a str.")
        if isinstance(self.target_modules, str) and self.layers_pattern is not None:
            raise ValueError("`layers_pattern` cannot be used when `target_modules` is a str.")
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError("When `layers_pattern` is specified, `layers_to_transform` must also be specified. ")

    # ---- types and forms of the values ----
    @property
    def source(self) -> str:
        """Where this config came from: the adapter_config.json path, or "LoraConfig"."""
        return self.__dict__.get("_source") or "LoraConfig"

    def validate(self) -> None:
        """Raise AdapterConfigError (a ValueError) naming the source and the key of the first value of the wrong
        type or form: numbers, booleans, lists of names, and every pattern that is used as a regex."""
        def bad(key: str, message: str):
            raise AdapterConfigError(message, self.source, key)

        def is_int(v) -> bool:
            return isinstance(v, Integral) and not isinstance(v, bool)

        def is_number(v) -> bool:
            return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)

        def regex(key: str, pattern: str) -> None:
            try:
                re.compile(pattern)
            except re.error as e:
                bad(key, f"{pattern!r} is not a valid regular expression ({e})")

        def names(key: str, value, allow_regex: bool) -> None:
            if value is None:
                return
            if isinstance(value, str):
                if not allow_regex:
                    bad(key, f"expected a list of names, got the string {value!r}")
                if value.lower() != "all-linear":
                    regex(key, value)
                return
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                bad(key, f"expected {'a regex string or ' if allow_regex else ''}a list of names, got {value!r}")

        if not is_int(self.r) or self.r <= 0:
            bad("r", f"the rank must be a positive integer, got {self.r!r}")
        if not is_number(self.lora_alpha):
            bad("lora_alpha", f"expected a number, got {self.lora_alpha!r}")
        if not is_number(self.lora_dropout) or not 0.0 <= self.lora_dropout < 1.0:
            bad("lora_dropout", f"expected a probability in [0, 1), got {self.lora_dropout!r}")
        for key in ("use_rslora", "inference_mode", "use_dora", "fan_in_fan_out", "lora_bias", "use_qalora"):
            if not isinstance(getattr(self, key), bool):
                bad(key, f"expected true or false, got {getattr(self, key)!r}")
        names("target_modules", self.target_modules, allow_regex=True)
        names("exclude_modules", self.exclude_modules, allow_regex=True)
        names("target_parameters", self.target_parameters, allow_regex=False)
        names("modules_to_save", self.modules_to_save, allow_regex=False)
        for i, m in enumerate(self.modules_to_save or []):
            regex(f"modules_to_save[{i}]", m)  # PEFT matches the entries as regex fragments
        layers = self.layers_to_transform
        if layers is not None and not is_int(layers) and not (isinstance(layers, list) and all(map(is_int, layers))):
            bad("layers_to_transform", f"expected a layer index or a list of them, got {layers!r}")
        pattern = self.layers_pattern
        if pattern is not None:
            patterns = [pattern] if isinstance(pattern, str) else pattern
            if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
                bad("layers_pattern", f"expected a name or a list of names, got {pattern!r}")
            for p in patterns:
                regex("layers_pattern", p)
        for key, check, what in (("rank_pattern", lambda v: is_int(v) and v > 0, "a positive integer rank"),
                                 ("alpha_pattern", is_number, "a number")):
            for k, v in getattr(self, key).items():
                if not isinstance(k, str):
                    bad(key, f"keys are module-name patterns (strings), got {k!r}")
                regex(f"{key}.{k}", k)
                if not check(v):
                    bad(f"{key}.{k}", f"expected {what}, got {v!r}")
        if not isinstance(self.init_lora_weights, (bool, str)):
            bad("init_lora_weights", f"expected true, false or a method name, got {self.init_lora_weights!r}")

    # ---- what this package can honour ----
    def check_supported(self, for_creation: bool = False) -> None:
        """Raise ValueError naming the first setting this package cannot honour (after `validate`).

        for_creation: add_adapter (a fresh adapter) also needs an initialisation it can perform.
        """
        def refuse(name: str, why: str) -> None:
            raise ValueError(f"{self.source}: {name}={getattr(self, name)!r} is not supported by gemma4: {why}")

        self.validate()
        if self.use_dora:
            refuse("use_dora", "DoRA (weight-decomposed LoRA) is not implemented")
        if self.bias != "none":
            refuse("bias", "only bias='none' is supported (the Gemma 4 linears have no biases)")
        if self.lora_bias:
            refuse("lora_bias", "LoRA biases on lora_B are not implemented")
        if self.fan_in_fan_out:
            refuse("fan_in_fan_out", "Gemma 4 has nn.Linear layers ([out, in] weights); fan_in_fan_out is for "
                                     "GPT-2-style Conv1D")
        if self.megatron_config:
            refuse("megatron_config", "Megatron tensor-parallel LoRA layers are not implemented")
        if self.trainable_token_indices is not None:
            refuse("trainable_token_indices", "trainable token embeddings are not implemented")
        if self.layer_replication:
            refuse("layer_replication", "layer replication is not implemented")
        if self.alora_invocation_tokens is not None:
            refuse("alora_invocation_tokens", "activated LoRA (aLoRA) is not implemented")
        if self.use_qalora:
            refuse("use_qalora", "QA-LoRA is not implemented")
        for name in ("velora_config", "monteclora_config", "use_bdlora", "arrow_config", "kasa_config"):
            if getattr(self, name):
                refuse(name, "this LoRA variant changes the forward pass and is not implemented")
        init = self.init_lora_weights
        if isinstance(init, str) and init.lower() == "mica":
            refuse("init_lora_weights", "MiCA is a LoRA variant with its own forward; not implemented")
        if init not in _INIT_HARMLESS_ON_LOAD:
            refuse("init_lora_weights", "this initialisation rewrites the base weights (PiSSA, OLoRA, CorDA, "
                                        "LoftQ, LoRA-GA), so the adapter does not apply to the unmodified base "
                                        "model; convert it to a plain LoRA with PEFT "
                                        "(save_pretrained(path_initial_model_for_weight_conversion=...)) first")
        if for_creation and init not in _INIT_FOR_CREATION:
            refuse("init_lora_weights", "add_adapter creates adapters with init_lora_weights True (A "
                                        "kaiming-uniform, B zero), 'gaussian' or False only")
        if self.target_parameters and self.lora_dropout:
            refuse("lora_dropout", "LoRA on parameters (target_parameters) cannot apply dropout: the update is "
                                   "folded into the weight (PEFT refuses it too)")

    # ---- (de)serialisation, as PEFT ----
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, set):
                d[k] = sorted(v)
        return d

    def save_pretrained(self, save_directory: str | os.PathLike, **extra: Any) -> None:
        """Write adapter_config.json (sorted keys, indent 2, as PEFT; inference_mode written as true)."""
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise ValueError(f"Provided path ({save_directory}) should be a directory, not a file")
        os.makedirs(save_directory, exist_ok=True)
        d = self.to_dict()
        d["inference_mode"] = True
        if d.get("peft_version") is None:
            d["peft_version"] = PEFT_FORMAT_VERSION
        d.update(extra)
        with open(os.path.join(save_directory, ADAPTER_CONFIG_NAME), "w", encoding="utf-8") as f:
            f.write(json.dumps(d, indent=2, sort_keys=True))

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "adapter config") -> "LoraConfig":
        """Build from an adapter_config.json dict. Keys this PEFT version does not know are accepted only when
        they hold an empty/false value (a newer PEFT's unused option); otherwise they are refused, because
        their meaning is unknown here."""
        if not isinstance(d, dict):
            raise AdapterConfigError(f"expected a JSON object, found a {type(d).__name__}", source)
        d = copy.deepcopy(dict(d))
        d.pop("runtime_config", None)  # PEFT drops it too: runtime-only
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = {k: v for k, v in d.items() if k not in names}
        for k, v in unknown.items():
            if v not in (None, False, 0, "", [], {}):
                raise AdapterConfigError(f"unknown LoRA option (not in PEFT 0.21's LoraConfig), set to {v!r}; "
                                         "refusing an adapter whose meaning is unknown", source, k)
        if unknown:
            warnings.warn(f"{source}: ignoring unknown empty options {sorted(unknown)}")
        try:
            config = cls(**{k: v for k, v in d.items() if k in names})
        except (TypeError, ValueError, AttributeError) as e:  # __post_init__'s checks
            if isinstance(e, AdapterConfigError):
                raise
            raise AdapterConfigError(str(e), source) from None
        config.__dict__["_source"] = source
        return config

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "LoraConfig":
        """Read <path>/adapter_config.json (or the file itself). A missing file is AdapterNotFoundError (a
        FileNotFoundError), an unreadable one or a bad value AdapterConfigError naming the file (and key)."""
        path = os.fspath(path)
        file = path if os.path.isfile(path) else os.path.join(path, ADAPTER_CONFIG_NAME)
        return cls.from_dict(read_json_object(file, AdapterConfigError, AdapterNotFoundError), source=file)

    # ---- PEFT's per-module rank/alpha rule (utils.other.get_pattern_key) ----
    def rank_and_alpha(self, key: str) -> tuple[int, float]:
        """r and lora_alpha of the module/parameter with this full (PEFT-side) name."""
        r = self.rank_pattern.get(_pattern_key(self.rank_pattern, key), self.r)
        alpha = self.alpha_pattern.get(_pattern_key(self.alpha_pattern, key), self.lora_alpha)
        return r, alpha


def _pattern_key(patterns: dict, key: str) -> str:
    for pattern in patterns:
        if re.match(rf"(.*\.)?({pattern})$", key):
            return pattern
    return key
