"""Where a CPU LoRA training step spends its time (benchmarks/bench_train.py's model and step).

    python dev/train/profile_cpu_step.py --dtype float32 --threads 2      # ops sorted by their own CPU time
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", default="ours")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=30)
    ap.add_argument("--shapes", action="store_true", help="group the table by input shapes")
    args = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.bench_train import LR, build_models

    torch.set_num_threads(args.threads)
    model, call = build_models(args.impl, args.dtype, 0)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR)
    ids = torch.randint(3, 262144, (args.batch, args.seq_len))
    ids[:, 0] = 2

    def step():
        marks = [time.perf_counter()]
        loss = call(ids)
        marks.append(time.perf_counter())
        loss.backward()
        marks.append(time.perf_counter())
        opt.step()
        opt.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        return [round(b - a, 2) for a, b in zip(marks, marks[1:])]

    print("warm-up forward / backward / optimizer s:", step())
    print("timed:", step())
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as prof:
        print("profiled:", step())
    print(prof.key_averages(group_by_input_shape=args.shapes).table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
