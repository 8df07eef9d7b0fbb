"""Architecture knobs as data: each config field a researcher turns, set away from the presets' values,
gives the logits transformers 5.17 computes for the same config and weights (fp32, 1e-4 of the scale),
with a padded batch, in prefill and in cached greedy decoding."""
from __future__ import annotations

import pytest
import torch

import gemma4
from tests.oracle import make_hf_model, save_hf

S, F = "sliding_attention", "full_attention"

KNOBS = {
    "silu activation": ("tiny-e2b", dict(hidden_activation="silu")),
    "layer pattern and window": ("tiny-e4b", dict(layer_types=[S, F, S, S, F, S, S, S, F, S, S, F],
                                                  sliding_window=5)),
    "kv-shared layer count": ("tiny-e4b", dict(num_kv_shared_layers=3)),
    "no kv sharing": ("tiny-e2b", dict(num_kv_shared_layers=0)),
    "head dims per layer type": ("tiny-31b", dict(head_dim=16, global_head_dim=128)),
    "kv heads per layer type": ("tiny-31b", dict(num_key_value_heads=4, num_global_key_value_heads=2)),
    "keys as values on an E model": ("tiny-e2b", dict(attention_k_eq_v=True, num_global_key_value_heads=1)),
    "keys as values off": ("tiny-31b", dict(attention_k_eq_v=False)),
    "double-wide MLP off": ("tiny-e2b", dict(use_double_wide_mlp=False)),
    "PLE width": ("tiny-e4b", dict(hidden_size_per_layer_input=8)),
    "PLE off": ("tiny-e4b", dict(hidden_size_per_layer_input=0)),
    "MoE experts, top-k, width": ("tiny-26b-a4b", dict(num_experts=5, top_k_experts=3, moe_intermediate_size=24)),
    "soft-cap off": ("tiny-e2b", dict(final_logit_softcapping=None)),
    "soft-cap 5": ("tiny-31b", dict(final_logit_softcapping=5.0)),
}


@pytest.mark.parametrize("knob", list(KNOBS))
def test_knob_matches_transformers(knob, tmp_path):
    preset, overrides = KNOBS[knob]
    hf = make_hf_model(preset, torch.float32, **overrides)
    ours = gemma4.AutoModelForCausalLM.from_pretrained(save_hf(hf, tmp_path), dtype=torch.float32)
    for name, value in overrides.items():
        assert getattr(ours.config, name) == value, name  # the knob reached our config
    ids = torch.randint(3, hf.config.vocab_size, (2, 21))
    mask = torch.ones_like(ids)
    mask[1, :6] = 0  # left padding
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).logits[mask.bool()]
        got = ours(input_ids=ids, attention_mask=mask).logits[mask.bool()]
        scale = want.abs().max().item()
        assert (got - want).abs().max().item() <= 1e-4 * scale, knob
        kw = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=None)
        assert torch.equal(ours.generate(ids[:1], **kw), hf.generate(input_ids=ids[:1], **kw)), knob
