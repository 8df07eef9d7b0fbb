"""gemma4.hf_format (config.json forms, names, the safetensors reader/writer) and the file defects of
issue 7: presets as differences, unknown preset overrides, configs that would load a broken model,
the layer count against the checkpoint, adapter files that are lists / not UTF-8 / truncated /
pickles / non-finite, and loading that leaves the caller's config alone.

Checkpoints here are written by our own model (fast; transformers' files are covered by
test_checkpoint.py).
"""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

import gemma4
from gemma4.checkpoint import SAFE_WEIGHTS_NAME, load_pretrained
from gemma4.config import Gemma4Config
from gemma4.errors import AdapterError, AdapterNotFoundError, CheckpointError, ConfigError
from gemma4.hf_format.config_json import UNIFIED_ABSENT, config_kwargs, read_json_object
from gemma4.hf_format.keys import MULTIMODAL_PREFIXES, Layout, map_checkpoint_key
from gemma4.hf_format.safetensors import load_file, read_header, save_file
from gemma4.lora import LoraConfig
from gemma4.modeling import Gemma4ForCausalLM
from gemma4.presets import GEMMA4_BASE, PRESETS, get_preset, preset_dict

PRESET = "tiny-e4b"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    Gemma4ForCausalLM(get_preset(PRESET)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    path = tmp_path_factory.mktemp("adapter")
    model = Gemma4ForCausalLM(get_preset(PRESET))
    model.add_adapter(LoraConfig(r=2, target_modules=["q_proj", "down_proj"], init_lora_weights=False))
    model.save_adapter(path)
    return path


def _copy(src, tmp_path, name="copy"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------------------------- presets
def test_presets_are_the_base_plus_their_differences():
    sizes = {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "layer_types"}  # what no two variants share, so the base has none
    for name, d in PRESETS.items():
        # a variant adds its sizes, and otherwise only overrides; a unified (12B) one has no PLE/MoE keys
        absent = set(UNIFIED_ABSENT) if d["model_type"] == "gemma4_unified_text" else set()
        assert set(d) == (set(GEMMA4_BASE) | sizes) - absent, name
        assert get_preset(name) == Gemma4Config.from_dict(d)
    # the released models differ from the base in their sizes and layer pattern, not in the shared values
    assert PRESETS["gemma-4-E2B"]["rope_parameters"] == GEMMA4_BASE["rope_parameters"]
    assert PRESETS["gemma-4-31B"]["layer_types"].count("full_attention") == 10


def test_default_model_config_is_the_default_preset():
    shipped = Gemma4Config.from_pretrained(gemma4.default_model_path())
    assert get_preset("default") == shipped


def test_get_preset_unknown_override_raises():
    """Issue 7 defect 15: a misspelled override is an error, not silently ignored."""
    with pytest.raises(TypeError, match="sliding_windw"):
        get_preset("tiny-e2b", sliding_windw=16)
    with pytest.raises(TypeError, match="sliding_windw"):
        preset_dict("tiny-e2b", sliding_windw=16)
    with pytest.raises(KeyError, match="no-such"):
        get_preset("no-such")
    assert get_preset("tiny-e2b", sliding_window=16).sliding_window == 16


# ------------------------------------------------------------------------------------- config.json
def test_config_from_dict_leaves_its_input_alone():
    d = {"model_type": "gemma4", "text_config": preset_dict("tiny-e2b"), "dtype": "bfloat16"}
    before = json.dumps(d, sort_keys=True)
    kwargs, prefix = config_kwargs(d, ["dtype", "sliding_window", "layer_types"], source="x.json")
    assert prefix == "text_config." and kwargs["sliding_window"] == 8 and kwargs["dtype"] == "bfloat16"
    config = Gemma4Config.from_dict(d, source="x.json")
    assert json.dumps(d, sort_keys=True) == before
    assert config.dtype == "bfloat16" and config == get_preset("tiny-e2b", dtype="bfloat16")


@pytest.mark.parametrize("content, message", [
    (b"[1, 2]", "expected a JSON object, got list"),
    (b'"text"', "expected a JSON object, got str"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"{,}", r"invalid JSON \(line 1"),
])
def test_read_json_object_errors_name_the_file(tmp_path, content, message):
    file = tmp_path / "some.json"
    file.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as info:
        read_json_object(str(file))
    assert info.value.source == str(file)


def test_loading_does_not_mutate_the_callers_config(checkpoint):
    config = Gemma4Config.from_pretrained(checkpoint)
    before = config.to_dict()
    model = load_pretrained(Gemma4ForCausalLM, checkpoint, dtype=torch.bfloat16, config=config, progress=False)
    assert config.to_dict() == before and config.dtype == "float32"
    assert model.config.dtype == "bfloat16" and model.config is not config


def test_layer_count_checked_against_the_checkpoint_before_building(checkpoint, tmp_path):
    """Issue 7 defect 3: num_hidden_layers that disagrees with the tensors is a ConfigError naming the key."""
    dst = _copy(checkpoint, tmp_path)
    d = json.loads((dst / "config.json").read_text())
    d["num_hidden_layers"] = 18
    d["layer_types"] = d["layer_types"] + d["layer_types"][:6]
    d.pop("per_layer_config")  # the legacy global_head_dim covers the new full layers too
    (dst / "config.json").write_text(json.dumps(d))

    built = []

    class Spy(Gemma4ForCausalLM):
        def __init__(self, config):
            built.append(config)
            super().__init__(config)

    with pytest.raises(ConfigError, match="is 18 but the checkpoint holds layers 0-11") as info:
        load_pretrained(Spy, dst, progress=False)
    assert info.value.key == "num_hidden_layers" and info.value.source == str(dst / "config.json")
    assert built == []  # refused before the model was built


def test_absurd_layer_count_refused_quickly(tmp_path):
    """Issue 7 defect 3: no minutes and gigabytes for num_hidden_layers 10**9."""
    d = preset_dict("tiny-e2b", num_hidden_layers=10**9, layer_types=None)
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError, match=r"num_hidden_layers.*\[1, 1024\]"):
        Gemma4Config.from_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="num_hidden_layers"):
        Gemma4Config(num_hidden_layers=10**8)


@pytest.mark.parametrize("key, value, message", [
    ("final_logit_softcapping", float("inf"), "finite"),
    ("pad_token_id", 512, "vocab_size is 512"),
    ("dtype", "float8_e4m3fn", "must be one of"),
    ("head_dim", 1024, "up to 512"),
])
def test_config_that_would_load_a_broken_model(checkpoint, tmp_path, key, value, message):
    """Issue 7 defect 6: refused at load, naming the file and key."""
    dst = _copy(checkpoint, tmp_path)
    d = json.loads((dst / "config.json").read_text())
    d[key] = value
    if key == "head_dim":
        d.pop("per_layer_config")
    (dst / "config.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError, match=message) as info:
        gemma4.AutoModelForCausalLM.from_pretrained(dst, progress=False)
    assert info.value.key == key and info.value.source == str(dst / "config.json")


def test_float8_dtype_argument_refused(checkpoint):
    with pytest.raises(CheckpointError, match="dtype='float8_e4m3fn': expected 'auto' or one of"):
        load_pretrained(Gemma4ForCausalLM, checkpoint, dtype="float8_e4m3fn", progress=False)


# ------------------------------------------------------------------------------------- names
def test_one_multimodal_list_for_checkpoints_and_adapters():
    for prefix in MULTIMODAL_PREFIXES:
        key = prefix + "layer.weight"
        assert map_checkpoint_key(key) is None
        assert Layout("conditional").is_multimodal(key) and not Layout("causal").is_multimodal(key)
    assert map_checkpoint_key("model.language_model.layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj.weight"
    assert map_checkpoint_key("model.layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj.weight"


def test_layout_round_trip_and_detection():
    ours = ["model.layers.3.self_attn.q_proj", "model.embed_tokens", "lm_head", "model"]
    for kind in ("causal", "conditional"):
        layout = Layout(kind)
        assert [layout.from_hf(layout.to_hf(n)) for n in ours] == ours
    assert Layout("conditional").to_hf("model.norm") == "model.language_model.norm"
    assert Layout("conditional").from_hf("model.vision_tower.x") is None
    assert Layout.detect(["model.language_model.layers.0.mlp.lora_A.weight"], "a") == Layout("conditional")
    assert Layout.detect(["model.layers.0.mlp.lora_A.weight"], "a") == Layout("causal")
    with pytest.raises(ValueError, match="not under a Gemma 4 model"):
        Layout.detect(["encoder.layers.0.weight"], "a")


# ------------------------------------------------------------------------------------- safetensors
def test_writer_handles_views_and_reader_round_trips(tmp_path):
    base = torch.randn(6, 4)
    tensors = {"a": base, "b": base[2:4], "c": base.t(), "d": torch.randint(-5, 5, (3,), dtype=torch.int8),
               "e": torch.randn(2, 3).to(torch.bfloat16), "f": torch.empty(0, 4)}
    file = str(tmp_path / "t.safetensors")
    nbytes = save_file(tensors, file, metadata={"x": "y"})
    got = load_file(file)
    assert list(got) == list(tensors) or set(got) == set(tensors)
    for k, t in tensors.items():
        assert got[k].dtype == t.dtype and torch.equal(got[k], t), k
    assert nbytes == sum(t.numel() * t.element_size() for t in tensors.values())
    assert read_header(file)[1] == {"format": "pt", "x": "y"}


def test_reader_refuses_truncated_and_non_finite(tmp_path):
    file = tmp_path / "t.safetensors"
    save_file({"w": torch.randn(64, 8)}, str(file))
    data = file.read_bytes()
    file.write_bytes(data[:-5])
    with pytest.raises(CheckpointError, match="truncated") as info:
        load_file(str(file))
    assert info.value.source == str(file) and info.value.key == "w"
    bad = torch.randn(64, 8)
    bad[3, 5] = float("nan")
    save_file({"w": bad}, str(file))
    with pytest.raises(CheckpointError, match=r"non-finite values \(1 NaN, 0 inf") as info:
        load_file(str(file))
    assert info.value.key == "w"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("value,counts", [(float("nan"), "1 NaN, 0 inf"), (float("inf"), "0 NaN, 1 inf"),
                                          (float("-inf"), "0 NaN, 1 inf")])
def test_reader_finds_one_non_finite_value_anywhere(tmp_path, dtype, value, counts):
    """The finite check (min and max of the tensor) catches a single NaN, inf or -inf wherever it sits in a
    large tensor (the reduction's first and last element, and across its parallel chunks)."""
    file = tmp_path / "t.safetensors"
    good = torch.randn(1536, 777).to(dtype)
    save_file({"w": good}, str(file))
    assert torch.equal(load_file(str(file))["w"], good)
    for flat in (0, 1536 * 777 - 1, int(torch.randint(1, 1536 * 777 - 1, ()))):
        bad = good.clone()
        bad.view(-1)[flat] = value
        save_file({"w": bad}, str(file))
        with pytest.raises(CheckpointError, match=rf"non-finite values \({counts}"):
            load_file(str(file))


# ------------------------------------------------------------------------------------- adapter files
def _load_adapter_fails(path, exc, match):
    model = Gemma4ForCausalLM(get_preset(PRESET))
    ids = torch.randint(0, 512, (1, 9))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    with pytest.raises(exc, match=match) as info:
        model.load_adapter(path)
    assert not model.peft_config
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)
    return info.value


def test_good_adapter_loads(adapter):
    model = Gemma4ForCausalLM(get_preset(PRESET))
    model.load_adapter(adapter)
    assert model.peft_config


@pytest.mark.parametrize("content, message", [(b"[1, 2]", "expected a JSON object, got list"),
                                              (b"\xff\xfe{}", "not UTF-8")])
def test_adapter_config_not_an_object(adapter, tmp_path, content, message):
    """Issue 7 defect 9: adapter_config.json that is a JSON list or not UTF-8 names the file."""
    dst = _copy(adapter, tmp_path)
    (dst / "adapter_config.json").write_bytes(content)
    err = _load_adapter_fails(dst, AdapterError, message)
    assert err.source == str(dst / "adapter_config.json")


def test_adapter_missing_files(adapter, tmp_path):
    dst = _copy(adapter, tmp_path)
    os.remove(dst / "adapter_model.safetensors")
    err = _load_adapter_fails(dst, AdapterNotFoundError, "no adapter_model.safetensors")
    assert isinstance(err, FileNotFoundError)
    _load_adapter_fails(tmp_path / "nowhere", FileNotFoundError, "does not exist")


def test_truncated_adapter_weights_name_the_path(adapter, tmp_path):
    """Issue 7 defect 9: a truncated adapter_model.safetensors names the file (and tensor)."""
    dst = _copy(adapter, tmp_path)
    file = dst / "adapter_model.safetensors"
    file.write_bytes(file.read_bytes()[:-7])
    err = _load_adapter_fails(dst, CheckpointError, "truncated")
    assert err.source == str(file) and err.key.startswith("base_model.model.")


def test_non_finite_adapter_weights_refused(adapter, tmp_path):
    """Issue 7 defect 7, for adapters: NaN/inf in a LoRA weight names the tensor."""
    dst = _copy(adapter, tmp_path)
    file = str(dst / "adapter_model.safetensors")
    tensors = load_file(file)
    key = sorted(tensors)[len(tensors) // 2]
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = float("inf")
    save_file(tensors, file)
    err = _load_adapter_fails(dst, CheckpointError, "non-finite")
    assert err.key == key


def test_pickle_adapter_refused_unopened(adapter, tmp_path):
    """Issue 7 defect 10: adapter_model.bin is refused with a message, never unpickled."""
    dst = _copy(adapter, tmp_path)
    os.remove(dst / "adapter_model.safetensors")
    (dst / "adapter_model.bin").write_bytes(os.urandom(64))  # not even a pickle: it is never opened
    err = _load_adapter_fails(dst, AdapterError, "never unpickles")
    assert err.source == str(dst / "adapter_model.bin")
