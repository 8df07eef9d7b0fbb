"""Checks of the token ids a model is given (forward and generate share them).

An id outside [0, vocab_size) would otherwise reach the embedding lookup, which on the CPU raises a bare
"index out of range in self" and on CUDA trips a device-side assert that ends the process's CUDA context.
"""
from __future__ import annotations

import torch

from gemma4.errors import ArgumentError, ArgumentTypeError

__all__ = ["check_token_ids", "check_token_id"]


def check_token_ids(ids: torch.Tensor, vocab_size: int, argument: str = "input_ids") -> None:
    """Raise ArgumentTypeError unless `ids` is an integer tensor, ArgumentError when an id is outside
    [0, vocab_size) (naming the first such id, where it is, and the vocabulary size).

    One min/max read per call (a host sync on CUDA); skipped while torch.compile traces or a CUDA graph
    is being captured, where a data-dependent check cannot run.
    """
    if not isinstance(ids, torch.Tensor):
        raise ArgumentTypeError(f"{argument} must be a tensor of token ids, got {type(ids).__name__}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ArgumentTypeError(f"{argument} must hold integer token ids (torch.long), got dtype {ids.dtype}")
    if ids.numel() == 0 or ids.is_meta or torch.compiler.is_compiling():
        return
    if ids.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    low, high = (int(v) for v in torch.aminmax(ids))
    if low >= 0 and high < vocab_size:
        return
    bad = ((ids < 0) | (ids >= vocab_size)).nonzero()[0].tolist()  # index of the first bad id
    value = int(ids[tuple(bad)])
    raise ArgumentError(f"{argument}[{', '.join(map(str, bad))}] = {value} is not a token id of this model: ids must "
                        f"be in [0, {vocab_size}) (vocab_size {vocab_size})")


def check_token_id(value, vocab_size: int, argument: str) -> None:
    """One special-token id (pad_token_id, an eos_token_id entry, ...): an int in [0, vocab_size)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"{argument} must be an integer token id, got {value!r}")
    if not 0 <= value < vocab_size:
        raise ArgumentError(f"{argument}={value} is not a token id of this model: ids must be in [0, {vocab_size}) "
                            f"(vocab_size {vocab_size})")
