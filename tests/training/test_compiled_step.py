"""A whole LoRA training step compiles in one graph (torch.compile(model, fullgraph=True) with labels:
decoder, fused loss and their backward) and gives eager's loss and gradients."""
import copy

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
