"""Cross-entropy through the logit soft-cap, loss and gradient in one op: ``gemma4::softcap_cross_entropy``.

The C++ kernels are csrc/loss/ (CPU: three vectorized passes per row; CUDA: a block per row); the
plain-PyTorch definition is ``reference.softcap_cross_entropy``. modeling/loss.py calls it once per chunk of
tokens, between the two head GEMMs, so no [tokens, V] temporary of the elementwise chain exists.
"""
from __future__ import annotations

import torch

from gemma4 import _native  # noqa: F401  (loads the operator library)

from . import _fake_checks as chk

__all__ = ["softcap_cross_entropy"]

_OP = "gemma4::softcap_cross_entropy"


def softcap_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, row_weight: torch.Tensor,
                          softcap: float | None) -> torch.Tensor:
    """Per-row weighted cross-entropy of ``softcap * tanh(logits / softcap)``; ``logits`` becomes its gradient.

    Args:
        logits: ``[n, V]`` pre-cap logits, float32/float64/bfloat16/float16, contiguous. Overwritten with
            ``d sum(losses) / d logits``, rounded to its dtype.
        targets: int64 ``[n]`` in ``[0, V)`` (the CPU kernel raises otherwise; on CUDA that row's loss is NaN).
        row_weight: float32 ``[n]``, each row's weight (0 for a row that does not count).
        softcap: the cap, or None for plain cross-entropy.

    Returns:
        ``[n]`` float32 (float64 for float64 logits): ``row_weight * (logsumexp(c) - c[target])``. Not
        differentiable (it is the gradient computation itself).
    """
    if torch.is_grad_enabled() and logits.requires_grad:
        raise RuntimeError(f"{_OP}: logits must not require grad (the op overwrites them with their gradient)")
    return torch.ops.gemma4.softcap_cross_entropy(logits, targets, row_weight, softcap)


@torch.library.register_fake(_OP)
def _softcap_cross_entropy_fake(logits, targets, row_weight, softcap):
    chk.floating(_OP, "logits", logits)
    chk.dim(_OP, "logits", logits, 2)
    if not logits.is_contiguous():
        chk.fail(_OP, "logits must be contiguous")
    for name, t, dtype in (("targets", targets, torch.int64), ("row_weight", row_weight, torch.float32)):
        chk.same_device(_OP, logits, **{name: t})
        chk.dtype(_OP, name, t, dtype)
        chk.dim(_OP, name, t, 1)
        chk.size(_OP, name, t, 0, logits.shape[0])
        if not t.is_contiguous():
            chk.fail(_OP, f"{name} must be contiguous")
    if softcap is not None and not (softcap > 0 and softcap != float("inf")):
        chk.fail(_OP, f"softcap must be None or a finite number > 0, got {softcap}")
    if logits.shape[1] == 0 and logits.shape[0] > 0:
        chk.fail(_OP, "logits must have at least one column (class)")
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return logits.new_empty((logits.shape[0],), dtype=acc)
