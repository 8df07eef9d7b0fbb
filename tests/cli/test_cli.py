"""`python -m gemma4` as a user runs it: subprocesses on the default model and on a tiny preset saved to tmp."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gemma4
from gemma4 import cli
from gemma4.default_model import default_model_path

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "Elizabeth was"


def run_cli(*args: str, stdin: str | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gemma4", *args], input=stdin, capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ), timeout=timeout)


def one_error_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def unique_params(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@pytest.fixture(scope="module")
def default_model():
    model = gemma4.AutoModelForCausalLM.from_pretrained(default_model_path(), progress=False).eval()
    return model, gemma4.AutoTokenizer.from_pretrained(default_model_path())


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """tiny-e2b with random weights saved without a tokenizer: vocab 4096 (the default tokenizer fits) and 512."""
    base = tmp_path_factory.mktemp("tiny")
    dirs = {}
    for vocab in (4096, 512):
        torch.manual_seed(vocab)
        cfg = gemma4.get_preset("tiny-e2b", vocab_size=vocab, vocab_size_per_layer_input=vocab)
        model = gemma4.AutoModelForCausalLM.from_config(cfg)
        dirs[vocab] = base / f"tiny-e2b-{vocab}"
        model.save_pretrained(dirs[vocab])
    return dirs


# ------------------------------------------------------------------------------------------ generate

def test_generate_greedy_is_deterministic_and_matches_generate(default_model):
    args = ("generate", "--model", "default", "--prompt", PROMPT, "--max-new-tokens", "24", "--temperature", "0",
            "--threads", "1")
    first, second = run_cli(*args), run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    assert first.stdout.startswith(PROMPT) and len(first.stdout.strip()) > len(PROMPT) + 10
    assert "tokens/s" in first.stderr
    model, tok = default_model
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.generate(ids, do_sample=False, max_new_tokens=24)
    expected = PROMPT + tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert first.stdout.rstrip("\n") == expected


def test_generate_sampling_with_seed_is_deterministic():
    args = ("generate", "--model", "default", "--prompt", PROMPT, "--max-new-tokens", "16", "--seed", "7",
            "--top-k", "40", "--top-p", "0.9", "--temperature", "1.0", "--threads", "1", "--quiet")
    a, b = run_cli(*args), run_cli(*args)
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout and len(a.stdout.strip()) > len(PROMPT)
    assert a.stderr == ""  # --quiet: no timing line


def test_generate_chat_and_preset_dir(tiny_dirs):
    r = run_cli("generate", "--model", "default", "--chat", "--prompt", "Who is Mr. Darcy?", "--greedy",
                "--max-new-tokens", "12", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() and "<|turn>" not in r.stdout and "Who is Mr. Darcy?" not in r.stdout
    # a tiny preset checkpoint without a tokenizer: the default model's tokenizer fits its vocabulary
    r = run_cli("generate", "--model", str(tiny_dirs[4096]), "--prompt", PROMPT, "--greedy", "--max-new-tokens", "8",
                "--threads", "1", "--dtype", "bfloat16")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(PROMPT) and len(r.stdout.rstrip("\n")) > len(PROMPT)
    # ... and one whose vocabulary is smaller than that tokenizer: one line asking for --tokenizer
    assert "--tokenizer" in one_error_line(run_cli("generate", "--model", str(tiny_dirs[512]), "--prompt", PROMPT))


# ---------------------------------------------------------------------------------------------- chat

def test_chat_two_turns_through_stdin(default_model):
    r = run_cli("chat", "--model", "default", "--greedy", "--max-new-tokens", "20", "--threads", "1",
                stdin="Good morning, Miss Bennet.\nWhat do you think of Mr. Bingley?\n")
    assert r.returncode == 0, r.stderr
    replies = r.stdout.split("model> ")[1:]
    assert len(replies) == 2 and all(rep.strip() for rep in replies), r.stdout
    assert len(r.stderr.strip().splitlines()) == 2 and r.stderr.count("tokens in") == 2  # one timing line a turn

    # The CLI continues the exact ids of turn 1 (and its KV cache) in turn 2: the same as recomputing
    # the whole conversation without a cache.
    model, tok = default_model
    turn1 = tok.apply_chat_template([{"role": "user", "content": "Good morning, Miss Bennet."}],
                                    add_generation_prompt=True, return_tensors="pt")
    with torch.inference_mode():
        out1 = model.generate(turn1, do_sample=False, max_new_tokens=20)
    reply1 = out1[0, turn1.shape[1]:].tolist()
    while reply1 and reply1[-1] in (1, 106):
        reply1.pop()
    user2 = tok.apply_chat_template([{"role": "user", "content": "What do you think of Mr. Bingley?"}],
                                    add_generation_prompt=True, tokenize=False).removeprefix("<bos>")
    turn2 = torch.tensor([turn1[0].tolist() + reply1 + [106, 107] + tok(user2, add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        out2 = model.generate(turn2, do_sample=False, max_new_tokens=20, use_cache=False)
    expected = [tok.decode(reply1, skip_special_tokens=True).strip(),
                tok.decode(out2[0, turn2.shape[1]:], skip_special_tokens=True).strip()]
    assert [rep.strip() for rep in replies] == expected


def test_chat_exit_command_and_empty_input():
    r = run_cli("chat", "--model", "default", "--max-new-tokens", "4", "--threads", "1", "--quiet",
                stdin="/exit\nnever read\n")
    assert r.returncode == 0 and r.stdout == "" and r.stderr == ""


# ---------------------------------------------------------------------------------------------- info

def _expected_kv(cfg, tokens: int, nbytes: int) -> int:
    total = 0
    for s in cfg.layers:
        if s.cache_index is not None:
            total += 2 * s.num_kv_heads * s.head_dim * (min(tokens, s.window) if s.is_sliding else tokens) * nbytes
    return total


def test_info_numbers(tiny_dirs, default_model):
    model, _ = default_model
    r = run_cli("info", "default", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    n = unique_params(model)
    assert info["parameters"] == n
    buffers = sum(b.numel() for name, b in model.state_dict().items() if not name.startswith("lm_head")) - n
    assert info["buffers"] == buffers  # persistent buffers (layer scalars)
    assert info["weights_bytes"] == {"float32": 4 * (n + buffers), "bfloat16": 2 * (n + buffers),
                                     "float16": 2 * (n + buffers)}
    cfg = model.config
    assert info["kv_cache_bytes_per_1k_tokens"]["float32"] == _expected_kv(cfg, 1024, 4)
    assert info["kv_cache_bytes_per_1k_tokens"]["bfloat16"] == _expected_kv(cfg, 1024, 2)
    assert info["checkpoint_bytes"] == os.path.getsize(os.path.join(default_model_path(), "model.safetensors"))
    assert info["config"]["sliding_layers"] + info["config"]["full_layers"] == cfg.num_hidden_layers

    # a tiny preset saved to tmp (random weights) and the preset name itself give the same numbers
    saved = gemma4.AutoModelForCausalLM.from_pretrained(tiny_dirs[512], progress=False)
    by_dir = cli.model_info(str(tiny_dirs[512]))
    by_name = cli.model_info("tiny-e2b")
    assert by_dir["parameters"] == by_name["parameters"] == unique_params(saved)
    assert by_dir["kv_cache_bytes_per_1k_tokens"] == by_name["kv_cache_bytes_per_1k_tokens"]
    r = run_cli("info", "tiny-e2b")
    assert r.returncode == 0 and f"{unique_params(saved):,}" in r.stdout and "KV cache" in r.stdout


# ---------------------------------------------------------------------------------------------- errors

def test_bad_path_is_one_line_exit_2(tmp_path, capsys):
    line = one_error_line(run_cli("generate", "--model", str(tmp_path / "missing"), "--prompt", "x"))
    assert "missing" in line
    assert cli.main(["info", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "missing" in err


@pytest.mark.parametrize("argv", [
    ["generate", "--prompt", "x", "--max-new-tokens", "0"],
    ["generate", "--prompt", "x", "--temperature", "-1"],
    ["generate", "--prompt", "x", "--top-p", "1.5"],
    ["generate", "--prompt", "x", "--dtype", "float8"],
    ["generate"],  # --prompt missing
    ["generate", "--prompt", "x", "--tokenizer", "/no/such/tokenizer"],
    ["generate", "--prompt", "x", "--device", "banana"],
    ["generate", "--prompt", "x", "--device", "cuda:99"],
    ["info"],
    ["frobnicate"],
])
def test_bad_arguments_are_one_line_exit_2(argv, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err


def test_folder_without_config_and_file(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "weights.bin").write_bytes(b"x")
    for target in (tmp_path / "empty", tmp_path / "weights.bin"):
        assert cli.main(["info", str(target)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and str(target) in err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"model_type": "llama"}')
    assert cli.main(["info", str(tmp_path / "bad")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
