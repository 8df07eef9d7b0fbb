"""The fused linear + soft-cap + cross-entropy loss (modeling/loss.py) against the plain computation.

The plain computation is transformers': logits = hidden @ W.T in the model dtype, soft-cap in the model
dtype, float32 cross-entropy, mean over labels != -100, gradients by autograd.
"""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from gemma4 import LoraConfig
from gemma4.lora.layers import LoraLinear
from gemma4.modeling import loss as loss_mod
from gemma4.modeling.loss import chunked_causal_lm_loss
from tests.helpers import max_abs_err


def plain_loss(hidden, head, labels, cap):
    logits = head(hidden) if isinstance(head, nn.Module) else hidden @ head.t()  # [B,T,V] model dtype
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    shifted = F.pad(labels, (0, 1), value=-100)[:, 1:]
    return F.cross_entropy(logits.float().flatten(0, 1), shifted.flatten(), ignore_index=-100)


def make_case(B=2, T=19, H=24, V=301, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(B, T, H, generator=g) * 2).to(dtype)
    weight = torch.randn(V, H, generator=g).to(dtype)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :4] = -100  # a prompt that does not count
    labels[1, 7] = -100
    return hidden, weight, labels


@pytest.mark.parametrize("cap", [None, 30.0, 2.0])
@pytest.mark.parametrize("chunk", [1, 7, 64, 4096])
@pytest.mark.parametrize("train_weight", [True, False])
def test_fused_loss_equals_plain_fp32(cap, chunk, train_weight):
    hidden, weight, labels = make_case(seed=chunk)
    hidden.requires_grad_()
    weight.requires_grad_(train_weight)
    want = plain_loss(hidden, weight, labels, cap)
    inputs = (hidden, weight) if train_weight else (hidden,)
    want_grads = torch.autograd.grad(want, inputs)
    got = chunked_causal_lm_loss(hidden, weight, labels, cap, chunk)
    got_grads = torch.autograd.grad(got, inputs)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for g, w in zip(got_grads, want_grads):
        assert g.dtype == w.dtype and g.shape == w.shape
        # chunking reorders float32 sums: compare at the gradients' own scale
        assert max_abs_err(g, w) <= 1e-5 * w.abs().max().item()


def test_upstream_gradient_scales_the_result():
    # backward multiplies the gradients stored in forward by the incoming gradient (e.g. loss / accumulation)
    hidden, weight, labels = make_case(seed=3)
    hidden.requires_grad_()
    weight.requires_grad_()
    want = plain_loss(hidden, weight, labels, 30.0) * -0.37
    got = chunked_causal_lm_loss(hidden, weight, labels, 30.0, 8) * -0.37
    for g, w in zip(torch.autograd.grad(got, (hidden, weight)), torch.autograd.grad(want, (hidden, weight))):
        assert max_abs_err(g, w) <= 1e-5 * w.abs().max().item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_loss_low_precision_within_twice_plain_error(dtype):
    hidden, weight, labels = make_case(B=2, T=33, H=32, V=517, dtype=dtype, seed=11)
    h32, w32 = hidden.float().requires_grad_(), weight.float().requires_grad_()
    ref = plain_loss(h32, w32, labels, 30.0)
    ref_gh, ref_gw = torch.autograd.grad(ref, (h32, w32))
    hidden.requires_grad_()
    weight.requires_grad_()
    plain = plain_loss(hidden, weight, labels, 30.0)
    plain_gh, plain_gw = torch.autograd.grad(plain, (hidden, weight))
    got = chunked_causal_lm_loss(hidden, weight, labels, 30.0, 16)
    gh, gw = torch.autograd.grad(got, (hidden, weight))
    assert got.dtype == torch.float32 and gh.dtype == dtype and gw.dtype == dtype
    eps = torch.finfo(dtype).eps
    assert abs(got.item() - ref.item()) <= 2 * abs(plain.item() - ref.item()) + 1e-6
    assert max_abs_err(gh, ref_gh) <= 2 * max_abs_err(plain_gh, ref_gh) + eps * ref_gh.abs().max()
    assert max_abs_err(gw, ref_gw) <= 2 * max_abs_err(plain_gw, ref_gw) + eps * ref_gw.abs().max()


def test_nothing_of_size_tokens_by_vocab_is_kept_for_backward():
    hidden, weight, labels = make_case(B=2, T=64, H=16, V=1000)
    hidden.requires_grad_()
    N, V = labels.numel(), weight.shape[0]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        loss = chunked_causal_lm_loss(hidden, weight, labels, 30.0, 32)
    assert saved and max(saved) < N * V / 4  # only grad_hidden [N, H] (the plain loss keeps several [N, V])
    loss.backward()


def test_head_module_plain_linear_and_lora_head():
    """A plain Linear takes the fused path; a LoRA-wrapped head goes through the module per chunk and its
    LoRA factors get the plain computation's gradients."""
    hidden, weight, labels = make_case(seed=7)
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        linear.weight.copy_(weight)
    lora = LoraLinear(linear)
    lora.update_layer("default", 4, 8.0, False, 0.0, torch.float32, init=False)  # non-zero A and B
    lora.active_adapters = ["default"]
    linear.weight.requires_grad_(False)
    for head in (linear, lora):
        h = hidden.clone().requires_grad_()
        params = [h] + [p for p in head.parameters() if p.requires_grad]
        want_grads = torch.autograd.grad(want := plain_loss(h, head, labels, 30.0), params)
        got = chunked_causal_lm_loss(h, head, labels, 30.0, 8)
        got_grads = torch.autograd.grad(got, params)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        for g, w in zip(got_grads, want_grads):
            assert max_abs_err(g, w) <= 1e-5 * w.abs().max().item()
    assert len(list(p for p in lora.parameters() if p.requires_grad)) == 2


def test_all_labels_ignored_gives_nan_as_upstream():
    hidden, weight, labels = make_case()
    labels[:] = -100
    assert torch.isnan(plain_loss(hidden, weight, labels, 30.0))
    assert torch.isnan(chunked_causal_lm_loss(hidden, weight, labels, 30.0, 8))


def test_bad_chunk_size():
    hidden, weight, labels = make_case()
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_causal_lm_loss(hidden, weight, labels, 30.0, 0)


@pytest.mark.parametrize("train_weight", [False, True])
def test_compiles_fullgraph_and_equals_eager(train_weight):
    hidden, weight, labels = make_case(B=2, T=24, H=16, V=257, seed=2)
    hidden.requires_grad_()
    weight.requires_grad_(train_weight)
    inputs = (hidden, weight) if train_weight else (hidden,)
    eager = chunked_causal_lm_loss(hidden, weight, labels, 30.0, 16)
    eager_grads = torch.autograd.grad(eager, inputs)
    torch._dynamo.reset()
    compiled = torch.compile(chunked_causal_lm_loss, fullgraph=True, dynamic=False)
    got = compiled(hidden, weight, labels, 30.0, 16)
    got_grads = torch.autograd.grad(got, inputs)
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-6)
    for g, w in zip(got_grads, eager_grads):
        assert max_abs_err(g, w) <= 1e-5 * w.abs().max().item()


def test_frozen_bf16_head_is_not_copied_to_float32():
    """On a CPU without a native bf16 GEMM the fused loss runs its head GEMMs in float32; a frozen bf16 head goes
    to gemma4's ops as it is (no float32 copy of it), with the same numbers as the float32 copy gives."""
    from gemma4.float32_gemm import needs_float32_gemm
    hidden, weight, labels = make_case(B=2, T=40, H=48, V=700, dtype=torch.bfloat16, seed=5)
    if not needs_float32_gemm(weight):
        pytest.skip("this CPU has a native bf16 GEMM: the loss runs in bf16")
    h = hidden.clone().requires_grad_()
    got = chunked_causal_lm_loss(h, weight, labels, 30.0, 16)  # weight frozen (requires_grad False)
    (gh,) = torch.autograd.grad(got, h)
    h32 = hidden.float().requires_grad_()
    want = chunked_causal_lm_loss(h32, weight.float(), labels, 30.0, 16)  # the float32 copy, explicitly
    (gh32,) = torch.autograd.grad(want, h32)
    assert got.item() == want.item()
    assert torch.equal(gh, gh32.bfloat16())
