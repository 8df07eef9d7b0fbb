"""A whole LoRA training step compiles in one graph (torch.compile(model, fullgraph=True) with labels:
decoder, fused loss and their backward) and gives eager's loss and gradients."""
import copy

import pytest
import torch

from gemma4.lora import LoraConfig
from tests.helpers import max_abs_err
from tests.training.common import randomize_norms_, small_config
from tests.training.test_lora_training import fixed_batch, lora_params, trained_scale_model


def test_fullgraph_compiled_lora_step_equals_eager():
    eager = randomize_norms_(trained_scale_model(config=small_config("tiny-e2b")))
    eager.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():  # non-zero B so that every adapter takes part
        for n, p in lora_params(eager).items():
            if ".lora_B." in n:
                p.normal_(0, 0.05)
    eager.loss_chunk_size = 16  # several loss chunks (48 tokens)
    eager.train()
    compiled_model = copy.deepcopy(eager)
    ids = fixed_batch(2, 24, seed=9)
    labels = ids.clone()
    labels[0, :5] = -100  # a prompt that does not count

    want = eager(input_ids=ids, labels=labels).loss
    want.backward()
    torch._dynamo.reset()
    compiled = torch.compile(compiled_model, fullgraph=True)
    got = compiled(input_ids=ids, labels=labels).loss
    got.backward()

    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    ours, ref = lora_params(compiled_model), lora_params(eager)
    assert len(ref) > 0
    for n, p in ref.items():
        assert ours[n].grad is not None, n
        assert max_abs_err(ours[n].grad, p.grad) <= 1e-5 * p.grad.abs().max().item() + 1e-9, n
    for n, p in compiled_model.named_parameters():
        assert (p.grad is None) == (n not in ours), n


@pytest.mark.parametrize("seed", [2, 7, 543957336, 2105660740])
def test_bf16_base_lora_ops_step_traces_in_one_graph(monkeypatch, seed):
    """LoRA over a bf16 model with float32 adapters runs on the gemma4::lora_* ops, whose autograd is C++
    (csrc/lora/lora_autograd.cpp). AOTAutograd traces forward and backward through it in one graph; with
    the aot_eager backend (the traced ops run as they are, no inductor rounding) every gradient equals
    eager's exactly, and the loss to float32 rounding (the traced graph may add the chunks' losses in
    another order: 1 ulp apart at seed 2).

    The frozen bf16 base Linears run gemma4::linear here on every CPU. On a CPU with a native bf16 GEMM they
    would otherwise take torch's (linear_choice), and the traced graph calls it through other ATen kernels
    than eager does: their bf16 outputs can round one ulp apart (seed 1184983655 on an AVX512-BF16 EPYC moved
    every LoRA gradient by ~1e-3 relative), which says nothing about the LoRA ops under test.

    The eager step's loss takes the compiled step's maths too: the composed form of the fused loss
    (_chunk_loss_and_grad instead of the gemma4::softcap_cross_entropy kernel) and the head's GEMMs on a
    float32 copy of the frozen bf16 head (torch.mm, where eager would run gemma4::linear on the bf16 head).
    Either pair gives the logits and their gradient to float32 rounding, and at some draws one value then
    rounds to another bf16, which moves a few LoRA gradients by ~1e-5 relative (seed 543957336: layer 3's
    per_layer_projection, from the loss kernel; seed 2105660740: layer 0's q_proj, from the head GEMM),
    again nothing about the LoRA ops."""
    import gemma4.linear_choice as linear_choice
    import gemma4.lora.layers as layers
    import gemma4.modeling.loss as loss_module

    monkeypatch.setitem(linear_choice.NATIVE_LOWP_GEMM, torch.bfloat16, False)

    def composed_loss(logits, targets, row_weight, cap):  # the kernel's contract: losses, gradient over logits
        loss, grad = loss_module._chunk_loss_and_grad(logits, targets, row_weight, cap)
        logits.copy_(grad)
        return loss

    monkeypatch.setattr(loss_module.ops, "softcap_cross_entropy", composed_loss)
    monkeypatch.setattr(loss_module, "uses_gemma4_kernel", lambda *args: False)  # the head GEMMs: torch.mm
    torch.manual_seed(seed)

    model = randomize_norms_(trained_scale_model(config=small_config("tiny-e2b"))).to(torch.bfloat16)
    model.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for n, p in lora_params(model).items():
            assert p.dtype == torch.float32, n
            if ".lora_B." in n:
                p.normal_(0, 0.05)
    model.loss_chunk_size = 16
    model.train()
    compiled_model = copy.deepcopy(model)
    ids = fixed_batch(2, 24, seed=9)

    taken = []
    real = layers._lowp_input_lora_update
    monkeypatch.setattr(layers, "_lowp_input_lora_update", lambda *a: taken.append(1) or real(*a))
    want = model(input_ids=ids, labels=ids).loss
    want.backward()
    assert taken  # the eager run took the lora-ops path
    torch._dynamo.reset()
    got = torch.compile(compiled_model, fullgraph=True, backend="aot_eager")(input_ids=ids, labels=ids).loss
    got.backward()
    torch.testing.assert_close(got, want, rtol=2.5e-7, atol=0)  # 2 float32 ulps
    ours, ref = lora_params(compiled_model), lora_params(model)
    for n, p in ref.items():
        assert torch.equal(ours[n].grad, p.grad), n
