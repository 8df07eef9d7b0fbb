"""Gemma4TextModel and Gemma4ForCausalLM, with transformers' module and parameter names."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from gemma4.lora.adapters import AdapterMixin

from .decoder import Gemma4DecoderLayer
from .embedding import Gemma4ScaledEmbedding
from .init import init_weights_
from .inputs import check_token_ids
from .linear import Linear
from .loss import DEFAULT_CHUNK_SIZE, IGNORE_INDEX, chunked_causal_lm_loss, shift_labels, soft_cap
from .norm import Gemma4RMSNorm


@dataclass
class CausalLMOutput:
    """What forward returns: .logits [B,T,V], .loss when labels were given, .past_key_values."""
    logits: torch.Tensor
    loss: torch.Tensor | None = None
    past_key_values: object | None = None

    def __getitem__(self, key):
        if isinstance(key, str):
            return getattr(self, key)
        return tuple(v for v in (self.loss, self.logits, self.past_key_values) if v is not None)[key]


class Gemma4TextModel(nn.Module):
    """Embeddings (+ PLE), the decoder stack and the final norm. Built from config.layers specs."""

    def __init__(self, config):
        super().__init__()
        if not config.is_causal:
            raise NotImplementedError("use_bidirectional_attention='all' (bidirectional encoders) is not supported")
        self.config = config
        H = config.hidden_size
        self.embed_tokens = Gemma4ScaledEmbedding(config.vocab_size, H, config.pad_token_id, embed_scale=H**0.5)
        self.layers = nn.ModuleList(Gemma4DecoderLayer(config, spec) for spec in config.layers)
        self.norm = Gemma4RMSNorm(H, eps=config.rms_norm_eps)
        self.ple_width = config.hidden_size_per_layer_input
        if self.ple_width:
            L, P = config.num_hidden_layers, self.ple_width
            self.embed_tokens_per_layer = Gemma4ScaledEmbedding(
                config.vocab_size_per_layer_input, L * P, config.pad_token_id, embed_scale=P**0.5)
            self.per_layer_model_projection = Linear(H, L * P, bias=False)
            self.per_layer_projection_norm = Gemma4RMSNorm(P, eps=config.rms_norm_eps)
            self.per_layer_model_projection_scale = H**-0.5  # Python floats on model-dtype tensors, as upstream
            self.per_layer_input_scale = 2.0**-0.5
        self.layer_types = sorted({spec.layer_type for spec in config.layers})
        self.gradient_checkpointing = False
        self.init_non_persistent_buffers()

    def init_non_persistent_buffers(self) -> None:
        """RoPE inverse frequencies (per layer type) and embedding scales: derived, never in checkpoints."""
        device = self.embed_tokens.weight.device
        for layer_type in self.layer_types:
            inv_freq = self.config.rope_inv_freq(layer_type).to(device=device, dtype=torch.float32)
            self.register_buffer(f"{layer_type}_inv_freq", inv_freq, persistent=False)
        # "dynamic" RoPE: the longest sequence its current frequencies were stretched to (transformers'
        # max_seq_len_cached per layer type); starts at max_position_embeddings, i.e. unstretched
        self._dynamic_rope_len = {spec.layer_type: self.config.max_position_embeddings
                                  for spec in self.config.layers if spec.rope_type == "dynamic"}
        self.embed_tokens.reset_embed_scale()
        if self.ple_width:
            self.embed_tokens_per_layer.reset_embed_scale()

    def _apply(self, fn, recurse=True):
        # .to(bfloat16) must not round the RoPE frequencies: recompute derived buffers in fp32 after
        # every dtype/device move (this also re-materialises them after to_empty from meta).
        super()._apply(fn, recurse)
        self.init_non_persistent_buffers()
        return self

    def _update_dynamic_rope(self, position_ids: torch.Tensor) -> None:
        """transformers' dynamic_rope_update: a sequence longer than any before stretches the frequencies
        to its length; one back within max_position_embeddings restores the originals. (State across
        calls, as there: decoding past the length re-stretches at every step. One host sync per call.)"""
        original = self.config.max_position_embeddings
        seq_len = position_ids.max().cpu() + 1  # a tensor, so the frequencies use transformers' float32 maths
        for spec in {spec.layer_type: spec for spec in self.config.layers}.values():
            if spec.rope_type != "dynamic":
                continue
            t, cached = spec.layer_type, self._dynamic_rope_len[spec.layer_type]
            buffer = getattr(self, f"{t}_inv_freq")
            if seq_len > cached:
                buffer.copy_(spec.rope_frequencies(seq_len)[0])
                self._dynamic_rope_len[t] = int(seq_len)
            if seq_len < original and cached > original:
                buffer.copy_(spec.rope_frequencies()[0])
                self._dynamic_rope_len[t] = original

    def per_layer_inputs(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """PLE: (RMSNorm(proj(h0) * H^-1/2) + table[ids] * sqrt(P)) * 2^-1/2, as [B,T,L,P]."""
        B, T = input_ids.shape
        L, P = self.config.num_hidden_layers, self.ple_width
        token_part = self.embed_tokens_per_layer(input_ids).view(B, T, L, P)  # [B,T,L,P]
        context = self.per_layer_model_projection(inputs_embeds) * self.per_layer_model_projection_scale
        context = self.per_layer_projection_norm(context.view(B, T, L, P))  # [B,T,L,P]
        return (context + token_part) * self.per_layer_input_scale

    def _ids_from_embeds(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        # PLE needs token ids; like transformers, recover them by matching the scaled embedding rows.
        with torch.no_grad():
            table = self.embed_tokens.weight * self.config.hidden_size**0.5  # [V,H]
            match = (inputs_embeds[:, :, None, :] == table[None, None]).all(-1)  # [B,T,V]
            if not bool(match.any(-1).all()):
                raise ValueError("inputs_embeds must be exact rows of the scaled embedding when the model "
                                 "has per-layer embeddings (pass input_ids instead)")
            return match.int().argmax(-1)

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, position_ids=None,
                cache=None) -> torch.Tensor:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            check_token_ids(input_ids, self.config.vocab_size)  # ArgumentError naming the id
            inputs_embeds = self.embed_tokens(input_ids)  # [B,T,H]
        B, T, _ = inputs_embeds.shape
        ple = None
        if self.ple_width:
            ids = input_ids if input_ids is not None else self._ids_from_embeds(inputs_embeds)
            ple = self.per_layer_inputs(ids, inputs_embeds)  # [B,T,L,P]
        key_mask = None if attention_mask is None else attention_mask.to(torch.bool)  # [B,S]
        past = 0
        if cache is not None:
            # the cache records the new tokens' slots and padding; attention_mask may span past + new
            past = cache.begin(T, attention_mask, B, inputs_embeds.device)
            key_mask = cache.new_token_mask  # [B,T] or None
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=inputs_embeds.device)[None]  # [1,T]
        if self._dynamic_rope_len:
            self._update_dynamic_rope(position_ids)
        inv_freq = {t: getattr(self, f"{t}_inv_freq") for t in self.layer_types}
        # generate's decode steps: the C++ layers (modeling/decode_step.py) where they may run, else None
        session = getattr(cache, "decode_session", None) if T == 1 else None
        x = session.hidden(inputs_embeds, position_ids, ple) if session is not None else None
        if x is not None:
            return self.norm(x)
        shared_kv: dict = {}  # source layer index -> its full-length (K, V), for KV-shared layers
        x = inputs_embeds
        for i, layer in enumerate(self.layers):
            ple_i = ple[:, :, i] if ple is not None else None
            args = (x, position_ids, inv_freq[layer.spec.layer_type], key_mask, shared_kv, ple_i, cache)
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                # Non-reentrant checkpointing: a source layer's K/V published into shared_kv stay
                # in the graph, so KV-shared layers backpropagate into it as without checkpointing.
                x = checkpoint(layer, *args, use_reentrant=False)
            else:
                x = layer(*args)
        return self.norm(x)


class Gemma4ForCausalLM(AdapterMixin, nn.Module):
    """The Gemma 4 text decoder with its tied LM head and final logit soft-cap."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.model = Gemma4TextModel(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()
        self.init_weights()

    # ---- construction and loading ----
    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def init_non_persistent_buffers(self) -> None:
        self.model.init_non_persistent_buffers()

    def set_rope_parameters(self, rope_parameters: dict) -> None:
        """Switch a built model's RoPE (any type of docs/variants.md, per layer type), e.g. to extend the
        context with yarn: `model.set_rope_parameters({"sliding_attention": {...}, "full_attention": {...}})`.
        Validated first (ConfigError naming the key); a refused call changes nothing."""
        d = self.config.to_dict()
        d["rope_parameters"] = copy.deepcopy(rope_parameters)
        checked = type(self.config).from_dict(d, source="set_rope_parameters")
        self.config.rope_parameters = checked.rope_parameters  # re-derives config.layers
        for layer, spec in zip(self.model.layers, self.config.layers):
            layer.spec = layer.self_attn.spec = spec
            layer.self_attn.rope_scaling = spec.rope_frequencies()[1]
        self.model.init_non_persistent_buffers()

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """Fresh random weights as transformers initialises them (normal(0, std); norms and scales 1)."""
        if self.model.embed_tokens.weight.is_meta:
            return
        init_weights_(self, std)

    @classmethod
    def from_pretrained(cls, path, **kwargs) -> "Gemma4ForCausalLM":
        if kwargs.get("gguf_file") is not None:  # a llama.cpp GGUF file (gemma4.hf_format.gguf_tensors)
            from gemma4.hf_format.gguf_tensors import gguf_path, load_gguf  # noqa: PLC0415

            return load_gguf(cls, gguf_path(path, kwargs.pop("gguf_file")), **kwargs)
        kwargs.pop("gguf_file", None)
        from gemma4.quant.loading import load_pretrained_quantized  # noqa: PLC0415

        return load_pretrained_quantized(cls, path, **kwargs)

    @classmethod
    def from_config(cls, config) -> "Gemma4ForCausalLM":
        return cls(config)

    def save_pretrained(self, path, **kwargs) -> None:
        """Writes config.json + model.safetensors that transformers loads as Gemma4ForCausalLM."""
        from gemma4.checkpoint import save_pretrained  # noqa: PLC0415

        if self.peft_config:
            raise ValueError(f"the model carries LoRA adapters {sorted(self.peft_config)}: save them with "
                             "save_adapter(path), or the merged model with merge_and_unload().save_pretrained(path)")
        if getattr(self, "quantization_config", None) is None:
            return save_pretrained(self, path, **kwargs)
        from gemma4.quant import compressed_tensors  # noqa: PLC0415  (quantized: pack-quantized tensors)

        with compressed_tensors.compressed_tensors_state_dict(self):
            save_pretrained(self, path, **kwargs)
        compressed_tensors.write_quantization_config(self, path)

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    # ---- forward ----
    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None, position_ids=None,
                logits_to_keep: int = 0, cache=None, use_cache: bool | None = None,
                return_dict: bool | None = None, past_key_values=None) -> CausalLMOutput:
        """transformers' argument names; return_dict is accepted for compatibility (the result is always a
        CausalLMOutput). A cache is used when one is passed (`cache` or `past_key_values`, a
        gemma4.cache.Gemma4Cache); use_cache=True without one starts a new cache, returned as
        `.past_key_values`."""
        if cache is None:
            cache = past_key_values
        if cache is None and use_cache:
            from gemma4.cache import Gemma4Cache  # noqa: PLC0415

            cache = Gemma4Cache(self.config)
        hidden = self.model(input_ids, attention_mask, inputs_embeds, position_ids, cache)  # [B,T,H]
        cap = self.config.final_logit_softcapping
        if labels is not None and torch.is_grad_enabled():
            # Training: the loss goes through the head chunk by chunk and [tokens, V] logits are never
            # materialised (.logits is None). Same value and gradients as transformers' loss.
            loss = chunked_causal_lm_loss(hidden, self.lm_head, labels, cap, self.loss_chunk_size)
            return CausalLMOutput(logits=None, loss=loss, past_key_values=cache)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.head_logits(hidden)  # [B,T,V]
        loss = self.loss(logits, labels, self.loss_chunk_size) if labels is not None else None
        return CausalLMOutput(logits=logits, loss=loss, past_key_values=cache)

    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The head and its final soft-cap: hidden [..., H] (the text model's output) -> logits [..., V]."""
        return soft_cap(self.lm_head(hidden), self.config.final_logit_softcapping)

    # ---- generation (gemma4.generation) ----
    @property
    def generation_config(self):
        """GenerationConfig used by generate(): generation_config.json beside the checkpoint's config.json
        when there is one, else the model config's special tokens (as transformers)."""
        gc = self.__dict__.get("_generation_config")
        if gc is None:
            from gemma4.generation import GenerationConfig  # noqa: PLC0415

            gc = GenerationConfig.for_model_config(self.config)
            self.__dict__["_generation_config"] = gc
        return gc

    @generation_config.setter
    def generation_config(self, value) -> None:
        self.__dict__["_generation_config"] = value

    def generate(self, inputs=None, generation_config=None, **kwargs):
        """transformers-style generate (greedy / sampling, KV cache, streamers, stop strings); see
        gemma4.generation.generate and docs/generation.md."""
        from gemma4.generation import generate  # noqa: PLC0415

        return generate(self, inputs, generation_config=generation_config, **kwargs)

    @staticmethod
    @torch.no_grad()
    def loss(logits: torch.Tensor, labels: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
        """Next-token cross-entropy from computed logits [B,T,V] (no grad), in float32 one chunk of
        tokens at a time: shift by one, -100 ignored, mean - transformers' ForCausalLMLoss."""
        logits = logits.reshape(-1, logits.shape[-1])  # [N,V]
        targets = shift_labels(labels).reshape(-1).to(logits.device)  # [N]
        total = sum(F.cross_entropy(logits[i:i + chunk_size].float(), targets[i:i + chunk_size],
                                    ignore_index=IGNORE_INDEX, reduction="sum")
                    for i in range(0, logits.shape[0], chunk_size))
        return total / (targets != IGNORE_INDEX).sum()

    # ---- training ----
    loss_chunk_size = DEFAULT_CHUNK_SIZE  # tokens per chunk of the head + cross-entropy (modeling/loss.py)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute each decoder layer in backward instead of keeping its activations."""
        if gradient_checkpointing_kwargs and gradient_checkpointing_kwargs.get("use_reentrant", False):
            raise ValueError("only non-reentrant gradient checkpointing is supported (use_reentrant=False)")
        self.model.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.model.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.model.gradient_checkpointing
