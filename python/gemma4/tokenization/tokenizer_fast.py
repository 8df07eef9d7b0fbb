"""PreTrainedTokenizerFast: a `tokenizers.Tokenizer` with transformers' tokenizer interface.

Behaviour follows transformers 5.17's TokenizersBackend / PreTrainedTokenizerBase (the oracle in
tests/tokenizer): the same backend calls in the same order (truncation and padding are set on the
Rust tokenizer per call, special tokens are registered the same way), so ids, masks and decoded
text are identical. transformers is not imported.
"""
from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Mapping, Sized

from tokenizers import AddedToken, processors
from tokenizers import Tokenizer as RustTokenizer

from gemma4.errors import ArgumentError, ArgumentTypeError

from .batch_encoding import BatchEncoding, is_torch_tensor, to_py_obj
from .chat_template import render_chat_template

logger = logging.getLogger(__name__)

VERY_LARGE_INTEGER = int(1e30)  # model_max_length when the config gives none
LARGE_INTEGER = int(1e20)
SPECIAL_TOKENS_ATTRIBUTES = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                             "mask_token"]
_PADDING = ("longest", "max_length", "do_not_pad")
_TRUNCATION = ("only_first", "only_second", "longest_first", "do_not_truncate")


def _padding_strategy(padding) -> str:
    padding = getattr(padding, "value", padding)
    if padding is False or padding is None:
        return "do_not_pad"
    if padding is True:
        return "longest"
    if padding not in _PADDING:
        raise ValueError(f"padding must be True, False or one of {_PADDING}, got {padding!r}")
    return padding


def _truncation_strategy(truncation) -> str:
    truncation = getattr(truncation, "value", truncation)
    if truncation is False or truncation is None:
        return "do_not_truncate"
    if truncation is True:
        return "longest_first"
    if truncation not in _TRUNCATION:
        raise ValueError(f"truncation must be True, False or one of {_TRUNCATION}, got {truncation!r}")
    return truncation


def _check_ids(ids, method: str) -> None:
    """Token ids are ints in [0, 2**32) (the backend's u32); anything else is an ArgumentError naming the id.
    (Ids at or above the vocabulary size decode to nothing, as in transformers.)"""
    if not isinstance(ids, (list, tuple)):
        raise ArgumentTypeError(f"{method}: expected token ids (an int, a list of ints or a tensor), got "
                                f"{type(ids).__name__}")
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int):
            raise ArgumentTypeError(f"{method}: token id {i!r} is not an integer")
        if not 0 <= i < 2**32:
            raise ArgumentError(f"{method}: token id {i} is out of range (ids are >= 0)")


def _is_valid_text_input(t) -> bool:
    if isinstance(t, str):
        return True
    if isinstance(t, (list, tuple)):
        if len(t) == 0 or isinstance(t[0], str):
            return True
        if isinstance(t[0], (list, tuple)):
            if len(t[0]) == 0 or isinstance(t[0][0], str):
                return True
            if isinstance(t[0][0], (list, tuple)):
                return len(t[0][0]) == 0 or isinstance(t[0][0][0], str)
    return False


class PreTrainedTokenizerFast:
    """Tokenizer over a `tokenizers.Tokenizer` with the Hugging Face transformers interface.

    Build one with `AutoTokenizer.from_pretrained(directory)`. Special tokens are attributes
    (`bos_token`, `bos_token_id`, model-specific ones such as `image_token`), `tok(text)` returns a
    `BatchEncoding`, `tok.apply_chat_template(messages, ...)` renders and tokenizes a chat.
    """

    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "right"
    truncation_side = "right"
    SPECIAL_TOKENS_ATTRIBUTES = list(SPECIAL_TOKENS_ATTRIBUTES)

    def __init__(self, tokenizer_object: RustTokenizer, *, added_tokens_decoder: dict[int, AddedToken] | None = None,
                 post_processor=None, tokenizer_padding: dict | None = None,
                 tokenizer_truncation: dict | None = None, **kwargs):
        """Mirrors TokenizersBackend.__init__ + PreTrainedTokenizerBase.__init__ (transformers 5.17).

        kwargs are the tokenizer_config.json entries after loading (see auto.py): special tokens as
        str or AddedToken, padding_side, truncation_side, model_max_length, chat_template, ...
        """
        object.__setattr__(self, "_special_tokens_map", dict.fromkeys(SPECIAL_TOKENS_ATTRIBUTES))
        object.__setattr__(self, "_extra_special_tokens", [])
        self._tokenizer = copy.deepcopy(tokenizer_object)
        added_tokens_decoder = dict(added_tokens_decoder or {})

        truncation = tokenizer_truncation or self._tokenizer.truncation
        if truncation is not None:
            self._tokenizer.enable_truncation(**truncation)
            kwargs.setdefault("max_length", truncation["max_length"])
            kwargs.setdefault("truncation_side", truncation["direction"])
            kwargs.setdefault("stride", truncation["stride"])
            kwargs.setdefault("truncation_strategy", truncation["strategy"])
        else:
            self._tokenizer.no_truncation()
        padding = tokenizer_padding or self._tokenizer.padding
        if padding is not None:
            self._tokenizer.enable_padding(**padding)
            kwargs.setdefault("pad_token", padding["pad_token"])
            kwargs.setdefault("pad_token_type_id", padding["pad_type_id"])
            kwargs.setdefault("padding_side", padding["direction"])
            kwargs.setdefault("max_length", padding["length"])
            kwargs.setdefault("pad_to_multiple_of", padding["pad_to_multiple_of"])

        explicit_bos_eos = "add_bos_token" in kwargs or "add_eos_token" in kwargs
        self._add_bos_token = kwargs.pop("add_bos_token", False)
        self._add_eos_token = kwargs.pop("add_eos_token", False)
        if post_processor is not None:
            self._tokenizer.post_processor = post_processor
        should_update_post_processor = explicit_bos_eos or self._tokenizer.post_processor is None

        self._init_base(kwargs)
        self._tokenizer.encode_special_tokens = self.split_special_tokens

        # Register the added tokens of the config and every special token with the backend, exactly
        # as transformers does (same calls, same order: the ids of new tokens depend on it).
        known = {hash(repr(t)) for t in self.added_tokens_decoder.values()}
        tokens_to_add = [t for _, t in sorted(added_tokens_decoder.items(), key=lambda kv: kv[0])
                         if hash(repr(t)) not in known]
        encoder = list(self.added_tokens_encoder) + [str(t) for t in tokens_to_add]
        for value in self._special_tokens_map.values():
            if value is not None and str(value) not in encoder and value not in tokens_to_add:
                tokens_to_add.append(value)
        for value in self._extra_special_tokens:
            if str(value) not in encoder and value not in tokens_to_add:
                tokens_to_add.append(value)
        if tokens_to_add:
            named = [str(t) for t in self._special_tokens_map.values() if t]
            tokens = []
            for t in tokens_to_add:
                if isinstance(t, str):
                    t = AddedToken(t, special=True)
                elif not t.special and str(t) in named:
                    t.special = True
                tokens.append(t)
            self._tokenizer.add_tokens(tokens)

        if should_update_post_processor or self._tokenizer.post_processor is None:
            self.update_post_processor()

    def _init_base(self, kwargs: dict) -> None:
        """PreTrainedTokenizerBase.__init__: special tokens, sides, lengths, chat template."""
        if "additional_special_tokens" in kwargs and "extra_special_tokens" not in kwargs:
            kwargs["extra_special_tokens"] = kwargs.pop("additional_special_tokens")
        self.name_or_path = kwargs.pop("name_or_path", "")
        self._pad_token_type_id = 0
        self.verbose = kwargs.pop("verbose", False)
        explicit_specific = kwargs.pop("model_specific_special_tokens", None) or {}
        if not isinstance(explicit_specific, dict):
            raise TypeError("model_specific_special_tokens must be a dictionary of token name to token value")
        auto_specific = {}
        for key in list(kwargs):
            if key in SPECIAL_TOKENS_ATTRIBUTES:
                value = kwargs.pop(key)
                if value is None:
                    continue
                if not isinstance(value, (str, AddedToken)):
                    raise TypeError(f"Special token {key} has to be either str or AddedToken but got: {type(value)}")
                self._special_tokens_map[key] = value
            elif key == "extra_special_tokens":
                value = kwargs.pop(key)
                if value is None:
                    continue
                if isinstance(value, dict):
                    self._set_model_specific_special_tokens(value)
                elif isinstance(value, (list, tuple)):
                    object.__setattr__(self, "_extra_special_tokens", list(value))
                else:
                    raise TypeError("extra_special_tokens must be a list/tuple of tokens or a dict of named tokens")
            elif key.endswith("_token") and isinstance(kwargs[key], (str, AddedToken)):
                auto_specific[key] = kwargs.pop(key)

        model_max_length = kwargs.pop("model_max_length", kwargs.pop("max_len", None))
        self.model_max_length = model_max_length if model_max_length is not None else VERY_LARGE_INTEGER
        self.padding_side = kwargs.pop("padding_side", self.padding_side)
        if self.padding_side not in ("right", "left"):
            raise ValueError(f"Padding side should be selected between 'right' and 'left', current value: "
                             f"{self.padding_side}")
        self.truncation_side = kwargs.pop("truncation_side", self.truncation_side)
        if self.truncation_side not in ("right", "left"):
            raise ValueError(f"Truncation side should be selected between 'right' and 'left', current value: "
                             f"{self.truncation_side}")
        self.model_input_names = kwargs.pop("model_input_names", self.model_input_names)
        self.clean_up_tokenization_spaces = kwargs.pop("clean_up_tokenization_spaces", False)
        self.clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output = kwargs.pop(
            "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False)
        self.split_special_tokens = kwargs.pop("split_special_tokens", False)
        chat_template = kwargs.pop("chat_template", None)
        if isinstance(chat_template, (list, tuple)):
            chat_template = {t["name"]: t["template"] for t in chat_template}
        self.chat_template = chat_template
        specific = {**auto_specific, **explicit_specific}
        if specific:
            self._set_model_specific_special_tokens(specific)
        self.deprecation_warnings = {}
        self.init_kwargs = kwargs  # what is left of the config (max_length, stride, ...)

    def _set_model_specific_special_tokens(self, special_tokens: dict) -> None:
        object.__setattr__(self, "SPECIAL_TOKENS_ATTRIBUTES", self.SPECIAL_TOKENS_ATTRIBUTES + list(special_tokens))
        for key, value in special_tokens.items():
            if not isinstance(value, (str, AddedToken)):
                raise TypeError(f"Special token {key} has to be either str or AddedToken but got: {type(value)}")
            self._special_tokens_map[key] = value

    # ------------------------------------------------------------------------------------------
    # Special tokens as attributes: bos_token, bos_token_id, image_token, extra_special_tokens...
    # ------------------------------------------------------------------------------------------
    def __getattr__(self, key: str):
        base = key.removesuffix("_ids").removesuffix("_id") if key.endswith(("_id", "_ids")) else key
        if base in self.__dict__.get("SPECIAL_TOKENS_ATTRIBUTES", SPECIAL_TOKENS_ATTRIBUTES):
            value = self.__dict__.get("_special_tokens_map", {}).get(base)
            if value is None:
                return None
            return self.convert_tokens_to_ids(str(value)) if key != base else str(value)
        if base == "extra_special_tokens":
            tokens = [str(t) for t in self.__dict__.get("_extra_special_tokens", [])]
            return self.convert_tokens_to_ids(tokens) if key != base else tokens
        raise AttributeError(f"{type(self).__name__} has no attribute {key}")

    def __setattr__(self, key: str, value) -> None:
        base = key.removesuffix("_ids").removesuffix("_id") if key.endswith(("_id", "_ids")) else key
        if base in self.__dict__.get("SPECIAL_TOKENS_ATTRIBUTES", SPECIAL_TOKENS_ATTRIBUTES):
            if key != base and value is not None:
                value = self.convert_ids_to_tokens(value)
            if value is not None and not isinstance(value, (str, AddedToken)):
                raise ValueError(f"Cannot set a non-string value as the {base}")
            self._special_tokens_map[base] = value
            return
        if base == "extra_special_tokens":
            if key != base and isinstance(value, (list, tuple)):
                value = [self.convert_ids_to_tokens(v) for v in value]
            if value is not None and not isinstance(value, (list, tuple)):
                raise ValueError(f"extra_special_tokens must be a list or tuple, got {type(value)}")
            object.__setattr__(self, "_extra_special_tokens", [] if value is None else list(value))
            return
        object.__setattr__(self, key, value)

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """Named special tokens (bos_token, ..., model-specific ones) as strings; extra tokens excluded."""
        return {attr: str(self._special_tokens_map[attr]) for attr in self.SPECIAL_TOKENS_ATTRIBUTES
                if self._special_tokens_map.get(attr) is not None}

    @property
    def all_special_tokens(self) -> list[str]:
        """Named special tokens then extra special tokens, unique, as strings."""
        seen, out = set(), []
        values = [self._special_tokens_map.get(a) for a in self.SPECIAL_TOKENS_ATTRIBUTES]
        for value in values + list(self._extra_special_tokens):
            if value is not None and str(value) not in seen:
                seen.add(str(value))
                out.append(str(value))
        return out

    @property
    def all_special_ids(self) -> list[int]:
        return self.convert_tokens_to_ids(self.all_special_tokens)

    @property
    def pad_token_type_id(self) -> int:
        return self._pad_token_type_id

    # ------------------------------------------------------------------------------------------
    # Post-processor (add_bos_token / add_eos_token)
    # ------------------------------------------------------------------------------------------
    @property
    def add_bos_token(self) -> bool:
        return self.__dict__.get("_add_bos_token", False)

    @add_bos_token.setter
    def add_bos_token(self, value: bool) -> None:
        object.__setattr__(self, "_add_bos_token", value)
        self.update_post_processor()

    @property
    def add_eos_token(self) -> bool:
        return self.__dict__.get("_add_eos_token", False)

    @add_eos_token.setter
    def add_eos_token(self, value: bool) -> None:
        object.__setattr__(self, "_add_eos_token", value)
        self.update_post_processor()

    def update_post_processor(self) -> None:
        """Replaces the backend post-processor by one adding bos/eos per add_bos_token/add_eos_token."""
        bos, eos = self.bos_token, self.eos_token
        if bos is None and self.add_bos_token:
            object.__setattr__(self, "_add_bos_token", False)
        if eos is None and self.add_eos_token:
            object.__setattr__(self, "_add_eos_token", False)
        add_bos, add_eos = self.add_bos_token, self.add_eos_token
        single = f"{(bos + ':0 ') if add_bos else ''}$A:0{(' ' + eos + ':0') if add_eos else ''}"
        pair = f"{single}{(' ' + bos + ':1') if add_bos else ''} $B:1{(' ' + eos + ':1') if add_eos else ''}"
        special = []
        if add_bos:
            special.append((bos, self.bos_token_id))
        if add_eos:
            special.append((eos, self.eos_token_id))
        self._tokenizer.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                                       special_tokens=special)

    # ------------------------------------------------------------------------------------------
    # Vocabulary
    # ------------------------------------------------------------------------------------------
    @property
    def backend_tokenizer(self) -> RustTokenizer:
        """The `tokenizers.Tokenizer` doing the work."""
        return self._tokenizer

    @property
    def is_fast(self) -> bool:
        return True

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary (without added tokens)."""
        return self._tokenizer.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        """Size of the full vocabulary, added tokens included."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def __bool__(self) -> bool:
        return True

    def get_vocab(self) -> dict[str, int]:
        return self._tokenizer.get_vocab(with_added_tokens=True)

    @property
    def vocab(self) -> dict[str, int]:
        return self.get_vocab()

    @property
    def added_tokens_decoder(self) -> dict[int, AddedToken]:
        return self._tokenizer.get_added_tokens_decoder()

    @property
    def added_tokens_encoder(self) -> dict[str, int]:
        return {t.content: i for i, t in sorted(self.added_tokens_decoder.items(), key=lambda kv: kv[0])}

    def get_added_vocab(self) -> dict[str, int]:
        return self.added_tokens_encoder

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | list[int]:
        """Token string(s) to id(s); unknown tokens map to unk_token_id (None without an unk token)."""
        if isinstance(tokens, str):
            return self._token_to_id(tokens)
        return [self._token_to_id(t) for t in tokens]

    def _token_to_id(self, token: str) -> int | None:
        index = self._tokenizer.token_to_id(token)
        return self.unk_token_id if index is None else index

    def convert_ids_to_tokens(self, ids: int | list[int], skip_special_tokens: bool = False) -> str | list[str]:
        """Id(s) to token string(s); skip_special_tokens drops all_special_ids."""
        if isinstance(ids, int):
            _check_ids([ids], "convert_ids_to_tokens")
            return self._tokenizer.id_to_token(ids)
        ids = [int(i) for i in ids]
        _check_ids(ids, "convert_ids_to_tokens")
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._tokenizer.id_to_token(i) for i in ids if i not in skip]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        decoder = self._tokenizer.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return self._tokenizer.num_special_tokens_to_add(pair)

    @property
    def max_len_single_sentence(self) -> int:
        return self.model_max_length - self.num_special_tokens_to_add(pair=False)

    @property
    def max_len_sentences_pair(self) -> int:
        return self.model_max_length - self.num_special_tokens_to_add(pair=True)

    def add_tokens(self, new_tokens, special_tokens: bool = False) -> int:
        """Adds tokens (str or AddedToken) to the vocabulary; returns how many were new."""
        if not new_tokens:
            return 0
        if not isinstance(new_tokens, (list, tuple)):
            new_tokens = [new_tokens]
        if special_tokens:
            return self._tokenizer.add_special_tokens(list(new_tokens))
        return self._tokenizer.add_tokens(list(new_tokens))

    def add_special_tokens(self, special_tokens_dict: dict, replace_extra_special_tokens: bool = True) -> int:
        """Sets named special tokens (and extra_special_tokens) and adds them to the vocabulary."""
        if not special_tokens_dict:
            return 0
        special_tokens_dict = dict(special_tokens_dict)
        if "additional_special_tokens" in special_tokens_dict:
            special_tokens_dict.setdefault("extra_special_tokens", special_tokens_dict.pop("additional_special_tokens"))
        allowed = set(self.SPECIAL_TOKENS_ATTRIBUTES) | {"extra_special_tokens"}
        to_add = []
        for key, value in special_tokens_dict.items():
            if key not in allowed:
                raise ValueError(f"Key {key} is not a valid special token. Valid keys are: {allowed}")
            if key == "extra_special_tokens":
                if not isinstance(value, (list, tuple)) or not all(isinstance(t, (str, AddedToken)) for t in value):
                    raise ValueError(f"Tokens {value} for key {key} should all be str or AddedToken instances")
                new = [AddedToken(t, rstrip=False, lstrip=False, normalized=False, special=True)
                       if isinstance(t, str) else t
                       for t in value if replace_extra_special_tokens or str(t) not in self.extra_special_tokens]
                if replace_extra_special_tokens and new:
                    object.__setattr__(self, "_extra_special_tokens", list(new))
                else:
                    self._extra_special_tokens.extend(new)
                to_add.extend(new)
            else:
                if not isinstance(value, (str, AddedToken)):
                    raise ValueError(f"Token {value} for key {key} should be a str or an AddedToken instance")
                if isinstance(value, str):
                    value = AddedToken(value, rstrip=False, lstrip=False, normalized=False, special=True)
                setattr(self, key, value)
                to_add.append(value)
        return self.add_tokens(to_add, special_tokens=True)

    # ------------------------------------------------------------------------------------------
    # Encoding
    # ------------------------------------------------------------------------------------------
    def _strategies(self, padding=False, truncation=None, max_length=None, pad_to_multiple_of=None,
                    verbose=True) -> tuple[str, str, int | None]:
        if max_length is not None and padding is False and truncation is None:
            truncation = "longest_first"
        pad = _padding_strategy(padding)
        if padding is True and verbose and max_length is not None and truncation in (None, False, "do_not_truncate"):
            warnings.warn("`max_length` is ignored when `padding`=`True` and there is no truncation strategy. "
                          "To pad to max length, use `padding='max_length'`.")
        trunc = _truncation_strategy(truncation)
        if max_length is None:
            if pad == "max_length":
                if self.model_max_length > LARGE_INTEGER:
                    pad = "do_not_pad"
                else:
                    max_length = self.model_max_length
            if trunc != "do_not_truncate":
                if self.model_max_length > LARGE_INTEGER:
                    trunc = "do_not_truncate"
                else:
                    max_length = self.model_max_length
        if pad != "do_not_pad" and (self.pad_token is None or self.pad_token_id < 0):
            raise ValueError("Asking to pad but the tokenizer does not have a padding token. Please select a token "
                             "to use as `pad_token` (`tokenizer.pad_token = tokenizer.eos_token` e.g.).")
        if (trunc != "do_not_truncate" and pad != "do_not_pad" and pad_to_multiple_of is not None
                and max_length is not None and max_length % pad_to_multiple_of != 0):
            raise ValueError(f"Truncation and padding are both activated but truncation length ({max_length}) is "
                             f"not a multiple of pad_to_multiple_of ({pad_to_multiple_of}).")
        return pad, trunc, max_length

    def _set_truncation_and_padding(self, pad: str, trunc: str, max_length, stride, pad_to_multiple_of,
                                    padding_side) -> None:
        current_trunc, current_pad = self._tokenizer.truncation, self._tokenizer.padding
        if trunc == "do_not_truncate":
            if current_trunc is not None:
                self._tokenizer.no_truncation()
        else:
            target = {"max_length": max_length, "stride": stride, "strategy": trunc,
                      "direction": self.truncation_side}
            current = None if current_trunc is None else {k: current_trunc.get(k) for k in target}
            if current != target:
                self._tokenizer.enable_truncation(**target)
        if pad == "do_not_pad":
            if current_pad is not None:
                self._tokenizer.no_padding()
        else:
            target = {"length": max_length if pad == "max_length" else None,
                      "direction": padding_side if padding_side is not None else self.padding_side,
                      "pad_id": self.pad_token_id, "pad_token": self.pad_token,
                      "pad_type_id": self.pad_token_type_id, "pad_to_multiple_of": pad_to_multiple_of}
            if current_pad != target:
                self._tokenizer.enable_padding(**target)

    def _encode(self, text, text_pair=None, add_special_tokens: bool = True, pad: str = "do_not_pad",
                trunc: str = "do_not_truncate", max_length: int | None = None, stride: int = 0,
                is_split_into_words: bool = False, pad_to_multiple_of: int | None = None,
                padding_side: str | None = None, return_tensors: str | None = None,
                return_token_type_ids: bool | None = None, return_attention_mask: bool | None = None,
                return_overflowing_tokens: bool = False, return_special_tokens_mask: bool = False,
                return_offsets_mapping: bool = False, return_length: bool = False, verbose: bool = True,
                split_special_tokens: bool | None = None, **unused) -> BatchEncoding:
        if unused and not self.deprecation_warnings.get(f"unused-{sorted(unused)}"):
            # transformers ignores unknown keyword arguments silently; say it once at least.
            logger.warning(f"Keyword arguments {sorted(unused)} are not recognized by the tokenizer and are ignored")
            self.deprecation_warnings[f"unused-{sorted(unused)}"] = True
        for t in (text, text_pair):
            if t is not None and not _is_valid_text_input(t):
                raise ValueError("text input must be of type `str` (single example), `list[str]` (batch or single "
                                 "pretokenized example) or `list[list[str]]` (batch of pretokenized examples).")
        if is_split_into_words:
            is_batched = isinstance(text, (list, tuple)) and bool(text) and isinstance(text[0], (list, tuple))
        else:
            is_batched = isinstance(text, (list, tuple))
        if is_batched:
            if isinstance(text_pair, str):
                raise TypeError("when tokenizing batches of text, `text_pair` must be a list or tuple with the same "
                                "length as `text`.")
            if text_pair is not None and len(text) != len(text_pair):
                raise ValueError(f"batch length of `text`: {len(text)} does not match batch length of `text_pair`: "
                                 f"{len(text_pair)}.")
            inputs = list(zip(text, text_pair)) if text_pair is not None else text
        else:
            inputs = [(text, text_pair)] if text_pair else [text]

        self._set_truncation_and_padding(pad, trunc, max_length, stride, pad_to_multiple_of, padding_side)
        if split_special_tokens is None:
            split_special_tokens = self.split_special_tokens
        if self._tokenizer.encode_special_tokens != split_special_tokens:
            self._tokenizer.encode_special_tokens = split_special_tokens
        encodings = self._tokenizer.encode_batch(inputs, add_special_tokens=add_special_tokens,
                                                 is_pretokenized=is_split_into_words)

        if return_token_type_ids is None:
            return_token_type_ids = "token_type_ids" in self.model_input_names
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        data: dict[str, list] = {"input_ids": []}
        if return_token_type_ids:
            data["token_type_ids"] = []
        if return_attention_mask:
            data["attention_mask"] = []
        if return_special_tokens_mask:
            data["special_tokens_mask"] = []
        if return_offsets_mapping:
            data["offset_mapping"] = []
        if return_length:
            data["length"] = []
        flat, overflow_to_sample = [], []
        for i, encoding in enumerate(encodings):
            group = [encoding] + list(encoding.overflowing) if return_overflowing_tokens else [encoding]
            for e in group:
                data["input_ids"].append(e.ids)
                if return_token_type_ids:
                    data["token_type_ids"].append(e.type_ids)
                if return_attention_mask:
                    data["attention_mask"].append(e.attention_mask)
                if return_special_tokens_mask:
                    data["special_tokens_mask"].append(e.special_tokens_mask)
                if return_offsets_mapping:
                    data["offset_mapping"].append(e.offsets)
                if return_length:
                    data["length"].append(len(e.ids))
                flat.append(e)
                overflow_to_sample.append(i)
        if return_overflowing_tokens:
            data["overflow_to_sample_mapping"] = overflow_to_sample
        for ids in data["input_ids"]:
            self._warn_if_too_long(ids, max_length, verbose)

        out = BatchEncoding(data, flat, tensor_type=return_tensors)
        if not is_batched and return_tensors is None and not return_overflowing_tokens:
            out = BatchEncoding({k: (v[0] if len(v) > 0 and isinstance(v[0], list) else v) for k, v in out.items()},
                                out.encodings)
        return out

    def _warn_if_too_long(self, ids: list[int], max_length: int | None, verbose: bool) -> None:
        if max_length is None and len(ids) > self.model_max_length and verbose and self.model_max_length != 0:
            if not self.deprecation_warnings.get("sequence-length-is-longer-than-the-specified-maximum"):
                logger.warning(f"Token indices sequence length is longer than the specified maximum sequence length "
                               f"for this model ({len(ids)} > {self.model_max_length}). Running this sequence through "
                               "the model will result in indexing errors")
            self.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True

    def __call__(self, text: str | list[str] | list[list[str]] | None = None,
                 text_pair: str | list[str] | list[list[str]] | None = None,
                 text_target: str | list[str] | None = None, text_pair_target: str | list[str] | None = None,
                 add_special_tokens: bool = True, padding: bool | str = False, truncation: bool | str | None = None,
                 max_length: int | None = None, stride: int = 0, is_split_into_words: bool = False,
                 pad_to_multiple_of: int | None = None, padding_side: str | None = None,
                 return_tensors: str | None = None, return_token_type_ids: bool | None = None,
                 return_attention_mask: bool | None = None, return_overflowing_tokens: bool = False,
                 return_special_tokens_mask: bool = False, return_offsets_mapping: bool = False,
                 return_length: bool = False, verbose: bool = True, tokenizer_kwargs: dict | None = None,
                 **kwargs) -> BatchEncoding:
        """Tokenizes one text, a batch of texts, or (batches of) text pairs.

        Returns a BatchEncoding with input_ids and attention_mask (lists; tensors with
        return_tensors="pt"/"np", batched even for one text). padding: False | True/"longest" |
        "max_length"; truncation: False | True/"longest_first" | "only_first" | "only_second";
        max_length defaults to model_max_length. The sides come from padding_side /
        truncation_side (per call for padding).
        """
        all_kwargs = dict(add_special_tokens=add_special_tokens, padding=padding, truncation=truncation,
                          max_length=max_length, stride=stride, is_split_into_words=is_split_into_words,
                          pad_to_multiple_of=pad_to_multiple_of, padding_side=padding_side,
                          return_tensors=return_tensors, return_token_type_ids=return_token_type_ids,
                          return_attention_mask=return_attention_mask,
                          return_overflowing_tokens=return_overflowing_tokens,
                          return_special_tokens_mask=return_special_tokens_mask,
                          return_offsets_mapping=return_offsets_mapping, return_length=return_length,
                          split_special_tokens=kwargs.pop("split_special_tokens", self.split_special_tokens),
                          verbose=verbose)
        max_target_length = kwargs.pop("max_target_length", None)
        if tokenizer_kwargs is not None:
            all_kwargs.update(tokenizer_kwargs)
        all_kwargs.update(kwargs)
        if text is None and text_target is None:
            raise ValueError("You need to specify either `text` or `text_target`.")
        pad, trunc, max_length = self._strategies(all_kwargs.pop("padding", False), all_kwargs.pop("truncation", None),
                                                  all_kwargs.pop("max_length", None),
                                                  all_kwargs.get("pad_to_multiple_of"), all_kwargs.get("verbose", True))
        encodings = targets = None
        if text is not None:
            encodings = self._encode(text, text_pair, pad=pad, trunc=trunc, max_length=max_length, **all_kwargs)
        if text_target is not None:
            targets = self._encode(text_target, text_pair_target, pad=pad, trunc=trunc,
                                   max_length=max_target_length if max_target_length is not None else max_length,
                                   **all_kwargs)
        if targets is None:
            return encodings
        if encodings is None:
            return targets
        encodings["labels"] = targets["input_ids"]
        return encodings

    def encode(self, text, text_pair=None, add_special_tokens: bool = True, padding: bool | str = False,
               truncation: bool | str | None = None, max_length: int | None = None, stride: int = 0,
               padding_side: str | None = None, return_tensors: str | None = None, **kwargs):
        """Ids of one text (list[int]), of a batch (list[list[int]]), or a [B, T] tensor with return_tensors."""
        pad, trunc, max_length = self._strategies(padding, truncation, max_length,
                                                  kwargs.get("pad_to_multiple_of"), kwargs.get("verbose", True))
        return self._encode(text, text_pair, add_special_tokens=add_special_tokens, pad=pad, trunc=trunc,
                            max_length=max_length, stride=stride, padding_side=padding_side,
                            return_tensors=return_tensors, **kwargs)["input_ids"]

    def tokenize(self, text: str, pair: str | None = None, add_special_tokens: bool = False, **kwargs) -> list[str]:
        """Token strings of a text (no special tokens unless add_special_tokens)."""
        return self._encode(text, pair, add_special_tokens=add_special_tokens, **kwargs).tokens()

    # ------------------------------------------------------------------------------------------
    # Padding already-tokenized inputs
    # ------------------------------------------------------------------------------------------
    def pad(self, encoded_inputs, padding: bool | str = True, max_length: int | None = None,
            pad_to_multiple_of: int | None = None, padding_side: str | None = None,
            return_attention_mask: bool | None = None, return_tensors: str | None = None,
            verbose: bool = True) -> BatchEncoding:
        """Pads a BatchEncoding / dict of (lists of) ids / list of such dicts (e.g. in a collate_fn)."""
        if isinstance(encoded_inputs, (list, tuple)) and encoded_inputs and isinstance(encoded_inputs[0], Mapping):
            encoded_inputs = {k: [ex[k] for ex in encoded_inputs] for k in encoded_inputs[0].keys()}
        else:
            encoded_inputs = dict(encoded_inputs)
        preserved_mask = None
        if "attention_mask" in encoded_inputs:
            mask = encoded_inputs["attention_mask"]
            if isinstance(mask, list) and mask and getattr(mask[0], "ndim", 0) > 1:
                preserved_mask = encoded_inputs.pop("attention_mask")
        main = self.model_input_names[0]
        if main not in encoded_inputs:
            raise ValueError(f"You should supply an encoding or a list of encodings to this method that includes "
                             f"{main}, but you provided {list(encoded_inputs.keys())}")
        required = encoded_inputs[main]
        if required is None or (isinstance(required, Sized) and len(required) == 0):
            if return_attention_mask:
                encoded_inputs["attention_mask"] = []
            return encoded_inputs
        first = required[0]
        if isinstance(first, (list, tuple)):
            for item in required:
                if len(item) != 0:
                    first = item[0]
                    break
        if not isinstance(first, (int, list, tuple)):
            if is_torch_tensor(first):
                return_tensors = "pt" if return_tensors is None else return_tensors
            elif hasattr(first, "shape") or type(first).__module__ == "numpy":
                return_tensors = "np" if return_tensors is None else return_tensors
            else:
                raise ValueError(f"type of {first} unknown: {type(first)}. Should be one of a python, numpy, or "
                                 "pytorch object.")
            encoded_inputs = {k: to_py_obj(v) for k, v in encoded_inputs.items()}
        pad, _, max_length = self._strategies(padding=padding, max_length=max_length, verbose=verbose)
        required = encoded_inputs[main]
        if required and not isinstance(required[0], (list, tuple)):
            out = self._pad(encoded_inputs, max_length, pad, pad_to_multiple_of, padding_side, return_attention_mask)
            return BatchEncoding(out, tensor_type=return_tensors)
        batch_size = len(required)
        if not all(len(v) == batch_size for v in encoded_inputs.values()):
            raise ValueError("Some items in the output dictionary have a different batch size than others.")
        if pad == "longest":
            max_length = max(len(x) for x in required)
            pad = "max_length"
        batch: dict[str, list] = {}
        for i in range(batch_size):
            row = self._pad({k: v[i] for k, v in encoded_inputs.items()}, max_length, pad, pad_to_multiple_of,
                            padding_side, return_attention_mask)
            for k, v in row.items():
                batch.setdefault(k, []).append(v)
        if preserved_mask is not None:
            sample = preserved_mask[0]
            if is_torch_tensor(sample):
                import torch  # noqa: PLC0415
                batch["attention_mask"] = torch.stack(preserved_mask)
            else:
                import numpy as np  # noqa: PLC0415
                batch["attention_mask"] = np.stack(preserved_mask)
        return BatchEncoding(batch, tensor_type=return_tensors)

    def _pad(self, inputs: dict, max_length, pad: str, pad_to_multiple_of, padding_side, return_attention_mask):
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        main = self.model_input_names[0]
        required = inputs[main]
        if pad == "longest":
            max_length = len(required)
        if max_length is not None and pad_to_multiple_of is not None and max_length % pad_to_multiple_of != 0:
            max_length = (max_length // pad_to_multiple_of + 1) * pad_to_multiple_of
        needs_padding = pad != "do_not_pad" and len(required) != max_length
        if return_attention_mask and "attention_mask" not in inputs:
            inputs["attention_mask"] = [1] * len(required)
        if needs_padding:
            n = max_length - len(required)
            side = padding_side if padding_side is not None else self.padding_side
            if side not in ("left", "right"):
                raise ValueError(f"Invalid padding side: {side}")

            def padded(seq, value):
                return seq + [value] * n if side == "right" else [value] * n + seq
            if return_attention_mask:
                inputs["attention_mask"] = padded(inputs["attention_mask"], 0)
            if "token_type_ids" in inputs:
                inputs["token_type_ids"] = padded(inputs["token_type_ids"], self.pad_token_type_id)
            if "special_tokens_mask" in inputs:
                inputs["special_tokens_mask"] = padded(inputs["special_tokens_mask"], 1)
            inputs[main] = padded(required, self.pad_token_id)
        return inputs

    # ------------------------------------------------------------------------------------------
    # Decoding
    # ------------------------------------------------------------------------------------------
    def decode(self, token_ids, skip_special_tokens: bool = False, **kwargs) -> str | list[str]:
        """Text of one sequence of ids (int, list, 1-D tensor/array); a list of texts for a batch.

        skip_special_tokens drops the tokens the backend marks special; clean_up_tokenization_spaces
        (default: the config's) is ignored for BPE models, as in transformers.
        """
        token_ids = to_py_obj(token_ids)
        if isinstance(token_ids, (list, tuple)) and token_ids and isinstance(token_ids[0], (list, tuple)):
            clean = kwargs.pop("clean_up_tokenization_spaces", None)
            return [self._decode(seq, skip_special_tokens, clean, **kwargs) for seq in token_ids]
        return self._decode(token_ids, skip_special_tokens, **kwargs)

    def batch_decode(self, sequences, skip_special_tokens: bool = False,
                     clean_up_tokenization_spaces: bool | None = None, **kwargs) -> list[str]:
        """Texts of a batch of sequences ([B, T] tensor/array or list of lists)."""
        out = self.decode(sequences, skip_special_tokens=skip_special_tokens,
                          clean_up_tokenization_spaces=clean_up_tokenization_spaces, **kwargs)
        return [out] if isinstance(out, str) else out

    def _decode(self, token_ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None,
                **kwargs) -> str:
        kwargs.pop("use_source_tokenizer", None)
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        if isinstance(token_ids, dict):
            token_ids = token_ids["input_ids"]
        _check_ids(token_ids, "decode")
        text = self._tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)
        clean = clean_up_tokenization_spaces if clean_up_tokenization_spaces is not None \
            else self.clean_up_tokenization_spaces
        if clean:
            if (type(self._tokenizer.model).__name__ == "BPE"
                    and not self.clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output):
                if not self.deprecation_warnings.get("bpe-clean-up"):
                    logger.warning("Ignoring clean_up_tokenization_spaces=True for a BPE tokenizer: the clean-up is "
                                   "designed for WordPiece and strips legitimate spaces before punctuation.")
                    self.deprecation_warnings["bpe-clean-up"] = True
            else:
                text = self.clean_up_tokenization(text)
        return text

    @staticmethod
    def clean_up_tokenization(text: str) -> str:
        """Removes spaces before punctuation and English contractions ("do n't" -> "don't")."""
        return (text.replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",")
                .replace(" ' ", "'").replace(" n't", "n't").replace(" 'm", "'m").replace(" 's", "'s")
                .replace(" 've", "'ve").replace(" 're", "'re"))

    def get_special_tokens_mask(self, token_ids_0: list[int], token_ids_1=None,
                                already_has_special_tokens: bool = False) -> list[int]:
        if not already_has_special_tokens:
            raise NotImplementedError("get_special_tokens_mask needs already_has_special_tokens=True; use "
                                      "return_special_tokens_mask=True when encoding instead")
        if token_ids_1 is not None:
            raise ValueError("You should not supply a second sequence if the provided sequence of ids is already "
                             "formatted with special tokens for the model.")
        special = set(self.all_special_ids)
        return [1 if int(t) in special else 0 for t in token_ids_0]

    # ------------------------------------------------------------------------------------------
    # Chat templates
    # ------------------------------------------------------------------------------------------
    def get_chat_template(self, chat_template: str | None = None, tools: list | None = None) -> str:
        """The template to use: a template string, the name of one of the model's templates, or the default."""
        if isinstance(self.chat_template, dict):
            templates = self.chat_template
            if chat_template is not None and chat_template in templates:
                chat_template = templates[chat_template]
            elif chat_template is None:
                if tools is not None and "tool_use" in templates:
                    chat_template = templates["tool_use"]
                elif "default" in templates:
                    chat_template = templates["default"]
                else:
                    raise ValueError("This model has multiple chat templates with no default specified! Please either "
                                     "pass a chat template or the name of the template you wish to use to the "
                                     f"`chat_template` argument. Available template names are {sorted(templates)}.")
        elif chat_template is None:
            if self.chat_template is None:
                raise ValueError("Cannot use chat template functions because tokenizer.chat_template is not set and "
                                 "no template argument was passed (see gemma4.GEMMA4_CHAT_TEMPLATE).")
            chat_template = self.chat_template
        return chat_template

    def apply_chat_template(self, conversation, tools: list | None = None, documents: list | None = None,
                            chat_template: str | None = None, add_generation_prompt: bool = False,
                            continue_final_message: bool | str = False, tokenize: bool = True,
                            padding: bool | str = False, truncation: bool = False, max_length: int | None = None,
                            return_tensors: str | None = None, return_dict: bool = False,
                            return_assistant_tokens_mask: bool = False, tokenizer_kwargs: dict | None = None,
                            **template_kwargs):
        """Renders a conversation (list of {"role", "content"} dicts) or a batch of them with the chat template.

        tokenize=False returns the rendered string (list of strings for a batch). tokenize=True
        tokenizes it without adding special tokens (the template writes them): ids (list, or a
        [B, T] tensor with return_tensors="pt"), or the whole BatchEncoding with return_dict=True.
        Extra keyword arguments (enable_thinking=True, ...) are template variables.

        Difference from transformers 5.17: return_dict defaults to False here (there: True), so that
        `ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt")` gives a
        tensor, as in transformers 4.x.
        """
        if not tokenize:
            return_dict = False
        if return_assistant_tokens_mask and not (return_dict and tokenize):
            raise ValueError("`return_assistant_tokens_mask=True` requires `return_dict=True` and `tokenize=True`")
        tokenizer_kwargs = tokenizer_kwargs or {}
        template = self.get_chat_template(chat_template, tools)
        if isinstance(conversation, (list, tuple)) and len(conversation) == 0:
            raise ValueError("Cannot apply chat template to an empty conversation. Provide at least one message.")
        if isinstance(conversation, (list, tuple)) and (isinstance(conversation[0], (list, tuple))
                                                        or hasattr(conversation[0], "messages")):
            conversations, is_batched = conversation, True
        else:
            conversations, is_batched = [conversation], False
        if continue_final_message:
            if add_generation_prompt:
                raise ValueError("continue_final_message and add_generation_prompt are not compatible. Use "
                                 "continue_final_message when you want the model to continue the final message, and "
                                 "add_generation_prompt when you want to add a header that will prompt it to start a "
                                 "new assistant message instead.")
            if return_assistant_tokens_mask:
                raise ValueError("continue_final_message is not compatible with return_assistant_tokens_mask.")
        variables = {**self.special_tokens_map, **template_kwargs}
        rendered, spans = render_chat_template(
            conversations, template, tools=tools, documents=documents, add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message, return_assistant_tokens_mask=return_assistant_tokens_mask,
            **variables)
        if not is_batched:
            rendered = rendered[0]
        if not tokenize:
            return rendered
        out = self(rendered, padding=padding, truncation=truncation, max_length=max_length,
                   add_special_tokens=False, return_tensors=return_tensors, **tokenizer_kwargs)
        if not return_dict:
            return out["input_ids"]
        if return_assistant_tokens_mask:
            input_ids = out["input_ids"] if (is_batched or return_tensors) else [out["input_ids"]]
            masks = []
            for i in range(len(input_ids)):
                mask = [0] * len(input_ids[i])
                for start_char, end_char in spans[i]:
                    start = out.char_to_token(i, start_char)
                    end = out.char_to_token(i, end_char - 1)
                    if start is None:
                        break
                    for t in range(start, end + 1 if end else len(input_ids[i])):
                        mask[t] = 1
                masks.append(mask)
            out["assistant_masks"] = masks if (is_batched or return_tensors) else masks[0]
            if return_tensors:
                out.convert_to_tensors(tensor_type=return_tensors)
        return out

    def encode_message_with_chat_template(self, message: dict, conversation_history: list | None = None,
                                          **kwargs) -> list[int]:
        """Ids of one message in the context of the conversation so far (for incremental chat)."""
        if "add_generation_prompt" in kwargs:
            raise ValueError("`encode_message_with_chat_template` does not support `add_generation_prompt`. Please "
                             "add the generation prompt separately.")
        if not conversation_history:
            return self.apply_chat_template([message], add_generation_prompt=False, tokenize=True,
                                            return_dict=False, **kwargs)
        tokens = self.apply_chat_template(conversation_history + [message], add_generation_prompt=False,
                                          tokenize=True, return_dict=False, **kwargs)
        prefix = self.apply_chat_template(conversation_history, add_generation_prompt=False, tokenize=True,
                                          return_dict=False, **kwargs)
        n = min(len(prefix), len(tokens))
        for i in range(n):
            if prefix[i] != tokens[i]:
                return tokens[i:]
        return tokens[n:]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name_or_path='{self.name_or_path}', vocab_size={self.vocab_size}, "
                f"model_max_length={self.model_max_length}, padding_side='{self.padding_side}', "
                f"truncation_side='{self.truncation_side}', special_tokens={self.special_tokens_map})")


class GemmaTokenizerFast(PreTrainedTokenizerFast):
    """transformers' GemmaTokenizer defaults: left padding (the pipeline is rebuilt in auto.py)."""

    padding_side = "left"
