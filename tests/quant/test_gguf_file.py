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


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
@pytest.mark.parametrize("preset", ["tiny-e2b", "tiny-26b-a4b"])
def test_q4_0_and_q8_0_stay_quantized(tmp_path, preset, qtype):
    """Linears and expert banks become QuantLinear / QuantExperts; the quantized model's error against the
    exact (float64) model of the file's weights is at most 2x that of plain PyTorch float32 on those weights."""
    model = random_model(preset)
    held = write_gguf(model, tmp_path / "model.gguf", qtype)
    loaded = _load(tmp_path)
    layer = loaded.model.layers[0]
    assert isinstance(layer.self_attn.q_proj, QuantLinear) and layer.self_attn.q_proj.bits == int(qtype[1])
    if preset == "tiny-26b-a4b":
        assert isinstance(layer.experts, QuantExperts) and isinstance(layer.router.proj, torch.nn.Linear)  # F32
    else:
        assert isinstance(layer.per_layer_projection, torch.nn.Linear)  # K = 16: the converter's F16 fallback
    # 16 prompts: on a random model the logits' error is a few rounding differences amplified through the layers,
    # and over 2 prompts its size swung with the seed. Its ratio to plain PyTorch's, 2 x 12 tokens: median 0.65-0.76
    # over 25-40 seeds, up to 1.8, and 2.3 on one CI seed (1056571804), where each quantized linear's own error
    # was 0.37x plain PyTorch's on average. At 16 x 12 tokens: median 0.66-0.71, up to 0.99.
    ids = torch.randint(0, model.config.vocab_size, (16, 12))
    fake = _reference(model, held)
    exact = _logits(copy.deepcopy(fake).double(), ids)
    assert (exact - _logits(model, ids)).abs().max() > 1e-3  # the test can fail: quantization changed the weights
    err = (_logits(loaded, ids) - exact).norm()
    assert err <= 2 * (_logits(fake, ids) - exact).norm() + 1e-9, err


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
