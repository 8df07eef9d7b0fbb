"""Adapters that do not fit, or use what gemma4 does not implement, raise one ValueError naming the key or
option -- and leave the model as it was."""
import functools
import json
import os
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.lora.common import base_path, ids_for, logits, make_peft_adapter, our_model, save_peft, tmpdir

PRESET = "tiny-e2b"
KEY_Q0A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"


@functools.lru_cache(maxsize=None)
def _good_adapter() -> str:
    return save_peft(make_peft_adapter(PRESET, dict(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"])),
                     "good")


def _variant(edit_tensors=None, edit_config=None) -> str:
    """A copy of the good adapter with its tensors and/or config edited."""
    path = tmpdir("bad")
    shutil.copytree(_good_adapter(), path, dirs_exist_ok=True)
    if edit_tensors:
        f = os.path.join(path, "adapter_model.safetensors")
        tensors = load_file(f)
        edit_tensors(tensors)
        save_file(tensors, f, metadata={"format": "pt"})
    if edit_config:
        f = os.path.join(path, "adapter_config.json")
        with open(f) as fh:
            cfg = json.load(fh)
        edit_config(cfg)
        with open(f, "w") as fh:
            json.dump(cfg, fh)
    return path


@pytest.fixture(scope="module")
def model():
    return our_model(PRESET)


def _expect_error(model, path, match):
    names = [n for n, _ in model.named_parameters()]
    with pytest.raises(ValueError, match=match):
        model.load_adapter(path)
    assert [n for n, _ in model.named_parameters()] == names, "a failed load must leave the model unchanged"
    assert model.peft_config == {}


def test_good_adapter_loads(model):
    m = our_model(PRESET)
    m.load_adapter(_good_adapter())
    assert list(m.peft_config) == ["default"]


def test_shape_mismatch_names_the_key(model):
    def bad(t):
        t[KEY_Q0A] = torch.randn(3, t[KEY_Q0A].shape[1])

    _expect_error(model, _variant(bad), r"model\.layers\.0\.self_attn\.q_proj\.lora_A\.weight.*shape \(3, 64\)")


def test_rank_in_config_disagrees_with_file(model):
    _expect_error(model, _variant(edit_config=lambda c: c.update(r=6)),
                  r"lora_A\.weight.* has shape \(4, 64\).*\(6, 64\)")


@pytest.mark.parametrize("key, match", [
    ("base_model.model.model.layers.77.self_attn.q_proj.lora_A.weight",
     r"layers\.77\.self_attn\.q_proj\.lora_A\.weight.*no module"),
    ("base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight",
     r"layers\.0\.self_attn\.k_proj\.lora_A\.weight.*does not target"),
    ("base_model.model.transformer.h.0.attn.c_attn.lora_A.weight", r"transformer\.h\.0\.attn\.c_attn\.lora_A\.weight"),
], ids=["unknown_module", "untargeted_module", "not_a_gemma_key"])
def test_extra_key_is_named(model, key, match):
    _expect_error(model, _variant(lambda t: t.update({key: torch.randn(4, 64)})), match)


def test_missing_key(model):
    def bad(t):
        del t["base_model.model.model.layers.2.mlp.down_proj.lora_B.weight"]

    _expect_error(model, _variant(bad), r"missing key .*layers\.2\.mlp\.down_proj\.lora_B\.weight")


def test_integer_tensor(model):
    def bad(t):
        t[KEY_Q0A] = torch.ones(t[KEY_Q0A].shape, dtype=torch.int32)

    _expect_error(model, _variant(bad), r"q_proj\.lora_A\.weight.*dtype")


def test_adapter_for_another_variant(model):
    """An adapter made on tiny-e4b (12 layers) does not fit tiny-e2b (10 layers)."""
    other = save_peft(make_peft_adapter("tiny-e4b", dict(r=2, target_modules=["o_proj"])), "e4b")
    _expect_error(model, other, r"base_model\.model\.model\.layers\.1[01]\.self_attn\.o_proj\.lora_[AB]\.weight")


def test_base_model_path_mismatch(model):
    """base_model_name_or_path pointing at a local checkpoint of another variant is detected."""
    other = base_path("tiny-31b")
    _expect_error(model, _variant(edit_config=lambda c: c.update(base_model_name_or_path=other)),
                  "num_hidden_layers")
    # pointing at the right checkpoint is fine
    m = our_model(PRESET)
    m.load_adapter(_variant(edit_config=lambda c: c.update(base_model_name_or_path=base_path(PRESET))))


def test_auto_mapping_of_another_class(model):
    _expect_error(model, _variant(edit_config=lambda c: c.update(
        auto_mapping={"base_model_class": "LlamaForCausalLM", "parent_library": "transformers"})), "LlamaForCausalLM")


@pytest.mark.parametrize("field, value", [("use_dora", True), ("bias", "all"), ("fan_in_fan_out", True),
                                          ("lora_bias", True), ("init_lora_weights", "pissa"),
                                          ("peft_type", "LOHA"), ("trainable_token_indices", [3])])
def test_unsupported_options_refused(model, field, value):
    _expect_error(model, _variant(edit_config=lambda c: c.update({field: value})),
                  field if field != "peft_type" else "LOHA")


def test_dora_adapter_made_by_peft(model):
    path = save_peft(make_peft_adapter(PRESET, dict(r=2, target_modules=["q_proj"], use_dora=True)), "dora")
    _expect_error(model, path, "use_dora")


@pytest.mark.parametrize("target, match", [("embed_tokens", "embedding"), ("lm_head", "LM head")])
def test_refused_targets(model, target, match):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = save_peft(make_peft_adapter(PRESET, dict(r=2, target_modules=["q_proj", target])), target)
    _expect_error(model, path, match)


def test_missing_files_and_duplicate_name(model):
    with pytest.raises(FileNotFoundError):
        model.load_adapter(tmpdir("nothing-here") + "/absent")
    empty = tmpdir("empty")
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        model.load_adapter(empty)
    m = our_model(PRESET)
    m.load_adapter(_good_adapter(), adapter_name="x")
    with pytest.raises(ValueError, match="already exists"):
        m.load_adapter(_good_adapter(), adapter_name="x")


def test_failed_load_keeps_existing_adapters_working():
    m = our_model(PRESET)
    m.load_adapter(_good_adapter())
    want = logits(m, ids_for(PRESET))
    with pytest.raises(ValueError):
        m.load_adapter(_variant(edit_config=lambda c: c.update(r=6)), adapter_name="bad")
    assert list(m.peft_config) == ["default"]
    torch.testing.assert_close(logits(m, ids_for(PRESET)), want, rtol=0, atol=0)
