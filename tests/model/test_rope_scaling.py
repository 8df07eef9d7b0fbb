"""Every RoPE type transformers 5.17 accepts for Gemma 4 (default, proportional, linear, dynamic, yarn,
llama3), on sliding and full layers, against transformers: the frequencies and scaling it holds, the
fp32 logits past the original length, cached decoding across it, and greedy generation."""
from __future__ import annotations

import math

import pytest
import torch

import gemma4
from gemma4.rope_scaling import rope_frequencies
from tests.oracle import make_hf_model, save_hf

ORIGINAL = 24  # max_position_embeddings of the test models: sequences run well past it
TYPES = {
    "default": {},
    "proportional": {"partial_rotary_factor": 0.5, "factor": 2.0},
    "linear": {"factor": 2.5},
    "dynamic": {"factor": 3.0},
    "yarn": {"factor": 4.0, "original_max_position_embeddings": ORIGINAL, "beta_fast": 8, "beta_slow": 1},
    "yarn_mscale": {"factor": 4.0, "original_max_position_embeddings": 12, "mscale": 1.2, "mscale_all_dim": 0.8},
    "llama3": {"factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 12},
}


def rope_parameters(kind: str) -> dict:
    """The same type on both layer types (full layers with their own theta), as config.json holds it."""
    rope_type = kind.split("_")[0]
    return {"sliding_attention": {"rope_type": rope_type, "rope_theta": 10_000.0, **TYPES[kind]},
            "full_attention": {"rope_type": rope_type, "rope_theta": 1_000_000.0, **TYPES[kind]}}


@pytest.fixture(scope="module", params=list(TYPES))
def pair(request, tmp_path_factory):
    hf = make_hf_model("tiny-e2b", torch.float32, max_position_embeddings=ORIGINAL,
                       rope_parameters=rope_parameters(request.param))
    path = save_hf(hf, tmp_path_factory.mktemp(request.param))
    ours = gemma4.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return request.param, hf, ours


def _close(got, want, what):
    scale = want.abs().max().item()
    err = (got - want).abs().max().item()
    assert err <= 1e-4 * scale, f"{what}: {err:.3e} against scale {scale:.2f}"


def test_frequencies_and_scaling_equal_transformers(pair):
    kind, hf, ours = pair
    rotary = hf.model.rotary_emb
    for t in ("sliding_attention", "full_attention"):
        inv_freq, scaling = ours.config.rope_frequencies(t)
        want = getattr(rotary, f"{t}_inv_freq")
        assert torch.equal(inv_freq, want), f"{kind} {t}: inverse frequencies differ"
        assert scaling == getattr(rotary, f"{t}_attention_scaling"), f"{kind} {t}: attention scaling"
    if kind == "yarn_mscale":
        assert scaling != 1.0  # the case exercises the scaling


def test_logits_past_the_original_length(pair):
    """One prefill of 2.5x the original length; for dynamic, then a shorter one (back to the originals)."""
    kind, hf, ours = pair
    for T in (int(2.5 * ORIGINAL), ORIGINAL // 2):
        ids = torch.randint(3, hf.config.vocab_size, (2, T))
        with torch.no_grad():
            _close(ours(input_ids=ids).logits, hf(input_ids=ids).logits, f"{kind} T={T}")


def test_cached_decoding_across_the_original_length(pair):
    """Greedy generation from a prompt shorter than the original length to well past it: the same
    tokens, and every step's logits equal transformers' (dynamic re-stretches at each step there)."""
    kind, hf, ours = pair
    ids = torch.randint(3, hf.config.vocab_size, (1, ORIGINAL - 6))
    kw = dict(max_new_tokens=2 * ORIGINAL, min_new_tokens=2 * ORIGINAL, do_sample=False, pad_token_id=0,
              eos_token_id=None, return_dict_in_generate=True, output_logits=True)
    with torch.no_grad():
        want = hf.generate(input_ids=ids, **kw)
        got = ours.generate(ids, **kw)
    assert torch.equal(got.sequences, want.sequences), f"{kind}: greedy tokens differ from transformers'"
    for step, (g, w) in enumerate(zip(got.logits, want.logits)):
        _close(g, w, f"{kind} step {step}")


def test_dynamic_follows_the_longest_sequence_seen():
    """dynamic keeps the frequencies of the longest sequence so far until one within the original length
    comes (transformers' state), and recomputes them on growth, as transformers does."""
    hf = make_hf_model("tiny-e2b", torch.float32, max_position_embeddings=ORIGINAL,
                       rope_parameters=rope_parameters("dynamic"))
    config = gemma4.Gemma4Config.from_dict(hf.config.to_dict())
    ours = gemma4.Gemma4ForCausalLM(config)
    ours.load_state_dict(hf.state_dict(), strict=False)
    for T in (3 * ORIGINAL, 2 * ORIGINAL, ORIGINAL + 3, ORIGINAL - 4, 2 * ORIGINAL):
        ids = torch.randint(3, hf.config.vocab_size, (1, T))
        with torch.no_grad():
            _close(ours(input_ids=ids).logits, hf(input_ids=ids).logits, f"dynamic T={T}")
        for t in ("sliding_attention", "full_attention"):
            assert torch.equal(getattr(ours.model, f"{t}_inv_freq"), getattr(hf.model.rotary_emb, f"{t}_inv_freq"))


@pytest.mark.parametrize("rope_type", ["linear", "dynamic", "yarn", "llama3"])
def test_partial_rotation_fills_the_first_pairs(rope_type):
    """partial_rotary_factor p < 1 with a scaled type (transformers 5.17 computes int(d*p)/2 frequencies
    and cannot apply them to a Gemma 4 head): the first int(d*p)/2 of the d/2 pairs rotate with the
    frequencies of a d*p-wide head, the rest do not rotate, as in Gemma 4's proportional layout."""
    d, p = 64, 0.5
    params = {"rope_type": rope_type, "rope_theta": 10_000.0, "partial_rotary_factor": p,
              **TYPES["yarn" if rope_type == "yarn" else rope_type]}
    inv_freq, _ = rope_frequencies(params, d, ORIGINAL)
    narrow, _ = rope_frequencies({**params, "partial_rotary_factor": 1.0}, int(d * p), ORIGINAL)
    assert inv_freq.shape == (d // 2,)
    assert torch.equal(inv_freq[: int(d * p) // 2], narrow)
    assert (inv_freq[int(d * p) // 2:] == 0).all()
    # reference: float64 textbook formulas for the rotated pairs
    j = torch.arange(0, int(d * p), 2, dtype=torch.float64) / int(d * p)
    plain = 10_000.0 ** -j
    if rope_type == "linear":
        torch.testing.assert_close(narrow.double(), plain / 2.5, rtol=1e-6, atol=0)


def test_the_model_runs_with_partial_rotation_and_a_scaled_type():
    config = gemma4.get_preset("tiny-e2b")
    d = config.to_dict()
    d["max_position_embeddings"] = ORIGINAL
    d["rope_parameters"]["full_attention"] = {"rope_type": "yarn", "rope_theta": 1e6, "partial_rotary_factor": 0.25,
                                              **TYPES["yarn"]}
    model = gemma4.Gemma4ForCausalLM(gemma4.Gemma4Config.from_dict(d))
    spec = next(s for s in model.config.layers if s.layer_type == "full_attention")
    assert spec.rotary_dims == 2 * (int(spec.head_dim * 0.25) // 2)
    out = model(input_ids=torch.randint(3, 100, (1, 2 * ORIGINAL))).logits
    assert out.isfinite().all()


def test_yarn_attention_factor_formula():
    """yarn's default attention factor 0.1 ln(factor) + 1, and the mscale ratio when both are given."""
    base = {"rope_type": "yarn", "rope_theta": 10_000.0, "factor": 8.0, "original_max_position_embeddings": 16}
    assert rope_frequencies(base, 32, 128)[1] == pytest.approx(0.1 * math.log(8.0) + 1)
    ratio = rope_frequencies({**base, "mscale": 1.0, "mscale_all_dim": 0.5}, 32, 128)[1]
    assert ratio == pytest.approx((0.1 * math.log(8) + 1) / (0.05 * math.log(8) + 1))
    assert rope_frequencies({**base, "attention_factor": 0.7}, 32, 128)[1] == 0.7


@pytest.mark.parametrize("entry, match", [
    ({"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}, "original_max_position_embeddings"),
    ({"rope_type": "linear", "rope_theta": 1e4}, r"\.factor': required by rope_type 'linear'"),
    ({"rope_type": "dynamic", "rope_theta": 1e4, "factor": -1.0}, "factor': must be a positive number"),
    ({"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0,
      "original_max_position_embeddings": 16}, "high_freq_factor': must exceed low_freq_factor"),
    ({"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0, "original_max_position_embeddings": 0},
     "original_max_position_embeddings': must be a positive integer"),
    ({"rope_type": "longrope", "rope_theta": 1e4}, "'longrope' is not supported"),
])
def test_bad_rope_parameters(entry, match):
    d = gemma4.get_preset("tiny-e2b").to_dict()
    d["rope_parameters"]["sliding_attention"] = entry
    with pytest.raises(gemma4.ConfigError, match=match):
        gemma4.Gemma4Config.from_dict(d)


def test_set_rope_parameters_on_a_built_model(tmp_path):
    """Switching a loaded model's RoPE from Python gives the model loaded with that config; a refused
    switch leaves it as it was."""
    hf = make_hf_model("tiny-e2b", torch.float32, max_position_embeddings=ORIGINAL)
    model = gemma4.AutoModelForCausalLM.from_pretrained(save_hf(hf, tmp_path), dtype=torch.float32)
    ids = torch.randint(3, hf.config.vocab_size, (1, 2 * ORIGINAL))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        with pytest.raises(gemma4.ConfigError, match="original_max_position_embeddings"):
            model.set_rope_parameters(rope_parameters("yarn") | {"full_attention": {"rope_type": "yarn", "rope_theta": 1e6,
                                                                                    "factor": 2.0}})
        assert torch.equal(model(input_ids=ids).logits, before)
        model.set_rope_parameters(rope_parameters("yarn_mscale"))
        want = make_hf_model("tiny-e2b", torch.float32, max_position_embeddings=ORIGINAL,
                             rope_parameters=rope_parameters("yarn_mscale"))
        want.load_state_dict(hf.state_dict())
        _close(model(input_ids=ids).logits, want(input_ids=ids).logits, "yarn after set_rope_parameters")
