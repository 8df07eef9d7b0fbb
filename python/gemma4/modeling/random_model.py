"""A Gemma 4 model with random weights, built fast: for benchmarks, the command line's preset models, demos
and tests that need a model but not transformers' exact initialisation."""
from __future__ import annotations

import torch

from gemma4.presets import get_preset

from .init import random_init_
from .model import Gemma4ForCausalLM

__all__ = ["build_random_model", "DEFAULT_PRESET"]

DEFAULT_PRESET = "small-e2b"  # build_random_model's default (benchmarks/bench_model_cpu.py)


def build_random_model(preset: str = DEFAULT_PRESET, dtype: torch.dtype | None = None, seed: int = 0,
                       device: torch.device | str = "cpu"):
    """Gemma4ForCausalLM for a preset (name or Gemma4Config), allocated without its (slow) default init,
    then random_init_ (on the CPU, so that a seed gives the same weights everywhere), then moved to device.

    dtype None: the preset's own dtype (small-e2b: bfloat16), else float32.
    """
    config = get_preset(preset) if isinstance(preset, str) else preset
    dtype = dtype or config.torch_dtype or torch.float32
    with torch.device("meta"):  # no memory and no init yet; to_empty allocates, keeping ties
        model = Gemma4ForCausalLM(config)
    model = model.to(dtype).to_empty(device="cpu")  # dtype first: allocate once, at the final size
    model.tie_weights()
    model.init_non_persistent_buffers()  # derived tables (RoPE frequencies, ...) that to_empty left unset
    model = random_init_(model, seed).eval()
    return model if torch.device(device).type == "cpu" else model.to(device)
