"""The fake (meta) kernels check their arguments like the real ones (python/gemma4/ops/_fake_checks.py).

A bad call must fail the same way whether it reaches a real kernel, runs on meta tensors, or is traced
by torch.compile; and a call mixing devices (a cpu tensor with a meta one, which the dispatcher sends to
the fake kernel) must fail rather than return uninitialised memory.
"""
import pytest
import torch

import gemma4.ops  # noqa: F401  (registers the fake kernels)

ops = torch.ops.gemma4


def _r(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


def _idx(n, k, e):
    return torch.stack([torch.randperm(e)[:k] for _ in range(n)])


def _qexperts(n=5, h=32, im=32, e=4, k=2, group=32):
    """moe_experts_quant's arguments: x [n, h], routing, int4 banks gate_up [e, 2im, h/2], down [e, h, im/2]."""
    return (_r(n, h), _r(n, k), _idx(n, k, e), torch.randint(0, 256, (e, 2 * im, h // 2), dtype=torch.uint8),
            _r(e, 2 * im, h // group), torch.randint(0, 256, (e, h, im // 2), dtype=torch.uint8),
            _r(e, h, im // group), "gelu_tanh")


# (op, arguments, expected message): each a bad call, run on cpu tensors and on meta tensors.
BAD = [
    ("rms_norm", lambda: (_r(4, 16), _r(15), 1e-6), r"weight must have x.size\(-1\) = 16"),
    ("rms_norm", lambda: (_r(4, 16).int(), None, 1e-6), "x must be float32"),
    ("rms_norm", lambda: (_r(4, 16), _r(16), -1.0), "eps must be"),
    ("rms_norm_backward", lambda: (_r(4, 15), _r(4, 16), _r(16), 1e-6), "grad_out must have x's shape"),
    ("rope", lambda: (_r(2, 3, 2, 8), torch.zeros(2, 3, dtype=torch.int32), _r(4)), "positions must be Long"),
    ("rope", lambda: (_r(2, 3, 2, 8), torch.zeros(2, 3, dtype=torch.long), _r(5)), "inv_freq must have head_dim/2"),
    ("rope_backward", lambda: (_r(2, 3, 2, 7), torch.zeros(2, 3, dtype=torch.long), _r(3)), "must be even"),
    ("gated_activation", lambda: (_r(4, 16), _r(4, 15), "silu"), "up must have gate's shape"),
    ("gated_activation", lambda: (_r(4, 16), _r(4, 16), "relu"), "activation must be"),
    ("gated_activation_backward", lambda: (_r(4, 16).double(), _r(4, 16), _r(4, 16), "silu"),
     "grad_out must have gate's dtype"),
    ("attention", lambda: (_r(2, 6, 4, 8), _r(2, 5, 2, 8), _r(2, 5, 2, 8), None, 1.0, 0),
     "must be >= the query length"),
    ("attention", lambda: (_r(2, 3, 4, 8), _r(2, 5, 3, 8), _r(2, 5, 3, 8), None, 1.0, 0), "multiple of the k/v heads"),
    ("attention", lambda: (_r(2, 3, 4, 8), _r(2, 5, 2, 8), _r(2, 5, 2, 8), torch.ones(2, 4, dtype=torch.bool), 1.0, 0),
     r"key_mask\.size\(1\)"),
    ("attention_backward", lambda: (_r(2, 2, 4, 8), _r(2, 3, 4, 8), _r(2, 5, 2, 8), _r(2, 5, 2, 8), _r(2, 3, 4, 8),
                                    _r(2, 4, 3), None, 1.0, 0), r"grad_out\.size\(1\)"),
    ("moe_route", lambda: (_r(4, 8), _r(8), 9), "top_k must be in"),
    ("moe_route", lambda: (_r(4, 8), _r(7), 2), "per_expert_scale"),
    ("moe_route_backward", lambda: (_r(4, 3), _r(4, 8), _r(8), _idx(4, 2, 8)), "grad_weights must have the shape"),
    ("moe_experts", lambda: (_r(5, 16), _r(5, 2), _idx(5, 2, 4), _r(4, 16, 16), _r(4, 16, 7), "silu"),
     r"gate_up.size\(1\) must be 2 \* down.size\(2\)"),
    ("moe_experts", lambda: (_r(5, 16), _r(5, 2), _idx(5, 2, 4).int(), _r(4, 16, 16), _r(4, 16, 8), "silu"),
     "indices must be int64"),
    ("moe_experts_backward", lambda: (_r(5, 15), _r(5, 16), _r(5, 2), _idx(5, 2, 4), _r(4, 16, 16), _r(4, 16, 8),
                                      "silu"), "grad_out must have the shape of x"),
    ("moe_experts_quant", lambda: _qexperts()[:4] + (_r(4, 64, 3),) + _qexperts()[5:],
     r"gate_up_scales.size\(2\) must divide K = 32"),
    ("moe_experts_quant", lambda: _qexperts()[:5] + (_qexperts()[5].view(torch.int8),) + _qexperts()[6:],
     r"down_qweight.size\(2\) must be 32"),
    ("moe_experts_quant_backward", lambda: (_r(5, 64),) + _qexperts(), "grad_out must have the shape of x"),
]


def _meta(a):
    return a.to("meta") if isinstance(a, torch.Tensor) else a


@pytest.mark.parametrize("op,make,match", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_fake_kernel_rejects_what_the_kernel_rejects(op, make, match):
    args = make()
    with pytest.raises(RuntimeError, match=match):
        getattr(ops, op)(*args)  # the real (CPU) kernel
    with pytest.raises(RuntimeError, match=match):
        getattr(ops, op)(*(_meta(a) for a in args))  # the fake kernel


# One good call per op, and which argument to put on the meta device.
GOOD = [
    ("rms_norm", lambda: (_r(4, 16), _r(16), 1e-6), 1),
    ("rope", lambda: (_r(2, 3, 2, 8), torch.zeros(1, 3, dtype=torch.long), _r(4)), 2),
    ("gated_activation", lambda: (_r(4, 16), _r(4, 16), "silu"), 1),
    ("attention", lambda: (_r(2, 3, 4, 8), _r(2, 5, 2, 8), _r(2, 5, 2, 8), None, 1.0, 0), 2),
    ("moe_route", lambda: (_r(4, 8), _r(8), 2), 1),
    ("moe_experts", lambda: (_r(5, 16), _r(5, 2), _idx(5, 2, 4), _r(4, 16, 16), _r(4, 16, 8), "silu"), 3),
    ("moe_experts_quant", _qexperts, 5),
]


@pytest.mark.parametrize("op,make,which", GOOD, ids=[g[0] for g in GOOD])
def test_cpu_and_meta_mixed_is_an_error(op, make, which):
    args = list(make())
    getattr(ops, op)(*args)  # fine on one device
    args[which] = args[which].to("meta")
    with pytest.raises(RuntimeError, match="must be on cpu like the input, got meta"):
        getattr(ops, op)(*args)


def test_meta_outputs_match_the_kernel():
    """Shapes, dtypes and strides of the fake kernels' outputs, strided inputs included."""
    x = _r(16, 4).t()  # [4, 16], not contiguous
    for op, args in [("rms_norm", (x, _r(16), 1e-6)), ("gated_activation", (x, x, "silu")),
                     ("rope", (_r(2, 8, 3, 4).transpose(1, 2), torch.zeros(1, 3, dtype=torch.long), _r(2)))]:
        real = getattr(ops, op)(*args)
        fake = getattr(ops, op)(*(_meta(a) for a in args))
        assert (fake.shape, fake.dtype, fake.stride()) == (real.shape, real.dtype, real.stride()), op
