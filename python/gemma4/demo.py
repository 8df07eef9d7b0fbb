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

from gemma4.cli_common import (DTYPES, SEED_RANGE, load_model, load_tokenizer, number, one_line, run_generation,
                               user_errors)

DEFAULT_PROMPT = "It was a fine morning, and Elizabeth"

def _count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def run(model: str = "default", prompt: str = DEFAULT_PROMPT, max_new_tokens: int = 80, seed: int | None = 0,
        threads: int | None = 1, dtype: str = "auto", greedy: bool = False) -> dict:
    """Load, stream one continuation, print the speed; returns the numbers it printed."""
    import gemma4  # noqa: PLC0415  (loads the operators; fails with a 'rebuild' message if stale)

    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    net, kind, where = load_model(model, dtype)
    tokenizer = load_tokenizer(None, kind, where, net.config.vocab_size)
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
    out, stats = run_generation(net, tokenizer, ids, args, echo_prompt=prompt)
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
    parser.add_argument("--max-new-tokens", type=number(int, 1, 2**32), default=80,
                        help="tokens to generate (default 80)")
    parser.add_argument("--seed", type=number(int, *SEED_RANGE), default=0,
                        help="seed of the sampling draws (default 0)")
    parser.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="model dtype (default: the checkpoint's; the default model: float32)")
    parser.add_argument("--threads", type=number(int, 0), default=1,
                        help="torch threads (default 1: a 3 M-parameter model decodes fastest on one; 0: torch's)")


def main(argv=None, args: argparse.Namespace | None = None) -> int:
    if args is None:
        parser = argparse.ArgumentParser(prog="python -m gemma4.demo", description=__doc__,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        add_arguments(parser)
        args = parser.parse_args(argv)
    try:
        run(args.model, args.prompt, args.max_new_tokens, args.seed, args.threads or None, args.dtype, args.greedy)
    except user_errors() as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
