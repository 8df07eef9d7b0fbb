"""Gemma4Config and LayerSpec against transformers 5.17.0's Gemma4TextConfig and modules.

Every config.json form (nested multimodal, flat text, legacy global_head_dim fields, 5.17's
per_layer_config), the presets against transformers' own modules layer by layer (head sizes, KV
heads, KV sharing, MLP width, RoPE frequencies bit for bit), round trips through transformers, and
bad configs that must raise ConfigError naming the key.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import warnings

import pytest
import torch

from gemma4.config import FULL_ATTENTION, SLIDING_ATTENTION, Gemma4Config, LayerSpec, rope_inv_freq
from gemma4.errors import ConfigError, ConfigNotFoundError
from gemma4.presets import PRESETS, RELEASED, get_preset
from tests.oracle import HF_CLASSES, hf_config, preset_dict

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import transformers
    from transformers import Gemma4ForCausalLM as HFCausalLM
    from transformers import Gemma4TextConfig, Gemma4VisionConfig
    from transformers.models.gemma4.modeling_gemma4 import Gemma4TextRotaryEmbedding

ALL = list(PRESETS)
S, F = SLIDING_ATTENTION, FULL_ATTENTION

# to_dict keys that legitimately differ between our output and transformers' (bookkeeping only).
_BOOKKEEPING = {"architectures", "transformers_version", "_name_or_path", "dtype", "global_head_dim",
                "num_global_key_value_heads", "output_hidden_states", "return_dict", "chunk_size_feed_forward",
                "is_encoder_decoder", "id2label", "label2id", "problem_type", "output_attentions"}


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _hf_meta_model(config: Gemma4TextConfig) -> HFCausalLM:
    with torch.device("meta"):
        return _quiet(HF_CLASSES[config.model_type][1], config)  # Gemma4ForCausalLM or the Unified one


def _comparable(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in _BOOKKEEPING}


# --------------------------------------------------------------------------------- class defaults
def test_class_defaults_are_transformers_defaults():
    ours, theirs = _quiet(Gemma4Config), _quiet(Gemma4TextConfig)
    theirs_dict = theirs.to_dict()
    for f in dataclasses.fields(Gemma4Config):
        if f.name in ("global_head_dim", "num_global_key_value_heads", "dtype"):
            continue
        assert getattr(ours, f.name) == theirs_dict[f.name], f.name
    assert ours.global_head_dim == 512 and ours.num_global_key_value_heads is None  # popped defaults upstream
    assert ours.hidden_size_per_layer_input == 256  # the dangerous default, kept for fidelity
    assert [s.head_dim for s in ours.layers] == [theirs.per_layer_config[i].head_dim for i in range(30)]


# --------------------------------------------------------------------------------- presets vs modules
@pytest.mark.parametrize("name", ALL)
def test_layer_specs_match_transformers_modules(name):
    ours = get_preset(name)
    hf_cfg = hf_config(name)
    model = _hf_meta_model(hf_cfg)
    L = hf_cfg.num_hidden_layers
    assert len(ours.layers) == L
    hf_layers = model.model.layers
    stores = {i for i, layer in enumerate(hf_layers) if layer.self_attn.store_full_length_kv}
    for i, (spec, layer) in enumerate(zip(ours.layers, hf_layers)):
        attn, mlp = layer.self_attn, layer.mlp
        assert spec.index == i
        assert spec.layer_type == hf_cfg.layer_types[i]
        assert spec.is_sliding == attn.is_sliding
        assert spec.window == (attn.sliding_window or 0)
        assert spec.head_dim == attn.head_dim
        assert tuple(attn.q_proj.weight.shape) == (spec.num_heads * spec.head_dim, ours.hidden_size)
        assert tuple(attn.o_proj.weight.shape) == (ours.hidden_size, spec.num_heads * spec.head_dim)
        assert spec.num_kv_heads == hf_cfg.per_layer_config[i].num_key_value_heads
        assert spec.num_kv_groups == attn.num_key_value_groups
        assert spec.k_eq_v == attn.use_alternative_attention
        assert spec.kv_shared == attn.is_kv_shared_layer
        if spec.kv_shared:
            assert not hasattr(attn, "k_proj") and not hasattr(attn, "v_proj")
            # transformers reads shared_kv_states[layer_type], written by the storing layer of that type.
            (source,) = [j for j in stores if hf_cfg.layer_types[j] == spec.layer_type]
            assert spec.kv_source == source and spec.kv_layer == source
            assert spec.cache_index is None
        else:
            assert spec.kv_source is None and spec.kv_layer == i
            assert tuple(attn.k_proj.weight.shape) == (spec.num_kv_heads * spec.head_dim, ours.hidden_size)
            assert (attn.v_proj is None) == spec.k_eq_v
        shared_types = {s.layer_type for s in ours.layers if s.kv_shared}
        assert spec.stores_shared_kv == (attn.store_full_length_kv and spec.layer_type in shared_types)
        assert spec.intermediate_size == mlp.intermediate_size == mlp.gate_proj.weight.shape[0]
        assert spec.has_ple == hasattr(layer, "per_layer_input_gate")
        assert spec.has_moe == getattr(layer, "enable_moe_block", False) == hasattr(layer, "experts")
    assert ours.num_kv_layers == sum(not layer.self_attn.is_kv_shared_layer for layer in hf_layers)
    assert [s.cache_index for s in ours.layers if not s.kv_shared] == list(range(ours.num_kv_layers))


@pytest.mark.parametrize("name", ALL)
def test_rope_inv_freq_bit_exact(name):
    ours = get_preset(name)
    rotary = Gemma4TextRotaryEmbedding(hf_config(name))
    for layer_type in sorted(set(ours.layer_types)):
        want = getattr(rotary, f"{layer_type}_inv_freq")
        got = ours.rope_inv_freq(layer_type)
        assert got.dtype == torch.float32 and want.dtype == torch.float32
        assert torch.equal(got, want), layer_type
        assert rotary.rope_type[layer_type] == next(s.rope_type for s in ours.layers if s.layer_type == layer_type)
        assert getattr(rotary, f"{layer_type}_attention_scaling") == 1.0


def test_proportional_rope_layout():
    """Doc 2.4: a 512 head with factor 0.25 has 64 non-zero frequencies 1e6^(-2j/512), then zeros."""
    spec = next(s for s in get_preset("gemma-4-E2B").layers if s.layer_type == F)
    inv = spec.rope_inv_freq()
    assert inv.shape == (256,) and spec.rotary_dims == 128
    j = torch.arange(64, dtype=torch.float64)
    torch.testing.assert_close(inv[:64].double(), 1e6 ** (-2 * j / 512), rtol=1e-6, atol=0)
    assert torch.all(inv[64:] == 0)
    sliding = next(s for s in get_preset("gemma-4-E2B").layers if s.layer_type == S).rope_inv_freq()
    j = torch.arange(128, dtype=torch.float64)
    torch.testing.assert_close(sliding.double(), 1e4 ** (-2 * j / 256), rtol=1e-6, atol=0)
    # a rope `factor` divides proportional frequencies; "default" ignores factor and partial factor
    torch.testing.assert_close(rope_inv_freq("proportional", 1e6, 512, 0.25, 8.0), inv / 8.0, rtol=0, atol=0)
    assert torch.equal(rope_inv_freq("default", 1e4, 256), sliding)


def test_rope_with_factor_matches_transformers():
    rope = copy.deepcopy(PRESETS["tiny-e2b"]["rope_parameters"])
    rope["full_attention"]["factor"] = 4.0
    rope["full_attention"]["partial_rotary_factor"] = 0.5
    rope["sliding_attention"]["rope_theta"] = 5000
    ours = get_preset("tiny-e2b", rope_parameters=rope)
    rotary = Gemma4TextRotaryEmbedding(hf_config("tiny-e2b", rope_parameters=rope))
    for t in (S, F):
        assert torch.equal(ours.rope_inv_freq(t), getattr(rotary, f"{t}_inv_freq")), t


# --------------------------------------------------------------------------------- released numbers
# gemma4-architecture.md 1.2: per-layer projection shapes [out, in] and KV-cache layer counts.
_DOC_SHAPES = {
    "gemma-4-E2B": {S: ([2048, 1536], [256, 1536], [256, 1536], [1536, 2048], 8),
                    F: ([4096, 1536], [512, 1536], [512, 1536], [1536, 4096], 8)},
    "gemma-4-E4B": {S: ([2048, 2560], [512, 2560], [512, 2560], [2560, 2048], 4),
                    F: ([4096, 2560], [1024, 2560], [1024, 2560], [2560, 4096], 4)},
    "gemma-4-31B": {S: ([8192, 5376], [4096, 5376], [4096, 5376], [5376, 8192], 2),
                    F: ([16384, 5376], [2048, 5376], None, [5376, 16384], 8)},
    "gemma-4-26B-A4B": {S: ([4096, 2816], [2048, 2816], [2048, 2816], [2816, 4096], 2),
                        F: ([8192, 2816], [1024, 2816], None, [2816, 8192], 8)},
    "gemma-4-12B": {S: ([4096, 3840], [2048, 3840], [2048, 3840], [3840, 4096], 2),
                    F: ([8192, 3840], [512, 3840], None, [3840, 8192], 16)},
}
_DOC_KV_LAYERS = {"gemma-4-E2B": 15, "gemma-4-E4B": 24, "gemma-4-31B": 60, "gemma-4-26B-A4B": 30, "gemma-4-12B": 48}
_DOC_FULL_LAYERS = {"gemma-4-E2B": [4, 9, 14, 19, 24, 29, 34], "gemma-4-E4B": [5, 11, 17, 23, 29, 35, 41],
                    "gemma-4-31B": list(range(5, 60, 6)), "gemma-4-26B-A4B": [5, 11, 17, 23, 29],
                    "gemma-4-12B": list(range(5, 48, 6))}


@pytest.mark.parametrize("name", RELEASED)
def test_released_presets_match_architecture_doc(name):
    ours = get_preset(name)
    model = _hf_meta_model(hf_config(name))
    assert [s.index for s in ours.layers if s.layer_type == F] == _DOC_FULL_LAYERS[name]
    assert ours.num_kv_layers == _DOC_KV_LAYERS[name]
    for spec, layer in zip(ours.layers, model.model.layers):
        if spec.kv_shared:
            continue
        q, k, v, o, groups = _DOC_SHAPES[name][spec.layer_type]
        attn = layer.self_attn
        assert list(attn.q_proj.weight.shape) == q and list(attn.k_proj.weight.shape) == k
        assert (attn.v_proj is None) if v is None else list(attn.v_proj.weight.shape) == v
        assert list(attn.o_proj.weight.shape) == o and spec.num_kv_groups == groups
    if name == "gemma-4-E2B":
        assert [s.intermediate_size for s in ours.layers] == [6144] * 15 + [12288] * 20
        assert [s.kv_source for s in ours.layers[15:]] == [13 if s.is_sliding else 14 for s in ours.layers[15:]]
        assert list(model.model.embed_tokens_per_layer.weight.shape) == [262144, 8960]
    if name == "gemma-4-E4B":
        assert [s.kv_source for s in ours.layers[24:]] == [22 if s.is_sliding else 23 for s in ours.layers[24:]]
        assert list(model.model.per_layer_model_projection.weight.shape) == [10752, 2560]
    if name == "gemma-4-26B-A4B":
        layer = model.model.layers[0]
        assert list(layer.experts.gate_up_proj.shape) == [128, 1408, 2816]
        assert list(layer.experts.down_proj.shape) == [128, 2816, 704]
        assert list(layer.router.proj.weight.shape) == [128, 2816]


def test_tiny_presets_cover_every_feature():
    e2b, e4b, b31, moe = (get_preset(n) for n in ("tiny-e2b", "tiny-e4b", "tiny-31b", "tiny-26b-a4b"))
    for c in (e2b, e4b):
        shared = [s for s in c.layers if s.kv_shared]
        assert {s.layer_type for s in shared} == {S, F}  # reads both a sliding and a full source
        assert {c.layers[s.kv_source].layer_type for s in shared} == {S, F}
        assert c.has_ple and all(s.has_ple for s in c.layers)
    assert {s.intermediate_size for s in e2b.layers if s.kv_shared} == {192}
    assert {s.intermediate_size for s in e2b.layers if not s.kv_shared} == {96}
    assert [s.layer_type for s in e2b.layers[:5]] == [S, S, S, S, F]  # 4:1
    assert [s.layer_type for s in e4b.layers[:6]] == [S, S, S, S, S, F]  # 5:1
    for c in (b31, moe):
        assert not c.has_ple and any(s.k_eq_v for s in c.layers) and c.num_kv_layers == c.num_hidden_layers
        assert {s.num_kv_heads for s in c.layers if not s.is_sliding} == {1}
    assert all(s.has_moe for s in moe.layers) and not any(s.has_moe for s in b31.layers)
    for name in ("tiny-e2b", "tiny-e4b", "tiny-31b", "tiny-26b-a4b"):
        c = get_preset(name)
        assert (c.vocab_size, c.hidden_size, c.num_attention_heads, c.num_key_value_heads) == (512, 64, 4, 2)
        assert (c.head_dim, c.global_head_dim, c.sliding_window, c.intermediate_size) == (32, 64, 8, 96)
        assert c.final_logit_softcapping == 30.0 and c.rms_norm_eps == 1e-6 and 8 <= c.num_hidden_layers <= 12
    small = get_preset("small-e2b")
    assert (small.hidden_size, small.vocab_size, small.num_hidden_layers, small.num_kv_layers) == (1536, 262144, 5, 3)


def test_get_preset_unknown_name_lists_names():
    with pytest.raises(KeyError, match="tiny-e2b.*gemma-4-E2B|gemma-4-E2B.*tiny-e2b"):
        get_preset("gemma-4-7B")
    assert get_preset("tiny-e2b", sliding_window=16).sliding_window == 16


# --------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("name", ALL)
def test_to_dict_loads_into_equal_transformers_config(name, tmp_path):
    ours = get_preset(name)
    want = hf_config(name)
    d = ours.to_dict()
    config_class, model_class = HF_CLASSES[d["model_type"]][:2]
    assert d["model_type"] == PRESETS[name]["model_type"] and d["architectures"] == [model_class.__name__]
    theirs = _quiet(config_class, **{k: v for k, v in d.items() if k != "model_type"})
    assert _comparable(theirs.to_dict()) == _comparable(want.to_dict())
    assert d["per_layer_config"] == want.to_dict()["per_layer_config"]  # 5.17's own serialised form
    for i in range(ours.num_hidden_layers):
        assert theirs.per_layer_config[i].head_dim == want.per_layer_config[i].head_dim
        assert theirs.per_layer_config[i].num_key_value_heads == want.per_layer_config[i].num_key_value_heads
    # through a file, with transformers' AutoConfig
    ours.save_pretrained(tmp_path)
    auto = _quiet(transformers.AutoConfig.from_pretrained, tmp_path)
    assert type(auto) is config_class
    assert _comparable(auto.to_dict()) == _comparable(want.to_dict())
    assert auto.dtype == (None if ours.dtype is None else getattr(torch, ours.dtype))


@pytest.mark.parametrize("name", ALL)
def test_reads_transformers_5_17_serialisation(name, tmp_path):
    """5.17 writes per_layer_config (zero-padded keys) and no global_head_dim: read it back equal."""
    want = get_preset(name)
    hf = hf_config(name)
    d = hf.to_dict()
    assert "global_head_dim" not in d and "num_global_key_value_heads" not in d
    assert Gemma4Config.from_dict(d) == dataclasses.replace(want, dtype=want.dtype)
    _quiet(hf.save_pretrained, tmp_path)
    again = Gemma4Config.from_pretrained(tmp_path)
    assert again == want and again.layers == want.layers


def test_from_dict_of_own_to_dict_is_identity():
    for name in ALL:
        c = get_preset(name)
        assert Gemma4Config.from_dict(json.loads(c.to_json_string())) == c


@pytest.mark.parametrize("name", ["tiny-e2b", "tiny-31b", "gemma-4-26B-A4B"])
def test_nested_multimodal_form(name, tmp_path):
    text = hf_config(name).to_dict()
    nested = _quiet(transformers.Gemma4Config, text_config=text,
                    vision_config=Gemma4VisionConfig(hidden_size=32, num_hidden_layers=1).to_dict(),
                    audio_config=None)
    _quiet(nested.save_pretrained, tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["model_type"] == "gemma4" and "text_config" in raw
    assert Gemma4Config.from_pretrained(tmp_path) == get_preset(name)


def test_nested_form_top_level_fallbacks():
    text = preset_dict("tiny-e2b")
    for k in ("eos_token_id", "bos_token_id", "pad_token_id", "dtype", "tie_word_embeddings"):
        text.pop(k, None)
    d = {"model_type": "gemma4", "architectures": ["Gemma4ForConditionalGeneration"], "text_config": text,
         "vision_config": {"model_type": "gemma4_vision"}, "audio_config": None, "eos_token_id": [1, 106],
         "bos_token_id": 2, "pad_token_id": 0, "dtype": "bfloat16", "tie_word_embeddings": True,
         "image_token_id": 258880}
    c = Gemma4Config.from_dict(d)
    assert c.eos_token_id == [1, 106] and c.dtype == "bfloat16" and c.torch_dtype == torch.bfloat16
    # the text config's own values win over the top level
    text["eos_token_id"] = 1
    text["torch_dtype"] = "float32"
    c = Gemma4Config.from_dict(d)
    assert c.eos_token_id == 1 and c.dtype == "float32"


def test_legacy_and_per_layer_forms_agree():
    legacy = preset_dict("tiny-31b")
    assert legacy["global_head_dim"] == 64 and legacy["num_global_key_value_heads"] == 1
    want = get_preset("tiny-31b")
    for keys in (["05", "11"], [5, 11], ["5", "11"]):
        d = copy.deepcopy(legacy)
        del d["global_head_dim"], d["num_global_key_value_heads"]
        d["per_layer_config"] = {k: {"head_dim": 64, "num_key_value_heads": 1} for k in keys}
        got = Gemma4Config.from_dict(d)
        assert got == want and got.layers == want.layers
    # per_layer_config wins over stale legacy fields (transformers pops and ignores them)
    d = copy.deepcopy(legacy)
    d["global_head_dim"] = 128
    d["per_layer_config"] = {"05": {"head_dim": 64, "num_key_value_heads": 1},
                             "11": {"head_dim": 64, "num_key_value_heads": 1}}
    with pytest.warns(UserWarning, match="global_head_dim=128 is ignored"):
        assert Gemma4Config.from_dict(d) == want
    # an empty per_layer_config means full layers use the global head_dim (5.17 drops equal overrides)
    d = copy.deepcopy(legacy)
    d["per_layer_config"] = {}
    with pytest.warns(UserWarning, match="global_head_dim=64 is ignored"):
        got = Gemma4Config.from_dict(d)
    theirs = hf_config("tiny-31b", per_layer_config={})
    assert [s.head_dim for s in got.layers] == [theirs.per_layer_config[i].head_dim for i in range(12)] == [32] * 12
    assert [s.num_kv_heads for s in got.layers] == [2] * 12


def test_global_head_dim_equal_to_head_dim_round_trips():
    c = get_preset("tiny-e2b", global_head_dim=32)
    d = c.to_dict()
    assert d["per_layer_config"] == {}
    theirs = _quiet(Gemma4TextConfig, **{k: v for k, v in d.items() if k != "model_type"})
    assert all(theirs.per_layer_config[i].head_dim == 32 for i in range(10))
    assert Gemma4Config.from_dict(d) == c


def test_moe_intermediate_size_names():
    d = preset_dict("tiny-26b-a4b")
    d["expert_intermediate_size"] = 48  # stale name: moe_intermediate_size is preferred
    assert Gemma4Config.from_dict(d).moe_intermediate_size == 32
    d["moe_intermediate_size"] = None
    assert Gemma4Config.from_dict(d).moe_intermediate_size == 48
    del d["moe_intermediate_size"]
    assert Gemma4Config.from_dict(d).moe_intermediate_size == 48
    d = preset_dict("tiny-31b", expert_intermediate_size=None)  # as in the released 31B / E4B files
    assert Gemma4Config.from_dict(d).moe_intermediate_size is None


def test_defaults_for_absent_keys_follow_transformers():
    d = {k: v for k, v in preset_dict("tiny-e4b").items() if k in (
        "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "hidden_size_per_layer_input")}
    ours = Gemma4Config.from_dict(d)
    theirs = _quiet(Gemma4TextConfig, **{k: v for k, v in d.items() if k != "model_type"})
    assert ours.layer_types == theirs.layer_types  # 5:1 default pattern, last forced full
    assert ours.rope_parameters == theirs.rope_parameters
    assert [s.head_dim for s in ours.layers] == [theirs.per_layer_config[i].head_dim for i in range(12)]
    assert ours.final_logit_softcapping is None and ours.sliding_window == 512
    with pytest.warns(UserWarning, match="hidden_size_per_layer_input"):
        c = Gemma4Config.from_dict({k: v for k, v in d.items() if k != "hidden_size_per_layer_input"})
    assert c.hidden_size_per_layer_input == 256


def test_last_layer_forced_to_full_attention():
    types = [S] * 8
    with pytest.warns(UserWarning, match="last layer must use full attention"):
        ours = get_preset("tiny-31b", num_hidden_layers=8, layer_types=types)
    theirs = hf_config("tiny-31b", num_hidden_layers=8, layer_types=list(types))
    assert ours.layer_types == theirs.layer_types == [S] * 7 + [F]
    assert ours.layers[-1].head_dim == 64


def test_bidirectional_all_window_rule():
    ours = get_preset("tiny-e2b", use_bidirectional_attention="all", sliding_window=9)
    theirs = hf_config("tiny-e2b", use_bidirectional_attention="all", sliding_window=9)
    model = _hf_meta_model(theirs)
    assert ours.sliding_window == 9 and ours.effective_sliding_window == 5 == theirs.sliding_window
    assert [s.window for s in ours.layers] == [layer.self_attn.sliding_window or 0 for layer in model.model.layers]
    assert not ours.is_causal and not model.model.layers[0].self_attn.is_causal
    assert ours.to_dict()["sliding_window"] == 9
    assert get_preset("tiny-31b").is_causal  # "vision" keeps causal masks for text


def test_editing_fields_rederives_layers():
    c = get_preset("tiny-e4b")
    assert c.layers[6].kv_shared
    c.num_kv_shared_layers = 0
    assert not any(s.kv_shared for s in c.layers) and c.num_kv_layers == 12
    c.num_kv_shared_layers = 12
    with pytest.raises(ConfigError, match="num_kv_shared_layers"):
        c.layers  # noqa: B018
    c2 = dataclasses.replace(get_preset("tiny-e4b"), global_head_dim=128)
    assert c2.layers[5].head_dim == 128 and c2.layers[5].rope_inv_freq().shape == (64,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c2.layers[0].head_dim = 3


def test_layer_spec_is_frozen_value():
    a, b = get_preset("tiny-e2b").layers, get_preset("tiny-e2b").layers
    assert a == b and isinstance(a[0], LayerSpec) and hash(a[0]) == hash(b[0])


def test_legacy_num_global_kv_heads_ignored_without_k_eq_v():
    c = get_preset("tiny-e4b", num_global_key_value_heads=1)
    theirs = hf_config("tiny-e4b", num_global_key_value_heads=1)
    assert [s.num_kv_heads for s in c.layers] == [theirs.per_layer_config[i].num_key_value_heads
                                                  for i in range(12)] == [2] * 12


# --------------------------------------------------------------------------------- errors
def _mut(**kw):
    def f(d):
        d.update(kw)
    return f


def _del(*keys):
    def f(d):
        for k in keys:
            d.pop(k, None)
    return f


BAD = [
    ("other model type", _mut(model_type="llama"), "model_type", "not a Gemma 4"),
    ("gemma 3", _mut(model_type="gemma3_text"), "model_type", "earlier Gemma"),
    ("unified with PLE", _mut(model_type="gemma4_unified_text", hidden_size_per_layer_input=16),
     "hidden_size_per_layer_input", "no per-layer embeddings"),
    ("unified with MoE", _mut(model_type="gemma4_unified_text", hidden_size_per_layer_input=0,
                              vocab_size_per_layer_input=None, enable_moe_block=True), "enable_moe_block", "no MoE"),
    ("no model_type", _del("model_type"), "model_type", "missing"),
    ("missing hidden_size", _del("hidden_size"), "hidden_size", "required"),
    ("missing head_dim", _del("head_dim"), "head_dim", "required"),
    ("heads not divisible", _mut(num_key_value_heads=3), "num_key_value_heads", "does not divide"),
    ("global kv not divisible", _mut(num_global_key_value_heads=3, attention_k_eq_v=True),
     "num_global_key_value_heads", "does not divide"),
    ("layer_types length", _mut(layer_types=[S, F]), "layer_types", "2 entries"),
    ("layer_types entry", _mut(layer_types=[S] * 9 + ["linear_attention"]), "layer_types", "linear_attention"),
    ("all layers shared", _mut(num_kv_shared_layers=10), "num_kv_shared_layers", "smaller than"),
    ("no full source", _mut(num_kv_shared_layers=6, layer_types=[S, S, S, S, F, F, S, S, S, F]),
     "num_kv_shared_layers", "no earlier layer"),
    ("negative size", _mut(hidden_size=-64), "hidden_size", ">= 1"),
    ("float size", _mut(intermediate_size=96.5), "intermediate_size", "integer"),
    ("bool as int", _mut(num_attention_heads=True), "num_attention_heads", "integer"),
    ("int as bool", _mut(attention_k_eq_v=1), "attention_k_eq_v", "true or false"),
    ("odd head_dim", _mut(head_dim=31), "head_dim", "even"),
    ("moe without experts", _mut(enable_moe_block=True), "num_experts", "required"),
    ("top_k > E", _mut(enable_moe_block=True, num_experts=4, top_k_experts=5, moe_intermediate_size=8),
     "top_k_experts", "exceeds"),
    ("rope type", lambda d: d.__setitem__("rope_parameters", {S: {"rope_type": "longrope", "rope_theta": 1e4},
                                                              F: PRESETS["tiny-e2b"]["rope_parameters"][F]}),
     "rope_parameters.sliding_attention.rope_type", "not supported"),
    ("rope missing type", lambda d: d.__setitem__("rope_parameters", {S: {"rope_type": "default",
                                                                          "rope_theta": 1e4}}),
     "rope_parameters.full_attention", "missing"),
    ("rope theta", lambda d: d.__setitem__("rope_parameters", {S: {"rope_type": "default", "rope_theta": -1},
                                                               F: PRESETS["tiny-e2b"]["rope_parameters"][F]}),
     "rope_parameters.sliding_attention.rope_theta", "positive"),
    ("rope partial", lambda d: d.__setitem__("rope_parameters", {S: {"rope_type": "default", "rope_theta": 1e4},
                                                                 F: {"rope_type": "proportional", "rope_theta": 1e6,
                                                                     "partial_rotary_factor": 1.5}}),
     "rope_parameters.full_attention.partial_rotary_factor", r"\(0, 1\]"),
    ("activation", _mut(hidden_activation="relu"), "hidden_activation", "not supported"),
    ("bidirectional", _mut(use_bidirectional_attention="text"), "use_bidirectional_attention", "vision"),
    ("eos", _mut(eos_token_id="<eos>"), "eos_token_id", "token id"),
    ("dtype", _mut(dtype="int8"), "dtype", "must be one of float32"),
    ("softcap", _mut(final_logit_softcapping=0), "final_logit_softcapping", "positive"),
    # issue 7 defects 3 and 6: sizes refused before anything is built, values that would load a broken model
    ("softcap inf", _mut(final_logit_softcapping=float("inf")), "final_logit_softcapping", "finite"),
    ("softcap nan", _mut(final_logit_softcapping=float("nan")), "final_logit_softcapping", "finite"),
    ("absurd layers", _mut(num_hidden_layers=100_000, layer_types=None), "num_hidden_layers", r"\[1, 1024\]"),
    ("absurd layers 1e9", _mut(num_hidden_layers=10**9), "num_hidden_layers", r"\[1, 1024\]"),
    ("absurd vocab", _mut(vocab_size=10**12), "vocab_size", "larger than gemma4 supports"),
    ("absurd hidden", _mut(hidden_size=10**9), "hidden_size", "larger than gemma4 supports"),
    ("head_dim 1024", _mut(head_dim=1024), "head_dim", "up to 512"),
    ("global head_dim 1024", _mut(global_head_dim=1024), "global_head_dim", "up to 512"),
    ("pad >= vocab", _mut(pad_token_id=512), "pad_token_id", "vocab_size is 512"),
    ("bos >= vocab", _mut(bos_token_id=70000), "bos_token_id", "vocab_size is 512"),
    ("float8 dtype", _mut(dtype="float8_e4m3fn"), "dtype", "must be one of"),
    ("eps", _mut(rms_norm_eps=0), "rms_norm_eps", "positive"),
    ("plc index", _mut(per_layer_config={"12": {"head_dim": 64}}), "per_layer_config.12", r"\[0, 10\)"),
    ("plc key", _mut(per_layer_config={"04": {"intermediate_size": 64}}), "per_layer_config.04.intermediate_size",
     "not supported"),
    ("plc sliding", _mut(per_layer_config={"00": {"head_dim": 64}}), "per_layer_config.0", "sliding layer 0"),
    ("plc uneven", _mut(per_layer_config={"4": {"head_dim": 64}, "9": {"head_dim": 128}}), "per_layer_config",
     "same head_dim"),
    ("plc kv without k_eq_v", _mut(per_layer_config={"4": {"num_key_value_heads": 1},
                                                     "9": {"num_key_value_heads": 1}}),
     "per_layer_config", "attention_k_eq_v"),
    ("plc value", _mut(per_layer_config={"4": {"head_dim": "64"}}), "per_layer_config.4.head_dim", "positive integer"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_config_raises_naming_key(case, tmp_path):
    _, mutate, key, message = case
    d = preset_dict("tiny-e2b")
    mutate(d)
    file = tmp_path / "config.json"
    file.write_text(json.dumps(d))
    with pytest.raises(ConfigError, match=message) as info:
        Gemma4Config.from_pretrained(tmp_path)
    assert info.value.key is not None and info.value.key.startswith(key), (info.value.key, key)
    assert str(file) in str(info.value) and f"'{info.value.key}'" in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("case", [c for c in BAD if c[2] != "model_type" and not c[0].startswith("unified")],
                         ids=lambda c: c[0])
def test_bad_nested_config_names_text_config_key(case):
    _, mutate, key, message = case
    text = preset_dict("tiny-e2b")
    mutate(text)
    text["model_type"] = "gemma4_text"
    with pytest.raises(ConfigError, match=message) as info:
        Gemma4Config.from_dict({"model_type": "gemma4", "text_config": text}, source="nested.json")
    assert info.value.key.startswith("text_config." + key), info.value.key
    assert "nested.json" in str(info.value)


def test_unified_nested_and_flat_forms():
    """gemma4_unified (nested) and gemma4_unified_text (flat) read the same; the Unified class defaults
    apply to absent keys; a PLE key is named where the file has it; the nested type must match."""
    text = preset_dict("tiny-12b")
    for k in ("sliding_window", "max_position_embeddings", "use_bidirectional_attention"):
        del text[k]
    flat = Gemma4Config.from_dict(text)
    nested = Gemma4Config.from_dict({"model_type": "gemma4_unified", "text_config": text})
    assert flat == nested and flat.model_type == "gemma4_unified_text"
    assert (flat.sliding_window, flat.max_position_embeddings, flat.use_bidirectional_attention) == (1024, 262144, "vision")
    assert flat.hidden_size_per_layer_input == 0 and not flat.enable_moe_block
    with pytest.raises(ConfigError, match="no per-layer embeddings") as info:
        Gemma4Config.from_dict({"model_type": "gemma4_unified", "text_config": {**text, "hidden_size_per_layer_input": 8}})
    assert info.value.key == "text_config.hidden_size_per_layer_input"
    with pytest.raises(ConfigError, match="expected model_type 'gemma4_unified_text'"):
        Gemma4Config.from_dict({"model_type": "gemma4_unified", "text_config": {**text, "model_type": "gemma4_text"}})


def test_nested_config_without_text_config():
    with pytest.raises(ConfigError, match="text_config"):
        Gemma4Config.from_dict({"model_type": "gemma4", "text_config": None})
    with pytest.raises(ConfigError, match="text_config.model_type"):
        Gemma4Config.from_dict({"model_type": "gemma4", "text_config": {"model_type": "gemma3_text"}})
    with pytest.raises(ConfigError, match="JSON object"):
        Gemma4Config.from_dict([1, 2])


def test_from_pretrained_paths(tmp_path):
    with pytest.raises(ConfigNotFoundError, match="no such file") as info:
        Gemma4Config.from_pretrained(tmp_path / "nowhere")
    assert isinstance(info.value, FileNotFoundError) and "nowhere" in str(info.value)
    with pytest.raises(ConfigNotFoundError, match="no config.json"):
        Gemma4Config.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "gemma4_text", "hidden_size": 64,,}')
    with pytest.raises(ConfigError, match="invalid JSON \\(line 1"):
        Gemma4Config.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(ConfigError, match="UTF-8"):
        Gemma4Config.from_pretrained(tmp_path)
    c = get_preset("tiny-e2b")
    file = c.save_pretrained(tmp_path / "saved")
    assert Gemma4Config.from_pretrained(file) == c == Gemma4Config.from_pretrained(tmp_path / "saved")
    assert Gemma4Config.from_pretrained(file, sliding_window=16).sliding_window == 16
    with pytest.raises(TypeError, match="not_a_field"):
        Gemma4Config.from_pretrained(file, not_a_field=1)
    assert os.path.basename(file) == "config.json"
