"""Experiment (nineteenth session): a greedy step's argmax through an int8 copy of the tied head. Shipped in the
twentieth as gemma4/generation/greedy_head.py (a rigorous bound, the soft-cap's ties, the fallbacks); this script is
the measurement that came first.

docs/performance.md counts the idea: read an int8 copy of the head (0.40 GB for E2B) instead of the
bf16 table (0.81 GB), bound each approximate logit's error exactly, and read in full precision only the rows whose
bound reaches the best one. This script measures what that rests on, on real decode hidden states of a model:
- how many rows qualify per step (the exact re-read's size);
- that the full path's greedy token is always among them;
- the time of the int8 head GEMV (gemma4::qgemm, one row) against the bf16 head (gemma4::linear, one row).

The bound: |sum_k x_k (w_k - dq_k)| <= sum over groups g of (sum_{k in g} |x_k|) * max_{k in g} |w_k - dq_k|, plus the
float rounding of both sums (a 1e-3 relative slack here, not a proof); rows are compared after the full path's bf16
rounding and soft-cap, where saturated logits tie and the first index wins.

    PYTHONPATH=.:python python dev/perf/exact_argmax_head.py /work/e2bbench/gemma-4-E2B-random [steps] [float32]
"""
from __future__ import annotations

import sys
import time

import torch

import gemma4
from gemma4 import ops
from gemma4.quant import formats


def capped(v: torch.Tensor, cap: float | None, dtype: torch.dtype) -> torch.Tensor:
    """The full path's logit for an exact value v: rounded to the model dtype, soft-capped in it."""
    t = v.to(dtype)
    return (torch.tanh(t / cap) * cap if cap is not None else t).float()


def main(path: str, steps: int = 24, dtype: torch.dtype = torch.bfloat16) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = gemma4.AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    w = model.lm_head.weight.detach()  # [V, H] in dtype (the tied, memory-mapped table)
    cap = model.config.final_logit_softcapping
    V, H = w.shape
    with torch.no_grad():
        ids = torch.randint(0, V, (1, 16))
        seq = model.generate(ids, max_new_tokens=steps, do_sample=False)  # [1, 16 + steps]
        hidden = model.model(seq, None, None, None, None)[0, 15:-1]  # [steps, H]: each decode step's input to the head

        q8, s8 = formats.quantize_int8(w.float(), 32, torch.float32)  # [V, H] int8, [V, H/32] fp32
        err = (w.float().view(V, -1, 32) - q8.float().view(V, -1, 32) * s8[..., None]).abs().amax(-1)  # [V, H/32]

        counts, hits, differ = [], 0, 0
        for t in range(steps):
            x = hidden[t:t + 1]  # [1, H]
            raw = ops.linear(x, w)  # [1, V], the model's own path
            full = torch.tanh(raw / cap) * cap if cap is not None else raw
            token = int(torch.argmax(full.float(), -1))
            approx = ops.qgemm(x.float(), q8, s8)[0]  # [V] fp32
            xg = x.float().abs().view(-1, 32).sum(-1)  # [H/32]
            bound = err @ xg + 1e-3 * approx.abs()  # [V]
            # Compared after the full path's own rounding and soft-cap (bf16 logits, tanh(l / cap) * cap in bf16): a
            # monotone map, under which saturated logits tie (the first index wins), so a row qualifies when its
            # upper bound reaches the best lower bound there.
            hi, lo = capped(approx + bound, cap, dtype), capped((approx - bound).max(), cap, dtype)
            cands = torch.nonzero(hi >= lo).flatten()
            counts.append(cands.numel())
            hits += int(token in set(cands.tolist()))
            # the qualifying rows alone through the same op: bit-identical to the full call's values for them?
            alone = ops.linear(x, w[cands])[0]  # [C]
            differ += int((alone != raw[0, cands]).sum())

        x = hidden[:1]
        for name, fn in ((f"{dtype} head (gemma4::linear)", lambda: ops.linear(x, w)),
                         ("int8 g32 head (gemma4::qgemm)", lambda: ops.qgemm(x, q8, s8.to(x.dtype)))):
            fn()
            times = []
            for _ in range(7):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            print(f"{name}: {sorted(times)[3] * 1e3:.1f} ms")
    print(f"rows that qualify per step: min {min(counts)}, median {sorted(counts)[len(counts) // 2]}, max {max(counts)} "
          f"of {V}; the full path's token among them in {hits} of {steps} steps; the rows computed alone differ from "
          f"the full call's in {differ} values")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 24,
         getattr(torch, sys.argv[3]) if len(sys.argv) > 3 else torch.bfloat16)
