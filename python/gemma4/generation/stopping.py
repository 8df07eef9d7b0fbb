"""Stopping criteria with transformers 5.17's names and semantics.

Each criterion is a callable `(input_ids [B, L], scores) -> bool tensor [B]` (True = that row is done)
that stays on the device; `generate` reads the combined flags once per step.

StopStringCriteria follows transformers' algorithm: the tokenizer vocabulary is preprocessed once into a
table (for every token: where it can sit inside each stop string, how much of the string's end it can
cover, its length), so the per-step check is a few gathers and cumsums over the last tokens, with no
decoding on the host. A stop string matches when it ends inside the newest token's text (tokens may
overhang the string at either end).
"""
from __future__ import annotations

import json
import time
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["StoppingCriteria", "StoppingCriteriaList", "MaxLengthCriteria", "MaxTimeCriteria", "EosTokenCriteria",
           "StopStringCriteria"]


class StoppingCriteria:
    """Base class: `__call__(input_ids, scores, **kwargs) -> BoolTensor [B]`."""

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        raise NotImplementedError("StoppingCriteria needs to be subclassed")


class StoppingCriteriaList(list):
    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        is_done = torch.full((input_ids.shape[0],), False, device=input_ids.device, dtype=torch.bool)
        for criteria in self:
            is_done = is_done | criteria(input_ids, scores, **kwargs)
        return is_done

    @property
    def max_length(self) -> int | None:
        for criteria in self:
            if isinstance(criteria, MaxLengthCriteria):
                return criteria.max_length
        return None


class MaxLengthCriteria(StoppingCriteria):
    """Done once the sequence (prompt included) has max_length tokens."""

    def __init__(self, max_length: int, max_position_embeddings: int | None = None):
        self.max_length = max_length
        self.max_position_embeddings = max_position_embeddings

    def __call__(self, input_ids, scores, **kwargs):
        is_done = input_ids.shape[1] >= self.max_length
        return torch.full((input_ids.shape[0],), is_done, device=input_ids.device, dtype=torch.bool)


class MaxTimeCriteria(StoppingCriteria):
    """Done once max_time seconds have passed since initial_timestamp (default: construction)."""

    def __init__(self, max_time: float, initial_timestamp: float | None = None):
        self.max_time = max_time
        self.initial_timestamp = time.time() if initial_timestamp is None else initial_timestamp

    def __call__(self, input_ids, scores, **kwargs):
        is_done = time.time() - self.initial_timestamp > self.max_time
        return torch.full((input_ids.shape[0],), is_done, device=input_ids.device, dtype=torch.bool)


class EosTokenCriteria(StoppingCriteria):
    """Done when the newest token is any of eos_token_id (an id, a list, or a tensor)."""

    def __init__(self, eos_token_id):
        if not isinstance(eos_token_id, torch.Tensor):
            if isinstance(eos_token_id, int):
                eos_token_id = [eos_token_id]
            eos_token_id = torch.tensor(eos_token_id)
        self.eos_token_id = eos_token_id

    def __call__(self, input_ids, scores, new_token_length: int = 1, **kwargs):
        self.eos_token_id = self.eos_token_id.to(input_ids.device)
        return torch.isin(input_ids[:, -new_token_length:], self.eos_token_id).any(dim=-1)


# ---------------------------------------------------------------------------------------------- stop strings
_EMBEDDING_CACHE: OrderedDict = OrderedDict()  # (vocab, stop strings, mode) -> tables; 8 most recent


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte <-> printable-unicode map used by ByteLevel tokenizers."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _decoder_has_type(config, decoder_type: str) -> bool:
    if isinstance(config, dict):
        return config.get("type") == decoder_type or any(_decoder_has_type(v, decoder_type) for v in config.values())
    if isinstance(config, list):
        return any(_decoder_has_type(v, decoder_type) for v in config)
    return False


class StopStringCriteria(StoppingCriteria):
    """Done when the text of the newest tokens completes any of stop_strings (needs the tokenizer).

    tokenizer: a gemma4 or transformers tokenizer (uses get_vocab, convert_ids_to_tokens,
    convert_tokens_to_string, __call__ and, when present, backend_tokenizer.decoder).
    """

    def __init__(self, tokenizer, stop_strings: str | list[str]):
        if isinstance(stop_strings, str):
            stop_strings = [stop_strings]
        self.stop_strings: tuple[str, ...] = tuple(stop_strings)
        self._mode = self._matching_mode(tokenizer)
        self._strings = self.stop_strings if self._mode is None else tuple(s.encode("utf-8") for s in self.stop_strings)
        vocab = tokenizer.get_vocab()
        token_list, token_indices = tuple(vocab.keys()), tuple(vocab.values())
        key = (token_list, token_indices, self._strings, self._mode)
        if key in _EMBEDDING_CACHE:
            tables = _EMBEDDING_CACHE[key]
            _EMBEDDING_CACHE.move_to_end(key)
        else:
            clean_list, clean_indices = self.clean_tokenizer_vocab(tokenizer, stop_string_matching_mode=self._mode)
            tables = self._create_embedding_vec(clean_list, clean_indices, self._strings)
            _EMBEDDING_CACHE[key] = tables
            if len(_EMBEDDING_CACHE) > 8:
                _EMBEDDING_CACHE.popitem(last=False)
        self.embedding_vec, self.max_valid_positions, self.max_valid_end_lens = tables
        self.maximum_token_len = max(len(s) for s in self._strings)
        self.num_stop_strings = len(self._strings)
        self.target_lens = torch.tensor([len(s) for s in self._strings], dtype=torch.int32)

    # ---- vocabulary preprocessing (once per tokenizer and stop-string set)
    @staticmethod
    def _matching_mode(tokenizer) -> str | None:
        """'byte_level' / 'byte_fallback' when tokens stand for bytes (matching is then done on UTF-8 bytes)."""
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        if decoder is None:
            return None
        state = getattr(decoder, "__getstate__", lambda: None)()
        if isinstance(state, str):
            state = state.encode()
        config = None
        if isinstance(state, bytes):
            try:
                config = json.loads(state)
            except json.JSONDecodeError:
                config = None
        if type(decoder).__name__ == "ByteLevel":
            return "byte_level"
        if config is not None:
            if _decoder_has_type(config, "ByteFallback"):
                return "byte_fallback"
            if _decoder_has_type(config, "ByteLevel"):
                return "byte_level"
        return None

    @staticmethod
    def _token_to_bytes(token: str, mode: str | None, byte_decoder: dict | None) -> bytes | None:
        if mode == "byte_level":
            if byte_decoder is not None and all(c in byte_decoder for c in token):
                return bytes(byte_decoder[c] for c in token)
            return None
        if mode == "byte_fallback":
            if len(token) == 6 and token.startswith("<0x") and token.endswith(">") and \
                    all(c in "0123456789abcdefABCDEF" for c in token[3:5]):
                return bytes([int(token[3:5], 16)])
        return None

    @staticmethod
    def clean_tokenizer_vocab(tokenizer, static_prefix: str = "abcdef", stop_string_matching_mode=None):
        """Each vocabulary token as the text (or bytes) it decodes to, without prefix markers like '▁'.

        Decoding a token after a fixed prefix and cutting the prefix off gives its in-text form, including
        any leading space the token carries."""
        vocab = tokenizer.get_vocab()
        byte_decoder = ({c: b for b, c in _bytes_to_unicode().items()}
                        if stop_string_matching_mode == "byte_level" else None)
        base_ids = tokenizer(static_prefix, add_special_tokens=False)["input_ids"]
        base_tokens = tokenizer.convert_ids_to_tokens(list(base_ids))
        clean_list, clean_indices = [], []
        for token, index in vocab.items():
            text = StopStringCriteria._token_to_bytes(token, stop_string_matching_mode, byte_decoder)
            if text is None:
                text = tokenizer.convert_tokens_to_string(base_tokens + [token])
                text = text[text.index(static_prefix) + len(static_prefix):]
                if stop_string_matching_mode is not None:
                    text = text.encode("utf-8")
            clean_list.append(text)
            clean_indices.append(index)
        return tuple(clean_list), tuple(clean_indices)

    @staticmethod
    def _get_matching_positions(token_list, token_indices, stop_strings):
        """Per stop string and token: positions (from the string's end) where the token fits inside it, and
        the lengths of the string's end that the token's start can cover."""
        valid_positions, end_overlaps = {}, {}
        for stop in stop_strings:
            reversed_stop = stop[::-1]
            valid_positions[stop], end_overlaps[stop] = {}, {}
            for token, index in zip(token_list, token_indices):
                reversed_token = token[::-1]
                positions, end_lengths = [], []
                for i in range(1 - len(token), len(stop)):
                    if i < 0:
                        tok = reversed_token[-i:]
                        i = 0
                    else:
                        tok = reversed_token
                    piece = reversed_stop[i:i + len(tok)]
                    if tok.startswith(piece):
                        if i == 0:
                            end_lengths.append(min(len(tok), len(piece)))
                        else:
                            positions.append(i)
                if positions:
                    valid_positions[stop][index] = positions
                if end_lengths:
                    end_overlaps[stop][index] = end_lengths
        return valid_positions, end_overlaps

    @staticmethod
    def _create_embedding_vec(token_list, token_indices, stop_strings):
        """Pack the per-token facts into one int32 table [max_id + 2, ...] (last row: out-of-vocab dummy)."""
        valid_positions, end_overlaps = StopStringCriteria._get_matching_positions(token_list, token_indices,
                                                                                   stop_strings)
        all_valid = [len(v) for positions in valid_positions.values() for v in positions.values()]
        max_valid_positions = max(all_valid) if all_valid else 1
        end_lens = [len(v) for overlaps in end_overlaps.values() for v in overlaps.values()]
        if not end_lens:
            raise ValueError("Stop string preprocessing was unable to identify tokens matching one or more of the "
                             "supplied stop string(s). This is most often caused by the stop strings containing "
                             "unusual characters that are not in the tokenizer vocabulary.")
        max_valid_end_lens = max(end_lens)
        n = len(stop_strings)
        vec_size = n * (max_valid_positions + max_valid_end_lens) + 1
        table = np.full((max(token_indices) + 2, vec_size), dtype=np.int32, fill_value=-1)
        for i, stop in enumerate(stop_strings):
            for index, positions in valid_positions[stop].items():
                table[index, max_valid_positions * i: max_valid_positions * i + len(positions)] = positions
            for index, lengths in end_overlaps[stop].items():
                start = max_valid_positions * n + max_valid_end_lens * i
                table[index, start:start + len(lengths)] = lengths
        for token, index in zip(token_list, token_indices):
            table[index, -1] = len(token)
        return torch.tensor(table, dtype=torch.int32), max_valid_positions, max_valid_end_lens

    # ---- the per-step check (device only)
    def __call__(self, input_ids, scores, **kwargs):
        self.embedding_vec = self.embedding_vec.to(input_ids.device)
        self.target_lens = self.target_lens.to(input_ids.device)
        input_ids = input_ids[:, -self.maximum_token_len:]  # at most one token per character matters
        flipped = torch.flip(input_ids, (1,)).clamp(max=self.embedding_vec.size(0) - 1)
        n, mvp = self.num_stop_strings, self.max_valid_positions
        embedded = F.embedding(flipped, self.embedding_vec)
        valid_positions = embedded[:, 1:, :mvp * n].unflatten(-1, (n, -1))          # [B, L-1, n, mvp]
        end_lengths = embedded[:, :1, mvp * n:-1].unflatten(-1, (n, -1))            # [B, 1, n, mvel]
        lengths = embedded[:, 1:, None, -1:].expand((-1, -1, end_lengths.shape[-2], end_lengths.shape[-1]))
        cumsum = torch.cat([end_lengths, lengths], dim=1).cumsum(dim=1)             # chars matched so far
        initial_match = end_lengths > 0
        later_match = torch.any(cumsum[:, :-1, :, None] == valid_positions[:, :, :, :, None], axis=-2)
        match = torch.cat([initial_match, later_match], dim=1)
        mask = (~match).cumsum(dim=1, dtype=torch.int32) == 0                       # up to the first mismatch
        string_matches = torch.amax(cumsum * mask, dim=(1, -1)) >= self.target_lens[None, :]
        return torch.any(string_matches, dim=-1)
