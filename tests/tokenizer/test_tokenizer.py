"""gemma4.AutoTokenizer against transformers 5.17's AutoTokenizer on the same directories.

The directories are built in code (tests/tokenizer/fixtures.py); inputs are fresh random text
each run (seeded by tests/conftest.py: rerun a failure with GEMMA4_TEST_SEED=<seed>).
"""
from __future__ import annotations

import json
import os
import pickle
import random
import subprocess
import sys

import jinja2
import numpy as np
import pytest
import torch

from gemma4.tokenization import (GEMMA4_CHAT_TEMPLATE, AutoTokenizer, BatchEncoding, TokenizerLoadError,
                                 get_json_schema)
from tests.tokenizer import fixtures

transformers = pytest.importorskip("transformers")
HF = transformers.AutoTokenizer

GEMMA_VARIANTS = ("gemma", "gemma_cfg")
VARIANTS = fixtures.VARIANTS


# ----------------------------------------------------------------------------------------------
# Fixtures and helpers
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    return {v: fixtures.build(v, str(root / v)) for v in VARIANTS}


@pytest.fixture(scope="session")
def pairs(dirs):
    """variant -> (ours, theirs), loaded once per session; tests that mutate a tokenizer load their own."""
    return {v: (AutoTokenizer.from_pretrained(d), HF.from_pretrained(d)) for v, d in dirs.items()}


def rng() -> random.Random:
    return random.Random(random.randrange(2**31))  # seeded per test by conftest


def specials_of(theirs) -> list[str]:
    return theirs.all_special_tokens + ["<unused3>", "<sep>", "<|im_start|>", "<|tool>", "<|turn>", "[BOS]"]


def texts(r: random.Random, theirs, n: int, max_words: int = 24) -> list[str]:
    return [fixtures.random_text(r, specials_of(theirs), max_words) for _ in range(n)]


def assert_same(ours, theirs, what=""):
    """Same keys, same values, same container types (list / torch.Tensor / np.ndarray)."""
    if isinstance(theirs, transformers.BatchEncoding):
        assert isinstance(ours, BatchEncoding), (what, type(ours))
        assert list(ours.keys()) == list(theirs.keys()), (what, list(ours.keys()), list(theirs.keys()))
        for k in theirs.keys():
            assert_same(ours[k], theirs[k], f"{what}[{k}]")
    elif isinstance(theirs, torch.Tensor):
        assert isinstance(ours, torch.Tensor), (what, type(ours))
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, (what, ours.dtype, theirs.dtype,
                                                                             ours.shape, theirs.shape)
        assert torch.equal(ours, theirs), what
    elif isinstance(theirs, np.ndarray):
        assert isinstance(ours, np.ndarray), (what, type(ours))
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, what
        if theirs.dtype == object:
            assert all(np.array_equal(a, b) for a, b in zip(ours, theirs)), what
        else:
            assert np.array_equal(ours, theirs), what
    else:
        assert type(ours) is type(theirs), (what, type(ours), type(theirs))
        assert ours == theirs, what


# ----------------------------------------------------------------------------------------------
# Loading and vocabulary
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_loaded_state_matches(pairs, variant):
    ours, theirs = pairs[variant]
    for attr in ["vocab_size", "padding_side", "truncation_side", "model_max_length", "add_bos_token",
                 "add_eos_token", "special_tokens_map", "all_special_tokens", "all_special_ids",
                 "extra_special_tokens", "extra_special_tokens_ids", "chat_template", "model_input_names",
                 "clean_up_tokenization_spaces", "split_special_tokens", "pad_token_type_id",
                 "max_len_single_sentence", "max_len_sentences_pair"]:
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    for attr in ours.SPECIAL_TOKENS_ATTRIBUTES:  # bos_token, ..., image_token, boi_token, ...
        assert getattr(ours, attr) == getattr(theirs, attr), attr
        assert getattr(ours, attr + "_id") == getattr(theirs, attr + "_id"), attr + "_id"
    assert ours.SPECIAL_TOKENS_ATTRIBUTES == theirs.SPECIAL_TOKENS_ATTRIBUTES
    assert len(ours) == len(theirs)
    assert ours.get_vocab() == theirs.get_vocab()
    assert ours.get_added_vocab() == theirs.get_added_vocab()
    assert {i: repr(t) for i, t in ours.added_tokens_decoder.items()} == \
        {i: repr(t) for i, t in theirs.added_tokens_decoder.items()}
    assert json.loads(ours.backend_tokenizer.to_str()) == json.loads(theirs.backend_tokenizer.to_str())
    for pair in (False, True):
        assert ours.num_special_tokens_to_add(pair) == theirs.num_special_tokens_to_add(pair)


def test_gemma_layout(pairs):
    """The Gemma 4 control-token ids of gemma4-architecture.md section 4."""
    ours, _ = pairs["gemma"]
    expected = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<|tool>": 46, "<tool|>": 47, "<|tool_call>": 48,
                "<tool_call|>": 49, "<|tool_response>": 50, "<tool_response|>": 51, '<|"|>': 52, "<|think|>": 98,
                "<|channel>": 100, "<channel|>": 101, "<|turn>": 105, "<turn|>": 106, "\n": 107}
    assert {t: ours.convert_tokens_to_ids(t) for t in expected} == expected
    assert (ours.pad_token_id, ours.eos_token_id, ours.bos_token_id, ours.unk_token_id) == (0, 1, 2, 3)
    assert ours.image_token == "<|image|>" and ours.image_token_id == ours.convert_tokens_to_ids("<|image|>")
    assert ours.padding_side == "left"  # GemmaTokenizer's class default: ready for batched generation
    assert type(ours).__name__ == "GemmaTokenizerFast"


@pytest.mark.parametrize("variant", VARIANTS)
def test_convert_tokens_and_ids(pairs, variant):
    ours, theirs = pairs[variant]
    r = rng()
    n = len(theirs)
    ids = [r.randrange(n) for _ in range(50)] + theirs.all_special_ids
    r.shuffle(ids)
    for skip in (False, True):
        assert ours.convert_ids_to_tokens(ids, skip_special_tokens=skip) == \
            theirs.convert_ids_to_tokens(ids, skip_special_tokens=skip)
    assert ours.convert_ids_to_tokens(ids[0]) == theirs.convert_ids_to_tokens(ids[0])
    assert ours.convert_ids_to_tokens(torch.tensor(ids[:5]).tolist()) == theirs.convert_ids_to_tokens(ids[:5])
    tokens = theirs.convert_ids_to_tokens(ids) + ["definitely-not-a-token", "<|turn>", "▁the"]
    assert ours.convert_tokens_to_ids(tokens) == theirs.convert_tokens_to_ids(tokens)
    assert ours.convert_tokens_to_ids("<bos>") == theirs.convert_tokens_to_ids("<bos>")
    toks = theirs.tokenize("the quick brown fox")
    assert ours.convert_tokens_to_string(toks) == theirs.convert_tokens_to_string(toks)


# ----------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_encode_single(pairs, variant):
    ours, theirs = pairs[variant]
    r = rng()
    for text in texts(r, theirs, 40) + ["", " ", "\n\n", "<bos><bos>", "<|turn>user\nHi<turn|>"]:
        for add in (True, False):
            assert_same(ours(text, add_special_tokens=add), theirs(text, add_special_tokens=add), repr(text))
            assert ours.encode(text, add_special_tokens=add) == theirs.encode(text, add_special_tokens=add)
        assert ours.tokenize(text) == theirs.tokenize(text)
        assert ours.tokenize(text, add_special_tokens=True) == theirs.tokenize(text, add_special_tokens=True)
    text = texts(r, theirs, 1)[0]
    for kw in [dict(return_tensors="pt"), dict(return_tensors="np"), dict(return_attention_mask=False),
               dict(return_token_type_ids=True), dict(return_offsets_mapping=True, return_special_tokens_mask=True,
                                                      return_length=True),
               dict(split_special_tokens=True)]:
        assert_same(ours(text, **kw), theirs(text, **kw), str(kw))
    assert_same(ours.encode(text, return_tensors="pt"), theirs.encode(text, return_tensors="pt"))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("side", ["left", "right", None])
def test_encode_batch_padding(pairs, variant, side):
    ours, theirs = pairs[variant]
    r = rng()
    batch = texts(r, theirs, r.randint(1, 6)) + [""]
    r.shuffle(batch)
    longest = max(len(x) for x in theirs(batch)["input_ids"])
    cases = [dict(), dict(padding=True), dict(padding="longest"), dict(padding=True, return_tensors="pt"),
             dict(padding="max_length", max_length=longest + r.randint(0, 5), return_tensors="pt"),
             dict(padding=True, pad_to_multiple_of=8, return_tensors="pt"),
             dict(padding=True, add_special_tokens=False, return_tensors="np"),
             dict(padding=True, return_attention_mask=False),
             dict(padding=True, return_special_tokens_mask=True)]
    for kw in cases:
        if side is not None:
            kw = dict(kw, padding_side=side)
        assert_same(ours(batch, **kw), theirs(batch, **kw), str(kw))
        if "return_tensors" in kw:
            assert_same(ours.encode(batch, **kw), theirs.encode(batch, **kw), str(kw))


@pytest.mark.parametrize("variant", VARIANTS)
def test_padding_side_attribute(dirs, variant):
    ours, theirs = AutoTokenizer.from_pretrained(dirs[variant]), HF.from_pretrained(dirs[variant])
    r = rng()
    batch = texts(r, theirs, 4)
    for side in ("left", "right"):
        ours.padding_side = theirs.padding_side = side
        out = ours(batch, padding=True, return_tensors="pt")
        assert_same(out, theirs(batch, padding=True, return_tensors="pt"), side)
        mask = out["attention_mask"]
        edge = mask[:, 0] if side == "left" else mask[:, -1]
        assert edge.any() or mask.all()  # every row ends (left: starts) with the padding, if any
    loaded = AutoTokenizer.from_pretrained(dirs[variant], padding_side="left")
    assert loaded.padding_side == "left"
    assert_same(loaded(batch, padding=True), HF.from_pretrained(dirs[variant], padding_side="left")(batch, padding=True))


@pytest.mark.parametrize("variant", VARIANTS)
def test_truncation(pairs, variant):
    ours, theirs = pairs[variant]
    r = rng()
    batch = texts(r, theirs, 5, max_words=40)
    for kw in [dict(truncation=True, max_length=r.randint(1, 12)),
               dict(max_length=r.randint(3, 12)),  # max_length alone implies truncation
               dict(truncation=True),  # model_max_length (48 for gemma_cfg, unbounded otherwise)
               dict(truncation="longest_first", max_length=7, padding="max_length", return_tensors="pt"),
               dict(truncation=True, max_length=9, padding=True, padding_side="left", return_tensors="pt"),
               dict(truncation=True, max_length=6, stride=2, return_overflowing_tokens=True),
               dict(truncation=True, max_length=8, add_special_tokens=False)]:
        assert_same(ours(batch, **kw), theirs(batch, **kw), str(kw))
        assert_same(ours(batch[0], **kw), theirs(batch[0], **kw), str(kw))
    ours_left = AutoTokenizer.from_pretrained(ours.name_or_path, truncation_side="left")
    theirs_left = HF.from_pretrained(ours.name_or_path, truncation_side="left")
    assert_same(ours_left(batch, truncation=True, max_length=5), theirs_left(batch, truncation=True, max_length=5))


@pytest.mark.parametrize("variant", VARIANTS)
def test_text_pairs(pairs, variant):
    ours, theirs = pairs[variant]
    r = rng()
    a, b = texts(r, theirs, 4), texts(r, theirs, 4)
    for kw in [dict(), dict(padding=True, return_tensors="pt"), dict(return_token_type_ids=True),
               dict(truncation="only_second", max_length=30), dict(truncation="longest_first", max_length=10),
               dict(truncation="only_first", max_length=40, padding="max_length")]:
        try:
            expected = theirs(a, b, **kw)
        except Exception as e:  # e.g. only_second cannot reach max_length: both must refuse
            with pytest.raises(type(e)):
                ours(a, b, **kw)
            continue
        assert_same(ours(a, b, **kw), expected, str(kw))
        assert_same(ours(a[0], b[0], **kw), theirs(a[0], b[0], **kw), str(kw))


def test_text_target_and_pretokenized(pairs):
    ours, theirs = pairs["gemma"]
    r = rng()
    a, b = texts(r, theirs, 3), texts(r, theirs, 3)
    assert_same(ours(a, text_target=b, padding=True), theirs(a, text_target=b, padding=True))
    words = [x.split() for x in a]
    assert_same(ours(words, is_split_into_words=True), theirs(words, is_split_into_words=True))


def test_batch_encoding_object(pairs):
    ours, theirs = pairs["gemma"]
    r = rng()
    batch = texts(r, theirs, 3)
    out, ref = ours(batch, padding=True, return_tensors="pt"), theirs(batch, padding=True, return_tensors="pt")
    assert torch.equal(out.input_ids, out["input_ids"]) and torch.equal(out.attention_mask, ref.attention_mask)
    assert out.to("cpu") is out and out.input_ids.device.type == "cpu"
    assert isinstance(out, dict) is isinstance(ref, dict) and len(out) == len(ref)
    assert {**out}.keys() == {**ref}.keys()
    for i in range(len(batch)):
        assert out.tokens(i) == ref.tokens(i)
        assert out.word_ids(i) == ref.word_ids(i)
        assert out.sequence_ids(i) == ref.sequence_ids(i)
        for c in range(0, len(batch[i]), 3):
            assert out.char_to_token(i, c) == ref.char_to_token(i, c)
    back = pickle.loads(pickle.dumps(out))
    assert torch.equal(back["input_ids"], out["input_ids"])
    single = ours(batch[0])
    assert single.tokens() == theirs(batch[0]).tokens()
    with pytest.raises(AttributeError):
        _ = out.not_a_key


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_decode(pairs, variant):
    ours, theirs = pairs[variant]
    r = rng()
    seqs = [theirs(t)["input_ids"] for t in texts(r, theirs, 20)]
    seqs += [[r.randrange(len(theirs)) for _ in range(r.randint(0, 30))] for _ in range(20)]  # arbitrary ids
    for ids in seqs:
        for skip in (False, True):
            for clean in (None, True, False):
                kw = dict(skip_special_tokens=skip)
                if clean is not None:
                    kw["clean_up_tokenization_spaces"] = clean
                assert ours.decode(ids, **kw) == theirs.decode(ids, **kw), (ids, kw)
    for skip in (False, True):
        assert ours.batch_decode(seqs, skip_special_tokens=skip) == theirs.batch_decode(seqs, skip_special_tokens=skip)
        assert ours.decode(seqs, skip_special_tokens=skip) == theirs.decode(seqs, skip_special_tokens=skip)
    padded = theirs(texts(r, theirs, 3), padding=True, return_tensors="pt")["input_ids"]
    for skip in (False, True):
        assert ours.batch_decode(padded, skip_special_tokens=skip) == theirs.batch_decode(padded,
                                                                                          skip_special_tokens=skip)
        assert ours.decode(padded[0], skip_special_tokens=skip) == theirs.decode(padded[0], skip_special_tokens=skip)
        assert ours.batch_decode(padded.numpy()) == theirs.batch_decode(padded.numpy())
    assert ours.decode(seqs[0][0] if seqs[0] else 5) == theirs.decode(seqs[0][0] if seqs[0] else 5)
    assert ours.decode(np.int64(7)) == theirs.decode(np.int64(7))


@pytest.mark.parametrize("variant", GEMMA_VARIANTS)
def test_roundtrip(pairs, variant):
    """Byte fallback: any text decodes back to itself."""
    ours, theirs = pairs[variant]
    for text in texts(rng(), theirs, 30):
        assert ours.decode(ours(text, add_special_tokens=False)["input_ids"]) == text


# ----------------------------------------------------------------------------------------------
# pad()
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_pad(pairs, variant):
    ours, theirs = pairs[variant]
    r = rng()
    batch = texts(r, theirs, 4)
    features = [dict(theirs(t)) for t in batch]
    for kw in [dict(), dict(padding="max_length", max_length=60), dict(return_tensors="pt"),
               dict(padding_side="left", return_tensors="pt"), dict(pad_to_multiple_of=4)]:
        assert_same(ours.pad([dict(f) for f in features], **kw), theirs.pad([dict(f) for f in features], **kw), str(kw))
    col = {"input_ids": [f["input_ids"] for f in features]}
    assert_same(ours.pad(dict(col)), theirs.pad(dict(col)))
    one = {"input_ids": features[0]["input_ids"]}
    assert_same(ours.pad(dict(one), padding="max_length", max_length=70),
                theirs.pad(dict(one), padding="max_length", max_length=70))
    tensors = [{"input_ids": torch.tensor(f["input_ids"])} for f in features]
    assert_same(ours.pad(tensors), theirs.pad([dict(t) for t in tensors]))


# ----------------------------------------------------------------------------------------------
# Chat templates
# ----------------------------------------------------------------------------------------------
def conversations(r: random.Random, theirs) -> list[list[dict]]:
    t = lambda n=12: fixtures.random_text(r, [], n).strip() or "hello"  # noqa: E731
    convs = [
        [{"role": "user", "content": t()}],
        [{"role": "system", "content": t()}, {"role": "user", "content": t()}],
        [{"role": "system", "content": t()}, {"role": "user", "content": t()}, {"role": "assistant", "content": t()},
         {"role": "user", "content": t()}],
        [{"role": "user", "content": t()}, {"role": "assistant", "content": t()}, {"role": "user", "content": t()},
         {"role": "assistant", "content": t()}],
        [{"role": "user", "content": [{"type": "text", "text": t()}, {"type": "image"},
                                      {"type": "text", "text": t()}]}],
        [{"role": "user", "content": t()},
         {"role": "assistant", "content": "<|channel>thought\n" + t() + "<channel|>" + t()},
         {"role": "user", "content": t()}],
        [{"role": "user", "content": t()},
         {"role": "assistant", "content": None,
          "tool_calls": [{"type": "function", "function": {"name": "get_weather",
                                                           "arguments": {"city": t(2), "unit": "°C"}}}]},
         {"role": "tool", "content": json.dumps({"temperature": r.randint(-10, 40)})},
         {"role": "assistant", "content": t()}],
    ]
    return convs


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather <in> a city & country",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.mark.parametrize("variant", GEMMA_VARIANTS + ("wordlevel",))
def test_chat_template_gemma(pairs, variant):
    ours, theirs = pairs[variant]
    r = rng()
    for conv in conversations(r, theirs):
        for thinking in (None, False, True):
            extra = {} if thinking is None else {"enable_thinking": thinking}
            options = [dict(add_generation_prompt=False), dict(add_generation_prompt=True), dict(tools=[WEATHER_TOOL])]
            if conv[-1]["role"] == "assistant" and isinstance(conv[-1]["content"], str):
                options.append(dict(continue_final_message=True))
            for opt in options:
                kw = {**opt, **extra}
                text = theirs.apply_chat_template(conv, tokenize=False, **kw)
                assert ours.apply_chat_template(conv, tokenize=False, **kw) == text, kw
                assert_same(ours.apply_chat_template(conv, return_tensors="pt", return_dict=True, **kw),
                            theirs.apply_chat_template(conv, return_tensors="pt", return_dict=True, **kw), str(kw))
                assert ours.apply_chat_template(conv, **kw) == theirs.apply_chat_template(conv, return_dict=False, **kw)
                assert_same(ours.apply_chat_template(conv, return_tensors="pt", **kw),
                            theirs.apply_chat_template(conv, return_tensors="pt", return_dict=False, **kw))


def test_gemma_chat_format(pairs):
    """The rendered format of gemma4-architecture.md section 4, and exactly one leading <bos>."""
    ours, _ = pairs["gemma"]
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]
    text = ours.apply_chat_template(conv, tokenize=False, add_generation_prompt=True, enable_thinking=True)
    assert text == ("<bos><|turn>system\n<|think|>\nBe brief.<turn|>\n<|turn>user\nHi<turn|>\n"
                    "<|turn>model\nHello.<turn|>\n<|turn>user\nBye<turn|>\n<|turn>model\n")
    text = ours.apply_chat_template(conv[1:2], tokenize=False, add_generation_prompt=True)
    assert text == "<bos><|turn>user\nHi<turn|>\n<|turn>model\n"
    ids = ours.apply_chat_template(conv, add_generation_prompt=True, return_tensors="pt")
    assert ids.shape[0] == 1 and ids[0, 0].item() == 2 and (ids == 2).sum().item() == 1
    model_ids = ours.encode("model", add_special_tokens=False)
    assert ids[0, -(len(model_ids) + 2):].tolist() == [105, *model_ids, 107]  # <|turn> model \n
    assert ours.decode(ids[0]) == ours.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("variant", GEMMA_VARIANTS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_chat_template_batched(pairs, variant, side):
    ours, theirs = pairs[variant]
    convs = conversations(rng(), theirs)[:5]
    for kw in [dict(tokenize=False, add_generation_prompt=True),
               dict(padding=True, padding_side=side, return_tensors="pt", return_dict=True, enable_thinking=True),
               dict(padding="max_length", max_length=200, truncation=True, return_tensors="pt", return_dict=True,
                    tokenizer_kwargs={"padding_side": side}),
               dict(truncation=True, max_length=16, return_dict=True)]:
        ref = theirs.apply_chat_template(convs, **kw)
        got = ours.apply_chat_template(convs, **kw)
        if kw.get("tokenize", True):
            assert_same(got, ref, str(kw))
        else:
            assert got == ref


def test_named_templates_tools_documents(pairs):
    ours, theirs = pairs["bytelevel"]  # chat_template = {"default": chatml, "tool_use": TOOL_TEMPLATE}
    assert isinstance(ours.chat_template, dict) and sorted(ours.chat_template) == ["default", "tool_use"]
    r = rng()
    conv = [{"role": "user", "content": fixtures.random_text(r)}, {"role": "skip", "content": "x"},
            {"role": "assistant", "content": fixtures.random_text(r)}, {"role": "stop", "content": "y"},
            {"role": "user", "content": "never rendered"}]

    def multiply(x: float, y: int | None = None, mode: str = "fast") -> float:
        """Multiplies two numbers.

        Args:
            x: The first number
                to multiply.
            y: The second number.
            mode: How to multiply (choices: ["fast", "exact"])

        Returns:
            The product.
        """
        return x * (y or 1)

    docs = [{"title": "Doc <A>", "text": "Café & crème"}, {"title": "B", "text": fixtures.random_text(r)}]
    for kw in [dict(), dict(add_generation_prompt=True), dict(tools=[WEATHER_TOOL, multiply]),
               dict(chat_template="tool_use", documents=docs, add_generation_prompt=True),
               dict(chat_template="tool_use", tools=[multiply], documents=docs),
               dict(chat_template=fixtures.CHATML_TEMPLATE + "{{ 'x' | tojson }}"
                    "{{ {'b': 1, 'a': '<é>'} | tojson(sort_keys=True, separators=(',', ':')) }}")]:
        assert ours.apply_chat_template(conv, tokenize=False, **kw) == theirs.apply_chat_template(conv, tokenize=False,
                                                                                                  **kw), kw
        assert_same(ours.apply_chat_template(conv, return_dict=True, **kw),
                    theirs.apply_chat_template(conv, return_dict=True, **kw), str(kw))
    from transformers.utils import get_json_schema as hf_schema
    assert get_json_schema(multiply) == hf_schema(multiply)
    # additional_chat_templates/ (wordlevel): default + chatml
    ours_w, theirs_w = pairs["wordlevel"]
    assert sorted(ours_w.chat_template) == ["chatml", "default"] and ours_w.chat_template == theirs_w.chat_template
    assert ours_w.apply_chat_template(conv[:1], chat_template="chatml", tokenize=False) == \
        theirs_w.apply_chat_template(conv[:1], chat_template="chatml", tokenize=False)


def test_generation_block_and_globals(pairs):
    ours, theirs = pairs["gemma_cfg"]
    template = ("{{ bos_token }}{% for m in messages %}<|turn>{{ m.role }}\n"
                "{% if m.role == 'assistant' %}{% generation %}{{ m.content }}<turn|>{% endgeneration %}"
                "{% else %}{{ m.content }}<turn|>{% endif %}\n{% endfor %}{{ strftime_now('%Y') | length }}")
    r = rng()
    conv = [{"role": "user", "content": fixtures.random_text(r)}, {"role": "assistant", "content": "a b c"},
            {"role": "user", "content": "q"}, {"role": "assistant", "content": fixtures.random_text(r) + "!"}]
    for kw in [dict(), dict(return_tensors="pt"), dict(return_tensors="pt", padding=True)]:
        conv_in = [conv, conv[:2]] if "padding" in kw else conv
        assert_same(ours.apply_chat_template(conv_in, chat_template=template, return_dict=True,
                                             return_assistant_tokens_mask=True, **kw),
                    theirs.apply_chat_template(conv_in, chat_template=template, return_dict=True,
                                               return_assistant_tokens_mask=True, **kw), str(kw))


def test_chat_template_errors(pairs):
    ours, theirs = pairs["gemma"]
    bad = [{"role": "user", "content": "a"}, {"role": "system", "content": "late"}]
    for tok in (ours, theirs):
        with pytest.raises(jinja2.TemplateError, match="system message may only come first"):
            tok.apply_chat_template(bad, tokenize=False)
        with pytest.raises(ValueError, match="empty conversation"):
            tok.apply_chat_template([], tokenize=False)
        with pytest.raises(ValueError, match="not compatible"):
            tok.apply_chat_template([{"role": "assistant", "content": "x"}], add_generation_prompt=True,
                                    continue_final_message=True)
    ours_b, theirs_b = pairs["bytelevel"]
    for tok in (ours_b, theirs_b):
        with pytest.raises(jinja2.TemplateError, match="boom"):
            tok.apply_chat_template([{"role": "user", "content": "a"}], chat_template="{{ raise_exception('boom') }}")
    # a name that is not one of the model's templates is a template string
    assert ours_b.apply_chat_template([{"role": "user", "content": "a"}], chat_template="nope", tokenize=False) == \
        theirs_b.apply_chat_template([{"role": "user", "content": "a"}], chat_template="nope", tokenize=False)
    plain = AutoTokenizer.from_pretrained(pairs["bytelevel"][0].name_or_path, chat_template=None)
    with pytest.raises(ValueError, match="chat_template is not set"):
        plain.apply_chat_template([{"role": "user", "content": "a"}])


# ----------------------------------------------------------------------------------------------
# Mutating the tokenizer
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["gemma", "bytelevel"])
def test_setters(dirs, variant):
    ours, theirs = AutoTokenizer.from_pretrained(dirs[variant]), HF.from_pretrained(dirs[variant])
    r = rng()
    text = texts(r, theirs, 1)[0] + " <new_tok> <|extra|>"
    for tok in (ours, theirs):
        tok.add_bos_token = True
        tok.add_eos_token = True
    assert_same(ours(text), theirs(text))
    assert_same(ours(text, text), theirs(text, text))
    for tok in (ours, theirs):
        tok.add_tokens(["<new_tok>"])
        tok.add_special_tokens({"extra_special_tokens": ["<|extra|>"], "sep_token": "<sep>"})
        tok.pad_token = tok.eos_token
    assert_same(ours(text), theirs(text))
    assert ours.all_special_ids == theirs.all_special_ids and len(ours) == len(theirs)
    assert ours.sep_token_id == theirs.sep_token_id and ours.pad_token_id == theirs.pad_token_id
    ids = theirs(text)["input_ids"]
    assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(ids, skip_special_tokens=True)
    for tok in (ours, theirs):
        tok.bos_token_id = 1
    assert ours.bos_token == theirs.bos_token


def test_kwargs_override(dirs):
    d = dirs["gemma"]
    kw = dict(bos_token="<|turn>", model_max_length=10, extra_special_tokens=["<|tool>"],
              chat_template="{{ messages[0]['content'] }}")
    ours, theirs = AutoTokenizer.from_pretrained(d, **kw), HF.from_pretrained(d, **kw)
    assert ours.special_tokens_map == theirs.special_tokens_map and ours.all_special_ids == theirs.all_special_ids
    text = texts(rng(), theirs, 1, 40)[0]
    assert_same(ours(text, truncation=True), theirs(text, truncation=True))
    assert ours.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False) == "x"


@pytest.mark.parametrize("variant", ["gemma", "gemma_cfg"])
@pytest.mark.parametrize("flags", [dict(add_bos_token=True), dict(add_bos_token=False),
                                   dict(add_bos_token=True, add_eos_token=True)])
def test_add_bos_eos_override(dirs, variant, flags):
    ours, theirs = AutoTokenizer.from_pretrained(dirs[variant], **flags), HF.from_pretrained(dirs[variant], **flags)
    assert (ours.add_bos_token, ours.add_eos_token) == (theirs.add_bos_token, theirs.add_eos_token)
    a, b = texts(rng(), theirs, 3), texts(rng(), theirs, 3)
    assert_same(ours(a), theirs(a))
    assert_same(ours(a, b, return_token_type_ids=True), theirs(a, b, return_token_type_ids=True))


@pytest.mark.parametrize("variant", ["gemma", "bytelevel"])
def test_tokenizer_json_padding_truncation(tmp_path, variant):
    """Padding / truncation saved in tokenizer.json become the defaults (sides, pad token, max_length)."""
    from tokenizers import Tokenizer
    d = fixtures.build(variant, str(tmp_path / variant))
    backend = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    backend.enable_padding(direction="left", pad_id=0, pad_token="<pad>")
    backend.enable_truncation(max_length=12, direction="left")
    backend.save(os.path.join(d, "tokenizer.json"))
    ours, theirs = AutoTokenizer.from_pretrained(d), HF.from_pretrained(d)
    assert (ours.padding_side, ours.truncation_side) == (theirs.padding_side, theirs.truncation_side)
    batch = texts(rng(), theirs, 4, max_words=30)
    for kw in [dict(), dict(padding=True), dict(truncation=True, max_length=5), dict(padding=True, truncation=True)]:
        assert_same(ours(batch, **kw), theirs(batch, **kw), str(kw))
        assert_same(ours(batch[0], **kw), theirs(batch[0], **kw), str(kw))


# ----------------------------------------------------------------------------------------------
# Errors and independence from transformers
# ----------------------------------------------------------------------------------------------
def _one_line_error(directory, filename):
    with pytest.raises(TokenizerLoadError) as info:
        AutoTokenizer.from_pretrained(directory)
    message = str(info.value)
    assert "\n" not in message and filename in message, message


def test_load_errors(dirs, tmp_path):
    _one_line_error(str(tmp_path / "nope"), "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(str(empty), "tokenizer.json")
    (tmp_path / "file").write_text("x")
    _one_line_error(str(tmp_path / "file"), "file")
    for broken in ("tokenizer_config.json", "tokenizer.json", "special_tokens_map.json"):
        for variant in ("gemma", "gemma_cfg"):
            d = tmp_path / f"{variant}-{broken}"
            fixtures.build(variant, str(d))
            (d / broken).write_text('{"bos_token": "<bos>",')
            if broken == "special_tokens_map.json" and variant == "gemma":
                AutoTokenizer.from_pretrained(str(d))  # not read when added_tokens_decoder is present
                continue
            _one_line_error(str(d), broken)
    d = tmp_path / "badtok"
    fixtures.build("bytelevel", str(d))
    (d / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nonsense"}}')
    _one_line_error(str(d), "tokenizer.json")


def test_no_transformers_at_runtime(dirs):
    code = ("import sys; from gemma4.tokenization import AutoTokenizer; "
            f"t = AutoTokenizer.from_pretrained({dirs['gemma']!r}); "
            "t.apply_chat_template([{'role': 'user', 'content': 'hi'}], add_generation_prompt=True, "
            "return_tensors='pt'); t.decode(t('hello')['input_ids']); "
            "assert 'transformers' not in sys.modules, 'transformers was imported'")
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(root, "python"), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_template_constant_compiles():
    from gemma4.tokenization.chat_template import compile_template
    compile_template(GEMMA4_CHAT_TEMPLATE)
