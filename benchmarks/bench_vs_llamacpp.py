"""gemma4 against llama.cpp on the CPU, same random Gemma 4 model, one command.

    python benchmarks/bench_vs_llamacpp.py --llama-src /work/llama/llama_cpp_python-0.3.36
    python benchmarks/bench_vs_llamacpp.py --preset small-e2b --dtypes float32   # a smaller machine

Needs the llama-cpp-python package (pip builds llama.cpp, ~10 minutes; not a test dependency) and
its sdist for llama.cpp's own converter (vendor/llama.cpp/convert_hf_to_gguf.py and gguf-py).

1. Writes a random checkpoint of the preset (default: gemma-4-E2B's full shape, bf16 weights, a
   tokenizer padded to the vocabulary) in transformers' layout, one tensor at a time; the float32 rows
   load a float32 copy of it, as llama.cpp loads an F32 GGUF (both then map their tables from the file).
2. Converts it with llama.cpp's converter to GGUF F32 / BF16 / Q8_0, and to Q4_0 with its quantizer
   (--dtypes int8,int4: our quantize-on-load int8 / int4, groups of 32, against Q8_0 / Q4_0).
3. Per dtype, loads each runtime in its own process (gemma4 with the head in bf16 and, quantized, also with the
   head quantized; llama.cpp without and with flash attention; for int8 / int4 also our bf16 model), one after
   another, then runs --rounds passes: a pass runs one round of each in turn, alone on the machine (the others
   wait), in an order rotated by one each pass. A round is one prefill of the prompt and greedy decode steps
   (ours: `model.generate`, llama.cpp: its eval loop). Reports prefill tok/s, decode tok/s (medians over
   passes), peak RSS (VmHWM of that process), and the paired ratios: per pass, ours over llama.cpp's faster
   configuration, and a quantized row's decode over our bf16's; medians over passes. The VM's memory bandwidth
   moves between minutes; within a pass the rows meet the same minutes.
4. Checks that gemma4 and llama.cpp produce the same greedy tokens in float32.
5. Between rounds, measures the machine's memory read bandwidth (a probe process summing a 2 GB float32
   tensor on the same threads) and gives each row its decode bound: bandwidth (the median over its rounds of
   the samples either side) over the bytes one decode step streams (every weight except the
   per-layer-embedding table, of which it reads one row a token; the tied head's table whole).
Results: benchmarks/results/vs_llamacpp-<machine>.json and .png.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import describe, machine_info, print_table, write_results  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.bfloat16, "int4": torch.bfloat16}
# llama.cpp's file per row: its converter writes f32 / bf16 / q8_0; Q4_0 comes from llama.cpp's own
# quantizer (llama_model_quantize) applied to the bf16 file. int8 / int4 rows of ours quantize the same
# bf16 checkpoint while loading: int8 groups of 32 (Q8_0's grid), int4 groups of 32 (Q4_0's), bf16
# activations. Two gemma4 rows each: the tied head in bf16 (gemma4's default) and, as llama.cpp does
# (Q8_0 for a Q8_0 file, Q6_K for Q4_0), quantized with the rest ("gemma4 qhead":
# modules_to_not_convert=["router"], so the head gets the layers' int8 / int4 g32).
GGUF_TYPE = {"float32": "f32", "bfloat16": "bf16", "int8": "q8_0", "int4": "q4_0"}
QUANT = {"int8": ("int8", 32), "int4": ("int4", 32)}
TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "python" / "gemma4" / "default_model"


# ------------------------------------------------------------------------------------------------
# The model on disk
# ------------------------------------------------------------------------------------------------

def write_random_checkpoint(preset: str, path: Path, seed: int = 0, shard_bytes: int = 2 << 30) -> None:
    """Random bf16 weights of the preset in transformers' layout, generated a tensor at a time so the
    writer never holds the model. Linear weights ~ N(0, 1/in) (activations keep their scale), embeddings
    ~ N(0, 1), norm weights and layer scalars 1 + N(0, 0.1) (so no formula hides behind a weight of one)."""
    import gemma4
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    config = gemma4.get_preset(preset)
    with torch.device("meta"):
        model = gemma4.Gemma4ForCausalLM(config)
    state = {k: v for k, v in model.state_dict().items() if not (k == "lm_head.weight" and config.tie_word_embeddings)}
    gen = torch.Generator().manual_seed(seed)
    shard, size, weight_map, n = {}, 0, {}, 0

    def flush():
        nonlocal shard, size, n
        if shard:
            n += 1
            name = f"model-{n:05d}.safetensors"
            save_file(shard, str(path / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
            shard, size = {}, 0

    for key, meta in state.items():
        shape = tuple(meta.shape)
        if meta.dim() == 2 and "embed" not in key:
            t = torch.randn(shape, generator=gen).mul_(shape[1] ** -0.5)
        elif meta.dim() == 2:
            t = torch.randn(shape, generator=gen)
        else:
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        shard[key] = t.to(torch.bfloat16)
        size += shard[key].numel() * 2
        if size >= shard_bytes:
            flush()
    flush()
    # The final names: model-0000i-of-0000n.safetensors, as transformers expects with an index.
    renamed = {}
    for i in range(1, n + 1):
        old, new = path / f"model-{i:05d}.safetensors", f"model-{i:05d}-of-{n:05d}.safetensors"
        old.rename(path / new)
        renamed[old.name] = new
    index = {"metadata": {"total_size": sum(v.numel() * 2 for v in state.values())},
             "weight_map": {k: renamed[v] for k, v in weight_map.items()}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    config.save_pretrained(str(path))
    cfg = json.loads((path / "config.json").read_text())
    cfg["architectures"] = ["Gemma4ForCausalLM"]
    cfg["dtype"] = "bfloat16"
    (path / "config.json").write_text(json.dumps(cfg, indent=1))
    write_padded_tokenizer(path, config.vocab_size)


def write_float32_copy(src: Path, dst: Path) -> None:
    """The bf16 checkpoint widened to float32 (exact), shard by shard, for the float32 rows: llama.cpp runs an
    F32 GGUF, whose tables it maps from the file, so ours loads a float32 file too and maps its tables the same
    way (from a bf16 file, a float32 model reads and widens them: docs/checkpoints.md)."""
    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True, exist_ok=True)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    for name in sorted(set(index["weight_map"].values())):
        shard = {k: v.float() for k, v in load_file(str(src / name)).items()}
        save_file(shard, str(dst / name), metadata={"format": "pt"})
        del shard
    index["metadata"]["total_size"] *= 2
    (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    cfg = json.loads((src / "config.json").read_text())
    cfg["dtype"] = "float32"
    (dst / "config.json").write_text(json.dumps(cfg, indent=1))
    for f in src.iterdir():
        if f.name.startswith("tokenizer") or f.name == "chat_template.jinja":
            (dst / f.name).write_bytes(f.read_bytes())


def write_padded_tokenizer(path: Path, vocab_size: int) -> None:
    """The default model's Gemma-style tokenizer with its vocabulary padded by <unused_i> pieces to
    vocab_size, so llama.cpp's converter (which writes every token) sees the model's vocabulary."""
    tok = json.loads((TOKENIZER_DIR / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    taken = set(vocab.values()) | {a["id"] for a in tok["added_tokens"]}
    for i in range(vocab_size):
        if i not in taken:
            vocab[f"<unused_{i}>"] = i
    (path / "tokenizer.json").write_text(json.dumps(tok))
    for name in ("tokenizer_config.json", "chat_template.jinja"):
        if (TOKENIZER_DIR / name).exists():
            (path / name).write_text((TOKENIZER_DIR / name).read_text())


def convert_to_gguf(model_dir: Path, out: Path, dtype: str, llama_src: Path) -> None:
    """llama.cpp's own converter, from the llama-cpp-python sdist (vendor/llama.cpp); Q4_0 through its
    quantizer from the bf16 file."""
    if dtype == "int4":
        import llama_cpp

        src = out.with_name(out.name.replace("q4_0", "bf16"))
        if not src.exists():
            convert_to_gguf(model_dir, src, "bfloat16", llama_src)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
        params.nthread = 2
        if llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), params) != 0:
            raise RuntimeError(f"llama_model_quantize failed on {src}")
        return
    root = llama_src / "vendor" / "llama.cpp"
    env = dict(os.environ, PYTHONPATH=f"{root / 'gguf-py'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    subprocess.run([sys.executable, str(root / "convert_hf_to_gguf.py"), str(model_dir), "--outfile", str(out),
                    "--outtype", GGUF_TYPE[dtype]], check=True, env=env, stdout=subprocess.DEVNULL)


# ------------------------------------------------------------------------------------------------
# One runtime in one process (--child): load, time rounds, print one JSON line
# ------------------------------------------------------------------------------------------------

def _proc_gb(path: str, field: str) -> float:
    """A kB field of a /proc file (status, meminfo), in GB."""
    with open(path) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1e6  # kB -> GB
    return float("nan")


def _peak_rss_gb() -> float:
    return _proc_gb("/proc/self/status", "VmHWM")


def mem_available_gb() -> float:
    """MemAvailable: with every runtime of a dtype loaded at once, what is left before the page cache (the
    mapped GGUF and safetensors files) would be evicted under the timed rounds."""
    return _proc_gb("/proc/meminfo", "MemAvailable")


def _streamed_gb(model) -> float:
    """Bytes one decode step reads from memory: every parameter and buffer once (tied ones once) except the
    per-layer-embedding table, of which a token reads one row, and the token-embedding table when a head of
    its own (a quantized one) replaces it in the step (then the step reads one row of it). Where generate used
    the greedy head (gemma4/generation/greedy_head.py), its int8 copy stands in for the head's weight (the
    few rows it reads in full are not counted)."""
    head = getattr(model.lm_head, "weight", None)
    greedy = model.__dict__.get("_greedy_head")
    tied = head is not None and head.data_ptr() == model.model.embed_tokens.weight.data_ptr() and greedy is None
    seen, total = set(), 0
    if greedy is not None:
        seen.add(head.data_ptr())
        total += sum(t.numel() * t.element_size() for t in (greedy.qweight, greedy.scales, greedy.err, greedy.wmax))
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.data_ptr() in seen or "embed_tokens_per_layer" in name or ("embed_tokens" in name and not tied):
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total / 1e9


def gguf_streamed_gb(path: Path) -> float:
    """The same count for a GGUF file: every tensor but the per-layer token embedding (the tied head reads
    token_embd whole)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return sum(int(t.n_bytes) for t in reader.tensors if not t.name.startswith("per_layer_token_embd")) / 1e9


def bandwidth_probe(gb: float = 2.0):
    """A function that measures the memory read bandwidth now, on torch's threads: the median rate of summing a
    float32 tensor of `gb` GB (made once), far past the caches (torch's sum streams at the rate of a
    hand-written AVX-512 read loop here)."""
    x = torch.rand(int(gb * 1e9) // 4)
    x.sum()
    return lambda: read_bandwidth_gbps(x)


def read_bandwidth_gbps(x: torch.Tensor, repeats: int = 7) -> float:
    """GB/s of summing x, median of `repeats` passes."""
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.sum()
        rates.append(x.numel() * 4 / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates)


def _prompt(vocab: int, n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return [2] + torch.randint(3, min(vocab, 4096), (n - 1,), generator=g).tolist()  # bos + real pieces


def child_gemma4(a):
    """Loads the model and warms it up; returns (one round, load seconds, GB a decode step reads)."""
    import gemma4
    from gemma4.generation import full_greedy_head

    t_load = time.perf_counter()
    quant = {}
    if a.dtype in QUANT:
        weights, group = QUANT[a.dtype]
        keep = {"modules_to_not_convert": ["router"]} if a.quantize_head else {}
        quant = {"quantization_config": gemma4.QuantizationConfig(weights=weights, group_size=group, **keep)}
    model = gemma4.AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=DTYPES[a.dtype], **quant).eval()
    t_load = time.perf_counter() - t_load
    ids = torch.tensor([_prompt(model.config.vocab_size, a.prompt_len, a.seed)])
    model.generation_config.eos_token_id = None  # a random model may pick eos: every round runs all its steps

    class Arrivals:  # generate's streamer: the prompt, then each token as it is made
        def __init__(self):
            self.times = []

        def put(self, _tokens):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    def one_round(prompt, new):
        """model.generate, what a user runs (its decode steps take the C++ decoder layers): prefill = the
        prompt's arrival at the streamer to the first token's, decode = the first token's to the last's."""
        arrivals = Arrivals()
        out = model.generate(prompt, max_new_tokens=new, do_sample=False, streamer=arrivals)
        t = arrivals.times
        return t[1] - t[0], t[-1] - t[1], out[0, prompt.shape[1]:].tolist()

    if a.full_head:
        a.contexts.enter_context(full_greedy_head())  # held until the process ends
    one_round(ids[:, :16], 3)  # warm-up (it also builds the greedy head's int8 copy)
    return lambda: one_round(ids, a.new_tokens), t_load, _streamed_gb(model)


def child_llamacpp(a):
    import inspect

    import llama_cpp
    import numpy as np
    from llama_cpp import Llama

    kw = dict(model_path=a.gguf, n_ctx=a.prompt_len + a.new_tokens + 16, n_threads=a.threads,
              n_threads_batch=a.threads, n_batch=a.prompt_len, n_ubatch=a.prompt_len, verbose=False)
    params = inspect.signature(Llama.__init__).parameters
    if "flash_attn" in params:
        kw["flash_attn"] = bool(a.flash_attn)
    elif "flash_attn_type" in params:
        kw["flash_attn_type"] = 1 if a.flash_attn else 0
    t_load = time.perf_counter()
    llm = Llama(**kw)
    t_load = time.perf_counter() - t_load
    ids = _prompt(llm.n_vocab(), a.prompt_len, a.seed)
    n_vocab = llm.n_vocab()

    def last_argmax() -> int:  # logits of the last evaluated token, read from the C API
        ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(n_vocab,))))

    def one_round(prompt, new):
        llm.reset()
        llm._ctx.memory_clear(True) if hasattr(llm._ctx, "memory_clear") else None
        t0 = time.perf_counter()
        llm.eval(prompt)
        tok = last_argmax()
        t1 = time.perf_counter()
        out = [tok]
        for _ in range(new - 1):
            llm.eval([tok])
            tok = last_argmax()
            out.append(tok)
        return t1 - t0, time.perf_counter() - t1, out

    one_round(ids[:16], 3)
    return lambda: one_round(ids, a.new_tokens), t_load, None  # the driver reads the file's bytes a token


REPLY = "@@ "  # marks the child's answers on stdout, where a library may print too


def run_child(a) -> int:
    """--child alone: load, time --rounds rounds, print one JSON line. With --serve: load, then answer the
    driver's commands on stdin, a line each ("round": time one round; "stats": peak RSS, load time, GB a token),
    so that the driver can interleave the rounds of several loaded runtimes."""
    torch.set_num_threads(a.threads)
    if a.child == "bandwidth":
        one_round, t_load, streamed = bandwidth_probe(), 0.0, None
    else:
        a.contexts = contextlib.ExitStack()
        one_round, t_load, streamed = (child_gemma4 if a.child == "gemma4" else child_llamacpp)(a)
    if a.serve:
        print(REPLY + json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            if line.strip() == "round":
                r = one_round()
                reply = {"read_gbps": r} if a.child == "bandwidth" else {"prefill_s": r[0], "decode_s": r[1],
                                                                          "tokens": r[2]}
            else:
                reply = {"peak_rss_gb": _peak_rss_gb(), "load_s": t_load, "streamed_gb": streamed}
            print(REPLY + json.dumps(reply), flush=True)
        return 0
    if a.child == "bandwidth":
        print(json.dumps({"read_gbps": one_round()}))
        return 0
    rounds = [one_round() for _ in range(a.rounds)]
    pre = statistics.median(r[0] for r in rounds)
    dec = statistics.median(r[1] for r in rounds)
    print(json.dumps({"prefill_tok_s": a.prompt_len / pre, "decode_tok_s": (a.new_tokens - 1) / dec,
                      "prefill_s_all": [r[0] for r in rounds], "decode_s_all": [r[1] for r in rounds],
                      "tokens": rounds[0][2], "peak_rss_gb": _peak_rss_gb(), "load_s": t_load,
                      "streamed_gb": streamed}))
    return 0


# ------------------------------------------------------------------------------------------------
# The driver
# ------------------------------------------------------------------------------------------------

class ChildFailed(RuntimeError):
    pass


class Child:
    """One runtime loaded in its own process (--child ... --serve 1), answering the driver a line at a time.
    It loads before the next child starts, and sits idle (blocked on stdin) while another one runs."""

    def __init__(self, args, child: str, dtype: str, model_dir: Path, **extra):
        cmd = [sys.executable, __file__, "--child", child, "--dtype", dtype, "--model-dir", str(model_dir),
               "--prompt-len", str(args.prompt_len), "--new-tokens", str(args.new_tokens),
               "--threads", str(args.threads), "--seed", str(args.seed), "--serve", "1"]
        for k, v in extra.items():
            cmd += [f"--{k.replace('_', '-')}", str(v)]
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                     text=True, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
        self.ask(None)  # {"ready": true} once loaded and warmed up

    def ask(self, command: str | None) -> dict:
        try:
            if command:
                self.proc.stdin.write(command + "\n")
                self.proc.stdin.flush()
            for line in self.proc.stdout:
                if line.startswith(REPLY):
                    return json.loads(line[len(REPLY):])
        except BrokenPipeError:
            pass
        self.proc.wait()
        self.stderr.seek(0)
        tail = " | ".join(self.stderr.read().strip().splitlines()[-3:])
        raise ChildFailed(f"exit status {self.proc.returncode}: {tail}")

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()
        self.proc.wait()
        self.stderr.close()


# The int8 / int4 groups also load our bf16 model: the quantized rows' decode against it, pass by pass.
BF16_REFERENCE = "gemma4 bf16 (reference)"


def interleaved_rounds(args, dtype: str, model_dir: Path, runs: list) -> tuple[dict, list]:
    """Loads each runtime of one dtype, and a bandwidth probe, in its own process (one after another), then runs
    --rounds passes. A pass runs one round of each runtime in turn, alone on the machine (the others wait on
    stdin), in an order rotated by one each pass, with the read bandwidth sampled between rounds: the runtimes
    meet the same minutes of the machine's memory bandwidth, and their ratios can be taken within a pass.
    Returns {runtime: row} (medians over passes, per-pass lists, peak RSS) and the runtimes that failed."""
    failed, children = [], {}

    def fail(name, e):
        print(f"{name:12s} {dtype:9s} FAILED ({e}); row left out", flush=True)
        failed.append({"runtime": name, "dtype": dtype, "error": str(e)})
        children.pop(name, None)

    probe = Child(args, "bandwidth", dtype, model_dir)
    for name, extra in runs:
        try:
            children[name] = Child(args, "gemma4" if name.startswith("gemma4") else "llamacpp",
                                   "bfloat16" if name == BF16_REFERENCE else dtype, model_dir, **extra)
        except ChildFailed as e:  # a crashed runtime costs its row, not the run's other rows
            fail(name, e)
    order = list(children)
    rounds = {name: [] for name in order}
    mem_left = mem_available_gb()
    print(f"{dtype}: {len(order)} runtimes loaded, {mem_left:.1f} GB of memory available", flush=True)
    before = probe.ask("round")["read_gbps"]
    for p in range(args.rounds):
        for name in order[p % len(order):] + order[:p % len(order)]:
            if name not in children:
                continue
            try:
                r = children[name].ask("round")
            except ChildFailed as e:
                fail(name, e)
                continue
            after = probe.ask("round")["read_gbps"]
            rounds[name].append(dict(r, pass_index=p, read_gbps=(before + after) / 2))
            before = after
    probe.close()
    rows = {}
    for name, child in children.items():
        stats = child.ask("stats")
        child.close()
        rs = rounds[name]
        rows[name] = dict(stats, mem_available_gb_all_loaded=mem_left,
                          prefill_tok_s=args.prompt_len / statistics.median(r["prefill_s"] for r in rs),
                          decode_tok_s=(args.new_tokens - 1) / statistics.median(r["decode_s"] for r in rs),
                          read_gbps=statistics.median(r["read_gbps"] for r in rs), tokens=rs[0]["tokens"],
                          **{f"{k}_all": [r[k] for r in rs] for k in ("prefill_s", "decode_s", "read_gbps",
                                                                       "pass_index")})
    return rows, failed


def paired_ratios(row: dict, rows: dict) -> dict:
    """A gemma4 row's speed over llama.cpp's best configuration (the faster of its rows in that pass) and, for
    the quantized rows, its decode over our bf16 model's, as medians over the passes both ran in."""
    def per_pass(r, key):
        return dict(zip(r["pass_index_all"], r[f"{key}_all"]))

    def median_ratio(theirs: dict, ours: dict):
        common = sorted(set(theirs) & set(ours))
        return statistics.median(theirs[p] / ours[p] for p in common) if common else None

    if not row["runtime"].startswith("gemma4"):
        return {}
    out = {}
    llama = [r for name, r in rows.items() if name.startswith("llama.cpp")]
    for key in ("prefill_s", "decode_s"):
        best = {}
        for r in llama:
            for p, t in per_pass(r, key).items():
                best[p] = min(t, best.get(p, t))
        out[f"paired_{key[:-2]}_vs_llamacpp"] = median_ratio(best, per_pass(row, key))
    if BF16_REFERENCE in rows:
        out["paired_decode_vs_gemma4_bf16"] = median_ratio(per_pass(rows[BF16_REFERENCE], "decode_s"),
                                                           per_pass(row, "decode_s"))
    return {k: v for k, v in out.items() if v is not None}


def _llama_cpp_build() -> dict | None:
    """llama-cpp-python's version and the CPU features its llama.cpp was built with (AMX, AVX-512, repack, ...)."""
    try:
        import llama_cpp  # noqa: PLC0415
    except ImportError:
        return None
    return {"version": llama_cpp.__version__, "system_info": llama_cpp.llama_print_system_info().decode().strip()}


def plot(rows):
    def draw(plt):
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
        labels = [f"{r['runtime']} {r['dtype']}" for r in rows]
        for ax, key, title in zip(axes, ("prefill_tok_s", "decode_tok_s", "peak_rss_gb"),
                                  ("prefill tokens/s", "decode tokens/s", "peak RSS (GB)")):
            ax.barh(range(len(rows)), [r[key] for r in rows],
                    color=["tab:blue" if r["runtime"].startswith("gemma4") else "tab:gray" for r in rows])
            ax.set_yticks(range(len(rows)), labels, fontsize=8)
            ax.set_title(title)
            if key == "decode_tok_s":  # the bandwidth bound of each row at the moment it ran
                ax.scatter([r["decode_bound_tok_s"] for r in rows], range(len(rows)), marker="|", s=200,
                           color="black", label="read bandwidth / bytes a token")
                ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        return fig
    return draw


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="gemma-4-E2B")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--llama-src", type=Path, default=Path("/work/llama/llama_cpp_python-0.3.36"),
                    help="the unpacked llama-cpp-python sdist (for convert_hf_to_gguf.py and gguf-py)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the checkpoint and GGUF files here")
    ap.add_argument("--save", action="store_true", default=True)
    # child-process arguments
    ap.add_argument("--child", choices=["gemma4", "llamacpp", "bandwidth"])
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--model-dir", type=Path)
    ap.add_argument("--gguf")
    ap.add_argument("--flash-attn", type=int, default=0)
    ap.add_argument("--quantize-head", type=int, default=0)
    ap.add_argument("--serve", type=int, default=0, help="child: answer the driver's commands (interleaved rounds)")
    ap.add_argument("--full-head", type=int, default=0, help="gemma4 child: greedy steps compute the full logits "
                    "(no int8 greedy head), for A/B runs")
    args = ap.parse_args(argv)
    if args.child:
        return run_child(args)

    torch.set_num_threads(args.threads)
    machine = machine_info(args.threads)
    print(describe(machine), flush=True)
    tmp = None if args.workdir else tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR"))
    work = args.workdir or Path(tmp.name)
    args.model_dir = work / f"{args.preset}-random"
    if not (args.model_dir / "config.json").exists():
        print("writing the random checkpoint ...", flush=True)
        write_random_checkpoint(args.preset, args.model_dir, args.seed)
    rows, tokens, failed, references = [], {}, [], {}
    for dtype in args.dtypes.split(","):
        model_dir = args.model_dir
        if dtype == "float32":  # a float32 file against llama.cpp's F32 GGUF (write_float32_copy)
            model_dir = work / f"{args.preset}-random-f32"
            if not (model_dir / "config.json").exists():
                print("writing the float32 copy of the checkpoint ...", flush=True)
                write_float32_copy(args.model_dir, model_dir)
        gguf = work / f"{args.preset}-{GGUF_TYPE[dtype]}.gguf"
        if not gguf.exists():
            print(f"converting to GGUF {GGUF_TYPE[dtype]} ...", flush=True)
            convert_to_gguf(args.model_dir, gguf, dtype, args.llama_src)
        runs = [("gemma4", {})] + ([("gemma4 qhead", {"quantize_head": 1})] if dtype in QUANT else []) \
            + [("llama.cpp", {"gguf": gguf, "flash_attn": 0}), ("llama.cpp fa", {"gguf": gguf, "flash_attn": 1})]
        if dtype in QUANT:  # the quantized rows against our bf16, in the same minutes
            runs.append((BF16_REFERENCE, {}))
        got, failed_here = interleaved_rounds(args, dtype, model_dir, runs)
        failed += failed_here
        if BF16_REFERENCE in got:
            references[dtype] = {k: got[BF16_REFERENCE][k] for k in ("decode_tok_s", "decode_s_all", "pass_index_all")}
        for name, r in got.items():
            if name == BF16_REFERENCE:
                continue
            if r["streamed_gb"] is None:  # read here: parsing the GGUF's vocabulary would add to the child's RSS
                r["streamed_gb"] = gguf_streamed_gb(Path(dict(runs)[name]["gguf"]))
            bound = r["read_gbps"] / r["streamed_gb"]
            r.update(runtime=name, dtype=dtype, load_avg_1min=os.getloadavg()[0], decode_bound_tok_s=bound,
                     decode_of_bound=r["decode_tok_s"] / bound)
            r.update(paired_ratios(r, got))
            tokens[(name, dtype)] = r["tokens"]
            rows.append(r)
            print(f"{name:12s} {dtype:9s} prefill {r['prefill_tok_s']:7.2f} tok/s  decode {r['decode_tok_s']:6.2f} "
                  f"tok/s ({r['streamed_gb']:.2f} GB a token; bound {bound:.2f} at {r['read_gbps']:.1f} GB/s: "
                  f"{100 * r['decode_of_bound']:.0f}%)  peak RSS {r['peak_rss_gb']:.2f} GB", flush=True)
            for key, ratio in r.items():
                if key.startswith("paired_"):
                    print(f"    {key}: {ratio:.2f}x", flush=True)
    same = None
    if ("gemma4", "float32") in tokens and ("llama.cpp", "float32") in tokens:
        a, b = tokens[("gemma4", "float32")], tokens[("llama.cpp", "float32")]
        same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
        print(f"float32 greedy tokens: gemma4 and llama.cpp agree on the first {same} of {len(a)}")
    print_table(["runtime", "dtype", "prefill tok/s", "decode tok/s", "GB a token", "read GB/s", "decode bound",
                 "peak RSS GB"],
                [[r["runtime"], r["dtype"], f"{r['prefill_tok_s']:.2f}", f"{r['decode_tok_s']:.2f}",
                  f"{r['streamed_gb']:.2f}", f"{r['read_gbps']:.1f}", f"{r['decode_bound_tok_s']:.2f}",
                  f"{r['peak_rss_gb']:.2f}"] for r in rows])
    extra = {"preset": args.preset, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
             "rounds": args.rounds, "fp32_greedy_tokens_agree": same, "failed": failed,
             "llama_cpp": _llama_cpp_build(), "bf16_reference": references, "interleaved_passes": True}
    print("wrote", write_results(f"vs_llamacpp_{args.preset}", rows, machine, plot=plot(rows), extra=extra))
    return 0


if __name__ == "__main__":
    sys.exit(main())
