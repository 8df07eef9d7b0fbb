"""The embedded default model (python/gemma4/default_model/) against transformers 5.17.0.

The committed checkpoint must load with gemma4's loader and with transformers' Gemma4ForCausalLM and
give the same float32 logits; its tokenizer must give the same ids, decoded text and rendered chats
through gemma4.AutoTokenizer and transformers' AutoTokenizer; and the weights must be trained
(a low loss on the novels' text).
"""
from __future__ import annotations

import json
import os
import warnings

import pytest
import torch
from safetensors import safe_open

import gemma4
from gemma4.default_model import default_model_path

DIR = default_model_path()
FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
         "chat_template.jinja", "training_summary.json")

# Text for the comparisons: the novels' style, a line break, punctuation, digits, characters the
# vocabulary lacks (byte fallback) and special tokens written in the text.
TEXTS = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
    "want of a wife.",
    "\"My dear Mr. Bennet,\" said his lady to him one day, \"have you heard that Netherfield Park is let at last?\"",
    "Emma Woodhouse, handsome, clever, and rich,\nwith a comfortable home and happy disposition.",
    "  Two spaces, a tab\there, 1,000 pounds -- and £5; café naïve 日本 🙂",
    "<|turn>user\nHello<turn|>\n<bos>text with specials<eos>",
    "",
]
CHATS = [
    [{"role": "user", "content": "Who is Mr. Darcy?"}],
    [{"role": "system", "content": "You write like Jane Austen."},
     {"role": "user", "content": "Describe the ball."},
     {"role": "assistant", "content": "It was a very fine ball."},
     {"role": "user", "content": "And then?"}],
]


@pytest.fixture(scope="module")
def hf():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import transformers

        assert transformers.__version__ == "5.17.0"
        transformers.logging.set_verbosity_error()
        return transformers


@pytest.fixture(scope="module")
def ours_model():
    return gemma4.AutoModelForCausalLM.from_pretrained(DIR, dtype=torch.float32, progress=False).eval()


@pytest.fixture(scope="module")
def hf_model(hf):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hf.Gemma4ForCausalLM.from_pretrained(DIR, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokenizers(hf):
    return gemma4.AutoTokenizer.from_pretrained(DIR), hf.AutoTokenizer.from_pretrained(DIR)


def test_files_and_path():
    assert gemma4.default_model_path() == DIR
    assert os.path.isdir(DIR) and os.path.dirname(DIR) == os.path.dirname(os.path.abspath(gemma4.__file__))
    for name in FILES:
        assert os.path.isfile(os.path.join(DIR, name)), name
    size = os.path.getsize(os.path.join(DIR, "model.safetensors"))
    assert 1e6 < size < 20e6, size  # a few MB
    with safe_open(os.path.join(DIR, "model.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"BF16"}


def test_config_is_gemma4_architecture():
    cfg = gemma4.AutoConfig.from_pretrained(DIR)
    kinds = [spec.layer_type for spec in cfg.layers]
    assert "sliding_attention" in kinds and "full_attention" in kinds
    assert cfg.num_kv_shared_layers >= 1 and any(spec.kv_shared for spec in cfg.layers)
    assert cfg.hidden_size_per_layer_input > 0  # per-layer embeddings
    assert cfg.torch_dtype == torch.float32  # stored in bfloat16, loaded as float32
    gen = json.load(open(os.path.join(DIR, "generation_config.json")))
    assert gen["do_sample"] is True and gen["eos_token_id"] == [1, 106] and gen["bos_token_id"] == 2


def test_special_token_ids(tokenizers):
    ours, _ = tokenizers
    expected = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4, "<|tool>": 46, "<tool|>": 47,
                "<|tool_call>": 48, "<tool_call|>": 49, "<|tool_response>": 50, "<tool_response|>": 51,
                '<|"|>': 52, "<|think|>": 98, "<|channel>": 100, "<channel|>": 101, "<|turn>": 105,
                "<turn|>": 106, "\n": 107, "<|image>": 108, "<|audio>": 109, "<|image|>": 110, "<|audio|>": 111,
                "<image|>": 112, "<audio|>": 113, "<|video|>": 114, "<0x00>": 115, "<0xFF>": 370}
    assert {t: ours.convert_tokens_to_ids(t) for t in expected} == expected
    assert (ours.pad_token_id, ours.eos_token_id, ours.bos_token_id) == (0, 1, 2)


def test_logits_match_transformers(ours_model, hf_model, tokenizers):
    ours_tok, _ = tokenizers
    # longer than the sliding window (64), so sliding and full layers differ
    text = " ".join(TEXTS[:3]) * 3
    ids = ours_tok(text, return_tensors="pt")["input_ids"]
    chat = ours_tok.apply_chat_template(CHATS[1], add_generation_prompt=True, return_tensors="pt")
    assert ids.shape[1] > 2 * ours_model.config.sliding_window
    for x in (ids, chat):
        with torch.no_grad():
            a = ours_model(input_ids=x).logits
            b = hf_model(input_ids=x).logits
        assert a.dtype == b.dtype == torch.float32
        rel = ((a - b).abs().max() / b.abs().max()).item()
        assert rel < 1e-4, rel


def test_greedy_generation_matches_transformers(ours_model, hf_model, tokenizers):
    ours_tok, _ = tokenizers
    x = ours_tok("Elizabeth could not help", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a = ours_model.generate(x, do_sample=False, max_new_tokens=24)
        b = hf_model.generate(x, do_sample=False, max_new_tokens=24)
    assert a.tolist() == b.tolist()


def test_trained(ours_model, tokenizers):
    """The weights are trained: low loss on a passage of the novels, and readable greedy text."""
    ours_tok, _ = tokenizers
    passage = ("\"I do not know what you mean,\" said Elizabeth. \"I am sure I have no wish to be "
               "acquainted with him, and I hope he will never come to Longbourn again. Your sister is very "
               "much obliged to you for your kindness, and we shall be very happy to see you.\"")
    x = ours_tok(passage, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        loss = ours_model(input_ids=x, labels=x).loss.item()
    assert loss < 4.5, loss  # untrained: ln(4096) = 8.3
    summary = json.load(open(os.path.join(DIR, "training_summary.json")))
    assert summary["parameters"] == sum(p.numel() for p in {id(p): p for p in ours_model.parameters()}.values())


def test_tokenizer_ids_and_decode_match_transformers(tokenizers):
    ours, theirs = tokenizers
    assert len(ours) == len(theirs) and ours.vocab_size == theirs.vocab_size
    for text in TEXTS:
        for special in (True, False):
            a = ours(text, add_special_tokens=special)["input_ids"]
            b = theirs(text, add_special_tokens=special)["input_ids"]
            assert a == b, text
        for skip in (False, True):
            assert ours.decode(a, skip_special_tokens=skip) == theirs.decode(b, skip_special_tokens=skip)
        assert ours.convert_ids_to_tokens(a) == theirs.convert_ids_to_tokens(b)
    batch_a = ours(TEXTS[:3], padding=True, return_tensors="pt")
    batch_b = theirs(TEXTS[:3], padding=True, return_tensors="pt")
    assert torch.equal(batch_a["input_ids"], batch_b["input_ids"])
    assert torch.equal(batch_a["attention_mask"], batch_b["attention_mask"])
    assert ours.padding_side == theirs.padding_side == "left"


def test_chat_template_matches_transformers(tokenizers):
    ours, theirs = tokenizers
    for messages in CHATS:
        for gen in (True, False):
            a = ours.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False)
            b = theirs.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False)
            assert a == b
            ids_a = ours.apply_chat_template(messages, add_generation_prompt=gen, return_dict=True)["input_ids"]
            ids_b = theirs.apply_chat_template(messages, add_generation_prompt=gen, return_dict=True)["input_ids"]
            assert ids_a == ids_b
            assert ids_a[0] == 2 and ids_a.count(2) == 1  # exactly one <bos>
    text = ours.apply_chat_template(CHATS[0], add_generation_prompt=True, tokenize=False)
    assert text == "<bos><|turn>user\nWho is Mr. Darcy?<turn|>\n<|turn>model\n"
