"""Sampling: reproducible under torch.manual_seed and with an explicit generator, the same draws as
transformers (torch.multinomial over the processed softmax), top_k=1 equals greedy."""
import torch

from .conftest import WINDOW, random_prompts


def test_seeded_sampling_is_reproducible(e2b):
    _, ours, _ = e2b
    ids, mask, _ = random_prompts([WINDOW + 4, 5])
    kw = dict(attention_mask=mask, max_new_tokens=20, do_sample=True, top_k=50, temperature=2.0, eos_token_id=None)
    torch.manual_seed(11)
    a = ours.generate(ids, **kw)
    torch.manual_seed(11)
    b = ours.generate(ids, **kw)
    torch.manual_seed(12)
    c = ours.generate(ids, **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_explicit_generator_is_reproducible_and_leaves_global_rng_alone(e2b):
    _, ours, _ = e2b
    ids, _, _ = random_prompts([7])
    kw = dict(max_new_tokens=16, do_sample=True, top_k=0, eos_token_id=None)
    state = torch.get_rng_state()
    a = ours.generate(ids, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(torch.get_rng_state(), state)
    b = ours.generate(ids, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(a, b)


def test_top_k_1_equals_greedy(e2b):
    _, ours, _ = e2b
    ids, mask, _ = random_prompts([WINDOW + 2, 3])
    greedy = ours.generate(ids, attention_mask=mask, max_new_tokens=15, do_sample=False, eos_token_id=None)
    sampled = ours.generate(ids, attention_mask=mask, max_new_tokens=15, do_sample=True, top_k=1, temperature=1.7,
                            eos_token_id=None)
    assert torch.equal(greedy, sampled)


def test_same_draws_as_transformers(models):
    """Same seed, same processors, same torch.multinomial calls: the same tokens as transformers' sampling."""
    hf, ours, _ = models
    ids, mask, _ = random_prompts([WINDOW + 5, 6])
    for options in (dict(top_k=0), dict(top_k=40, top_p=0.9, temperature=0.8, repetition_penalty=1.2),
                    dict(top_k=0, min_p=0.05)):
        kw = dict(attention_mask=mask, max_new_tokens=20, do_sample=True, eos_token_id=None, **options)
        torch.manual_seed(5)
        want = hf.generate(ids, **kw)
        torch.manual_seed(5)
        got = ours.generate(ids, **kw)
        assert torch.equal(got, want), options


def test_num_return_sequences(e2b):
    hf, ours, _ = e2b
    ids, mask, _ = random_prompts([6, 4])
    kw = dict(attention_mask=mask, max_new_tokens=8, do_sample=True, num_return_sequences=3, eos_token_id=None)
    torch.manual_seed(2)
    got = ours.generate(ids, **kw)
    torch.manual_seed(2)
    want = hf.generate(ids, **kw)
    assert got.shape == (6, 6 + 8) and torch.equal(got, want)
    assert torch.equal(got[:3, :6], ids[:1].expand(3, -1))


def test_generation_config_json_sampling_defaults(e2b, tmp_path):
    """A model whose checkpoint has Gemma 4 -it's generation_config.json samples with top_k 64, top_p 0.95."""
    import json
    import shutil

    import gemma4

    _, _, path = e2b
    d = tmp_path / "it"
    shutil.copytree(path, d)
    (d / "generation_config.json").write_text(json.dumps({
        "bos_token_id": 2, "do_sample": True, "eos_token_id": [1, 106, 50], "pad_token_id": 0, "temperature": 1.0,
        "top_k": 64, "top_p": 0.95}))
    model = gemma4.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, progress=False)
    assert model.generation_config.top_k == 64 and model.generation_config.eos_token_id == [1, 106, 50]
    ids, _, _ = random_prompts([6])
    torch.manual_seed(4)
    a = model.generate(ids, max_new_tokens=10)
    torch.manual_seed(4)
    b = model.generate(ids, max_new_tokens=10, do_sample=True, top_k=64, top_p=0.95, eos_token_id=[1, 106, 50])
    assert torch.equal(a, b)
    greedy = model.generate(ids, max_new_tokens=10, do_sample=False)  # kwargs override the file
    c = model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=[1, 106, 50])
    assert torch.equal(greedy, c)
