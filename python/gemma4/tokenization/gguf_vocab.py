"""A GemmaTokenizerFast from the vocabulary of a Gemma 4 GGUF file (AutoTokenizer.from_pretrained(dir, gguf_file=)).

What llama.cpp's converter writes for Gemma 4 (Gemma4Model.set_vocab, gguf.LlamaHfVocab, SpecialVocab):
  tokenizer.ggml.model "gemma4"; tokens (the BPE pieces, "▁" for spaces, <0xNN> byte pieces) in id order;
  scores (all -1000: not used by BPE); token_type (1 normal, 3 control = transformers' named special
  tokens, 4 user-defined = the tool/channel tokens, 6 byte); merges ("a b"); bos / eos / unknown /
  padding / mask ids; add_bos_token; tokenizer.chat_template.

The pipeline is GemmaTokenizer's (pipeline.gemma_pipeline) around those tokens and merges, with <bos> added in
front as the original tokenizer.json's post-processor does when add_bos_token is true.

The file does not say which pieces were the original's added tokens: transformers' special-token list
misses the turn/think tokens and the <unusedN> placeholders, which come out "normal". So the added tokens
are the control, user-defined and unused pieces, plus the pieces of Gemma 4's own token table
(gemma4_format: control tokens, multimodal placeholders, <unusedN>), special except <unusedN>, as in the
released tokenizers. Added tokens are matched before BPE runs, so encoding equals the original's.
"""
from __future__ import annotations

import os
import re

from tokenizers import AddedToken, processors

from .pipeline import gemma_pipeline
from .gemma4_format import CONTROL_TOKENS, MODEL_SPECIFIC_TOKENS, MULTIMODAL_TOKENS
from .tokenizer_fast import GemmaTokenizerFast

__all__ = ["tokenizer_from_gguf"]

NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5
_UNUSED = re.compile(r"<unused\d+>$")
_TABLE = set(CONTROL_TOKENS.values()) | set(MULTIMODAL_TOKENS)


def _added(tokens: list[str], types: list[int]) -> dict[int, AddedToken]:
    added = {}
    for i, (text, kind) in enumerate(zip(tokens, types)):
        if kind in (CONTROL, USER_DEFINED, UNUSED) or text in _TABLE or _UNUSED.match(text):
            added[i] = AddedToken(text, special=not _UNUSED.match(text), normalized=False, lstrip=False,
                                  rstrip=False, single_word=False)
    return added


def tokenizer_from_gguf(path: str | os.PathLike, **kwargs) -> GemmaTokenizerFast:
    """The tokenizer of a Gemma 4 GGUF file; keyword arguments as AutoTokenizer.from_pretrained's."""
    from ..hf_format.gguf_config import GGUFFile  # noqa: PLC0415

    f = GGUFFile(path)
    if f.get("tokenizer.ggml.model") != "gemma4":
        raise f.error(f"is {f.get('tokenizer.ggml.model')!r}; Gemma 4's BPE vocabulary ('gemma4') is expected",
                      "tokenizer.ggml.model")
    tokens = f.require("tokenizer.ggml.tokens")
    types = f.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    if len(types) != len(tokens):
        raise f.error(f"{len(types)} types for {len(tokens)} tokens", "tokenizer.ggml.token_type")
    merges = []
    for i, m in enumerate(f.require("tokenizer.ggml.merges")):
        pair = m.split(" ")
        if len(pair) != 2:
            raise f.error(f"entry {i} {m!r:.40} is not two pieces", "tokenizer.ggml.merges")
        merges.append(tuple(pair))
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise f.error("a piece appears twice", "tokenizer.ggml.tokens")

    def token(name: str) -> str | None:
        i = f.get(f"tokenizer.ggml.{name}_token_id")
        if i is None:
            return None
        if not 0 <= i < len(tokens):
            raise f.error(f"{i} is not a token id (vocabulary of {len(tokens)})", f"tokenizer.ggml.{name}_token_id")
        return tokens[i]

    specials = {"bos_token": token("bos"), "eos_token": token("eos"), "unk_token": token("unknown"),
                "pad_token": token("padding"), "mask_token": token("mask")}
    if specials["unk_token"] is None:
        raise f.error("missing (byte fallback needs an unknown token)", "tokenizer.ggml.unknown_token_id")
    backend = gemma_pipeline(vocab, merges, specials["unk_token"])
    post = None
    if f.get("tokenizer.ggml.add_bos_token", True) and specials["bos_token"] is not None:
        bos = specials["bos_token"]
        post = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1",
                                             special_tokens=[(bos, vocab[bos])])
    added = _added(tokens, types)
    config = {k: added.get(vocab[v], v) for k, v in specials.items() if v is not None}
    model_specific = {k: v for k, v in MODEL_SPECIFIC_TOKENS.items() if v in vocab}
    if model_specific:
        config["model_specific_special_tokens"] = model_specific
    template = f.get("tokenizer.chat_template")
    if template is not None:
        config["chat_template"] = template
    config.update(kwargs)
    config["name_or_path"] = f.path
    return GemmaTokenizerFast(backend, added_tokens_decoder=added, post_processor=post, **config)
