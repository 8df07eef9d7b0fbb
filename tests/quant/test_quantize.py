"""gemma4.quantize and QuantizationConfig on whole models: which modules change, how much error the
kernels add on top of the quantization itself, greedy decoding, casts, errors."""
import copy
import warnings

import pytest
import torch
from torch import nn

import gemma4
from gemma4.quant import QuantExperts, QuantizationConfig, QuantLinear, quantize
from tests.helpers import FLOAT32_ROUTER_MARGIN, draw_routable_ids, max_abs_err


def _model(preset: str, dtype=torch.float32):
    model = gemma4.Gemma4ForCausalLM(gemma4.get_preset(preset)).eval()
    with torch.no_grad():  # weights of realistic spread, norms and scales away from 1
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "scale" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.05)
    return model.to(dtype)


def _fake_quantized(model, qmodel):
    """The float model with each quantized module's weights replaced by its exact dequantized weights."""
    fake = copy.deepcopy(model)
    with torch.no_grad():
        for name, module in qmodel.named_modules():
            if isinstance(module, QuantLinear):
                fake.get_submodule(name).weight.copy_(module.dequantize())
            elif isinstance(module, QuantExperts):
                for w in ("gate_up_proj", "down_proj"):
                    getattr(fake.get_submodule(name), w).copy_(module.dequantize(w))
    return fake


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.double()


def _kernel_error_ratios(preset, weights, group):
    """One random model: for float32 and bfloat16, the quantized model's error over the fake-quantized
    model's error (plain PyTorch in that dtype), both against the fake-quantized model in float64 (the
    exact answer for these integer weights), as the norm over all logits of 4x16 tokens. MoE models get
    ids whose every routing choice is well conditioned in the exact model (FLOAT32_ROUTER_MARGIN), so no
    expert choice flips between it and the float32 models: the ids depend on the exact model alone, not on the
    quantized kernels, whose errors still show in full."""
    model = _model(preset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny widths: a few modules do not fit the groups
        qmodel = quantize(copy.deepcopy(model), QuantizationConfig(weights=weights, group_size=group,
                                                                    scale_dtype="float32"))
    fake = _fake_quantized(model, qmodel)
    exact_model = copy.deepcopy(fake).double()
    # ~10% of tokens have a choice below the margin: 4 candidates a round, for each of the 4 rows at once
    ids = draw_routable_ids(exact_model, 4, 16, 0, model.config.vocab_size, FLOAT32_ROUTER_MARGIN, candidates=4)
    assert ids is not None, f"no well-conditioned routing (margin >= {FLOAT32_ROUTER_MARGIN}) found"
    exact = _logits(exact_model, ids)
    assert max_abs_err(exact, _logits(model, ids)) > 1e-3  # the test can fail: quantization did change the weights
    return [(_logits(copy.deepcopy(qmodel).to(dtype), ids) - exact).norm().item()
            / (_logits(copy.deepcopy(fake).to(dtype), ids) - exact).norm().item()
            for dtype in (torch.float32, torch.bfloat16)]


@pytest.mark.parametrize("preset", ["tiny-e2b", "tiny-26b-a4b"])
@pytest.mark.parametrize("weights,group", [("int4", 32), ("int8", None), ("int4", 64)])
def test_kernels_add_little_to_quantization_error(preset, weights, group):
    """The quantized kernels' error with quantization itself taken out is within 1.25x of plain PyTorch's
    over the fake-quantized model, in float32 and bfloat16. One model's ratio is a noisy estimate (the
    rounding of a random deep net is dominated by a few amplified directions). Measured over 50 models in
    each of four cases: float32 log-ratio mean -0.34 to -0.40 (0.67-0.71x), sd 0.22-0.26, largest 1.26 and 2.21;
    bfloat16 0.98-1.00x, sd <= 0.035. A geometric mean over 4 models crossed 1.25 about once in 1,000
    draws for tiny-e2b int4/64 (CI met GEMMA4_TEST_SEED=1995250974 on tiny-26b-a4b int4/64: 1.15, 1.37,
    1.91, 0.90); over 8 about once in 100,000."""
    ratios = torch.tensor([_kernel_error_ratios(preset, weights, group) for _ in range(8)])  # [model, dtype]
    assert (ratios.log().mean(0).exp() <= 1.25).all(), ratios


def test_quantize_swaps_the_targeted_modules():
    model = _model("tiny-26b-a4b")
    quantize(model, QuantizationConfig(weights="int4", group_size=32))
    assert model.quantization_skipped == []
    assert isinstance(model.model.layers[0].self_attn.q_proj, QuantLinear)
    assert isinstance(model.model.layers[0].experts, QuantExperts)
    assert isinstance(model.lm_head, nn.Linear) and isinstance(model.model.layers[0].router.proj, nn.Linear)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # the tied head is untouched
    assert isinstance(model.quantization_config, QuantizationConfig)
    with pytest.raises(ValueError, match="already quantized"):
        quantize(model, QuantizationConfig())


def test_modules_that_do_not_fit_the_groups_stay_float_with_a_warning():
    model = _model("tiny-26b-a4b")  # dense down_proj K = 96, experts' down K = 32: no groups of 64
    with pytest.warns(UserWarning, match="kept in full precision"):
        quantize(model, QuantizationConfig(weights="int4", group_size=64))
    assert "model.layers.0.mlp.down_proj" in model.quantization_skipped
    assert "model.layers.0.experts" in model.quantization_skipped
    assert isinstance(model.model.layers[0].mlp.down_proj, nn.Linear)
    assert isinstance(model.model.layers[0].mlp.up_proj, QuantLinear)


def test_modules_to_not_convert_and_regex():
    model = _model("tiny-e4b")
    config = QuantizationConfig(weights="int8", modules_to_not_convert=["o_proj", r"re:model\.layers\.1\..*"])
    quantize(model, config)
    assert isinstance(model.model.layers[0].self_attn.o_proj, nn.Linear)
    assert not any(isinstance(m, QuantLinear) for m in model.model.layers[1].modules())
    assert isinstance(model.model.layers[0].self_attn.q_proj, QuantLinear)
    assert isinstance(model.lm_head, QuantLinear)  # the list replaces the default, and omits lm_head


def test_casts_keep_scale_dtype_and_move_bias():
    model = quantize(_model("tiny-e4b"), QuantizationConfig(weights="int4", scale_dtype="bfloat16"))
    model.half()
    q = model.model.layers[0].self_attn.q_proj
    assert q.scales.dtype == torch.bfloat16 and q.qweight.dtype == torch.uint8
    assert model.model.embed_tokens.weight.dtype == torch.float16


def test_int8_predicts_the_bf16_tokens_on_default_model():
    """int8 per-channel weights keep the trained model's next-token choices: teacher-forced on the bf16
    model's greedy continuation, the int8 model picks the same token at nearly every position. (Equal
    greedy text over many tokens would depend on the narrowest top-2 margin, which differs from CPU to
    CPU with the summation order; a rate does not.)"""
    from gemma4 import default_model_path

    model = gemma4.AutoModelForCausalLM.from_pretrained(default_model_path(), dtype=torch.bfloat16)
    tok = gemma4.AutoTokenizer.from_pretrained(default_model_path())
    ids = tok("It is a truth universally acknowledged, that", return_tensors="pt")["input_ids"]
    seq = model.generate(ids, max_new_tokens=40, do_sample=False)  # [1, T + 40]
    with torch.no_grad():
        want = model(input_ids=seq).logits[0, ids.shape[1] - 1:-1].argmax(-1)  # [40]
        quantize(model, QuantizationConfig(weights="int8"))
        got = model(input_ids=seq).logits[0, ids.shape[1] - 1:-1].argmax(-1)
    assert torch.equal(want, seq[0, ids.shape[1]:])  # generate is the forward's argmax
    assert (got == want).float().mean() >= 0.95, (got != want).nonzero()


def test_quantized_model_compiles_fullgraph():
    model = quantize(_model("tiny-e4b"), QuantizationConfig(weights="int4"))
    ids = torch.randint(0, model.config.vocab_size, (1, 7))
    want = _logits(model, ids)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        got = compiled(input_ids=ids).logits.double()
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("kwargs,match", [
    (dict(weights="int3"), "weights must be 'int4' or 'int8'"),
    (dict(group_size=48), "group_size must be a positive multiple of 32"),
    (dict(scale_dtype="float64"), "scale_dtype must be one of"),
    (dict(weights="int8", trained_grid=True), "trained_grid applies to int4"),
    (dict(modules_to_not_convert=["re:("]), "not a valid regular expression"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantizationConfig(**kwargs)


def test_quantize_refuses_meta_and_leaves_model_unchanged():
    with torch.device("meta"):
        model = gemma4.Gemma4ForCausalLM(gemma4.get_preset("tiny-e4b"))
    before = {n: type(m) for n, m in model.named_modules()}
    with pytest.raises(ValueError, match="meta"):
        quantize(model, QuantizationConfig())
    assert {n: type(m) for n, m in model.named_modules()} == before
    assert getattr(model, "quantization_config", None) is None


def test_tied_head_is_converted_only_when_asked():
    """Default: the tied head keeps the full-precision table. With "lm_head" out of modules_to_not_convert,
    a quantized copy becomes the head and the model is untied; the embedding keeps its table, and the
    logits are those of the float model whose (untied) head and linears hold the dequantized weights."""
    model = _model("tiny-e2b")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        default = quantize(copy.deepcopy(model), QuantizationConfig(weights="int4"))
        q = quantize(copy.deepcopy(model), QuantizationConfig(weights="int4", modules_to_not_convert=["router"]))
    assert default.lm_head.weight is default.model.embed_tokens.weight and default.config.tie_word_embeddings
    assert isinstance(q.lm_head, QuantLinear) and not q.config.tie_word_embeddings
    assert torch.equal(q.model.embed_tokens.weight, model.model.embed_tokens.weight)
    q.tie_weights()
    assert isinstance(q.lm_head, QuantLinear)
    untied = copy.deepcopy(model)
    untied.config.tie_word_embeddings = False
    untied.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    fake = _fake_quantized(untied, q)
    assert not torch.equal(fake.lm_head.weight, fake.model.embed_tokens.weight)
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    want = _logits(fake, ids)
    assert max_abs_err(_logits(q, ids), want) <= 1e-4 * want.abs().max().item()
