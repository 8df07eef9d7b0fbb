"""gemma4::softcap_cross_entropy (per-row weighted cross-entropy through the soft-cap; the logits are
overwritten with the gradient) against reference.softcap_cross_entropy in float64. Error rule: ours against
the float64 reference is at most 2x plain PyTorch's (the reference run in the logits' dtype), for the losses
and for the gradient; float64 equals the reference tightly. Runs on every backend (the device fixture), plus
CUDA against the CPU kernel.
"""
import pytest
import torch

from gemma4.ops import reference as ref
from gemma4.ops import softcap_cross_entropy
from tests.helpers import BACKENDS, assert_lowp_close, tight_tol

pytestmark = pytest.mark.usefixtures("device")
OPS = ("softcap_cross_entropy",)
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _case(n, V, dtype, scale=8.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, V, generator=g, dtype=torch.float64, device="cpu") * scale).to(dtype)
    targets = torch.randint(0, V, (n,), generator=g, device="cpu")
    row_weight = torch.rand(n, generator=g, device="cpu") + 0.1
    if n > 2:
        row_weight[1] = 0.0  # a row that does not count: zero loss and zero gradient
    dev = torch.get_default_device()
    return logits.to(dev), targets.to(dev), row_weight.to(dev)


def _run(logits, targets, row_weight, cap):
    grad = logits.clone()
    losses = softcap_cross_entropy(grad, targets, row_weight, cap)
    return losses, grad


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cap", [None, 30.0, 2.0])
@pytest.mark.parametrize("n,V", [(1, 1), (3, 7), (5, 37), (4, 1000), (2, 4099), (3, 32768)])
def test_matches_reference(dtype, cap, n, V):
    logits, targets, row_weight = _case(n, V, dtype, seed=V)
    losses, grad = _run(logits, targets, row_weight, cap)
    assert losses.dtype == torch.float32 and losses.shape == (n,)
    assert grad.dtype == dtype and grad.shape == (n, V)
    want_loss, want_grad = ref.softcap_cross_entropy(logits.double(), targets, row_weight, cap)
    plain_loss, plain_grad = ref.softcap_cross_entropy(logits, targets, row_weight, cap)
    assert_lowp_close(losses, want_loss.to(losses.dtype), plain_loss)
    assert_lowp_close(grad, want_grad.to(dtype), plain_grad)
    if n > 2:
        assert losses[1] == 0 and (grad[1] == 0).all()


@pytest.mark.parametrize("cap", [None, 30.0])
def test_float64_equals_reference(cap):
    logits, targets, row_weight = _case(4, 513, torch.float64)
    losses, grad = _run(logits, targets, row_weight, cap)
    want_loss, want_grad = ref.softcap_cross_entropy(logits, targets, row_weight, cap)
    assert losses.dtype == torch.float64
    torch.testing.assert_close(losses, want_loss, **tight_tol(torch.float64))
    torch.testing.assert_close(grad, want_grad, **tight_tol(torch.float64))


def test_gradient_rows_sum_to_zero_and_target_is_negative():
    # without a cap each row's gradient is w * (softmax - onehot): it sums to 0, negative only at the target
    logits, targets, row_weight = _case(6, 300, torch.float32, scale=3.0)
    _, grad = _run(logits, targets, row_weight, None)
    torch.testing.assert_close(grad.sum(1), torch.zeros(6, device=grad.device), rtol=0, atol=1e-6)
    negative = grad < 0
    assert negative.sum(1).tolist() == [1, 0, 1, 1, 1, 1]  # row 1 has weight 0
    assert all(negative[i, targets[i]] for i in (0, 2, 3, 4, 5))


def test_huge_logits_stay_finite():
    logits, targets, row_weight = _case(3, 500, torch.float32, scale=1e4)
    losses, grad = _run(logits, targets, row_weight, None)
    assert torch.isfinite(losses).all() and torch.isfinite(grad).all()
    want_loss, want_grad = ref.softcap_cross_entropy(logits.double(), targets, row_weight, None)
    torch.testing.assert_close(losses.double(), want_loss, rtol=1e-5, atol=1e-3)


def test_no_rows():
    logits, targets, row_weight = _case(0, 10, torch.float32)
    losses, grad = _run(logits, targets, row_weight, 30.0)
    assert losses.shape == (0,) and grad.shape == (0, 10)


BAD = [
    (lambda l, t, w: (l.int(), t, w, None), "logits must be float32"),
    (lambda l, t, w: (l[None], t, w, None), "logits must have 2 dimensions"),
    (lambda l, t, w: (l.t(), t[:1].expand(l.shape[1]).contiguous(), w[:1].expand(l.shape[1]).contiguous(), None),
     "logits must be contiguous"),
    (lambda l, t, w: (l, t.int(), w, None), "targets must be Long"),
    (lambda l, t, w: (l, t[:-1], w, None), r"targets.size\(0\) must be 4"),
    (lambda l, t, w: (l, t, w.double(), None), "row_weight must be Float"),
    (lambda l, t, w: (l, t, w[:, None], None), "row_weight must have 1 dimensions"),
    (lambda l, t, w: (l, t, w, 0.0), "softcap must be None or a finite number > 0"),
    (lambda l, t, w: (l, t, w, float("inf")), "softcap must be None or a finite number > 0"),
    (lambda l, t, w: (l[:, :0].contiguous(), t, w, None), "logits must have at least one column"),
]


@pytest.mark.parametrize("make,match", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input_one_clear_error(make, match):
    logits, targets, row_weight = _case(4, 8, torch.float32)
    args = make(logits, targets, row_weight)
    with pytest.raises(RuntimeError, match=f"gemma4::softcap_cross_entropy: {match}"):
        torch.ops.gemma4.softcap_cross_entropy(*args)
    meta = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in args]
    with pytest.raises(RuntimeError, match=f"gemma4::softcap_cross_entropy: {match}"):
        torch.ops.gemma4.softcap_cross_entropy(*meta)  # the fake kernel checks too


def test_target_out_of_range():
    logits, targets, row_weight = _case(4, 8, torch.float32)
    targets[2] = 8
    if logits.device.type == "cpu":
        with pytest.raises(RuntimeError, match=r"targets must be in \[0, 8\), got 8 at row 2"):
            softcap_cross_entropy(logits, targets, row_weight, None)
    else:  # no host sync on CUDA: the row's loss is NaN
        losses = softcap_cross_entropy(logits, targets, row_weight, None)
        assert torch.isnan(losses[2]) and torch.isfinite(losses[[0, 1, 3]]).all()


def test_logits_requiring_grad_are_refused():
    logits, targets, row_weight = _case(4, 8, torch.float32)
    with pytest.raises(RuntimeError, match="logits must not require grad"):
        softcap_cross_entropy(logits.requires_grad_(), targets, row_weight, None)


def test_mixed_devices_are_refused():
    logits, targets, row_weight = _case(4, 8, torch.float32)
    with pytest.raises(RuntimeError, match="targets must be on .* like the input, got meta"):
        torch.ops.gemma4.softcap_cross_entropy(logits, targets.to("meta"), row_weight, None)


@pytest.mark.cuda
@pytest.mark.skipif("cuda" not in BACKENDS, reason="needs a GPU and a CUDA build")
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64], ids=str)
@pytest.mark.parametrize("cap", [None, 30.0])
@pytest.mark.parametrize("n,V", [(3, 37), (2, 262144), (5, 4100)])
def test_cuda_matches_cpu(dtype, cap, n, V):
    """The CUDA kernel against the CPU kernel: error against float64 at most 2x the CPU kernel's + 2 ulp."""
    with torch.device("cpu"):
        logits, targets, row_weight = _case(n, V, dtype, seed=n)
    cpu = _run(logits, targets, row_weight, cap)
    cuda = _run(logits.cuda(), targets.cuda(), row_weight.cuda(), cap)
    exact = ref.softcap_cross_entropy(logits.double(), targets, row_weight, cap)
    for c, g, e in zip(cpu, cuda, exact):
        g = g.cpu()
        assert g.dtype == c.dtype and g.shape == c.shape
        err_cuda, err_cpu = (g.double() - e).abs().max().item(), (c.double() - e).abs().max().item()
        ulp = torch.finfo(c.dtype).eps * e.abs().max().item()
        assert err_cuda <= 2 * err_cpu + 2 * ulp, (err_cuda, err_cpu)
