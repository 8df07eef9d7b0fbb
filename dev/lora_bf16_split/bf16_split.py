"""The LoRA update of a bf16 base with float32 factors on CUDA, on bf16 tensor cores at float32 accuracy.

PEFT (and the generic path in layers.py) widens x and the base output to float32 and runs the two thin
LoRA GEMMs in float32: on a GPU those are SIMT kernels, plus casts that stream [tokens, features]
float32 copies. On the E2B training benchmark (H200, B4 T2048) that was ~180 ms of a ~450 ms step.

Here every float32 operand of a LoRA GEMM is split into three bf16 numbers, t = hi + mid + lo
(hi = bf16(t), mid = bf16(t - hi), lo = bf16(t - hi - mid): float32's 24 significand bits, the
subtractions exact), written side by side as t3 = [hi | mid | lo] (3r columns or rows), and each product
runs as bf16 GEMMs with float32 accumulation (x and grad_out are bf16 already and need no split). Where the
inner dimension is long (tokens or features) the three part products come out side by side and are summed
("sum3"); where it is the rank r, the six part products down to lo (hi.hi, hi.mid, mid.hi, hi.lo, lo.hi,
mid.mid) are concatenated along it ("pairs", a row or column gather of the t3 forms):

    down   = sum3(x @ A3^T)                          [N, r] float32           (x @ A^T)
    out    = base_out + s * pairs(d3) @ pairs(B3)^T  rounded once to bf16 (cuBLAS's beta = 1 epilogue: no
                                                     float32 copy of the output)
    grad_B = s * sum3(grad^T @ d3)                   [out, r]
    gd     = s * sum3(grad @ B3)                     [N, r]                   (grad of down)
    grad_A = sum3(gd3^T @ x)                         [r, in]
    grad_x = pairs(gd3) @ pairs(A3)                  bf16, rounded once

The terms left out are below 2^-24 of the result, and the GEMMs that sum over tokens run with cuBLAS's
reduced-precision (bf16) split-K reduction disallowed: the numbers are the float32 path's to within its own
rounding (tests/lora/test_lora_bf16_split.py measures both against float64). A3 and B3 are kept per
parameter version (the optimizer's in-place step bumps it), so a step splits each factor once.
Saved for backward: x (bf16), d3 [N, 3r] (bf16) and the factors.
"""
from __future__ import annotations

import functools
import weakref

import torch

__all__ = ["Bf16SplitLoraUpdate", "applies"]


def applies(x: torch.Tensor, base_out: torch.Tensor) -> bool:
    """CUDA, bf16 input and base output (the factors are float32: checked by the caller), eager (under
    torch.compile the float32 path, which inductor compiles as it is)."""
    return x.is_cuda and x.dtype == base_out.dtype == torch.bfloat16 and not torch.compiler.is_compiling()


def _split3(t: torch.Tensor, dim: int) -> torch.Tensor:
    """float32 t -> [hi | mid | lo] bf16 concatenated along dim, t = hi + mid + lo to float32 precision."""
    hi = t.to(torch.bfloat16)
    rest = t - hi  # exact, float32
    mid = rest.to(torch.bfloat16)
    return torch.cat([hi, mid, (rest - mid).to(torch.bfloat16)], dim)


_factor_parts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # parameter -> (version, split)


def _factor3(w: torch.Tensor, dim: int) -> torch.Tensor:
    """_split3 of a LoRA factor, cached until the factor changes (eager only)."""
    if torch.compiler.is_compiling():
        return _split3(w, dim)
    key = (w._version, w.data_ptr(), dim)
    hit = _factor_parts.get(w)
    if hit is None or hit[0] != key:
        hit = (key, _split3(w.detach(), dim))
        _factor_parts[w] = hit
    return hit[1]


def _mm32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for bf16 operands, accumulated and returned in float32."""
    return torch.mm(a, b, out_dtype=torch.float32)


def _sum3(t: torch.Tensor, dim: int) -> torch.Tensor:
    """The three part products laid side by side along dim (0 or 1 of a 2-D t), added."""
    if dim == 1:
        return t.view(t.shape[0], 3, -1).sum(1)
    return t.view(3, -1, t.shape[1]).sum(0)


@functools.lru_cache(maxsize=64)
def _pair_index(r: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices into a t3 form for the six part products (i, j) = (0,0) (0,1) (1,0) (0,2) (2,0) (1,1):
    part i of the left operand times part j of the right one (0 = hi, 1 = mid, 2 = lo)."""
    left, right = (0, 0, 1, 0, 2, 1), (0, 1, 0, 2, 0, 1)
    ar = torch.arange(r, device=device)
    return torch.cat([ar + i * r for i in left]), torch.cat([ar + j * r for j in right])


class _ReducedPrecisionOff:
    """cuBLAS's bf16 GEMMs without reduced-precision split-K reduction, for the duration of the block."""

    def __enter__(self):
        self.before = torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = self.before


class Bf16SplitLoraUpdate(torch.autograd.Function):
    """(base_out + scaling * (x @ A.T) @ B.T) rounded once to bf16; x, base_out bf16 [..., in] / [..., out]."""

    @staticmethod
    def forward(ctx, base_out, x, A, B, scaling):
        r = A.shape[0]
        li, ri = _pair_index(r, x.device)
        x2 = x.reshape(-1, x.shape[-1])  # [N, in] bf16
        A3, B3 = _factor3(A, 0), _factor3(B, 1)  # [3r, in], [out, 3r]
        with _ReducedPrecisionOff():
            down = _sum3(_mm32(x2, A3.t()), 1)  # [N, r] fp32
        d3 = _split3(down, 1)  # [N, 3r]
        out = torch.addmm(base_out.reshape(-1, base_out.shape[-1]), d3.index_select(1, li),
                          B3.index_select(1, ri).t(), alpha=scaling)  # [N, out] bf16
        _, x_grad, A_grad, B_grad, _ = ctx.needs_input_grad
        ctx.scaling, ctx.x_shape = scaling, x.shape
        ctx.save_for_backward(x if A_grad else None, A3 if x_grad else None, B3 if (x_grad or A_grad) else None,
                              d3 if B_grad else None, li, ri)
        return out.view(base_out.shape)

    @staticmethod
    def backward(ctx, grad_out):
        x, A3, B3, d3, li, ri = ctx.saved_tensors
        base_grad, x_grad, A_grad, B_grad, _ = ctx.needs_input_grad
        s = ctx.scaling
        g = grad_out.reshape(-1, grad_out.shape[-1])  # [N, out] bf16
        grad_x = grad_A = grad_B = None
        with _ReducedPrecisionOff():
            if B_grad:
                grad_B = _sum3(_mm32(g.t(), d3), 1) * s  # [out, r]
            if x_grad or A_grad:
                gd3 = _split3(_sum3(_mm32(g, B3), 1) * s, 1)  # [N, 3r]: the split of grad of down
                if A_grad:
                    grad_A = _sum3(_mm32(gd3.t(), x.reshape(-1, x.shape[-1])), 0)  # [r, in]
                if x_grad:
                    grad_x = torch.mm(gd3.index_select(1, li), A3.index_select(0, ri)).view(ctx.x_shape)  # bf16
        return (grad_out if base_grad else None), grad_x, grad_A, grad_B, None
