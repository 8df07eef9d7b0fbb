"""Where a GPU LoRA training step spends its time: ours or transformers+PEFT, E2B shape by default.

    python dev/train/profile_gpu_step.py --impl ours --out $OUT/ours     # writes ours.txt (+ .json trace)

Builds the model exactly as benchmarks/gpu/bench_train.py does, runs 2 warm-up steps, times forward,
backward and the optimizer step apart (cuda.synchronize between them), then profiles one step with
torch.profiler and writes the kernels sorted by their own CUDA time, and the top-level ops.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def saved_report(call, ids) -> str:
    """What autograd keeps for backward in one forward: bytes per (shape, dtype), each storage once."""
    import torch

    seen: dict = {}

    def pack(t):
        if isinstance(t, torch.Tensor) and t.device.type == "cuda":
            key = t.untyped_storage().data_ptr()
            seen.setdefault(key, (tuple(t.shape), str(t.dtype).replace("torch.", ""),
                                  t.untyped_storage().nbytes(), 0))
            shape, dtype, nbytes, n = seen[key]
            seen[key] = (shape, dtype, nbytes, n + 1)
        return t

    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = call(ids)
    torch.cuda.synchronize()
    after = torch.cuda.memory_allocated()
    by_kind: dict = {}
    for shape, dtype, nbytes, n in seen.values():
        k = (shape, dtype)
        c, b = by_kind.get(k, (0, 0))
        by_kind[k] = (c + 1, b + nbytes)
    total = sum(b for _, b in by_kind.values())
    rows = sorted(by_kind.items(), key=lambda kv: -kv[1][1])[:40]
    out = [f"saved for backward: {total / 2**30:.2f} GiB in {len(seen)} storages (weights included); "
           f"memory held after forward: {(after - before) / 2**30:.2f} GiB"]
    out += [f"  {b / 2**30:8.3f} GiB  x{c:4d}  {dtype:9s} {list(shape)}" for (shape, dtype), (c, b) in rows]
    del loss
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", default="ours")
    ap.add_argument("--preset", default="gemma-4-E2B")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--out", required=True)
    ap.add_argument("--trace", action="store_true")
    args = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.gpu.bench_train import LR, build

    model, call = build(args.impl, args.preset, 0, False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR)
    ids = torch.randint(3, model.config.vocab_size, (args.batch, args.seq_len), device="cuda")
    ids[:, 0] = 2

    def step(phases=None):
        marks = [time.perf_counter()]
        loss = call(ids)
        if phases is not None:
            torch.cuda.synchronize()
            marks.append(time.perf_counter())
        loss.backward()
        if phases is not None:
            torch.cuda.synchronize()
            marks.append(time.perf_counter())
        opt.step()
        opt.zero_grad(set_to_none=True)
        if phases is not None:
            torch.cuda.synchronize()
            marks.append(time.perf_counter())
            phases.append([(b - a) * 1e3 for a, b in zip(marks, marks[1:])])

    for _ in range(2):
        step()
    phases: list = []
    for _ in range(3):
        step(phases)
    lines = [saved_report(call, ids)]
    lines += [f"{args.impl}: forward / backward / optimizer ms per step: " +
             "; ".join(" / ".join(f"{v:.1f}" for v in p) for p in phases)]
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    avg = prof.key_averages()
    lines.append(avg.table(sort_by="self_cuda_time_total", row_limit=60, max_name_column_width=90))
    lines.append(avg.table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=90))
    Path(args.out + ".txt").write_text("\n".join(lines))
    if args.trace:
        prof.export_chrome_trace(args.out + ".json")
    print(lines[0])


if __name__ == "__main__":
    main()
