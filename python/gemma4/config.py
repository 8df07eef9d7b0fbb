"""Gemma 4 text config: the dataclass of hyper-parameters and one derived LayerSpec per layer.

`Gemma4Config` holds the text decoder's hyper-parameters with transformers' names and class
defaults (gemma4-architecture.md, table 1.1), validates them, and derives `config.layers`: a frozen
`LayerSpec` per layer with everything the modules need (head size, KV heads, KV sharing and its
source layer, MLP width, PLE/MoE, RoPE). The model builds its modules from these specs; forward
code never computes `layer_idx % 6`.

Reading and writing config.json (the nested "gemma4" and flat "gemma4_text" forms, per_layer_config
and the legacy fields) lives in gemma4.hf_format.config_json; `from_dict`, `from_pretrained` and
`to_dict` here call it. Anything invalid raises `gemma4.errors.ConfigError` naming the file and key.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from dataclasses import InitVar, dataclass
from typing import Any

import torch

from .devices import DTYPE_NAMES
from .errors import ConfigError, ConfigNotFoundError
from .rope_scaling import REQUIRED_KEYS, ROPE_TYPES, rope_frequencies, rope_inv_freq  # noqa: F401 (re-exported)
from .hf_format.config_json import (FULL_ATTENTION, MAX_LAYERS, SLIDING_ATTENTION, TEXT_TYPES, config_kwargs,
                                    config_to_dict, is_int, per_layer_config, read_json_object, resolve_layer_types)

__all__ = [
    "Gemma4Config",
    "LayerSpec",
    "SLIDING_ATTENTION",
    "FULL_ATTENTION",
    "DEFAULT_ROPE_PARAMETERS",
    "rope_inv_freq",
]


# gemma4-architecture.md 1.3: what transformers fills in when `rope_parameters` is absent.
DEFAULT_ROPE_PARAMETERS: dict[str, dict[str, Any]] = {
    SLIDING_ATTENTION: {"rope_type": "default", "rope_theta": 10_000.0},
    FULL_ATTENTION: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0},
}

# Upper bounds, far above every released Gemma 4 (E2B..31B: <= 60 layers, hidden 5376, vocab 262144):
# a config beyond them is a typo or an attack, refused before anything is built (a 10**8-layer
# config would otherwise take minutes and gigabytes just to derive its layer list).
MAX_SIZES = {
    "num_hidden_layers": MAX_LAYERS, "num_attention_heads": 1024, "num_key_value_heads": 1024,
    "num_global_key_value_heads": 1024, "num_experts": 4096, "top_k_experts": 4096,
    "head_dim": 512, "global_head_dim": 512,  # the attention kernels' limit (csrc/attention/attention_checks.h)
    "hidden_size": 2**17, "intermediate_size": 2**20, "moe_intermediate_size": 2**20,
    "hidden_size_per_layer_input": 2**14, "vocab_size": 2**24, "vocab_size_per_layer_input": 2**24,
    "sliding_window": 2**24, "max_position_embeddings": 2**28,
}

# transformers activation name -> the name our gated_activation / moe_experts ops take.
ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_tanh", "silu": "silu"}


@dataclass(frozen=True)
class LayerSpec:
    """Everything one decoder layer's modules need, derived once from the config.

    window: the `sliding_window` transformers' attention receives for this layer (keys visible
        including the query itself, causal), 0 for full layers. With
        `use_bidirectional_attention == "all"` it is `sliding_window // 2 + 1` (transformers
        converts the window to exclusive bounds for a symmetric window; the config keeps the file's
        value).
    head_dim / num_kv_heads: `head_dim` / `num_key_value_heads` on sliding layers; on full layers
        `global_head_dim`, and `num_global_key_value_heads` when `attention_k_eq_v` (if set).
    k_eq_v: full layer of an `attention_k_eq_v` model: no v_proj; V = v_norm(raw k_proj output)
        (transformers' `use_alternative_attention`; also true on KV-shared full layers, which have
        no K/V projections at all).
    kv_shared / kv_source: the layer computes no K/V and reads those published by layer
        `kv_source` (the last non-shared layer of the same type; transformers'
        `is_kv_shared_layer`, `i >= L - num_kv_shared_layers >= 0`); kv_source is None otherwise.
    stores_shared_kv: some KV-shared layer reads this layer's (full-length, post-cache) K/V.
        (transformers' `store_full_length_kv` is also true on the last layer of each type when no
        shared layer reads it; that flag is harmless there and is not reproduced.)
    cache_index: slot of this layer in a KV cache that holds only layers owning K/V (None for
        KV-shared layers).
    intermediate_size: dense MLP width, 2*I on KV-shared layers of `use_double_wide_mlp` models
        (transformers' MLP tests `i >= L - S > 0`, attention `>= 0`; both are reproduced, they
        differ only for S == L, which is rejected).
    rope_*: effective RoPE parameters of the layer's type ("default" ignores the partial factor
        and factor, as transformers does, so they read 1.0 there); rope_parameters holds the type's
        whole entry (as sorted items) and max_position_embeddings the model's, which "dynamic" and
        "yarn" read (gemma4.rope_scaling).
    """

    index: int
    layer_type: str
    is_sliding: bool
    window: int
    num_heads: int
    head_dim: int
    num_kv_heads: int
    k_eq_v: bool
    kv_shared: bool
    kv_source: int | None
    stores_shared_kv: bool
    cache_index: int | None
    intermediate_size: int
    has_ple: bool
    has_moe: bool
    rope_type: str
    rope_theta: float
    partial_rotary_factor: float
    rope_factor: float
    rope_parameters: tuple[tuple[str, Any], ...]
    max_position_embeddings: int

    @property
    def num_kv_groups(self) -> int:
        """Query heads per KV head (query head h reads KV head h // num_kv_groups)."""
        return self.num_heads // self.num_kv_heads

    @property
    def kv_layer(self) -> int:
        """The layer whose K/V this layer attends to (itself unless KV-shared)."""
        return self.kv_source if self.kv_shared else self.index

    @property
    def rotary_dims(self) -> int:
        """Number of rotated dims of the head (pairs (j, j + head_dim/2) with non-zero frequency, x2)."""
        if self.rope_type == "proportional":
            return 2 * int(self.partial_rotary_factor * self.head_dim // 2)
        return 2 * (int(self.head_dim * self.partial_rotary_factor) // 2)

    def rope_frequencies(self, seq_len: int | torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
        """(inv_freq float32 [head_dim // 2] on CPU, cos/sin scaling), as transformers' rotary buffers for
        this type; seq_len: the length "dynamic" stretches to (None: max_position_embeddings)."""
        return rope_frequencies(dict(self.rope_parameters), self.head_dim, self.max_position_embeddings, seq_len)

    def rope_inv_freq(self) -> torch.Tensor:
        """float32 [head_dim // 2] on CPU, bit-identical to transformers' rotary buffer for this type."""
        return self.rope_frequencies()[0]


_FIELD_NAMES: frozenset[str] = frozenset()  # filled after the class body


@dataclass(eq=True)
class Gemma4Config:
    """Gemma 4 text-decoder config (transformers' Gemma4TextConfig fields and class defaults).

    The class defaults match no released model (they are transformers' placeholder 2304-wide
    model); use `gemma4.presets.get_preset` or `Gemma4Config.from_pretrained`. Fields may be
    edited; `layers` is re-derived (and re-validated) on the next access.
    """

    vocab_size: int = 262_144
    hidden_size: int = 2304
    intermediate_size: int = 9216
    num_hidden_layers: int = 30
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    head_dim: int = 256
    global_head_dim: int = 512
    num_global_key_value_heads: int | None = None
    attention_k_eq_v: bool = False
    hidden_activation: str = "gelu_pytorch_tanh"
    max_position_embeddings: int = 131_072
    rms_norm_eps: float = 1e-6
    pad_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 1
    bos_token_id: int | None = 2
    tie_word_embeddings: bool = True
    rope_parameters: dict[str, dict[str, Any]] | None = None
    attention_bias: bool = False
    attention_dropout: float = 0.0
    sliding_window: int = 512
    layer_types: list[str] | None = None
    final_logit_softcapping: float | None = None
    use_bidirectional_attention: str | None = None
    vocab_size_per_layer_input: int = 262_144
    hidden_size_per_layer_input: int = 256
    num_kv_shared_layers: int = 0
    use_double_wide_mlp: bool = False
    enable_moe_block: bool = False
    num_experts: int | None = None
    top_k_experts: int | None = None
    moe_intermediate_size: int | None = None
    initializer_range: float = 0.02
    use_cache: bool = True
    dtype: str | None = None
    # "gemma4_text", or "gemma4_unified_text" for Gemma 4 12B ("Unified"): the same decoder block with
    # no PLE and no MoE; it decides the class config.json names when saved (docs/variants.md)
    model_type: str = "gemma4_text"
    source: InitVar[str | None] = None

    # ------------------------------------------------------------------ construction
    def __post_init__(self, source: str | None):
        object.__setattr__(self, "_source", source or "<config>")
        self._normalize()
        self._derive()

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name in _FIELD_NAMES:
            self.__dict__.pop("_layers", None)  # re-derived (and re-validated) on next access

    def _error(self, key: str | None, message: str) -> ConfigError:
        return ConfigError(message, self.__dict__.get("_source", "<config>"), key)

    def _normalize(self) -> None:
        """Copy mutable inputs, coerce JSON numbers, fill transformers' post-init defaults."""
        d = self.__dict__
        for name in ("rms_norm_eps", "attention_dropout", "initializer_range"):
            if isinstance(d[name], int) and not isinstance(d[name], bool):
                d[name] = float(d[name])
        if isinstance(d["final_logit_softcapping"], int) and not isinstance(d["final_logit_softcapping"], bool):
            d["final_logit_softcapping"] = float(d["final_logit_softcapping"])
        if isinstance(d["eos_token_id"], tuple):
            d["eos_token_id"] = list(d["eos_token_id"])
        if isinstance(d["dtype"], torch.dtype):
            d["dtype"] = str(d["dtype"]).removeprefix("torch.")
        d["layer_types"] = resolve_layer_types(d["layer_types"], d["num_hidden_layers"], self._source, "layer_types")
        if d["rope_parameters"] is None:
            d["rope_parameters"] = copy.deepcopy(DEFAULT_ROPE_PARAMETERS)
        elif isinstance(d["rope_parameters"], dict):
            d["rope_parameters"] = copy.deepcopy(d["rope_parameters"])

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> "Gemma4Config":
        """Build from a config.json dict (nested "gemma4" or flat "gemma4_text" form).

        Raises ConfigError naming `source` and the key for anything that is not a Gemma 4 text
        config. Unknown keys (transformers bookkeeping, vision/audio configs) are ignored.
        """
        kwargs, prefix = config_kwargs(d, [f.name for f in dataclasses.fields(cls)], source)
        try:
            return cls(**kwargs, source=source)
        except ConfigError as e:  # name the key where the file has it (text_config.X in the nested form)
            if prefix and e.key:
                raise ConfigError(e.detail, source, prefix + e.key) from None
            raise

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "Gemma4Config":
        path = os.fspath(path)
        return cls.from_dict(read_json_object(path), source=path)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides: Any) -> "Gemma4Config":
        """Read `path/config.json` (or `path` itself if it is a file); keyword arguments override fields."""
        path = os.fspath(path)
        if os.path.isdir(path):
            file = os.path.join(path, "config.json")
            if not os.path.isfile(file):
                raise ConfigNotFoundError("directory has no config.json", path)
        elif os.path.isfile(path):
            file = path
        else:
            raise ConfigNotFoundError("no such file or directory", path)
        config = cls.from_json_file(file)
        if overrides:
            unknown = sorted(set(overrides) - _FIELD_NAMES)
            if unknown:
                raise TypeError(f"unknown Gemma4Config field(s): {', '.join(unknown)}")
            config = dataclasses.replace(config, **overrides, source=file)
        return config

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """The flat `gemma4_text` config.json form (see gemma4.hf_format.config_json.config_to_dict)."""
        return config_to_dict(self)

    def per_layer_config(self) -> dict[str, dict[str, int]]:
        """Full-layer overrides in transformers 5.17's serialised `per_layer_config` form."""
        return per_layer_config(self)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, directory: str | os.PathLike) -> str:
        """Write `directory/config.json` (flat gemma4_text form); returns the file path."""
        directory = os.fspath(directory)
        if os.path.isfile(directory):
            raise ConfigError("save_pretrained expects a directory, this is a file", directory)
        os.makedirs(directory, exist_ok=True)
        file = os.path.join(directory, "config.json")
        with open(file, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())
        return file

    # ------------------------------------------------------------------ derived
    @property
    def layers(self) -> list[LayerSpec]:
        """One LayerSpec per decoder layer (validated; re-derived after a field changes)."""
        layers = self.__dict__.get("_layers")
        if layers is None:
            layers = self._derive()
        return layers

    @property
    def num_kv_layers(self) -> int:
        """Layers that compute (and cache) their own K/V: L - num_kv_shared_layers."""
        return sum(not spec.kv_shared for spec in self.layers)

    @property
    def first_kv_shared_layer(self) -> int | None:
        """Index of the first KV-shared layer, or None."""
        return next((spec.index for spec in self.layers if spec.kv_shared), None)

    @property
    def is_causal(self) -> bool:
        """False only for use_bidirectional_attention == "all" (transformers' is_causal)."""
        return self.use_bidirectional_attention != "all"

    @property
    def has_ple(self) -> bool:
        return self.hidden_size_per_layer_input > 0

    @property
    def activation_op(self) -> str:
        """Activation name for gemma4.ops.gated_activation / moe_experts ("gelu_tanh" or "silu")."""
        return ACTIVATIONS[self.hidden_activation]

    @property
    def torch_dtype(self) -> torch.dtype | None:
        """`dtype` as a torch.dtype (None when the config names none)."""
        return None if self.dtype is None else getattr(torch, self.dtype)

    def rope_frequencies(self, layer_type: str, seq_len: int | torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
        """(float32 [head_dim_of_type // 2] on CPU, cos/sin scaling) = transformers' `{layer_type}_inv_freq`
        buffer and `{layer_type}_attention_scaling`; seq_len: the length a "dynamic" type stretches to."""
        for spec in self.layers:
            if spec.layer_type == layer_type:
                return spec.rope_frequencies(seq_len)
        raise KeyError(f"no layer of type {layer_type!r} (layer_types holds {sorted(set(self.layer_types))})")

    def rope_inv_freq(self, layer_type: str) -> torch.Tensor:
        """float32 [head_dim_of_type // 2] (CPU) = transformers' `{layer_type}_inv_freq` buffer."""
        return self.rope_frequencies(layer_type)[0]

    def _derive(self) -> list[LayerSpec]:
        self._validate()
        L, S = self.num_hidden_layers, self.num_kv_shared_layers
        first_shared = L - S
        types = self.layer_types
        # The last non-shared layer of each type publishes its K/V for the shared layers.
        source_of: dict[str, int] = {}
        for i in range(max(first_shared, 0)):
            source_of[types[i]] = i
        readers: set[int] = set()
        specs: list[LayerSpec] = []
        cache_slots = 0
        for i, t in enumerate(types):
            sliding = t == SLIDING_ATTENTION
            attn_shared = i >= first_shared >= 0  # transformers' Gemma4TextAttention
            mlp_shared = i >= first_shared > 0  # transformers' Gemma4TextMLP
            kv_source = source_of[t] if attn_shared else None
            if kv_source is not None:
                readers.add(kv_source)
            rope = self.rope_parameters[t]
            rope_type = rope["rope_type"]
            scaled = rope_type != "default"  # "default" ignores partial_rotary_factor and factor
            num_kv = self.num_key_value_heads
            if not sliding and self.attention_k_eq_v and self.num_global_key_value_heads is not None:
                num_kv = self.num_global_key_value_heads
            specs.append(dict(
                index=i,
                layer_type=t,
                is_sliding=sliding,
                window=(self.effective_sliding_window if sliding else 0),
                num_heads=self.num_attention_heads,
                head_dim=self.head_dim if sliding else self.global_head_dim,
                num_kv_heads=num_kv,
                k_eq_v=self.attention_k_eq_v and not sliding,
                kv_shared=attn_shared,
                kv_source=kv_source,
                cache_index=None if attn_shared else cache_slots,
                intermediate_size=self.intermediate_size * (2 if self.use_double_wide_mlp and mlp_shared else 1),
                has_ple=self.hidden_size_per_layer_input > 0,
                has_moe=self.enable_moe_block,
                rope_type=rope_type,
                rope_theta=float(rope["rope_theta"]),
                partial_rotary_factor=float(rope.get("partial_rotary_factor") or 1.0) if scaled else 1.0,
                rope_factor=float(rope.get("factor") or 1.0) if scaled else 1.0,
                rope_parameters=tuple(sorted(rope.items())),
                max_position_embeddings=self.max_position_embeddings,
            ))
            if not attn_shared:
                cache_slots += 1
        layers = [LayerSpec(stores_shared_kv=s["index"] in readers, **s) for s in specs]
        self.__dict__["_layers"] = layers
        return layers

    @property
    def effective_sliding_window(self) -> int:
        """Window sliding layers use: sliding_window, or sliding_window // 2 + 1 for bidirectional "all"."""
        if self.use_bidirectional_attention == "all":
            return self.sliding_window // 2 + 1
        return self.sliding_window

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        err = self._error
        d = self.__dict__

        def need_int(name, minimum, optional=False):
            v = d[name]
            if v is None and optional:
                return
            if not is_int(v):
                raise err(name, f"must be an integer{' or null' if optional else ''}, got {v!r}")
            if v < minimum:
                raise err(name, f"must be >= {minimum}, got {v}")
            if name in MAX_SIZES and v > MAX_SIZES[name]:
                raise err(name, f"{v} is larger than gemma4 supports ({MAX_SIZES[name]}){_why_max(name)}")

        def need_bool(name):
            if not isinstance(d[name], bool):
                raise err(name, f"must be true or false, got {d[name]!r}")

        if d["model_type"] not in TEXT_TYPES:
            raise err("model_type", f"must be one of {', '.join(TEXT_TYPES)}, got {d['model_type']!r}")
        if d["model_type"] == "gemma4_unified_text" and (d["hidden_size_per_layer_input"] or d["enable_moe_block"]):
            raise err("hidden_size_per_layer_input" if d["hidden_size_per_layer_input"] else "enable_moe_block",
                      "a gemma4_unified_text model has no per-layer embeddings and no MoE block")

        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "global_head_dim", "sliding_window",
                     "max_position_embeddings"):
            need_int(name, 1)
        for name in ("hidden_size_per_layer_input", "num_kv_shared_layers", "vocab_size_per_layer_input"):
            need_int(name, 0)
        for name in ("num_global_key_value_heads", "num_experts", "top_k_experts", "moe_intermediate_size"):
            need_int(name, 1, optional=True)
        for name in ("pad_token_id", "bos_token_id"):
            need_int(name, 0, optional=True)
        eos = d["eos_token_id"]
        if not (eos is None or (is_int(eos) and eos >= 0)
                or (isinstance(eos, list) and eos and all(is_int(x) and x >= 0 for x in eos))):
            raise err("eos_token_id", f"must be a token id, a non-empty list of token ids, or null; got {eos!r}")
        for name in ("attention_k_eq_v", "tie_word_embeddings", "attention_bias", "use_double_wide_mlp",
                     "enable_moe_block", "use_cache"):
            need_bool(name)
        for name, lo in (("rms_norm_eps", 0.0), ("initializer_range", None), ("attention_dropout", None)):
            v = d[name]
            if not _is_number(v) or not math.isfinite(v) or v < 0 or (lo is not None and v <= lo):
                raise err(name, f"must be a {'positive' if lo is not None else 'non-negative'} number, got {v!r}")
        if d["attention_dropout"] >= 1:
            raise err("attention_dropout", f"must be < 1, got {d['attention_dropout']}")
        cap = d["final_logit_softcapping"]
        if cap is not None and (not _is_number(cap) or not cap > 0 or not math.isfinite(cap)):
            raise err("final_logit_softcapping", f"must be a positive finite number or null, got {cap!r}")
        if d["hidden_activation"] not in ACTIVATIONS:
            raise err("hidden_activation", f"{d['hidden_activation']!r} is not supported "
                      f"(supported: {', '.join(ACTIVATIONS)})")
        if d["use_bidirectional_attention"] not in (None, "vision", "all"):
            raise err("use_bidirectional_attention",
                      f"must be null, 'vision' or 'all', got {d['use_bidirectional_attention']!r}")
        if d["dtype"] is not None and d["dtype"] not in DTYPE_NAMES:
            raise err("dtype", f"must be one of {', '.join(DTYPE_NAMES)} (or null), got {d['dtype']!r}")
        for name in ("pad_token_id", "bos_token_id"):
            if d[name] is not None and d[name] >= d["vocab_size"]:
                raise err(name, f"{d[name]} is not a token id: vocab_size is {d['vocab_size']}")

        L = d["num_hidden_layers"]
        types = resolve_layer_types(d["layer_types"], L, self._source, "layer_types")
        if types is not d["layer_types"]:  # edited after construction: keep the normalised list
            d["layer_types"] = types

        nh, nkv = d["num_attention_heads"], d["num_key_value_heads"]
        if nh % nkv:
            raise err("num_key_value_heads", f"{nkv} does not divide num_attention_heads {nh}")
        ngkv = d["num_global_key_value_heads"]
        if d["attention_k_eq_v"] and ngkv is not None and nh % ngkv:
            raise err("num_global_key_value_heads", f"{ngkv} does not divide num_attention_heads {nh}")
        for name in ("head_dim", "global_head_dim"):
            if d[name] % 2:
                raise err(name, f"must be even (RoPE rotates pairs), got {d[name]}")
        if d["hidden_size_per_layer_input"] > 0 and d["vocab_size_per_layer_input"] < 1:
            raise err("vocab_size_per_layer_input", "must be >= 1 when hidden_size_per_layer_input > 0")

        S = d["num_kv_shared_layers"]
        if S >= L:
            raise err("num_kv_shared_layers", f"{S} must be smaller than num_hidden_layers {L} "
                      "(at least one layer has to compute K/V)")
        owners = set(types[: L - S])
        for t in sorted(set(types[L - S:]) - owners):
            raise err("num_kv_shared_layers", f"the last {S} layers share K/V, but no earlier layer of type "
                      f"{t!r} computes K/V for them (layer_types[:{L - S}] has none)")

        if d["enable_moe_block"]:
            for name in ("num_experts", "top_k_experts", "moe_intermediate_size"):
                if d[name] is None:
                    raise err(name, "required when enable_moe_block is true")
            if d["top_k_experts"] > d["num_experts"]:
                raise err("top_k_experts", f"{d['top_k_experts']} exceeds num_experts {d['num_experts']}")

        rope = d["rope_parameters"]
        if not isinstance(rope, dict):
            raise err("rope_parameters", f"must be an object keyed by layer type, got {rope!r}")
        for t in sorted(set(types)):
            p = rope.get(t)
            key = f"rope_parameters.{t}"
            if not isinstance(p, dict):
                raise err(key, "missing (rope_parameters needs an entry for every layer type in layer_types)"
                          if p is None else f"must be an object, got {p!r}")
            if p.get("rope_type") not in ROPE_TYPES:
                raise err(key + ".rope_type", f"{p.get('rope_type')!r} is not supported (supported: "
                          f"{', '.join(ROPE_TYPES)})")
            theta = p.get("rope_theta")
            if not _is_number(theta) or not theta > 0:
                raise err(key + ".rope_theta", f"must be a positive number, got {theta!r}")
            prf = p.get("partial_rotary_factor", 1.0)
            if prf is not None and (not _is_number(prf) or not 0 < prf <= 1):
                raise err(key + ".partial_rotary_factor", f"must be in (0, 1], got {prf!r}")
            if prf is None:
                p["partial_rotary_factor"] = 1.0
            for name in REQUIRED_KEYS.get(p["rope_type"], ()):
                if name not in p:
                    raise err(f"{key}.{name}", f"required by rope_type {p['rope_type']!r} (it needs "
                              f"{', '.join(REQUIRED_KEYS[p['rope_type']])})")
            fac = p.get("factor", 1.0)
            if not (fac is None and p["rope_type"] == "yarn") and (not _is_number(fac) or not fac > 0):
                raise err(key + ".factor", f"must be a positive number, got {fac!r}")
            for name in ("original_max_position_embeddings",):
                if name in p and not (is_int(p[name]) and p[name] > 0):
                    raise err(f"{key}.{name}", f"must be a positive integer, got {p[name]!r}")
            for name in ("attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
                         "low_freq_factor", "high_freq_factor"):
                if p.get(name) is not None and not (_is_number(p[name]) and p[name] >= 0):
                    raise err(f"{key}.{name}", f"must be a non-negative number, got {p[name]!r}")
            if p["rope_type"] == "llama3" and not p["high_freq_factor"] > p["low_freq_factor"]:
                raise err(key + ".high_freq_factor", f"must exceed low_freq_factor ({p['low_freq_factor']}), "
                          f"got {p['high_freq_factor']}")
            hd = d["global_head_dim"] if t == FULL_ATTENTION and d.get("global_head_dim") else d["head_dim"]
            if p["rope_type"] == "dynamic" and int(p.get("partial_rotary_factor", 1.0) * hd) <= 2:
                raise err(key + ".partial_rotary_factor", "dynamic needs at least 4 rotated dims")


_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(Gemma4Config))


def _why_max(name: str) -> str:
    return "; the attention kernels support head sizes up to 512" if name.endswith("head_dim") else ""


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
