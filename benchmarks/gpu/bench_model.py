"""Batch-1 decode and prefill on the GPU: ours (model.generate) against transformers 5.17, same weights.

    python benchmarks/gpu/bench_model.py                       # E2B, 26B-A4B, 31B shapes, bf16
    python benchmarks/gpu/bench_model.py --models gemma-4-E2B --new-tokens 64
    python benchmarks/gpu/bench_model.py --models gemma-4-E2B --quantize int4,int8   # also ours quantized

Random weights (the released shapes, full vocabulary), bfloat16, one prompt of --prompt-len tokens.
Both models hold the same tensors: ours is built on the GPU, transformers receives its state dict.
decode tokens/s = N / (time(generate N+1) - time(generate 1)): the steady step with the prefill removed;
prefill tokens/s = prompt length / time of one forward (logits of the last position only).
The bandwidth limit of a decode step is the bytes it must read (every weight touched per token:
embeddings one row, MoE only the routed experts) over the measured copy bandwidth (--bandwidth).
--quantize times ours again with its Linears (and MoE experts) quantized by gemma4.quantize: int4 in groups
of 32, int8 per channel; embeddings and the tied head stay bf16 (the defaults).
Results: benchmarks/results/model_gpu-<gpu>.json and .png (model_gpu_quantized-<gpu> with --quantize).
"""
from __future__ import annotations

import argparse
import copy
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.gpu.common import gpu_info, write_gpu_results  # noqa: E402


def _sync_time(fn, runs: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def decode_bytes(config) -> float:
    """Bytes a batch-1 decode step must read: every weight once, except the token embeddings (one row),
    the per-layer-embedding table (one row) and the MoE experts (top_k of them per layer)."""
    import gemma4

    with torch.device("meta"):
        model = gemma4.Gemma4ForCausalLM(config)
    total = 0
    for name, p in {id(p): (n, p) for n, p in model.named_parameters()}.values():
        n = p.numel()
        if name.endswith("embed_tokens.weight") and not config.tie_word_embeddings:
            n = p.shape[-1]
        elif "embed_tokens_per_layer" in name:
            n = p.shape[-1]
        elif ".experts." in name and config.num_experts:
            n = n * config.top_k_experts // config.num_experts
        total += n * 2  # bf16
    return float(total)


def build_pair(preset: str, dtype: torch.dtype):
    """Ours on the GPU with random weights, and transformers' model holding the same tensors."""
    import transformers

    import gemma4

    transformers.logging.set_verbosity_error()
    config = gemma4.get_preset(preset)
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("cuda"):
            ours = gemma4.Gemma4ForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(prev)
    with torch.no_grad():  # default init is N(0, 1/fan_in)-like; keep norms near one
        for n, p in ours.named_parameters():
            if n.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    with tempfile.TemporaryDirectory() as d:
        ours.config.save_pretrained(d)
        hf_config = transformers.AutoConfig.from_pretrained(d)
    torch.set_default_dtype(dtype)
    try:  # transformers builds its own derived buffers (RoPE, embedding scale) on the GPU
        with torch.device("cuda"):
            hf = transformers.Gemma4ForCausalLM(hf_config)
    finally:
        torch.set_default_dtype(prev)
    # then shares our tensors (assign): its own random weights are freed, the GPU holds one copy
    missing, unexpected = hf.load_state_dict(ours.state_dict(), strict=False, assign=True)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"state dicts differ: missing {missing[:5]}, unexpected {unexpected[:5]}")
    hf.tie_weights()
    return config, ours, hf.eval()


def time_model(model, ids, prompt_len: int, new_tokens: int, runs: int, kw: dict) -> tuple[float, float]:
    """(prefill tokens/s, decode tokens/s) of one model."""
    def gen(n):
        return model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)

    pre = _sync_time(lambda: model(input_ids=ids, logits_to_keep=1), runs)
    one = _sync_time(lambda: gen(1), runs)
    full = _sync_time(lambda: gen(new_tokens + 1), max(1, runs // 2))
    return prompt_len / pre, new_tokens / max(full - one, 1e-9)


def bench(preset: str, prompt_len: int, new_tokens: int, runs: int, bandwidth: float,
          quantize: list[str]) -> dict:
    config, ours, hf = build_pair(preset, torch.bfloat16)
    ids = torch.randint(3, config.vocab_size, (1, prompt_len), device="cuda")
    ids[0, 0] = 2
    kw = dict(do_sample=False, eos_token_id=None, pad_token_id=0)
    row = {"preset": preset, "dtype": "bfloat16", "prompt_len": prompt_len, "new_tokens": new_tokens}
    with torch.inference_mode():
        a = ours.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kw)
        b = hf.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kw)
        agree = (a[0, prompt_len:] == b[0, prompt_len:]).int().cumprod(0).sum().item()
        row["tokens_agree_prefix"] = int(agree)  # bf16: both approximate fp32, they may part late
        for name, model in (("ours", ours), ("transformers", hf)):
            row[f"{name}_prefill_tok_s"], row[f"{name}_decode_tok_s"] = time_model(
                model, ids, prompt_len, new_tokens, runs, kw)
    del hf
    import gemma4

    for q in quantize:  # a quantized copy of ours (the bf16 model stays for the next one)
        qmodel = gemma4.quantize(copy.deepcopy(ours), gemma4.QuantizationConfig(
            weights=q, group_size=32 if q == "int4" else None))
        with torch.inference_mode():
            row[f"ours_{q}_prefill_tok_s"], row[f"ours_{q}_decode_tok_s"] = time_model(
                qmodel, ids, prompt_len, new_tokens, runs, kw)
        row[f"ours_{q}_decode_vs_bf16"] = row[f"ours_{q}_decode_tok_s"] / row["ours_decode_tok_s"]
        del qmodel
    row["decode_speedup"] = row["ours_decode_tok_s"] / row["transformers_decode_tok_s"]
    row["prefill_speedup"] = row["ours_prefill_tok_s"] / row["transformers_prefill_tok_s"]
    row["decode_bytes"] = decode_bytes(config)
    row["decode_limit_tok_s"] = bandwidth / row["decode_bytes"]
    row["decode_fraction_of_limit"] = row["ours_decode_tok_s"] / row["decode_limit_tok_s"]
    del ours
    gc.collect()
    torch.cuda.empty_cache()
    return row


def plot(rows):
    def draw(plt):
        fig, ax = plt.subplots(figsize=(8, 4))
        names = [r["preset"] for r in rows]
        x = range(len(rows))
        w = 0.27
        ax.bar([i - w for i in x], [r["transformers_decode_tok_s"] for r in rows], w, label="transformers")
        ax.bar(list(x), [r["ours_decode_tok_s"] for r in rows], w, label="gemma4")
        ax.bar([i + w for i in x], [r["decode_limit_tok_s"] for r in rows], w, label="bandwidth limit", alpha=0.4)
        ax.set_xticks(list(x), names)
        ax.set_yscale("log")
        ax.set_ylabel("batch-1 decode tokens/s (bf16)")
        ax.legend()
        return fig

    return draw


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="gemma-4-E2B,gemma-4-26B-A4B,gemma-4-31B")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--bandwidth", type=float, default=4.2e12, help="measured copy bandwidth, bytes/s")
    ap.add_argument("--quantize", default="", help="also time ours quantized: int4 and/or int8, comma-separated")
    args = ap.parse_args(argv)
    quantize = [q for q in args.quantize.split(",") if q]
    rows = []
    for preset in args.models.split(","):
        try:
            rows.append(bench(preset, args.prompt_len, args.new_tokens, args.runs, args.bandwidth, quantize))
        except torch.OutOfMemoryError as e:
            print(f"{preset}: out of GPU memory ({e}); skipped")
            gc.collect()
            torch.cuda.empty_cache()
            continue
        r = rows[-1]
        print(f"{preset}: decode ours {r['ours_decode_tok_s']:.1f} tok/s, transformers "
              f"{r['transformers_decode_tok_s']:.1f} ({r['decode_speedup']:.1f}x), limit "
              f"{r['decode_limit_tok_s']:.0f}; prefill {r['ours_prefill_tok_s']:.0f} vs "
              f"{r['transformers_prefill_tok_s']:.0f} tok/s ({r['prefill_speedup']:.2f}x); "
              f"greedy agree {r['tokens_agree_prefix']}/{args.new_tokens}", flush=True)
        for q in quantize:
            print(f"{preset} {q}: decode {r[f'ours_{q}_decode_tok_s']:.1f} tok/s "
                  f"({r[f'ours_{q}_decode_vs_bf16']:.2f}x bf16), prefill {r[f'ours_{q}_prefill_tok_s']:.0f} tok/s",
                  flush=True)
    # a --quantize run has its own file, so a run of one model does not replace the bf16 table of three
    write_gpu_results("model_gpu_quantized" if quantize else "model_gpu", rows, gpu_info(), plot(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
