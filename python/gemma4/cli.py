"""The `gemma4` command line: `python -m gemma4 <command>` (or the `gemma4` script).

    python -m gemma4 generate --model default --prompt "Elizabeth was" [--max-new-tokens 64]
                              [--temperature 0.8] [--top-p 0.95] [--top-k 50] [--seed 0]
                              [--dtype auto] [--device cpu] [--chat] [--tokenizer DIR]
    python -m gemma4 chat --model default          # multi-turn; one message a line, /exit or EOF ends
    python -m gemma4 info default|PATH|PRESET       # config, parameters, memory per dtype, KV cache
    python -m gemma4 demo                           # the default model streaming a continuation

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
import time

__all__ = ["main", "build_parser", "resolve_model", "CLIError"]

DTYPES = ("auto", "float32", "bfloat16", "float16")
SMALL_MODEL_PARAMS = 50_000_000  # below this, --threads defaults to 1


class CLIError(Exception):
    """A user error: printed as one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit status 2."""

    def error(self, message):
        raise CLIError(f"{self.prog}: {message}")


# ------------------------------------------------------------------------------------ model specs

def resolve_model(spec: str) -> tuple[str, str]:
    """'default' | folder | config.json | preset name -> ("dir", folder) or ("preset", name)."""
    from gemma4.default_model import DEFAULT_MODEL_NAME, default_model_path  # noqa: PLC0415

    if spec == DEFAULT_MODEL_NAME:
        return "dir", default_model_path()
    if os.path.isdir(spec):
        if not os.path.isfile(os.path.join(spec, "config.json")):
            raise CLIError(f"{spec}: no config.json in this folder (not a model checkpoint)")
        return "dir", spec
    if os.path.isfile(spec):
        if os.path.basename(spec) == "config.json":
            return "dir", os.path.dirname(os.path.abspath(spec))
        raise CLIError(f"{spec}: is a file; give the checkpoint folder (the one holding config.json)")
    from gemma4.presets import PRESETS  # noqa: PLC0415

    if spec in PRESETS:
        return "preset", spec
    raise CLIError(f"{spec}: no such model folder, and not a preset name ('default', or one of: "
                   f"{', '.join(PRESETS)})")


def _load_config(kind: str, where: str):
    if kind == "preset":
        from gemma4.presets import get_preset  # noqa: PLC0415

        return get_preset(where)
    from gemma4.config import Gemma4Config  # noqa: PLC0415

    return Gemma4Config.from_pretrained(where)


def _torch_dtype(name: str | None):
    import torch  # noqa: PLC0415

    return None if name in (None, "auto") else getattr(torch, name)


def load_model(spec: str, dtype: str | None = "auto", device: str | None = None):
    """The model for --model (checkpoint weights, or random weights for a preset), in eval mode."""
    kind, where = resolve_model(spec)
    device = None if device is None else _device(device)
    if kind == "preset":
        from gemma4.demo import build_random_model  # noqa: PLC0415

        print(f"note: preset {where!r} has RANDOM weights", file=sys.stderr)
        model = build_random_model(where, _torch_dtype(dtype))
        if device is not None and device.type != "cpu":
            model = model.to(device)
        return model.eval(), kind, where
    from gemma4.auto import AutoModelForCausalLM  # noqa: PLC0415

    model = AutoModelForCausalLM.from_pretrained(where, dtype=_torch_dtype(dtype), device=device, progress=False)
    return model.eval(), kind, where


def _device(device: str):
    """--device as a torch.device; CLIError for a name torch does not know or a device that is not there."""
    import torch  # noqa: PLC0415

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise CLIError(f"--device {device}: not a device name (cpu, cuda, cuda:N or auto)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device {device}: CUDA is not available here (torch {torch.__version__})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CLIError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise CLIError(f"--device {device}: gemma4 runs on cpu or cuda")
    return dev


def load_tokenizer(spec: str | None, kind: str, where: str, vocab_size: int):
    """--tokenizer, else the model folder's tokenizer, else the default model's when its ids fit the model."""
    from gemma4.default_model import DEFAULT_MODEL_NAME, default_model_path  # noqa: PLC0415
    from gemma4.tokenization import AutoTokenizer  # noqa: PLC0415

    if spec is not None:
        path = default_model_path() if spec == DEFAULT_MODEL_NAME else spec
    elif kind == "dir" and os.path.isfile(os.path.join(where, "tokenizer.json")):
        path = where
    else:
        path = default_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    if len(tok) > vocab_size:
        origin = "" if spec is not None or path != default_model_path() else (
            f"{where} has no tokenizer.json and the default model's tokenizer was tried: ")
        raise CLIError(f"{origin}tokenizer {path} has {len(tok)} tokens, more than the model's vocabulary "
                       f"({vocab_size}); pass --tokenizer DIR")
    return tok


# ------------------------------------------------------------------------------------ generation

class _VocabLimit:
    """Logits processor: the model's vocabulary is larger than the tokenizer's; never emit the extra ids."""

    def __init__(self, n: int):
        self.n = n

    def __call__(self, input_ids, scores):
        scores[:, self.n:] = float("-inf")
        return scores


def _timed_streamer(tokenizer, lstrip: bool = False):
    from gemma4.generation import TextStreamer  # noqa: PLC0415

    class TimedStreamer(TextStreamer):
        """TextStreamer that also records when the prompt went in and when each new token came out."""

        def __init__(self):
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
            self.t_start = time.perf_counter()
            self.t_first = None
            self.n_new = 0
            self.prompt_len = 0
            self.printed = False

        def put(self, value):
            if self.next_tokens_are_prompt:
                self.prompt_len = int(value.shape[-1])
            else:
                self.n_new += 1
                if self.t_first is None:
                    self.t_first = time.perf_counter()
            super().put(value)

        def on_finalized_text(self, text, stream_end=False):
            if lstrip and not self.printed:
                text = text.lstrip()
                self.printed = bool(text)
            super().on_finalized_text(text, stream_end)

        def stats(self) -> dict:
            end = time.perf_counter()
            total = end - self.t_start
            first = (self.t_first or end) - self.t_start
            decode = end - (self.t_first or end)
            return {"prompt_tokens": self.prompt_len, "new_tokens": self.n_new, "seconds": total,
                    "first_token_s": first,
                    "tokens_per_s": self.n_new / total if total > 0 else 0.0,
                    "decode_tokens_per_s": (self.n_new - 1) / decode if self.n_new > 1 and decode > 0 else 0.0}

    return TimedStreamer()


def sampling_kwargs(args, model) -> dict:
    """generate() keyword arguments from --temperature/--top-p/--top-k (unset: the model's generation_config)."""
    kw = {"max_new_tokens": args.max_new_tokens}
    if args.greedy or (args.temperature is not None and args.temperature == 0):
        kw["do_sample"] = False
        return kw
    if args.temperature is not None:
        kw["temperature"] = args.temperature
        kw["do_sample"] = True
    if args.top_p is not None:
        kw["top_p"] = args.top_p
    if args.top_k is not None:
        kw["top_k"] = args.top_k
    return kw


def make_generator(args, model):
    """torch.Generator seeded with --seed (None: the global RNG)."""
    import torch  # noqa: PLC0415

    if args.seed is None:
        return None
    return torch.Generator(device=model.device).manual_seed(args.seed)


def run_generation(model, tokenizer, input_ids, args, echo_prompt: str | None = None, cache=None, generator=None,
                   lstrip: bool = False):
    """Streams the continuation of input_ids [1, T] to stdout; returns (sequences [1, T+N], stats).

    generator: the sampling RNG (default: a new one from --seed). lstrip: drop the reply's leading spaces.
    """
    import torch  # noqa: PLC0415

    from gemma4.generation import LogitsProcessorList  # noqa: PLC0415

    kwargs = sampling_kwargs(args, model)
    generator = generator if generator is not None else make_generator(args, model)
    if generator is not None:
        kwargs["generator"] = generator
    if model.config.vocab_size > len(tokenizer):
        kwargs["logits_processor"] = LogitsProcessorList([_VocabLimit(len(tokenizer))])
    if cache is not None:
        kwargs["past_key_values"] = cache
        kwargs["return_dict_in_generate"] = True
    streamer = _timed_streamer(tokenizer, lstrip)
    if echo_prompt:
        print(echo_prompt, end="", flush=True)
    with torch.inference_mode():
        out = model.generate(input_ids.to(model.device), streamer=streamer, **kwargs)
    return out, streamer.stats()


def _print_stats(stats: dict, quiet: bool) -> None:
    if quiet:
        return
    print(f"[{stats['new_tokens']} tokens in {stats['seconds']:.2f} s: {stats['tokens_per_s']:.1f} tokens/s; "
          f"prompt {stats['prompt_tokens']} tokens, first token after {stats['first_token_s'] * 1e3:.0f} ms, "
          f"then {stats['decode_tokens_per_s']:.1f} tokens/s]", file=sys.stderr, flush=True)


def _setup(args):
    import torch  # noqa: PLC0415

    if args.threads:
        torch.set_num_threads(args.threads)
    model, kind, where = load_model(args.model, args.dtype, args.device)
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
    _print_stats(stats, args.quiet)
    return 0


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
        line = sys.stdin.readline()
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
        _print_stats(stats, args.quiet)


# ------------------------------------------------------------------------------------------ info

def model_info(spec: str) -> dict:
    """Config summary, exact parameter count and memory estimates, computed on the meta device (no weights)."""
    import torch  # noqa: PLC0415

    from gemma4.modeling import Gemma4ForCausalLM  # noqa: PLC0415

    kind, where = resolve_model(spec)
    cfg = _load_config(kind, where)
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
    bytes_per = {"float32": 4, "bfloat16": 2, "float16": 2}
    ctx = 1024

    def kv_elems(tokens: int) -> int:  # K and V elements held for `tokens` tokens of context, batch 1
        total = 0
        for s in layers:
            if s.cache_index is None:
                continue  # KV-shared layers read their source layer's K/V
            slots = min(tokens, s.window) if s.is_sliding else tokens
            total += 2 * s.num_kv_heads * s.head_dim * slots
        return total

    per_token_full = sum(2 * s.num_kv_heads * s.head_dim for s in layers
                         if s.cache_index is not None and not s.is_sliding)
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
        "weights_bytes": {k: (n_params + n_buffers) * b for k, b in bytes_per.items()},
        "kv_cache_bytes_per_1k_tokens": {k: kv_elems(ctx) * b for k, b in bytes_per.items()},
        "kv_cache_bytes_per_token_beyond_windows": {k: per_token_full * b for k, b in bytes_per.items()},
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


def cmd_demo(args) -> int:
    from gemma4 import demo  # noqa: PLC0415

    return demo.main(args=args)


# ---------------------------------------------------------------------------------------- parser

def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return v


def _nonneg_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {s!r}")
    return v


def _temperature(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {s!r}") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 (0 = greedy), got {s!r}")
    return v


def _probability(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {s!r}") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {s!r}")
    return v


def _add_model_args(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    p.add_argument("--model", default="default",
                   help="checkpoint folder, 'default' (the embedded model) or a preset name (random weights)")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the model's; else the default model's)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=max_new_tokens,
                   help=f"tokens to generate (default {max_new_tokens})")
    p.add_argument("--temperature", type=_temperature,
                   help="sampling temperature; 0 = greedy (default: the model's generation_config)")
    p.add_argument("--top-p", type=_probability, help="nucleus sampling mass (default: generation_config)")
    p.add_argument("--top-k", type=_nonneg_int, help="sample among the k most likely (default: generation_config)")
    p.add_argument("--greedy", action="store_true", help="greedy decoding (same as --temperature 0)")
    p.add_argument("--seed", type=int, help="seed of the sampling draws (same seed, same text)")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="model dtype (default: the checkpoint's)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--threads", type=_positive_int,
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

    from gemma4 import demo  # noqa: PLC0415

    p = sub.add_parser("demo", help="the default model streaming a continuation, with tokens/s",
                       description=demo.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_arguments(p)
    p.set_defaults(func=cmd_demo)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean a bad path, file or argument (reported in one line, exit status 2)."""
    errors: list[type[BaseException]] = [CLIError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                                         PermissionError]
    from gemma4.errors import Gemma4Error  # noqa: PLC0415

    errors.append(Gemma4Error)
    try:
        from gemma4.tokenization import TokenizerLoadError  # noqa: PLC0415

        errors.append(TokenizerLoadError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if getattr(args, "func", None) is None:  # no command: say what there is
            parser.print_help()
            return 0
        return args.func(args)
    except _user_errors() as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. piped into `head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
