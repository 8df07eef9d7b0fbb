"""Where a decode step's time goes (issue 13, lean decode step): torch.profiler over N greedy decode steps
of a random model, ops grouped into GEMM-like (gemma4::linear / qgemm, aten::mm / addmm / matmul / linear)
and everything else, plus the wall time the profiler does not attribute to any op (Python, dispatch); then
the op calls of one step by decoder layer (and outside the layers), and the wall and process CPU time per token
without the profiler (the median over --repeat runs of --steps steps; a run's time is its steps' median).

--path generate (the default) profiles model.generate's greedy steps (under torch.no_grad, with its logits
copy, finiteness check, argmax and stop check), one step being the time between two tokens reaching the
streamer; its decoder layers run from C++ (csrc/decode/) unless --python-layers, except in the op counts per
layer, which hook the Python layers. --path loop is a bare loop of forward calls plus argmax under torch.inference_mode (the figures
before the lean decode step were taken this way).

    python dev/perf/profile_decode.py --preset small-e2b --dtype bfloat16 --steps 16 [--quant int4]
    python dev/perf/profile_decode.py --preset tiny-e2b --dtype float32 --threads 1   # toy widths: overhead
    python dev/perf/profile_decode.py --checkpoint /work/e2bbench/gemma-4-E2B-random --quant int4 --qhead
"""
from __future__ import annotations

import argparse
import collections
import os
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import gemma4
from gemma4.modeling import decode_step
from gemma4.modeling.random_model import build_random_model

GEMM = ("gemma4::linear", "gemma4::qgemm", "aten::mm", "aten::addmm", "aten::bmm")
OPS = ("aten::", "gemma4::")
PROMPT = 64


class Marks:
    """A streamer that notes when each token arrives and, with ranges=True, opens a profiler range per decode
    step ("step k": from token k's arrival to token k+1's; the prefill's interval is not one)."""

    def __init__(self, ranges: bool = False):
        self.times, self.cpu, self.ranges, self.open = [], [], ranges, None

    def put(self, _tokens) -> None:
        self.times.append(time.perf_counter())
        self.cpu.append(time.process_time())
        if self.open is not None:
            self.open.__exit__(None, None, None)
            self.open = None
        if self.ranges and len(self.times) >= 2:  # after the prompt's put and the prefill's token
            self.open = record_function(f"step {len(self.times) - 2}")
            self.open.__enter__()

    def end(self) -> None:
        if self.open is not None:
            self.open.__exit__(None, None, None)
            self.open = None

    def step_ms(self, cpu: bool = False) -> list[float]:
        t = (self.cpu if cpu else self.times)[2:]  # from the prefill's token on
        return [(b - a) * 1e3 for a, b in zip(t, t[1:])]


def run(model, ids, steps: int, path: str, streamer: Marks) -> None:
    """steps decode steps after the prompt's prefill."""
    if path == "generate":
        out = model.generate(ids, max_new_tokens=steps + 1, do_sample=False, streamer=streamer)
        if out.shape[1] != ids.shape[1] + steps + 1:
            raise SystemExit(f"generate stopped early ({out.shape[1] - ids.shape[1]} tokens): pick another --seed")
        return
    from gemma4.cache import Gemma4Cache  # noqa: PLC0415

    cache = Gemma4Cache(model.config, max_cache_len=ids.shape[1] + steps + 1, batch_size=1)
    with torch.inference_mode():
        streamer.put(ids)
        tok = model(input_ids=ids, cache=cache, logits_to_keep=1).logits[0, -1].argmax()
        streamer.put(tok)
        for _ in range(steps):
            tok = model(input_ids=tok.view(1, 1), cache=cache).logits[0, -1].argmax()
            streamer.put(tok)
        streamer.end()


def in_range(e, prefix: str):
    while e is not None and not e.name.startswith(prefix):
        e = e.cpu_parent
    return e


def ops_per_layer(model, ids, path: str) -> tuple[collections.Counter, dict]:
    """Op calls of one decode step by decoder layer ("outside": embeddings, cache bookkeeping, head, argmax,
    generate's own work), and the calls by op name in each."""
    frames, handles = {}, []
    for i, layer in enumerate(model.model.layers):
        def pre(_m, _a, i=i):
            frames[i] = record_function(f"layer {i}")
            frames[i].__enter__()

        def post(_m, _a, _o, i=i):
            frames[i].__exit__(None, None, None)
        handles += [layer.register_forward_pre_hook(pre), layer.register_forward_hook(post)]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(model, ids, 2, path, Marks(ranges=True))
    for h in handles:
        h.remove()
    per, names = collections.Counter(), collections.defaultdict(collections.Counter)
    for e in prof.events():
        if e.name.startswith(OPS) and (s := in_range(e, "step ")) is not None and s.name == "step 1":
            layer = in_range(e, "layer ")
            where = layer.name if layer is not None else "outside"
            per[where] += 1
            names[where][e.name] += 1
    return per, names


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small-e2b")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--quant", choices=["int4", "int8"], default=None)
    ap.add_argument("--checkpoint", default=None, help="a checkpoint folder instead of --preset (quantized on load)")
    ap.add_argument("--qhead", action="store_true", help="quantize the tied head too (benchmarks' qhead rows)")
    ap.add_argument("--path", choices=["generate", "loop"], default="generate")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of --steps steps without the profiler")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--python-layers", action="store_true",
                    help="generate's decode steps through the Python decoder layers instead of the C++ ones")
    a = ap.parse_args()
    if a.python_layers:
        with decode_step.python_decode_layers():
            return profile_model(a)
    return profile_model(a)


def profile_model(a) -> None:
    torch.set_num_threads(a.threads)
    keep = {"modules_to_not_convert": ["router"]} if a.qhead else {}
    qconfig = gemma4.QuantizationConfig(weights=a.quant, group_size=32, **keep) if a.quant else None
    if a.checkpoint:
        model = gemma4.AutoModelForCausalLM.from_pretrained(a.checkpoint, dtype=getattr(torch, a.dtype),
                                                            quantization_config=qconfig).eval()
        a.preset = os.path.basename(a.checkpoint.rstrip("/"))
    else:
        model = build_random_model(a.preset, getattr(torch, a.dtype), seed=a.seed)
        if qconfig is not None:
            gemma4.quantize(model, qconfig)
    ids = torch.randint(3, min(4096, model.config.vocab_size), (1, PROMPT),
                        generator=torch.Generator().manual_seed(a.seed))
    if a.path == "generate":
        # a random model may well pick the eos token (tiny vocabularies): make eos one it does not produce
        gc = model.generation_config
        eos, gc.eos_token_id = gc.eos_token_id, None
        made = set(model.generate(ids, max_new_tokens=a.steps + 1, do_sample=False)[0].tolist())
        gc.eos_token_id = eos if not made & set(eos if isinstance(eos, list) else [eos]) else \
            next(t for t in range(3, model.config.vocab_size) if t not in made)
    run(model, ids, 4, a.path, Marks())  # warm-up
    marks = Marks(ranges=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(model, ids, a.steps, a.path, marks)
    wall = sum(marks.step_ms()) / a.steps
    per, names = ops_per_layer(model, ids, a.path)
    runs, cpu_runs = [], []
    for _ in range(a.repeat):
        timed = Marks()
        run(model, ids, a.steps, a.path, timed)
        runs.append(statistics.median(timed.step_ms()))
        cpu_runs.append(statistics.median(timed.step_ms(cpu=True)))

    gemm = other = calls = 0.0
    by_op = collections.defaultdict(lambda: [0.0, 0])
    for e in prof.events():  # self CPU time: each op's own time, so nested calls are not counted twice
        if e.name.startswith(OPS) and in_range(e, "step ") is not None:
            calls += 1
            if e.name in GEMM:
                gemm += e.self_cpu_time_total
            else:
                other += e.self_cpu_time_total
                by_op[e.name][0] += e.self_cpu_time_total
                by_op[e.name][1] += 1
    gemm, other, calls = gemm / 1e3 / a.steps, other / 1e3 / a.steps, calls / a.steps
    print(f"{a.preset} {a.dtype} {a.quant or ''} ({a.path}, {a.threads} threads): {wall:.1f} ms/token wall "
          f"(under the profiler); GEMMs {gemm:.1f} ms, other ops {other:.1f} ms, unattributed "
          f"{wall - gemm - other:.1f} ms; {calls:.0f} op calls per token")
    print(f"  without the profiler: {statistics.median(runs):.2f} ms/token (median of {a.repeat} runs: "
          f"{', '.join(f'{r:.2f}' for r in runs)}); load average {os.getloadavg()[0]:.2f}")
    # CPU time of the process (all its threads): not inflated while other jobs hold the cores, so steadier than
    # the wall time on a shared machine; with 1 thread it is the step's own work
    print(f"  process CPU time: {statistics.median(cpu_runs):.2f} ms/token (median of {a.repeat} runs: "
          f"{', '.join(f'{r:.2f}' for r in cpu_runs)})")
    layers = sorted((k for k in per if k != "outside"), key=lambda k: int(k.split()[1]))
    print("  op calls per layer: " + ", ".join(f"{k.split()[1]}: {per[k]}" for k in layers)
          + f"; outside the layers: {per['outside']}")
    for k in dict.fromkeys([*(layers[:1]), *(layers[-1:]), "outside"]):
        print(f"    {k}: " + ", ".join(f"{n} {c}" for n, c in names[k].most_common()))
    for name, (us, n) in sorted(by_op.items(), key=lambda kv: -kv[1][0])[:a.top]:
        print(f"  {name:40s} {us / 1e3 / a.steps:7.2f} ms  {n / a.steps:6.0f} calls")


if __name__ == "__main__":
    main()
