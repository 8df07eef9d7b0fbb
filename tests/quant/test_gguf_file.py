"""from_pretrained(dir, gguf_file=...): GGUF files written here as llama.cpp's converter writes Gemma 4
(tests/quant/gguf_support.py), loaded back: config, names, every writable tensor type, errors."""
import copy
import dataclasses

import pytest
import torch

import gemma4
from gemma4.errors import CheckpointError
from gemma4.quant import QuantExperts, QuantLinear

pytest.importorskip("gguf")  # before gguf_support, which imports it

from tests.helpers import FLOAT32_ROUTER_MARGIN, draw_routable_ids  # noqa: E402
from tests.quant.gguf_support import random_model, write_gguf  # noqa: E402


def _reference(model, held):
    """The float model holding exactly the weights the file holds (the gguf package's dequantization)."""
    ref = copy.deepcopy(model)
    ref.load_state_dict({**ref.state_dict(), **held})  # lm_head stays tied where the file has no output.weight
    return ref


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.double()


def _load(tmp_path, **kwargs):
    return gemma4.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="model.gguf", progress=False, **kwargs)


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16"])
@pytest.mark.parametrize("preset", ["tiny-e2b", "tiny-26b-a4b"])
def test_float_types_load_the_weights_the_file_holds(tmp_path, preset, qtype):
    model = random_model(preset)
    held = write_gguf(model, tmp_path / "model.gguf", qtype)
    loaded = _load(tmp_path)
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    ref = _reference(model, held)
    if qtype != "F32":  # the test can fail: the type did round the weights
        assert not torch.equal(_logits(ref, ids), _logits(model, ids))
    torch.testing.assert_close(_logits(loaded, ids), _logits(ref, ids), rtol=1e-6, atol=1e-6)
    assert not any(isinstance(m, (QuantLinear, QuantExperts)) for m in loaded.modules())


def _error_ratio(path, preset, qtype, check_types=False):
    """One random model written as a qtype file and loaded back: the loaded model's logits error over plain
    PyTorch float32's on the file's weights (the fake-quantized model), both against the float64 model of those
    weights, as the norm over 16 x 12 tokens. MoE models get ids whose every routing choice is well conditioned
    in the exact model (FLOAT32_ROUTER_MARGIN), so no expert choice flips in one float32 model and not in the
    other."""
    path.mkdir()
    model = random_model(preset)
    held = write_gguf(model, path / "model.gguf", qtype)
    loaded = _load(path)
    if check_types:
        layer = loaded.model.layers[0]
        assert isinstance(layer.self_attn.q_proj, QuantLinear) and layer.self_attn.q_proj.bits == int(qtype[1])
        if preset == "tiny-26b-a4b":
            assert isinstance(layer.experts, QuantExperts) and isinstance(layer.router.proj, torch.nn.Linear)  # F32
        else:
            assert isinstance(layer.per_layer_projection, torch.nn.Linear)  # K = 16: the converter's F16 fallback
    fake = _reference(model, held)
    exact_model = copy.deepcopy(fake).double()
    ids = draw_routable_ids(exact_model, 16, 12, 0, model.config.vocab_size, FLOAT32_ROUTER_MARGIN, candidates=4)
    assert ids is not None, f"no well-conditioned routing (margin >= {FLOAT32_ROUTER_MARGIN}) found"
    exact = _logits(exact_model, ids)
    assert (exact - _logits(model, ids)).abs().max() > 1e-3  # the test can fail: quantization changed the weights
    return ((_logits(loaded, ids) - exact).norm() / (_logits(fake, ids) - exact).norm()).item()


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
@pytest.mark.parametrize("preset", ["tiny-e2b", "tiny-26b-a4b"])
def test_q4_0_and_q8_0_stay_quantized(tmp_path, preset, qtype):
    """Linears and expert banks become QuantLinear / QuantExperts, and the loaded models' error against the
    exact (float64) model of the file's weights is at most 2x that of plain PyTorch float32 on those weights,
    as a geometric mean over 4 files. One model's ratio measures luck more than the kernels: the logits' error
    of a random model is the rounding at its few most sensitive tokens, amplified. On GEMMA4_TEST_SEED=241259732
    (tiny-26b-a4b, Q4_0) one token's row of logits erred ~10x more than the others, and a random perturbation of
    the same size per token at layer 1 gave the same logits error as ours did, so the ratio was that token's
    rounding against plain PyTorch's there (1.6 on a 2-core AMD EPYC, 2.1 on CI's machine), while every quantized
    linear of that model, fed the float64 model's activations, erred 0.5-0.95x plain PyTorch (layer 1's token by
    token: at most 1.5x). Measured, 40 models in each of the four cases (2-core AMD EPYC, AVX2): single-model
    ratio geometric mean 0.65-0.71, log sd 0.12-0.22, largest 1.24."""
    ratios = torch.tensor([_error_ratio(tmp_path / str(i), preset, qtype, check_types=i == 0) for i in range(4)])
    assert ratios.log().mean().exp() <= 2, ratios


@pytest.mark.parametrize("preset", ["tiny-e2b", "tiny-26b-a4b", "tiny-31b", "tiny-e4b"])
def test_config_from_metadata(tmp_path, preset):
    model = random_model(preset)
    write_gguf(model, tmp_path / "model.gguf", "F32")
    config = gemma4.Gemma4ForCausalLM.from_pretrained(tmp_path, gguf_file="model.gguf", progress=False).config
    # use_bidirectional_attention (vision tokens only) is not in the file; dtype is the load's
    want = dataclasses.replace(model.config, use_bidirectional_attention=None, dtype="float32")
    assert {f.name: getattr(config, f.name) for f in dataclasses.fields(config)} == \
        {f.name: getattr(want, f.name) for f in dataclasses.fields(want)}


def test_dtype_argument_casts_unquantized_weights(tmp_path):
    write_gguf(random_model("tiny-e2b"), tmp_path / "model.gguf", "Q8_0")
    loaded = _load(tmp_path, dtype=torch.bfloat16)
    assert loaded.model.embed_tokens.weight.dtype == torch.bfloat16
    assert loaded.model.layers[0].mlp.up_proj.scales.dtype == torch.float16  # GGUF's scales, never rounded


@pytest.mark.parametrize("key,value,match", [
    ("gemma4.attention.sliding_window_pattern", None, "missing"),
    ("gemma4.attention.key_length", None, "missing"),
    ("gemma4.attention.head_count_kv", [2, 1, 2], "3 entries for 10 layers"),
    ("gemma4.feed_forward_length", [96] * 9 + [7], "doubled"),
    ("gemma4.attention.value_length_swa", 16, "differs from key_length_swa"),
])
def test_bad_metadata_names_file_and_key(tmp_path, key, value, match):
    write_gguf(random_model("tiny-e2b"), tmp_path / "model.gguf", "F32", edit=lambda k, v: value if k == key else v)
    with pytest.raises(CheckpointError, match=match) as e:
        _load(tmp_path)
    assert e.value.key == key and e.value.source == str(tmp_path / "model.gguf")


@pytest.mark.parametrize("skip,key", [("blk.3.ffn_up.weight", "model.layers.3.mlp.up_proj.weight"),
                                      ("rope_freqs.weight", "rope_freqs.weight")])
def test_missing_tensor_names_it(tmp_path, skip, key):
    write_gguf(random_model("tiny-e2b"), tmp_path / "model.gguf", "Q8_0", skip={skip})
    with pytest.raises(CheckpointError, match="missing") as e:
        _load(tmp_path)
    assert e.value.key == key


def test_wrong_architecture_corrupt_file_and_refused_arguments(tmp_path):
    write_gguf(random_model("tiny-e2b"), tmp_path / "model.gguf", "F32")
    raw = (tmp_path / "model.gguf").read_bytes().replace(b"gemma4", b"gemma9", 1)  # general.architecture
    (tmp_path / "other.gguf").write_bytes(raw)
    with pytest.raises(CheckpointError, match="gemma9") as e:
        gemma4.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="other.gguf", progress=False)
    assert e.value.key == "general.architecture"
    (tmp_path / "cut.gguf").write_bytes(raw[:100])
    with pytest.raises(CheckpointError, match="cut.gguf"):
        gemma4.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="cut.gguf", progress=False)
    with pytest.raises(ValueError, match="cannot be combined with gguf_file"):
        _load(tmp_path, quantization_config=gemma4.QuantizationConfig())
