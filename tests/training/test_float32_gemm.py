"""gemma4/float32_gemm.py: bf16/fp16 Linear with its GEMMs in float32 (CPUs without a native bf16 GEMM)."""
import pytest
import torch
from torch.nn import functional as F

from gemma4 import float32_gemm
from tests.helpers import assert_lowp_close


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_float32_linear_within_twice_the_plain_error(dtype, with_bias):
    g = torch.Generator().manual_seed(int(with_bias))
    x = torch.randn(3, 17, 96, generator=g).to(dtype).requires_grad_()
    w = (torch.randn(80, 96, generator=g) * 0.3).to(dtype).requires_grad_()
    b = torch.randn(80, generator=g).to(dtype).requires_grad_() if with_bias else None
    grad = torch.randn(3, 17, 80, generator=g).to(dtype)
    inputs = [t for t in (x, w, b) if t is not None]
    ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
    ref = F.linear(*ref_inputs) if with_bias else F.linear(*ref_inputs, None)
    ref_grads = torch.autograd.grad(ref, ref_inputs, grad.double())
    plain = F.linear(x, w, b)
    plain_grads = torch.autograd.grad(plain, inputs, grad)
    ours = float32_gemm._Float32Linear.apply(x, w, b)  # the float32 path itself, whatever this CPU has
    ours_grads = torch.autograd.grad(ours, inputs, grad)
    assert ours.dtype == dtype
    assert_lowp_close(ours, ref, plain)
    for o, r, p in zip(ours_grads, ref_grads, plain_grads):
        assert o.dtype == dtype
        assert_lowp_close(o, r, p)


def test_linear_dispatch():
    x32, w32 = torch.randn(4, 8), torch.randn(5, 8)
    assert not float32_gemm.needs_float32_gemm(x32)
    torch.testing.assert_close(float32_gemm.linear(x32, w32), F.linear(x32, w32), rtol=0, atol=0)
    xb, wb = x32.bfloat16(), w32.bfloat16()
    assert float32_gemm.linear(xb, wb).dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast picks the dtypes: plain F.linear
        torch.testing.assert_close(float32_gemm.linear(x32, w32), F.linear(x32, w32), rtol=0, atol=0)


def test_frozen_weight_gives_input_gradient_only():
    x = torch.randn(2, 9, 64).bfloat16().requires_grad_()
    w = torch.randn(48, 64).bfloat16()  # frozen: a LoRA base
    grad = torch.randn(2, 9, 48).bfloat16()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        ours = float32_gemm._Float32Linear.apply(x, w, None)
    assert saved == [w.shape]  # x is not kept: only the weight is needed for grad_x
    (gx,) = torch.autograd.grad(ours, x, grad)
    x64 = x.detach().double().requires_grad_()
    (ref,) = torch.autograd.grad(F.linear(x64, w.double()), x64, grad.double())
    (plain,) = torch.autograd.grad(F.linear(x, w), x, grad)
    assert_lowp_close(gx, ref, plain)
