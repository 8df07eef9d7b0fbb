"""Prefill and batch-1 decode speed: ours (model.generate on the KV cache) against transformers 5.17.0.

    python benchmarks/bench_decode.py                 # small-e2b and tiny-e2b, float32 and bfloat16, 2 threads
    python benchmarks/bench_decode.py --quick         # fewer tokens, not saved unless --save

Both models hold the same random weights (ours built first, transformers loads them, see
bench_model_cpu.load_transformers). Greedy decoding; the generated tokens are checked equal.
prefill tokens/s = prompt length / time of one forward over the prompt (logits of the last position);
decode tokens/s = N / (time(generate N+1 tokens) - time(generate 1 token)), i.e. the steady decode
step with the prefill removed. Results: benchmarks/results/decode_cpu-<machine>.json.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bench_model_cpu import load_transformers  # noqa: E402
from benchmarks.common import describe, machine_info, print_table, write_results  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _median_time(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_one(preset: str, dtype_name: str, prompt_len: int, new_tokens: int, runs: int) -> dict:
    import gemma4

    torch.manual_seed(0)
    ours = gemma4.Gemma4ForCausalLM(gemma4.get_preset(preset)).eval()
    with tempfile.TemporaryDirectory() as d:
        ours.config.save_pretrained(d)
        hf = load_transformers(ours, d, DTYPES[dtype_name])
    ours = ours.to(DTYPES[dtype_name])
    ids = torch.randint(3, ours.config.vocab_size, (1, prompt_len))
    ids[0, 0] = 2
    kw = dict(do_sample=False, eos_token_id=None, pad_token_id=0)

    def gen(model, n):
        return model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)

    with torch.inference_mode():
        same = torch.equal(gen(ours, new_tokens), gen(hf, new_tokens))
        row = {"preset": preset, "dtype": dtype_name, "prompt_len": prompt_len, "new_tokens": new_tokens,
               "tokens_equal": bool(same)}
        for name, model in (("ours", ours), ("transformers", hf)):
            prefill = _median_time(lambda: model(input_ids=ids, logits_to_keep=1), runs)
            one = _median_time(lambda: gen(model, 1), runs)
            full = _median_time(lambda: gen(model, new_tokens + 1), max(1, runs // 2))
            row[f"{name}_prefill_tok_s"] = prompt_len / prefill
            row[f"{name}_decode_tok_s"] = new_tokens / max(full - one, 1e-9)
    row["decode_speedup"] = row["ours_decode_tok_s"] / row["transformers_decode_tok_s"]
    row["prefill_speedup"] = row["ours_prefill_tok_s"] / row["transformers_prefill_tok_s"]
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="small-e2b,tiny-e2b")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--save", action="store_true", help="write results for a --quick run too")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.new_tokens = 8
    machine = machine_info(args.threads)
    print(describe(machine))
    rows = [bench_one(p, d, args.prompt_len, args.new_tokens, 3 if args.quick else 5)
            for p in args.presets.split(",") for d in args.dtypes.split(",")]
    print_table(["preset", "dtype", "prefill tok/s ours", "transformers", "decode tok/s ours", "transformers",
                 "decode x", "same tokens"],
                [[r["preset"], r["dtype"], f"{r['ours_prefill_tok_s']:.0f}", f"{r['transformers_prefill_tok_s']:.0f}",
                  f"{r['ours_decode_tok_s']:.1f}", f"{r['transformers_decode_tok_s']:.1f}",
                  f"{r['decode_speedup']:.2f}", str(r["tokens_equal"])] for r in rows])
    if not args.quick or args.save:
        print("wrote", write_results("decode_cpu", rows, machine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
