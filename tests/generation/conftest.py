"""Fixtures for the generation tests: transformers 5.17 oracle models (perturbed random weights) saved
to disk and loaded back as gemma4 models, and a small tokenizer built with the `tokenizers` library."""
import itertools
import json
import os
import string

import pytest
import torch
from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers import models as tokenizer_models

import gemma4
from tests.oracle import make_hf_model, save_hf

PRESETS = ["tiny-e2b", "tiny-e4b", "tiny-31b", "tiny-26b-a4b", "tiny-12b"]  # tiny-12b: gemma4_unified_text
WINDOW = 8  # the tiny presets' sliding window


def build_tokenizer(vocab_size: int = 512) -> Tokenizer:
    """A SentencePiece-like (Metaspace) unigram tokenizer with exactly `vocab_size` tokens: ids 0-3 are
    <pad> <eos> <bos> <unk> as in Gemma; single characters (so any text encodes), a newline, two CJK
    characters (streamer flush rules), pieces that make stop strings span tokens, syllables."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    pieces = ["▁", "\n", "中", "文"] + list(string.ascii_lowercase) + ["▁" + c for c in string.ascii_lowercase]
    pieces += ["stop", "▁stop", "st", "op", "opera", "pper", "▁end", "END", "!", ".", ","]
    for a, b in itertools.product("aeiourstln", "aeioustnm"):
        for p in (a + b, "▁" + a + b):
            if p not in pieces:
                pieces.append(p)
    for a, b, c in itertools.product("bcdfghklmnprstvw", "aeiou", "nrstlm"):
        if len(pieces) + len(specials) >= vocab_size:
            break
        if "▁" + a + b + c not in pieces:
            pieces.append("▁" + a + b + c)
    vocab = [(s, 0.0) for s in specials] + [(p, -1.0 - 0.01 / len(p)) for p in pieces]
    tok = Tokenizer(tokenizer_models.Unigram(vocab, unk_id=3))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tok.add_special_tokens(specials)
    assert tok.get_vocab_size() == vocab_size
    return tok


def save_tokenizer(directory) -> None:
    build_tokenizer().save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<bos>", "eos_token": "<eos>",
                   "pad_token": "<pad>", "unk_token": "<unk>"}, f)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tokenizer")
    save_tokenizer(d)
    return d


@pytest.fixture(scope="session")
def tokenizers_pair(tokenizer_dir):
    """(ours: gemma4.AutoTokenizer, theirs: transformers.AutoTokenizer) over the same tokenizer.json."""
    import transformers

    ours = gemma4.AutoTokenizer.from_pretrained(tokenizer_dir)
    return ours, transformers.AutoTokenizer.from_pretrained(tokenizer_dir)


_MODELS: dict = {}


def model_pair(preset: str, tmp_path_factory):
    """(transformers model, gemma4 model, directory) for a preset, built once per session."""
    if preset not in _MODELS:
        g = torch.Generator().manual_seed(1234 + PRESETS.index(preset) if preset in PRESETS else 99)
        hf = make_hf_model(preset, torch.float32, generator=g)
        path = tmp_path_factory.mktemp(preset)
        save_hf(hf, path, layout="causal")
        ours = gemma4.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, progress=False)
        _MODELS[preset] = (hf, ours, path)
    return _MODELS[preset]


@pytest.fixture(scope="session", params=PRESETS)
def models(request, tmp_path_factory):
    return model_pair(request.param, tmp_path_factory)


@pytest.fixture(scope="session")
def e2b(tmp_path_factory):
    return model_pair("tiny-e2b", tmp_path_factory)


def random_prompts(lengths, vocab: int = 512, generator=None):
    """Left-padded batch: each row <bos> + random ids (no special ids), padding id 0, and its mask."""
    L = max(lengths)
    ids = torch.zeros(len(lengths), L, dtype=torch.long)
    mask = torch.zeros(len(lengths), L, dtype=torch.long)
    rows = []
    for i, n in enumerate(lengths):
        row = torch.randint(4, vocab, (n,), generator=generator)
        row[0] = 2
        ids[i, L - n:] = row
        mask[i, L - n:] = 1
        rows.append(row)
    return ids, mask, rows
