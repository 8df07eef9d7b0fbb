"""gemma4::moe_experts_quant (the MoE experts on int4/int8 packed weights) and its backward: bit for bit the
Python loop over experts that QuantExperts.forward was (tests/quant/common.experts_loop), within the qgemm
error rule of the float64 reference (at most 2x the error of plain PyTorch doing the same maths in x's dtype,
plus one ulp), gradients for x and the routing weights against the reference's autograd under the same rule,
on 26B-A4B's awkward K (704 = the experts' Im, 2112 = the shared MLP's width: neither a multiple of 128)."""
import pytest
import torch
import torch.nn.functional as F

from gemma4 import ops
from gemma4._native import build_info
from gemma4.ops import reference
from gemma4.quant import QuantExperts
from tests.helpers import assert_lowp_close, max_abs_err
from tests.quant.common import cpu_isa, experts_loop  # noqa: F401 (fixture)

op = torch.ops.gemma4.moe_experts_quant
FORMATS = [(4, 32), (4, 64), (8, None), (8, 32)]  # the groups that divide 704 and 2112 (g128 does not)
FORMAT_IDS = ["int4-g32", "int4-g64", "int8-channel", "int8-g32"]
SHAPES = [(2112, 704), (704, 2112)]  # (H, Im): the K of gate_up and of down
DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture(autouse=True)
def _one_thread():
    """Small matrices: one thread is faster, and immune to a busy machine (two threads spin-waiting on a shared
    2-core machine made this file 4x slower). test_thread_count_does_not_change_the_result runs two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _bank(e, n, k, bits, group, scale_dtype):
    """E random packed matrices [n, k] (every level appears; scales of varied magnitude and sign, as
    common.random_qweight draws them, drawn for the whole bank at once): (qweight [E, n, k/2 | k], scales)."""
    g = k // (group or k)
    if bits == 4:
        qweight = torch.randint(0, 256, (e, n, k // 2), dtype=torch.uint8)  # two random levels per byte
    else:
        qweight = torch.randint(-128, 128, (e, n, k), dtype=torch.int8)
    mag = torch.exp(torch.randn(e, n, g) * 0.5) * (0.02 if bits == 4 else 0.002)
    sign = torch.where(torch.rand(e, n, g) < 0.1, -1.0, 1.0)
    return qweight, (mag * sign).to(scale_dtype)


def _problem(E, H, Im, bits, group, N, top_k, dtype, scale_dtype=torch.bfloat16, unused=()):
    """Random x [N, H], routing weights and distinct experts per token (never one of `unused`), and the banks."""
    gate_up = _bank(E, 2 * Im, H, bits, group, scale_dtype)
    down = _bank(E, H, Im, bits, group, scale_dtype)
    allowed = torch.tensor([e for e in range(E) if e not in unused])
    rows = [allowed[torch.randperm(len(allowed))[:top_k]] for _ in range(N)]
    indices = torch.stack(rows) if rows else torch.empty(0, top_k, dtype=torch.int64)  # [N, top_k]
    weights = torch.softmax(torch.randn(N, top_k), -1) * (0.5 + torch.rand(N, 1))  # [N, top_k] float32
    x = torch.randn(N, H).to(dtype)
    return x, weights, indices, *gate_up, *down


def _plain(x, weights, indices, guq, gus, dnq, dns, act):
    """The same maths in plain PyTorch at x's precision (the error rule's baseline): the dequantized weights
    rounded to x.dtype, every product and sum in x.dtype. Differentiable in x and weights."""
    dtype, im = x.dtype, guq.shape[1] // 2
    out = torch.zeros_like(x)
    for e in indices.unique().tolist():
        token, slot = (indices == e).nonzero(as_tuple=True)
        gu = F.linear(x[token], reference.dequantize(guq[e], gus[e]).to(dtype))  # [n_e, 2Im]
        g, u = gu[:, :im], gu[:, im:]
        h = (F.gelu(g, approximate="tanh") if act == "gelu_tanh" else F.silu(g)) * u
        y = F.linear(h, reference.dequantize(dnq[e], dns[e]).to(dtype))  # [n_e, H]
        out = out.index_add(0, token, y * weights[token, slot].to(dtype)[:, None])
    return out


def _dequantized_banks(guq, gus, dnq, dns, dtype):
    """Both banks dequantized by the reference and rounded once to dtype: (gate_up [E, 2Im, H], down [E, H, Im]),
    the 16-bit banks gemma4::moe_experts takes."""
    def bank(q, s):
        return torch.stack([reference.dequantize(q[e], s[e]) for e in range(q.shape[0])]).to(dtype)
    return bank(guq, gus), bank(dnq, dns)


def _check_forward(args, act):
    x = args[0]
    ours = op(*args, act)
    assert ours.dtype == x.dtype and ours.shape == x.shape
    assert torch.equal(ours, experts_loop(*args, act)), "differs from the per-expert Python loop"
    ref64 = reference.moe_experts_quant(x.double(), args[1].double(), *args[2:], act)
    assert_lowp_close(ours, ref64, _plain(*args, act))
    return ours


@pytest.mark.parametrize("bits,group", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_loop_and_reference(bits, group, dtype):
    """Both K in both roles: H = 2112 with Im = 704, then H = 704 with Im = 2112."""
    act = ["gelu_tanh", "silu"][torch.randint(2, ()).item()]
    scale_dtype = [torch.float32, torch.bfloat16, torch.float16][torch.randint(3, ()).item()]
    for H, Im in SHAPES:
        _check_forward(_problem(3, H, Im, bits, group, 5, 2, dtype, scale_dtype), act)


@pytest.mark.parametrize("bits,group,dtype", [(4, 32, torch.bfloat16), (4, 64, torch.float32),
                                              (8, None, torch.bfloat16), (8, 32, torch.float32)],
                         ids=[f"{f}-{str(d)[6:]}" for f, d in zip(FORMAT_IDS, [torch.bfloat16, torch.float32] * 2)])
def test_gradients_match_reference(bits, group, dtype):
    """grad_x and grad_weights against the float64 reference's autograd, under the error rule with plain
    PyTorch's autograd at x's precision as the baseline; the packed weights get none. 24 tokens: the rule
    compares largest errors, and over 5 tokens' 10 routing weights the ratio reached 2.07 on one seed of 40
    (median 0.78); over 24 tokens' 48 it stayed within 1.4 on the same 40 seeds."""
    args = _problem(3, 2112, 704, bits, group, 24, 2, dtype)
    x, weights, rest = args[0].requires_grad_(), args[1].requires_grad_(), args[2:]
    g = torch.randn(x.shape).to(dtype)
    ours = torch.autograd.grad(ops.moe_experts_quant(x, weights, *rest, "gelu_tanh"), (x, weights), g)
    x64, w64 = x.detach().double().requires_grad_(), weights.detach().double().requires_grad_()
    exact = torch.autograd.grad(reference.moe_experts_quant(x64, w64, *rest, "gelu_tanh"), (x64, w64), g.double())
    plain = torch.autograd.grad(_plain(x, weights, *rest, "gelu_tanh"), (x, weights), g)
    for name, o, e, p in zip(("grad_x", "grad_weights"), ours, exact, plain):
        assert o.dtype == p.dtype, name
        assert_lowp_close(o, e, p)


@pytest.mark.parametrize("bits,group", [(4, 32), (8, None)], ids=["int4-g32", "int8-channel"])
def test_decode_grad_weights_in_float32(bits, group):
    """At decode a token has a handful of routing weights, and each one's gradient is a dot product over H whose
    terms largely cancel. Computed from bf16-rounded h or y, or from weights rounded to bf16, its error is of
    plain bf16 PyTorch's size, and as one draw against another came out over the rule's 2x in one one-token
    problem in 10-20. The backward computes it in float32 from the exact weights: on 12 one-token problems its
    error stays under a tenth of plain's (measured: at most 0.003 of it over 200 problems)."""
    for _ in range(12):
        args = _problem(4, 2112, 704, bits, group, 1, 2, torch.bfloat16, unused=(1,))
        g = torch.randn(args[0].shape).to(torch.bfloat16)
        ours = torch.ops.gemma4.moe_experts_quant_backward(g, *args, "gelu_tanh")[1]
        x64, w64 = args[0].double().requires_grad_(), args[1].double().requires_grad_()
        exact = torch.autograd.grad(reference.moe_experts_quant(x64, w64, *args[2:], "gelu_tanh"), w64, g.double())[0]
        x, weights = args[0].clone().requires_grad_(), args[1].clone().requires_grad_()
        plain = torch.autograd.grad(_plain(x, weights, *args[2:], "gelu_tanh"), weights, g)[0]
        assert ours.dtype == torch.float32
        assert max_abs_err(ours, exact) <= 0.1 * max_abs_err(plain, exact)


def test_unchosen_experts_duplicates_and_no_tokens():
    """Experts no token chose are skipped (their gradient flow is nothing); a token may name one expert twice
    (two routed pairs, summed in slot order); zero tokens give an empty result."""
    args = list(_problem(8, 128, 64, 4, 32, 7, 2, torch.bfloat16, unused=(1, 5, 6)))
    args[2][3] = torch.tensor([4, 4])  # token 3 routes to expert 4 twice
    _check_forward(tuple(args), "gelu_tanh")
    x, weights = args[0].float().requires_grad_(), args[1].clone().requires_grad_()
    scales = [args[4].clone().requires_grad_(), args[6].clone().requires_grad_()]  # frozen: no gradient
    ops.moe_experts_quant(x, weights, args[2], args[3], scales[0], args[5], scales[1], "silu").sum().backward()
    assert scales[0].grad is None and scales[1].grad is None
    x64, w64 = x.detach().double().requires_grad_(), weights.detach().double().requires_grad_()
    reference.moe_experts_quant(x64, w64, *args[2:], "silu").sum().backward()
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-4 * x64.grad.abs().max().item())
    torch.testing.assert_close(weights.grad.double(), w64.grad, rtol=1e-4, atol=1e-4 * w64.grad.abs().max().item())
    empty = op(x.detach()[:0], weights.detach()[:0], args[2][:0], *args[3:], "silu")
    assert empty.shape == (0, 128) and empty.dtype == torch.float32


def test_every_cpu_path_equals_the_loop(cpu_isa):
    """Each qgemm instruction set, and bf16's dequantize-then-GEMM route (forced): still the loop's result."""
    args = _problem(3, 704, 64, 4, 32, 40, 2, torch.bfloat16)  # ~27 rows per expert
    assert torch.equal(op(*args, "gelu_tanh"), experts_loop(*args, "gelu_tanh"))


def test_thread_count_does_not_change_the_result():
    """Each qgemm splits its weight rows over the threads and the sums run in a fixed order: one thread and
    two give the same bits."""
    args = _problem(2, 256, 2112, 8, None, 9, 2, torch.bfloat16)
    one = op(*args, "gelu_tanh")
    torch.set_num_threads(2)  # (the fixture restores the count)
    assert torch.equal(one, op(*args, "gelu_tanh"))
    assert torch.equal(one, experts_loop(*args, "gelu_tanh"))


def test_quant_experts_module_calls_the_op():
    m = QuantExperts(128, 4, 64, "gelu_tanh", bits=4, group_size=64)
    x, weights, indices, *banks = _problem(4, 128, 64, 4, 64, 5, 2, torch.bfloat16, torch.bfloat16)
    for name, t in zip(("gate_up_proj_qweight", "gate_up_proj_scales", "down_proj_qweight", "down_proj_scales"), banks):
        getattr(m, name).copy_(t)
    assert torch.equal(m(x, weights, indices), experts_loop(x, weights, indices, *banks, "gelu_tanh"))
    f = torch.compile(m, fullgraph=True, backend="eager")  # no host sync in the module any more
    assert torch.equal(f(x, weights, indices), m(x, weights, indices))


def test_opcheck():
    dtype = torch.bfloat16
    x, weights, indices, *banks = _problem(4, 64, 32, 4, 32, 6, 2, dtype)
    x.requires_grad_()
    weights.requires_grad_()
    torch.library.opcheck(op.default, (x, weights, indices, *banks, "gelu_tanh"))
    g = torch.randn(x.shape).to(dtype)
    torch.library.opcheck(torch.ops.gemma4.moe_experts_quant_backward.default,
                          (g, x.detach(), weights.detach(), indices, *banks, "silu"))


def _bad(**over):
    x, weights, indices, guq, gus, dnq, dns = _problem(4, 64, 32, 4, 32, 3, 2, torch.float32)
    args = dict(x=x, weights=weights, indices=indices, gate_up_qweight=guq, gate_up_scales=gus, down_qweight=dnq,
                down_scales=dns, activation="silu")
    args.update({k: (v(args[k]) if callable(v) else v) for k, v in over.items()})
    return args


def _strided(t):  # the same shape, not contiguous
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


BAD = [
    (_bad(x=lambda t: t.double()), "x must be float32, bfloat16 or float16"),
    (_bad(x=lambda t: _strided(t.repeat(1, 1))), "x must be contiguous"),
    (_bad(x=lambda t: t[:, :48].contiguous()), r"x.size\(1\) \(the hidden size H\) must be a positive multiple of 32"),
    (_bad(weights=lambda t: t.double()), "weights must be float32 or x's dtype"),
    (_bad(weights=lambda t: t[:, :1]), "weights must have the shape of indices"),
    (_bad(indices=lambda t: t.int()), "indices must be int64"),
    (_bad(indices=lambda t: t[:2]), r"indices.size\(0\) must be 3"),
    (_bad(gate_up_qweight=lambda t: t.int()), "gate_up_qweight must be uint8 \\(packed int4\\) or int8"),
    (_bad(gate_up_qweight=lambda t: t[0]), "gate_up_qweight must have 3 dimensions"),
    (_bad(gate_up_qweight=lambda t: t[:, :32].contiguous()), r"gate_up_qweight.size\(1\) must be 2 \* Im"),
    (_bad(gate_up_qweight=lambda t: t.view(torch.int8)), r"gate_up_qweight.size\(2\) must be 64"),
    (_bad(gate_up_qweight=lambda t: _strided(t)), "gate_up_qweight must be contiguous"),
    (_bad(gate_up_scales=lambda t: t[:3]), r"gate_up_scales.size\(0\) must be 4"),
    (_bad(gate_up_scales=lambda t: t.int()), "gate_up_scales must be float32, bfloat16 or float16"),
    (_bad(gate_up_scales=lambda t: t.repeat(1, 1, 2)), r"gate_up_scales.size\(2\) must divide K = 64"),
    (_bad(gate_up_scales=lambda t: _strided(t.repeat(1, 1, 1))), "gate_up_scales must be contiguous"),
    (_bad(down_qweight=lambda t: t[:, :32].contiguous()), r"down_qweight.size\(1\) must be 64"),
    (_bad(down_qweight=lambda t: t[:3]), r"down_qweight.size\(0\) must be 4"),
    (_bad(down_scales=lambda t: t.repeat(1, 1, 2)), r"down_scales.size\(2\) must divide K = 32"),
    (_bad(down_scales=lambda t: t[:, :, :0]), r"down_scales.size\(2\) must divide"),
    (_bad(activation="relu"), "activation must be"),
    (_bad(down_scales=lambda t: t.to("meta")), "down_scales must be on cpu like the input, got meta"),
    (_bad(indices=lambda t: t.to("meta")), "indices must be on cpu like the input, got meta"),
]


@pytest.mark.parametrize("args,match", BAD, ids=[f"{i}-{b[1][:30]}" for i, b in enumerate(BAD)])
def test_bad_inputs_name_the_argument(args, match):
    with pytest.raises(RuntimeError, match=match):
        op(**args)  # the CPU kernel
    with pytest.raises(RuntimeError, match=match):
        torch.ops.gemma4.moe_experts_quant_backward(torch.zeros(args["x"].shape, dtype=args["x"].dtype), **args)
    if "must be on" not in match:  # the fake kernels, on meta tensors
        meta = {k: (v.to("meta") if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
        with pytest.raises(RuntimeError, match=match):
            op(**meta)
        with pytest.raises(RuntimeError, match=match):
            torch.ops.gemma4.moe_experts_quant_backward(torch.zeros(meta["x"].shape, dtype=meta["x"].dtype,
                                                                    device="meta"), **meta)


def test_indices_out_of_range():
    args = _bad()
    args["indices"][1, 1] = 4
    with pytest.raises(RuntimeError, match=r"indices must be in \[0, 4\) \(the number of experts\), got 4 at \[1, 1\]"):
        op(**args)
    with pytest.raises(RuntimeError, match=r"indices must be in \[0, 4\).*got 4 at \[1, 1\]"):
        torch.ops.gemma4.moe_experts_quant_backward(torch.zeros(3, 64), **args)
    args["indices"][1, 1] = -1
    with pytest.raises(RuntimeError, match=r"indices must be in \[0, 4\)"):
        op(**args)


needs_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and build_info["cuda"]),
                                reason="needs a GPU and a CUDA build")


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("bits,group", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens", [1, 12, 40, 100, 160], ids=["decode", "gemv", "gemv-most", "mid", "prefill"])
def test_cuda_matches_cpu_and_reference(bits, group, dtype, tokens):
    """The CUDA op against the float64 reference and plain PyTorch on the GPU (the error rule), and against the
    CPU op (within both allowances); gradients too; one expert left unchosen. Up to 40 tokens (bf16) or 128
    (fp32) the forward runs the grouped GEMVs (one token: every expert a tile of one pair; more: tiles of several
    pairs), above them gemma4::moe_experts' grouped GEMMs on the packed banks (bf16) or the composed host loop over
    qgemm (fp32); the backward runs moe_experts_backward's GEMMs on the packed banks (bf16; at decode its
    routing-weight gradients come from the fp32 GEMVs) or the composed loop (fp32) at every size."""
    cpu = _problem(4, 2112, 704, bits, group, tokens, 2, dtype, unused=(1,))
    dev = [t.cuda() for t in cpu]
    ref64 = reference.moe_experts_quant(cpu[0].double(), cpu[1].double(), *cpu[2:], "gelu_tanh")
    ours, want = op(*dev, "gelu_tanh"), op(*cpu, "gelu_tanh")
    plain, plain_cpu = _plain(*dev, "gelu_tanh").cpu(), _plain(*cpu, "gelu_tanh")
    assert ours.is_cuda and ours.dtype == dtype
    assert_lowp_close(ours.cpu(), ref64, plain)
    ulp = torch.finfo(dtype).eps * ref64.abs().max().item()
    assert max_abs_err(ours.cpu(), want) <= 2 * (max_abs_err(plain, ref64) + max_abs_err(plain_cpu, ref64)) + 2 * ulp
    g = torch.randn(cpu[0].shape).to(dtype)
    got = torch.ops.gemma4.moe_experts_quant_backward(g.cuda(), *dev, "gelu_tanh")
    x64, w64 = cpu[0].double().requires_grad_(), cpu[1].double().requires_grad_()
    exact = torch.autograd.grad(reference.moe_experts_quant(x64, w64, *cpu[2:], "gelu_tanh"), (x64, w64), g.double())
    xd, wd = dev[0].clone().requires_grad_(), dev[1].clone().requires_grad_()
    base = torch.autograd.grad(_plain(xd, wd, *dev[2:], "gelu_tanh"), (xd, wd), g.cuda())
    for o, e, p in zip(got, exact, base):
        assert o.is_cuda
        assert_lowp_close(o.cpu(), e, p.cpu())


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
def test_cuda_gemv_path_roundings_and_shapes(act):
    """The grouped GEMVs on 26B-A4B's expert shape (H = 2816, Im = 704, top 8 of 16 experts, int4 groups of 64:
    two runs a scale), fp16 x and fp32 scales, weights in x's dtype: the error rule against the float64
    reference, and the CPU op within both allowances."""
    cpu = _problem(16, 2816, 704, 4, 64, 3, 8, torch.float16, scale_dtype=torch.float32)
    cpu = (cpu[0], cpu[1].to(torch.float16), *cpu[2:])
    dev = [t.cuda() for t in cpu]
    ours, want = op(*dev, act), op(*cpu, act)
    ref64 = reference.moe_experts_quant(cpu[0].double(), cpu[1].double(), *cpu[2:], act)
    plain, plain_cpu = _plain(*dev, act).cpu(), _plain(*cpu, act)
    assert_lowp_close(ours.cpu(), ref64, plain)
    ulp = torch.finfo(torch.float16).eps * ref64.abs().max().item()
    assert max_abs_err(ours.cpu(), want) <= 2 * (max_abs_err(plain, ref64) + max_abs_err(plain_cpu, ref64)) + 2 * ulp


@pytest.mark.cuda
@needs_cuda
def test_cuda_decode_call_is_graph_capturable():
    """One decode token's call (the grouped GEMVs: no host sync) captured in a CUDA graph and replayed on new
    inputs equals the eager call on them; a misaligned x (copied onto a 16-byte boundary, the same GEMVs) gives the
    same output, and a misaligned bank (the composed path) meets the error rule."""
    dev = [t.cuda() for t in _problem(8, 2112, 704, 4, 32, 1, 4, torch.bfloat16)]
    static = [t.clone() for t in dev]
    op(*static, "gelu_tanh")  # warm-up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = op(*static, "gelu_tanh")
    fresh = _problem(8, 2112, 704, 4, 32, 1, 4, torch.bfloat16)
    for s, f in zip(static[:3], fresh[:3]):  # new x, routing weights and experts; the same banks
        s.copy_(f)
    graph.replay()
    assert torch.equal(out, op(*static, "gelu_tanh"))
    x = static[0]
    buf = torch.empty(x.numel() + 1, dtype=x.dtype, device=x.device)
    shifted = buf[1:].view_as(x).copy_(x)  # 2 bytes past a 16-byte boundary
    assert shifted.data_ptr() % 16 != 0
    ref64 = reference.moe_experts_quant(x.cpu().double(), static[1].cpu().double(), *[t.cpu() for t in static[2:]],
                                        "gelu_tanh")
    assert torch.equal(op(shifted, *static[1:], "gelu_tanh"), op(*static, "gelu_tanh"))
    q = static[3]  # a gate_up bank 1 byte past a 16-byte boundary: the composed path as well
    qbuf = torch.empty(q.numel() + 1, dtype=q.dtype, device=q.device)
    q_shifted = qbuf[1:].view_as(q).copy_(q)
    plain = _plain(*static, "gelu_tanh").cpu()
    assert_lowp_close(op(*static[:3], q_shifted, *static[4:], "gelu_tanh").cpu(), ref64, plain)


def _peak_bytes_of(fn):
    """fn()'s result and the CUDA memory it allocated at its peak above what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    result = fn()
    torch.cuda.synchronize()
    return result, torch.cuda.max_memory_allocated() - before


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("bits,group", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("dtype,scale_dtype", [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float32),
                                               (torch.bfloat16, torch.float16)], ids=["bf16", "fp16-fp32s", "bf16-fp16s"])
def test_cuda_prefill_equals_the_experts_on_dequantized_banks(bits, group, dtype, scale_dtype):
    """Above 128 tokens a 16-bit forward runs gemma4::moe_experts' grouped GEMMs with the packed banks dequantized
    tile by tile: it equals gemma4::moe_experts on the banks dequantized to x's dtype, bit for bit (the error rule
    is test_cuda_matches_cpu_and_reference's), for every format and scale dtype, while allocating less than half
    of what those dequantized banks take; it has no host sync, so a CUDA graph captures it and a replay on new
    inputs equals the eager call; a gate_up bank off a 16-byte boundary gives the same result."""
    dev = [t.cuda() for t in _problem(8, 2112, 704, bits, group, 160, 4, dtype, scale_dtype, unused=(5,))]
    x, w, idx, guq, gus, dnq, dns = dev
    gate_up, down = _dequantized_banks(guq, gus, dnq, dns, dtype)
    out, peak = _peak_bytes_of(lambda: op(*dev, "silu"))
    assert torch.equal(out, torch.ops.gemma4.moe_experts(x, w, idx, gate_up, down, "silu"))
    banks_bytes = (gate_up.numel() + down.numel()) * gate_up.element_size()
    assert peak < banks_bytes / 2, f"the call allocated {peak} bytes; the dequantized banks are {banks_bytes}"
    qbuf = torch.empty(guq.numel() + 1, dtype=guq.dtype, device=guq.device)
    shifted = qbuf[1:].view_as(guq).copy_(guq)
    assert shifted.data_ptr() % 16 != 0
    assert torch.equal(op(x, w, idx, shifted, *dev[4:], "silu"), out)
    static = [t.clone() for t in dev]
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = op(*static, "silu")
    fresh = _problem(8, 2112, 704, bits, group, 160, 4, dtype, scale_dtype)
    for s, f in zip(static[:3], fresh[:3]):  # new x, routing weights and experts; the same banks
        s.copy_(f)
    graph.replay()
    assert torch.equal(captured, op(*static, "silu"))
    assert not torch.equal(captured, out)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("bits,group", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("tokens", [3, 80])
def test_cuda_backward_equals_the_experts_backward_on_dequantized_banks(bits, group, tokens):
    """A bf16 backward runs gemma4::moe_experts_backward's grouped GEMMs with the packed banks dequantized tile by
    tile: its grad_x is that op's on the banks dequantized to bf16, bit for bit, at decode and prefill sizes (the
    error rule is test_cuda_matches_cpu_and_reference's), allocating less than half of those banks' bytes. Its
    grad_weights is that op's at prefill, and up to 16 (token, slot) pairs the fp32 GEMVs' on the exact weights:
    the CPU op's float32 value within float32 rounding. No host sync: a CUDA graph captures it and a replay on a
    new grad_out equals the eager call; a down bank off a 16-byte boundary gives the same result."""
    dev = [t.cuda() for t in _problem(8, 2112, 704, bits, group, tokens, 4, torch.bfloat16, unused=(2,))]
    x, w, idx, guq, gus, dnq, dns = dev
    gate_up, down = _dequantized_banks(guq, gus, dnq, dns, torch.bfloat16)
    g = torch.randn_like(x)
    got, peak = _peak_bytes_of(lambda: torch.ops.gemma4.moe_experts_quant_backward(g, *dev, "silu"))
    want = torch.ops.gemma4.moe_experts_backward(g, x, w, idx, gate_up, down, "silu")
    assert got[0].dtype == x.dtype and got[1].dtype == w.dtype
    assert torch.equal(got[0], want[0])
    banks_bytes = (gate_up.numel() + down.numel()) * gate_up.element_size()
    assert peak < banks_bytes / 2, f"the call allocated {peak} bytes; the dequantized banks are {banks_bytes}"
    if tokens * 4 <= 16:
        on_cpu = torch.ops.gemma4.moe_experts_quant_backward(g.cpu(), *[t.cpu() for t in dev], "silu")[1]
        torch.testing.assert_close(got[1].cpu(), on_cpu, rtol=1e-4, atol=1e-4 * on_cpu.abs().max().item())
        assert not torch.equal(got[1], want[1])
    else:
        assert torch.equal(got[1], want[1])
    qbuf = torch.empty(dnq.numel() + 1, dtype=dnq.dtype, device=dnq.device)
    shifted = qbuf[1:].view_as(dnq).copy_(dnq)
    assert shifted.data_ptr() % 16 != 0
    moved = torch.ops.gemma4.moe_experts_quant_backward(g, x, w, idx, guq, gus, shifted, dns, "silu")
    assert torch.equal(moved[0], got[0]) and torch.equal(moved[1], got[1])
    static_g = g.clone()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = torch.ops.gemma4.moe_experts_quant_backward(static_g, *dev, "silu")
    static_g.copy_(torch.randn_like(g))
    graph.replay()
    fresh = torch.ops.gemma4.moe_experts_quant_backward(static_g, *dev, "silu")
    assert torch.equal(captured[0], fresh[0]) and torch.equal(captured[1], fresh[1])
    assert not torch.equal(captured[0], got[0])


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("tokens", [0, 12, 50])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_no_pairs_give_zeros(tokens, dtype):
    """Routing to no expert (top-0) on every route, and no tokens: zeros, as on the CPU, and zero gradients."""
    cpu = list(_problem(4, 64, 32, 4, 32, tokens, 2, dtype))
    cpu[1], cpu[2] = cpu[1][:, :0].contiguous(), cpu[2][:, :0].contiguous()  # weights, indices [tokens, 0]
    dev = [t.cuda() for t in cpu]
    out = op(*dev, "silu")
    assert out.shape == (tokens, 64) and out.dtype == dtype and not out.any()
    assert torch.equal(out.cpu(), op(*cpu, "silu"))
    g = torch.randn(tokens, 64).to(dtype).cuda()
    grad_x, grad_w = torch.ops.gemma4.moe_experts_quant_backward(g, *dev, "silu")
    assert grad_x.shape == (tokens, 64) and not grad_x.any() and grad_w.shape == (tokens, 0)


@pytest.mark.cuda
@needs_cuda
def test_cuda_bad_indices_outside_the_gemv():
    """Indices outside [0, E) raise the CPU op's error where the CUDA op has a host loop: fp32 forwards of more
    than 128 tokens and fp32 backwards. (The other forwards check them with a device-side assert, as
    gemma4::moe_experts does; it ends the process's CUDA context, so it is not run here.)"""
    dev = [t.cuda() for t in _problem(4, 64, 32, 4, 32, 160, 2, torch.float32)]
    bad = dev[2].clone()
    bad[0, 0] = 4
    with pytest.raises(RuntimeError, match=r"indices must be in \[0, 4\)"):
        op(dev[0], dev[1], bad, *dev[3:], "gelu_tanh")
    with pytest.raises(RuntimeError, match=r"indices must be in \[0, 4\)"):
        torch.ops.gemma4.moe_experts_quant_backward(dev[0], dev[0], dev[1], bad, *dev[3:], "gelu_tanh")
