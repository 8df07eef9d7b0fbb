"""AutoTokenizer.from_pretrained(dir, gguf_file=...): the vocabulary llama.cpp's converter writes for Gemma 4
(Gemma4Model.set_vocab: pieces, token types, merges, special ids, chat template), written here with the
`gguf` package from the default model's tokenizer, gives the same ids and renderings as that tokenizer."""
import json
import random
import re
from importlib import resources

import pytest

from gemma4 import default_model
from gemma4.tokenization import AutoTokenizer, GemmaTokenizerFast

gguf = pytest.importorskip("gguf")

from tests.quant.gguf_support import add_metadata  # noqa: E402  (after the skip: it imports gguf)

DIR = str(resources.files(default_model))
VISIBLE = {"<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>", '<|"|>'}
NAMED = ("bos", "eos", "unk", "pad", "mask")


def _write_vocab(path, drop=None):
    tok = json.load(open(f"{DIR}/tokenizer.json", encoding="utf-8"))
    config = json.load(open(f"{DIR}/tokenizer_config.json", encoding="utf-8"))
    pieces = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    assert [i for _, i in pieces] == list(range(len(pieces)))
    named = {config[f"{n}_token"] for n in NAMED} | {v for k, v in config.items() if k.endswith("_token")
                                                       and isinstance(v, str)}
    types = [4 if p in VISIBLE else 3 if p in named else 6 if re.fullmatch(r"<0x[0-9A-F]{2}>", p) else 1
             for p, _ in pieces]
    ids = {n: tok["model"]["vocab"][config[f"{n}_token"]] for n in NAMED}
    meta = {"tokenizer.ggml.model": "gemma4", "tokenizer.ggml.tokens": [p for p, _ in pieces],
            "tokenizer.ggml.scores": [-1000.0] * len(pieces), "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.merges": [" ".join(m) if isinstance(m, list) else m for m in tok["model"]["merges"]],
            "tokenizer.ggml.bos_token_id": ids["bos"], "tokenizer.ggml.eos_token_id": ids["eos"],
            "tokenizer.ggml.unknown_token_id": ids["unk"], "tokenizer.ggml.padding_token_id": ids["pad"],
            "tokenizer.ggml.mask_token_id": ids["mask"], "tokenizer.ggml.add_bos_token": True,
            "tokenizer.chat_template": open(f"{DIR}/chat_template.jinja", encoding="utf-8").read()}
    w = gguf.GGUFWriter(str(path), "gemma4")
    add_metadata(w, {k: v for k, v in meta.items() if k != drop})
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _random_text(rng):
    specials = ["<|turn>", "<turn|>", "<|think|>", "<|channel>", "<bos>", "<|image|>", "<|\"|>", "<unused3>"]
    words = ["Hello", " world", "  ", "\n", "\n\n", "\t", "日本語", "🤖", "naïve", "x", "12345", "<", "|>"] + specials
    return "".join(rng.choice(words) for _ in range(rng.randint(0, 30)))


def test_same_ids_specials_and_chat_template(tmp_path):
    _write_vocab(tmp_path / "vocab.gguf")
    ref = AutoTokenizer.from_pretrained(DIR)
    tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file="vocab.gguf")
    assert type(tok) is GemmaTokenizerFast and tok.padding_side == ref.padding_side
    rng = random.Random()
    for _ in range(200):
        text = _random_text(rng)
        ids = ref(text).input_ids
        assert tok(text).input_ids == ids, text
        assert tok.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)
    assert tok.all_special_tokens == ref.all_special_tokens
    assert {i: (str(t), t.special) for i, t in tok.added_tokens_decoder.items()} == \
        {i: (str(t), t.special) for i, t in ref.added_tokens_decoder.items()}
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Why?"}]
    assert tok.apply_chat_template(messages, add_generation_prompt=True) == \
        ref.apply_chat_template(messages, add_generation_prompt=True)


def test_missing_merges_names_file_and_key(tmp_path):
    from gemma4.errors import CheckpointError

    _write_vocab(tmp_path / "vocab.gguf", drop="tokenizer.ggml.merges")
    with pytest.raises(CheckpointError, match="vocab.gguf") as e:
        AutoTokenizer.from_pretrained(tmp_path, gguf_file="vocab.gguf")
    assert e.value.key == "tokenizer.ggml.merges"
