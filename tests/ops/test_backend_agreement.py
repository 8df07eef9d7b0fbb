"""Every op and backward: the CUDA kernel against the CPU kernel on the same random inputs.

float64/float32 outputs agree within tight_tol, integer outputs (moe_route's indices) exactly.
bf16/fp16 outputs: measured against the CPU kernel run in float64 on the same input values, the
CUDA kernel's error may be at most 2x the CPU kernel's error plus two units in the last place at
the output's magnitude (a CUDA kernel may round intermediates, e.g. attention probabilities fed to
tensor cores, where the CPU kernel keeps float32). Skipped without a GPU or without a CUDA build.
"""
import pytest
import torch

from gemma4.ops import reference as ref
from tests.helpers import BACKENDS, has_kernel, tight_tol

pytestmark = pytest.mark.skipif("cuda" not in BACKENDS, reason="needs a GPU and a CUDA build of gemma4")

ops = torch.ops.gemma4
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def _r(*shape, dtype, scale=1.0):
    return (torch.randn(*shape, dtype=torch.float64) * scale).to(dtype)


def _shape(lo, hi):
    return int(torch.randint(lo, hi + 1, ()).item())


# Each case: op name -> function(dtype) giving the positional arguments (CPU tensors), random sizes.
def _rms_norm(dtype):
    rows, D = _shape(1, 64), _shape(1, 3000)
    return _r(rows, D, dtype=dtype, scale=3.0), _r(D, dtype=torch.float32, scale=0.5) + 1, 1e-6


def _rms_norm_backward(dtype):
    x, w, eps = _rms_norm(dtype)
    return _r(*x.shape, dtype=dtype), x, w, eps


def _rope_args(dtype):
    B, T, H, hd = _shape(1, 3), _shape(1, 40), _shape(1, 8), 2 * _shape(1, 256)
    inv_freq = 10000.0 ** -(torch.arange(hd // 2, dtype=torch.float32) / (hd // 2))
    inv_freq[hd // 4:] *= torch.rand(()) < 0.5  # sometimes proportional RoPE's zero frequencies
    positions = torch.randint(0, 8192, (1 if torch.rand(()) < 0.5 else B, T))
    return _r(B, T, H, hd, dtype=dtype), positions, inv_freq


def _gated(dtype):
    shape = (_shape(1, 8), _shape(1, 3000))
    return _r(*shape, dtype=dtype, scale=3.0), _r(*shape, dtype=dtype), ["gelu_tanh", "silu"][_shape(0, 1)]


def _gated_backward(dtype):
    gate, up, act = _gated(dtype)
    return _r(*gate.shape, dtype=dtype), gate, up, act


def _attention(dtype):
    B, T, nKV, G = _shape(1, 2), _shape(1, 70), _shape(1, 4), _shape(1, 4)
    S, hd = T + _shape(0, 200), [64, 128, 256, 512, _shape(1, 96)][_shape(0, 4)]
    mask = torch.rand(B, S) > 0.2 if torch.rand(()) < 0.5 else None
    window = [0, _shape(1, S)][_shape(0, 1)]
    return (_r(B, T, nKV * G, hd, dtype=dtype), _r(B, S, nKV, hd, dtype=dtype), _r(B, S, nKV, hd, dtype=dtype), mask,
            hd ** -0.5, window)


def _attention_backward(dtype):
    q, k, v, mask, scale, window = _attention(dtype)
    out, lse = ops.attention(q, k, v, mask, scale, window)  # the CPU forward feeds both backwards
    return _r(*q.shape, dtype=dtype), q, k, v, out, lse, mask, scale, window


def _moe_route(dtype):
    N, E = _shape(1, 300), _shape(1, 160)
    return _r(N, E, dtype=dtype, scale=2.0), torch.rand(E, dtype=torch.float64).to(dtype) + 0.5, _shape(1, min(E, 8))


def _moe_route_backward(dtype):
    logits, scale, k = _moe_route(dtype)
    w, idx = ref.moe_route(logits.double(), scale.double(), k)
    return _r(*w.shape, dtype=w.dtype if dtype == torch.float64 else torch.float32), logits, scale, idx


def _moe_experts(dtype):
    N, E, H, Im = _shape(1, 40), _shape(1, 16), _shape(1, 300), _shape(1, 200)
    K = _shape(1, E)
    w, idx = ref.moe_route(_r(N, E, dtype=torch.float64), torch.ones(E, dtype=torch.float64), K)
    return (_r(N, H, dtype=dtype), w.float(), idx, _r(E, 2 * Im, H, dtype=dtype, scale=H ** -0.5),
            _r(E, H, Im, dtype=dtype, scale=Im ** -0.5), ["gelu_tanh", "silu"][_shape(0, 1)])


def _moe_experts_backward(dtype):
    x, w, idx, gate_up, down, act = _moe_experts(dtype)
    return (_r(*x.shape, dtype=dtype),) + (x, w, idx, gate_up, down, act)


CASES = {
    "rms_norm": _rms_norm, "rms_norm_backward": _rms_norm_backward,
    "rope": _rope_args, "rope_backward": _rope_args,
    "gated_activation": _gated, "gated_activation_backward": _gated_backward,
    "attention": _attention, "attention_backward": _attention_backward,
    "moe_route": _moe_route, "moe_route_backward": _moe_route_backward,
    "moe_experts": _moe_experts, "moe_experts_backward": _moe_experts_backward,
}


# Arguments whose dtype is fixed by the schema (rope's inv_freq is float32 in every case).
KEEP_DTYPE = {"rope": {2}, "rope_backward": {2}}


def _attention_backward_terms(go, q, k, v, out, lse, mask, scale, window):
    """The size of the fp32 products that cancel in attention_backward's dq and dk: dS = P (dP - D) with dP and D
    hd-long dot products of dO with v and with the output, times scale and a row of k (dq) or q (dk)."""
    mx = lambda t: t.abs().max().item()  # noqa: E731
    return scale * q.shape[-1] * mx(go) * mx(v) * max(mx(q), mx(k))


# For outputs whose exact value is all zero (attention_backward's dq and dk when window = 1 leaves each query one
# key: P = 1 and dP == D exactly), "2 ulp at the output's magnitude" is no allowance at all. The CPU kernel keeps
# that zero bit for bit; a flash backward sums dP and D = rowsum(dO * O) in different orders and leaves their fp32
# rounding: allowed there, 4 fp32 ulps of the products that cancel. (tests/ops/test_attention_cuda.py's _close has
# the same rule with its own size: no scale, and the largest of |q|, |k| and |v| in place of |v|; larger where
# scale <= 1.)
ZERO_TERMS = {"attention_backward": _attention_backward_terms}


def _to(a, device):
    return a.to(device) if isinstance(a, torch.Tensor) else a


def _f64(a):
    return a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def _assert_agree(got, want, exact, name, terms=None):
    """got: CUDA output; want: CPU output; exact: the CPU kernel's output in float64; terms: ZERO_TERMS' size of
    the cancelling products, for an exact output of all zeros."""
    assert got.dtype == want.dtype and got.shape == want.shape, (name, got.dtype, want.dtype, got.shape, want.shape)
    got = got.cpu()
    if not want.is_floating_point():
        assert torch.equal(got, want), name
    elif want.dtype in (torch.float32, torch.float64):
        torch.testing.assert_close(got, want, equal_nan=True, **tight_tol(want.dtype), msg=lambda m: f"{name}: {m}")
    elif terms is not None and exact.abs().max().item() == 0:
        err = got.double().abs().max().item()
        assert err <= 4 * torch.finfo(torch.float32).eps * terms, f"{name}: {err:.3e} where the exact output is 0"
    else:
        assert torch.equal(got.isnan(), want.isnan()), f"{name}: NaN in different places"
        keep = ~want.isnan()
        err_cuda = (got.double() - exact)[keep].abs().max().item() if keep.any() else 0.0
        err_cpu = (want.double() - exact)[keep].abs().max().item() if keep.any() else 0.0
        ulp = torch.finfo(want.dtype).eps * exact[keep].abs().max().item() if keep.any() else 0.0
        assert err_cuda <= 2 * err_cpu + 2 * ulp, (
            f"{name}: CUDA error {err_cuda:.3e} > 2 x CPU error {err_cpu:.3e} + 2 ulp {ulp:.3e}")


@pytest.mark.parametrize("trial", range(4))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", sorted(CASES))
def test_cuda_agrees_with_cpu(op, dtype, trial):
    if not has_kernel(op, torch.device("cuda")):
        pytest.skip(f"no CUDA kernel for gemma4::{op}")
    fn = getattr(ops, op)
    args = CASES[op](dtype)
    want = _as_tuple(fn(*args))
    got = _as_tuple(fn(*(_to(a, "cuda") for a in args)))
    exact = _as_tuple(fn(*(a if i in KEEP_DTYPE.get(op, ()) else _f64(a) for i, a in enumerate(args))))
    assert len(got) == len(want)
    terms = ZERO_TERMS[op](*args) if op in ZERO_TERMS else None
    for i, (g, w, e) in enumerate(zip(got, want, exact)):
        _assert_agree(g, w, e.double() if e.is_floating_point() else e, f"{op} output {i}", terms)
