"""Wall-clock time of gemma4::attention's CPU forward at Gemma 4 E2B decode shapes (1 query row, 8 query
heads, 1 KV head), where the key range is split across threads, plus prefill (T=128) and long-context
checks. Median of many calls per shape (K/V warm in cache), in microseconds.

    # one build: JSON of {shape: median us}
    PYTHONPATH=.:python python dev/attention/decode_split.py run --threads 2 --out /tmp/new.json
    # A/B against a saved copy of a build (a folder holding its _C*.so and libgemma4_ops.so, loaded
    # through GEMMA4_LIB_DIR) vs the installed one, alternating processes for `rounds` rounds and keeping
    # each shape's best median (the machine is shared; wall times swing); --new DIR: a build folder
    # (dev/build.sh) instead of the installed build:
    PYTHONPATH=.:python python dev/attention/decode_split.py ab --base /tmp/attn_base --threads 2 --rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HEADS, KV_HEADS = 8, 1
DECODE_S = (64, 100, 128, 200, 512, 1024, 4096)
PREFILL = ((128, 128), (128, 512), (128, 4096))  # (T, S)


def shapes(quick: bool):
    out = []
    for dt in ("bfloat16", "float32"):
        for hd in (256, 512):
            for W in (0, 512):
                for S in DECODE_S:
                    out.append((dt, hd, W, 1, S))
                if not quick:
                    for T, S in PREFILL:
                        out.append((dt, hd, W, T, S))
    return out


def key(s):
    dt, hd, W, T, S = s
    return f"{dt} hd{hd} W{W} T{T} S{S}"


def run(args):
    import torch

    import gemma4._native  # noqa: F401  (loads the operator library; GEMMA4_LIB_DIR picks a build)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    res = {}
    for s in shapes(args.quick):
        dt, hd, W, T, S = s
        dtype = getattr(torch, dt)
        q = torch.randn(1, T, HEADS, hd, dtype=dtype)
        k = torch.randn(1, S, KV_HEADS, hd, dtype=dtype)
        v = torch.randn(1, S, KV_HEADS, hd, dtype=dtype)
        f = lambda: torch.ops.gemma4.attention(q, k, v, None, 1.0, W)  # noqa: E731
        t0 = time.perf_counter()
        for _ in range(10):
            f()
        per = (time.perf_counter() - t0) / 10
        n = int(min(args.max_calls, max(args.min_calls, args.seconds / max(per, 1e-7))))
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
        ts.sort()
        res[key(s)] = ts[len(ts) // 2] * 1e6
    with open(args.out, "w") as fh:
        json.dump(res, fh)


def ab(args):
    env = dict(os.environ)
    env.pop("GEMMA4_LIB_DIR", None)
    env_base = dict(env, GEMMA4_LIB_DIR=args.base)
    env_new = dict(env, GEMMA4_LIB_DIR=args.new) if args.new else env
    best = {"base": {}, "new": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, env in (("base", env_base), ("new", env_new)):
                out = os.path.join(tmp, f"{name}{r}.json")
                cmd = [sys.executable, __file__, "run", "--threads", str(args.threads), "--out", out,
                       "--seconds", str(args.seconds)] + (["--quick"] if args.quick else [])
                subprocess.run(cmd, env=env, check=True)
                with open(out) as fh:
                    for k, t in json.load(fh).items():
                        best[name][k] = min(t, best[name].get(k, float("inf")))
    print(f"threads={args.threads}, best of {args.rounds} rounds of the median, us")
    print("| dtype | hd | window | T | S | before | after | after/before |")
    print("|---|---|---|---|---|---|---|---|")
    for s in shapes(args.quick):
        k = key(s)
        b, n = best["base"][k], best["new"][k]
        dt, hd, W, T, S = s
        print(f"| {dt} | {hd} | {W} | {T} | {S} | {b:.1f} | {n:.1f} | {n / b:.2f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(best, fh, indent=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("run", "ab"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    ap.add_argument("--base", help="ab: the 'before' build's folder")
    ap.add_argument("--new", help="ab: the 'after' build's folder (default: the installed build)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=0.15, help="time budget per shape per round")
    ap.add_argument("--min-calls", type=int, default=30)
    ap.add_argument("--max-calls", type=int, default=2000)
    ap.add_argument("--quick", action="store_true", help="decode shapes only")
    ap.add_argument("--json", help="ab: also write both builds' best times here")
    args = ap.parse_args()
    run(args) if args.mode == "run" else ab(args)


if __name__ == "__main__":
    main()
