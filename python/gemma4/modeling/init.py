"""Weight initialisation: transformers' fresh init and a fast random init for benchmarks and demos.

One rule decides which tensors are scales (start at 1) and which are matrices (start at N(0, std)):
`is_scale`. Both initialisers follow it, so adding a new scale to the model means one edit here.
(modeling/random_model.py builds a whole model with random_init_; this module imports no model code.)
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["SCALE_SUFFIXES", "is_scale", "init_weights_", "random_init_"]

# Name endings of the multiplicative scales: RMSNorm weights, the MoE router's input and per-expert
# scales, and the decoder layer's layer_scalar buffer. transformers initialises them to 1.
SCALE_SUFFIXES = ("norm.weight", "router.scale", "per_expert_scale", "layer_scalar")
_SCALE_BUFFERS = ("layer_scalar",)  # buffers that are weights (saved in checkpoints), not derived tables
_TILE = 1_000_003  # elements of fresh noise repeated over a large tensor (a prime: no row alignment)


def is_scale(name: str) -> bool:
    """True for a multiplicative scale (initialised at or near 1), False for a matrix or embedding."""
    return name.endswith(SCALE_SUFFIXES)


def _weights(model: nn.Module):
    """(name, tensor) of every floating-point weight, each shared (tied) tensor once."""
    seen: set[int] = set()
    buffers = ((n, b) for n, b in model.named_buffers() if n.endswith(_SCALE_BUFFERS))
    for name, t in [*model.named_parameters(), *buffers]:
        if id(t) in seen or not t.is_floating_point():
            continue
        seen.add(id(t))
        yield name, t


@torch.no_grad()
def init_weights_(model: nn.Module, std: float = 0.02) -> nn.Module:
    """transformers' fresh init: scales 1, everything else N(0, std)."""
    for name, t in _weights(model):
        if is_scale(name):
            t.fill_(1.0)
        else:
            t.normal_(0.0, std)
    return model


@torch.no_grad()
def random_init_(model: nn.Module, seed: int = 0, std: float = 0.02) -> nn.Module:
    """Random weights, fast: N(0, std) for matrices, 1 + N(0, 0.05) for scales.

    Tensors larger than about a million elements repeat one block of fresh noise rather than drawing
    every element (drawing 600 M normals takes ~10 s on two cores; copying a block takes 0.2 s). The
    scales are perturbed away from 1 so that no formula hides behind a weight of one when two
    implementations are compared on these weights.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, t in _weights(model):
        if is_scale(name):
            t.copy_(1.0 + 0.05 * torch.randn(t.shape, generator=gen))
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
