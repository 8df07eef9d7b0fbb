"""generate's decode step with the C++ decoder layers (csrc/decode/) against the Python layers, in one process:
rounds of greedy generate, the two alternating (which goes first alternates too), each round's time per token
the median of its steps (streamer arrival times, prefill excluded). Checks the tokens are the same.

    python dev/perf/decode_layers_ab.py --preset tiny-e2b --threads 1          # toy widths: the host overhead
    python dev/perf/decode_layers_ab.py --checkpoint /work/e2bbench/gemma-4-E2B-random --quant int4 --qhead
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import torch

import gemma4
from gemma4.modeling import decode_step
from gemma4.modeling.random_model import build_random_model


class Arrivals:
    def __init__(self):
        self.times = []

    def put(self, _tokens) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass

    def step_ms(self) -> list[float]:
        t = self.times[2:]  # from the prefill's token on
        return [(b - a) * 1e3 for a, b in zip(t, t[1:])]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny-e2b")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--quant", choices=["int4", "int8"], default=None)
    ap.add_argument("--qhead", action="store_true", help="quantize the tied head too")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    keep = {"modules_to_not_convert": ["router"]} if a.qhead else {}
    qconfig = gemma4.QuantizationConfig(weights=a.quant, group_size=32, **keep) if a.quant else None
    if a.checkpoint:
        model = gemma4.AutoModelForCausalLM.from_pretrained(a.checkpoint, dtype=getattr(torch, a.dtype),
                                                            quantization_config=qconfig)
        name = os.path.basename(a.checkpoint.rstrip("/"))
    else:
        model = build_random_model(a.preset, getattr(torch, a.dtype))
        if qconfig is not None:
            gemma4.quantize(model, qconfig)
        name = a.preset
    model.generation_config.eos_token_id = None  # a random model may pick eos: always run every step
    ids = torch.randint(3, min(4096, model.config.vocab_size), (1, 64), generator=torch.Generator().manual_seed(0))

    def run(python: bool):
        arrivals = Arrivals()
        with decode_step.python_decode_layers() if python else contextlib.nullcontext():
            out = model.generate(ids, max_new_tokens=a.steps + 1, do_sample=False, streamer=arrivals)
        return out, statistics.median(arrivals.step_ms())

    ref, _ = run(True)
    out, _ = run(False)
    assert torch.equal(ref, out), "the C++ layers generated other tokens"
    times = {True: [], False: []}
    for r in range(a.rounds):
        for python in ((True, False) if r % 2 == 0 else (False, True)):
            times[python].append(run(python)[1])
    py, cpp = statistics.median(times[True]), statistics.median(times[False])
    print(f"{name} {a.dtype} {a.quant or ''}{' qhead' if a.qhead else ''}, {a.threads} threads, {a.steps} steps x "
          f"{a.rounds} rounds: Python layers {py:.2f} ms/token ({', '.join(f'{t:.2f}' for t in times[True])}), "
          f"C++ layers {cpp:.2f} ({', '.join(f'{t:.2f}' for t in times[False])}): {py / cpp:.3f}x, "
          f"{py - cpp:.2f} ms less; tokens identical; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
