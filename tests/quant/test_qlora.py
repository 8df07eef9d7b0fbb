"""QLoRA: LoRA over a quantized base trains through qgemm's backward (the weights are dequantized a
slab of rows at a time, never whole) with the gradients of LoRA over the fake-quantized float model."""
import copy
import math
import warnings

import pytest
import torch

import gemma4
from gemma4.lora import LoraConfig
from gemma4.quant import QuantizationConfig, QuantLinear, quantize
from tests.quant.test_quantize import _fake_quantized, _model

LORA = (".lora_A.", ".lora_B.")


def _lora(model):
    return {n: p for n, p in model.named_parameters() if any(k in n for k in LORA)}


def _lora_grads(model, ids):
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad for n, p in _lora(model).items()}


def _grad_error_ratio(preset, weights, device="cpu"):
    """One random model: how far our QLoRA gradients (the quantized model moved to device) are from the
    float64 answer (LoRA over the fake-quantized model in float64, on the CPU), over how far float32
    LoRA over the fake-quantized model on the CPU is."""
    model = _model(preset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = quantize(copy.deepcopy(model), QuantizationConfig(weights=weights, scale_dtype="float32"))
    fake = _fake_quantized(model, qmodel)
    qmodel = qmodel.to(device)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    qmodel.add_adapter(config)
    fake.add_adapter(config)
    # A quantized base has no .weight to ask for its device: the adapters must follow it anyway.
    assert all(p.device.type == device for p in _lora(qmodel).values())
    with torch.no_grad():  # the same adapter weights in both
        theirs = _lora(fake)
        for n, p in _lora(qmodel).items():
            theirs[n].copy_(p)
    assert any(isinstance(m.base_layer, QuantLinear) for m in qmodel.modules() if hasattr(m, "base_layer"))
    fake64 = copy.deepcopy(fake).double()
    ids = torch.randint(0, model.config.vocab_size, (2, 11))
    got = {n: g.cpu() for n, g in _lora_grads(qmodel.train(), ids.to(device)).items()}
    want, exact = (_lora_grads(m.train(), ids) for m in (fake, fake64))
    assert got.keys() == want.keys() and got
    assert all(p.grad is None for n, p in qmodel.named_parameters() if not any(k in n for k in LORA))
    flat = {k: torch.cat([g[n].double().flatten() for n in sorted(got)]) for k, g in
            (("ours", got), ("fake", want), ("exact", exact))}
    return (flat["ours"] - flat["exact"]).norm().item() / (flat["fake"] - flat["exact"]).norm().item()


@pytest.mark.parametrize("preset,weights", [("tiny-e2b", "int4"), ("tiny-26b-a4b", "int8")])
def test_qlora_gradients_equal_lora_over_fake_quantized_model(preset, weights):
    """float32 noise (summation order) is all that may differ, and ours is at most 2x as far from the
    float64 answer as plain float32 LoRA over the fake-quantized model. One model's ratio is a poor
    estimate: backpropagation through a random deep net amplifies one rounding direction, so the ratio
    of two noise norms has a heavy tail. Measured over 280 models (160 tiny-e2b int4, 120 tiny-26b-a4b
    int8): log-ratio mean -0.13 and -0.09, sd 0.70 and 0.63, 5% above 2x and one at 22x. A geometric
    mean over 8 models crossed 2 about once in 1,000-7,000 draws (CI met GEMMA4_TEST_SEED=484265958:
    4.6, 2.4, 0.6, 3.0, 3.0, ...); over 16 it did in none of 200,000 bootstrap draws, while a kernel 2x
    noisier (mean log +0.6) fails it about a quarter of the time and one 3x noisier 96% of the time."""
    _assert_geomean_ratio_at_most_2(preset, weights, "cpu")


def _assert_geomean_ratio_at_most_2(preset, weights, device):
    ratios = [_grad_error_ratio(preset, weights, device) for _ in range(16)]
    assert math.exp(sum(map(math.log, ratios)) / len(ratios)) <= 2, ratios


def test_qlora_on_int4_default_model_halves_the_loss():
    from gemma4 import default_model_path

    model = gemma4.AutoModelForCausalLM.from_pretrained(default_model_path(), dtype=torch.float32, progress=False,
                                                       quantization_config=QuantizationConfig(weights="int4"))
    model.add_adapter(LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    model.train()
    ids = torch.randint(3, model.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: one thread is faster, and immune to a busy machine
    try:
        losses = []
        for _ in range(20):
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] <= 0.5 * losses[0], losses


@pytest.mark.cuda
def test_qlora_on_cuda_gradients_equal_lora_over_fake_quantized_model():
    """A model quantized and moved to the GPU gets its adapters there, and its LoRA gradients are held
    to the CPU test's rule: at most 2x float32 LoRA's distance from the float64 answer (geometric mean
    over 16 models)."""
    _assert_geomean_ratio_at_most_2("tiny-e2b", "int4", "cuda")
