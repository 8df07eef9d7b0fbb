"""generate's decode steps through the C++ decoder layers (modeling/decode_step.py, csrc/decode/): the same
tokens, logits and scores as the Python layers, bit for bit, on every variant family, dtype, quantized weights,
batches with padding, sampling, yarn's attention scaling and a cache that grows; the Python layers wherever a
user added something the C++ layers would not see (a hook, LoRA); one clear error for a bad build."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

import gemma4
from gemma4.cache import Gemma4Cache
from gemma4.modeling import decode_step
from gemma4.modeling.random_model import build_random_model
from gemma4.quant import QuantizationConfig, quantize

PRESETS = ["tiny-e2b", "tiny-e4b", "tiny-31b", "tiny-26b-a4b", "tiny-12b", "default"]


class CountSteps:
    """Counts the decode steps the C++ layers computed (wraps _Session.hidden; the kernels run unchanged)."""

    def __init__(self, monkeypatch):
        self.count = 0
        original = decode_step._Session.hidden

        def hidden(session, *args):
            out = original(session, *args)
            self.count += out is not None
            return out

        monkeypatch.setattr(decode_step._Session, "hidden", hidden)


def _generate_both(model, ids, **kwargs):
    kwargs = {"max_new_tokens": 12, "do_sample": False, "return_dict_in_generate": True, "output_logits": True,
              "output_scores": True, **kwargs}
    seed = kwargs.pop("seed", None)
    outs = []
    for python in (True, False):
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        extra = {} if gen is None else {"generator": gen}
        with decode_step.python_decode_layers() if python else _nothing():
            outs.append(model.generate(ids, **kwargs, **extra))
    return outs


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _assert_identical(ref, out):
    assert torch.equal(ref.sequences, out.sequences)
    assert len(ref.logits) == len(out.logits)
    for step, (a, b) in enumerate(zip(ref.logits, out.logits)):
        assert torch.equal(a, b), f"logits of step {step} differ: max {(a - b).abs().max().item():.3e}"
    for a, b in zip(ref.scores or (), out.scores or ()):
        assert torch.equal(a, b)


def _ids(model, batch=1, length=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, model.config.vocab_size, (batch, length), generator=g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("preset", PRESETS)
def test_greedy_identical_to_python_layers(preset, dtype, monkeypatch):
    model = build_random_model(preset, dtype=dtype, seed=1)
    steps = CountSteps(monkeypatch)
    ref, out = _generate_both(model, _ids(model))
    _assert_identical(ref, out)
    assert steps.count == 11  # every decode step after the prefill's token ran in C++


@pytest.mark.parametrize("preset", ["tiny-e2b", "tiny-26b-a4b"])
@pytest.mark.parametrize("weights,group", [("int4", 32), ("int8", None)])
def test_quantized_identical_to_python_layers(preset, weights, group, monkeypatch):
    model = build_random_model(preset, dtype=torch.bfloat16, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny widths: a few modules do not fit the groups
        quantize(model, QuantizationConfig(weights=weights, group_size=group))
    steps = CountSteps(monkeypatch)
    ref, out = _generate_both(model, _ids(model, seed=3))
    _assert_identical(ref, out)
    assert steps.count == 11


def test_padded_batch_and_sampling_identical(monkeypatch):
    """Left padding (its slot masks), four rows, and sampling with a seeded generator."""
    model = build_random_model("tiny-e2b", dtype=torch.bfloat16, seed=4)
    ids = _ids(model, batch=4, length=12, seed=5)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    mask[3, :2] = 0
    ids[mask == 0] = model.config.pad_token_id
    steps = CountSteps(monkeypatch)
    ref, out = _generate_both(model, ids, attention_mask=mask, do_sample=True, top_k=50, temperature=0.9,
                              seed=6, max_new_tokens=20)
    _assert_identical(ref, out)
    assert steps.count == 19


def test_yarn_attention_scaling_identical(monkeypatch):
    """yarn with mscale multiplies the rotated q and k (rope_scaling != 1): the C++ layers multiply too."""
    model = build_random_model("tiny-e2b", dtype=torch.float32, seed=7)
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 12, "mscale": 1.2,
            "mscale_all_dim": 0.8}
    model.set_rope_parameters({"sliding_attention": {**yarn, "rope_theta": 10_000.0},
                               "full_attention": {**yarn, "rope_theta": 1_000_000.0}})
    assert model.model.layers[0].self_attn.rope_scaling != 1.0
    steps = CountSteps(monkeypatch)
    ref, out = _generate_both(model, _ids(model, length=10), max_new_tokens=24)  # past the window of 8
    _assert_identical(ref, out)
    assert steps.count == 23


def test_cache_that_grows_rebuilds_the_layers(monkeypatch):
    """A user's cache smaller than the generation reallocates its buffers mid-way: the layers take the new ones."""
    model = build_random_model("tiny-31b", dtype=torch.float32, seed=8)
    ids = _ids(model, length=6)
    outs = []
    steps = CountSteps(monkeypatch)
    for python in (True, False):
        cache = Gemma4Cache(model.config, max_cache_len=8)
        with decode_step.python_decode_layers() if python else _nothing():
            outs.append(model.generate(ids, past_key_values=cache, max_new_tokens=16, do_sample=False,
                                       return_dict_in_generate=True, output_logits=True, output_scores=True))
        assert cache.max_cache_len > 8  # it grew
    _assert_identical(*outs)
    assert steps.count == 15


@pytest.mark.parametrize("length,chunk", [(1, None), (9, 4), (9, 1)])
def test_one_token_prompt_and_chunked_prefill(length, chunk, monkeypatch):
    """A one-token prompt (the cache's buffers do not exist before its forward) and prefill chunks, one token
    long included (a T = 1 forward that is not a decode step)."""
    model = build_random_model("tiny-e2b", dtype=torch.float32, seed=14)
    steps = CountSteps(monkeypatch)
    ref, out = _generate_both(model, _ids(model, length=length), prefill_chunk_size=chunk)
    _assert_identical(ref, out)
    assert steps.count >= 10


def test_hooked_model_runs_the_python_layers(monkeypatch):
    model = build_random_model("tiny-e2b", dtype=torch.float32, seed=9)
    seen = []
    handle = model.model.layers[3].mlp.down_proj.register_forward_hook(lambda m, a, out: seen.append(out.shape))
    steps = CountSteps(monkeypatch)
    model.generate(_ids(model), max_new_tokens=6, do_sample=False)
    assert steps.count == 0 and len(seen) == 6  # the prefill and five decode steps, each seen by the hook
    assert decode_step.unsupported_reason(model.model) == "layers.3.mlp.down_proj has a forward hook"
    handle.remove()
    assert decode_step.unsupported_reason(model.model) is None


def test_lora_model_runs_the_python_layers(monkeypatch):
    model = build_random_model("tiny-e2b", dtype=torch.float32, seed=10)
    model.add_adapter(gemma4.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    assert "is a" in decode_step.unsupported_reason(model.model)
    steps = CountSteps(monkeypatch)
    ids = _ids(model)
    before = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert steps.count == 0
    model.disable_adapters() if hasattr(model, "disable_adapters") else None
    assert before.shape == (1, ids.shape[1] + 6)


def test_manual_forward_with_a_cache_is_unchanged(monkeypatch):
    """Outside generate no session is attached: a transformers-style loop runs the Python layers."""
    model = build_random_model("tiny-e2b", dtype=torch.float32, seed=11)
    steps = CountSteps(monkeypatch)
    ids = _ids(model)
    with torch.no_grad():
        out = model(ids, use_cache=True)
        model(ids[:, -1:], past_key_values=out.past_key_values)
    assert steps.count == 0 and out.past_key_values.decode_session is None


def test_bad_build_is_one_clear_error():
    from gemma4 import ops  # noqa: F401  (registers the class)

    layers = torch.classes.gemma4.DecodeLayers()
    with pytest.raises(RuntimeError, match="add_layer: missing field 'heads'"):
        layers.add_layer({}, {}, {}, "gelu_tanh")
    with pytest.raises(RuntimeError, match=r"step: x must be \[B, 1, H\]"):
        layers.step(torch.randn(1, 2, 8), torch.zeros(1, 2, dtype=torch.long), None)
    assert layers.num_layers() == 0  # a failed add_layer added nothing


def test_failed_step_leaves_the_model_and_generate_usable():
    """A session is detached when generate raises, and the next call works."""
    model = build_random_model("tiny-e2b", dtype=torch.float32, seed=12)
    ids = _ids(model)
    cache = Gemma4Cache(model.config, max_cache_len=64)
    with pytest.raises(Exception):
        model.generate(ids, past_key_values=cache, max_new_tokens=4, do_sample=False,
                       stopping_criteria=[lambda *a, **k: (_ for _ in ()).throw(RuntimeError("stop"))])
    assert cache.decode_session is None
    assert model.generate(ids, max_new_tokens=4, do_sample=False).shape[1] == ids.shape[1] + 4


def test_copied_model_gets_its_own_layers(monkeypatch):
    """Two models (a deep copy changed afterwards) each decode with their own weights."""
    model = build_random_model("tiny-e2b", dtype=torch.float32, seed=13)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.model.layers[0].mlp.up_proj.weight.mul_(-1)
    ids = _ids(model)
    a = model.generate(ids, max_new_tokens=8, do_sample=False, return_dict_in_generate=True, output_logits=True)
    b = other.generate(ids, max_new_tokens=8, do_sample=False, return_dict_in_generate=True, output_logits=True)
    assert not torch.equal(a.logits[-1], b.logits[-1])
    with decode_step.python_decode_layers():
        b_ref = other.generate(ids, max_new_tokens=8, do_sample=False, return_dict_in_generate=True,
                               output_logits=True)
    _assert_identical(b_ref, b)
