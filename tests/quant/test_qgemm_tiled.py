"""The 16-row tiled int4 layout (formats.tile16, csrc/quant/qgemm_tiled16.h): the conversions, gemma4::qgemm on it
against the float64 reference on every CPU path, and QuantLinear's use of it for CPU inference."""
import pytest
import torch

from gemma4 import ops
from gemma4.ops import quant as qops, reference
from gemma4.quant import QuantLinear, formats
from tests.helpers import assert_lowp_close
from tests.quant.common import available_isas, cpu_isa, random_qweight  # noqa: F401 (fixture)

M_VALUES = [1, 2, 3, 4, 5, 7, 16, 33, 300]
needs_vnni = pytest.mark.skipif("avx512vnni" not in available_isas(), reason="the tiled kernel needs AVX512-VNNI")


def _tiled(n, k, scale_dtype=torch.bfloat16):
    qweight, scales = random_qweight(n, k, 4, 32, scale_dtype)
    return (qweight, scales), formats.tile16(qweight, scales)


@pytest.mark.parametrize("n,k", [(16, 32), (48, 704), (160, 2112)])
def test_tile16_is_the_documented_permutation_and_untile16_inverts_it(n, k):
    (qweight, scales), (qt, st) = _tiled(n, k, torch.float16)
    assert qt.shape == (n // 16, k // 8, 64) and st.shape == (n // 16, k // 32, 16)
    for t, c, r, i in ((0, 0, 0, 0), (n // 16 - 1, k // 8 - 1, 15, 3), (n // 16 // 2, k // 16, 7, 2)):
        assert qt[t, c, 4 * r + i] == qweight[16 * t + r, 4 * c + i]  # bytes 4 r + i of vector (t, c)
    for t, g, r in ((0, 0, 0), (n // 16 - 1, k // 32 - 1, 15)):
        assert st[t, g, r] == scales[16 * t + r, g]
    q2, s2 = formats.untile16(qt, st)
    assert torch.equal(q2, qweight) and torch.equal(s2, scales) and q2.is_contiguous() and s2.is_contiguous()
    assert torch.equal(reference.dequantize(qt, st, torch.float64), reference.dequantize(qweight, scales, torch.float64))
    assert torch.equal(formats.dequantize(qt, st), formats.dequantize(qweight, scales))


def test_tile16_rejects_what_it_cannot_tile():
    for qweight, scales in (random_qweight(24, 64, 4, 32), random_qweight(16, 64, 4, 64), random_qweight(16, 64, 8, 32)):
        with pytest.raises(ValueError, match="tile16"):
            formats.tile16(qweight, scales)
        with pytest.raises(ValueError, match="tile16_"):
            formats.tile16_(qweight, scales)


@pytest.mark.parametrize("n,k", [(16, 32), (48, 704), (4096, 2112)])
def test_tile16_in_place_equals_tile16_in_the_same_memory(n, k):
    """tile16_ permutes the buffers' own bytes (blocks of tiles; 4096 x 2112 takes several) into what tile16
    returns."""
    qweight, scales = random_qweight(n, k, 4, 32, torch.bfloat16)
    want_q, want_s = formats.tile16(qweight, scales)
    ptrs = qweight.data_ptr(), scales.data_ptr()
    q, s = formats.tile16_(qweight, scales)
    assert (q.data_ptr(), s.data_ptr()) == ptrs and torch.equal(q, want_q) and torch.equal(s, want_s)


@pytest.mark.parametrize("k", [704, 2112, 1536])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_tiled_qgemm_matches_reference(cpu_isa, k, dtype):
    """On VNNI the tiled kernel; bf16 prefill's dequantize route dequantizes from the tiles; elsewhere (and for fp32
    x) the row layout's op on slabs turned back into rows: all within the error rule. 1200 rows take more than one
    slab."""
    for n in (48, 1200):
        scale_dtype = [torch.float32, torch.bfloat16, torch.float16][torch.randint(3, ()).item()]
        (qweight, scales), (qt, st) = _tiled(n, k, scale_dtype)
        w64 = reference.dequantize(qweight, scales, torch.float64)  # [N, K]
        for m in M_VALUES if n == 48 else (1, 5, 70):
            x = torch.randn(m, k).to(dtype)
            bias = torch.randn(n).to(dtype) if m % 2 else None
            ours = ops.qgemm(x, qt, st, bias)
            ref64 = x.double() @ w64.t() + (bias.double() if bias is not None else 0)
            assert ours.dtype == dtype and ours.shape == (m, n)
            assert_lowp_close(ours, ref64, torch.nn.functional.linear(x, w64.to(dtype), bias))


def test_dequantize_route_from_tiles_equals_rows():
    """bf16 prefill's dequantize route reads the tiles directly: bit for bit the row layout's route (the same bf16
    weight, the same 1024-row slabs through torch's GEMM), 1200 rows (two slabs), every scale dtype."""
    qops.qgemm_cpu_isa("dequant")
    try:
        for scale_dtype in (torch.float32, torch.bfloat16, torch.float16):
            (qweight, scales), (qt, st) = _tiled(1200, 704, scale_dtype)
            x = torch.randn(70, 704).to(torch.bfloat16)
            bias = torch.randn(1200).to(torch.bfloat16)
            assert torch.equal(ops.qgemm(x, qt, st, bias), ops.qgemm(x, qweight, scales, bias))
    finally:
        qops.qgemm_cpu_isa("auto")


@needs_vnni
def test_tiled_kernel_rows_do_not_depend_on_their_batch():
    """Four x rows a pass and one: each row's sums are the same instructions, so the same bits."""
    _, (qt, st) = _tiled(64, 1536)
    x = torch.randn(7, 1536, dtype=torch.bfloat16)
    together = ops.qgemm(x, qt, st)
    for i in range(7):
        assert torch.equal(ops.qgemm(x[i:i + 1], qt, st), together[i:i + 1])


@needs_vnni
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_tiled_kernel_extreme_activations(dtype):
    """A group whose largest |x| sits at the int16 limit splits into int8 planes exactly (x16 = +-32639), and a NaN or
    inf poisons only its row."""
    (qweight, scales), (qt, st) = _tiled(32, 256)
    w64 = reference.dequantize(qweight, scales, torch.float64)
    x = torch.randn(3, 256).to(dtype)
    x[0, 5], x[0, 40] = 1000.0, -1000.0  # both signs at the limit, in different groups
    ours = ops.qgemm(x, qt, st)
    assert_lowp_close(ours, x.double() @ w64.t(), torch.nn.functional.linear(x, w64.to(dtype)))
    for bad in (float("nan"), float("inf")):
        xb = x.clone()
        xb[1, 77] = bad
        y = ops.qgemm(xb, qt, st)
        assert not torch.isfinite(y[1]).any()
        assert torch.equal(y[[0, 2]], ops.qgemm(xb[[0, 2]], qt, st))


def test_tiled_qgemm_opcheck_and_backward():
    (qweight, scales), (qt, st) = _tiled(32, 96)
    x = torch.randn(3, 96, dtype=torch.bfloat16)
    bias = torch.randn(32, dtype=torch.bfloat16)
    torch.library.opcheck(torch.ops.gemma4.qgemm, (x, qt, st, bias))
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    g = torch.randn(3, 32, dtype=torch.bfloat16)
    ops.qgemm(xs[0], qt, st).backward(g)
    ops.qgemm(xs[1], qweight, scales).backward(g)
    assert torch.equal(xs[0].grad, xs[1].grad)  # the backward turns the tiles back into rows: the same sums


def _bad(**over):
    _, (qt, st) = _tiled(16, 64)
    args = dict(x=torch.randn(2, 64, dtype=torch.bfloat16), qweight=qt, scales=st, bias=None)
    args.update(over)
    return args


@pytest.mark.parametrize("args,match", [
    (_bad(qweight=torch.zeros(1, 8, 64, dtype=torch.int8)), "3-D qweight .* must be uint8"),
    (_bad(qweight=torch.zeros(1, 16, 64, dtype=torch.uint8)), r"qweight.size\(1\) must be 8"),
    (_bad(qweight=torch.zeros(1, 8, 32, dtype=torch.uint8)), r"qweight.size\(2\) must be 64"),
    (_bad(scales=torch.rand(1, 2, 8)), r"scales.size\(2\) must be 16"),
    (_bad(scales=torch.rand(2, 2, 16)), r"scales.size\(0\) must be 1"),
    (_bad(scales=torch.rand(16, 2)), "scales must be 3-D|scales must have 3 dimensions"),
    (_bad(bias=torch.randn(15, dtype=torch.bfloat16)), r"bias.size\(0\) must be 16"),
    (_bad(qweight=torch.zeros(1, 64, 8, dtype=torch.uint8).transpose(1, 2)), "qweight must be contiguous"),
])
def test_tiled_qgemm_bad_inputs(args, match):
    with pytest.raises((RuntimeError, ValueError), match=match):
        torch.ops.gemma4.qgemm(**args)
    meta = {k: (v.to("meta") if v is not None else None) for k, v in args.items()}
    if "contiguous" not in match:  # the fake kernel checks too
        with pytest.raises((RuntimeError, ValueError)):
            torch.ops.gemma4.qgemm(**meta)


@needs_vnni
def test_quant_linear_tiles_for_cpu_inference_and_shows_rows_elsewhere():
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 48, bias=True)
    q = QuantLinear.from_linear(linear, bits=4, group_size=32)
    rows = {k: v.clone() for k, v in q.state_dict().items()}
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    with torch.no_grad():
        q.float()  # fp32 x and casts keep rows
        q(x.float())
        assert not q.tiled
        y = q(x)
    assert q.tiled and q.qweight.shape == (3, 32, 64)
    assert torch.equal(y, ops.qgemm(x, q.qweight, q.scales, q.bias.bfloat16()))
    sd = q.state_dict()  # rows, and the module stays tiled
    assert sd.keys() == rows.keys() and all(torch.equal(sd[k], rows[k]) for k in rows) and q.tiled
    assert torch.equal(q.dequantize(), formats.dequantize(rows["qweight"], rows["scales"]))
    q.save_as_compressed_tensors = True
    packed = q.state_dict()
    q.save_as_compressed_tensors = False
    q.use_rows()
    q.save_as_compressed_tensors = True
    assert all(torch.equal(packed[k], v) for k, v in q.state_dict().items())
    q.save_as_compressed_tensors = False

    with torch.no_grad():
        q(x)
    q.load_state_dict(rows)  # loading into tiled buffers: back to rows first
    assert not q.tiled and torch.equal(q.qweight, rows["qweight"])
    with torch.no_grad():
        q(x)
    assert q.tiled
    xg = x.clone().requires_grad_()
    q(xg).sum().backward()  # autograd: rows again
    assert not q.tiled and xg.grad is not None
    with torch.no_grad():
        q(x)
    q.to(torch.bfloat16)  # a cast or move sees rows
    assert not q.tiled and q.scales.dtype == rows["scales"].dtype


@needs_vnni
def test_quantized_tied_head_is_tiled_in_place_while_loading(tmp_path):
    """Quantize-on-load tiles the new int4 head in its own memory (QuantLinear.tile_now), so the first forward has
    no whole copy of it to make (for E2B that copy, 226 MB, was the peak RSS), and the logits equal those of the
    head tiled by that copy."""
    from gemma4.modeling import Gemma4ForCausalLM  # noqa: PLC0415
    from gemma4.quant import QuantizationConfig  # noqa: PLC0415
    from tests.oracle import make_hf_model, save_hf  # noqa: PLC0415

    save_hf(make_hf_model("tiny-e2b"), tmp_path)
    config = QuantizationConfig(weights="int4", group_size=32, modules_to_not_convert=["router"])
    model = Gemma4ForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16, quantization_config=config,
                                              progress=False)
    head = model.lm_head
    assert isinstance(head, QuantLinear) and head.tiled  # before any forward
    ptr = head.qweight.data_ptr()
    ids = torch.randint(0, model.config.vocab_size, (1, 9))
    with torch.no_grad():
        in_place = model(input_ids=ids).logits
        assert head.qweight.data_ptr() == ptr  # the forward kept the buffers: no copy
        head.use_rows()
        copied = model(input_ids=ids).logits  # tiled again, by formats.tile16's copy
    assert head.tiled and torch.equal(in_place, copied)


@needs_vnni
def test_quant_linear_tiles_under_inference_mode_into_ordinary_tensors():
    q = QuantLinear.from_linear(torch.nn.Linear(64, 16), bits=4, group_size=32)
    with torch.inference_mode():
        q(torch.randn(2, 64, dtype=torch.bfloat16))
    assert q.tiled and not q.qweight.is_inference()
    x = torch.randn(2, 64, dtype=torch.bfloat16, requires_grad=True)
    q(x).sum().backward()  # usable for training afterwards
    assert x.grad is not None
