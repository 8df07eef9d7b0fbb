"""generate on a quantized model with QuantLinear's 16-row tiled CPU layout (formats.tile16) against the row layout,
in one process: rounds of greedy generate, the two alternating (which goes first alternates too), each round's
prefill time and time per decode token (the median of its steps, streamer arrival times). The tokens may differ
in principle (the two kernels quantize x to int16 with slightly different steps, both within the error rule), so
the script reports how many are equal instead of asserting.

    python dev/perf/tiled_decode_ab.py --checkpoint /work/e2bbench/gemma-4-E2B-random --qhead
"""
from __future__ import annotations

import argparse
import os
import statistics

import torch

import gemma4
from gemma4.quant import QuantLinear
from gemma4.quant.modules import row_layout_only

from dev.perf.decode_layers_ab import Arrivals  # generate's streamer that records arrival times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--quant", choices=["int4"], default="int4")
    ap.add_argument("--qhead", action="store_true", help="quantize the tied head too")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    keep = {"modules_to_not_convert": ["router"]} if a.qhead else {}
    model = gemma4.AutoModelForCausalLM.from_pretrained(
        a.checkpoint, dtype=torch.bfloat16, quantization_config=gemma4.QuantizationConfig(weights=a.quant, group_size=32, **keep))
    model.generation_config.eos_token_id = None  # a random model may pick eos: always run every step
    ids = torch.randint(3, 4096, (1, a.prompt), generator=torch.Generator().manual_seed(0))
    quant = [m for m in model.modules() if isinstance(m, QuantLinear)]

    def run(tiled: bool):
        if not tiled:
            for m in quant:
                m.use_rows()
        elif not quant[0].tiled:
            with torch.no_grad():
                model(ids[:, :8])  # tile now: the conversion (once per model in use) stays out of the timings
        arrivals = Arrivals()
        if tiled:
            out = model.generate(ids, max_new_tokens=a.steps + 1, do_sample=False, streamer=arrivals)
        else:
            with row_layout_only():
                out = model.generate(ids, max_new_tokens=a.steps + 1, do_sample=False, streamer=arrivals)
        assert all(m.tiled == tiled for m in quant if m.out_features % 16 == 0) or not tiled
        t = arrivals.times
        steps = [(y - x) * 1e3 for x, y in zip(t[1:], t[2:])]
        return out, (t[1] - t[0]) * 1e3, statistics.median(steps)

    rows_out = run(False)[0]
    tiled_out = run(True)[0]
    same = int((rows_out == tiled_out).sum()) - a.prompt
    times = {False: [], True: []}
    for r in range(a.rounds):
        for tiled in ((False, True) if r % 2 == 0 else (True, False)):
            times[tiled].append(run(tiled)[1:])
    for tiled in (False, True):
        pf = statistics.median(t[0] for t in times[tiled])
        dec = statistics.median(t[1] for t in times[tiled])
        print(f"{'tiled' if tiled else 'rows '}: prefill {pf:.0f} ms ({a.prompt / pf * 1e3:.1f} tok/s), decode "
              f"{dec:.2f} ms/token ({1e3 / dec:.2f} tok/s); rounds: "
              + ", ".join(f"{d:.2f}" for _, d in times[tiled]))
    print(f"{os.path.basename(a.checkpoint.rstrip('/'))} {a.quant}{' qhead' if a.qhead else ''}, {a.threads} threads: "
          f"{same} of {a.steps + 1} new tokens equal; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
