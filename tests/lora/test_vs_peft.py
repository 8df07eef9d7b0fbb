"""Our LoRA against peft 0.21.0 on transformers 5.17.0's Gemma4ForCausalLM (tiny random models, float32).

Adapters made and saved by PEFT load into ours with PEFT's logits; ours saved load into PEFT with ours;
the files round-trip byte for byte; gradients of one backward pass equal PEFT's by parameter name.
"""
import functools
import json
import os
import warnings

import pytest
import torch
from safetensors.torch import load_file

import gemma4
from tests.lora.common import (EXPERTS, PEFT_PREFIX, PRESETS, assert_close_rel, base_path, hf_model, ids_for,
                               logits, make_peft_adapter, our_model, peft_load, peft_scaling_lookup,
                               randomize_adapter_, save_peft, tmpdir)

# One adapter config per family: list targets, rank and alpha patterns, rsLoRA, modules_to_save, and
# LoRA on the MoE expert banks (target_parameters); e4b uses "all-linear".
CONFIGS = {
    "tiny-e2b": dict(r=4, lora_alpha=8, use_rslora=True, lora_dropout=0.1,
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                                     "per_layer_input_gate", "per_layer_projection"],
                     rank_pattern={"o_proj": 2, r"layers\.1\.self_attn\.q_proj": 6}, alpha_pattern={"down_proj": 3},
                     modules_to_save=["post_attention_layernorm"]),
    "tiny-e4b": dict(r=3, lora_alpha=6, target_modules="all-linear", rank_pattern={"mlp.up_proj": 5},
                     alpha_pattern={r"layers\.[0-3]\.self_attn\..*": 12}, modules_to_save=["model.norm"]),
    "tiny-31b": dict(r=4, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"],
                     rank_pattern={"k_proj": 8}, modules_to_save=["input_layernorm", "lm_head"]),
    "tiny-26b-a4b": dict(r=2, lora_alpha=4, use_rslora=True, target_modules=["q_proj", "o_proj", "router.proj"],
                         target_parameters=EXPERTS, rank_pattern={"experts.down_proj": 3},
                         alpha_pattern={"gate_up_proj": 5}, modules_to_save=["pre_feedforward_layernorm_2"]),
}


@functools.lru_cache(maxsize=None)
def _peft_adapter(preset: str) -> tuple[str, torch.Tensor]:
    """PEFT adapter saved to disk and PEFT's logits with it (cached per preset)."""
    pm = make_peft_adapter(preset, CONFIGS[preset], seed=PRESETS.index(preset))
    path = save_peft(pm, f"peft-{preset}")
    return path, logits(pm, ids_for(preset))


@pytest.mark.parametrize("preset", PRESETS)
def test_peft_adapter_gives_peft_logits(preset):
    path, want = _peft_adapter(preset)
    ours = our_model(preset)
    ours.load_adapter(path)
    got = logits(ours, ids_for(preset))
    base = logits(hf_model(preset), ids_for(preset))
    assert (want - base).abs().max() > 0.05 * base.abs().max(), "the adapter should change the logits visibly"
    assert_close_rel(got, want, 1e-4, f"{preset} adapter logits")
    ours.disable_adapters()
    assert_close_rel(logits(ours, ids_for(preset)), base, 1e-4, f"{preset} disabled adapters = base")


@pytest.mark.parametrize("preset", PRESETS)
def test_saved_file_round_trips_exactly(preset):
    path, _ = _peft_adapter(preset)
    ours = our_model(preset)
    ours.load_adapter(path)
    out = tmpdir("ours-roundtrip")
    ours.save_adapter(out)
    theirs, mine = load_file(os.path.join(path, "adapter_model.safetensors")), \
        load_file(os.path.join(out, "adapter_model.safetensors"))
    assert sorted(mine) == sorted(theirs)
    for k in theirs:
        assert mine[k].dtype == theirs[k].dtype and torch.equal(mine[k], theirs[k]), k
    with open(os.path.join(path, "adapter_config.json")) as f:
        want_cfg = json.load(f)
    with open(os.path.join(out, "adapter_config.json")) as f:
        got_cfg = json.load(f)
    assert sorted(got_cfg) == sorted(want_cfg)
    for k in want_cfg:
        w, g = want_cfg[k], got_cfg[k]
        if isinstance(w, list):
            w, g = sorted(w), sorted(g)
        assert g == w, k


@pytest.mark.parametrize("preset", PRESETS)
def test_our_adapter_loads_into_peft(preset):
    ours = our_model(preset)
    ours.add_adapter(gemma4.LoraConfig(**CONFIGS[preset]))
    randomize_adapter_(ours.named_parameters(), peft_scaling_lookup(ours), torch.Generator().manual_seed(7))
    ours.eval()
    want = logits(ours, ids_for(preset))
    path = tmpdir("ours-save")
    ours.save_adapter(path)
    pm = peft_load(preset, path)
    assert_close_rel(logits(pm, ids_for(preset)), want, 1e-4, f"{preset}: PEFT with our saved adapter")


@pytest.mark.parametrize("preset", PRESETS)
def test_lora_gradients_match_peft(preset):
    """One backward pass of the LM loss: the trainable parameters are the same (by name, PEFT's names) and
    their gradients equal PEFT's; the base gets no gradients."""
    path, _ = _peft_adapter(preset)
    ours = our_model(preset)
    ours.load_adapter(path, is_trainable=True)
    pm = peft_load(preset, path, is_trainable=True)
    ids = ids_for(preset, seed=3)
    labels = ids.clone()
    labels[:, :3] = -100
    loss_theirs = pm(input_ids=ids, labels=labels).loss
    loss_theirs.backward()
    ours.train()  # lora_dropout applies in training: compare with it off (PEFT model is in eval)
    for m in ours.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    loss_ours = ours(input_ids=ids, labels=labels).loss
    loss_ours.backward()
    assert_close_rel(loss_ours.detach(), loss_theirs.detach(), 1e-5, "loss")
    theirs = {n.removeprefix(PEFT_PREFIX): p for n, p in pm.named_parameters() if p.requires_grad}
    mine = {n: p for n, p in ours.named_parameters() if p.requires_grad}
    assert sorted(mine) == sorted(theirs)
    for n, p in mine.items():
        assert p.grad is not None, n
        assert_close_rel(p.grad, theirs[n].grad, 1e-4, f"grad {n}")
    for n, p in ours.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, f"frozen {n} got a gradient buffer"


@pytest.mark.parametrize("preset", PRESETS)
def test_merge_unmerge_and_unload(preset):
    path, want = _peft_adapter(preset)
    ours = our_model(preset)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    ours.load_adapter(path)
    ids = ids_for(preset)
    ours.merge_adapter()
    assert_close_rel(logits(ours, ids), want, 1e-4, "merged")
    ours.unmerge_adapter()
    assert_close_rel(logits(ours, ids), want, 1e-4, "unmerged again")
    state = ours.state_dict()
    for k, v in before.items():  # the base is back (within rounding of W + d - d)
        key = k if k in state else _wrapped_key(k, state)
        assert (state[key] - v).abs().max() <= 1e-6 * max(v.abs().max().item(), 1.0), k
    plain = ours.merge_and_unload()
    assert plain is ours
    assert sorted(plain.state_dict()) == sorted(before)
    assert not any("lora" in type(m).__name__.lower() for m in plain.modules())
    assert_close_rel(logits(plain, ids), want, 1e-4, "merge_and_unload")


def _wrapped_key(key: str, state: dict) -> str:
    """A plain state-dict key as it reads with adapter wrappers (base_layer / original_module inserted)."""
    module, _, leaf = key.rpartition(".")
    for candidate in (f"{module}.base_layer.{leaf}", f"{module}.base_layer.base_layer.{leaf}",
                      f"{module}.original_module.{leaf}"):
        if candidate in state:
            return candidate
    raise KeyError(key)


def test_switching_and_combining_adapters():
    """Two adapters on one model: each alone, both together, deleting one -- as PEFT."""
    preset = "tiny-31b"
    cfg_a = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    cfg_b = dict(r=2, lora_alpha=2, target_modules=r".*layers\.(1|4|7)\..*_proj", exclude_modules=["k_proj"])
    pa = make_peft_adapter(preset, cfg_a, seed=1)
    pb = make_peft_adapter(preset, cfg_b, seed=2)
    path_a, path_b = save_peft(pa, "a"), save_peft(pb, "b")
    ids = ids_for(preset)
    want_a, want_b = logits(pa, ids), logits(pb, ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        both = peft_load(preset, path_a, adapter_name="a")
        both.load_adapter(path_b, adapter_name="b")
        both.base_model.set_adapter(["a", "b"])
    want_ab = logits(both, ids)

    ours = our_model(preset)
    ours.load_adapter(path_a, adapter_name="a")
    ours.load_adapter(path_b, adapter_name="b")
    assert ours.active_adapters == ["a"] and ours.active_adapters() == ["a"]
    assert_close_rel(logits(ours, ids), want_a, 1e-4, "a")
    ours.set_adapter("b")
    assert_close_rel(logits(ours, ids), want_b, 1e-4, "b")
    ours.set_adapter(["a", "b"])
    assert_close_rel(logits(ours, ids), want_ab, 1e-4, "a+b")
    ours.merge_adapter()
    assert_close_rel(logits(ours, ids), want_ab, 1e-4, "a+b merged")
    ours.set_adapter("a")  # unmerges first
    assert_close_rel(logits(ours, ids), want_a, 1e-4, "a after merged a+b")
    ours.delete_adapter("a")
    assert ours.active_adapters == ["b"] and list(ours.peft_config) == ["b"]
    assert_close_rel(logits(ours, ids), want_b, 1e-4, "b after deleting a")
    assert not any(".lora_A.a." in n for n, _ in ours.named_parameters())


def test_regex_targets_and_layers_to_transform():
    preset = "tiny-e2b"
    ids = ids_for(preset)
    for i, cfg in enumerate([
        dict(r=4, lora_alpha=4, target_modules=r"model\.layers\.[0-2]\..*\.(q_proj|gate_proj|per_layer_projection)"),
        dict(r=2, lora_alpha=8, target_modules=["o_proj", "up_proj"], layers_to_transform=[1, 3],
             layers_pattern="layers", exclude_modules=r".*\.3\.mlp\.up_proj"),
    ]):
        pm = make_peft_adapter(preset, cfg, seed=10 + i)
        path = save_peft(pm, f"regex{i}")
        ours = our_model(preset)
        ours.load_adapter(path)
        assert_close_rel(logits(ours, ids), logits(pm, ids), 1e-4, f"config {i}")
        targeted = sorted(n for n, m in ours.named_modules() if hasattr(m, "lora_A"))
        theirs = sorted(n.removeprefix(PEFT_PREFIX) for n, m in pm.named_modules()
                        if hasattr(m, "lora_A") and hasattr(m, "base_layer"))
        assert targeted == theirs


def test_adapter_made_on_conditional_generation():
    """An adapter made with PEFT on Gemma4ForConditionalGeneration (keys model.language_model.*, LoRA on the
    vision tower too) loads into our text model; saved back, PEFT loads it onto that class again."""
    from transformers import Gemma4ForConditionalGeneration

    preset = "tiny-e4b"
    cond_path = base_path(preset, "conditional")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import peft

        def cond_model():
            return Gemma4ForConditionalGeneration.from_pretrained(cond_path, dtype=torch.float32).eval()

        # the vision tower's projections are Gemma4ClippableLinear around an nn.Linear `.linear`
        targets = r".*language_model.*\.(q_proj|o_proj)|.*vision_tower.*\.q_proj\.linear"
        pm = peft.get_peft_model(cond_model(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    randomize_adapter_(pm.named_parameters(), peft_scaling_lookup(pm), torch.Generator().manual_seed(5))
    path = save_peft(pm.eval(), "cond")
    keys = load_file(os.path.join(path, "adapter_model.safetensors"))
    assert any(".vision_tower." in k for k in keys) and any(".language_model." in k for k in keys)
    ids = ids_for(preset)
    want = logits(pm, ids)
    ours = our_model(preset, layout="conditional")
    with pytest.warns(UserWarning, match="vision"):
        ours.load_adapter(path)
    assert_close_rel(logits(ours, ids), want, 1e-4, "conditional-rooted adapter")
    out = tmpdir("cond-out")
    ours.save_adapter(out)
    saved = load_file(os.path.join(out, "adapter_model.safetensors"))
    assert sorted(saved) == sorted(k for k in keys if ".language_model." in k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back = peft.PeftModel.from_pretrained(cond_model(), out).eval()
    assert_close_rel(logits(back, ids), want, 1e-4, "PEFT reloading our conditional-rooted save")


def test_expert_delta_is_pefts():
    """LoRA on a 3-D expert bank: our update W_e + s * B_e @ A_e equals PEFT's ParamWrapper delta."""
    from peft.tuners.lora.layer import ParamWrapper

    preset = "tiny-26b-a4b"
    pm = make_peft_adapter(preset, dict(r=3, lora_alpha=5, target_parameters=EXPERTS), seed=4)
    ours = our_model(preset)
    ours.load_adapter(save_peft(pm, "experts"))
    theirs = {n.removeprefix(PEFT_PREFIX): m for n, m in pm.named_modules() if isinstance(m, ParamWrapper)}
    mine = {n: m for n, m in ours.named_modules() if type(m).__name__ == "LoraParamWrapper"}
    assert sorted(mine) == sorted(theirs) and len(mine) == 2 * ours.config.num_hidden_layers
    for n, m in mine.items():
        assert m.parameter_name == theirs[n].parameter_name
        want = theirs[n].get_delta_weight("default")
        got = m.get_delta_weight("default")
        assert got.shape == m.get_param().shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_bf16_model_with_adapter():
    """bf16 base, float32 adapter weights (PEFT's autocast_adapter_dtype): our error against the float32
    result is at most twice PEFT-on-transformers' bf16 error (plus one bf16 ulp)."""
    preset = "tiny-26b-a4b"
    path, want = _peft_adapter(preset)
    ids = ids_for(preset)
    ours = our_model(preset, dtype=torch.bfloat16)
    ours.load_adapter(path)
    assert all(p.dtype == torch.float32 for n, p in ours.named_parameters() if ".lora_" in n)
    got = logits(ours, ids)
    theirs = peft_load(preset, path)
    theirs = theirs.to(torch.bfloat16)  # (to() casts the adapter too; re-upcast as PEFT's loader would)
    for n, p in theirs.named_parameters():
        if ".lora_" in n:
            p.data = p.data.float()
    plain = logits(theirs, ids)
    err_ours = (got.double() - want.double()).abs().max().item()
    err_plain = (plain.double() - want.double()).abs().max().item()
    ulp = torch.finfo(torch.bfloat16).eps * want.abs().max().item()
    assert err_ours <= 2 * err_plain + ulp, (err_ours, err_plain)


def test_expert_adapters_combined_and_single_bank():
    """Two expert-bank adapters active together (W + sum of deltas, PEFT's _LoraParameterProxy path), and an
    adapter on one bank only (no nesting: its keys have no base_layer)."""
    preset = "tiny-26b-a4b"
    ids = ids_for(preset)
    pa = make_peft_adapter(preset, dict(r=2, lora_alpha=4, target_parameters=EXPERTS), seed=21)
    pb = make_peft_adapter(preset, dict(r=3, lora_alpha=6, target_parameters=EXPERTS, target_modules=["q_proj"]),
                           seed=22)
    path_a, path_b = save_peft(pa, "xa"), save_peft(pb, "xb")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        both = peft_load(preset, path_a, adapter_name="a")
        both.load_adapter(path_b, adapter_name="b")
        both.base_model.set_adapter(["a", "b"])
    ours = our_model(preset)
    ours.load_adapter(path_a, adapter_name="a")
    ours.load_adapter(path_b, adapter_name="b")
    ours.set_adapter(["a", "b"])
    assert_close_rel(logits(ours, ids), logits(both, ids), 1e-4, "two expert adapters")

    pc = make_peft_adapter(preset, dict(r=2, lora_alpha=2, target_parameters=["experts.gate_up_proj"]), seed=23)
    path_c = save_peft(pc, "xc")
    keys = load_file(os.path.join(path_c, "adapter_model.safetensors"))
    assert "base_model.model.model.layers.0.experts.lora_A.weight" in keys
    ours.load_adapter(path_c, adapter_name="c")  # wraps inside the existing two-bank nesting
    ours.set_adapter("c")
    assert_close_rel(logits(ours, ids), logits(pc, ids), 1e-4, "gate_up_proj only")
    out = tmpdir("xc-out")
    ours.save_adapter(out, adapter_name="c")
    saved = load_file(os.path.join(out, "adapter_model.safetensors"))
    assert sorted(saved) == sorted(keys) and all(torch.equal(saved[k], keys[k]) for k in keys)


def test_expert_lora_when_few_experts_are_routed(monkeypatch):
    """With few tokens only the routed experts' effective banks are built: same logits as PEFT and as the
    whole-bank path, same LoRA gradients as the whole-bank path (and as PEFT)."""
    from gemma4.lora import layers

    preset = "tiny-26b-a4b"
    path, _ = _peft_adapter(preset)
    ids = ids_for(preset, batch=1, seq=2, seed=5)  # two tokens: at most 4 of 8 experts per layer
    pm = peft_load(preset, path, is_trainable=True)
    want = pm(input_ids=ids).logits
    want.float().square().mean().backward()
    results = []
    real = layers._routed_experts
    for compact in (True, False):
        if not compact:
            monkeypatch.setattr(layers, "ROUTED_EXPERT_MODULES", {})
        calls = []
        monkeypatch.setattr(layers, "_routed_experts", lambda *a, calls=calls: calls.append(real(*a)) or calls[-1])
        ours = our_model(preset)
        ours.load_adapter(path, is_trainable=True)
        got = ours(input_ids=ids).logits
        got.float().square().mean().backward()
        assert any(c is not None for c in calls) == compact
        assert_close_rel(got.detach(), want.detach(), 1e-4, f"compact={compact}")
        results.append({n: p.grad for n, p in ours.named_parameters() if p.requires_grad})
    theirs = {n.removeprefix(PEFT_PREFIX): p.grad for n, p in pm.named_parameters() if p.requires_grad}
    for n, g in results[0].items():
        assert_close_rel(g, results[1][n], 1e-5, f"compact vs whole-bank grad {n}")
        assert_close_rel(g, theirs[n], 1e-4, f"grad {n} vs PEFT")
