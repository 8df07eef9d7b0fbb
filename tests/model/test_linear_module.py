"""modeling.linear.Linear: an nn.Linear (same keys, LoRA- and checkpoint-compatible) whose forward picks
gemma4::linear or F.linear; greedy tokens must not depend on the choice."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gemma4
from gemma4 import linear_choice
from gemma4.modeling.linear import Linear, torch_linear_only, uses_gemma4_kernel


def test_is_an_nn_linear_with_the_same_state_dict():
    torch.manual_seed(0)
    ours, plain = Linear(12, 7, bias=True), nn.Linear(12, 7, bias=True)
    assert isinstance(ours, nn.Linear)
    assert ours.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(ours.state_dict())
    for rows in (1, 5, 30):
        x = torch.randn(rows, 12)
        torch.testing.assert_close(ours(x), plain(x), rtol=1e-5, atol=1e-5)


def test_choice():
    w32, w16 = torch.randn(1024, 1024), torch.randn(8, 1024).bfloat16()
    assert uses_gemma4_kernel(torch.randn(1, 3, 1024), w32)  # decode rows
    assert uses_gemma4_kernel(torch.randn(8, 1024), w32)
    assert uses_gemma4_kernel(torch.randn(9, 1024), w32)  # fp32 prefill: the op picks tile GEMM or sgemm
    assert uses_gemma4_kernel(torch.randn(9, 16), torch.randn(8, 16))
    assert uses_gemma4_kernel(torch.randn(1, 16), torch.randn(8, 16))  # small fp32 weight: ours too
    assert uses_gemma4_kernel(torch.randn(1, 1024).bfloat16(), w16)
    assert uses_gemma4_kernel(torch.randn(linear_choice.NATIVE_BF16_ROWS, 1024).bfloat16(), w16)
    # bf16 prefill: ours where torch's bf16 GEMM is a generic loop, torch's where it is oneDNN's native one
    native = linear_choice.NATIVE_LOWP_GEMM[torch.bfloat16]
    assert uses_gemma4_kernel(torch.randn(64, 1024).bfloat16(), w16) is not native
    assert uses_gemma4_kernel(torch.randn(linear_choice.NATIVE_BF16_ROWS + 1, 1024).bfloat16(), w16) is not native
    assert not uses_gemma4_kernel(torch.randn(1, 1024).bfloat16(), w32)  # mixed dtypes
    assert not uses_gemma4_kernel(torch.randn(1, 1024, dtype=torch.float64), w32.double())
    assert not uses_gemma4_kernel(torch.randn(1, 1024), torch.randn(2048, 1024).t())  # strided weight
    with torch_linear_only():
        assert not uses_gemma4_kernel(torch.randn(1, 1024), w32)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # F.linear applies autocast's dtypes
        assert not uses_gemma4_kernel(torch.randn(16, 1024), w32)


def _tiny(seed=0):
    torch.manual_seed(seed)
    return gemma4.Gemma4ForCausalLM(gemma4.get_preset("tiny-e2b")).eval()


def test_greedy_tokens_match_torch_linear_fp32():
    model = _tiny()
    ids = torch.randint(3, model.config.vocab_size, (2, 37))
    kw = dict(max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0)
    got = model.generate(ids, **kw)
    with torch_linear_only():
        want = model.generate(ids, **kw)
    assert torch.equal(got, want)


@torch.inference_mode()
def test_bf16_prefill_and_decode_logits_within_2x_torch_error():
    """bf16 rounds differently from torch's bf16 matmul, so greedy tokens of a random model (near-tied
    logits) may part; instead the logits of a prefill (GEMM path) and of a cached decode step (GEMV
    path) must be within 2x the error of the torch-linear bf16 model, both against the fp32 model."""
    from gemma4.cache import Gemma4Cache

    model = _tiny()
    ids = torch.randint(3, model.config.vocab_size, (2, 37))

    def prefill_then_step(m):
        cache = Gemma4Cache(m.config)
        pre = m(input_ids=ids[:, :-1], cache=cache).logits.float()  # [2, 36, V]
        step = m(input_ids=ids[:, -1:], cache=cache).logits.float()  # [2, 1, V]
        return pre, step

    ref_pre, ref_step = prefill_then_step(model)
    model = model.to(torch.bfloat16)
    ours = prefill_then_step(model)
    with torch_linear_only():
        plain = prefill_then_step(model)
    for o, p, r in zip(ours, plain, (ref_pre, ref_step)):
        err_ours = (o - r).abs().max().item()
        err_plain = (p - r).abs().max().item()
        assert err_ours <= 2 * err_plain, (err_ours, err_plain)


def test_lora_wraps_it():
    from gemma4.lora.layers import LoraLinear

    base = Linear(16, 8, bias=False)
    wrapped = LoraLinear(base)
    x = torch.randn(3, 16)
    torch.testing.assert_close(wrapped(x), F.linear(x, base.weight), rtol=1e-5, atol=1e-5)
