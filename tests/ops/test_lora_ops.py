"""gemma4::lora_down / lora_up / lora_weight_grad (LoRA's thin GEMMs with float32 factors over an activation in
its own dtype) against reference.lora_* in float64. Error rule: ours against the float64 reference is at most
2x plain PyTorch's (the reference run in float32, which is PEFT's maths: the activation widened to float32).
Runs on every backend (the device fixture); CUDA is also compared with the CPU kernel. Shapes cover the
vector paths (K % 4 == 0), the element paths (odd K) and CUDA's tensor-core paths (bf16; K % 32 == 0, M % 16 == 0), ranks below, at and above the 16-rank tile, row
counts that leave partial blocks, and strided (transposed) factors.
"""
import pytest
import torch

from gemma4 import ops as gops
from gemma4.ops import reference as ref
from tests.helpers import BACKENDS, assert_lowp_close, assert_same

pytestmark = pytest.mark.usefixtures("device")
OPS = ("lora_down", "lora_up", "lora_weight_grad")
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
# (in bf16 on CUDA: K % 32 == 0 takes the tensor-core lora_down, K % 8 == 0 the tensor-core weight grad,
# M % 16 == 0 with r <= 64 the tensor-core lora_up; 1040 leaves a partial 64-column block)
SHAPES = [(1, 4, 1), (5, 3, 2), (37, 256, 16), (70, 704, 8), (33, 2112, 17), (300, 1536, 16), (9, 130, 40),
          (130, 1024, 40), (130, 1040, 40)]


def _rand(*shape, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)  # (a CPU generator: draws on the CPU, then moved)
    t = torch.randn(*shape, generator=g, dtype=torch.float64, device="cpu") * scale
    return t.to(dtype).to(torch.get_default_device())


def _factor(rows, cols, transposed, seed):
    """A float32 [rows, cols] factor, contiguous or as the transposed view of a [cols, rows] tensor."""
    if transposed:
        return _rand(cols, rows, seed=seed, scale=0.1).t()
    return _rand(rows, cols, seed=seed, scale=0.1)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("N,K,r", SHAPES)
@pytest.mark.parametrize("transposed", [False, True])
def test_lora_down_matches_reference(dtype, N, K, r, transposed):
    x, w = _rand(N, K, dtype=dtype, seed=K), _factor(r, K, transposed, seed=r)
    got = gops.lora_down(x, w, 1.5)
    assert got.dtype == torch.float32 and got.shape == (N, r)
    assert_lowp_close(got, ref.lora_down(x.double(), w.double(), 1.5), ref.lora_down(x, w, 1.5))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("N,M,r", SHAPES)
@pytest.mark.parametrize("with_base", [True, False])
@pytest.mark.parametrize("transposed", [False, True])
def test_lora_up_matches_reference(dtype, N, M, r, with_base, transposed):
    down, w = _rand(N, r, seed=N), _factor(M, r, transposed, seed=M)
    base = _rand(N, M, dtype=dtype, seed=r, scale=4.0) if with_base else None
    got = gops.lora_up(down, w, 2.0, base, dtype)
    assert got.dtype == dtype and got.shape == (N, M)
    want = ref.lora_up(down.double(), w.double(), 2.0, None if base is None else base.double(), torch.float64)
    assert_lowp_close(got, want, ref.lora_up(down, w, 2.0, base, dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("N,K,r", SHAPES + [(4099, 512, 16), (1000, 12, 3)])  # (row splits on CUDA)
def test_lora_weight_grad_matches_reference(dtype, N, K, r):
    x, d = _rand(N, K, dtype=dtype, seed=N), _rand(N, r, seed=K)
    got = gops.lora_weight_grad(x, d, 0.5)
    assert got.dtype == torch.float32 and got.shape == (r, K)
    assert_lowp_close(got, ref.lora_weight_grad(x.double(), d.double(), 0.5), ref.lora_weight_grad(x, d, 0.5))


def test_weight_grad_is_the_same_on_every_run():
    x, d = _rand(5000, 768, dtype=torch.bfloat16, seed=1), _rand(5000, 16, seed=2)
    assert_same(gops.lora_weight_grad(x, d), gops.lora_weight_grad(x, d))


def test_empty_and_zero_width():
    x = _rand(0, 8, dtype=torch.bfloat16)
    assert gops.lora_down(x, _rand(4, 8), 1.0).shape == (0, 4)
    assert gops.lora_up(_rand(0, 4), _rand(8, 4), 1.0, None, torch.bfloat16).shape == (0, 8)
    g = gops.lora_weight_grad(x, _rand(0, 4))
    assert g.shape == (4, 8) and (g == 0).all()  # no rows: a zero gradient
    assert (gops.lora_down(_rand(3, 0, dtype=torch.bfloat16), _rand(4, 0)) == 0).all()


def test_gradients_match_reference():
    """Each op's autograd (made of the three ops) against autograd through the float64 reference."""
    N, K, M, r, s = 45, 96, 80, 12, 1.75
    x = _rand(N, K, dtype=torch.bfloat16, seed=1)
    A, B = _rand(r, K, seed=2), _rand(M, r, seed=3)
    base = _rand(N, M, dtype=torch.bfloat16, seed=4)
    gout = _rand(N, M, dtype=torch.bfloat16, seed=5)

    def grads(fn, *inputs):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        out = fn(*leaves)
        out.backward(gout.to(out.dtype))
        return [t.grad for t in leaves]

    def ours(x_, A_, B_, base_):
        return gops.lora_up(gops.lora_down(x_, A_), B_, s, base_)

    def reference(x_, A_, B_, base_):
        return ref.lora_up(ref.lora_down(x_, A_, 1.0), B_, s, base_, x_.dtype)

    got = grads(ours, x, A, B, base)
    exact = grads(reference, x.double(), A.double(), B.double(), base.double())
    plain = grads(reference, x, A, B, base)  # PEFT's maths: float32 on the widened activation
    for name, a, b, c in zip(["x", "A", "B", "base"], got, exact, plain):
        assert a.dtype == c.dtype, name
        assert_lowp_close(a, b.to(a.dtype), c)

    # lora_weight_grad's own gradient (double backward of a factor's gradient)
    d = _rand(N, r, seed=6)
    G = _rand(r, K, seed=7)
    leaves = [x.detach().clone().requires_grad_(), d.clone().requires_grad_()]
    gops.lora_weight_grad(*leaves, s).backward(G)
    lx = [x.double().requires_grad_(), d.double().requires_grad_()]
    ref.lora_weight_grad(*lx, s).backward(G.double())
    lp = [x.detach().clone().requires_grad_(), d.clone().requires_grad_()]
    ref.lora_weight_grad(*lp, s).backward(G)
    for a, b, c in zip(leaves, lx, lp):
        assert_lowp_close(a.grad, b.grad.to(a.dtype), c.grad)


def test_opcheck():
    x = _rand(6, 20, dtype=torch.bfloat16, seed=1).requires_grad_()
    A, B = _rand(4, 20, seed=2).requires_grad_(), _rand(12, 4, seed=3).requires_grad_()
    down = _rand(6, 4, seed=4).requires_grad_()
    base = _rand(6, 12, dtype=torch.bfloat16, seed=5).requires_grad_()
    torch.library.opcheck(torch.ops.gemma4.lora_down.default, (x, A, 0.5))
    torch.library.opcheck(torch.ops.gemma4.lora_up.default, (down, B, 2.0, base, torch.bfloat16))
    torch.library.opcheck(torch.ops.gemma4.lora_up.default, (down, B, 2.0, None, torch.float32))
    torch.library.opcheck(torch.ops.gemma4.lora_weight_grad.default, (x, down, 1.0))


@pytest.mark.skipif("cuda" not in BACKENDS, reason="no CUDA backend")
@pytest.mark.parametrize("K,M", [(1538, 1000), (1536, 1040)])  # the SIMT kernels; the tensor-core ones
def test_cuda_matches_the_cpu_kernel(device, K, M):
    if device.type != "cuda":
        pytest.skip("compares the CUDA kernels with the CPU ones")
    N, r = 257, 16  # odd row blocks; M not a multiple of the column tiles
    x, A, B = _rand(N, K, dtype=torch.bfloat16, seed=1), _rand(r, K, seed=2), _rand(M, r, seed=3)
    base, d = _rand(N, M, dtype=torch.bfloat16, seed=4), _rand(N, r, seed=5)
    cpu = lambda t: t.cpu()  # noqa: E731
    for name, fn, args in [("lora_down", gops.lora_down, (x, A, 1.0)),
                           ("lora_up", gops.lora_up, (d, B, 2.0, base)),
                           ("lora_weight_grad", gops.lora_weight_grad, (x, d, 1.0))]:
        got, want = fn(*args), fn(*map(lambda a: cpu(a) if isinstance(a, torch.Tensor) else a, args))
        exact = getattr(ref, name)(*[a.double() if isinstance(a, torch.Tensor) else a for a in args],
                                   *((torch.float64,) if name == "lora_up" else ()))
        assert_lowp_close(got.cpu(), exact.cpu().to(got.dtype), want, factor=2.0)


@pytest.mark.parametrize("call, match", [
    (lambda: gops.lora_down(_rand(4, 8).double(), _rand(2, 8), 1.0), "x must be float32, bfloat16 or float16"),
    (lambda: gops.lora_down(_rand(4, 8), _rand(2, 7), 1.0), r"weight.size\(1\) must be 8"),
    (lambda: gops.lora_down(_rand(4, 8), _rand(2, 8).half(), 1.0), "weight must be Float"),
    (lambda: gops.lora_down(_rand(2, 4, 8), _rand(2, 8), 1.0), "x must have 2 dimensions"),
    (lambda: gops.lora_up(_rand(4, 2).half(), _rand(8, 2), 1.0, None, torch.float32), "down must be Float"),
    (lambda: gops.lora_up(_rand(4, 2), _rand(8, 3), 1.0, None, torch.float32), r"weight.size\(1\) must be 2"),
    (lambda: gops.lora_up(_rand(4, 2), _rand(8, 2), 1.0, _rand(4, 8), torch.bfloat16), "base must be BFloat16"),
    (lambda: gops.lora_up(_rand(4, 2), _rand(8, 2), 1.0, _rand(4, 7), torch.float32), r"base.size\(1\) must be 8"),
    (lambda: gops.lora_up(_rand(4, 2), _rand(8, 2), 1.0, None, torch.float64), "dtype must be float32"),
    (lambda: torch.ops.gemma4.lora_up(_rand(2, 4).t(), _rand(8, 2), 1.0, None, torch.float32),
     "down must be contiguous"),
    (lambda: gops.lora_weight_grad(_rand(4, 8), _rand(5, 2), 1.0), r"d.size\(0\) must be 4"),
    (lambda: torch.ops.gemma4.lora_weight_grad(_rand(8, 4).t(), _rand(4, 2), 1.0), "x must be contiguous"),
])
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()
    with pytest.raises(RuntimeError, match=match), torch.device("meta"):  # the fake kernels check the same
        call()
