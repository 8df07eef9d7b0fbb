"""One LoRA training step of the E2B shape on one GPU: ours against transformers 5.17 + PEFT, plus QLoRA.

    python benchmarks/gpu/bench_train.py                         # E2B, bf16, B4 T2048
    python benchmarks/gpu/bench_train.py --preset small-e2b --batch 2 --seq-len 512   # quick look

Model: the gemma-4-E2B preset (35 layers, 20 KV-shared, vocabulary 262144, per-layer embeddings), random
bfloat16 weights drawn on the GPU (modeling/init.random_init_); transformers' model is built from our
config.to_dict() and loads the same state dict, so both first losses agree.
LoRA on both: r=16, alpha=32, no dropout, all of q/k/v/o_proj and gate/up/down_proj, float32 adapters
(PEFT's autocast_adapter_dtype; ours the same). The step: loss = model(ids, labels=ids).loss; backward;
AdamW(lr 1e-4); zero_grad(set_to_none=True).
Configurations, each in its own subprocess (so no allocator cache or other model leaks into the numbers):
  ours               no gradient checkpointing (the issue's condition)
  ours-qlora-int4    the same over the base quantized to int4 g32 (gemma4.quantize), embeddings kept bf16
  transformers       transformers + PEFT, no gradient checkpointing; when that runs out of memory it is
                     run again with gradient checkpointing (model.gradient_checkpointing_enable) and the
                     row says so: "whatever it needs to fit"
Time: 2 warm-up steps, then --steps steps between torch.cuda.synchronize() calls; the median is reported.
Memory: torch.cuda.max_memory_allocated() over the timed steps (peak, weights included) and the same minus
what was allocated before the steps (what training adds).
Results: benchmarks/results/train_gpu-<gpu>.json (+ .png).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout root: benchmarks.*

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA, LR = 16, 32, 1e-4
IMPLS = ("ours", "ours-qlora-int4", "transformers")


def _ours_random(preset: str, seed: int):
    """Our Gemma4ForCausalLM in bf16 on the GPU with random weights, drawn there (fast)."""
    import torch  # noqa: PLC0415

    from gemma4 import Gemma4ForCausalLM  # noqa: PLC0415
    from gemma4.modeling.init import random_init_  # noqa: PLC0415
    from gemma4.presets import get_preset  # noqa: PLC0415

    config = get_preset(preset)
    with torch.device("meta"):
        model = Gemma4ForCausalLM(config)
    model = model.to(torch.bfloat16).to_empty(device="cuda")
    model.tie_weights()
    model.init_non_persistent_buffers()
    return random_init_(model, seed)


def build(impl: str, preset: str, seed: int, checkpointing: bool):
    """(model, call(ids) -> loss)."""
    import torch  # noqa: PLC0415

    import gemma4  # noqa: PLC0415

    ours = _ours_random(preset, seed)
    if impl.startswith("ours"):
        if impl == "ours-qlora-int4":
            gemma4.quantize(ours, gemma4.QuantizationConfig(weights="int4", group_size=32))
        ours.add_adapter(gemma4.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS))
        ours.train()
        return ours, lambda ids: ours(input_ids=ids, labels=ids).loss

    import warnings  # noqa: PLC0415

    import transformers  # noqa: PLC0415

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import peft  # noqa: PLC0415
    transformers.logging.set_verbosity_error()
    hf_config = transformers.Gemma4TextConfig.from_dict(ours.config.to_dict())
    hf_config._attn_implementation = "sdpa"
    state = {k: v for k, v in ours.state_dict().items() if k != "lm_head.weight"}
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        hf = transformers.Gemma4ForCausalLM(hf_config)
    torch.set_default_dtype(torch.float32)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"transformers did not take our weights one-to-one: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    del ours, state
    hf.config.use_cache = False
    if checkpointing:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        hf.enable_input_require_grads()
    model = peft.get_peft_model(hf, peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
                                                    target_modules=TARGETS))
    model.train()
    return model, lambda ids: model(input_ids=ids, labels=ids, use_cache=False).loss


def worker(args) -> dict:
    import torch  # noqa: PLC0415

    t0 = time.perf_counter()
    model, call = build(args.impl, args.preset, args.seed, args.checkpointing)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR)
    gen = torch.Generator().manual_seed(args.seed + 1)
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (args.batch, args.seq_len), generator=gen).cuda()
    ids[:, 0] = 2  # <bos>
    load_s = time.perf_counter() - t0

    def step() -> torch.Tensor:
        loss = call(ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    first_loss = step().item()
    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    med = statistics.median(times)
    tokens = args.batch * args.seq_len
    return {"impl": args.impl, "gradient_checkpointing": args.checkpointing, "batch": args.batch,
            "seq_len": args.seq_len, "tokens": tokens, "step_ms": med, "step_ms_all": [round(t, 1) for t in times],
            "tokens_per_s": tokens / med * 1e3, "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "step_extra_gib": (torch.cuda.max_memory_allocated() - before) / 2**30,
            "weights_gib": before / 2**30, "first_loss": first_loss,
            "trainable_params": sum(p.numel() for p in params), "load_s": load_s}


def run_worker(impl: str, args, checkpointing: bool = False) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, __file__, "--worker", "--impl", impl, "--preset", args.preset, "--batch", str(args.batch),
           "--seq-len", str(args.seq_len), "--steps", str(args.steps), "--seed", str(args.seed), "--worker-out", out]
    cmd += ["--checkpointing"] if checkpointing else []
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    try:
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
            return {"impl": impl, "gradient_checkpointing": checkpointing, "error": "\n".join(tail)}
        return json.loads(Path(out).read_text())
    finally:
        Path(out).unlink(missing_ok=True)


def plot(rows):
    def draw(plt):
        ok = [r for r in rows if "error" not in r]
        names = [r["impl"] + (" (ckpt)" if r["gradient_checkpointing"] else "") for r in ok]
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
        a.barh(names, [r["tokens_per_s"] for r in ok], color="tab:blue")
        a.set_xlabel("tokens/s (higher is better)")
        b.barh(names, [r["peak_gib"] for r in ok], color="tab:orange")
        b.set_xlabel("peak GPU memory, GiB (lower is better)")
        fig.suptitle("LoRA r=16 training step, E2B shape, bf16")
        fig.tight_layout()
        return fig

    return draw


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="gemma-4-E2B")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--impl")
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--worker-out")
    args = ap.parse_args(argv)
    if args.worker:
        Path(args.worker_out).write_text(json.dumps(worker(args)))
        return 0

    from benchmarks.gpu.common import gpu_info, write_gpu_results  # noqa: PLC0415

    rows = []
    for impl in args.impls.split(","):
        row = run_worker(impl, args)
        if impl == "transformers" and "out of memory" in row.get("error", "").lower():
            rows.append(row)
            row = run_worker(impl, args, checkpointing=True)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "step_ms_all"}), flush=True)
    base = next((r for r in reversed(rows) if r["impl"] == "transformers" and "error" not in r), None)
    for r in rows:
        if base and "error" not in r:
            r["speedup_vs_transformers"] = r["tokens_per_s"] / base["tokens_per_s"]
            r["peak_ratio_vs_transformers"] = r["peak_gib"] / base["peak_gib"]
    info = gpu_info()
    write_gpu_results("train_gpu", rows, info, plot=plot(rows),
                      extra={"preset": args.preset, "lora": {"r": RANK, "alpha": ALPHA, "targets": TARGETS},
                             "step": "loss(ids, labels=ids).backward(); AdamW.step(); zero_grad()"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
