"""Shared pieces of the training tests: small models and a small tokenizer made on the spot."""
from __future__ import annotations

import codecs
import contextlib
import io
import json
import os

import torch

import gemma4

with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints the text
    import this

S, F = "sliding_attention", "full_attention"

# A short English text that every Python ships (the Zen of Python, rot13-encoded in the `this` module).
ZEN = codecs.decode(this.s, "rot13")


def small_config(preset: str = "tiny-e2b", **overrides):
    """A 4-layer version of a tiny preset (sliding, full, then two KV-shared layers reading them):
    every feature of the preset, fewer layers, so torch.compile takes seconds rather than minutes."""
    base = dict(num_hidden_layers=4, layer_types=[S, F, S, F])
    if preset in ("tiny-e2b", "tiny-e4b"):
        base["num_kv_shared_layers"] = 2
    base.update(overrides)
    return gemma4.get_preset(preset, **base)


def randomize_norms_(model: torch.nn.Module) -> torch.nn.Module:
    """Norm weights away from one so that no gradient hides behind a weight of one."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


def make_tokenizer(folder: str, text: str = ZEN, vocab_size: int = 300) -> str:
    """Train a byte-level BPE tokenizer on `text` with the `tokenizers` library and save it as a
    Hugging Face tokenizer folder whose special ids match the tiny presets (<pad> 0, <eos> 1, <bos> 2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: PLC0415

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<eos>", "<bos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([text], trainer=trainer)
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
                   "tokenizer_class": "PreTrainedTokenizerFast"}, f)
    return folder
