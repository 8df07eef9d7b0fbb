"""`python -m gemma4 quantize`: the default model quantized while loading, written as compressed-tensors,
read back by gemma4 into the same numbers as quantizing in memory; one-line errors."""
from __future__ import annotations

import os

import pytest
import torch

import gemma4
from gemma4.default_model import default_model_path
from gemma4.quant import QuantizationConfig, quantize
from tests.cli.test_cli import one_error_line, run_cli


@pytest.mark.parametrize("weights, group, expect_group", [("int4", None, 32), ("int8", "channel", None),
                                                          ("int4", "64", 64)])
def test_quantize_command_writes_what_quantize_computes(weights, group, expect_group, tmp_path):
    out = tmp_path / "q"
    r = run_cli("quantize", "default", str(out), "--weights", weights, "--quiet",
                *(["--group-size", group] if group else []))
    assert r.returncode == 0, r.stderr
    assert "compressed-tensors" in r.stdout
    assert {"tokenizer.json", "config.json"} <= set(os.listdir(out))
    loaded = gemma4.AutoModelForCausalLM.from_pretrained(out)
    want = gemma4.AutoModelForCausalLM.from_pretrained(default_model_path())
    quantize(want, QuantizationConfig(weights=weights, group_size=expect_group))
    ids = torch.randint(4, want.config.vocab_size, (2, 17))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, want(input_ids=ids).logits)
    assert gemma4.AutoTokenizer.from_pretrained(out)("Emma was")["input_ids"]


def test_quantize_command_errors(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("1")
    assert "not an empty folder" in one_error_line(run_cli("quantize", "default", str(tmp_path / "full")))
    assert "preset has no trained weights" in one_error_line(run_cli("quantize", "tiny-e2b", str(tmp_path / "a")))
    assert "trained_grid applies to int4" in one_error_line(
        run_cli("quantize", "default", str(tmp_path / "b"), "--weights", "int8", "--trained-grid"))
    assert "invalid choice" in one_error_line(
        run_cli("quantize", "default", str(tmp_path / "c"), "--group-size", "48"))


def test_generate_quantize_streams_what_the_quantized_model_generates(tmp_path):
    """`generate --quantize int4` quantizes while loading and prints the greedy text of the model
    gemma4.quantize makes in memory; on an already quantized checkpoint it is one error line."""
    prompt = "It is a truth universally acknowledged"
    r = run_cli("generate", "--model", "default", "--prompt", prompt, "--greedy", "--max-new-tokens", "16",
                "--threads", "1", "--quantize", "int4", "--quiet")
    assert r.returncode == 0, r.stderr
    model = gemma4.AutoModelForCausalLM.from_pretrained(default_model_path(), progress=False)
    quantize(model, QuantizationConfig(weights="int4"))
    tok = gemma4.AutoTokenizer.from_pretrained(default_model_path())
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.eval().generate(ids, do_sample=False, max_new_tokens=16)
    assert r.stdout.rstrip("\n") == prompt + tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    quantized = tmp_path / "q"
    assert run_cli("quantize", "default", str(quantized), "--quiet").returncode == 0
    line = one_error_line(run_cli("generate", "--model", str(quantized), "--prompt", prompt, "--quantize", "int8"))
    assert "quantiz" in line
