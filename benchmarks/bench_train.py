"""One LoRA training step (forward + backward + AdamW) of an E2B-shaped model: ours against
transformers 5.17.0 + PEFT 0.21.0 on the same weights. Tokens/s and peak memory.

    python benchmarks/bench_train.py              # B,T = 1,256 and 2,512; float32 and bfloat16; 2 threads
    python benchmarks/bench_train.py --quick      # B,T = 1,256 only, fewer steps (not saved unless --save)

Model: the "small-e2b" preset (E2B's widths: hidden 1536, 8 query heads / 1 KV head, head dims
256/512, MLP 6144 (12288 on the KV-shared layers), per-layer embeddings 256, vocabulary 262144; 5
layers: sliding, sliding, full, then two KV-shared layers), random weights. transformers' model is
built from our config.to_dict() (Gemma4TextConfig.from_dict) and loads our float32 state dict
(from_pretrained(state_dict=...), tied head left to transformers), converted to the dtype by
from_pretrained; ours is built in the dtype from the same float32 numbers.

LoRA on both: r=16, alpha=32, no dropout, on q/k/v/o_proj and gate/up/down_proj (KV-shared layers
have no k/v_proj in either model); ours via gemma4.LoraConfig + model.add_adapter, transformers via
peft.get_peft_model. bfloat16 base weights get float32 adapters on both sides (PEFT's
autocast_adapter_dtype). The step: model(input_ids, labels=input_ids).loss.backward();
AdamW(lr 1e-4) over the trainable parameters; zero_grad(set_to_none=True). Ours computes the loss
with the fused linear cross-entropy (modeling/loss.py: chunks of model.loss_chunk_size tokens, the
gradient computed in the forward pass, no [B*T, 262144] logits kept for backward); transformers
materialises the logits in the model dtype and upcasts them to float32 for its loss.

Each (implementation, dtype, B, T) runs in its own subprocess (OMP_NUM_THREADS=threads,
OMP_WAIT_POLICY=passive unless --omp-wait-policy active), so that one configuration's memory
(allocator caches, the other model) cannot show up in another's numbers:
  time: one warm-up step (AdamW state allocation, first-touch of buffers), then --steps steps
        timed one by one with time.perf_counter; the minimum is reported (min-of-N: on a shared
        machine the least disturbed step), tokens/s = B*T / min; the median and every step are kept.
        The process CPU time of each step (time.process_time, all threads) is recorded too: on a
        loaded machine it is the steadier number (it does not count time spent waiting for a core),
        and the load average before and after the steps is stored with it.
  memory: peak resident set size (RSS) during the steps minus the RSS just before them (model,
        adapter and inputs loaded, garbage collected, malloc_trim'ed): what training needs on top
        of the weights (activations, logits, gradients, AdamW states, allocator slack). The peak
        is the kernel's VmHWM, reset to the current RSS right before the steps by writing 5 to
        /proc/self/clear_refs (Linux >= 4.0). Where that is not possible, the ru_maxrss delta of
        resource.getrusage is used instead; it is right only when the steps' peak exceeds every
        earlier peak of the process (model loading), so the method is recorded with the numbers.
        tracemalloc would be wrong: it sees only Python's own allocations, not the memory torch's
        C++ allocator gets from malloc/mmap for tensors; RSS counts every byte the process
        touches, torch's and the libraries' alike.
The first-step losses of both sides are recorded as a sanity check (same weights, B=0 adapters:
the same loss up to rounding).
Results: benchmarks/results/bench_train-<machine>.json and .png.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout root: benchmarks.*

from benchmarks.common import describe, machine_info, print_table, write_results  # noqa: E402

PRESET = "small-e2b"
DTYPES = ("float32", "bfloat16")
SHAPES = ((1, 256), (2, 512))
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA, LR = 16, 32, 1e-4
IMPLS = ("ours", "transformers")


# ------------------------------------------------------------------------------------------------
# Memory: resident set size of this process
# ------------------------------------------------------------------------------------------------
def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _maxrss_kb() -> int:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb // 1024 if sys.platform == "darwin" else kb  # bytes on macOS, KiB on Linux


def _release_memory() -> None:
    gc.collect()
    try:  # hand freed heap pages back to the OS so the "before" RSS is the live data only
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """Peak RSS from now on: VmHWM after a reset through /proc/self/clear_refs, else ru_maxrss."""

    def __init__(self):
        self.rss_before_kb = _status_kb("VmRSS")
        self.method = "maxrss-delta"
        self.maxrss_before_kb = _maxrss_kb()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            if _status_kb("VmHWM") is not None:
                self.method = "vmhwm-reset"
        except OSError:
            pass
        if self.rss_before_kb is None:
            self.rss_before_kb = self.maxrss_before_kb

    def peak_delta_mb(self) -> float:
        if self.method == "vmhwm-reset":
            return (_status_kb("VmHWM") - self.rss_before_kb) / 1024
        return max(0, _maxrss_kb() - self.maxrss_before_kb) / 1024

    def peak_mb(self) -> float:
        if self.method == "vmhwm-reset":
            return _status_kb("VmHWM") / 1024
        return _maxrss_kb() / 1024


# ------------------------------------------------------------------------------------------------
# One configuration (runs in a subprocess)
# ------------------------------------------------------------------------------------------------
def build_models(impl: str, dtype_name: str, seed: int, loss_chunk_size: int | None = None):
    """(model, trainable params, call(ids) -> loss) for ours or transformers + PEFT."""
    import torch  # noqa: PLC0415

    from gemma4.modeling.random_model import build_random_model  # noqa: PLC0415

    dtype = getattr(torch, dtype_name)
    if impl == "ours":
        import gemma4  # noqa: PLC0415

        model = build_random_model(PRESET, dtype, seed=seed)  # float32 noise rounded to dtype
        model.add_adapter(gemma4.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS))
        if loss_chunk_size:
            model.loss_chunk_size = loss_chunk_size
        model.train()

        def call(ids):
            return model(input_ids=ids, labels=ids).loss

        return model, call

    import warnings  # noqa: PLC0415

    import transformers  # noqa: PLC0415

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import peft  # noqa: PLC0415
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    ours = build_random_model(PRESET, torch.float32, seed=seed)
    hf_config = transformers.Gemma4TextConfig.from_dict(ours.config.to_dict())
    state = {k: v for k, v in ours.state_dict().items() if k != "lm_head.weight"}  # tied: transformers ties it
    hf, info = transformers.Gemma4ForCausalLM.from_pretrained(None, config=hf_config, state_dict=state, dtype=dtype,
                                                              output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    if problems:
        raise RuntimeError(f"transformers did not load our weights one-to-one: {problems}")
    del ours, state
    hf.config.use_cache = False
    model = peft.get_peft_model(hf, peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
                                                    target_modules=TARGETS))
    model.train()

    def call(ids):
        return model(input_ids=ids, labels=ids, use_cache=False).loss

    return model, call


def worker(args) -> dict:
    import torch  # noqa: PLC0415

    torch.set_num_threads(args.threads)
    import gemma4  # noqa: F401,PLC0415  (the operators)

    B, T = args.batch, args.seq_len
    t0 = time.perf_counter()
    model, call = build_models(args.impl, args.dtype, args.seed, args.loss_chunk_size)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR)
    gen = torch.Generator().manual_seed(args.seed + 1)
    ids = torch.randint(3, 262144, (B, T), generator=gen)
    ids[:, 0] = 2  # <bos>
    load_s = time.perf_counter() - t0

    def step() -> float:
        loss = call(ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    _release_memory()
    peak = PeakRSS()
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    first_loss = step()  # warm-up: AdamW states, first touch of every buffer
    first_ms = (time.perf_counter() - t0) * 1e3
    times, cpu_times = [], []
    for _ in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
        cpu_times.append((time.process_time() - c0) * 1e3)
    best = min(times)  # min-of-N: the least disturbed step on a shared machine
    return {
        "impl": args.impl, "dtype": args.dtype, "batch": B, "seq_len": T, "tokens": B * T,
        "step_ms": best, "step_ms_median": statistics.median(times), "step_ms_all": [round(t, 1) for t in times],
        "step_cpu_ms": min(cpu_times), "step_cpu_ms_all": [round(t, 1) for t in cpu_times],
        "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "first_step_ms": first_ms, "tokens_per_s": B * T / best * 1e3,
        "peak_step_mem_mb": peak.peak_delta_mb(), "peak_rss_mb": peak.peak_mb(),
        "rss_before_step_mb": peak.rss_before_kb / 1024, "memory_method": peak.method,
        "first_loss": first_loss, "trainable_params": sum(p.numel() for p in params),
        "load_s": load_s, "threads": torch.get_num_threads(),
        "loss_chunk_size": getattr(model, "loss_chunk_size", None),
    }


def run_worker(impl: str, dtype: str, B: int, T: int, args) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, __file__, "--worker", "--impl", impl, "--dtype", dtype, "--batch", str(B),
           "--seq-len", str(T), "--threads", str(args.threads), "--steps", str(args.steps), "--seed", str(args.seed),
           "--worker-out", out] + (["--loss-chunk-size", str(args.loss_chunk_size)] if args.loss_chunk_size else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OMP_WAIT_POLICY=args.omp_wait_policy)
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
            return {"impl": impl, "dtype": dtype, "batch": B, "seq_len": T, "error": "\n".join(tail)}
        return json.loads(Path(out).read_text())
    except subprocess.TimeoutExpired:
        return {"impl": impl, "dtype": dtype, "batch": B, "seq_len": T, "error": f"timeout after {args.timeout} s"}
    finally:
        Path(out).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------
def pair_rows(results: list[dict]) -> list[dict]:
    """One row per (dtype, B, T): ours and transformers side by side."""
    rows = []
    keys = list(dict.fromkeys((r["dtype"], r["batch"], r["seq_len"]) for r in results))
    for dtype, B, T in keys:
        o = next((r for r in results if (r["impl"], r["dtype"], r["batch"], r["seq_len"]) == ("ours", dtype, B, T)), {})
        h = next((r for r in results if (r["impl"], r["dtype"], r["batch"], r["seq_len"]) ==
                  ("transformers", dtype, B, T)), {})
        row = {"dtype": dtype, "batch": B, "seq_len": T, "ours": o, "transformers": h}
        if "step_ms" in o and "step_ms" in h:
            row["speedup"] = h["step_ms"] / o["step_ms"]
            row["cpu_time_speedup"] = h["step_cpu_ms"] / o["step_cpu_ms"]
            row["memory_ratio"] = h["peak_step_mem_mb"] / max(o["peak_step_mem_mb"], 1e-9)
            row["loss_diff"] = abs(o["first_loss"] - h["first_loss"])
        rows.append(row)
    return rows


def plot(rows: list[dict]):
    def draw(plt):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        ok = [r for r in rows if "speedup" in r]
        labels = [f"{r['dtype']}\nB={r['batch']}, T={r['seq_len']}" for r in ok]
        x = list(range(len(ok)))
        w = 0.38
        for ax, key, ylabel in ((axes[0], "tokens_per_s", "tokens / s (higher is better)"),
                                (axes[1], "peak_step_mem_mb", "peak memory of a step, MB (lower is better)")):
            ours = [r["ours"][key] for r in ok]
            hf = [r["transformers"][key] for r in ok]
            ax.bar([i - w / 2 for i in x], ours, w, label="gemma4 + LoRA (ours)", color="tab:green")
            ax.bar([i + w / 2 for i in x], hf, w, label="transformers 5.17 + PEFT 0.21", color="tab:gray")
            for i, (a, b) in enumerate(zip(ours, hf)):
                ratio = a / b if key == "tokens_per_s" else b / a
                ax.text(i, max(a, b) * 1.03, f"{ratio:.2f}x", ha="center", fontsize=9)
            ax.set_xticks(x, labels, fontsize=8)
            ax.set_ylabel(ylabel)
            ax.set_ylim(0, max(ours + hf) * 1.3)  # room for the labels and the legend
            ax.legend(fontsize=8, loc="upper left")
        axes[0].set_title("throughput (label: ours / transformers)")
        axes[1].set_title("memory above the loaded model (label: transformers / ours)")
        fig.suptitle(f"One LoRA training step (fwd + bwd + AdamW), {PRESET}, r={RANK}, 2 threads")
        fig.tight_layout()
        return fig

    return draw


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="B,T = 1,256 only, 2 timed steps")
    ap.add_argument("--shapes", type=lambda s: [tuple(int(v) for v in x.split("x")) for x in s.split(",")],
                    help="BxT list, e.g. 1x256,2x512")
    ap.add_argument("--dtypes", type=lambda s: s.split(","), default=list(DTYPES))
    ap.add_argument("--impls", type=lambda s: s.split(","), default=list(IMPLS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, help="timed steps after the warm-up (default 3; --quick 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--loss-chunk-size", type=int, help="ours: model.loss_chunk_size (default: the model's)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per configuration")
    ap.add_argument("--omp-wait-policy", choices=["passive", "active"], default="passive",
                    help="OMP_WAIT_POLICY of the workers: passive threads sleep at barriers instead of spinning, "
                         "which on a shared machine keeps a descheduled thread from stalling every parallel "
                         "region (2-thread steps 10-100x slower with active)")
    ap.add_argument("--save", action="store_true", help="write results even for a partial run")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--replot", action="store_true", help="redraw the PNG from this machine's results JSON")
    # worker mode (one configuration, in a subprocess)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--impl", choices=IMPLS, help=argparse.SUPPRESS)
    ap.add_argument("--dtype", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--seq-len", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.steps = args.steps or (2 if args.quick else 3)

    if args.worker:
        Path(args.worker_out).write_text(json.dumps(worker(args)))
        return 0

    if args.replot:
        from benchmarks.common import results_path  # noqa: PLC0415

        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415

        path = results_path("bench_train", machine_info(args.threads))
        fig = plot(json.loads(path.read_text())["rows"])(plt)
        fig.savefig(path.with_suffix(".png"), dpi=110, bbox_inches="tight")
        print(f"wrote {path.with_suffix('.png')}")
        return 0

    shapes = args.shapes or ([(1, 256)] if args.quick else list(SHAPES))
    for d in args.dtypes:
        if d not in DTYPES:
            ap.error(f"unknown dtype {d!r}; choose from {', '.join(DTYPES)}")
    import torch  # noqa: PLC0415

    torch.set_num_threads(args.threads)
    machine = machine_info(args.threads)
    print(describe(machine))
    t_start = time.perf_counter()
    results = []
    for dtype in args.dtypes:
        for B, T in shapes:
            for impl in args.impls:
                t0 = time.perf_counter()
                r = run_worker(impl, dtype, B, T, args)
                results.append(r)
                if "error" in r:
                    print(f"{dtype} B={B} T={T} {impl}: FAILED\n{r['error']}", flush=True)
                    continue
                print(f"{dtype:8s} B={B} T={T:<4d} {impl:12s} step {r['step_ms']:8.0f} ms "
                      f"({r['tokens_per_s']:6.0f} tokens/s), step memory {r['peak_step_mem_mb']:7.0f} MB "
                      f"(peak RSS {r['peak_rss_mb']:.0f} MB), loss {r['first_loss']:.4f} "
                      f"[{time.perf_counter() - t0:.0f} s]", flush=True)

    rows = pair_rows(results)
    print()
    table = []
    for r in rows:
        o, h = r["ours"], r["transformers"]
        table.append([r["dtype"], f"{r['batch']}x{r['seq_len']}",
                      f"{o['tokens_per_s']:.0f}" if "tokens_per_s" in o else "-",
                      f"{h['tokens_per_s']:.0f}" if "tokens_per_s" in h else "-",
                      f"{r['speedup']:.2f}x" if "speedup" in r else "-",
                      f"{r['cpu_time_speedup']:.2f}x" if "cpu_time_speedup" in r else "-",
                      f"{o['peak_step_mem_mb']:.0f}" if "peak_step_mem_mb" in o else "-",
                      f"{h['peak_step_mem_mb']:.0f}" if "peak_step_mem_mb" in h else "-",
                      f"{r['loss_diff']:.1e}" if "loss_diff" in r else "-"])
    print_table(["dtype", "BxT", "ours tok/s", "hf tok/s", "speedup", "CPU-time speedup", "ours MB", "hf MB",
                 "|loss diff|"], table, align="llrrrrrrr")
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")

    partial = args.quick or args.shapes is not None or args.loss_chunk_size is not None or set(args.dtypes) != set(DTYPES) or set(args.impls) != set(IMPLS)
    if args.no_save or (partial and not args.save):
        print("results not saved" + (" (partial run; pass --save to write them)" if not args.no_save else ""))
        return 0
    import peft  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    extra = {
        "model": {"preset": PRESET},
        "lora": {"r": RANK, "lora_alpha": ALPHA, "target_modules": TARGETS, "optimizer": f"AdamW(lr={LR})"},
        "baseline": f"transformers {transformers.__version__} Gemma4ForCausalLM (sdpa) + peft {peft.__version__}",
        "step": "loss = model(input_ids, labels=input_ids).loss; loss.backward(); AdamW.step(); zero_grad()",
        "timing": f"1 warm-up step, then min of {args.steps} steps (wall and process CPU time); one subprocess "
                  f"per configuration; "
                  f"OMP_WAIT_POLICY={args.omp_wait_policy}",
        "memory": "peak RSS during the steps minus RSS before them (VmHWM reset via /proc/self/clear_refs)",
    }
    write_results("bench_train", rows, machine, plot=plot(rows), extra=extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
