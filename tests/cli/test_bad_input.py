"""The command line given bad numbers, broken files or bad bytes: one line on stderr and exit status 2 (never a
traceback), and interactive chat survives input that is not UTF-8."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

import gemma4
from gemma4 import cli
from gemma4.default_model import default_model_path
from gemma4.modeling.random_model import build_random_model
from tests.cli.test_cli import ROOT, one_error_line, run_cli


@pytest.mark.parametrize("argv, words", [
    (["generate", "--prompt", "x", "--seed", str(2**64)], ["--seed", str(2**64)]),
    (["generate", "--prompt", "x", "--seed", "-1"], ["--seed"]),
    (["generate", "--prompt", "x", "--seed", "1.5"], ["--seed"]),
    (["generate", "--prompt", "x", "--max-new-tokens", "1e8"], ["--max-new-tokens", "1e8"]),
    (["generate", "--prompt", "x", "--max-new-tokens", str(2**40)], ["--max-new-tokens"]),
    (["generate", "--prompt", "x", "--top-k", "-3"], ["--top-k"]),
    (["generate", "--prompt", "x", "--temperature", "nan"], ["--temperature"]),
    (["chat", "--threads", "0"], ["--threads"]),
    (["demo", "--max-new-tokens", "0"], ["--max-new-tokens"]),
])
def test_bad_numbers_are_one_line(argv, words, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    for word in words:
        assert word in err, (word, err)


def test_huge_max_new_tokens_is_refused_before_generating():
    line = one_error_line(run_cli("generate", "--model", "default", "--prompt", "It was", "--max-new-tokens",
                                  str(2**32), "--quiet", timeout=120))
    assert "max_new_tokens=4294967296" in line and "GiB" in line


@pytest.fixture()
def tokenizer_copy(tmp_path):
    d = tmp_path / "tok"
    d.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(os.path.join(default_model_path(), name), d / name)
    return d


def test_broken_tokenizer_file(tokenizer_copy):
    (tokenizer_copy / "tokenizer.json").write_text("[1, 2, 3]")
    line = one_error_line(run_cli("generate", "--prompt", "x", "--tokenizer", str(tokenizer_copy)))
    assert "tokenizer.json" in line


def test_template_that_fails_when_rendered(tokenizer_copy):
    (tokenizer_copy / "chat_template.jinja").write_text("{{ raise_exception('this model does not chat') }}")
    line = one_error_line(run_cli("generate", "--prompt", "x", "--chat", "--tokenizer", str(tokenizer_copy)))
    assert "this model does not chat" in line
    (tokenizer_copy / "chat_template.jinja").write_text("{{ 'a' * 10**10 }}")
    line = one_error_line(run_cli("generate", "--prompt", "x", "--chat", "--tokenizer", str(tokenizer_copy)))
    assert "chat template" in line


def test_non_finite_weights(tmp_path):
    cfg = gemma4.get_preset("tiny-e2b", vocab_size=4096, vocab_size_per_layer_input=4096)  # the default tokenizer fits
    model = build_random_model(cfg, torch.float32, seed=1)
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    model.save_pretrained(tmp_path / "nan")
    line = one_error_line(run_cli("generate", "--model", str(tmp_path / "nan"), "--prompt", "x",
                                  "--max-new-tokens", "3"))
    assert "NaN" in line


def test_chat_survives_bytes_that_are_not_utf8():
    r = subprocess.run([sys.executable, "-m", "gemma4", "chat", "--model", "default", "--max-new-tokens", "3",
                        "--threads", "1", "--quiet", "--seed", "0"],
                       input=b"caf\xe9 \xff\xfe hello\nsecond line\n/exit\n", capture_output=True, cwd=ROOT,
                       env=dict(os.environ), timeout=240)
    stderr = r.stderr.decode("utf-8", "replace")
    assert r.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert r.stdout.decode("utf-8").count("model> ") == 2  # both lines were answered
