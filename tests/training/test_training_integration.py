"""examples/train_lora.py end to end: text files -> packed sequences -> LoRA training -> a saved adapter that
loads back (model.load_adapter) and reproduces the trained model; bf16, autocast, checkpointing, compile."""
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

import gemma4
from tests.training.common import ZEN, make_tokenizer, small_config

REPO = Path(__file__).resolve().parents[2]


def _load_script():
    spec = importlib.util.spec_from_file_location("train_lora_example", REPO / "examples" / "train_lora.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_lora = _load_script()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tokenizer folder (BPE trained on the text) and two text files."""
    root = tmp_path_factory.mktemp("corpus")
    tok = make_tokenizer(str(root / "tokenizer"))
    lines = ZEN.strip().splitlines()
    a, b = root / "a.txt", root / "b.txt"
    a.write_text("\n".join(lines[: len(lines) // 2]) + "\n")
    b.write_text("\n".join(lines[len(lines) // 2:]) + "\n")
    return {"tokenizer": tok, "files": [str(a), str(b)]}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, corpus):
    """A 4-layer tiny-e2b checkpoint folder (float32) with the tokenizer files beside it."""
    path = tmp_path_factory.mktemp("ckpt")
    model = gemma4.Gemma4ForCausalLM(small_config("tiny-e2b"))
    model.init_weights(std=model.config.hidden_size ** -0.5)
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (path / name).write_bytes((Path(corpus["tokenizer"]) / name).read_bytes())
    return str(path)


def _args(model, corpus, out, *extra, tokenizer=True):
    argv = ["--model", model, "--data", *corpus["files"], "--out", str(out), "--no-progress", "--seed", "3"]
    if tokenizer:
        argv += ["--tokenizer", corpus["tokenizer"]]
    return argv + [str(x) for x in extra]


def _avg(xs):
    return sum(xs) / len(xs)


def test_pack_files_layout(corpus):
    tok = gemma4.AutoTokenizer.from_pretrained(corpus["tokenizer"])
    data = train_lora.pack_files(tok, corpus["files"], 16, 512)
    stream = []
    for f in corpus["files"]:
        stream += [tok.bos_token_id, *tok.encode(Path(f).read_text(), add_special_tokens=False), tok.eos_token_id]
    assert data.dtype == torch.long and data.shape == (len(stream) // 16, 16)
    assert data.flatten().tolist() == stream[: data.numel()]
    batches = train_lora.Batches(data, 5, seed=0)
    seen = torch.cat([batches.next() for _ in range(data.shape[0])])  # 5 epochs' worth of rows
    counts = torch.unique(seen, dim=0, return_counts=True)[1]
    assert len(counts) == data.shape[0] and (counts == 5).all()  # every row once per epoch


def test_preset_lora_run_saves_an_adapter_that_reloads(corpus, tmp_path):
    out = tmp_path / "adapter"
    model, log = train_lora.run(_args("tiny-e2b", corpus, out, "--seq-len", 32, "--batch-size", 4, "--steps", 40,
                                      "--lr", 1e-2, "--rank", 8, "--alpha", 16, "--lr-schedule", "constant",
                                      "--target-modules", "q_proj,v_proj,o_proj,down_proj"))
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    saved = json.loads((out / "training_log.json").read_text())
    assert saved["losses"] == log["losses"] and len(log["losses"]) == 40
    assert all(math.isfinite(x) for x in log["losses"])
    assert _avg(log["losses"][-5:]) < _avg(log["losses"][:5]) - 0.1, log["losses"]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16
    assert sorted(config["target_modules"]) == ["down_proj", "o_proj", "q_proj", "v_proj"]

    # the same random base (same preset and seed) + the saved adapter = the trained model
    from gemma4.modeling.random_model import build_random_model

    fresh = build_random_model("tiny-e2b", torch.float32, seed=3)
    ids = torch.randint(3, 300, (2, 24))
    with torch.no_grad():
        base_logits = fresh(input_ids=ids).logits
        fresh.load_adapter(str(out))
        got = fresh(input_ids=ids).logits
        want = model.eval()(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - base_logits).abs().max() > 1e-3  # the adapter changes the model


@pytest.mark.parametrize("variant", ["bf16-checkpointing", "autocast-accum", "compile"])
def test_checkpoint_folder_variants(corpus, checkpoint, tmp_path, variant):
    extra = {
        "bf16-checkpointing": ["--dtype", "bfloat16", "--gradient-checkpointing"],
        "autocast-accum": ["--dtype", "float32", "--autocast", "bfloat16", "--grad-accum", 2, "--warmup-steps", 2],
        # the plumbing; the inductor numerics are checked in test_lora_training.py
        "compile": ["--compile", "--compile-backend", "aot_eager", "--target-modules", "all-linear"],
    }[variant]
    out = tmp_path / "adapter"
    model, log = train_lora.run(_args(checkpoint, corpus, out, "--seq-len", 24, "--batch-size", 2, "--steps", 12,
                                      "--lr", 1e-2, "--lr-schedule", "linear", *extra, tokenizer=False))
    assert all(math.isfinite(x) for x in log["losses"]), log["losses"]
    assert _avg(log["losses"][-3:]) < _avg(log["losses"][:3]), log["losses"]
    if variant.startswith("bf16"):
        assert model.dtype == torch.bfloat16 and model.is_gradient_checkpointing
    reloaded = gemma4.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=model.dtype, progress=False)
    reloaded.load_adapter(str(out))
    ids = torch.randint(3, 300, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits,
                                   rtol=0, atol=0)


def test_errors(corpus, checkpoint, tmp_path):
    with pytest.raises(SystemExit, match="--tokenizer"):
        train_lora.run(_args("tiny-e2b", corpus, tmp_path / "a", tokenizer=False))
    with pytest.raises(SystemExit, match="fewer than --seq-len"):
        train_lora.run(_args(checkpoint, corpus, tmp_path / "b", "--seq-len", 100000, tokenizer=False))
    with pytest.raises(SystemExit, match="neither a folder nor a preset"):
        train_lora.run(_args("no-such-model", corpus, tmp_path / "c"))
    big = make_tokenizer(str(tmp_path / "bigtok"), text=ZEN * 3 + "".join(chr(c) for c in range(0x4E00, 0x4F00)),
                         vocab_size=800)
    with pytest.raises(SystemExit, match="do not belong together"):
        train_lora.run(["--model", checkpoint, "--tokenizer", big, "--data", *corpus["files"], "--out",
                        str(tmp_path / "d"), "--seq-len", "8", "--no-progress"])
