"""generate(): greedy search and multinomial sampling over a Gemma4Cache, as transformers 5.17 does them.

The loop (`_decode`):

1. prefill: one forward over the whole (left-padded) prompt writes every layer's K/V into the cache and
   gives the first next-token logits;
2. each step: logits [B, V] -> float32 -> logits processors -> argmax or torch.multinomial over the
   softmax (same draws as transformers for the same seed and scores) -> finished rows get pad_token_id ->
   the token is written into a preallocated [B, max_length] sequence buffer -> stopping criteria (on the
   device) -> one host read of "is any row unfinished" -> a one-token forward (T = 1, fixed shapes) that
   reads the cache and never recomputes the prefix.

Positions follow transformers' generate: position_ids = cumsum(attention_mask) - 1 (0 on padding) for
the prompt, then the last position + 1 per row for every new token; the cache slots (and so the
sliding windows) count padded slots, as transformers' masks do.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, fields

import torch

from gemma4.cache import Gemma4Cache
from gemma4.devices import available_memory
from gemma4.errors import ArgumentError, ArgumentTypeError, Gemma4Error
from gemma4.modeling import decode_step
from gemma4.modeling.inputs import check_token_id, check_token_ids

from .config import GenerationConfig
from .greedy_head import SCORE_MAPS, greedy_head_for
from .logits_process import (EpsilonLogitsWarper, EtaLogitsWarper, ForcedBOSTokenLogitsProcessor,
                             ForcedEOSTokenLogitsProcessor, InfNanRemoveLogitsProcessor, LogitNormalization,
                             LogitsProcessorList, MinLengthLogitsProcessor, MinNewTokensLengthLogitsProcessor,
                             MinPLogitsWarper, NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor,
                             SuppressTokensAtBeginLogitsProcessor, SuppressTokensLogitsProcessor,
                             TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, TypicalLogitsWarper)
from .stopping import EosTokenCriteria, MaxLengthCriteria, MaxTimeCriteria, StopStringCriteria, StoppingCriteriaList

__all__ = ["generate", "GenerateDecoderOnlyOutput", "NonFiniteLogitsError"]


class NonFiniteLogitsError(Gemma4Error, FloatingPointError):
    """The model produced NaN or infinite logits during generate (non-finite weights, or an overflow)."""

_MODEL_KWARGS = {"attention_mask", "input_ids", "position_ids", "past_key_values", "cache"}

# GenerationConfig options that select features this package does not implement (value: "inactive" test).
_UNSUPPORTED = {
    "num_beams": lambda v: v in (None, 1),
    "num_beam_groups": lambda v: v in (None, 1),
    "penalty_alpha": lambda v: v is None,
    "dola_layers": lambda v: v is None,
    "constraints": lambda v: v is None,
    "force_words_ids": lambda v: v is None,
    "use_mtp": lambda v: not v,
    "prompt_lookup_num_tokens": lambda v: v is None,
    "assistant_early_exit": lambda v: v is None,
    "guidance_scale": lambda v: v is None or v == 1,
    "sequence_bias": lambda v: v is None,
    "bad_words_ids": lambda v: v is None,
    "top_h": lambda v: v is None,
    "exponential_decay_length_penalty": lambda v: v is None,
    "encoder_repetition_penalty": lambda v: v is None or v == 1.0,
    "encoder_no_repeat_ngram_size": lambda v: not v,
    "watermarking_config": lambda v: v is None,
    "token_healing": lambda v: not v,
    "output_attentions": lambda v: not v,
    "output_hidden_states": lambda v: not v,
}


@dataclass
class GenerateDecoderOnlyOutput:
    """What generate returns with return_dict_in_generate=True (transformers' field names).

    sequences [B, L]; scores / logits: tuples with one [B, V] float32 tensor per generated token
    (processed / raw), when output_scores / output_logits; past_key_values: the Gemma4Cache.
    attentions / hidden_states are always None (not supported).
    """
    sequences: torch.LongTensor
    scores: tuple | None = None
    logits: tuple | None = None
    attentions: tuple | None = None
    hidden_states: tuple | None = None
    past_key_values: Gemma4Cache | None = None

    def keys(self):
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, k) for k in self.keys())

    def __getitem__(self, key):
        if isinstance(key, str):
            if getattr(self, key, None) is None:
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __contains__(self, key) -> bool:
        return key in self.keys()


# ---------------------------------------------------------------------------------------------- preparation
def _prepare_generation_config(model, generation_config: GenerationConfig | None, kwargs: dict):
    """User kwargs > generation_config argument > model.generation_config > global defaults (transformers)."""
    model_gc = model.generation_config
    has_default_max_length = (kwargs.get("max_length") is None
                              and (generation_config is None or generation_config.max_length is None)
                              and model_gc.max_length is None)
    has_default_min_length = (kwargs.get("min_length") is None
                              and (generation_config is None or generation_config.min_length is None)
                              and model_gc.min_length is None)
    gc = copy.deepcopy(generation_config) if generation_config is not None else GenerationConfig()
    gc.update(**model_gc.to_dict(), defaults_only=True, allow_custom_entries=True)
    gc.update(**GenerationConfig._get_default_generation_params(), defaults_only=True)
    model_kwargs = gc.update(**kwargs)
    return gc, model_kwargs, has_default_max_length, has_default_min_length


def _check_supported(gc: GenerationConfig, model_kwargs: dict, extra: dict) -> None:
    for name, inactive in _UNSUPPORTED.items():
        if not inactive(getattr(gc, name, None)):
            raise NotImplementedError(f"generate: `{name}={getattr(gc, name)!r}` is not supported by gemma4 "
                                      "(greedy search and sampling only; see docs/generation.md)")
    for name, value in extra.items():
        if value is not None:
            raise NotImplementedError(f"generate: `{name}` is not supported by gemma4")
    if "inputs_embeds" in model_kwargs:
        raise NotImplementedError("generate: `inputs_embeds` is not supported; pass input_ids")
    unused = sorted(k for k in model_kwargs if k not in _MODEL_KWARGS)
    if unused:
        raise ValueError(f"The following `model_kwargs` are not used by the model: {unused} (note: typos in the "
                         "generate arguments will also show up in this list)")


def _as_eos_tensor(eos, device) -> torch.Tensor | None:
    if eos is None:
        return None
    t = eos.to(device) if isinstance(eos, torch.Tensor) else torch.tensor(eos, dtype=torch.long, device=device)
    return t.reshape(-1)


def _prepare_attention_mask(input_ids, pad: int | None, eos: torch.Tensor | None) -> torch.Tensor:
    """transformers' inference: padding = pad_token_id tokens, unless pad is also an EOS id."""
    ones = torch.ones(input_ids.shape[:2], dtype=torch.long, device=input_ids.device)
    if pad is None:
        return ones
    pad_in_inputs = bool((input_ids == pad).any())
    pad_is_eos = eos is not None and bool((eos == pad).any())
    if pad_in_inputs and not pad_is_eos:
        return input_ids.ne(pad).long()
    return ones


def _prepare_lengths(gc: GenerationConfig, model, input_len: int, has_default_max_length: bool,
                     has_default_min_length: bool) -> None:
    if gc.max_new_tokens is not None:
        gc.max_length = gc.max_new_tokens + input_len
    elif has_default_max_length:
        gc.max_length = gc.max_length + input_len
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit is not None:
            gc.max_length = min(gc.max_length, limit)
    if gc.min_new_tokens is not None:
        gc.min_length = gc.min_new_tokens + input_len
    if has_default_max_length and gc.max_new_tokens is None:
        warnings.warn(f"Using the model-agnostic default `max_length` (={gc.max_length}) to control the generation "
                      "length. We recommend setting `max_new_tokens` to control the maximum length of the "
                      "generation.", UserWarning, stacklevel=3)
    if input_len >= gc.max_length:
        raise ValueError(f"Input length of input_ids is {input_len}, but `max_length` is set to {gc.max_length}. "
                         "This can lead to unexpected behavior. You should consider increasing `max_length` or, "
                         "better yet, setting `max_new_tokens`.")


def _check_input_ids(input_ids, vocab_size: int) -> None:
    """A [batch, length] tensor of token ids in [0, vocab_size), at least one token per row."""
    if not isinstance(input_ids, torch.Tensor):
        raise ArgumentTypeError(f"input_ids must be a [batch, length] tensor of token ids, got "
                                f"{type(input_ids).__name__}")
    if input_ids.dim() != 2:
        raise ArgumentError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
    if input_ids.numel() == 0:
        raise ArgumentError(f"input_ids is empty (shape {tuple(input_ids.shape)}): give at least one token per "
                            "sequence (e.g. the bos token)")
    check_token_ids(input_ids, vocab_size, "input_ids")


def _check_cache(cache, batch: int, num_return_sequences: int) -> None:
    if cache is None:
        return
    if not isinstance(cache, Gemma4Cache):
        raise ArgumentTypeError(f"past_key_values must be a gemma4.Gemma4Cache (returned by an earlier generate or "
                                f"forward call), got {type(cache).__name__}")
    if cache.batch_size is not None and cache.batch_size != batch:
        repeat = f" ({batch // num_return_sequences} x num_return_sequences {num_return_sequences})" \
            if num_return_sequences > 1 else ""
        raise ArgumentError(f"past_key_values holds {cache.batch_size} sequence(s) but input_ids has {batch}{repeat}: "
                            "a cache continues the batch it was filled with")


def _check_buffers_fit(model, gc: GenerationConfig, batch: int, input_len: int, new_cache: bool) -> None:
    """Refuse a length whose preallocated buffers cannot fit in the device's memory (naming the argument),
    before allocating anything: three [B, max_length] int64 buffers, a KV cache of max_length slots and,
    when returned, one [B, V] float32 row of scores/logits per new token."""
    device = model.device
    max_length = gc.max_length
    need = 3 * 8 * batch * max_length
    if new_cache:
        need += Gemma4Cache.storage_bytes(model.config, max_length - 1, batch, model.dtype)
    rows = int(bool(gc.return_dict_in_generate and gc.output_scores)) + \
        int(bool(gc.return_dict_in_generate and gc.output_logits))
    need += rows * 4 * batch * model.config.vocab_size * (max_length - input_len)
    free = available_memory(device)
    if free is not None and need > free:
        name = "max_new_tokens" if gc.max_new_tokens is not None else "max_length"
        raise ArgumentError(f"{name}={getattr(gc, name)}: generating up to {max_length} tokens for {batch} "
                            f"sequence(s) needs {need / 2**30:.1f} GiB of buffers (token ids and KV cache"
                            f"{', scores' if rows else ''}), more than the {free / 2**30:.1f} GiB available on "
                            f"{device}; ask for fewer tokens")


def _merge(default_list, custom_list):
    """transformers' rule: a custom processor/criterion replaces the default of the same type; others follow."""
    if not custom_list:
        return default_list
    out = type(default_list)()
    for default in default_list:
        custom = next((c for c in custom_list if type(c) is type(default)), None)
        out.append(custom if custom is not None else default)
    for custom in custom_list:
        if custom not in out:
            out.append(custom)
    return out


def _get_logits_processor(gc: GenerationConfig, input_len: int, eos: torch.Tensor | None, device,
                          custom) -> LogitsProcessorList:
    """The processors transformers 5.17 builds for these options, in its order."""
    procs = LogitsProcessorList()
    if gc.repetition_penalty is not None and gc.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(penalty=gc.repetition_penalty))
    if gc.no_repeat_ngram_size is not None and gc.no_repeat_ngram_size > 0:
        procs.append(NoRepeatNGramLogitsProcessor(gc.no_repeat_ngram_size))
    if gc.min_length is not None and eos is not None and gc.min_length > 0:
        procs.append(MinLengthLogitsProcessor(gc.min_length, eos, device=device))
    if gc.min_new_tokens is not None and eos is not None and gc.min_new_tokens > 0:
        procs.append(MinNewTokensLengthLogitsProcessor(input_len, gc.min_new_tokens, eos, device=device))
    if gc.forced_bos_token_id is not None:
        procs.append(ForcedBOSTokenLogitsProcessor(gc.forced_bos_token_id))
    if gc.forced_eos_token_id is not None:
        procs.append(ForcedEOSTokenLogitsProcessor(gc.max_length, gc.forced_eos_token_id, device=device))
    if gc.remove_invalid_values is True:
        procs.append(InfNanRemoveLogitsProcessor())
    if gc.suppress_tokens is not None:
        procs.append(SuppressTokensLogitsProcessor(gc.suppress_tokens, device=device))
    if gc.begin_suppress_tokens is not None:
        begin_index = input_len if (input_len > 1 or gc.forced_bos_token_id is None) else input_len + 1
        procs.append(SuppressTokensAtBeginLogitsProcessor(gc.begin_suppress_tokens, begin_index, device=device))
    procs = _merge(procs, custom or [])
    if gc.do_sample:
        keep = 1
        if gc.temperature is not None and gc.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(gc.temperature))
        if gc.top_k is not None and gc.top_k != 0:
            procs.append(TopKLogitsWarper(top_k=gc.top_k, min_tokens_to_keep=keep))
        if gc.top_p is not None and gc.top_p < 1.0:
            procs.append(TopPLogitsWarper(top_p=gc.top_p, min_tokens_to_keep=keep))
        if gc.min_p is not None:
            procs.append(MinPLogitsWarper(min_p=gc.min_p, min_tokens_to_keep=keep))
        if gc.typical_p is not None and gc.typical_p < 1.0:
            procs.append(TypicalLogitsWarper(mass=gc.typical_p, min_tokens_to_keep=keep))
        if gc.epsilon_cutoff is not None and 0.0 < gc.epsilon_cutoff < 1.0:
            procs.append(EpsilonLogitsWarper(epsilon=gc.epsilon_cutoff, min_tokens_to_keep=keep))
        if gc.eta_cutoff is not None and 0.0 < gc.eta_cutoff < 1.0:
            procs.append(EtaLogitsWarper(epsilon=gc.eta_cutoff, min_tokens_to_keep=keep, device=device))
    if gc.renormalize_logits is True:
        procs.append(LogitNormalization())
    return procs


def _get_stopping_criteria(gc: GenerationConfig, eos: torch.Tensor | None, tokenizer, custom) -> StoppingCriteriaList:
    """Device-side criteria. max_length is checked on the host by the loop (it needs no tensor work)."""
    criteria = StoppingCriteriaList()
    if gc.max_time is not None:
        criteria.append(MaxTimeCriteria(max_time=gc.max_time))
    if gc.stop_strings is not None:
        if tokenizer is None:
            raise ValueError("There are one or more stop strings, either in the arguments to `generate` or in the "
                             "model's generation config, but we could not locate a tokenizer. When generating with "
                             "stop strings, you must pass the model's tokenizer to the `tokenizer` argument of "
                             "`generate`.")
        criteria.append(StopStringCriteria(stop_strings=gc.stop_strings, tokenizer=tokenizer))
    if eos is not None:
        criteria.append(EosTokenCriteria(eos_token_id=eos))
    return _merge(criteria, [c for c in (custom or []) if not isinstance(c, MaxLengthCriteria)])


# ---------------------------------------------------------------------------------------------- generate
@torch.no_grad()
def generate(model, inputs: torch.Tensor | None = None, generation_config: GenerationConfig | None = None,
             logits_processor=None, stopping_criteria=None, prefix_allowed_tokens_fn=None, synced_gpus=None,
             assistant_model=None, streamer=None, negative_prompt_ids=None, negative_prompt_attention_mask=None,
             custom_generate=None, *, tokenizer=None, generator: torch.Generator | None = None, **kwargs):
    """Generate token ids with `model` (a gemma4 Gemma4ForCausalLM), as transformers' `model.generate`.

    inputs / input_ids: [B, L] prompt ids (left-padded for batches); attention_mask: [B, L] (inferred from
    pad_token_id when absent, as transformers). generation_config and keyword arguments take
    transformers' names: max_new_tokens, max_length, min_new_tokens, min_length, do_sample, temperature,
    top_k, top_p, min_p, typical_p, epsilon_cutoff, eta_cutoff, repetition_penalty, no_repeat_ngram_size,
    suppress_tokens, eos_token_id (int or list), pad_token_id, stop_strings (needs tokenizer=),
    num_return_sequences, use_cache, prefill_chunk_size, return_dict_in_generate, output_scores,
    output_logits. streamer: anything with put/end (gemma4.generation.TextStreamer, ...).
    generator: a torch.Generator for the sampling draws (default: the global RNG, so torch.manual_seed
    reproduces transformers' draws).
    past_key_values: a Gemma4Cache holding the first tokens of `inputs` (continue a conversation).

    Returns the [B, L + new] sequences, or a GenerateDecoderOnlyOutput when return_dict_in_generate.
    Finished rows are padded with pad_token_id (eos_token_id[0] when pad is unset).
    """
    gc, model_kwargs, has_default_max, has_default_min = _prepare_generation_config(model, generation_config,
                                                                                    kwargs)
    _check_supported(gc, model_kwargs, {
        "prefix_allowed_tokens_fn": prefix_allowed_tokens_fn, "assistant_model": assistant_model,
        "negative_prompt_ids": negative_prompt_ids, "negative_prompt_attention_mask": negative_prompt_attention_mask,
        "custom_generate": custom_generate})
    device = model.device

    # inputs
    input_ids = inputs if inputs is not None else model_kwargs.pop("input_ids", None)
    model_kwargs.pop("input_ids", None)
    if input_ids is None:
        if gc.bos_token_id is None:
            raise ValueError("`bos_token_id` has to be defined when no `input_ids` are provided.")
        input_ids = torch.full((1, 1), gc.bos_token_id, dtype=torch.long, device=device)
    _check_input_ids(input_ids, model.config.vocab_size)
    input_ids = input_ids.to(device=device, dtype=torch.long)
    B = input_ids.shape[0]

    # special tokens, as transformers' _prepare_special_tokens
    attention_mask = model_kwargs.pop("attention_mask", None)
    eos = _as_eos_tensor(gc.eos_token_id, device)
    pad = gc.pad_token_id
    if pad is None and eos is not None:
        if attention_mask is None and B > 1:
            warnings.warn("The attention mask and the pad token id were not set, with a batched input. As a "
                          "consequence, you may observe unexpected behavior. Please pass your input's "
                          "`attention_mask` to obtain reliable results.", UserWarning, stacklevel=2)
        pad = int(eos[0])
    for i, token in enumerate([] if eos is None else eos.tolist()):
        check_token_id(token, model.config.vocab_size, "eos_token_id" if len(eos) == 1 else f"eos_token_id[{i}]")
    if pad is not None:
        check_token_id(pad, model.config.vocab_size, "pad_token_id")
    if attention_mask is None:
        attention_mask = _prepare_attention_mask(input_ids, pad, eos)
    attention_mask = attention_mask.to(device=device, dtype=torch.long)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids "
                         f"{tuple(input_ids.shape)}")
    if B > 1 and pad is not None and bool((attention_mask[:, -1] == 0).any()):
        warnings.warn("A decoder-only architecture is being used, but right-padding was detected! For correct "
                      "generation results, please set `padding_side='left'` when initializing the tokenizer.",
                      UserWarning, stacklevel=2)
    position_ids = model_kwargs.pop("position_ids", None)
    if position_ids is None:
        position_ids = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    position_ids = position_ids.to(device=device, dtype=torch.long).expand(B, -1)

    n = gc.num_return_sequences or 1
    if n > 1:
        if not gc.do_sample:
            raise ValueError("Greedy methods without beam search do not support `num_return_sequences` different "
                             f"than 1 (got {n}).")
        input_ids, attention_mask, position_ids = (t.repeat_interleave(n, dim=0)
                                                   for t in (input_ids, attention_mask, position_ids))
        B = input_ids.shape[0]

    input_len = input_ids.shape[1]
    _prepare_lengths(gc, model, input_len, has_default_max, has_default_min)

    cache = model_kwargs.pop("past_key_values", None)
    cache = model_kwargs.pop("cache", None) if cache is None else cache
    _check_cache(cache, B, n)
    _check_buffers_fit(model, gc, B, input_len, cache is None and gc.use_cache)
    if streamer is not None:
        streamer.put(input_ids.cpu())
    if gc.use_cache and cache is None:
        cache = Gemma4Cache(model.config, max_cache_len=gc.max_length - 1, batch_size=B, device=device,
                            dtype=model.dtype)
    if not gc.use_cache:
        cache = None

    processors = _get_logits_processor(gc, input_len, eos, device, logits_processor)
    criteria = _get_stopping_criteria(gc, eos, tokenizer, stopping_criteria)
    with decode_step.attached(model, cache):  # decode steps through the C++ layers where they may run
        return _decode(model, input_ids, attention_mask, position_ids, cache, gc, processors, criteria, pad,
                       eos is not None, streamer, generator)


def _raise_non_finite(rows_finite: torch.Tensor, step: int) -> None:
    rows = (~rows_finite).nonzero().flatten().tolist()
    raise NonFiniteLogitsError(f"generate: the model's logits for new token {step} hold NaN or infinity (batch "
                               f"row(s) {rows}); the weights or inputs are not finite, or a low-precision "
                               "overflow happened (check the checkpoint; pass remove_invalid_values=True to "
                               "generate anyway with those values replaced)")


def _last_position(model, head, input_ids, attention_mask, position_ids, cache, process=None):
    """One forward; returns (the last position's logits [B, V] in float32, None), or with a GreedyHead that can
    decide, (None, the greedy token: the first argmax of process(logits) where process is given)."""
    if head is None:
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                    logits_to_keep=1)
        return out.logits[:, -1].to(dtype=torch.float32, copy=True), None
    hidden = model.model(input_ids, attention_mask, None, position_ids, cache)[:, -1:]  # [1, 1, H]
    token = head.token(hidden[0, 0], process)
    if token is not None:
        return None, token
    return model.head_logits(hidden)[:, -1].float(), None  # [1, V]


def _decode(model, input_ids, attention_mask, position_ids, cache, gc, processors, criteria, pad,
            has_eos_criteria, streamer, generator):
    B, input_len = input_ids.shape
    device = input_ids.device
    max_length = gc.max_length
    want_scores = bool(gc.return_dict_in_generate and gc.output_scores)
    want_logits = bool(gc.return_dict_in_generate and gc.output_logits)
    scores_out, logits_out = [], []

    # preallocated sequence / mask / position buffers: each step writes one column, no concatenation
    sequences = torch.full((B, max_length), pad if pad is not None else 0, dtype=torch.long, device=device)
    sequences[:, :input_len] = input_ids
    mask_all = torch.ones(B, max_length, dtype=torch.long, device=device)
    mask_all[:, :input_len] = attention_mask
    positions = torch.zeros(B, max_length, dtype=torch.long, device=device)
    positions[:, :input_len] = position_ids
    positions[:, input_len:] = position_ids[:, -1:] + torch.arange(1, max_length - input_len + 1, device=device)
    unfinished = torch.ones(B, dtype=torch.long, device=device)
    pad_t = torch.tensor(pad if pad is not None else 0, dtype=torch.long, device=device)
    sync_stop = len(criteria) > 0
    # greedy with nothing reading the logits but per-token score maps: the token may come from an int8 copy of the
    # head (greedy_head.py)
    head = greedy_head_for(model) if (not gc.do_sample and all(type(p) in SCORE_MAPS for p in processors)
                                      and not want_scores and not want_logits and B == 1
                                      and device.type == "cpu") else None
    cur_len = input_len
    process = (lambda scores: processors(sequences[:, :cur_len], scores)) if len(processors) else None
    true = torch.ones((), dtype=torch.bool, device=device)

    # prefill (optionally in chunks)
    past = cache.get_seq_length() if cache is not None else 0
    if cache is not None and past >= input_len:
        raise ValueError(f"the cache already holds {past} tokens but the input has only {input_len}")
    chunk = gc.prefill_chunk_size if cache is not None and gc.prefill_chunk_size else input_len
    start = past
    while True:
        end = min(start + chunk, input_len)
        last = end >= input_len
        if cache is not None and not last and head is not None:  # an earlier chunk: its K/V, not its logits
            model.model(input_ids[:, start:end], mask_all[:, :end], None, positions[:, start:end], cache)
        elif cache is not None:
            next_logits, token = _last_position(model, head, input_ids[:, start:end], mask_all[:, :end],
                                                positions[:, start:end], cache, process)
        else:
            next_logits, token = _last_position(model, head, input_ids, attention_mask, position_ids, None, process)
        start = end
        if last:
            break

    # Non-finite logits (NaN/inf weights, an overflow) are refused unless remove_invalid_values asks to
    # replace them: such rows are processed as zeros (so sampling cannot fail) and the step's host read
    # raises before the token is used.
    # (A row is finite iff its max and min are, amax/amin propagating NaN: two vectorised reductions instead of
    # isfinite's passes over [B, V]. On the CPU, where a host read costs nothing, the replacement is skipped
    # when every row is finite.)
    check_finite = gc.remove_invalid_values is not True
    while True:
        if token is not None:  # the greedy head's token: the full logits' argmax, and they were all finite
            next_tokens = torch.tensor([token], dtype=torch.long, device=device)
            rows_finite = true.view(1)
        else:
            scores_in, rows_finite = next_logits, None  # [B, V] float32
            if check_finite:
                rows_finite = torch.isfinite(next_logits.amax(-1)) & torch.isfinite(next_logits.amin(-1))  # [B]
                if device.type != "cpu" or not bool(rows_finite.all()):
                    scores_in = torch.where(rows_finite[:, None], next_logits, 0.0)
            next_scores = processors(sequences[:, :cur_len], scores_in)
            if want_scores:
                scores_out.append(next_scores)
            if want_logits:
                logits_out.append(next_logits)
            if gc.do_sample:
                probs = torch.softmax(next_scores, dim=-1)
                next_tokens = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
            else:
                next_tokens = torch.argmax(next_scores, dim=-1)
            del next_logits, scores_in, next_scores
        if has_eos_criteria:  # finished rows continue with padding
            next_tokens = next_tokens * unfinished + pad_t * (1 - unfinished)
        sequences[:, cur_len] = next_tokens
        cur_len += 1
        if sync_stop:
            unfinished = unfinished & ~criteria(sequences[:, :cur_len], tuple(scores_out) if want_scores else None)
        if sync_stop or check_finite:  # the one host read of the step: [any row unfinished, logits finite]
            any_unfinished, finite = torch.stack([unfinished.any() if sync_stop else true,
                                                  rows_finite.all() if check_finite else true]).tolist()
            if not finite:
                _raise_non_finite(rows_finite, cur_len - input_len)
        if streamer is not None:
            streamer.put(next_tokens.cpu())
        if cur_len >= max_length:
            break
        if sync_stop and not any_unfinished:
            break
        if cache is not None:
            next_logits, token = _last_position(model, head, sequences[:, cur_len - 1:cur_len], None,
                                                positions[:, cur_len - 1:cur_len], cache, process)
        else:
            next_logits, token = _last_position(model, head, sequences[:, :cur_len], mask_all[:, :cur_len],
                                                positions[:, :cur_len], None, process)

    if streamer is not None:
        streamer.end()
    sequences = sequences[:, :cur_len].contiguous()
    if gc.return_dict_in_generate:
        return GenerateDecoderOnlyOutput(sequences=sequences, scores=tuple(scores_out) if want_scores else None,
                                         logits=tuple(logits_out) if want_logits else None, past_key_values=cache)
    return sequences
