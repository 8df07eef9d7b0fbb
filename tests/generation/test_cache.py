"""Gemma4Cache: storage layout, fixed-shape decode steps, and the transformers-style multi-call use
(logits equal to transformers' DynamicCache path across the sliding window's wrap-around)."""
import pytest
import torch
from transformers import DynamicCache

from gemma4.cache import Gemma4Cache

from .conftest import WINDOW, random_prompts


def test_storage_only_for_kv_owning_layers(e2b):
    _, ours, _ = e2b
    config = ours.config
    ids, mask, _ = random_prompts([WINDOW + 3, 4])
    cache = Gemma4Cache(config, max_cache_len=40)
    with torch.no_grad():
        ours(input_ids=ids, attention_mask=mask, cache=cache)
    owners = [s for s in config.layers if s.cache_index is not None]
    assert len(cache) == len(owners) < len(config.layers)  # tiny-e2b has KV-shared layers
    for spec in owners:
        k, v = cache.key[spec.cache_index], cache.value[spec.cache_index]
        slots = spec.window if spec.is_sliding else 40
        assert k.shape == v.shape == (2, spec.num_kv_heads, slots, spec.head_dim)
    assert cache.get_seq_length() == ids.shape[1]
    assert cache.lengths.tolist() == mask.sum(1).tolist()
    assert torch.equal(cache.full_mask[:, :ids.shape[1]], mask.bool())
    assert not cache.full_mask[:, ids.shape[1]:].any()


def test_decode_step_reads_fixed_shape_buffers(e2b):
    """T = 1: every K/V-owning layer attends over its whole buffer (T_max or W slots) with a slot mask."""
    _, ours, _ = e2b
    ids, mask, _ = random_prompts([WINDOW + 5, 3])
    cache = Gemma4Cache(ours.config, max_cache_len=32)
    calls = []
    original = cache.update

    def spy(spec, key, value, key_mask=None):
        out = original(spec, key, value, key_mask)
        calls.append((spec, key.shape[1], out[0].shape, out[2].shape, out[3]))
        return out

    cache.update = spy
    with torch.no_grad():
        ours(input_ids=ids, attention_mask=mask, cache=cache)
        calls.clear()
        for step in range(WINDOW + 2):  # wrap the ring buffers around
            ours(input_ids=torch.randint(4, 512, (2, 1)), cache=cache)
            for spec, t, kshape, mshape, window in calls:
                slots = spec.window if spec.is_sliding else 32
                assert t == 1 and kshape == (2, slots, spec.num_kv_heads, spec.head_dim)
                assert mshape == (2, slots) and window == 0
            calls.clear()
    assert cache.get_seq_length() == ids.shape[1] + WINDOW + 2
    ring = cache.ring_mask[WINDOW]
    assert ring.all()  # after wrapping, every ring slot holds a real token


@pytest.mark.parametrize("preset", ["tiny-e2b", "tiny-31b", "tiny-26b-a4b"])
def test_multi_call_logits_match_transformers_dynamic_cache(preset, tmp_path_factory):
    """Prefill, single tokens and multi-token chunks after a past, with left padding, across the window."""
    from .conftest import model_pair

    hf, ours, _ = model_pair(preset, tmp_path_factory)
    ids, mask, _ = random_prompts([30, 26])
    chunks = [(0, 11), (11, 12), (12, 13), (13, 22), (22, 23), (23, 30)]
    hf_cache, cache = DynamicCache(config=hf.config), None
    with torch.no_grad():
        for a, b in chunks:
            want = hf(input_ids=ids[:, a:b], attention_mask=mask[:, :b], past_key_values=hf_cache, use_cache=True)
            got = ours(input_ids=ids[:, a:b], attention_mask=mask[:, :b], past_key_values=cache, use_cache=True)
            cache = got.past_key_values
            real = mask[:, a:b].bool()
            torch.testing.assert_close(got.logits[real], want.logits[real], rtol=1e-4, atol=1e-4)
    assert isinstance(cache, Gemma4Cache) and cache.get_seq_length() == 30
    assert cache.max_cache_len >= 30  # grown on demand


def test_new_token_mask_only_or_whole_mask(e2b):
    """attention_mask may cover only the new tokens or the whole sequence (transformers' convention)."""
    _, ours, _ = e2b
    ids, mask, _ = random_prompts([12, 7])
    with torch.no_grad():
        a, b = Gemma4Cache(ours.config), Gemma4Cache(ours.config)
        ours(input_ids=ids[:, :9], attention_mask=mask[:, :9], cache=a)
        ours(input_ids=ids[:, :9], attention_mask=mask[:, :9], cache=b)
        la = ours(input_ids=ids[:, 9:], attention_mask=mask, cache=a).logits
        lb = ours(input_ids=ids[:, 9:], attention_mask=mask[:, 9:], cache=b).logits
    assert torch.equal(la, lb)


def test_reset_crop_and_errors(e2b):
    _, ours, _ = e2b
    ids, _, _ = random_prompts([6])
    cache = Gemma4Cache(ours.config, max_cache_len=16)
    with torch.no_grad():
        first = ours(input_ids=ids, cache=cache).logits
        ours(input_ids=ids[:, :1], cache=cache)
        cache.crop(6)  # drop the extra token (the ring has not wrapped yet)
        assert cache.get_seq_length() == 6
        again = ours(input_ids=ids[:, :1], cache=cache).logits
        cache.reset()
        assert cache.get_seq_length() == 0 and not cache.full_mask.any()
        assert torch.equal(ours(input_ids=ids, cache=cache).logits, first)
        with pytest.raises(ValueError, match="batch size"):
            ours(input_ids=torch.cat([ids, ids]), cache=cache)
        with pytest.raises(ValueError, match="attention_mask"):
            ours(input_ids=ids[:, :2], attention_mask=torch.ones(1, 5, dtype=torch.long), cache=cache)
    ref = Gemma4Cache(ours.config, max_cache_len=16)
    with torch.no_grad():
        ours(input_ids=ids, cache=ref)
        assert torch.equal(ours(input_ids=ids[:, :1], cache=ref).logits, again)
