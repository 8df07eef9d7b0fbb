"""One forward pass of an E2B-shaped model: ours against transformers 5.17.0's Gemma4ForCausalLM.

    python benchmarks/bench_model_cpu.py            # T = 128, 512, 2048; float32 and bfloat16; 2 threads
    python benchmarks/bench_model_cpu.py --quick    # T = 128, 512 and fewer runs (not saved unless --save)

The model is the "small-e2b" preset: E2B's widths (hidden 1536, 8 query heads, 1 KV head, head
dims 256/512, MLP 6144 / 12288 double-wide, PLE 256, vocab 262144) with 5 layers (sliding,
sliding, full, then two KV-shared layers), random weights. Ours is built first; transformers
loads its config.json and its float32 state dict through from_pretrained, so both run the same
numbers. bfloat16: ours is converted with .to(), transformers loads the float32 weights with
dtype=bfloat16 (its rotary frequencies stay float32, as in normal use).

Each call is a prefill as generate() does it: batch 1, no cache, logits of the last position only
(logits_to_keep=1; the full [T, 262144] logits would make the benchmark a GEMM benchmark). Calls
alternate between the two models; the median is reported. The last-position logits are compared:
max |ours - transformers| in each dtype and, in bfloat16, each side's error against float32.
Results: benchmarks/results/model_cpu-<machine>.json and .png.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout root: benchmarks.*

import torch  # noqa: E402

from benchmarks.common import describe, fmt_ms, machine_info, print_table, write_results  # noqa: E402

PRESET = "small-e2b"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def load_transformers(ours, config_dir: str, dtype: torch.dtype):
    """transformers' Gemma4ForCausalLM with our weights, loaded the way transformers loads a checkpoint.

    The config goes through config.json (ours writes the gemma4_text form transformers reads); the
    weights are our state dict (our parameter names are transformers' names), handed to
    from_pretrained(state_dict=...) so that 4 GB need not go through the disk. The tied
    lm_head.weight is left out: transformers ties it to embed_tokens.weight itself.
    """
    import transformers  # noqa: PLC0415

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    hf_config = transformers.AutoConfig.from_pretrained(config_dir)
    state = {k: v for k, v in ours.state_dict().items() if k != "lm_head.weight"}
    hf, info = transformers.Gemma4ForCausalLM.from_pretrained(None, config=hf_config, state_dict=state, dtype=dtype,
                                                              output_loading_info=True)
    problems = {k: v for k, v in info.items() if v and k != "error_msgs" or (k == "error_msgs" and v)}
    if problems:  # a weight transformers initialised itself would make the comparison meaningless
        raise RuntimeError(f"transformers did not load our weights one-to-one: {problems}")
    return hf.eval()


def forward_fns(ours, hf, ids):
    def run_ours():
        return ours(input_ids=ids, logits_to_keep=1).logits[0, -1]  # [V]

    def run_hf():
        return hf(input_ids=ids, use_cache=False, logits_to_keep=1).logits[0, -1]  # [V]

    return run_ours, run_hf


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - t0) * 1e3


def bench_pair(run_ours, run_hf, target_s: float, min_runs: int, max_runs: int):
    """Warm up each once, then alternate timed calls; (ours logits, hf logits, ours ms list, hf ms list)."""
    ours_logits, t_o = _timed(run_ours)
    hf_logits, t_h = _timed(run_hf)
    runs = int(target_s * 1e3 / (t_o + t_h))
    runs = max(min_runs, min(max_runs, runs))
    times_o, times_h = [], []
    for _ in range(runs):
        times_o.append(_timed(run_ours)[1])
        times_h.append(_timed(run_hf)[1])
    return ours_logits, hf_logits, times_o, times_h


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def plot_times(rows: list[dict]):
    def draw(plt):
        dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
        fig, axes = plt.subplots(1, len(dtypes), figsize=(5.2 * len(dtypes), 4.2), squeeze=False)
        for ax, dt in zip(axes[0], dtypes):
            sub = [r for r in rows if r["dtype"] == dt]
            x = list(range(len(sub)))
            w = 0.38
            ax.bar([i - w / 2 for i in x], [r["ours_ms"] for r in sub], w, label="gemma4 (ours)", color="tab:green")
            ax.bar([i + w / 2 for i in x], [r["transformers_ms"] for r in sub], w, label="transformers 5.17 (sdpa)",
                   color="tab:gray")
            for i, r in zip(x, sub):
                top = max(r["ours_ms"], r["transformers_ms"])
                ax.text(i, top * 1.05, f"{r['speedup']:.2f}x", ha="center", fontsize=9)
            ax.set_xticks(x, [f"T={r['seq_len']}" for r in sub])
            ax.set_yscale("log")
            ax.set_ylim(top=max(max(r["ours_ms"], r["transformers_ms"]) for r in sub) * 1.4)  # room for labels
            ax.set_ylabel("forward time, ms (log)")
            ax.set_title(f"{PRESET}, batch 1, {dt}")
            ax.legend(fontsize=8, loc="upper left")
        fig.suptitle("One forward pass (prefill, last-token logits), 2 threads; label: speedup of ours")
        fig.tight_layout()
        return fig

    return draw


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="T = 128, 512 and fewer runs")
    ap.add_argument("--seq-lens", type=lambda s: [int(x) for x in s.split(",")], help="e.g. 128,512,2048")
    ap.add_argument("--dtypes", type=lambda s: s.split(","), default=list(DTYPES), help="float32,bfloat16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", action="store_true", help="write results even for a --quick or partial run")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    seq_lens = args.seq_lens or ([128, 512] if args.quick else [128, 512, 2048])
    for d in args.dtypes:
        if d not in DTYPES:
            ap.error(f"unknown dtype {d!r}; choose from {', '.join(DTYPES)}")
    target_s, min_runs, max_runs = (1.0, 2, 5) if args.quick else (4.0, 3, 10)

    torch.set_num_threads(args.threads)
    import gemma4  # noqa: F401,PLC0415  (the operators; a stale build says "rebuild")
    from gemma4.modeling.random_model import build_random_model  # noqa: PLC0415

    machine = machine_info(args.threads)
    print(describe(machine))
    t_start = time.perf_counter()

    t0 = time.perf_counter()
    ours = build_random_model(PRESET, torch.float32, seed=args.seed)
    cfg = ours.config
    print(f"{PRESET}: {cfg.num_hidden_layers} layers {[s.layer_type.split('_')[0] for s in cfg.layers]}, "
          f"hidden {cfg.hidden_size}, window {cfg.sliding_window}, vocab {cfg.vocab_size}, "
          f"{sum(p.numel() for p in set(ours.parameters())) / 1e9:.2f} B parameters (built in "
          f"{time.perf_counter() - t0:.1f} s)")
    gen = torch.Generator().manual_seed(args.seed)
    all_ids = torch.randint(3, cfg.vocab_size, (1, max(seq_lens)), generator=gen)
    all_ids[:, 0] = cfg.bos_token_id  # <bos> first, as Gemma expects

    rows: list[dict] = []
    fp32_logits: dict[int, torch.Tensor] = {}
    with tempfile.TemporaryDirectory(prefix="gemma4-bench-") as config_dir:
        cfg.save_pretrained(config_dir)
        for dt_name in sorted(args.dtypes, key=list(DTYPES).index):  # float32 first: bf16 is checked against it
            dtype = DTYPES[dt_name]
            t0 = time.perf_counter()
            hf = load_transformers(ours, config_dir, dtype)  # from the float32 weights
            ours = ours.to(dtype)  # float32 -> bfloat16 in place; our RoPE frequencies stay float32
            attn_impl = hf.config._attn_implementation
            print(f"\n{dt_name}: transformers model loaded in {time.perf_counter() - t0:.1f} s (attention: {attn_impl})")
            for T in seq_lens:
                ids = all_ids[:, :T]
                run_ours, run_hf = forward_fns(ours, hf, ids)
                with torch.inference_mode():
                    lo, lh, t_o, t_h = bench_pair(run_ours, run_hf, target_s, min_runs, max_runs)
                ours_ms, hf_ms = statistics.median(t_o), statistics.median(t_h)
                row = {
                    "dtype": dt_name, "batch": 1, "seq_len": T, "ours_ms": ours_ms, "transformers_ms": hf_ms,
                    "speedup": hf_ms / ours_ms, "runs": len(t_o),
                    "ours_ms_all": [round(t, 2) for t in t_o], "transformers_ms_all": [round(t, 2) for t in t_h],
                    "tokens_per_s_ours": T / ours_ms * 1e3, "tokens_per_s_transformers": T / hf_ms * 1e3,
                    "logits_max_abs": lh.float().abs().max().item(),
                    "max_abs_diff_vs_transformers": max_abs(lo, lh),
                    "top1_agree": int(lo.argmax()) == int(lh.argmax()),
                }
                if dtype == torch.float32:
                    fp32_logits[T] = lh.float().clone()
                elif T in fp32_logits:
                    row["ours_err_vs_fp32"] = max_abs(lo, fp32_logits[T])
                    row["transformers_err_vs_fp32"] = max_abs(lh, fp32_logits[T])
                rows.append(row)
                extra = ""
                if "ours_err_vs_fp32" in row:
                    extra = (f"; error vs float32: ours {row['ours_err_vs_fp32']:.3g}, "
                             f"transformers {row['transformers_err_vs_fp32']:.3g}")
                print(f"  T={T:<5} ours {fmt_ms(ours_ms)} ms, transformers {fmt_ms(hf_ms)} ms -> "
                      f"{row['speedup']:.2f}x  ({len(t_o)} runs); max|logit diff| {row['max_abs_diff_vs_transformers']:.3g} "
                      f"(logits up to {row['logits_max_abs']:.3g}){extra}", flush=True)
            del hf, run_ours, run_hf
            gc.collect()

    print()
    table = []
    for r in rows:
        err = "-"
        if "ours_err_vs_fp32" in r:
            err = f"{r['ours_err_vs_fp32']:.2e} / {r['transformers_err_vs_fp32']:.2e}"
        table.append([r["dtype"], str(r["seq_len"]), fmt_ms(r["ours_ms"]), fmt_ms(r["transformers_ms"]),
                      f"{r['speedup']:.2f}x", f"{r['max_abs_diff_vs_transformers']:.2e}",
                      "yes" if r["top1_agree"] else "NO", err])
    print_table(["dtype", "T", "ours ms", "transformers ms", "speedup", "max|diff|", "top-1 same",
                 "err vs fp32 (ours / transformers)"], table, align="lrrrrrrr")
    for r in rows:  # the logits check is a sanity check: say loudly when it fails
        bad_fp32 = r["dtype"] == "float32" and r["max_abs_diff_vs_transformers"] > 1e-3 * r["logits_max_abs"]
        bad_lowp = "ours_err_vs_fp32" in r and r["ours_err_vs_fp32"] > 2 * r["transformers_err_vs_fp32"]
        if bad_fp32 or bad_lowp:
            print(f"WARNING: {r['dtype']} T={r['seq_len']}: logits disagree with transformers more than expected")
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")

    partial = args.quick or args.seq_lens is not None or set(args.dtypes) != set(DTYPES)
    if args.no_save or (partial and not args.save):
        print("results not saved" + (" (partial run; pass --save to write them)" if not args.no_save else ""))
        return 0
    import transformers  # noqa: PLC0415

    extra = {
        "model": {"preset": PRESET, "config": json.loads(cfg.to_json_string())},
        "baseline": f"transformers {transformers.__version__} Gemma4ForCausalLM "
                    f"(attn_implementation={attn_impl}), use_cache=False",
        "call": "model(input_ids [1, T], logits_to_keep=1), inference_mode; median of alternating runs",
    }
    write_results("model_cpu", rows, machine, plot=plot_times(rows), extra=extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
