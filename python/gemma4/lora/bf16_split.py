"""The LoRA update of a bf16 base with float32 factors on CUDA, on bf16 tensor cores at float32 accuracy.

PEFT (and the generic path in layers.py) widens x and the base output to float32 and runs the two thin
LoRA GEMMs in float32: on a GPU those are SIMT kernels, plus casts that stream [tokens, features]
float32 copies. On the E2B training benchmark (H200, B4 T2048) that was ~180 ms of a ~450 ms step.

Here every float32 operand of a LoRA GEMM is split into three bf16 numbers, t = hi + mid + lo
(hi = bf16(t), mid = bf16(t - hi), lo = bf16(t - hi - mid): float32's 24 significand bits, the
subtractions exact), and each product runs as bf16 GEMMs with float32 accumulation. x and grad_out are bf16
already and need no split. Where the inner dimension is long (tokens or features), the parts of the small
float32 operand become extra output columns, summed after the GEMM ("sum3"); where it is the rank r, the
six part products down to lo (hi.hi, hi.mid, mid.hi, hi.lo, lo.hi, mid.mid) are concatenated along it:

    down   = sum3(x @ [A_hi; A_mid; A_lo]^T)              [N, r] float32         (x @ A^T)
    out    = base_out + s * pairs(down) @ pairs(B)^T      rounded once to bf16 (cuBLAS's beta = 1
                                                          epilogue: no float32 copy of the output)
    grad_B = s * sum3(grad^T @ [d_hi | d_mid | d_lo])     [out, r]
    gd     = s * sum3(grad @ [B_hi | B_mid | B_lo])       [N, r]                 (grad of down)
    grad_A = sum3([gd parts]^T @ x)                       [r, in]
    grad_x = pairs(gd) @ pairs(A)                         bf16, rounded once

The terms left out are below 2^-24 of the result: the numbers are the float32 path's to within its own
rounding (tests/lora/test_lora_bf16_split.py measures both against float64). Saved for backward: x (bf16),
A, B and down [N, r].
"""
from __future__ import annotations

import torch

__all__ = ["Bf16SplitLoraUpdate", "applies"]


def applies(x: torch.Tensor, base_out: torch.Tensor) -> bool:
    """CUDA, bf16 input and base output (the factors are float32: checked by the caller)."""
    return x.is_cuda and x.dtype == base_out.dtype == torch.bfloat16


def _split(t: torch.Tensor) -> list[torch.Tensor]:
    """float32 t -> [hi, mid, lo] bf16 with t = hi + mid + lo to float32 precision."""
    hi = t.to(torch.bfloat16)
    rest = t - hi.float()  # exact
    mid = rest.to(torch.bfloat16)
    return [hi, mid, (rest - mid.float()).to(torch.bfloat16)]


def _mm32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for bf16 operands, accumulated and returned in float32."""
    return torch.mm(a, b, out_dtype=torch.float32)


def _sum3(t: torch.Tensor, dim: int) -> torch.Tensor:
    """The three part products laid side by side along dim, added (largest first)."""
    hi, mid, lo = t.chunk(3, dim=dim)
    return hi + mid + lo


# (i, j): part i of a times part j of b (0 = hi, 1 = mid, 2 = lo): every product of size 2^-16 or more
_PAIRS = [(0, 0), (0, 1), (1, 0), (0, 2), (2, 0), (1, 1)]


def _pairs(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L [M, 6r], R [6r, N]) bf16 with L @ R = a [M, r] @ b [r, N] to float32 precision."""
    pa, pb = _split(a), _split(b)
    return torch.cat([pa[i] for i, _ in _PAIRS], 1), torch.cat([pb[j] for _, j in _PAIRS], 0)


class Bf16SplitLoraUpdate(torch.autograd.Function):
    """(base_out + scaling * (x @ A.T) @ B.T) rounded once to bf16; x, base_out bf16 [..., in] / [..., out]."""

    @staticmethod
    def forward(ctx, base_out, x, A, B, scaling):
        x2 = x.reshape(-1, x.shape[-1])  # [N, in] bf16
        down = _sum3(_mm32(x2, torch.cat(_split(A)).t()), 1)  # [N, r] fp32
        left, right = _pairs(down, B.t())  # [N, 6r], [6r, out]
        out = torch.addmm(base_out.reshape(-1, base_out.shape[-1]), left, right, alpha=scaling)  # [N, out] bf16
        _, x_grad, A_grad, B_grad, _ = ctx.needs_input_grad
        ctx.scaling, ctx.x_shape = scaling, x.shape
        ctx.save_for_backward(x if A_grad else None, A if x_grad else None, B if (x_grad or A_grad) else None,
                              down if B_grad else None)
        return out.view(base_out.shape)

    @staticmethod
    def backward(ctx, grad_out):
        x, A, B, down = ctx.saved_tensors
        base_grad, x_grad, A_grad, B_grad, _ = ctx.needs_input_grad
        s = ctx.scaling
        g = grad_out.reshape(-1, grad_out.shape[-1])  # [N, out] bf16
        grad_x = grad_A = grad_B = None
        if B_grad:
            grad_B = _sum3(_mm32(g.t(), torch.cat(_split(down), 1)), 1) * s  # [out, r]
        if x_grad or A_grad:
            gd = _sum3(_mm32(g, torch.cat(_split(B), 1)), 1) * s  # [N, r] fp32
            if A_grad:
                grad_A = _sum3(_mm32(torch.cat(_split(gd), 1).t(), x.reshape(-1, x.shape[-1])), 0)  # [r, in]
            if x_grad:
                grad_x = torch.mm(*_pairs(gd, A)).view(ctx.x_shape)  # [..., in] bf16
        return (grad_out if base_grad else None), grad_x, grad_A, grad_B, None
