"""GenerationConfig: transformers 5.17's fields, defaults and generation_config.json format; models read
the file beside their checkpoint."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM as HFAutoModelForCausalLM
from transformers import GenerationConfig as HFGenerationConfig

import gemma4
from gemma4.generation import GenerationConfig

IT_GENERATION_CONFIG = {"bos_token_id": 2, "do_sample": True, "eos_token_id": [1, 106, 50], "pad_token_id": 0,
                        "temperature": 1.0, "top_k": 64, "top_p": 0.95}


def test_fields_and_defaults_match_transformers():
    ours, theirs = GenerationConfig(), HFGenerationConfig()
    hf_fields = {k for k in vars(theirs) if not k.startswith("_")}
    assert hf_fields <= set(vars(ours))
    for name in hf_fields - {"transformers_version"}:
        assert getattr(ours, name) == getattr(theirs, name), name
    assert GenerationConfig._get_default_generation_params() == HFGenerationConfig._get_default_generation_params()


def test_json_round_trip_with_transformers(tmp_path):
    HFGenerationConfig(**IT_GENERATION_CONFIG, max_new_tokens=7).save_pretrained(tmp_path / "a")
    ours = GenerationConfig.from_pretrained(tmp_path / "a")
    assert (ours.top_k, ours.top_p, ours.eos_token_id, ours.max_new_tokens, ours.do_sample) == (64, 0.95, [1, 106, 50],
                                                                                                7, True)
    ours.save_pretrained(tmp_path / "b")
    written = json.loads((tmp_path / "b" / "generation_config.json").read_text())
    assert {k: v for k, v in written.items() if k != "transformers_version"} == {**IT_GENERATION_CONFIG,
                                                                                 "max_new_tokens": 7}
    theirs = HFGenerationConfig.from_pretrained(tmp_path / "b")
    assert (theirs.top_k, theirs.top_p, theirs.eos_token_id, theirs.max_new_tokens) == (64, 0.95, [1, 106, 50], 7)
    again, unused = GenerationConfig.from_pretrained(tmp_path / "b", top_k=5, foo=1, return_unused_kwargs=True)
    assert again.top_k == 5 and again.foo == 1  # custom entries become attributes, as in transformers
    assert GenerationConfig.from_dict(IT_GENERATION_CONFIG) == GenerationConfig(**IT_GENERATION_CONFIG)


def test_update_returns_unused_kwargs():
    config = GenerationConfig(top_k=3)
    unused = config.update(top_k=9, temperature=0.5, not_a_field=1)
    assert unused == {"not_a_field": 1} and config.top_k == 9 and config.temperature == 0.5
    config.update(top_k=1, top_p=0.5, defaults_only=True)
    assert config.top_k == 9 and config.top_p == 0.5


def test_invalid_values_raise():
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        GenerationConfig(top_p=2.0)
    with pytest.raises(OSError, match="generation_config.json"):
        GenerationConfig.from_pretrained("/nonexistent")


def test_from_model_config_reads_special_tokens():
    nested = {"model_type": "gemma4", "eos_token_id": [1, 106], "text_config": {"pad_token_id": 0, "bos_token_id": 2}}
    config = GenerationConfig.from_model_config(nested)
    assert (config.eos_token_id, config.pad_token_id, config.bos_token_id) == ([1, 106], 0, 2)


def test_model_generation_config_like_transformers(e2b, tmp_path):
    """Without generation_config.json: the config's special tokens; with one: the file (both as transformers)."""
    import shutil

    _, ours, path = e2b
    d = tmp_path / "m"
    shutil.copytree(path, d)
    (d / "generation_config.json").unlink(missing_ok=True)
    ours = gemma4.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, progress=False)
    theirs = HFAutoModelForCausalLM.from_pretrained(d)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "top_k", "do_sample", "max_length"):
        assert getattr(ours.generation_config, name) == getattr(theirs.generation_config, name), name
    (d / "generation_config.json").write_text(json.dumps(IT_GENERATION_CONFIG))
    ours = gemma4.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, progress=False)
    theirs = HFAutoModelForCausalLM.from_pretrained(d)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "top_k", "top_p", "do_sample"):
        assert getattr(ours.generation_config, name) == getattr(theirs.generation_config, name), name
    ours.generation_config = GenerationConfig(top_k=3)
    assert ours.generation_config.top_k == 3
