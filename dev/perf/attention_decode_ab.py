"""A/B of the CPU attention's bf16 decode products (gemma4.ops.attention_cpu_isa: "avx2" = fp32 FMAs on widened
K/V tiles, "avx512bf16" = vdpbf16ps on the bf16 rows) in whole greedy decode steps of a model, alternating the two
in one process: ms per decoded token (median of the rounds), at the prompt lengths given.

    python dev/perf/attention_decode_ab.py --checkpoint /work/e2bbench/gemma-4-E2B-random --prompts 128,2048 [--quant int4]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import gemma4
from gemma4.ops.attention import attention_cpu_isa


class Arrivals:
    def __init__(self):
        self.times = []

    def put(self, _tokens):
        self.times.append(time.perf_counter())

    def end(self):
        pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--prompts", default="128,2048")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quant", default="", help="int4 or int8 (groups of 32, the head too)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    kw = {}
    if a.quant:
        kw["quantization_config"] = gemma4.QuantizationConfig(weights=a.quant, group_size=32,
                                                              modules_to_not_convert=["router"])
    model = gemma4.AutoModelForCausalLM.from_pretrained(a.checkpoint, dtype=torch.bfloat16, **kw).eval()
    model.generation_config.eos_token_id = None
    g = torch.Generator().manual_seed(0)
    for n in map(int, a.prompts.split(",")):
        ids = torch.tensor([[2] + torch.randint(3, 4096, (n - 1,), generator=g).tolist()])
        per = {"avx2": [], "avx512bf16": []}
        tokens = {}
        for _ in range(a.rounds):
            for isa in per:
                attention_cpu_isa(isa)
                arr = Arrivals()
                out = model.generate(ids, max_new_tokens=a.new_tokens, do_sample=False, streamer=arr)
                t = arr.times
                per[isa].append((t[-1] - t[1]) / (len(t) - 2) * 1e3)
                tokens[isa] = out[0, n:].tolist()
        attention_cpu_isa("auto")
        same = sum(x == y for x, y in zip(tokens["avx2"], tokens["avx512bf16"]))
        print(f"prompt {n}: ms/token avx2 {statistics.median(per['avx2']):.2f} "
              f"avx512bf16 {statistics.median(per['avx512bf16']):.2f} "
              f"(rounds {[round(x, 2) for x in per['avx2']]} / {[round(x, 2) for x in per['avx512bf16']]}); "
              f"greedy tokens equal {same}/{len(tokens['avx2'])}", flush=True)


if __name__ == "__main__":
    main()
