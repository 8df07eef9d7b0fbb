"""Long context: one prompt of up to 128K tokens, then decoding, on the GPU or this CPU.

    python benchmarks/bench_long_context.py --device cuda --models gemma-4-E2B,gemma-4-31B --lengths 131072
    python benchmarks/bench_long_context.py --device cpu --models tiny-e2b --lengths 8192,32768

Random weights with a released (or tiny) preset's shapes, bf16 on the GPU and float32 on the CPU. For
each prompt length L: `generate(L tokens, max_new_tokens=N)` with the prompt prefilled in chunks of
--chunk tokens, timed as prefill (generate 1 token) and decode (N more tokens: the difference of two
runs, over N). Peak memory is the allocator's peak on the GPU and the process's peak RSS growth on the
CPU; the KV cache's own bytes are counted from its buffers: full-attention layers hold L + N positions,
sliding layers only their window, KV-shared layers nothing.

The cost of the prompt: every full-attention layer's attention grows with L^2, a sliding layer's with
L x window (linear in L), and the rest (projections, MLP) with L. The JSON lists, per length, the FLOPs
of the prefill by part and the time they need at --peak-flops, beside the measured time.
Results: benchmarks/results/long_context_<device>-<machine>.json (+ .png).
"""
from __future__ import annotations

import argparse
import gc
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine_info, write_results  # noqa: E402


def prefill_flops(config, L: int) -> dict[str, float]:
    """Multiply-adds x 2 of one L-token prefill: linear layers (every weight once per token, the MoE's
    routed share only), and attention (QK^T and PV over the keys each query sees)."""
    import gemma4

    with torch.device("meta"):
        model = gemma4.Gemma4ForCausalLM(config)
    dense = 0
    for name, p in model.named_parameters():
        if p.dim() < 2 or "embed_tokens" in name:
            continue
        n = p.numel()
        if ".experts." in name and config.num_experts:
            n = n * config.top_k_experts // config.num_experts
        dense += n
    full = sliding = 0.0
    for i, kind in enumerate(config.layer_types):
        heads = config.num_attention_heads
        hd = config.global_head_dim if kind == "full_attention" and config.global_head_dim else config.head_dim
        if kind == "full_attention":
            full += 2 * 2 * heads * hd * L * (L + 1) / 2  # causal: query t sees t + 1 keys
        else:
            w = min(config.sliding_window, L)
            sliding += 2 * 2 * heads * hd * L * w
    return {"linear": 2.0 * dense * L, "attention_full": full, "attention_sliding": sliding}


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(preset: str, device: torch.device, dtype: torch.dtype):
    import gemma4

    config = gemma4.get_preset(preset)
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            model = gemma4.Gemma4ForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(prev)
    with torch.no_grad():  # keep the norms near one, as in a trained model
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return config, model


def cache_bytes(cache) -> int:
    return sum(t.numel() * t.element_size() for t in (*cache.key, *cache.value) if t is not None)


def bench_length(model, config, L: int, new_tokens: int, chunk: int, device: torch.device, peak: float) -> dict:
    ids = torch.randint(3, config.vocab_size, (1, L), device=device)
    ids[0, 0] = 2
    kw = dict(do_sample=False, eos_token_id=None, pad_token_id=0, prefill_chunk_size=chunk)

    def gen(n):
        _sync(device)
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, return_dict_in_generate=True, **kw)
        _sync(device)
        return time.perf_counter() - t0, out.sequences, out.past_key_values

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss0 = _rss_bytes()
    with torch.inference_mode():
        t_prefill, _, _ = gen(1)
        t_full, out, cache = gen(new_tokens + 1)
    row = {"prompt_len": L, "new_tokens": new_tokens, "chunk": chunk,
           "prefill_s": t_prefill, "prefill_tok_s": L / t_prefill,
           "decode_tok_s": new_tokens / max(t_full - t_prefill, 1e-9),
           "kv_cache_bytes": cache_bytes(cache), "generated": int(out.shape[1] - L)}
    if device.type == "cuda":
        row["peak_extra_bytes"] = torch.cuda.max_memory_allocated() - base
    else:
        row["peak_rss_growth_bytes"] = max(0, _rss_bytes() - rss0)
    flops = prefill_flops(config, L)
    row["prefill_flops"] = flops
    if peak:
        row["prefill_limit_s"] = sum(flops.values()) / peak
    return row


def plot(rows):
    def draw(plt):
        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        for preset in dict.fromkeys(r["preset"] for r in rows):
            rs = [r for r in rows if r["preset"] == preset]
            ax[0].plot([r["prompt_len"] for r in rs], [r["prefill_s"] for r in rs], "o-", label=preset)
            ax[1].plot([r["prompt_len"] for r in rs], [r["decode_tok_s"] for r in rs], "o-", label=preset)
        ax[0].set_xlabel("prompt tokens")
        ax[0].set_ylabel("prefill seconds")
        ax[1].set_xlabel("prompt tokens")
        ax[1].set_ylabel("decode tokens/s after the prompt")
        for a in ax:
            a.set_xscale("log", base=2)
            a.legend()
        fig.tight_layout()
        return fig

    return draw


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default="tiny-e2b")
    ap.add_argument("--lengths", default="8192,32768")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=8192)
    ap.add_argument("--peak-flops", type=float, default=0.0, help="the machine's peak, FLOP/s (e.g. 7.9e14)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    for preset in args.models.split(","):
        config, model = build(preset, device, dtype)
        for L in (int(x) for x in args.lengths.split(",")):
            row = {"preset": preset, "dtype": str(dtype).removeprefix("torch."),
                   **bench_length(model, config, L, args.new_tokens, args.chunk, device, args.peak_flops)}
            rows.append(row)
            mem = row.get("peak_extra_bytes", row.get("peak_rss_growth_bytes", 0))
            print(f"{preset} L={L}: prefill {row['prefill_s']:.2f} s ({row['prefill_tok_s']:.0f} tok/s"
                  + (f", FLOP limit {row['prefill_limit_s']:.2f} s" if args.peak_flops else "")
                  + f"), decode {row['decode_tok_s']:.1f} tok/s, KV cache {row['kv_cache_bytes'] / 2**30:.2f} GiB,"
                  f" peak beyond the weights {mem / 2**30:.2f} GiB", flush=True)
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    info = machine_info() if device.type == "cpu" else __import__("benchmarks.gpu.common", fromlist=["x"]).gpu_info()
    write_results(f"long_context_{device.type}", rows, info, plot=plot(rows))
    if device.type == "cuda":
        from benchmarks.gpu.common import write_gpu_results  # also copies to $OUT
        write_gpu_results(f"long_context_{device.type}", rows, info, plot(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
