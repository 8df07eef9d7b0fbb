"""Training paths: chunked head cross-entropy and gradient checkpointing."""
import pytest
import torch
from torch.nn import functional as F

import gemma4
from gemma4.modeling.loss import chunked_causal_lm_loss
from tests.helpers import max_abs_err


def _plain_loss(hidden, weight, labels, cap):
    logits = hidden @ weight.t()  # [B,T,V] model dtype, as transformers
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    shifted = F.pad(labels, (0, 1), value=-100)[:, 1:]
    return F.cross_entropy(logits.float().flatten(0, 1), shifted.flatten(), ignore_index=-100)


@pytest.mark.parametrize("cap", [None, 30.0])
@pytest.mark.parametrize("chunk", [1, 7, 64, 4096])
def test_chunked_loss_value_and_gradients_fp32(cap, chunk):
    B, T, H, V = 2, 19, 24, 301
    hidden = (torch.randn(B, T, H) * 2).requires_grad_()
    weight = torch.randn(V, H).requires_grad_()
    labels = torch.randint(0, V, (B, T))
    labels[0, :4] = -100
    want = _plain_loss(hidden, weight, labels, cap)
    gh, gw = torch.autograd.grad(want, (hidden, weight))
    got = chunked_causal_lm_loss(hidden, weight, labels, cap, chunk)
    oh, ow = torch.autograd.grad(got, (hidden, weight))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    # chunking reorders float32 sums: compare at the gradients' own scale
    assert max_abs_err(oh, gh) <= 1e-5 * gh.abs().max().item()
    assert max_abs_err(ow, gw) <= 1e-5 * gw.abs().max().item()


def test_chunked_loss_bf16_matches_plain_bf16():
    B, T, H, V = 2, 33, 32, 517
    hidden = (torch.randn(B, T, H) * 2).bfloat16().requires_grad_()
    weight = torch.randn(V, H).bfloat16().requires_grad_()
    labels = torch.randint(0, V, (B, T))
    ref = _plain_loss(hidden.float(), weight.float(), labels, 30.0)
    want = _plain_loss(hidden, weight, labels, 30.0)
    got = chunked_causal_lm_loss(hidden, weight, labels, 30.0, 16)
    # the value is within 2x the plain bf16 error of the float32 one (on a CPU without a native bf16 GEMM the
    # head GEMMs run in float32, gemma4/float32_gemm.py, so it is not the plain bf16 value bit for bit)
    assert abs(got.item() - ref.item()) <= 2 * abs(want.item() - ref.item()) + 1e-3
    gh_plain = torch.autograd.grad(want, hidden)[0]
    gh = torch.autograd.grad(got, hidden)[0]
    hid32 = hidden.detach().float().requires_grad_()
    g32 = torch.autograd.grad(_plain_loss(hid32, weight.detach().float(), labels, 30.0), hid32)[0]
    assert max_abs_err(gh, g32) <= 2 * max_abs_err(gh_plain, g32) + torch.finfo(torch.bfloat16).eps * g32.abs().max()


def test_training_forward_does_not_return_logits_and_eval_does():
    model = gemma4.Gemma4ForCausalLM(gemma4.get_preset("tiny-e4b"))
    ids = torch.randint(0, 512, (2, 12))
    out = model(input_ids=ids, labels=ids)
    assert out.logits is None and out.loss.requires_grad
    with torch.no_grad():
        evaluated = model(input_ids=ids, labels=ids)
    assert evaluated.logits.shape == (2, 12, 512)
    torch.testing.assert_close(evaluated.loss, out.loss.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["tiny-e2b", "tiny-26b-a4b"])
def test_gradient_checkpointing_same_gradients(name):
    model = gemma4.Gemma4ForCausalLM(gemma4.get_preset(name)).train()
    with torch.no_grad():  # random non-trivial norms so no gradient hides behind a weight of one
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    ids = torch.randint(3, 512, (2, 20))
    model(input_ids=ids, labels=ids).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    model(input_ids=ids, labels=ids).loss.backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, n
        assert max_abs_err(p.grad, plain[n]) <= 1e-5 * plain[n].abs().max().item() + 1e-12, n
