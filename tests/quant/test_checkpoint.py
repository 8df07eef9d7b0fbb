"""Quantized checkpoints: save_pretrained writes compressed-tensors pack-quantized, our loader reads it
back without dequantizing, transformers (with the compressed-tensors package) loads it with the same
logits, and from_pretrained(quantization_config=...) quantizes while loading."""
import json
import os
import tempfile
import warnings

import pytest
import torch
from safetensors import safe_open

import gemma4
from gemma4.quant import QuantExperts, QuantizationConfig, QuantLinear, quantize
from tests.helpers import max_abs_err
from tests.quant.test_quantize import _model


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.double()


def _quantized(preset, dtype, **config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize(_model(preset, dtype), QuantizationConfig(**config))


@pytest.mark.parametrize("preset,config", [
    ("tiny-e4b", dict(weights="int4", group_size=32)),
    ("tiny-e4b", dict(weights="int8", scale_dtype="float16")),
    ("tiny-26b-a4b", dict(weights="int4", group_size=32)),
    ("tiny-e4b", dict(weights="int4", group_size=32, modules_to_not_convert=["router"])),  # the tied head too
])
def test_save_and_load_back_quantized(preset, config):
    model = _quantized(preset, torch.bfloat16, **config)
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        q = json.load(open(os.path.join(d, "config.json")))["quantization_config"]
        assert q["quant_method"] == "compressed-tensors" and q["format"] == "pack-quantized"
        w = q["config_groups"]["group_0"]["weights"]
        assert w["num_bits"] == int(config["weights"][3:]) and w["symmetric"] and w["type"] == "int"
        head = "lm_head" not in config.get("modules_to_not_convert", ["lm_head"])
        assert ("lm_head" in q["ignore"]) != head
        with safe_open(os.path.join(d, "model.safetensors"), "pt") as f:
            keys = set(f.keys())
            assert f.get_tensor("model.layers.0.self_attn.q_proj.weight_packed").dtype == torch.int32
        assert "model.layers.0.self_attn.q_proj.weight" not in keys
        assert ("lm_head.weight_packed" in keys) == head
        loaded = gemma4.AutoModelForCausalLM.from_pretrained(d, progress=False)
    assert isinstance(loaded.model.layers[0].self_attn.q_proj, QuantLinear)
    assert isinstance(loaded.lm_head, QuantLinear) == head and loaded.config.tie_word_embeddings != head
    for name, m in model.named_modules():
        if isinstance(m, (QuantLinear, QuantExperts)):
            mine, theirs = m.state_dict(), loaded.get_submodule(name).state_dict()
            assert mine.keys() == theirs.keys()
            for k in mine:  # bit-exact: repacking is a permutation, scales keep their dtype
                assert mine[k].dtype == theirs[k].dtype and torch.equal(mine[k], theirs[k]), (name, k)
    assert torch.equal(_logits(loaded, ids), _logits(model, ids))


@pytest.mark.parametrize("weights,group,keep", [("int4", 32, ["lm_head", "router"]), ("int4", 64, ["lm_head", "router"]),
                                               ("int8", None, ["lm_head", "router"]), ("int4", 32, ["router"])])
def test_transformers_loads_ours_with_the_same_logits(weights, group, keep):
    pytest.importorskip("compressed_tensors")
    import transformers

    model = _quantized("tiny-e4b", torch.float32, weights=weights, group_size=group, modules_to_not_convert=keep)
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hf = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        with torch.no_grad():
            theirs = hf(input_ids=ids).logits.double()
    ours = _logits(model, ids)
    # float32 weights: transformers decompresses to exactly our dequantized weights
    assert max_abs_err(ours, theirs) <= 1e-4 * theirs.abs().max().item()


@pytest.mark.parametrize("preset,keep", [("tiny-e4b", ["lm_head", "router"]), ("tiny-26b-a4b", ["lm_head", "router"]),
                                         ("tiny-e4b", ["router"])])
def test_quantize_on_load_equals_quantize_after_load(preset, keep):
    model = _model(preset, torch.bfloat16)
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    config = QuantizationConfig(weights="int4", group_size=32, modules_to_not_convert=keep)
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            on_load = gemma4.AutoModelForCausalLM.from_pretrained(d, quantization_config=config, progress=False)
            after = quantize(gemma4.AutoModelForCausalLM.from_pretrained(d, progress=False), config)
    assert sum(isinstance(m, QuantLinear) for m in on_load.modules()) > 0
    assert [type(m) for m in on_load.modules()] == [type(m) for m in after.modules()]
    assert isinstance(on_load.lm_head, QuantLinear) == ("lm_head" not in keep)
    assert on_load.config.tie_word_embeddings == after.config.tie_word_embeddings == ("lm_head" in keep)
    assert torch.equal(_logits(on_load, ids), _logits(after, ids))


def test_quantization_config_on_a_quantized_checkpoint_is_refused():
    model = _quantized("tiny-e4b", torch.bfloat16, weights="int8")
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        with pytest.raises(ValueError, match="already quantized"):
            gemma4.AutoModelForCausalLM.from_pretrained(d, quantization_config=QuantizationConfig())


@pytest.mark.parametrize("edit,match", [
    (lambda q: q.update(format="float-quantized"), "format"),
    (lambda q: q["config_groups"]["group_0"]["weights"].update(symmetric=False), "asymmetric"),
    (lambda q: q["config_groups"]["group_0"]["weights"].update(num_bits=3), "int4 and int8"),
    (lambda q: q["config_groups"]["group_0"].update(input_activations={"num_bits": 8}), "activation"),
])
def test_unsupported_compressed_tensors_configs_name_the_key(edit, match):
    model = _quantized("tiny-e4b", torch.bfloat16, weights="int4")
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        file = os.path.join(d, "config.json")
        raw = json.load(open(file))
        edit(raw["quantization_config"])
        json.dump(raw, open(file, "w"))
        with pytest.raises(gemma4.CheckpointError, match=match) as e:
            gemma4.AutoModelForCausalLM.from_pretrained(d)
        assert "config.json" in str(e.value) and "quantization_config" in str(e.value)
