"""The `gemma4` command line: `python -m gemma4 <command>` (or the `gemma4` script).

    python -m gemma4 generate --model default --prompt "Elizabeth was" [--max-new-tokens 64]
                              [--temperature 0.8] [--top-p 0.95] [--top-k 50] [--seed 0]
                              [--dtype auto] [--device cpu] [--quantize int4|int8] [--chat] [--tokenizer DIR]
    python -m gemma4 chat --model default          # multi-turn; one message a line, /exit or EOF ends
    python -m gemma4 info default|PATH|PRESET       # config, parameters, memory per dtype, KV cache
    python -m gemma4 demo                           # the default model streaming a continuation
    python -m gemma4 quantize MODEL OUT [--weights int4|int8] [--group-size 32|64|128|channel]
                              [--keep NAME ...] [--trained-grid] [--no-experts]
                                                    # quantize while loading; write compressed-tensors

--model takes a checkpoint folder (config.json + safetensors, Hugging Face layout), "default" (the
embedded model, gemma4.default_model_path()) or a preset name (gemma4.PRESETS: random weights).
Generated text streams to stdout; timing goes to stderr. A bad path or argument prints one line on
stderr and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from gemma4.cli_common import (DTYPES, SEED_RANGE, CLIError, load_config, load_model, load_tokenizer, make_generator,
                               number, one_line, print_stats, resolve_model, run_generation, user_errors)

__all__ = ["main", "build_parser", "resolve_model", "model_info", "CLIError"]

MAX_NEW_TOKENS = 2**32  # argparse's bound; generate refuses lengths whose buffers cannot fit in memory
SMALL_MODEL_PARAMS = 50_000_000  # below this, --threads defaults to 1


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit status 2."""

    def error(self, message):
        raise CLIError(f"{self.prog}: {message}")


def _setup(args):
    import torch  # noqa: PLC0415

    if args.threads:
        torch.set_num_threads(args.threads)
    model, kind, where = load_model(args.model, args.dtype, args.device, args.quantize)
    if not args.threads and sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS:
        # A few million parameters: every operator is tiny and threads only add synchronisation
        # (on a busy machine a second thread can make decoding ten times slower).
        torch.set_num_threads(1)
    tokenizer = load_tokenizer(args.tokenizer, kind, where, model.config.vocab_size)
    return model, tokenizer


def cmd_generate(args) -> int:
    model, tokenizer = _setup(args)
    if args.chat:
        messages = [{"role": "user", "content": args.prompt}]
        if args.system:
            messages.insert(0, {"role": "system", "content": args.system})
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        _, stats = run_generation(model, tokenizer, ids, args, lstrip=True)
    else:
        ids = tokenizer(args.prompt, return_tensors="pt")["input_ids"]
        _, stats = run_generation(model, tokenizer, ids, args, echo_prompt=args.prompt)
    print_stats(stats, args.quiet)
    return 0


def _read_line(stream) -> str:
    """One line of user input; bytes that are not UTF-8 become U+FFFD instead of ending the session."""
    raw = getattr(stream, "buffer", None)
    if raw is None:  # a text stream without bytes underneath (e.g. io.StringIO)
        return stream.readline()
    return raw.readline().decode("utf-8", errors="replace")


def cmd_chat(args) -> int:
    """Multi-turn chat: the conversation's token ids and KV cache carry over between turns."""
    import torch  # noqa: PLC0415

    from gemma4.cache import Gemma4Cache  # noqa: PLC0415

    model, tokenizer = _setup(args)
    interactive = sys.stdin.isatty()
    turn_end = tokenizer.convert_tokens_to_ids("<turn|>")
    eos_ids = model.generation_config.eos_token_id
    eos_ids = set([eos_ids] if isinstance(eos_ids, int) else (eos_ids or [])) | {tokenizer.eos_token_id}
    if interactive:
        print("gemma4 chat: type a message and press Enter; /reset starts over, /exit or Ctrl-D ends.",
              file=sys.stderr)

    def start():
        system = [{"role": "system", "content": args.system}] if args.system else []
        return None, Gemma4Cache(model.config), system

    generator = make_generator(args, model)  # one RNG for the session: each turn draws on
    history, cache, system = start()  # history: ids of the conversation so far (1-D tensor) or None
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = _read_line(sys.stdin)
        if not line:  # EOF
            if interactive:
                print()
            return 0
        text = line.rstrip("\n")
        if text.strip() == "/exit":
            return 0
        if text.strip() == "/reset":
            history, cache, system = start()
            print("(conversation reset)", file=sys.stderr)
            continue
        if not text.strip():
            continue
        if history is None:
            ids = tokenizer.apply_chat_template(system + [{"role": "user", "content": text}],
                                                add_generation_prompt=True, return_tensors="pt")[0]
        else:
            # The template renders a finished model turn as "{reply}<turn|>\n": continue the exact ids the
            # model produced (the cache holds them) with the end of its turn and the next user turn.
            rendered = tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
            rendered = rendered.removeprefix(tokenizer.bos_token or "")
            new = tokenizer(rendered, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
            tail = torch.tensor([turn_end] + tokenizer("\n", add_special_tokens=False)["input_ids"])
            ids = torch.cat([history, tail, new])
        print("model> ", end="", flush=True)
        out, stats = run_generation(model, tokenizer, ids[None], args, cache=cache, generator=generator, lstrip=True)
        seq = out.sequences[0].cpu()
        while len(seq) > len(ids) and int(seq[-1]) in eos_ids:  # the end of the model's turn is re-added
            seq = seq[:-1]
        history = seq
        cache = out.past_key_values
        if cache is not None and cache.get_seq_length() > len(history):
            cache.crop(len(history))
        print_stats(stats, args.quiet)


# ------------------------------------------------------------------------------------------ info

def model_info(spec: str) -> dict:
    """Config summary, exact parameter count and memory estimates, computed on the meta device (no weights)."""
    import torch  # noqa: PLC0415

    from gemma4.cache import Gemma4Cache  # noqa: PLC0415
    from gemma4.devices import DTYPE_NAMES  # noqa: PLC0415
    from gemma4.modeling import Gemma4ForCausalLM  # noqa: PLC0415

    kind, where = resolve_model(spec)
    cfg = load_config(kind, where)
    with torch.device("meta"):
        model = Gemma4ForCausalLM(cfg)
    params = {id(p): p for p in model.parameters()}
    n_params = sum(p.numel() for p in params.values())
    n_embed = model.model.embed_tokens.weight.numel()
    if cfg.hidden_size_per_layer_input:
        n_embed += model.model.embed_tokens_per_layer.weight.numel()
    n_buffers = sum(b.numel() for name, b in model.named_buffers() if not name.endswith("inv_freq")
                    and "embed_scale" not in name)
    layers = cfg.layers
    n_sliding = sum(s.is_sliding for s in layers)
    dtypes = {name: DTYPE_NAMES[name] for name in DTYPES if name != "auto"}
    ctx = 1024
    kv_bytes = {k: Gemma4Cache.storage_bytes(cfg, ctx, dtype=d) for k, d in dtypes.items()}
    # each token beyond that: only the full-attention buffers grow (the sliding rings are fixed)
    kv_per_token = {k: Gemma4Cache.storage_bytes(cfg, ctx + 1, dtype=d) - kv_bytes[k] for k, d in dtypes.items()}
    info = {
        "model": spec, "source": where, "kind": kind,
        "config": {
            "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_hidden_layers,
            "sliding_layers": n_sliding, "full_layers": len(layers) - n_sliding,
            "sliding_window": cfg.sliding_window, "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim,
            "global_head_dim": cfg.global_head_dim, "intermediate_size": cfg.intermediate_size,
            "num_kv_shared_layers": cfg.num_kv_shared_layers, "hidden_size_per_layer_input":
                cfg.hidden_size_per_layer_input, "enable_moe_block": cfg.enable_moe_block,
            "num_experts": cfg.num_experts, "top_k_experts": cfg.top_k_experts,
            "attention_k_eq_v": cfg.attention_k_eq_v, "final_logit_softcapping": cfg.final_logit_softcapping,
            "tie_word_embeddings": cfg.tie_word_embeddings,
            "dtype": None if cfg.torch_dtype is None else str(cfg.torch_dtype).removeprefix("torch."),
        },
        "parameters": n_params,
        "embedding_parameters": n_embed,
        "buffers": n_buffers,
        "weights_bytes": {k: (n_params + n_buffers) * d.itemsize for k, d in dtypes.items()},
        "kv_cache_bytes_per_1k_tokens": kv_bytes,
        "kv_cache_bytes_per_token_beyond_windows": kv_per_token,
    }
    if kind == "dir":
        files = [f for f in sorted(os.listdir(where)) if f.endswith(".safetensors")]
        info["checkpoint_files"] = files
        info["checkpoint_bytes"] = sum(os.path.getsize(os.path.join(where, f)) for f in files)
    return info


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} K"


def cmd_info(args) -> int:
    info = model_info(args.model)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    c = info["config"]
    origin = "preset, random weights" if info["kind"] == "preset" else info["source"]
    print(f"{info['model']}: Gemma 4 text decoder ({origin})")
    print(f"  layers        {c['num_hidden_layers']} ({c['sliding_layers']} sliding, window {c['sliding_window']}; "
          f"{c['full_layers']} full), {c['num_kv_shared_layers']} KV-shared")
    print(f"  hidden        {c['hidden_size']}, MLP {c['intermediate_size']}"
          + (f", MoE {c['num_experts']} experts top-{c['top_k_experts']}" if c["enable_moe_block"] else ""))
    print(f"  attention     {c['num_attention_heads']} heads; KV heads {c['num_key_value_heads']}; head_dim "
          f"{c['head_dim']} (full layers {c['global_head_dim']})" + (", K=V" if c["attention_k_eq_v"] else ""))
    print(f"  vocabulary    {c['vocab_size']}" + (f", per-layer embeddings {c['hidden_size_per_layer_input']}"
                                                 if c["hidden_size_per_layer_input"] else "")
          + (", tied head" if c["tie_word_embeddings"] else ""))
    print(f"  dtype         {c['dtype'] or 'not set (float32)'}")
    print(f"  parameters    {info['parameters']:,} ({_count(info['parameters'])}; embeddings "
          f"{_count(info['embedding_parameters'])})")
    w, kv = info["weights_bytes"], info["kv_cache_bytes_per_1k_tokens"]
    kvt = info["kv_cache_bytes_per_token_beyond_windows"]
    print("  memory        " + ", ".join(f"{k} {_size(v)}" for k, v in w.items()) + " (weights)")
    print("  KV cache      " + ", ".join(f"{k} {_size(v)}" for k, v in kv.items())
          + " per 1k tokens (batch 1); then " + ", ".join(f"{_size(v)}" for v in kvt.values())
          + " per further token")
    if "checkpoint_files" in info:
        print(f"  checkpoint    {', '.join(info['checkpoint_files']) or 'no safetensors'} "
              f"({_size(info['checkpoint_bytes'])})")
    return 0


# tokenizer and generation files a checkpoint folder may hold beside the weights: copied as they are
_SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
               "generation_config.json", "tokenizer.model")


def cmd_quantize(args) -> int:
    import shutil  # noqa: PLC0415

    from gemma4.auto import AutoModelForCausalLM  # noqa: PLC0415
    from gemma4.quant import QuantizationConfig  # noqa: PLC0415

    kind, where = resolve_model(args.model)
    if kind != "dir":
        raise CLIError(f"{args.model}: quantize needs a checkpoint folder (a preset has no trained weights)")
    if os.path.exists(args.out) and (not os.path.isdir(args.out) or os.listdir(args.out)):
        raise CLIError(f"{args.out}: exists and is not an empty folder")
    group = None if args.group_size == "channel" else "default" if args.group_size is None else int(args.group_size)
    try:
        qconfig = QuantizationConfig(weights=args.weights, group_size=group, quantize_experts=not args.no_experts,
                                     trained_grid=args.trained_grid,
                                     **({"modules_to_not_convert": args.keep} if args.keep else {}))
    except ValueError as e:
        raise CLIError(f"quantize: {one_line(e)}") from None
    model = AutoModelForCausalLM.from_pretrained(where, dtype=args.dtype, quantization_config=qconfig,
                                                 progress=not args.quiet)
    model.save_pretrained(args.out)
    for name in _SIDE_FILES:
        if os.path.isfile(os.path.join(where, name)):
            shutil.copyfile(os.path.join(where, name), os.path.join(args.out, name))

    def folder_bytes(d):
        return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".safetensors"))

    before, after = folder_bytes(where), folder_bytes(args.out)
    print(f"{args.out}: {args.weights} (group {qconfig.group_size or 'per channel'}) compressed-tensors checkpoint, "
          f"{_size(after)} of weights (from {_size(before)})")
    return 0


def cmd_demo(args) -> int:
    from gemma4 import demo  # noqa: PLC0415

    return demo.main(args=args)


# ---------------------------------------------------------------------------------------- parser

def _add_model_args(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    p.add_argument("--model", default="default",
                   help="checkpoint folder, 'default' (the embedded model) or a preset name (random weights)")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the model's; else the default model's)")
    p.add_argument("--max-new-tokens", type=number(int, 1, MAX_NEW_TOKENS), default=max_new_tokens,
                   help=f"tokens to generate (default {max_new_tokens})")
    p.add_argument("--temperature", type=number(float, 0.0),
                   help="sampling temperature; 0 = greedy (default: the model's generation_config)")
    p.add_argument("--top-p", type=number(float, 0.0, 1.0, low_open=True),
                   help="nucleus sampling mass (default: generation_config)")
    p.add_argument("--top-k", type=number(int, 0),
                   help="sample among the k most likely (default: generation_config)")
    p.add_argument("--greedy", action="store_true", help="greedy decoding (same as --temperature 0)")
    p.add_argument("--seed", type=number(int, *SEED_RANGE),
                   help="seed of the sampling draws (same seed, same text)")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="model dtype (default: the checkpoint's)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--quantize", choices=("int4", "int8"),
                   help="quantize the weights while loading (int4: groups of 32; int8: per channel; docs/quantization.md)")
    p.add_argument("--threads", type=number(int, 1),
                   help="torch CPU threads (default: 1 for models under 50 M parameters, else torch's default)")
    p.add_argument("--system", help="system prompt (chat)")
    p.add_argument("--quiet", action="store_true", help="no timing line on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m gemma4", description="Gemma 4 language models on gemma4's native operators.",
                     epilog="python -m gemma4 <command> --help for each command's options")
    sub = parser.add_subparsers(dest="command", metavar="<command>")

    p = sub.add_parser("generate", help="continue a prompt (streams the text)",
                       description="Generate text from a prompt, streamed to stdout; timing on stderr.")
    p.add_argument("--prompt", required=True, help="the prompt text")
    p.add_argument("--chat", action="store_true",
                   help="send the prompt as a user message through the chat template; print the reply")
    _add_model_args(p, 64)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="multi-turn chat through the chat template (stdin lines)",
                       description="Chat with a model: each stdin line is a user message; the reply streams "
                                   "to stdout after 'model> '. /reset starts over; /exit or end of input ends.")
    _add_model_args(p, 128)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("info", help="config summary, parameter count, memory per dtype, KV cache size",
                       description="Summarise a model without loading its weights.")
    p.add_argument("model", help="checkpoint folder, config.json, 'default' or a preset name")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("quantize", help="quantize a checkpoint while loading it; write compressed-tensors",
                       description="Read a checkpoint folder tensor by tensor, quantize its linear weights "
                                   "(docs/quantization.md) and write a compressed-tensors pack-quantized "
                                   "checkpoint that gemma4, transformers and vLLM load; tokenizer files are copied.")
    p.add_argument("model", help="checkpoint folder (config.json + safetensors) or 'default'")
    p.add_argument("out", help="output folder (new or empty)")
    p.add_argument("--weights", choices=("int4", "int8"), default="int4", help="weight format (default int4)")
    p.add_argument("--group-size", choices=("32", "64", "128", "channel"),
                   help="scale group along K, or 'channel' for one scale per row (default: int4 32, int8 channel)")
    p.add_argument("--keep", nargs="+", metavar="NAME",
                   help="module names (or suffixes) left unquantized (default: lm_head and router; embeddings never are)")
    p.add_argument("--trained-grid", action="store_true",
                   help="int4 on a quantization-aware-trained checkpoint: recover each group's trained step")
    p.add_argument("--no-experts", action="store_true", help="leave the MoE expert banks unquantized")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="activation dtype (default: the checkpoint's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_quantize)

    from gemma4 import demo  # noqa: PLC0415

    p = sub.add_parser("demo", help="the default model streaming a continuation, with tokens/s",
                       description=demo.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_arguments(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if getattr(args, "func", None) is None:  # no command: say what there is
            parser.print_help()
            return 0
        return args.func(args)
    except user_errors() as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. piped into `head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
