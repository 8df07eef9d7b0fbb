"""The CUDA paths of gemma4::attention / attention_backward (csrc/attention/attention_cuda.cu) on shapes that
pick each kernel: tensor-core flash forward/backward (bf16/fp16, head_dim 64-512, more than 16 query rows
per KV head), split-KV decode (<= 16 rows, long caches, so the key range is split and combined), and the
simple fp32/fp64 path; contiguous and strided (cache-view) inputs. Skipped without a GPU.

Rules are test_attention.py's: float32/float64 tight against reference.attention in float64; bf16/fp16
error against the float32 reference at most 2x plain PyTorch's low-precision error; lse against float64;
and agreement with the CPU kernel on the same inputs. dev/attention_cuda/check.py runs every case of
test_attention.SHAPES and these through check_case on the GPU machine.
"""
import pytest
import torch

import gemma4._native  # noqa: F401
from gemma4.ops import reference
from tests.helpers import assert_lowp_close, tight_tol
from tests.ops.test_attention import _mask, _plain_lowp

pytestmark = pytest.mark.cuda

LOWP = (torch.bfloat16, torch.float16)

# (B, T, S, nH, nKV, hd, window, mask)
FLASH = [
    (2, 300, 300, 8, 2, 64, 0, None),
    (1, 257, 257, 4, 4, 128, 100, "left"),
    (1, 200, 520, 8, 1, 256, 0, "random"),
    (1, 129, 129, 8, 8, 512, 64, None),
    (2, 100, 100, 16, 2, 512, 0, "full"),
    (1, 3, 2000, 8, 1, 512, 0, None),  # T*G = 24: flash kernels with a long cache
    (1, 700, 700, 2, 1, 256, 128, "left"),
]
DECODE = [
    (1, 1, 4096, 8, 1, 512, 0, None),
    (2, 1, 3000, 16, 2, 256, 1024, "left"),
    (3, 1, 1500, 4, 4, 128, 0, "random"),
    (2, 2, 2222, 8, 2, 512, 0, "full"),
]


def _ids(shape):
    return "B{}T{}S{}H{}KV{}hd{}W{}{}".format(*shape[:7], shape[7] or "")


def cuda_inputs(shape, dtype, strided):
    B, T, S, nH, nKV, hd, window, kind = shape
    if strided:  # k/v as views of a [B, nKV, Tmax, hd] cache, q a slice of a fused projection
        k = torch.randn(B, nKV, S + 16, hd, dtype=dtype, device="cuda")[:, :, :S].transpose(1, 2)
        v = torch.randn(B, nKV, S + 16, hd, dtype=dtype, device="cuda")[:, :, :S].transpose(1, 2)
        q = torch.randn(B, T, nH, 2 * hd, dtype=dtype, device="cuda")[..., hd:]
    else:
        q = torch.randn(B, T, nH, hd, dtype=dtype, device="cuda")
        k = torch.randn(B, S, nKV, hd, dtype=dtype, device="cuda")
        v = torch.randn(B, S, nKV, hd, dtype=dtype, device="cuda")
    m = _mask(kind, B, T, S)
    return q, k, v, (m.cuda() if m is not None else None), hd ** -0.5, window


def _cpu(*ts):
    return [t.detach().cpu() if t is not None else None for t in ts]


def _ref_grads(q, k, v, km, scale, window, go, dtype):
    qd, kd, vd = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    out, _ = reference.attention(qd, kd, vd, km, scale, window)
    out.backward(go.to(dtype))
    return qd.grad, kd.grad, vd.grad


def _plain_grads(q, k, v, km, scale, window, go):
    """Plain low-precision PyTorch attention's gradients (test_attention._plain_lowp, on CPU copies)."""
    qp, kp, vp = (t.requires_grad_() for t in _cpu(q, k, v))
    _plain_lowp(qp, kp, vp, _cpu(km)[0], scale, window).backward(go.cpu())
    return qp.grad.cuda(), kp.grad.cuda(), vp.grad.cuda()


def _close(ours, ref_hi, plain, dtype, what, terms=None):
    """terms: size of the products summed into each gradient element, for gradients whose reference is
    exactly zero. window = 1 makes dS = P * (dP - D) with P = 1 and dP == D in exact arithmetic; plain
    autograd reproduces that bit-exactly, while a flash backward (D = rowsum(dO * O), dP summed in another
    order) leaves the fp32 rounding of those hd-long dot products: allowed there, 4 fp32 ulps of them."""
    if dtype in LOWP:
        if terms is not None and ref_hi.abs().max().item() == 0:
            err = ours.double().abs().max().item()
            assert err <= 4 * torch.finfo(torch.float32).eps * terms, f"{what}: {err:.3e} where the reference is 0"
            return
        assert_lowp_close(ours, ref_hi, plain)
    else:
        torch.testing.assert_close(ours.double(), ref_hi.double(), **tight_tol(dtype), msg=lambda m: f"{what}: {m}")


def check_case(shape, dtype, strided):
    """Forward, lse, CPU agreement and all three gradients of one case on CUDA; returns max|out - ref64|."""
    q, k, v, km, scale, window = cuda_inputs(shape, dtype, strided)
    out, lse = torch.ops.gemma4.attention(q, k, v, km, scale, window)
    assert out.shape == q.shape and out.dtype == dtype and out.is_contiguous() and out.is_cuda
    hi = torch.float32 if dtype in LOWP else torch.float64
    ref_out, _ = reference.attention(q.to(hi), k.to(hi), v.to(hi), km, scale, window)
    ref64_out, ref64_lse = reference.attention(q.double(), k.double(), v.double(), km, scale, window)
    plain = _plain_lowp(*_cpu(q, k, v, km), scale, window).cuda() if dtype in LOWP else None
    finite = torch.isfinite(ref64_lse)
    assert torch.equal(torch.isfinite(lse), finite), "lse -inf pattern"
    assert (lse[~finite] == float("-inf")).all()
    torch.testing.assert_close(lse[finite].double(), ref64_lse[finite],
                               **tight_tol(torch.float64 if dtype == torch.float64 else torch.float32))
    _close(out, ref_out, plain, dtype, "out")
    # The CPU kernel on the same inputs: both meet the rule, so they differ by at most twice what it allows.
    out_c, _ = torch.ops.gemma4.attention(*_cpu(q, k, v, km), scale, window)
    if dtype in LOWP:
        _close(out_c, ref_out.cpu(), plain.cpu(), dtype, "cpu out")
        e_plain = (plain.double() - ref_out.double()).abs().max().item()
        ulp = torch.finfo(dtype).eps * ref_out.abs().max().item()
        assert (out.cpu().double() - out_c.double()).abs().max().item() <= 4 * e_plain + 2 * ulp, "cuda vs cpu"
    else:
        torch.testing.assert_close(out.cpu().double(), out_c.double(), **tight_tol(dtype))
    go = torch.randn(out.shape, dtype=dtype, device="cuda")
    grads = torch.ops.gemma4.attention_backward(go, q, k, v, out, lse, km, scale, window)
    ref = _ref_grads(q, k, v, km, scale, window, go, hi)
    plain_g = _plain_grads(q, k, v, km, scale, window, go) if dtype in LOWP else (None,) * 3
    mx = lambda t: t.abs().max().item()  # noqa: E731
    terms = mx(go) * max(mx(q), mx(k), mx(v)) * q.shape[-1] * max(mx(q), mx(k))
    for name, g, r, p in zip("qkv", grads, ref, plain_g):
        assert g.dtype == dtype and g.shape == r.shape and g.is_cuda
        _close(g, r, p, dtype, f"grad_{name}", terms)
    return (out.double() - ref64_out).abs().max().item()


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@requires_cuda
@pytest.mark.parametrize("strided", [False, True], ids=["contig", "strided"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("shape", FLASH + DECODE, ids=_ids)
def test_cuda_paths(shape, dtype, strided):
    check_case(shape, dtype, strided)


@requires_cuda
@pytest.mark.parametrize("shape", [DECODE[0], FLASH[2]], ids=_ids)
def test_cuda_float64(shape):
    check_case(shape, torch.float64, False)


@requires_cuda
def test_cuda_backward_deterministic():
    """No atomics in either backward: bit-identical gradients run to run."""
    q, k, v, km, scale, window = cuda_inputs((1, 300, 300, 8, 2, 256, 100, "left"), torch.bfloat16, False)
    out, lse = torch.ops.gemma4.attention(q, k, v, km, scale, window)
    go = torch.randn_like(out)
    first = torch.ops.gemma4.attention_backward(go, q, k, v, out, lse, km, scale, window)
    again = torch.ops.gemma4.attention_backward(go, q, k, v, out, lse, km, scale, window)
    for a, b in zip(first, again):
        assert torch.equal(a, b)


@requires_cuda
def test_cuda_bad_device():
    q = torch.randn(1, 2, 2, 64, device="cuda")
    with pytest.raises(RuntimeError, match="k must be on"):
        torch.ops.gemma4.attention(q, torch.randn(1, 2, 2, 64), torch.randn(1, 2, 2, 64), None, 1.0, 0)
