"""GGUF files whose Linear weights are Q4_K, Q5_K and Q6_K (mixed with F16 / BF16), end to end through
from_pretrained(dir, gguf_file=...).

The `gguf` package cannot quantize to K-quants, so the file holds random RAW blocks: every byte pattern of
a K-quant block is a valid block once its fp16 d / dmin fields are finite, and those are set to random
finite values that give weights of ordinary spread. The file is written as tests/quant/gguf_support.py
writes the others (llama.cpp's names and metadata, a small random config). The reference weights are the
per-weight dequantization of test_gguf_blocks (written from llama.cpp's block definitions), so a loader that
read the sub-block scales, mins, nibbles or high bits in another order fails (a) bit for bit and (b) in the
logits.

With llama-cpp-python installed (local; CI skips), llama.cpp reads the same file: its own row dequantizers
(libggml-base) give our loaded weights bit for bit, its logits on an F32 file of those weights equal ours
tightly, and its logits on the K-quant file itself agree within the rounding of its activations.
"""
import ctypes
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import gemma4
from gemma4.quant import QuantExperts, QuantLinear
from gemma4.quant.gguf_blocks import BLOCK

gguf = pytest.importorskip("gguf")  # before gguf_support, which imports it

from tests.quant.gguf_support import (  # noqa: E402
    add_metadata, gguf_name, llamacpp_logits, metadata, random_model, rope_freqs)
from tests.quant.test_gguf_blocks import FP16_FIELDS, reference  # noqa: E402

S, F = "sliding_attention", "full_attention"
CONFIGS = {
    # tiny-e2b's features (PLE, KV sharing, double-wide MLP on the shared layers) with every Linear's K a
    # multiple of 256 (a K-quant super-block) except the PLE projection's (K = 16: F16, as the converter
    # falls back): hidden 256, 8 heads of 32 (sliding) / 64 (full), MLP 256 (512 on the KV-shared layers 2-3)
    "dense": dataclasses.replace(gemma4.get_preset("tiny-e2b"), hidden_size=256, intermediate_size=256,
                                 num_hidden_layers=4, num_attention_heads=8, layer_types=[S, F, S, F],
                                 num_kv_shared_layers=2),
    # tiny-26b-a4b's MoE block with 3-D K-quant expert banks ([E, N, K], K = 256): two layers, 2 experts, top-1
    "moe": dataclasses.replace(gemma4.get_preset("tiny-26b-a4b"), hidden_size=256, intermediate_size=256,
                               num_hidden_layers=2, num_attention_heads=8, layer_types=[S, F], num_experts=2,
                               top_k_experts=1, moe_intermediate_size=256),
}
CONFIG = CONFIGS["dense"]  # the one llama.cpp runs
# Linear weights in file order take these types in turn (dense: 9 Linears a layer, so each projection gets
# 4 different types over the 4 layers), expert banks the three K-quants in turn; the token embedding
# (and so the tied lm_head) is Q6_K, as in llama.cpp's K-quant files; the router stays F32 (the converter's)
CYCLE = ["Q4_K", "Q5_K", "Q6_K", "BF16", "F16"]
# std of each fp16 field (d, dmin), for weights of spread ~0.05:
# Q4_K/Q5_K w = d * sc * q - dmin * m (sc, m < 64; q < 16, Q5_K q < 32), Q6_K w = d * scale * (q - 32)
FIELD_STD = {"Q4_K": (2e-4, 1.5e-3), "Q5_K": (1e-4, 1.5e-3), "Q6_K": (4e-5,)}
TOKENS = 16


def _kquant_bytes(qtype: str, shape) -> np.ndarray:
    """Random blocks of `qtype` for a [..., k] weight as GGUF lays them out: uint8 [..., k / 256 * block
    bytes]. Every level/scale bit pattern occurs; d, dmin are N(0, std) in fp16 (finite, some subnormal)."""
    per, size = BLOCK[qtype]
    blocks = int(np.prod(shape)) // per
    raw = torch.randint(0, 256, (blocks, size), dtype=torch.uint8)
    for off, std in zip(FP16_FIELDS[qtype], FIELD_STD[qtype]):
        raw[:, off: off + 2] = (torch.randn(blocks) * std).to(torch.float16).view(torch.uint8).reshape(blocks, 2)
    return raw.reshape(*shape[:-1], -1).numpy()


def _types(model) -> dict[str, str]:
    """{our key: GGUF type} of the embeddings, Linear weights (but the router's) and expert banks; the
    rest (norms, scales, layer_scalar, the router) is F32."""
    state = model.state_dict()
    linears = [f"{name}.weight" for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and name != "lm_head" and ".router." not in name]  # tied lm_head
    banks = [k for k in state if k.endswith(("experts.gate_up_proj", "experts.down_proj"))]
    types = {"model.embed_tokens.weight": "Q6_K"}
    if "model.embed_tokens_per_layer.weight" in state:
        types["model.embed_tokens_per_layer.weight"] = "BF16"  # K = layers x 16, not whole super-blocks
    cycle = CYCLE[3:] if banks else CYCLE  # MoE: K-quant banks, F16 / BF16 Linears (the slow reference's time)
    for i, key in enumerate(k for k in state if k in linears):
        qtype = cycle[i % len(cycle)]
        types[key] = qtype if qtype in ("F16", "BF16") or model.get_parameter(key).shape[-1] % 256 == 0 else "F16"
    for i, key in enumerate(banks):  # [E, N, K], K = 256
        types[key] = CYCLE[i % 3]
    return types


def _write(path: Path, config, tensors: dict[str, tuple[str, np.ndarray]]) -> None:
    """A GGUF file of `config` holding {our key: (type, data)}: data float32 values for F32, else the
    tensor's bytes, uint8 [..., row bytes]."""
    w = gguf.GGUFWriter(str(path), "gemma4")
    # merges: llama.cpp's loader wants the key for a gemma4 vocabulary (the tests feed it token ids)
    add_metadata(w, {**metadata(config), "tokenizer.ggml.merges": ["t 4"]})
    w.add_tensor("rope_freqs.weight", rope_freqs(config))
    for key, (qtype, data) in tensors.items():
        w.add_tensor(gguf_name(key), data, raw_dtype=None if qtype == "F32" else gguf.GGMLQuantizationType[qtype])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_kquant_gguf(path: Path, config=CONFIG) -> dict[str, tuple[str, np.ndarray]]:
    """A random model of `config` written to `path`, K-quant weights as random blocks, F16 / BF16 weights
    rounded from the model's; returns what _write wrote, {our key: (type, data)}."""
    model = random_model(config)
    types = _types(model)
    tensors = {}
    for key, t in model.state_dict().items():
        if key == "lm_head.weight":  # tied: no output.weight in the file
            continue
        qtype = types.get(key, "F32")
        if qtype == "F32":
            data = t.float().numpy()
        elif qtype in ("F16", "BF16"):
            data = t.to(torch.float16 if qtype == "F16" else torch.bfloat16).view(torch.uint8).numpy()
        else:
            data = _kquant_bytes(qtype, t.shape)
        tensors[key] = (qtype, data)
    _write(path, config, tensors)
    return tensors


def _held(tensors) -> dict[str, torch.Tensor]:
    """{our key: the float32 weight the file holds}, dequantized by test_gguf_blocks' per-weight reference."""
    held = {}
    for key, (qtype, data) in tensors.items():
        if qtype == "F32":
            held[key] = torch.from_numpy(data.copy())
        else:
            per, size = BLOCK[qtype]
            n, k = int(np.prod(data.shape[:-1])), data.shape[-1] // size * per  # [..., row bytes] -> [..., k]
            held[key] = torch.from_numpy(reference(data.reshape(-1), qtype, n, k)).view(*data.shape[:-1], k)
    return held


def _load(path: Path):
    return gemma4.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, progress=False)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_kquant_file_loads_the_weights_the_blocks_define(tmp_path, kind):
    config = CONFIGS[kind]
    path = tmp_path / "model.gguf"
    tensors = write_kquant_gguf(path, config)
    assert {t for t, _ in tensors.values()} == {"Q4_K", "Q5_K", "Q6_K", "F16", "BF16", "F32"}
    if kind == "moe":
        assert {tensors[f"model.layers.{i}.experts.{w}"][0] for i in range(2) for w in ("gate_up_proj", "down_proj")} \
            >= {"Q4_K", "Q5_K", "Q6_K"}
    held = _held(tensors)
    loaded = _load(path)
    # (a) every tensor equals the per-weight dequantization of its blocks, bit for bit
    state = loaded.state_dict()
    for key, want in held.items():
        assert state[key].dtype == torch.float32 and torch.equal(state[key], want), (key, tensors[key][0])
    assert torch.equal(state["lm_head.weight"], held["model.embed_tokens.weight"])  # tied
    assert not any(isinstance(m, (QuantLinear, QuantExperts)) for m in loaded.modules())  # K-quants: float
    # (b) the logits equal those of our model built from the reference weights
    ref = gemma4.Gemma4ForCausalLM(config).eval()
    ref.load_state_dict({**ref.state_dict(), **held})
    ids = torch.randint(0, config.vocab_size, (2, TOKENS))
    want = _logits(ref, ids)
    torch.testing.assert_close(_logits(loaded, ids), want, rtol=1e-6, atol=1e-6)
    # the comparison can fail: one Q4_K weight with two of the 12 packed scale bytes of each block swapped (a
    # loader reading sub-block scales in another order) moves the logits far beyond the tolerance
    key = next(k for k, (t, _) in tensors.items() if t == "Q4_K")
    swapped = tensors[key][1].reshape(-1, 144).copy()
    swapped[:, [4, 5]] = swapped[:, [5, 4]]
    ref.load_state_dict({**ref.state_dict(), **_held({key: ("Q4_K", swapped.reshape(tensors[key][1].shape))})})
    assert (_logits(ref, ids) - want).abs().max() > 1e-3


# --------------------------------------------------------------------------------------------------
# llama.cpp on the same file (local: needs llama-cpp-python; CI skips)
# --------------------------------------------------------------------------------------------------

# ggml's exported row converters: void f(const void * blocks, float * out, int64_t n_weights)
GGML_TO_FLOAT = {"Q4_K": "dequantize_row_q4_K", "Q5_K": "dequantize_row_q5_K", "Q6_K": "dequantize_row_q6_K",
                 "F16": "ggml_fp16_to_fp32_row", "BF16": "ggml_bf16_to_fp32_row"}
# max |ours - llama.cpp| / max |logit| on the F32 file of the loaded weights: (first position, any position),
# test_gguf_llamacpp's f32 bounds (measured here over 12 seeds: up to 3e-4 and 3.5e-3; 72 seeds pass)
F32_BOUNDS = (2e-3, 3e-2)
# ... on the K-quant file: (first position, median position). llama.cpp's CPU backend rounds each matmul's
# activations to the weight's dot type (Q8_K, 8 bits per 256, for K-quant weights; fp16 / bf16 for F16 /
# BF16), ours multiply float32 activations. Measured over 100 seeds: first position up to 0.11 (one seed;
# the rest up to 5e-2), median up to 6.5e-2. Our model with those roundings emulated moves from ours by as much
# (0.11 on that seed), and 1e-4 relative noise on its activations before the rounding moves it by ~1e-2:
# the gap is the rounding, amplified by the random net. The weights themselves are checked bit for bit.
KQUANT_BOUNDS = (0.25, 0.15)


def _ggml():
    """llama-cpp-python's libggml-base (the row dequantizers), or a skip."""
    llama_cpp = pytest.importorskip("llama_cpp")
    libs = sorted((Path(llama_cpp.__file__).parent / "lib").glob("*ggml-base*"))
    if not libs:
        pytest.skip("llama-cpp-python has no libggml-base next to it")
    return ctypes.CDLL(str(libs[0]))


def test_llamacpp_reads_the_same_kquant_file(tmp_path):
    lib = _ggml()
    path = tmp_path / "model.gguf"
    tensors = write_kquant_gguf(path)
    loaded = _load(path)
    state = loaded.state_dict()
    for key, (qtype, data) in tensors.items():  # llama.cpp's dequantization equals our loaded weights
        if qtype == "F32":
            continue
        fn = getattr(lib, GGML_TO_FLOAT[qtype])
        fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64], None
        raw = np.ascontiguousarray(data)
        out = np.empty(state[key].numel(), np.float32)
        fn(raw.ctypes.data, out.ctypes.data, out.size)
        assert torch.equal(torch.from_numpy(out).view(state[key].shape), state[key]), (key, qtype)
    ids = [CONFIG.bos_token_id] + torch.randint(4, CONFIG.vocab_size, (TOKENS - 1,)).tolist()
    ours = _logits(loaded, torch.tensor([ids]))[0].double()
    scale = ours.abs().max()
    # the same weights in an F32 file: llama.cpp runs the model we run
    _write(tmp_path / "f32.gguf", CONFIG, {k: ("F32", v.numpy()) for k, v in state.items() if k != "lm_head.weight"})
    err = (ours - llamacpp_logits(tmp_path / "f32.gguf", ids)).abs().amax(-1) / scale
    assert err[0] < F32_BOUNDS[0] and err.max() < F32_BOUNDS[1], err
    # the K-quant file, llama.cpp's quantized matmuls
    err = (ours - llamacpp_logits(path, ids)).abs().amax(-1) / scale
    print(f"K-quant file, llama.cpp vs ours: first token {err[0]:.2e}, median {err.median():.2e}, max {err.max():.2e}")
    assert err[0] < KQUANT_BOUNDS[0] and err.median() < KQUANT_BOUNDS[1], err
