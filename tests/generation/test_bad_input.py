"""generate / forward / from_pretrained misuse: each gives one clear error naming the argument, fails before
anything runs, and leaves the model as it was (the same greedy tokens afterwards)."""
from __future__ import annotations

import time

import pytest
import torch

import gemma4
from gemma4.cache import Gemma4Cache
from gemma4.errors import ArgumentError
from gemma4.generation import GenerationConfig, TextStreamer
from gemma4.generation.utils import NonFiniteLogitsError
from gemma4.modeling.random_model import build_random_model

VOCAB = 512  # tiny-e2b


@pytest.fixture(scope="module")
def model():
    return build_random_model("tiny-e2b", torch.float32, seed=7)


def prompt(length: int = 6, batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randint(4, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def greedy(model, ids):
    return model.generate(ids, max_new_tokens=5, do_sample=False, eos_token_id=None)


# ---------------------------------------------------------------------------------------- token ids
@pytest.mark.parametrize("bad", [VOCAB, VOCAB + 1000, -1])
def test_forward_names_the_bad_token_id(model, bad):
    ids = prompt(5, batch=2)
    ids[1, 3] = bad
    with pytest.raises(ArgumentError, match=rf"input_ids\[1, 3\] = {bad} .*\[0, {VOCAB}\)"):
        model(input_ids=ids)
    with pytest.raises(ArgumentError, match=rf"input_ids\[1, 3\] = {bad}"):
        greedy(model, ids)


def test_float_input_ids_are_refused_by_forward_and_generate(model):
    ids = prompt().float()
    with pytest.raises(TypeError, match="input_ids.*float32"):
        model(input_ids=ids)
    with pytest.raises(TypeError, match="input_ids.*float32"):
        greedy(model, ids)


@pytest.mark.parametrize("kwargs, name", [
    (dict(pad_token_id=VOCAB), "pad_token_id"),
    (dict(pad_token_id=10**6), "pad_token_id"),
    (dict(eos_token_id=VOCAB), "eos_token_id"),
    (dict(eos_token_id=[1, VOCAB + 3]), r"eos_token_id\[1\]"),
])
def test_special_token_ids_beyond_the_vocabulary(model, kwargs, name):
    with pytest.raises(ArgumentError, match=rf"{name}=\d+ .*vocab_size {VOCAB}"):
        model.generate(prompt(), max_new_tokens=3, do_sample=False, **kwargs)


# ---------------------------------------------------------------------------------------- lengths
@pytest.mark.parametrize("n", [10**9, 2**62])
def test_huge_max_new_tokens_is_refused_at_once(model, n):
    t0 = time.perf_counter()
    with pytest.raises(ArgumentError, match=rf"max_new_tokens={n}: .* GiB"):
        model.generate(prompt(), max_new_tokens=n, do_sample=False)
    assert time.perf_counter() - t0 < 10


@pytest.mark.parametrize("n", [5.5, "5", True])
def test_max_new_tokens_must_be_an_int(model, n):
    with pytest.raises(TypeError, match="max_new_tokens"):
        model.generate(prompt(), max_new_tokens=n)
    with pytest.raises(TypeError, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=n)


@pytest.mark.parametrize("kwargs, name", [
    (dict(num_return_sequences=0, do_sample=True), "num_return_sequences"),
    (dict(min_new_tokens=-1), "min_new_tokens"),
    (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size"),
    (dict(max_time=-1), "max_time"),
    (dict(max_time="soon"), "max_time"),
    (dict(eos_token_id=[]), "eos_token_id"),
    (dict(eos_token_id=-5), "eos_token_id"),
    (dict(eos_token_id=[1, "x"]), "eos_token_id"),
    (dict(pad_token_id=-1), "pad_token_id"),
    (dict(prefill_chunk_size=-1), "prefill_chunk_size"),
    (dict(prefill_chunk_size=0), "prefill_chunk_size"),
    (dict(top_k=2.5), "top_k"),
    (dict(temperature="hot", do_sample=True), "temperature"),
])
def test_bad_generation_arguments_name_themselves(model, kwargs, name):
    with pytest.raises(ValueError, match=name):  # ArgumentError or ArgumentTypeError: both ValueErrors
        model.generate(prompt(), max_new_tokens=3, **kwargs)


def test_failed_update_leaves_generation_config_unchanged():
    gc = GenerationConfig(max_new_tokens=4, top_k=7)
    before = gc.to_dict()
    with pytest.raises(ValueError, match="min_new_tokens"):
        gc.update(top_k=3, min_new_tokens=-2)
    assert gc.to_dict() == before


def test_generation_config_file_errors_name_the_file(tmp_path):
    (tmp_path / "generation_config.json").write_text('{"max_new_tokens": -4}')
    with pytest.raises(ValueError, match=r"generation_config\.json.*max_new_tokens"):
        GenerationConfig.from_pretrained(tmp_path)
    (tmp_path / "generation_config.json").write_text('[1, 2]')
    with pytest.raises(OSError, match=r"generation_config\.json.*JSON object"):
        GenerationConfig.from_pretrained(tmp_path)


def test_empty_input_ids(model):
    for ids in (torch.zeros(1, 0, dtype=torch.long), torch.zeros(0, 4, dtype=torch.long)):
        with pytest.raises(ArgumentError, match="input_ids is empty"):
            greedy(model, ids)


# ---------------------------------------------------------------------------------------- cache
def test_past_key_values_must_be_a_cache_of_the_same_batch(model):
    with pytest.raises(TypeError, match="past_key_values must be a gemma4.Gemma4Cache.*dict"):
        model.generate(prompt(), max_new_tokens=2, past_key_values={})
    one = model.generate(prompt(4), max_new_tokens=2, do_sample=False, return_dict_in_generate=True)
    cache = one.past_key_values
    seen = cache.get_seq_length()
    two = torch.cat([one.sequences, one.sequences])  # [2, L]
    with pytest.raises(ArgumentError, match="past_key_values holds 1 sequence.* input_ids has 2"):
        model.generate(torch.cat([two, prompt(2, batch=2)], 1), max_new_tokens=2, past_key_values=cache)
    assert cache.get_seq_length() == seen  # untouched


# ---------------------------------------------------------------------------------------- non-finite
@pytest.mark.parametrize("do_sample", [False, True])
def test_non_finite_logits_are_refused(do_sample):
    model = build_random_model("tiny-e2b", torch.float32, seed=3)
    with torch.no_grad():
        model.model.norm.weight[5] = float("nan")  # every logit becomes NaN
    printed = []

    class Recorder(TextStreamer):
        def on_finalized_text(self, text, stream_end=False):
            printed.append(text)

    tok = gemma4.AutoTokenizer.from_pretrained(gemma4.default_model_path())
    with pytest.raises(NonFiniteLogitsError, match="NaN or infinity .*row"):
        model.generate(prompt(), max_new_tokens=4, do_sample=do_sample, streamer=Recorder(tok, skip_prompt=True))
    assert "".join(printed) == ""  # nothing generated was streamed
    # asked for, the values are replaced as transformers does, and generation runs (all logits 0 after the
    # replacement: sampling is uniform and could draw an end-of-turn token, so min_new_tokens keeps those out)
    out = model.generate(prompt(), max_new_tokens=4, min_new_tokens=4, do_sample=do_sample, remove_invalid_values=True)
    assert out.shape == (1, 10)


# ---------------------------------------------------------------------------------------- devices
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_cuda_without_cuda_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="device='cuda'.*CUDA is not available"):
        gemma4.AutoModelForCausalLM.from_pretrained(gemma4.default_model_path(), device="cuda", progress=False)
    with pytest.raises(ValueError, match="device='banana'"):
        gemma4.AutoModelForCausalLM.from_config("tiny-e2b", device="banana")


def test_the_model_is_unchanged_by_failed_calls(model):
    ids = prompt(7, seed=5)
    before = greedy(model, ids)
    for call in (lambda: model.generate(ids, max_new_tokens=10**9),
                 lambda: model.generate(ids, max_new_tokens=3, pad_token_id=VOCAB),
                 lambda: model(input_ids=ids + VOCAB)):
        with pytest.raises(ArgumentError):
            call()
    assert torch.equal(greedy(model, ids), before)
    fresh = Gemma4Cache(model.config)
    assert torch.equal(model.generate(ids, max_new_tokens=5, do_sample=False, eos_token_id=None,
                                      past_key_values=fresh), before)
