"""GGUF files (llama.cpp) as llama.cpp's converter writes Gemma 4: open one, and its metadata -> Gemma4Config.

What convert_hf_to_gguf.py's Gemma4Model writes (architecture "gemma4", keys prefixed "gemma4."), and
the config field each gives back:

  block_count, context_length, embedding_length         num_hidden_layers, max_position_embeddings, hidden_size
  feed_forward_length (scalar, or per layer when         intermediate_size, use_double_wide_mlp (KV-shared
    use_double_wide_mlp: doubled on KV-shared layers)      layers twice as wide)
  attention.head_count / head_count_kv (scalar, or per   num_attention_heads, num_key_value_heads and
    layer: sliding value / full value)                     num_global_key_value_heads
  attention.key_length(_swa) = value_length(_swa)        global_head_dim (full layers), head_dim (sliding)
  attention.sliding_window, sliding_window_pattern       sliding_window, layer_types (True = sliding)
  attention.shared_kv_layers                             num_kv_shared_layers
  attention.layer_norm_rms_epsilon                       rms_norm_eps
  rope.freq_base / freq_base_swa                         rope_theta of full / sliding layers
  rope.dimension_count(_swa)                             full: global_head_dim (the partial rotation is in
                                                           rope_freqs), sliding: head_dim
  final_logit_softcapping (absent: none)                 final_logit_softcapping
  embedding_length_per_layer_input                       hidden_size_per_layer_input (0: no PLE)
  expert_count, expert_used_count,                       enable_moe_block, num_experts, top_k_experts,
    expert_feed_forward_length                             moe_intermediate_size
  tokenizer.ggml.tokens / bos / eos / padding ids        vocab_size, bos/eos/pad_token_id

and from the tensors: `rope_freqs` [global_head_dim / 2] is 1 on the rotated frequency pairs and 1e30
on the rest (llama.cpp's way to run "proportional" RoPE), so partial_rotary_factor = 2 * ones /
global_head_dim; full layers with attn_k but no attn_v mean attention_k_eq_v; no `output` tensor means
tied embeddings; `per_layer_token_embd`'s rows give vocab_size_per_layer_input. hidden_activation is
not written (Gemma 4 has only gelu_pytorch_tanh). Floats are stored as float32 and read back as the
shortest decimal that rounds to it (1e-06, not 9.99999997e-07).

A missing or inconsistent key is one CheckpointError naming the file and the key; the file is read
with the `gguf` package's memory-mapping reader (no pickle, nothing executed).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import CheckpointError

__all__ = ["GGUFFile", "gguf_config"]

ARCH = "gemma4"


class GGUFFile:
    """An opened GGUF file: metadata values by key, tensors by name (gguf.ReaderTensor)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            from ..errors import CheckpointNotFoundError  # noqa: PLC0415

            raise CheckpointNotFoundError("no such GGUF file", self.path)
        try:
            import gguf  # noqa: PLC0415

            reader = gguf.GGUFReader(self.path, "r")
        except ImportError:
            raise ImportError("loading GGUF files needs the `gguf` package (pip install gguf)") from None
        except Exception as e:  # the reader raises ValueError, struct.error, ... on a corrupt file
            raise CheckpointError(f"not a readable GGUF file ({type(e).__name__}: {e})", self.path) from None
        self.reader = reader
        self.fields = reader.fields
        self.tensors = {t.name: t for t in reader.tensors}

    def error(self, message: str, key: str) -> CheckpointError:
        return CheckpointError(message, self.path, key)

    def get(self, key: str, default: Any = None) -> Any:
        field = self.fields.get(key)
        if field is None:
            return default
        try:
            return field.contents()
        except Exception as e:
            raise self.error(f"unreadable value ({e})", key) from None

    def require(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise self.error("missing (llama.cpp's Gemma 4 converter writes it)", key)
        return value

    def shape(self, name: str) -> tuple[int, ...]:
        """The tensor's logical (PyTorch, row-major) shape: GGUF lists dimensions innermost first."""
        return tuple(int(n) for n in reversed(self.tensors[name].shape))


def _decimal(value: float) -> float:
    """A float32 metadata value as the shortest decimal that rounds to it."""
    return float(str(np.float32(value)))  # numpy prints the shortest round-tripping decimal


def _int(f: GGUFFile, key: str, value: Any = None) -> int:
    value = f.require(key) if value is None else value
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise f.error(f"expected an integer, got {value!r:.80}", key)
    return int(value)


def _per_layer(f: GGUFFile, key: str, n_layers: int) -> list[int]:
    """A key llama.cpp writes as one integer or one per layer -> the per-layer list."""
    value = f.require(key)
    if isinstance(value, list):
        if len(value) != n_layers:
            raise f.error(f"has {len(value)} entries for {n_layers} layers", key)
        return [_int(f, key, v) for v in value]
    return [_int(f, key, value)] * n_layers


def _by_type(f: GGUFFile, key: str, values: list[int], sliding: list[bool]) -> tuple[int, int | None]:
    """(sliding-layer value, full-layer value) of a per-layer key; one value per layer type."""
    seen = {}
    for v, s in zip(values, sliding):
        if seen.setdefault(s, v) != v:
            raise f.error(f"differs between layers of one type ({seen[s]} and {v}); Gemma 4 has one value per "
                          "layer type", key)
    return seen.get(True, seen.get(False)), seen.get(False)


def _partial_rotary_factor(f: GGUFFile, global_head_dim: int) -> float:
    """rope_freqs [global_head_dim / 2]: ones for the rotated frequency pairs, then 1e30 (not rotated)."""
    if "rope_freqs.weight" not in f.tensors:
        raise f.error("missing: the full layers' proportional RoPE needs it", "rope_freqs.weight")
    t = f.tensors["rope_freqs.weight"]
    values = np.asarray(t.data, dtype=np.float32).reshape(-1)  # [global_head_dim / 2]
    n_rot = int((values == 1.0).sum())
    ok = (values.size == global_head_dim // 2 and (values[:n_rot] == 1.0).all() and (values[n_rot:] >= 1e29).all()
          and n_rot > 0)
    if not ok:
        raise f.error(f"expected {global_head_dim // 2} factors, ones then 1e30 (proportional RoPE), got "
                      f"{values.size} values {values[:4].tolist()}...", "rope_freqs.weight")
    return 2 * n_rot / global_head_dim


def gguf_config(f: GGUFFile):
    """The Gemma4Config of an opened GGUF file (dtype left unset: the loader decides)."""
    from ..config import Gemma4Config  # noqa: PLC0415

    arch = f.require("general.architecture")
    if arch != ARCH:
        raise f.error(f"is {arch!r}; gemma4 loads Gemma 4 text models (architecture 'gemma4')",
                      "general.architecture")
    k = lambda name: f"{ARCH}.{name}"  # noqa: E731
    n = _int(f, k("block_count"))
    if not 0 < n <= 1024:
        raise f.error(f"{n} layers is out of range", k("block_count"))
    pattern = f.require(k("attention.sliding_window_pattern"))
    if not isinstance(pattern, list) or len(pattern) != n or not all(isinstance(v, bool) for v in pattern):
        raise f.error(f"expected {n} booleans (True = sliding-window layer)", k("attention.sliding_window_pattern"))
    layer_types = ["sliding_attention" if s else "full_attention" for s in pattern]
    shared = _int(f, k("attention.shared_kv_layers"))

    heads = _by_type(f, k("attention.head_count"), _per_layer(f, k("attention.head_count"), n), pattern)
    if heads[1] is not None and heads[0] != heads[1]:
        raise f.error(f"sliding layers have {heads[0]} heads, full layers {heads[1]}; Gemma 4 has one count",
                      k("attention.head_count"))
    kv_swa, kv_full = _by_type(f, k("attention.head_count_kv"), _per_layer(f, k("attention.head_count_kv"), n),
                               pattern)
    head_dim, global_head_dim = _int(f, k("attention.key_length_swa")), _int(f, k("attention.key_length"))
    for suffix, want in (("_swa", head_dim), ("", global_head_dim)):
        if _int(f, k("attention.value_length" + suffix)) != want:
            raise f.error(f"differs from key_length{suffix} ({want})", k("attention.value_length" + suffix))
    if _int(f, k("rope.dimension_count_swa"), f.get(k("rope.dimension_count_swa"), head_dim)) != head_dim:
        raise f.error(f"partial rotation of sliding layers is not Gemma 4's (expected {head_dim})",
                      k("rope.dimension_count_swa"))
    if f.get(k("rope.scaling.type"), "none") not in ("none",):
        raise f.error("RoPE scaling is not part of Gemma 4's GGUF export", k("rope.scaling.type"))

    ff = _per_layer(f, k("feed_forward_length"), n)
    first_shared = n - shared
    double = ff != [ff[0]] * n
    if double and ff != [ff[0] if i < first_shared else 2 * ff[0] for i in range(n)]:
        raise f.error(f"{ff}: per-layer widths must be one width, doubled on the {shared} KV-shared layers "
                      "(use_double_wide_mlp)", k("feed_forward_length"))

    tokens = f.require("tokenizer.ggml.tokens")
    vocab = len(tokens)
    embd = f.shape("token_embd.weight") if "token_embd.weight" in f.tensors else None
    hidden = _int(f, k("embedding_length"))
    if embd != (vocab, hidden):
        raise f.error(f"shape {embd} differs from [{vocab} tokens, embedding_length {hidden}]", "token_embd.weight")
    ple = _int(f, k("embedding_length_per_layer_input"), f.get(k("embedding_length_per_layer_input"), 0))
    ple_vocab = f.shape("per_layer_token_embd.weight")[0] if ple and "per_layer_token_embd.weight" in f.tensors \
        else vocab
    experts = f.get(k("expert_count"))
    moe = {}
    if experts:
        moe = {"enable_moe_block": True, "num_experts": _int(f, k("expert_count")),
               "top_k_experts": _int(f, k("expert_used_count")),
               "moe_intermediate_size": _int(f, k("expert_feed_forward_length"))}
    k_eq_v = any(t == "full_attention" and i < first_shared and f"blk.{i}.attn_k.weight" in f.tensors
                 and f"blk.{i}.attn_v.weight" not in f.tensors for i, t in enumerate(layer_types))
    if kv_full is not None and kv_full != kv_swa and not k_eq_v:
        raise f.error(f"full layers have {kv_full} KV heads, sliding {kv_swa}: Gemma 4 has a separate full-layer "
                      "count only with attention_k_eq_v (full layers without attn_v)", k("attention.head_count_kv"))
    softcap = f.get(k("final_logit_softcapping"))
    rope = {"sliding_attention": {"rope_type": "default", "rope_theta": _decimal(f.require(k("rope.freq_base_swa")))},
            "full_attention": {"rope_type": "proportional",
                               "partial_rotary_factor": _partial_rotary_factor(f, global_head_dim),
                               "rope_theta": _decimal(f.require(k("rope.freq_base")))}}
    kwargs = dict(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=ff[0], num_hidden_layers=n,
        num_attention_heads=heads[0], num_key_value_heads=kv_swa, head_dim=head_dim, global_head_dim=global_head_dim,
        num_global_key_value_heads=kv_full if kv_full is not None and kv_full != kv_swa else None,
        attention_k_eq_v=k_eq_v, max_position_embeddings=_int(f, k("context_length")),
        rms_norm_eps=_decimal(f.require(k("attention.layer_norm_rms_epsilon"))),
        tie_word_embeddings="output.weight" not in f.tensors, rope_parameters=rope,
        sliding_window=_int(f, k("attention.sliding_window")), layer_types=layer_types,
        final_logit_softcapping=None if softcap is None else _decimal(softcap),
        vocab_size_per_layer_input=ple_vocab, hidden_size_per_layer_input=ple, num_kv_shared_layers=shared,
        use_double_wide_mlp=double, **moe)
    for key, name in (("bos_token_id", "bos"), ("eos_token_id", "eos"), ("pad_token_id", "padding")):
        value = f.get(f"tokenizer.ggml.{name}_token_id")
        if value is not None:
            kwargs[key] = _int(f, f"tokenizer.ggml.{name}_token_id", value)
    try:
        return Gemma4Config(**kwargs, source=f.path)
    except (ValueError, TypeError) as e:
        key = getattr(e, "key", None)
        raise f.error(f"gives an invalid config: {getattr(e, 'detail', e)}", key or "general.architecture") from None
