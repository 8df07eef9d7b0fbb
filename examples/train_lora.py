"""Fine-tune a LoRA adapter on plain text files.

    python examples/train_lora.py --model path/to/gemma-4-E2B --data notes.txt more.txt \\
        --seq-len 512 --batch-size 2 --steps 200 --lr 2e-4 --rank 16 --alpha 32 --out my-adapter

    # a random preset model with a tokenizer folder (vocabulary <= the preset's), for a quick try
    python examples/train_lora.py --model tiny-e2b --tokenizer tok/ --data a.txt --steps 100 --out /tmp/a

What it does:
  1. loads the model (a checkpoint folder, or a preset name from gemma4.PRESETS with random weights)
     in --dtype, and the tokenizer (--tokenizer, default: the model folder);
  2. tokenizes every file as one document, <bos> text <eos>, concatenates them and cuts the stream
     into sequences of exactly --seq-len tokens (packing; the tail shorter than --seq-len is dropped);
  3. adds a fresh LoRA adapter (gemma4.LoraConfig: --rank, --alpha, --target-modules, --lora-dropout);
     the base weights are frozen;
  4. trains with torch.optim.AdamW over the trainable (LoRA) parameters only: each step draws
     --batch-size sequences (shuffled, epoch after epoch), loss = next-token cross-entropy over
     all positions, optional gradient accumulation, gradient clipping, warmup + cosine/linear/constant
     learning rate; a tqdm bar shows the loss;
  5. saves the adapter in PEFT's format with model.save_adapter(--out) (adapter_config.json +
     adapter_model.safetensors, loadable by model.load_adapter or PEFT), plus training_log.json
     (arguments, loss per step, tokens/s).

Precision: --dtype bfloat16 trains on bfloat16 base weights (the LoRA factors stay float32, as PEFT
keeps them); --dtype float32 --autocast bfloat16 keeps float32 weights and runs the matmuls under
torch.autocast("cpu", bfloat16). --compile wraps the model in torch.compile (the first step compiles).
--gradient-checkpointing recomputes each decoder layer in backward (less memory, ~30% more time).
See docs/training.md.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", required=True,
                    help="checkpoint folder (config.json + *.safetensors) or a preset name (random weights)")
    ap.add_argument("--tokenizer", help="tokenizer folder (tokenizer.json); default: the model folder")
    ap.add_argument("--data", nargs="+", required=True, metavar="FILE", help="plain UTF-8 text files")
    ap.add_argument("--seq-len", type=int, default=512, help="tokens per training sequence")
    ap.add_argument("--batch-size", type=int, default=1, help="sequences per optimizer micro-step")
    ap.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    ap.add_argument("--steps", type=int, default=100, help="optimizer steps")
    ap.add_argument("--lr", type=float, default=2e-4, help="peak learning rate")
    ap.add_argument("--lr-schedule", choices=["cosine", "linear", "constant"], default="cosine")
    ap.add_argument("--warmup-steps", type=int, default=0)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0: off)")
    ap.add_argument("--rank", type=int, default=16, help="LoRA rank r")
    ap.add_argument("--alpha", type=float, default=32, help="LoRA alpha (scaling = alpha / r)")
    ap.add_argument("--lora-dropout", type=float, default=0.0)
    ap.add_argument("--target-modules", default=DEFAULT_TARGETS,
                    help='comma-separated module names, or "all-linear"')
    ap.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                    help="weight dtype; auto: the checkpoint's (a preset: float32)")
    ap.add_argument("--autocast", choices=["none", "bfloat16"], default="none",
                    help='torch.autocast("cpu"/"cuda", dtype) around forward (use with float32 weights)')
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--compile-backend", default="inductor", help="torch.compile backend (with --compile)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--out", required=True, help="folder for the adapter and training_log.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-progress", action="store_true", help="no tqdm bar (log lines instead)")
    args = ap.parse_args(argv)
    for name in ("seq_len", "batch_size", "grad_accum", "steps", "rank"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.seq_len < 2:
        ap.error("--seq-len must be at least 2 (a next-token loss needs two tokens)")
    return args


# ------------------------------------------------------------------------------------------------
# Model, tokenizer, data
# ------------------------------------------------------------------------------------------------
def load_model(spec: str, dtype: str, device: str, seed: int):
    """(model, model folder or None): a checkpoint folder, or a preset with random weights."""
    import gemma4  # noqa: PLC0415

    if os.path.isdir(spec):
        torch_dtype = None if dtype == "auto" else DTYPES[dtype]
        model = gemma4.AutoModelForCausalLM.from_pretrained(spec, dtype=torch_dtype, device=device)
        return model, spec
    if spec in gemma4.PRESETS:
        from gemma4.modeling.random_model import build_random_model  # noqa: PLC0415

        torch_dtype = torch.float32 if dtype == "auto" else DTYPES[dtype]
        model = build_random_model(spec, torch_dtype, seed=seed).to(device)
        return model, None
    raise SystemExit(f"--model {spec!r}: neither a folder nor a preset ({', '.join(gemma4.PRESETS)})")


def load_tokenizer(spec: str | None, model_dir: str | None):
    import gemma4  # noqa: PLC0415

    path = spec or model_dir
    if path is None:
        raise SystemExit("a preset model has no tokenizer: pass --tokenizer FOLDER (with tokenizer.json)")
    return gemma4.AutoTokenizer.from_pretrained(path)


def pack_files(tokenizer, files: list[str], seq_len: int, vocab_size: int) -> torch.Tensor:
    """Token ids [N, seq_len] (int64): each file is <bos> text <eos>; the stream is cut into rows."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    stream: list[int] = []
    for path in files:
        text = Path(path).read_text(encoding="utf-8")
        ids = tokenizer.encode(text, add_special_tokens=False)
        stream += ([bos] if bos is not None else []) + list(ids) + ([eos] if eos is not None else [])
    if not stream:
        raise SystemExit("the data files hold no tokens")
    top = max(stream)
    if top >= vocab_size:
        raise SystemExit(f"the tokenizer produced id {top} but the model's vocabulary has {vocab_size} entries: "
                         "tokenizer and model do not belong together")
    rows = len(stream) // seq_len
    if rows == 0:
        raise SystemExit(f"the data has {len(stream)} tokens, fewer than --seq-len {seq_len}")
    return torch.tensor(stream[: rows * seq_len], dtype=torch.long).view(rows, seq_len)


class Batches:
    """Endless shuffled batches of rows: each epoch is a fresh permutation (a batch may span two)."""

    def __init__(self, data: torch.Tensor, batch_size: int, seed: int):
        self.data, self.batch_size = data, batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.order: list[int] = []

    def next(self) -> torch.Tensor:
        while len(self.order) < self.batch_size:
            self.order += torch.randperm(self.data.shape[0], generator=self.gen).tolist()
        idx, self.order = self.order[: self.batch_size], self.order[self.batch_size:]
        return self.data[idx]


def lr_lambda(schedule: str, warmup: int, steps: int):
    def f(step: int) -> float:  # step: optimizer steps taken so far
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, steps - warmup)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------
def make_train_step(forward, optimizer, params, autocast_dtype, grad_accum: int, max_grad_norm: float,
                    device_type: str):
    """One optimizer step over grad_accum micro-batches; returns the mean loss (a float)."""
    def step(batches: list[torch.Tensor]) -> float:
        total = 0.0
        for ids in batches:
            ctx = (torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype is not None
                   else contextlib.nullcontext())
            with ctx:
                loss = forward(input_ids=ids, labels=ids).loss
            (loss / grad_accum).backward()
            total += loss.item()
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return total / len(batches)

    return step


def run(argv=None):
    """Parse argv, train, save; returns (the model with its trained adapter, the training log dict)."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    import gemma4  # noqa: PLC0415
    from gemma4.lora import LoraConfig  # noqa: PLC0415

    t_load = time.perf_counter()
    model, model_dir = load_model(args.model, args.dtype, args.device, args.seed)
    tokenizer = load_tokenizer(args.tokenizer, model_dir)
    data = pack_files(tokenizer, args.data, args.seq_len, model.config.vocab_size)
    print(f"model {args.model}: {model.config.num_hidden_layers} layers, hidden {model.config.hidden_size}, "
          f"{model.dtype}; data: {data.numel()} tokens in {data.shape[0]} sequences of {args.seq_len} "
          f"(loaded in {time.perf_counter() - t_load:.1f} s)", flush=True)

    autocast_dtype = None if args.autocast == "none" else DTYPES[args.autocast]
    if autocast_dtype is not None and model.dtype != torch.float32:
        print(f"note: --autocast {args.autocast} on {model.dtype} weights; autocast is meant for float32 weights")

    targets = args.target_modules.strip()
    target_modules = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    config = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=args.lora_dropout,
                        target_modules=target_modules)
    model.add_adapter(config)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in params)
    n_all = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    print(f"LoRA r={args.rank} alpha={args.alpha} on {target_modules}: {n_train:,} trainable parameters "
          f"({100 * n_train / n_all:.3f}% of {n_all:,})", flush=True)

    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(args.lr_schedule, args.warmup_steps,
                                                                       args.steps))
    forward = torch.compile(model, backend=args.compile_backend) if args.compile else model
    step = make_train_step(forward, optimizer, params, autocast_dtype, args.grad_accum, args.max_grad_norm,
                           torch.device(args.device).type)
    batches = Batches(data, args.batch_size, args.seed)

    from tqdm.auto import tqdm  # noqa: PLC0415

    losses: list[float] = []
    ema = None
    tokens_per_step = args.batch_size * args.grad_accum * args.seq_len
    bar = tqdm(range(args.steps), desc="train", unit="step", disable=args.no_progress, dynamic_ncols=True)
    t0 = time.perf_counter()
    t_after_first = None
    for i in bar:
        micro = [batches.next().to(args.device) for _ in range(args.grad_accum)]
        loss = step(micro)
        scheduler.step()
        if not math.isfinite(loss):
            raise SystemExit(f"step {i + 1}: loss is {loss}; lower --lr or use float32/--autocast")
        losses.append(loss)
        ema = loss if ema is None else 0.9 * ema + 0.1 * loss
        if i == 0:
            t_after_first = time.perf_counter()
        bar.set_postfix(loss=f"{ema:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if args.no_progress and (i + 1) % max(1, args.steps // 10) == 0:
            print(f"step {i + 1}/{args.steps}: loss {loss:.4f} (avg {ema:.4f})", flush=True)
    bar.close()
    elapsed = time.perf_counter() - t0
    # tokens/s leaves out the first step (compilation, allocator warm-up) when there are others
    steady = (elapsed - (t_after_first - t0)) / (args.steps - 1) if args.steps > 1 else elapsed
    tokens_per_s = tokens_per_step / steady

    out = Path(args.out)
    model.save_adapter(out)
    log = {
        "args": vars(args), "losses": losses, "first_loss": losses[0], "last_loss": losses[-1],
        "trainable_parameters": n_train, "total_parameters": n_all, "sequences": int(data.shape[0]),
        "tokens_per_step": tokens_per_step, "seconds": elapsed, "tokens_per_s": tokens_per_s,
        "gemma4_version": gemma4.__version__, "torch": torch.__version__,
    }
    (out / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")
    k = max(1, min(10, args.steps // 10))
    print(f"loss {sum(losses[:k]) / k:.4f} (first {k} steps) -> {sum(losses[-k:]) / k:.4f} (last {k}); "
          f"{tokens_per_s:,.0f} tokens/s; adapter saved to {out}", flush=True)
    return model, log


def main(argv=None) -> dict:
    return run(argv)[1]


if __name__ == "__main__":
    main()
