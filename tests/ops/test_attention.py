"""gemma4::attention / attention_backward against reference.attention (python/gemma4/ops/reference.py).

float64/float32: tight, against the reference evaluated in float64 on the same input values.
bfloat16/float16: our error against the float32 reference may be at most 2x the error of the same
reference maths done in the low dtype (tests.helpers.assert_lowp_close).
"""
import pytest
import torch

import gemma4._native  # noqa: F401
from gemma4.ops import reference
from gemma4.ops.attention import attention, attention_cpu_isa
from tests.helpers import assert_lowp_close, assert_same, tight_tol

# Every test runs on each backend present (tests/ops/conftest.py), its inputs created there.
pytestmark = pytest.mark.usefixtures("device")
OPS = ("attention", "attention_backward")

LOWP = (torch.bfloat16, torch.float16)

# (B, T, S, nH, nKV, hd, window, mask): T=1 decode, S==T prefill, S>T chunked prefill; windows smaller
# and larger than T, window=1; nH/nKV ratios 1, 2, 3, 4, 8; hd 64/256/512 and odd sizes.
# mask: None | "left" (left padding, every row sees a key) | "full" (some rows see nothing) | "random"
SHAPES = [
    (2, 1, 700, 8, 1, 256, 0, None),        # decode, long cache, nKV=1 (E2B-like)
    (2, 1, 700, 8, 2, 64, 512, "left"),     # decode, sliding window, padded batch
    (3, 1, 300, 4, 4, 72, 0, "full"),       # decode, ratio 1, odd hd, a fully padded row
    (1, 1, 513, 8, 8, 64, 100, "random"),   # decode, ratio 1
    (1, 64, 64, 8, 1, 256, 0, None),        # prefill, ratio 8
    (2, 37, 37, 4, 2, 72, 16, "left"),      # prefill, window < T, odd hd
    (1, 130, 130, 2, 1, 512, 1, None),      # window = 1 (each query sees itself), hd 512
    (1, 200, 200, 8, 4, 64, 300, None),     # window > T
    (2, 50, 80, 8, 8, 64, 16, "full"),      # chunked prefill, rows fully masked
    (1, 17, 333, 4, 1, 256, 64, "random"),  # chunked prefill, ratio 4
    (2, 5, 9, 12, 3, 36, 3, "full"),        # ratio 4, tiny
    (1, 3, 3, 2, 1, 5, 0, "left"),          # hd not a multiple of the vector width
    (1, 4, 6, 6, 2, 1, 0, None),            # hd = 1, ratio 3
    (1, 70, 70, 3, 1, 512, 0, None),        # hd 512, ratio 3 (rows not a multiple of 8)
]


def _ids(shape):
    return "B{}T{}S{}H{}KV{}hd{}W{}{}".format(*shape[:7], shape[7] or "")


def _mask(kind, B, T, S):
    if kind is None:
        return None
    m = torch.ones(B, S, dtype=torch.bool)
    if kind == "random":
        m = torch.rand(B, S) > 0.3
    else:
        for b in range(B):
            pad = torch.randint(0, S - T + 1, ()).item()  # every query still sees its own key
            m[b, :pad] = False
        if kind == "full":  # batch row 1 pads past the first queries' keys: those rows see nothing
            m[min(1, B - 1), : S - T + 2] = False
    return m


def _inputs(shape, dtype, requires_grad=False):
    B, T, S, nH, nKV, hd, window, kind = shape
    q = torch.randn(B, T, nH, hd, dtype=dtype)
    k = torch.randn(B, S, nKV, hd, dtype=dtype)
    v = torch.randn(B, S, nKV, hd, dtype=dtype)
    if requires_grad:
        for t in (q, k, v):
            t.requires_grad_()
    return q, k, v, _mask(kind, B, T, S), hd ** -0.5, window


def _plain_lowp(q, k, v, key_mask, scale, window):
    """reference.attention's maths, done in the low dtype throughout (the 'plain PyTorch' baseline)."""
    B, T, nH, hd = q.shape
    S, nKV = k.shape[1], k.shape[2]
    groups = nH // nKV
    qf = q.transpose(1, 2)
    kf = k.transpose(1, 2).repeat_interleave(groups, dim=1)
    vf = v.transpose(1, 2).repeat_interleave(groups, dim=1)
    scores = qf @ kf.transpose(-1, -2) * scale
    qi = torch.arange(T)[:, None] + (S - T)
    kj = torch.arange(S)[None, :]
    allowed = kj <= qi
    if window > 0:
        allowed = allowed & (kj > qi - window)
    allowed = allowed[None, None]
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :]
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return (probs @ vf).transpose(1, 2).contiguous()


def _check_lse(lse, ref_lse, dtype):
    assert lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    assert (lse[~finite] == float("-inf")).all()
    # lse is computed in float32 (float64) from the exact inputs in every dtype
    tol = tight_tol(torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(lse[finite].double(), ref_lse[finite].double(), **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_forward(shape, dtype):
    q, k, v, km, scale, window = _inputs(shape, dtype)
    out, lse = torch.ops.gemma4.attention(q, k, v, km, scale, window)
    assert out.shape == q.shape and out.dtype == dtype and out.is_contiguous()
    ref_out, ref_lse = reference.attention(q.double(), k.double(), v.double(), km, scale, window)
    _check_lse(lse, ref_lse, dtype)
    if dtype in LOWP:
        ref32, _ = reference.attention(q, k, v, km, scale, window)  # float32 maths on the low-precision inputs
        assert_lowp_close(out, ref32, _plain_lowp(q, k, v, km, scale, window))
    else:
        torch.testing.assert_close(out.double(), ref_out, **tight_tol(dtype))


def test_forward_large_scores():
    """Scale 1 (Gemma 4) with large logits (|s| ~ 100): softmax nearly one-hot, nothing overflows.

    Scores this large carry fp32 rounding of ~1e-5 absolute, so the float32 output is held to the
    float32 reference's own error against float64 (2x rule), not to a fixed 1e-5."""
    q, k, v = torch.randn(1, 40, 4, 64) * 3, torch.randn(1, 40, 2, 64) * 3, torch.randn(1, 40, 2, 64)
    out, lse = torch.ops.gemma4.attention(q, k, v, None, 1.0, 0)
    ref_out, ref_lse = reference.attention(q.double(), k.double(), v.double(), None, 1.0, 0)
    ref32_out, ref32_lse = reference.attention(q, k, v, None, 1.0, 0)
    assert lse.max() > 100
    assert_lowp_close(out, ref_out, ref32_out)
    assert_lowp_close(lse, ref_lse, ref32_lse)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_counts(threads):
    """Decode splits the key range over threads (flash-decoding) and prefill balances tiles across them:
    every thread count gives the reference result."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for shape in (SHAPES[0], SHAPES[1], SHAPES[5], SHAPES[9]):
            q, k, v, km, scale, window = _inputs(shape, torch.float32)
            out, lse = torch.ops.gemma4.attention(q, k, v, km, scale, window)
            ref_out, ref_lse = reference.attention(q.double(), k.double(), v.double(), km, scale, window)
            torch.testing.assert_close(out.double(), ref_out, **tight_tol(torch.float32))
            _check_lse(lse, ref_lse, torch.float32)
            go = torch.randn_like(out)
            grads = torch.ops.gemma4.attention_backward(go, q, k, v, out, lse, km, scale, window)
            for g, r in zip(grads, _ref_grads(q, k, v, km, scale, window, go, torch.float64)):
                torch.testing.assert_close(g.double(), r, **tight_tol(torch.float32))
    finally:
        torch.set_num_threads(old)


# Single-sequence decode (one (b, KV head) item): the key range is split in equal parts over the threads
# once each part keeps >= 48 keys x 8 rows x 256 of work, and the last part to finish merges them. Parts
# that see no key (window, padding) and rows that see nothing at all must merge to the reference.
SPLIT_DECODE = [
    (1, 1, 65, 8, 1, 256, 0, None),       # too little work to split
    (1, 1, 100, 8, 1, 256, 0, None),      # E2B sliding layer early in a generation: 2 parts
    (1, 1, 200, 8, 1, 512, 0, "random"),  # E2B full layer, padded keys
    (1, 1, 200, 8, 1, 256, 16, None),     # window: the first parts see no key
    (1, 1, 129, 8, 1, 256, 0, "left"),    # left padding: the first part sees no key
    (1, 1, 150, 8, 1, 256, 0, "full"),    # the row sees nothing in any part
    (1, 2, 190, 4, 1, 72, 50, "random"),  # two query rows, odd hd
]


@pytest.mark.parametrize("threads", [2, 3, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SPLIT_DECODE, ids=_ids)
def test_split_decode(shape, dtype, threads):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        q, k, v, km, scale, window = _inputs(shape, dtype)
        out, lse = torch.ops.gemma4.attention(q, k, v, km, scale, window)
        ref_out, ref_lse = reference.attention(q.double(), k.double(), v.double(), km, scale, window)
        _check_lse(lse, ref_lse, dtype)
        if dtype in LOWP:
            ref32, _ = reference.attention(q, k, v, km, scale, window)
            assert_lowp_close(out, ref32, _plain_lowp(q, k, v, km, scale, window))
        else:
            torch.testing.assert_close(out.double(), ref_out, **tight_tol(dtype))
        for _ in range(3):  # the parts merge in part order whichever thread finishes last
            again, again_lse = torch.ops.gemma4.attention(q, k, v, km, scale, window)
            assert torch.equal(again, out) and torch.equal(again_lse, lse)
    finally:
        torch.set_num_threads(old)


@pytest.fixture(params=["avx2", "avx512bf16"])
def bf16_decode_isa(request, device):
    """The CPU bf16 decode products' instruction set (attention_cpu_isa): fp32 FMAs on widened tiles, or
    vdpbf16ps on the bf16 rows where the CPU has AVX512_BF16."""
    if device.type != "cpu":
        pytest.skip("a CPU kernel choice")
    try:
        attention_cpu_isa(request.param)
    except RuntimeError:
        pytest.skip("this CPU has no AVX512_BF16")
    yield request.param
    attention_cpu_isa("auto")


# Query groups of at most 8 rows at head_dim a multiple of 32: the shapes the vdpbf16ps products take.
DECODE_BF16 = [
    (2, 1, 700, 8, 1, 256, 0, None),       # E2B sliding layer's shape, long cache
    (1, 1, 300, 8, 1, 512, 0, "random"),   # E2B full layer, padded keys
    (2, 1, 200, 8, 2, 256, 64, "left"),    # two KV heads (groups of 4), window, left padding
    (2, 2, 150, 4, 1, 256, 0, "full"),     # two positions x 4 heads = 8 rows; a row that sees nothing
    (3, 1, 97, 2, 1, 96, 0, "random"),     # an odd key count, head_dim 3 x 32
    (1, 1, 129, 1, 1, 32, 0, None),        # one row
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", DECODE_BF16, ids=_ids)
def test_bf16_decode_paths(shape, threads, bf16_decode_isa):
    """bf16 decode on either CPU path: the error rule against the float32 reference (the low-precision maths
    as the baseline), the log-sum-exp tight, and the same bits again (the split parts merge in order)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        q, k, v, km, scale, window = _inputs(shape, torch.bfloat16)
        out, lse = torch.ops.gemma4.attention(q, k, v, km, scale, window)
        ref_out, ref_lse = reference.attention(q.double(), k.double(), v.double(), km, scale, window)
        _check_lse(lse, ref_lse, torch.bfloat16)
        ref32, _ = reference.attention(q, k, v, km, scale, window)
        assert_lowp_close(out, ref32, _plain_lowp(q, k, v, km, scale, window))
        again, again_lse = torch.ops.gemma4.attention(q, k, v, km, scale, window)
        assert torch.equal(again, out) and torch.equal(again_lse, lse)
    finally:
        torch.set_num_threads(old)


def test_bf16_decode_nonfinite_padding(bf16_decode_isa):
    """NaN/inf in the K and V rows of padded keys change nothing on either bf16 decode path: the result equals
    the one with those rows zeroed, bit for bit (the vdpbf16ps path zeroes them in its V pairs)."""
    B, S, nH, hd = 2, 150, 8, 256
    q, k, v = torch.randn(B, 1, nH, hd).bfloat16(), torch.randn(B, S, 1, hd).bfloat16(), torch.randn(B, S, 1, hd).bfloat16()
    mask = torch.rand(B, S) > 0.3
    mask[:, -1] = True  # the query's own key
    pad = ~mask
    bad_k, bad_v = k.clone(), v.clone()
    bad_k[pad] = float("nan")
    bad_v[pad] = float("inf")
    clean_k, clean_v = k.masked_fill(pad[..., None, None], 0), v.masked_fill(pad[..., None, None], 0)
    out, lse = torch.ops.gemma4.attention(q, bad_k, bad_v, mask, 1.0, 0)
    out_c, lse_c = torch.ops.gemma4.attention(q, clean_k, clean_v, mask, 1.0, 0)
    assert torch.equal(out, out_c) and torch.equal(lse, lse_c)


def test_attention_cpu_isa_requests():
    """attention_cpu_isa reports the path, selects it, and names a bad request."""
    assert attention_cpu_isa() in ("avx2", "avx512bf16")
    try:
        assert attention_cpu_isa("avx2") == "avx2"
        assert attention_cpu_isa("") == "avx2"
    finally:
        attention_cpu_isa("auto")
    with pytest.raises(RuntimeError, match="request must be"):
        attention_cpu_isa("sse")


def test_backward_deterministic():
    """grad_q is summed from per-worker buffers with a fixed work split: bit-identical run to run."""
    q, k, v, km, scale, window = _inputs((1, 300, 300, 8, 1, 64, 100, None), torch.float32)
    out, lse = torch.ops.gemma4.attention(q, k, v, km, scale, window)
    go = torch.randn_like(out)
    first = torch.ops.gemma4.attention_backward(go, q, k, v, out, lse, km, scale, window)
    for _ in range(3):
        again = torch.ops.gemma4.attention_backward(go, q, k, v, out, lse, km, scale, window)
        for a, b in zip(first, again):
            assert torch.equal(a, b)


def test_fully_masked_rows_zero():
    q, k, v = torch.randn(2, 3, 4, 16), torch.randn(2, 5, 2, 16), torch.randn(2, 5, 2, 16)
    km = torch.ones(2, 5, dtype=torch.bool)
    km[1] = False  # batch row 1 sees nothing
    q.requires_grad_()
    out, lse = torch.ops.gemma4.attention(q, k, v, km, 1.0, 0)
    assert (out[1] == 0).all() and (lse[1] == float("-inf")).all()
    attention(q, k, v, km, 1.0, 0).sum().backward()
    assert (q.grad[1] == 0).all() and torch.isfinite(q.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_strided_cache_views(dtype):
    """k/v as slices of a [B, nKV, T_max, hd] cache, q as a slice of a fused projection: no copies needed."""
    B, T, S, Tmax, nH, nKV, hd = 2, 6, 40, 64, 8, 2, 64
    cache_k = torch.randn(B, nKV, Tmax, hd, dtype=dtype)
    cache_v = torch.randn(B, nKV, Tmax, hd, dtype=dtype)
    k = cache_k[:, :, :S].transpose(1, 2)  # [B, S, nKV, hd], strides (nKV*Tmax*hd, hd, Tmax*hd, 1)
    v = cache_v[:, :, :S].transpose(1, 2)
    qkv = torch.randn(B, T, nH, 3 * hd, dtype=dtype)
    q = qkv[..., hd: 2 * hd]
    assert not (k.is_contiguous() or v.is_contiguous() or q.is_contiguous())
    km = _mask("left", B, T, S)
    out, lse = torch.ops.gemma4.attention(q, k, v, km, 0.125, 16)
    out_c, lse_c = torch.ops.gemma4.attention(q.contiguous(), k.contiguous(), v.contiguous(), km, 0.125, 16)
    torch.testing.assert_close(out, out_c, rtol=0, atol=0)
    torch.testing.assert_close(lse, lse_c, rtol=0, atol=0)
    go = torch.randn(B, T, nH, hd, dtype=dtype)
    grads = torch.ops.gemma4.attention_backward(go, q, k, v, out, lse, km, 0.125, 16)
    grads_c = torch.ops.gemma4.attention_backward(go, q.contiguous(), k.contiguous(), v.contiguous(), out, lse, km,
                                                  0.125, 16)
    for g, gc in zip(grads, grads_c):
        torch.testing.assert_close(g, gc, rtol=0, atol=0)


def _ref_grads(q, k, v, km, scale, window, go, dtype):
    qd, kd, vd = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    out, _ = reference.attention(qd, kd, vd, km, scale, window)
    out.backward(go.to(dtype))
    return qd.grad, kd.grad, vd.grad


GRAD_SHAPES = [s for s in SHAPES if s[5] <= 256 and s[1] * s[2] <= 20000]


@pytest.mark.parametrize("shape", GRAD_SHAPES, ids=_ids)
def test_backward_float32(shape):
    q, k, v, km, scale, window = _inputs(shape, torch.float32, requires_grad=True)
    out = attention(q, k, v, km, scale, window)
    go = torch.randn_like(out)
    out.backward(go)
    ref = _ref_grads(q, k, v, km, scale, window, go, torch.float64)  # autograd through the reference
    for name, ours, r in zip("qkv", (q.grad, k.grad, v.grad), ref):
        assert torch.isfinite(r).all(), name
        torch.testing.assert_close(ours.double(), r, **tight_tol(torch.float32), msg=lambda m: f"grad_{name}: {m}")


@pytest.mark.parametrize("dtype", LOWP, ids=str)
@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[5], SHAPES[9], SHAPES[10]], ids=_ids)
def test_backward_lowp(shape, dtype):
    q, k, v, km, scale, window = _inputs(shape, dtype, requires_grad=True)
    out = attention(q, k, v, km, scale, window)
    go = torch.randn_like(out)
    out.backward(go)
    ref32 = _ref_grads(q, k, v, km, scale, window, go, torch.float32)
    qp, kp, vp = (t.detach().clone().requires_grad_() for t in (q, k, v))
    _plain_lowp(qp, kp, vp, km, scale, window).backward(go)
    for ours, r, plain in zip((q.grad, k.grad, v.grad), ref32, (qp.grad, kp.grad, vp.grad)):
        assert ours.dtype == dtype
        assert_lowp_close(ours, r, plain)


@pytest.mark.parametrize("case", [(2, 3, 5, 4, 2, 8, 0, "full"), (1, 4, 4, 3, 1, 6, 2, None), (1, 1, 9, 2, 2, 5, 4, "left")],
                         ids=_ids)
def test_gradcheck_float64(case):
    q, k, v, km, scale, window = _inputs(case, torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v: attention(q, k, v, km, scale, window), (q, k, v))


@pytest.mark.parametrize("case", [(2, 3, 5, 4, 2, 8, 2, "full"), (1, 1, 70, 8, 1, 64, 0, None)], ids=_ids)
def test_opcheck(case):
    q, k, v, km, scale, window = _inputs(case, torch.float32)
    torch.library.opcheck(torch.ops.gemma4.attention.default, (q, k, v, km, scale, window))
    out, lse = torch.ops.gemma4.attention(q, k, v, km, scale, window)
    torch.library.opcheck(torch.ops.gemma4.attention_backward.default,
                          (torch.randn_like(out), q, k, v, out, lse, km, scale, window))


def test_compile_fullgraph():
    q, k, v, km, scale, window = _inputs((2, 8, 12, 4, 2, 32, 5, "left"), torch.float32, requires_grad=True)

    def f(q, k, v):
        return attention(q, k, v, km, scale, window).square().sum()

    compiled = torch.compile(f, fullgraph=True)
    loss = compiled(q, k, v)
    grads = torch.autograd.grad(loss, (q, k, v))
    loss_e = f(q, k, v)
    grads_e = torch.autograd.grad(loss_e, (q, k, v))
    torch.testing.assert_close(loss, loss_e)
    for g, ge in zip(grads, grads_e):
        torch.testing.assert_close(g, ge)


def test_empty():
    q, k, v = torch.randn(2, 0, 4, 8), torch.randn(2, 3, 2, 8), torch.randn(2, 3, 2, 8)
    out, lse = torch.ops.gemma4.attention(q, k, v, None, 1.0, 0)
    assert out.shape == (2, 0, 4, 8) and lse.shape == (2, 4, 0)
    gq, gk, gv = torch.ops.gemma4.attention_backward(out, q, k, v, out, lse, None, 1.0, 0)
    assert gq.shape == q.shape and (gk == 0).all() and (gv == 0).all()


def _bad(**over):
    args = dict(q=torch.randn(2, 3, 4, 8), k=torch.randn(2, 5, 2, 8), v=torch.randn(2, 5, 2, 8), key_mask=None)
    # the parametrised overrides are made on the CPU at import: move them to the test's backend
    args.update({name: t.to(torch.get_default_device()) for name, t in over.items()})
    return args


@pytest.mark.parametrize("over, match", [
    (dict(k=torch.randn(3, 5, 2, 8)), r"k\.size\(0\)"),                       # batch mismatch
    (dict(k=torch.randn(2, 5, 2, 16)), r"k\.size\(3\)"),                      # head_dim mismatch
    (dict(v=torch.randn(2, 6, 2, 8)), r"v\.size\(1\)"),                       # v vs k
    (dict(k=torch.randn(2, 5, 3, 8), v=torch.randn(2, 5, 3, 8)), "multiple of the k/v heads"),
    (dict(key_mask=torch.ones(2, 5)), "key_mask must be Bool"),
    (dict(key_mask=torch.ones(2, 4, dtype=torch.bool)), r"key_mask\.size\(1\)"),
    (dict(key_mask=torch.ones(2, 5, 1, dtype=torch.bool)), "key_mask must have 2 dimensions"),
    (dict(q=torch.randn(2, 3, 4, 520), k=torch.randn(2, 5, 2, 520), v=torch.randn(2, 5, 2, 520)), "head_dim"),
    (dict(k=torch.randn(2, 5, 2, 8, dtype=torch.float64)), "k must be Float"),
    (dict(v=torch.randn(2, 5, 2, 8).bfloat16()), "v must be Float"),
    (dict(q=torch.randn(2, 6, 4, 8)), "must be >= the query length"),
    (dict(q=torch.randint(0, 3, (2, 3, 4, 8))), "q must be float32"),
    (dict(q=torch.randn(2, 3, 32)), "q must have 4 dimensions"),
    (dict(k=torch.randn(2, 5, 16)), "k must have 4 dimensions"),
])
def test_bad_inputs(over, match):
    a = _bad(**over)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.gemma4.attention(a["q"], a["k"], a["v"], a["key_mask"], 1.0, 0)


def test_strided_head_dim_is_copied():
    """q/k/v/grad_out/out whose last dimension is not unit-stride: the op copies them, same bits."""
    q, k, v = torch.randn(2, 3, 4, 16)[..., ::2], torch.randn(2, 5, 2, 16)[..., ::2], torch.randn(2, 5, 2, 16)[..., ::2]
    qc, kc, vc = q.contiguous(), k.contiguous(), v.contiguous()
    out, lse = torch.ops.gemma4.attention(q, k, v, None, 0.5, 0)
    assert_same((out, lse), torch.ops.gemma4.attention(qc, kc, vc, None, 0.5, 0))
    go = torch.randn(2, 3, 4, 16)[..., ::2]
    out_s = torch.stack([out, out], -1)[..., 0]  # out's values, last stride 2
    assert_same(torch.ops.gemma4.attention_backward(go, q, k, v, out_s, lse, None, 0.5, 0),
                torch.ops.gemma4.attention_backward(go.contiguous(), qc, kc, vc, out, lse, None, 0.5, 0))


def test_bad_backward_inputs():
    q, k, v = torch.randn(2, 3, 4, 8), torch.randn(2, 5, 2, 8), torch.randn(2, 5, 2, 8)
    out, lse = torch.ops.gemma4.attention(q, k, v, None, 1.0, 0)
    go = torch.randn_like(out)
    bwd = torch.ops.gemma4.attention_backward
    with pytest.raises(RuntimeError, match=r"grad_out\.size\(1\)"):
        bwd(torch.randn(2, 2, 4, 8), q, k, v, out, lse, None, 1.0, 0)
    with pytest.raises(RuntimeError, match="grad_out must be Float"):
        bwd(go.double(), q, k, v, out, lse, None, 1.0, 0)
    with pytest.raises(RuntimeError, match=r"out\.size\(2\)"):
        bwd(go, q, k, v, torch.randn(2, 3, 2, 8), lse, None, 1.0, 0)
    with pytest.raises(RuntimeError, match="lse must be Float"):
        bwd(go, q, k, v, out, lse.double(), None, 1.0, 0)
    with pytest.raises(RuntimeError, match=r"lse\.size\(2\)"):
        bwd(go, q, k, v, out, lse[..., :2], None, 1.0, 0)
    with pytest.raises(RuntimeError, match="nH|multiple of the k/v heads"):
        bwd(go, q, k[:, :, :1].repeat(1, 1, 3, 1), v[:, :, :1].repeat(1, 1, 3, 1), out, lse, None, 1.0, 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("T,S", [(1, 90), (12, 12), (20, 150)])
def test_nonfinite_masked_keys_do_not_contribute(dtype, T, S):
    """NaN/inf in the K and V rows of padded keys (e.g. an fp16 overflow at a left-padding position)
    change nothing: out, lse and the gradients equal those with the rows zeroed; the reference agrees."""
    B, nH, nKV, hd = 2, 4, 2, 64
    q, k, v = (torch.randn(B, n, h, hd).to(dtype) for n, h in ((T, nH), (S, nKV), (S, nKV)))
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[0, : S - T] = False  # row 0 left-padded up to its first query
    mask[1, torch.randperm(S)[: S // 3]] = False
    bad_k, bad_v = k.clone(), v.clone()
    pad = ~mask
    for t, vals in ((bad_k, (float("nan"), float("inf"))), (bad_v, (float("-inf"), float("nan")))):
        t[pad] = vals[0]
        t[pad.nonzero()[::2].unbind(1)] = vals[1]
    clean_k, clean_v = k.masked_fill(pad[..., None, None], 0), v.masked_fill(pad[..., None, None], 0)
    go = torch.randn(B, T, nH, hd).to(dtype)
    for window in (0, 7):
        out, lse = torch.ops.gemma4.attention(q, bad_k, bad_v, mask, 0.125, window)
        out_c, lse_c = torch.ops.gemma4.attention(q, clean_k, clean_v, mask, 0.125, window)
        torch.testing.assert_close(out, out_c, **tight_tol(torch.float32))
        torch.testing.assert_close(lse, lse_c, **tight_tol(torch.float32))
        ref_out, ref_lse = reference.attention(q, bad_k, bad_v, mask, 0.125, window)
        torch.testing.assert_close(ref_out, reference.attention(q, clean_k, clean_v, mask, 0.125, window)[0])
        grads = torch.ops.gemma4.attention_backward(go, q, bad_k, bad_v, out, lse, mask, 0.125, window)
        grads_c = torch.ops.gemma4.attention_backward(go, q, clean_k, clean_v, out_c, lse_c, mask, 0.125, window)
        for g, gc in zip(grads, grads_c):
            torch.testing.assert_close(g, gc, **tight_tol(torch.float32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("window", [0, 5])
@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_nonfinite_hidden_keys_do_not_contribute(dtype, window, bad):
    """A non-finite K/V row at a key that some queries of its tile may not see (a future key, or one
    behind their sliding window) changes nothing for those queries; the queries that do see it get a
    non-finite row, as in the reference. Gradients: non-finite exactly where the reference's are, and
    elsewhere equal to those with that row replaced by finite values."""
    B, T, nH, nKV, hd, jbad = 2, 20, 4, 2, 32, 12
    q, k, v = (torch.randn(B, T, n, hd).to(dtype) for n in (nH, nKV, nKV))
    bad_k, bad_v = k.clone(), v.clone()
    bad_k[0, jbad, 1] = float(bad)
    bad_v[0, jbad, 1, 3] = float(bad)
    bad_v[1, jbad, 0] = float("-" + bad if bad == "inf" else bad)
    go = torch.randn(B, T, nH, hd).to(dtype)
    sees = torch.zeros(T, dtype=torch.bool)  # queries that see key jbad
    sees[jbad: jbad + window if window else T] = True
    out, lse = torch.ops.gemma4.attention(q, bad_k, bad_v, None, 0.125, window)
    out_c, lse_c = torch.ops.gemma4.attention(q, k, v, None, 0.125, window)
    assert not out[:, sees].isfinite().all()
    # an item holding a non-finite row is recomputed pair by pair: the same maths in another order, so
    # equal to rounding in the dtype (assert_close's dtype defaults)
    torch.testing.assert_close(out[:, ~sees], out_c[:, ~sees])
    torch.testing.assert_close(lse[..., ~sees], lse_c[..., ~sees])
    ref_out, _ = reference.attention(q, bad_k, bad_v, None, 0.125, window)
    assert torch.equal(ref_out.isfinite(), out.isfinite())
    # gradients: the reference's finite entries are where the bad row does not reach
    leaves = [t.float().requires_grad_() for t in (q, bad_k, bad_v)]
    reference.attention(*leaves, None, 0.125, window)[0].backward(go.float())
    grads = torch.ops.gemma4.attention_backward(go, q, bad_k, bad_v, out, lse, None, 0.125, window)
    # the backward reads out: give both runs the same rows where they matter (the recomputed rows may
    # differ from the clean run's in their last bit, which dO . out would carry into the gradients)
    out_c[:, ~sees], lse_c[..., ~sees] = out[:, ~sees], lse[..., ~sees]
    grads_c = torch.ops.gemma4.attention_backward(go, q, k, v, out_c, lse_c, None, 0.125, window)
    for name, g, gc, leaf in zip("qkv", grads, grads_c, leaves):
        finite = leaf.grad.isfinite()
        assert not finite.all() and finite.any(), name
        assert torch.equal(g.isfinite(), finite), name
        torch.testing.assert_close(g[finite], gc[finite])


def test_nan_in_a_visible_key_makes_its_rows_nan():
    """A NaN score among the visible keys makes that query's row and lse NaN, as in the reference
    (not zeros with lse = -inf, the answer for a row that sees nothing)."""
    B, T, S, nH, hd = 1, 6, 6, 2, 16
    q, k, v = torch.randn(B, T, nH, hd), torch.randn(B, S, 1, hd), torch.randn(B, S, 1, hd)
    k[0, 3, 0, 5] = float("nan")  # queries 3.. see key 3
    out, lse = torch.ops.gemma4.attention(q, k, v, None, 1.0, 0)
    ref_out, ref_lse = reference.attention(q, k, v, None, 1.0, 0)
    torch.testing.assert_close(out, ref_out, equal_nan=True)
    torch.testing.assert_close(lse, ref_lse, equal_nan=True)
    assert out[0, 3:].isnan().all() and lse[0, :, 3:].isnan().all() and not out[0, :3].isnan().any()


def test_reference_normalises_huge_scores():
    """reference.attention in float32 with scores near 1e37 matches its float64 evaluation (the
    probabilities still sum to one), and a fully masked row still gives zeros."""
    B, T, S, nH, hd = 1, 5, 9, 2, 8
    q, k, v = torch.randn(B, T, nH, hd, dtype=torch.float64), torch.randn(B, S, 1, hd, dtype=torch.float64), \
        torch.randn(B, S, 1, hd, dtype=torch.float64)
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[0, :6] = False  # query 0 (key index 4) sees nothing
    scale = 1e36 / (q.abs().max() * k.abs().max() * hd).item()
    out32, _ = reference.attention(q.float(), k.float(), v.float(), mask, scale, 0)
    out64, _ = reference.attention(q, k, v, mask, scale, 0)
    torch.testing.assert_close(out32.double(), out64, **tight_tol(torch.float32))
    assert (out32[0, 0] == 0).all()
