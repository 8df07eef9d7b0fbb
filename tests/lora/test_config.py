"""gemma4.LoraConfig against peft 0.21's LoraConfig, and the target-matching rules against PEFT's own functions."""
import dataclasses
import json
import os
import warnings

import pytest
import torch

import gemma4
from gemma4.lora.adapters import _EXCLUDED, _match_target
from gemma4.lora.config import LoraConfig
from tests.lora.common import hf_model, tmpdir

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import peft
    from peft.tuners.tuners_utils import _ExcludedModule, check_target_module_exists
    from peft.utils.other import get_pattern_key


def test_exported():
    assert gemma4.LoraConfig is LoraConfig


def test_fields_and_defaults_are_pefts():
    theirs = {f.name: f for f in dataclasses.fields(peft.LoraConfig)}
    ours = {f.name: f for f in dataclasses.fields(LoraConfig)}
    assert set(theirs) - {"runtime_config"} == set(ours)
    t, o = peft.LoraConfig(), LoraConfig()
    for name in ours:
        if name in ("peft_type", "peft_version"):
            continue
        assert getattr(o, name) == getattr(t, name), name
    assert o.peft_type == "LORA"


def test_json_round_trip_with_peft():
    cfg = peft.LoraConfig(r=6, lora_alpha=12, target_modules=["q_proj", "v_proj"], rank_pattern={"v_proj": 2},
                          alpha_pattern={"q": 3}, use_rslora=True, modules_to_save=["norm"],
                          target_parameters=["experts.gate_up_proj"], task_type="CAUSAL_LM")
    path = tmpdir("cfg")
    cfg.save_pretrained(path)
    ours = LoraConfig.from_pretrained(path)
    assert ours.task_type == "CAUSAL_LM" and sorted(ours.target_modules) == ["q_proj", "v_proj"]
    ours.save_pretrained(path)  # and PEFT reads ours back into an equal config
    back = peft.LoraConfig.from_pretrained(path)
    for f in dataclasses.fields(LoraConfig):
        if f.name not in ("peft_version", "inference_mode"):
            assert getattr(back, f.name) == getattr(cfg, f.name), f.name
    with open(os.path.join(path, "adapter_config.json")) as fh:
        assert json.load(fh)["inference_mode"] is True  # written as PEFT writes it


def test_accepts_peft_config_object_in_add_adapter():
    ours = LoraConfig.from_dict(peft.LoraConfig(r=2, target_modules={"q_proj"}).to_dict())
    assert ours.r == 2 and ours.target_modules == ["q_proj"] and ours.peft_type == "LORA"


@pytest.mark.parametrize("kwargs, field", [
    (dict(use_dora=True), "use_dora"),
    (dict(bias="all"), "bias"),
    (dict(bias="lora_only"), "bias"),
    (dict(lora_bias=True), "lora_bias"),
    (dict(fan_in_fan_out=True), "fan_in_fan_out"),
    (dict(megatron_config={"tensor_model_parallel_size": 2}), "megatron_config"),
    (dict(trainable_token_indices=[1, 2]), "trainable_token_indices"),
    (dict(layer_replication=[[0, 2]]), "layer_replication"),
    (dict(alora_invocation_tokens=[5]), "alora_invocation_tokens"),
    (dict(use_qalora=True), "use_qalora"),
    (dict(init_lora_weights="pissa"), "init_lora_weights"),
    (dict(init_lora_weights="pissa_niter_4"), "init_lora_weights"),
    (dict(init_lora_weights="olora"), "init_lora_weights"),
    (dict(init_lora_weights="corda"), "init_lora_weights"),
    (dict(init_lora_weights="loftq"), "init_lora_weights"),
    (dict(init_lora_weights="lora_ga"), "init_lora_weights"),
    (dict(init_lora_weights="mica"), "init_lora_weights"),
    (dict(arrow_config={"top_k": 2}), "arrow_config"),
    (dict(target_parameters=["experts.gate_up_proj"], lora_dropout=0.1), "lora_dropout"),
    (dict(r=0), "r"),
])
def test_unsupported_settings_are_refused(kwargs, field):
    with pytest.raises(ValueError, match=field):
        LoraConfig(**kwargs).check_supported()


@pytest.mark.parametrize("init", ["eva", "orthogonal"])
def test_creation_only_inits(init):
    LoraConfig(init_lora_weights=init).check_supported()  # loading such an adapter is fine
    with pytest.raises(ValueError, match="init_lora_weights"):
        LoraConfig(init_lora_weights=init).check_supported(for_creation=True)


def test_unknown_options():
    with pytest.raises(ValueError, match="'use_magic'"):
        LoraConfig.from_dict({"peft_type": "LORA", "use_magic": True})
    with pytest.warns(UserWarning, match="future_option"):
        assert LoraConfig.from_dict({"peft_type": "LORA", "future_option": None}).r == 8
    with pytest.raises(ValueError, match="IA3"):
        LoraConfig.from_dict({"peft_type": "IA3"})


def test_peft_consistency_checks():
    with pytest.raises(ValueError, match="layers_to_transform"):
        LoraConfig(target_modules=".*q_proj", layers_to_transform=[0])
    with pytest.raises(ValueError, match="layers_pattern"):
        LoraConfig(target_modules=["q_proj"], layers_pattern="layers")
    with pytest.raises(TypeError, match="target_parameters"):
        LoraConfig(target_parameters="experts.gate_up_proj")


_MATCH_CONFIGS = [
    dict(target_modules=["q_proj", "v_proj"]),
    dict(target_modules=["self_attn.q_proj", "model.layers.3.mlp.down_proj", "proj"]),
    dict(target_modules=r".*\.(q|k)_proj"),
    dict(target_modules=r"model\.layers\.[0-4]\..*(proj|gate)"),
    dict(target_modules=r".*language_model\..*\.(q_proj|v_proj)"),
    dict(target_modules=["q_proj", "o_proj", "up_proj"], exclude_modules=["o_proj", "layers.2.mlp.up_proj"]),
    dict(target_modules=r".*_proj", exclude_modules=r".*\.(1|3)\..*"),
    dict(target_modules=["q_proj", "down_proj"], layers_to_transform=[0, 2, 5]),
    dict(target_modules=["q_proj", "down_proj"], layers_to_transform=3),
    dict(target_modules=["q_proj", "down_proj"], layers_to_transform=[1, 4], layers_pattern="layers"),
    dict(target_modules=["q_proj", "down_proj"], layers_to_transform=[1], layers_pattern=["blocks", "layers"]),
    dict(target_modules=["q_proj", "down_proj"], layers_to_transform=[]),
    dict(target_modules=["q_proj", "mlp", "norm"], modules_to_save=["mlp", "input_layernorm"]),
    dict(target_modules=None, target_parameters=["experts.gate_up_proj"]),
]


@pytest.mark.parametrize("kwargs", _MATCH_CONFIGS)
def test_target_matching_is_pefts(kwargs):
    """Our matcher against peft.tuners.tuners_utils.check_target_module_exists on every module name of two
    transformers models, in both the causal and the conditional-generation naming."""
    names = [n for p in ("tiny-e2b", "tiny-26b-a4b") for n, _ in hf_model(p).named_modules() if n]
    names += [n.replace("model.", "model.language_model.", 1) for n in names if n.startswith("model.")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs_cfg = peft.LoraConfig(**kwargs)
    ours_cfg = LoraConfig(**kwargs)
    for key in names:
        want = check_target_module_exists(theirs_cfg, key)
        want = _EXCLUDED if isinstance(want, _ExcludedModule) else bool(want)
        got = _match_target(ours_cfg, key, ours_cfg.target_modules)
        assert got == want, (key, got, want)


def test_rank_and_alpha_patterns_are_pefts():
    cfg = LoraConfig(r=4, lora_alpha=8, rank_pattern={"q_proj": 2, r"layers\.1\..*": 6, "^model.*o_proj": 3},
                     alpha_pattern={"down_proj": 5, r"layers\.[23]\.self_attn\.q_proj": 7})
    for key in [n for n, _ in hf_model("tiny-e2b").named_modules() if n]:
        want_r = cfg.rank_pattern.get(get_pattern_key(cfg.rank_pattern.keys(), key), cfg.r)
        want_a = cfg.alpha_pattern.get(get_pattern_key(cfg.alpha_pattern.keys(), key), cfg.lora_alpha)
        assert cfg.rank_and_alpha(key) == (want_r, want_a), key


def test_scaling_and_init_as_peft():
    """add_adapter: A kaiming-uniform(a=sqrt(5)) (|A| <= 1/sqrt(in)), B zero; scaling alpha/r or alpha/sqrt(r)."""
    from tests.lora.common import our_model

    ours = our_model("tiny-31b")
    ours.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], use_rslora=True), "rs")
    ours.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights="gaussian"), "g")
    q = ours.model.layers[0].self_attn.q_proj
    assert q.scaling == {"rs": 8 / 2.0, "g": 2.0}
    A = q.lora_A["rs"].weight
    assert A.abs().max() <= q.in_features ** -0.5 and A.std() > 0.3 * q.in_features ** -0.5
    assert torch.count_nonzero(q.lora_B["rs"].weight) == 0 and torch.count_nonzero(q.lora_B["g"].weight) == 0
    assert abs(q.lora_A["g"].weight.std().item() - 1 / 4) < 0.05
