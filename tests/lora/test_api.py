"""The adapter API on our model: names, trainability, training, several adapters, merging, unloading."""
import warnings

import pytest
import torch

import gemma4
from gemma4.lora import LoraLinear, LoraParamWrapper, ModulesToSaveWrapper
from tests.lora.common import (EXPERTS, assert_close_rel, ids_for, logits, make_peft_adapter, our_model,
                               peft_load, peft_scaling_lookup, randomize_adapter_, save_peft, tmpdir)

CFG = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], modules_to_save=["model.norm"])


def _is_adapter_param(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name or ".modules_to_save." in name


def test_fresh_adapter_names_trainability_and_identity():
    preset = "tiny-26b-a4b"
    ours = our_model(preset)
    plain_names = [n for n, _ in ours.named_parameters()]
    base = logits(ours, ids_for(preset))
    ours.add_adapter(gemma4.LoraConfig(**CFG, target_parameters=EXPERTS), adapter_name="ft")
    assert ours.active_adapters == ["ft"] and ours.active_adapters() == ["ft"] and ours.active_adapter == "ft"
    names = {n for n, _ in ours.named_parameters()}
    # PEFT's names: base_layer keeps the wrapped weight, lora_A/lora_B ModuleDicts per adapter
    assert "model.layers.0.self_attn.q_proj.base_layer.weight" in names
    assert "model.layers.0.self_attn.q_proj.lora_A.ft.weight" in names
    assert "model.layers.0.mlp.down_proj.lora_B.ft.weight" in names
    assert "model.layers.0.experts.lora_A.ft.weight" in names  # down_proj bank (outer wrapper)
    assert "model.layers.0.experts.base_layer.lora_A.ft.weight" in names  # gate_up_proj bank
    assert "model.layers.0.experts.base_layer.base_layer.gate_up_proj" in names
    assert "model.norm.modules_to_save.ft.weight" in names and "model.norm.original_module.weight" in names
    for n, p in ours.named_parameters():
        assert p.requires_grad == _is_adapter_param(n), n
    assert_close_rel(logits(ours, ids_for(preset)), base, 0.0, "B = 0: the fresh adapter is the identity")
    # one backward: only adapter parameters get gradients
    ours.train()
    ids = ids_for(preset)
    ours(input_ids=ids, labels=ids).loss.backward()
    for n, p in ours.named_parameters():
        assert (p.grad is not None) == _is_adapter_param(n), n
    # deleting the only adapter gives back the plain model, trainable again
    ours.delete_adapter("ft")
    assert [n for n, _ in ours.named_parameters()] == plain_names
    assert all(p.requires_grad for p in ours.parameters())
    assert not any(isinstance(m, (LoraLinear, LoraParamWrapper, ModulesToSaveWrapper)) for m in ours.modules())


def test_training_then_peft_reads_the_result():
    """A few optimizer steps over model.parameters() with requires_grad (the usual PEFT training loop) lower
    the loss; PEFT loading the saved adapter reproduces our logits; the base did not move."""
    preset = "tiny-e2b"
    ours = our_model(preset)
    base_q = ours.model.layers[0].self_attn.q_proj.weight.detach().clone()
    ours.add_adapter(gemma4.LoraConfig(**CFG, lora_dropout=0.05))
    opt = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-2)
    ids = ids_for(preset, batch=2, seq=16, seed=9)
    ours.train()
    losses = []
    for _ in range(4):
        loss = ours(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    assert torch.equal(ours.model.layers[0].self_attn.q_proj.weight, base_q)
    ours.eval()
    path = tmpdir("trained")
    ours.save_adapter(path)
    assert_close_rel(logits(peft_load(preset, path), ids), logits(ours, ids), 1e-4, "PEFT with our trained adapter")


def test_gradient_checkpointing_gives_the_same_lora_grads():
    preset = "tiny-e4b"
    ids = ids_for(preset, seed=4)
    grads = []
    for ckpt in (False, True):
        ours = our_model(preset)
        ours.add_adapter(gemma4.LoraConfig(**CFG))
        randomize_adapter_(ours.named_parameters(), peft_scaling_lookup(ours), torch.Generator().manual_seed(2))
        ours.model.gradient_checkpointing = ckpt
        ours.train()
        ours(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in ours.named_parameters() if p.requires_grad})
    for n in grads[0]:
        assert_close_rel(grads[1][n], grads[0][n], 1e-5, n)


def test_adapter_states_and_switching():
    preset = "tiny-31b"
    ids = ids_for(preset)
    pa = make_peft_adapter(preset, dict(CFG), seed=1)
    pb = make_peft_adapter(preset, dict(r=2, lora_alpha=4, target_modules=["o_proj"], modules_to_save=["model.norm"]),
                           seed=2)
    path_a, path_b = save_peft(pa, "a"), save_peft(pb, "b")
    ours = our_model(preset)
    base = logits(ours, ids)
    ours.load_adapter(path_a, adapter_name="a")
    ours.load_adapter(path_b, adapter_name="b", is_trainable=True)
    assert ours.active_adapters == ["a"], "later adapters are loaded inactive (PEFT)"
    assert not any(p.requires_grad for p in ours.parameters()), "a is frozen (is_trainable=False), b inactive"
    with pytest.raises(ValueError, match="only one of them"):
        ours.set_adapter(["a", "b"])  # both have a modules_to_save copy of model.norm
    with pytest.raises(ValueError, match="'c' not found"):
        ours.set_adapter("c")
    ours.set_adapter("b")
    assert {n for n, p in ours.named_parameters() if p.requires_grad} == \
        {n for n, _ in ours.named_parameters() if ".b." in n and _is_adapter_param(n)}
    assert_close_rel(logits(ours, ids), logits(pb, ids), 1e-4, "b")
    with ours.disable_adapter():
        assert_close_rel(logits(ours, ids), base, 0.0, "inside disable_adapter()")
        assert not any(p.requires_grad for p in ours.parameters())
    assert_close_rel(logits(ours, ids), logits(pb, ids), 1e-4, "b after the context")
    ours.disable_adapters()
    assert_close_rel(logits(ours, ids), base, 0.0, "disabled")
    ours.enable_adapters()
    ours.set_requires_grad("b", False)
    assert not any(p.requires_grad for p in ours.parameters())
    # save a non-active adapter by name: identical to PEFT's file
    out = tmpdir("save-a")
    ours.save_adapter(out, adapter_name="a")
    from safetensors.torch import load_file

    want, got = load_file(f"{path_a}/adapter_model.safetensors"), load_file(f"{out}/adapter_model.safetensors")
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)
    with pytest.raises(ValueError, match="pass adapter_name"):
        ours.set_adapter([])
        ours.save_adapter(tmpdir("which"))


def test_merge_and_unload_with_two_active_adapters():
    preset = "tiny-e4b"
    ids = ids_for(preset)
    ours = our_model(preset)
    plain = {k: v.clone() for k, v in ours.state_dict().items()}
    for name, cfg in (("a", dict(r=2, target_modules=["q_proj", "up_proj"])),
                      ("b", dict(r=3, lora_alpha=5, target_modules=["q_proj", "o_proj"], use_rslora=True))):
        ours.add_adapter(gemma4.LoraConfig(**cfg), adapter_name=name)
    randomize_adapter_(ours.named_parameters(), peft_scaling_lookup(ours), torch.Generator().manual_seed(3))
    ours.set_adapter(["a", "b"])
    want = logits(ours, ids)
    merged = ours.merge_and_unload()
    assert merged is ours and sorted(merged.state_dict()) == sorted(plain)
    assert merged.peft_config == {} and all(p.requires_grad for p in merged.parameters())
    assert_close_rel(logits(merged, ids), want, 1e-4, "merged a+b")
    changed = [k for k in plain if not torch.equal(plain[k], merged.state_dict()[k])]
    assert changed and all(k.endswith(("q_proj.weight", "up_proj.weight", "o_proj.weight")) for k in changed)


def test_unload_and_modules_to_save_copy():
    preset = "tiny-31b"
    ids = ids_for(preset)
    ours = our_model(preset)
    base = logits(ours, ids)
    norm_before = ours.model.norm.weight.detach().clone()
    ours.add_adapter(gemma4.LoraConfig(**CFG))
    with torch.no_grad():
        ours.model.norm.modules_to_save["default"].weight.mul_(1.5)
    assert torch.equal(ours.model.norm.weight, ours.model.norm.modules_to_save["default"].weight)
    assert torch.equal(ours.model.norm.original_module.weight, norm_before)
    ours.merge_adapter()
    ours.unload()  # unmerges first: the plain base again
    assert_close_rel(logits(ours, ids), base, 1e-6, "unload")
    assert torch.equal(ours.model.norm.weight, norm_before)


def test_errors_of_the_api():
    ours = our_model("tiny-31b")
    with pytest.raises(ValueError, match="No adapter"):
        ours.merge_adapter()
    with pytest.raises(ValueError, match="target_modules"):
        ours.add_adapter(gemma4.LoraConfig(r=2))
    with pytest.raises(ValueError, match="not found in the base model"):
        ours.add_adapter(gemma4.LoraConfig(target_modules=["nonexistent_proj"]))
    with pytest.raises(ValueError, match="is not supported"):
        ours.add_adapter(gemma4.LoraConfig(target_modules=["self_attn"]))
    with pytest.raises(ValueError, match="init_lora_weights"):
        ours.add_adapter(gemma4.LoraConfig(target_modules=["q_proj"], init_lora_weights="eva"))
    assert ours.peft_config == {}
    ours.add_adapter(gemma4.LoraConfig(target_modules=["q_proj"]), "x")
    with pytest.raises(ValueError, match="already exists"):
        ours.add_adapter(gemma4.LoraConfig(target_modules=["q_proj"]), "x")
    ours.merge_adapter()
    with pytest.raises(ValueError, match="merged"):
        ours.delete_adapter("x")


def test_peft_config_object_and_inference_mode():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import peft

        cfg = peft.LoraConfig(r=2, target_modules=["q_proj"], inference_mode=True)
    ours = our_model("tiny-31b")
    ours.add_adapter(cfg)
    assert isinstance(ours.peft_config["default"], gemma4.LoraConfig)
    assert not any(p.requires_grad for p in ours.parameters())


def test_torch_compile_fullgraph():
    """LoRA Linear and LoRA on the expert banks trace into one graph (no graph breaks; aot_eager, so the
    fake kernels and autograd are traced too). Compiled per block
    (attention projection; the MoE feed-forward with its dense MLP) to keep compile time small."""
    preset = "tiny-26b-a4b"
    ours = our_model(preset)
    ours.add_adapter(gemma4.LoraConfig(r=4, target_modules=["q_proj", "down_proj"], target_parameters=EXPERTS))
    ours.add_adapter(gemma4.LoraConfig(r=2, target_parameters=EXPERTS), "second")
    ours.set_adapter(["default", "second"])
    randomize_adapter_(ours.named_parameters(), peft_scaling_lookup(ours), torch.Generator().manual_seed(6))
    ours.eval()
    layer = ours.model.layers[1]
    x = torch.randn(2, 5, ours.config.hidden_size)
    with torch.no_grad():
        for fn in (layer.self_attn.q_proj, layer.feed_forward):
            want = fn(x)
            got = torch.compile(fn, fullgraph=True, backend="aot_eager")(x)  # tracing is the point
            assert_close_rel(got, want, 1e-5, f"compiled {getattr(fn, '__name__', type(fn).__name__)}")


def test_deepcopy_state_dict_and_pickle_format_refused():
    """A model with adapters deep-copies and reloads its own state_dict; PEFT's .bin format is refused
    unopened (the package never unpickles), with a message saying how to convert it."""
    import copy

    preset = "tiny-26b-a4b"
    ids = ids_for(preset)
    pm = make_peft_adapter(preset, dict(r=2, target_modules=["o_proj"], target_parameters=EXPERTS,
                                        modules_to_save=["model.norm"]), seed=8)
    path = tmpdir("bin")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm.save_pretrained(path, safe_serialization=False)
    ours = our_model(preset)
    before = logits(ours, ids)
    with pytest.raises(ValueError, match=r"adapter_model\.bin: PEFT's pickle format is not read.*never unpickles"):
        ours.load_adapter(path)
    assert not ours.peft_config and torch.equal(logits(ours, ids), before)
    pm.save_pretrained(path)  # safetensors beside the .bin: that one is read
    ours.load_adapter(path)
    assert_close_rel(logits(ours, ids), logits(pm, ids), 1e-4, "adapter_model.safetensors")
    twin = copy.deepcopy(ours)
    assert_close_rel(logits(twin, ids), logits(ours, ids), 0.0, "deepcopy")
    twin.load_state_dict(ours.state_dict())


def test_save_pretrained_with_adapters_is_refused(tmp_path):
    model = gemma4.Gemma4ForCausalLM(gemma4.get_preset("tiny-e4b"))
    model.add_adapter(gemma4.LoraConfig(r=4, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="save_adapter"):
        model.save_pretrained(tmp_path / "m")
    merged = model.merge_and_unload()
    merged.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").exists()
