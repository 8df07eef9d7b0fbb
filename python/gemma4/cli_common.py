"""What the command line (cli.py) and the demo (demo.py) share: resolving --model and --tokenizer, loading
them, argument validation, and streaming one generation with timing.

Errors a user can fix are CLIError: the command line prints them as one line and exits with status 2.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

__all__ = ["CLIError", "user_errors", "one_line", "number", "resolve_model", "load_config", "load_model",
           "load_tokenizer", "sampling_kwargs", "make_generator", "run_generation", "print_stats"]

SEED_RANGE = (0, 2**64 - 1)  # what torch.Generator.manual_seed accepts (non-negative part)
DTYPES = ("auto", "float32", "bfloat16", "float16")  # --dtype choices


class CLIError(Exception):
    """A user error: printed as one line on stderr, exit status 2."""


# ------------------------------------------------------------------------------------ errors and arguments

def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean a bad path, file or argument (reported in one line, exit status 2)."""
    from gemma4.errors import Gemma4Error  # noqa: PLC0415
    from gemma4.tokenization import TokenizerLoadError  # noqa: PLC0415

    return (CLIError, Gemma4Error, TokenizerLoadError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
            PermissionError)


def one_line(error: BaseException) -> str:
    """The first line of an error's message (its class name when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def number(kind: type = int, low: float | None = None, high: float | None = None, low_open: bool = False):
    """argparse `type=` for a number of `kind` (int or float) in [low, high] ((low, high] when low_open).

    The message names what was expected, e.g. "expected an integer in [1, 4294967296], got '1e8'".
    """
    what = "an integer" if kind is int else "a number"
    bounds = ("(" if low_open else "[") + ("-inf" if low is None else f"{low:g}" if kind is float else str(low)) + \
        ", " + ("inf" if high is None else f"{high:g}" if kind is float else str(high)) + "]"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} in {bounds}, got {text!r}") from None
        if kind is float and not math.isfinite(value) or low is not None and (value <= low if low_open
                                                                              else value < low) \
                or high is not None and value > high:
            raise argparse.ArgumentTypeError(f"expected {what} in {bounds}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


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


def load_config(kind: str, where: str):
    if kind == "preset":
        from gemma4.presets import get_preset  # noqa: PLC0415

        return get_preset(where)
    from gemma4.config import Gemma4Config  # noqa: PLC0415

    return Gemma4Config.from_pretrained(where)


def load_model(spec: str, dtype: str | None = "auto", device: str | None = None, quantize: str | None = None):
    """The model for --model (checkpoint weights, or random weights for a preset), in eval mode;
    --quantize int4|int8 quantizes it (while loading a checkpoint) with QuantizationConfig's defaults."""
    from gemma4.devices import parse_device, parse_dtype  # noqa: PLC0415

    kind, where = resolve_model(spec)
    try:
        device = parse_device(device, "--device")
        dtype = parse_dtype(dtype, "--dtype")
    except ValueError as e:
        raise CLIError(str(e)) from None
    qconfig = None
    if quantize:
        from gemma4.quant import QuantizationConfig  # noqa: PLC0415

        qconfig = QuantizationConfig(weights=quantize)
    if kind == "preset":
        from gemma4.modeling.random_model import build_random_model  # noqa: PLC0415

        print(f"note: preset {where!r} has RANDOM weights", file=sys.stderr)
        model = build_random_model(where, dtype, device=device)
        if qconfig is not None:
            from gemma4.quant import quantize as quantize_model  # noqa: PLC0415

            quantize_model(model, qconfig)
        return model, kind, where
    from gemma4.auto import AutoModelForCausalLM  # noqa: PLC0415

    try:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, device=device, progress=False,
                                                     quantization_config=qconfig)
    except ValueError as e:  # e.g. --quantize on an already quantized checkpoint
        raise CLIError(f"{spec}: {one_line(e)}") from None
    return model.eval(), kind, where


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


def print_stats(stats: dict, quiet: bool) -> None:
    if quiet:
        return
    print(f"[{stats['new_tokens']} tokens in {stats['seconds']:.2f} s: {stats['tokens_per_s']:.1f} tokens/s; "
          f"prompt {stats['prompt_tokens']} tokens, first token after {stats['first_token_s'] * 1e3:.0f} ms, "
          f"then {stats['decode_tokens_per_s']:.1f} tokens/s]", file=sys.stderr, flush=True)

