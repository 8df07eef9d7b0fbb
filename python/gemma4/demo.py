"""A quick look at the model running on our operators: `python -m gemma4.demo` (or `make demo`).

Builds a small Gemma 4 model from a preset with random weights, runs one forward pass over a short
prompt of token ids and prints the five most likely next tokens and the time it took. The weights
are random until a trained default model ships, so the predictions carry no meaning; the point is
the path: config -> modules -> our C++ operators -> logits.

    python -m gemma4.demo                        # preset small-e2b (E2B widths, 5 layers), bfloat16
    python -m gemma4.demo --preset tiny-e2b --dtype float32 --threads 2
"""
from __future__ import annotations

import argparse
import time

import torch

DEFAULT_PRESET = "small-e2b"
DEFAULT_PROMPT = [2, 818, 5279, 529, 2134, 563, 496, 2146]  # <bos> and seven arbitrary ids

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_ONE_LIKE = ("norm.weight", "router.scale", "per_expert_scale", "layer_scalar")  # scales, initialised near 1
_TILE = 1_000_003  # elements of fresh noise repeated over a large tensor (a prime: no row alignment)


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


def run(preset: str = DEFAULT_PRESET, dtype: str | None = None, threads: int | None = 2, seed: int = 0,
        prompt: list[int] | None = None, top_k: int = 5) -> dict:
    """Build, run one forward pass, print the top-k next tokens; returns what it printed as data."""
    import gemma4  # noqa: PLC0415  (loads the operators; fails with a 'rebuild' message if stale)

    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = build_random_model(preset, _DTYPES[dtype] if dtype else None, seed)
    build_s = time.perf_counter() - t0
    cfg = model.config
    dtype = str(model.dtype).removeprefix("torch.")
    ids = [i % cfg.vocab_size for i in (prompt or DEFAULT_PROMPT)]
    input_ids = torch.tensor([ids])  # [1, T]

    n_full = sum(spec.layer_type == "full_attention" for spec in cfg.layers)
    print(f"gemma4 demo: Gemma4ForCausalLM, preset {preset!r}: {cfg.num_hidden_layers} layers "
          f"({cfg.num_hidden_layers - n_full} sliding, {n_full} full), hidden {cfg.hidden_size}, "
          f"vocab {cfg.vocab_size}, {_count_params(model) / 1e6:.0f} M parameters, {dtype}")
    print("  weights are RANDOM (no trained default model yet): the predictions below mean nothing")
    info = gemma4.build_info
    print(f"  operators: gemma4 CPU kernels ({info.get('cpu_baseline', '?')}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; model built in {build_s:.1f} s")
    print(f"prompt token ids: {ids}")

    with torch.inference_mode():
        t0 = time.perf_counter()
        logits = model(input_ids=input_ids, logits_to_keep=1).logits  # [1, 1, V]
        first_ms = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        logits = model(input_ids=input_ids, logits_to_keep=1).logits
        again_ms = (time.perf_counter() - t0) * 1e3
    probs = torch.softmax(logits[0, -1].float(), dim=-1)  # [V]
    top_p, top_id = probs.topk(top_k)
    print(f"forward pass, 1 x {len(ids)} tokens: {first_ms:.1f} ms (first call), {again_ms:.1f} ms (second)")
    print(f"top-{top_k} next tokens:")
    for rank, (i, p) in enumerate(zip(top_id.tolist(), top_p.tolist()), 1):
        print(f"  {rank}. id {i:>6}   p = {p:.5f}")
    return {"preset": preset, "dtype": dtype, "ids": ids, "top_ids": top_id.tolist(), "top_probs": top_p.tolist(),
            "first_ms": first_ms, "second_ms": again_ms, "build_s": build_s}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default=DEFAULT_PRESET, help=f"model preset (default {DEFAULT_PRESET})")
    parser.add_argument("--dtype", choices=sorted(_DTYPES),
                        help="model dtype (default: the preset's, small-e2b: bfloat16; else float32)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2; 0: torch's default)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--prompt", type=lambda s: [int(x) for x in s.replace(",", " ").split()],
                        help="token ids, e.g. '2 818 5279 529'")


def main(argv=None, args: argparse.Namespace | None = None) -> int:
    if args is None:
        parser = argparse.ArgumentParser(prog="python -m gemma4.demo", description=__doc__,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        add_arguments(parser)
        args = parser.parse_args(argv)
    run(args.preset, args.dtype, args.threads or None, args.seed, args.prompt)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
