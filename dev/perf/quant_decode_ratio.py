"""Experiment (2026-12-06, twenty-second session): bf16 against int8 (or int4) g32 decode (head quantized too, the
benchmark's "qhead" rows) in one process, rounds alternating, so that both see the same minutes of this VM's
memory bandwidth (the benchmark runs each row in its own process, minutes apart). E2B random checkpoint,
`generate`, 64-token prompt, 24 new tokens, 2 threads; per round each model's ms a token and the ratio.

    PYTHONPATH=.:python python dev/perf/quant_decode_ratio.py [rounds] [checkpoint] [int8|int4]
"""
import sys
import time

import torch

import gemma4


def decode_ms(model, ids, new=24):
    model.generation_config.eos_token_id = None  # a random model may pick eos: run every step
    arrivals = []

    class Streamer:
        def put(self, _tokens):
            arrivals.append(time.perf_counter())

        def end(self):
            pass

    model.generate(ids, max_new_tokens=new, do_sample=False, streamer=Streamer())
    return (arrivals[-1] - arrivals[1]) / (new - 1) * 1e3  # first token's arrival to the last's


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    path = sys.argv[2] if len(sys.argv) > 2 else "/work/e2bbench/gemma-4-E2B-random"
    torch.set_num_threads(2)
    weights = sys.argv[3] if len(sys.argv) > 3 else "int8"
    quant = gemma4.QuantizationConfig(weights=weights, group_size=32, modules_to_not_convert=["router"])
    qname = f"{weights} qhead"
    models = {"bf16": gemma4.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval(),
              qname: gemma4.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16,
                                                                 quantization_config=quant).eval()}
    ids = torch.randint(3, 4000, (1, 64))
    for m in models.values():
        decode_ms(m, ids, 4)  # warm-up
    for _ in range(rounds):
        ms = {name: decode_ms(m, ids) for name, m in models.items()}
        print("  ".join(f"{k} {v:.1f} ms ({1e3 / v:.2f} tok/s)" for k, v in ms.items()),
              f"{weights} / bf16 {ms['bf16'] / ms[qname]:.2f}x", flush=True)


if __name__ == "__main__":
    main()
