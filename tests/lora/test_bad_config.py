"""Broken adapter configs and failed injections: every value is checked before the model is touched, the
error names the file (or LoraConfig) and the key, and a failure half-way leaves the model exactly as it was.
Adapters here are made and saved by gemma4 itself (no PEFT needed)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from gemma4 import LoraConfig
from gemma4.errors import AdapterConfigError, AdapterError, AdapterNotFoundError
from gemma4.lora import LoraLinear
from gemma4.lora.layers import LoraLinear as LoraLinearImpl
from gemma4.modeling.random_model import build_random_model

PRESET = "tiny-e2b"
TARGETS = ["q_proj", "down_proj"]


def fresh_model():
    return build_random_model(PRESET, torch.float32, seed=11)


def structure(model) -> list[tuple[str, str, int]]:
    """(name, type, id) of every module and (name, shape, id) of every parameter and buffer: any change shows."""
    mods = [(n, type(m).__name__, id(m)) for n, m in model.named_modules()]
    tensors = [(n, str(tuple(t.shape)), id(t)) for n, t in [*model.named_parameters(), *model.named_buffers()]]
    return mods + tensors


def assert_unchanged(model, before, weights):
    assert structure(model) == before, "a failed call must leave the model as it was"
    assert model.peft_config == {}
    assert not any(isinstance(m, LoraLinear) for m in model.modules())
    for (name, w), (_, w0) in zip(model.state_dict().items(), weights.items()):
        assert torch.equal(w, w0), name


@pytest.fixture(scope="module")
def good_adapter(tmp_path_factory):
    model = fresh_model()
    model.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS), "default")
    with torch.no_grad():  # B is zero at creation: give the adapter an effect
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    path = tmp_path_factory.mktemp("adapter") / "good"
    model.save_adapter(path)
    return path


def variant(good, tmp_path, edit=None, raw: bytes | None = None):
    path = tmp_path / "edited"
    shutil.copytree(good, path)
    file = path / "adapter_config.json"
    if raw is not None:
        file.write_bytes(raw)
    else:
        cfg = json.loads(file.read_text())
        edit(cfg)
        file.write_text(json.dumps(cfg))
    return path


def test_good_adapter_loads(good_adapter):
    model = fresh_model()
    model.load_adapter(good_adapter)
    assert list(model.peft_config) == ["default"]


CASES = [  # (key, value, the key the message names)
    ("lora_alpha", "x", "lora_alpha"),
    ("lora_alpha", None, "lora_alpha"),
    ("lora_dropout", "x", "lora_dropout"),
    ("lora_dropout", 1.5, "lora_dropout"),
    ("layers_to_transform", "abc", "layers_to_transform"),
    ("layers_to_transform", [0, "1"], "layers_to_transform"),
    ("target_modules", "(q_proj", "target_modules"),
    ("target_modules", ["q_proj", 3], "target_modules"),
    ("exclude_modules", "[", "exclude_modules"),
    ("rank_pattern", {"(": 2}, "rank_pattern.("),
    ("rank_pattern", {"q_proj": "8"}, "rank_pattern.q_proj"),
    ("alpha_pattern", {"q_proj": "x"}, "alpha_pattern.q_proj"),
    ("r", "4", "'r'"),
    ("r", 0, "'r'"),
    ("use_rslora", "yes", "use_rslora"),
    ("modules_to_save", "lm_head", "modules_to_save"),
    ("layers_pattern", ["("], "layers_pattern"),
]


@pytest.mark.parametrize("key, value, named", CASES)
def test_bad_value_names_file_and_key(good_adapter, tmp_path, key, value, named):
    def edit(cfg):
        cfg[key] = value
        if key in ("layers_to_transform", "layers_pattern"):
            cfg["target_modules"] = TARGETS
            cfg.setdefault("layers_to_transform", [0])
    path = variant(good_adapter, tmp_path, edit)
    model = fresh_model()
    before, weights = structure(model), {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(AdapterConfigError) as info:
        model.load_adapter(path)
    message = str(info.value)
    assert "adapter_config.json" in message and named in message, message
    assert_unchanged(model, before, weights)


@pytest.mark.parametrize("raw, words", [(b"[1, 2]", "JSON object"), (b'{"r": 4, "x": "\xff\xfe"}', "UTF-8")])
def test_unreadable_config(good_adapter, tmp_path, raw, words):
    path = variant(good_adapter, tmp_path, raw=raw)
    with pytest.raises(AdapterError, match=rf"adapter_config\.json.*{words}"):
        fresh_model().load_adapter(path)


@pytest.mark.parametrize("raw, words", [(b"[1, 2]", "JSON object"), (b'{"r": 4, "x": "\xff\xfe"}', "UTF-8"),
                                        (b'{"r": 4,', "invalid JSON"),
                                        (b'{"r": 4, "lora_future": 1}', "key 'lora_future': unknown LoRA option"),
                                        (b'{"r": "4"}', "key 'r'")])  # (this one from validate())
def test_config_from_pretrained_names_file_and_key(tmp_path, raw, words):
    """LoraConfig.from_pretrained reads through hf_format's JSON reader, as load_adapter does: one error."""
    file = tmp_path / "adapter_config.json"
    file.write_bytes(raw)
    for where in (tmp_path, file):  # the directory or the file itself
        with pytest.raises(AdapterConfigError) as info:
            LoraConfig.from_pretrained(where).validate()
        assert info.value.source == str(file) and words in str(info.value), str(info.value)


def test_config_from_pretrained_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json: file does not exist") as info:
        LoraConfig.from_pretrained(tmp_path)
    assert isinstance(info.value, AdapterNotFoundError)


def test_add_adapter_with_a_bad_value_changes_nothing(tmp_path):
    model = fresh_model()
    before, weights = structure(model), {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(AdapterConfigError, match="LoraConfig: key 'lora_alpha'"):
        model.add_adapter(LoraConfig(lora_alpha="x", target_modules=TARGETS))
    assert_unchanged(model, before, weights)
    model.save_pretrained(tmp_path)  # still a plain model: it saves (no .base_layer keys), merge has nothing
    with pytest.raises(ValueError, match="No adapter loaded"):
        model.merge_and_unload()


def test_non_finite_adapter_weights_are_refused(good_adapter, tmp_path):
    from safetensors.torch import load_file, save_file

    path = tmp_path / "nan"
    shutil.copytree(good_adapter, path)
    file = path / "adapter_model.safetensors"
    tensors = load_file(file)
    key = sorted(tensors)[0]
    tensors[key][0, 0] = float("inf")
    save_file(tensors, file, metadata={"format": "pt"})
    model = fresh_model()
    before, weights = structure(model), {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=rf"adapter_model\.safetensors.*{key}.*non-finite"):
        model.load_adapter(path)
    assert_unchanged(model, before, weights)


@pytest.mark.parametrize("fail_at", [1, 3])
def test_injection_is_all_or_nothing(good_adapter, monkeypatch, fail_at):
    """A failure in the middle of wrapping (here: the fail_at-th layer raises) removes every wrapper and
    factor already added, also on layers that carry another adapter."""
    model = fresh_model()
    model.load_adapter(good_adapter, adapter_name="first")
    before = structure(model)
    x = torch.randint(0, 512, (1, 7))
    want = model(input_ids=x).logits
    calls = {"n": 0}
    original = LoraLinearImpl.update_layer

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        original(self, *args, **kwargs)  # the factors exist, then the failure comes
        if calls["n"] == fail_at:
            raise RuntimeError("injected failure")

    monkeypatch.setattr(LoraLinearImpl, "update_layer", failing)
    with pytest.raises(RuntimeError, match="injected failure"):
        model.add_adapter(LoraConfig(r=2, target_modules=["q_proj", "v_proj", "o_proj"]), "second")
    monkeypatch.undo()
    assert structure(model) == before
    assert list(model.peft_config) == ["first"]
    for m in model.modules():
        if isinstance(m, LoraLinear):
            assert m.adapter_names() == ["first"]
    assert torch.equal(model(input_ids=x).logits, want)
    model.add_adapter(LoraConfig(r=2, target_modules=["q_proj", "v_proj", "o_proj"]), "second")  # works now
    assert sorted(model.peft_config) == ["first", "second"]
