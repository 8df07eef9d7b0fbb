"""`make demo` / `python -m gemma4.demo`: the embedded default model writes a continuation, streamed.

Loads gemma4's default model (a 3 M-parameter Gemma 4 trained on Jane Austen's novels, see
docs/default_model.md) with AutoModelForCausalLM and its tokenizer with AutoTokenizer, then
model.generate streams the text through a TextStreamer and the speed is printed.

    python -m gemma4.demo                                   # sampled (seed 0), 80 new tokens
    python -m gemma4.demo --prompt "Emma could not" --greedy --max-new-tokens 40
    python -m gemma4.demo --model path/to/checkpoint --threads 2
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

DEFAULT_PROMPT = "It was a fine morning, and Elizabeth"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_ONE_LIKE = ("norm.weight", "router.scale", "per_expert_scale", "layer_scalar")  # scales, initialised near 1
_TILE = 1_000_003  # elements of fresh noise repeated over a large tensor (a prime: no row alignment)
DEFAULT_PRESET = "small-e2b"  # build_random_model's default (benchmarks/bench_model_cpu.py)


@torch.no_grad()
def random_init_(model: torch.nn.Module, seed: int = 0, std: float = 0.02) -> torch.nn.Module:
    """Random weights, fast: N(0, std) for matrices, 1 + N(0, 0.05) for norms and scales.

    Tensors larger than about a million elements repeat one block of fresh noise rather than drawing
    every element (drawing 600 M normals takes ~10 s on two cores; copying a block takes 0.2 s). The
    scales are perturbed away from 1 so that no formula hides behind a weight of one when two
    implementations are compared on these weights.
    """
    gen = torch.Generator().manual_seed(seed)
    seen: set[int] = set()
    tensors = [*model.named_parameters(), *((n, b) for n, b in model.named_buffers() if n.endswith("layer_scalar"))]
    for name, t in tensors:
        if id(t) in seen or not t.is_floating_point():  # tied weights are filled once
            continue
        seen.add(id(t))
        if name.endswith(_ONE_LIKE):
            noise = 1.0 + 0.05 * torch.randn(t.shape, generator=gen)
            t.copy_(noise)
            continue
        flat = t.view(-1)
        n = flat.numel()
        block = torch.randn(min(n, _TILE), generator=gen).mul_(std).to(t.dtype)
        full = n // block.numel()
        flat[: full * block.numel()].view(full, block.numel()).copy_(block)
        rest = n - full * block.numel()
        if rest:
            flat[full * block.numel():].copy_(block[:rest])
    return model


def build_random_model(preset: str = DEFAULT_PRESET, dtype: torch.dtype | None = None, seed: int = 0):
    """Gemma4ForCausalLM for a preset, allocated without its (slow) default init, then random_init_.

    dtype None: the preset's own dtype (small-e2b: bfloat16), else float32.
    """
    from gemma4.modeling import Gemma4ForCausalLM  # noqa: PLC0415
    from gemma4.presets import get_preset  # noqa: PLC0415

    config = get_preset(preset)
    dtype = dtype or config.torch_dtype or torch.float32
    with torch.device("meta"):  # no memory and no init yet; to_empty allocates, keeping ties
        model = Gemma4ForCausalLM(config)
    model = model.to(dtype).to_empty(device="cpu")  # dtype first: allocate once, at the final size
    model.tie_weights()
    return random_init_(model, seed).eval()


def _count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def run(model: str = "default", prompt: str = DEFAULT_PROMPT, max_new_tokens: int = 80, seed: int | None = 0,
        threads: int | None = 1, dtype: str = "auto", greedy: bool = False) -> dict:
    """Load, stream one continuation, print the speed; returns the numbers it printed."""
    import gemma4  # noqa: PLC0415  (loads the operators; fails with a 'rebuild' message if stale)
    from gemma4 import cli  # noqa: PLC0415

    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    net, kind, where = cli.load_model(model, dtype)
    tokenizer = cli.load_tokenizer(None, kind, where, net.config.vocab_size)
    load_s = time.perf_counter() - t0
    cfg = net.config
    n_full = sum(not spec.is_sliding for spec in cfg.layers)
    what = "the embedded default model (trained on Jane Austen's novels)" if model == "default" else where
    print(f"gemma4 demo: {what}")
    print(f"  Gemma 4 text decoder: {cfg.num_hidden_layers} layers ({cfg.num_hidden_layers - n_full} sliding, "
          f"window {cfg.sliding_window}; {n_full} full; {cfg.num_kv_shared_layers} KV-shared), hidden "
          f"{cfg.hidden_size}, per-layer embeddings {cfg.hidden_size_per_layer_input}, vocabulary {cfg.vocab_size}; "
          f"{_count_params(net) / 1e6:.2f} M parameters, {str(net.dtype).removeprefix('torch.')}")
    info = gemma4.build_info
    print(f"  operators: gemma4 CPU kernels ({info.get('cpu_baseline', '?')}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); loaded in {load_s:.2f} s")
    gc = net.generation_config
    mode = ("greedy" if greedy else f"sampling: temperature {gc.temperature}, top-k {gc.top_k}, top-p {gc.top_p}, "
            f"seed {seed}")
    print(f"  model.generate + TextStreamer, {max_new_tokens} new tokens, {mode}")
    print("-" * 72)
    args = argparse.Namespace(max_new_tokens=max_new_tokens, greedy=greedy, temperature=None, top_p=None,
                              top_k=None, seed=seed)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    out, stats = cli.run_generation(net, tokenizer, ids, args, echo_prompt=prompt)
    print("-" * 72)
    print(f"{stats['new_tokens']} tokens in {stats['seconds']:.2f} s: {stats['tokens_per_s']:.0f} tokens/s "
          f"(prompt {stats['prompt_tokens']} tokens, first token after {stats['first_token_s'] * 1e3:.0f} ms, "
          f"then {stats['decode_tokens_per_s']:.0f} tokens/s)")
    text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    return {"text": text, "load_s": load_s, **stats}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default",
                        help="'default' (the embedded model), a checkpoint folder or a preset name (random weights)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"prompt text (default {DEFAULT_PROMPT!r})")
    parser.add_argument("--max-new-tokens", type=int, default=80, help="tokens to generate (default 80)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling draws (default 0)")
    parser.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    parser.add_argument("--dtype", choices=["auto", *sorted(_DTYPES)], default="auto",
                        help="model dtype (default: the checkpoint's; the default model: float32)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: a 3 M-parameter model decodes fastest on one; 0: torch's)")


def main(argv=None, args: argparse.Namespace | None = None) -> int:
    if args is None:
        parser = argparse.ArgumentParser(prog="python -m gemma4.demo", description=__doc__,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        add_arguments(parser)
        args = parser.parse_args(argv)
    from gemma4.cli import CLIError  # noqa: PLC0415

    try:
        run(args.model, args.prompt, args.max_new_tokens, args.seed, args.threads or None, args.dtype, args.greedy)
    except CLIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
