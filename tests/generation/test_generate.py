"""model.generate against transformers 5.17's generate on the same random weights (fp32): greedy tokens,
left-padded batches, EOS lists, scores/logits outputs, lengths; and the decode step's input length."""
import pytest
import torch

from gemma4.cache import Gemma4Cache
from gemma4.generation import GenerateDecoderOnlyOutput, GenerationConfig

from .conftest import WINDOW, random_prompts

NEW = 40


def test_greedy_matches_transformers(models):
    """40 new tokens from a prompt longer than the sliding window, every variant family."""
    hf, ours, _ = models
    ids, mask, _ = random_prompts([3 * WINDOW - 3])
    want = hf.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, eos_token_id=None)
    got = ours.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, eos_token_id=None)
    assert got.shape == (1, ids.shape[1] + NEW)
    assert torch.equal(got, want), f"first difference at new token {(got != want).nonzero()[0, 1] - ids.shape[1]}"


def test_left_padded_batch_matches_single_prompts_and_transformers(models):
    hf, ours, _ = models
    lengths = [2 * WINDOW + 5, WINDOW + 2, 5]
    ids, mask, rows = random_prompts(lengths)
    L = ids.shape[1]
    kw = dict(max_new_tokens=24, do_sample=False, eos_token_id=None)
    got = ours.generate(ids, attention_mask=mask, **kw)
    want = hf.generate(ids, attention_mask=mask, **kw)
    assert torch.equal(got, want)
    for i, row in enumerate(rows):
        alone = ours.generate(row[None], **kw)
        assert torch.equal(alone[0, len(row):], got[i, L:]), f"row {i} differs from its prompt alone"


def test_no_cache_and_chunked_prefill_give_the_same_tokens(e2b):
    _, ours, _ = e2b
    ids, mask, _ = random_prompts([2 * WINDOW + 3, WINDOW - 1])
    kw = dict(attention_mask=mask, max_new_tokens=16, do_sample=False, eos_token_id=None)
    ref = ours.generate(ids, **kw)
    assert torch.equal(ours.generate(ids, use_cache=False, **kw), ref)
    assert torch.equal(ours.generate(ids, prefill_chunk_size=5, **kw), ref)


def test_decode_step_does_not_recompute_the_prefix(e2b):
    """One prefill over the prompt, then exactly one one-token forward per further new token."""
    _, ours, _ = e2b
    ids, mask, _ = random_prompts([2 * WINDOW + 1, WINDOW])
    seen = []
    hook = ours.model.embed_tokens.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    try:
        out = ours.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, eos_token_id=None)
    finally:
        hook.remove()
    assert out.shape[1] == ids.shape[1] + 12
    assert seen == [tuple(ids.shape)] + [(2, 1)] * 11


def test_eos_list_stops_each_row_and_pads_like_transformers(models):
    hf, ours, _ = models
    ids, mask, _ = random_prompts([WINDOW + 4, 6, WINDOW + 1])
    L = ids.shape[1]
    free = ours.generate(ids, attention_mask=mask, max_new_tokens=30, do_sample=False, eos_token_id=None)
    # EOS ids: a token row 0 emits late, one row 1 emits early, and an id nobody emits
    eos = [int(free[0, L + 20]), int(free[1, L + 4]), 1]
    kw = dict(attention_mask=mask, max_new_tokens=30, do_sample=False, eos_token_id=eos, pad_token_id=0)
    got = ours.generate(ids, **kw)
    want = hf.generate(ids, **kw)
    assert torch.equal(got, want)
    for b in range(3):
        new = got[b, L:].tolist()
        stop = next((i for i, t in enumerate(new) if t in eos), None)
        assert stop is not None or b == 2, f"row {b} must have stopped"
        if stop is not None:  # everything after the first EOS is padding
            assert all(t == 0 for t in new[stop + 1:])
            assert new[:stop + 1] == free[b, L:L + stop + 1].tolist()


def test_return_dict_scores_and_logits_match_transformers(e2b):
    hf, ours, _ = e2b
    ids, mask, _ = random_prompts([WINDOW + 3, 4])
    kw = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, repetition_penalty=1.3, eos_token_id=None,
              return_dict_in_generate=True, output_scores=True, output_logits=True)
    got = ours.generate(ids, **kw)
    want = hf.generate(ids, **kw)
    assert isinstance(got, GenerateDecoderOnlyOutput)
    assert torch.equal(got.sequences, want.sequences) and torch.equal(got["sequences"], got[0])
    assert isinstance(got.past_key_values, Gemma4Cache)
    assert len(got.scores) == len(got.logits) == 6
    for mine, theirs in zip(got.scores + got.logits, want.scores + want.logits):
        assert mine.dtype == torch.float32 and mine.shape == (2, 512)
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)
    # raw logits were penalised into scores
    assert not torch.equal(got.scores[0], got.logits[0])
    plain = ours.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, repetition_penalty=1.3,
                          eos_token_id=None, return_dict_in_generate=True)
    assert plain.scores is None and plain.logits is None and "scores" not in plain


def test_length_arguments_match_transformers(e2b):
    hf, ours, _ = e2b
    ids, mask, _ = random_prompts([7])
    for kw in (dict(max_length=12), dict(max_new_tokens=3, max_length=100), dict(min_new_tokens=5, max_new_tokens=8)):
        kw.update(do_sample=False)
        assert torch.equal(ours.generate(ids, **kw), hf.generate(ids, **kw)), kw
    with pytest.warns(UserWarning, match="max_length"):
        out = ours.generate(ids, do_sample=False, eos_token_id=None)
    assert out.shape[1] == 7 + 20  # transformers' default: 20 new tokens
    with pytest.raises(ValueError, match="max_length"):
        ours.generate(ids, max_length=5)


def test_min_new_tokens_blocks_eos(e2b):
    _, ours, _ = e2b
    ids, _, _ = random_prompts([9])
    free = ours.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=None)
    first = int(free[0, 9])
    out = ours.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=first, min_new_tokens=4)
    assert out.shape[1] >= 9 + 4 and first not in out[0, 9:12].tolist()


def test_attention_mask_is_inferred_from_padding(e2b):
    """Without attention_mask, pad_token_id tokens are padding (pad 0 is not an EOS id), as in transformers."""
    hf, ours, _ = e2b
    ids, mask, _ = random_prompts([WINDOW + 2, 5])
    kw = dict(max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(ours.generate(ids, **kw), ours.generate(ids, attention_mask=mask, **kw))
    assert torch.equal(ours.generate(ids, **kw), hf.generate(ids, **kw))


def test_generation_config_object_and_kwargs(e2b):
    _, ours, _ = e2b
    ids, _, _ = random_prompts([6])
    config = GenerationConfig(max_new_tokens=5, do_sample=False, eos_token_id=None)
    a = ours.generate(ids, generation_config=config)
    b = ours.generate(ids, max_new_tokens=5, do_sample=False, eos_token_id=None)
    assert torch.equal(a, b) and a.shape[1] == 11
    assert config.max_length is None  # generate works on a copy
    c = ours.generate(ids, generation_config=config, max_new_tokens=2)  # kwargs win
    assert c.shape[1] == 8


def test_continue_from_a_returned_cache(e2b):
    """Passing the returned cache back with the whole sequence continues without recomputing the past."""
    _, ours, _ = e2b
    ids, _, _ = random_prompts([WINDOW + 5])
    kw = dict(do_sample=False, eos_token_id=None)
    full = ours.generate(ids, max_new_tokens=14, **kw)
    first = ours.generate(ids, max_new_tokens=6, return_dict_in_generate=True, **kw)
    assert first.past_key_values.get_seq_length() == ids.shape[1] + 5  # the last token was never fed
    seen = []
    hook = ours.model.embed_tokens.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    try:
        second = ours.generate(first.sequences, max_new_tokens=8, past_key_values=first.past_key_values, **kw)
    finally:
        hook.remove()
    assert seen[0] == 1  # only the token the cache had not seen
    assert torch.equal(second, full)


def test_unsupported_options_raise(e2b):
    _, ours, _ = e2b
    ids, _, _ = random_prompts([5])
    with pytest.raises(NotImplementedError, match="num_beams"):
        ours.generate(ids, num_beams=2, max_new_tokens=2)
    with pytest.raises(ValueError, match="not used by the model"):
        ours.generate(ids, max_new_tokens=2, temprature=0.5)
    with pytest.raises(ValueError, match="tokenizer"):
        ours.generate(ids, max_new_tokens=2, stop_strings=["x"])


def test_bfloat16_generation_keeps_a_bfloat16_cache(e2b):
    _, _, path = e2b
    import gemma4

    model = gemma4.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, progress=False)
    ids, mask, _ = random_prompts([WINDOW + 3, 4])
    out = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, eos_token_id=None,
                         return_dict_in_generate=True, output_logits=True)
    assert out.sequences.shape == (2, ids.shape[1] + 6)
    assert all(k.dtype == torch.bfloat16 for k in out.past_key_values.key)
    assert out.logits[0].dtype == torch.float32
