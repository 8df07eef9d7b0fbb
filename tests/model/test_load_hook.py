"""The per-module load hook (`load_hf_tensor` / `expected_hf_tensors` / `finish_loading`) and the
finiteness check at load.

The hook is exercised with two small stand-ins for a replaced module: one that receives the float
weight and keeps it (its model must give bit-identical logits), and a toy int8 linear whose
checkpoint names (`weight_int8`, `weight_scale`) are NOT a float state_dict.
"""
from __future__ import annotations

import json
import os
import re
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F

from gemma4.auto import AutoModelForCausalLM
from gemma4.checkpoint import SAFE_WEIGHTS_NAME, hook_modules, load_pretrained
from gemma4.errors import CheckpointError
from gemma4.modeling import Gemma4ForCausalLM
from gemma4.modeling.linear import torch_linear_only
from tests.oracle import make_hf_model, save_hf

PRESET = "tiny-e2b"
DOWN = re.compile(r"model\.layers\.\d+\.mlp\.down_proj$")


class KeepingLinear(nn.Module):
    """Receives its float weight through the hook, keeps it, and turns it into a parameter at the end."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.shape = tuple(linear.weight.shape)
        self.dtype = linear.weight.dtype
        self.received: dict[str, torch.Tensor] = {}
        self.finished = 0
        self.weight = None

    def load_hf_tensor(self, name: str, tensor: torch.Tensor) -> None:
        assert not self.finished, "finish_loading ran before the last tensor"
        self.received[name] = tensor

    def expected_hf_tensors(self):
        return {"weight": self.shape}

    def finish_loading(self) -> None:
        self.finished += 1
        self.weight = nn.Parameter(self.received["weight"].to(self.dtype), requires_grad=False)

    def forward(self, x):
        return F.linear(x, self.weight)


class Int8Linear(nn.Module):
    """Toy weight-only int8 linear: per-row scale, checkpoint keys weight_int8 [N,K] + weight_scale [N]."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        n, k = linear.weight.shape
        self.register_buffer("weight_int8", torch.empty(n, k, dtype=torch.int8, device=linear.weight.device))
        self.register_buffer("weight_scale", torch.empty(n, dtype=torch.float32, device=linear.weight.device))

    def load_hf_tensor(self, name: str, tensor: torch.Tensor) -> None:
        if name == "weight_int8" and tensor.dtype != torch.int8:
            raise ValueError(f"weight_int8 must be int8, got {tensor.dtype}")
        getattr(self, name).copy_(tensor)  # default state_dict names, so expected_hf_tensors is optional

    def forward(self, x):
        return F.linear(x, (self.weight_int8.float() * self.weight_scale[:, None]).to(x.dtype))


def _replace(model: nn.Module, pattern: re.Pattern, factory) -> list[str]:
    names = [name for name, _ in model.named_modules() if pattern.fullmatch(name)]
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, factory(model.get_submodule(name)))
    return names


def _quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = w.abs().amax(dim=1).clamp_min(1e-8) / 127  # [N]
    return torch.round(w / scale[:, None]).to(torch.int8), scale.float()


def _rewrite(directory, mutate) -> None:
    file = os.path.join(directory, SAFE_WEIGHTS_NAME)
    with safe_open(file, "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    mutate(tensors)
    save_file(tensors, file, metadata=metadata)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("hook")
    save_hf(make_hf_model(PRESET), path)
    return str(path)


@pytest.fixture()
def int8_checkpoint(checkpoint, tmp_path):
    """The checkpoint with every down_proj.weight replaced by weight_int8 + weight_scale."""
    dst = str(tmp_path / "int8")
    shutil.copytree(checkpoint, dst)

    def mutate(tensors):
        for key in [k for k in tensors if k.endswith("mlp.down_proj.weight")]:
            q, s = _quantize(tensors.pop(key))
            base = key.removesuffix("weight")
            tensors[base + "weight_int8"], tensors[base + "weight_scale"] = q, s

    _rewrite(dst, mutate)
    return dst


def _logits(model, ids):
    # F.linear everywhere: the hooked modules call F.linear, so the plain model must too for the logits
    # to be bit-identical (gemma4::linear's prefill GEMM sums in another order than MKL's sgemm)
    with torch.no_grad(), torch_linear_only():
        return model(input_ids=ids).logits


def test_hook_receives_stored_tensors_and_matches_default_load(checkpoint):
    ids = torch.randint(0, 512, (2, 19))
    plain = load_pretrained(Gemma4ForCausalLM, checkpoint, progress=False)
    replaced: list[str] = []
    model = load_pretrained(Gemma4ForCausalLM, checkpoint, progress=False,
                            prepare_model=lambda m: replaced.extend(_replace(m, DOWN, KeepingLinear)))
    assert len(replaced) == 10 and list(hook_modules(model)) == replaced
    for name in replaced:
        module = model.get_submodule(name)
        assert module.finished == 1 and set(module.received) == {"weight"}
        got = module.received["weight"]
        assert got.device.type == "cpu" and got.dtype == torch.float32  # as stored in the file
        assert torch.equal(got, plain.get_submodule(name).weight)
    torch.testing.assert_close(_logits(model, ids), _logits(plain, ids), rtol=0, atol=0)


def test_hook_module_with_its_own_checkpoint_names(int8_checkpoint, checkpoint):
    """A quantized-style module loads keys a float model does not have, and the rest loads as usual."""
    ids = torch.randint(0, 512, (1, 23))
    model = load_pretrained(Gemma4ForCausalLM, int8_checkpoint, progress=False,
                            prepare_model=lambda m: _replace(m, DOWN, Int8Linear))
    plain = load_pretrained(Gemma4ForCausalLM, checkpoint, progress=False)
    with safe_open(os.path.join(int8_checkpoint, SAFE_WEIGHTS_NAME), "pt") as f:
        assert torch.equal(model.model.layers[3].mlp.down_proj.weight_int8,
                           f.get_tensor("model.layers.3.mlp.down_proj.weight_int8"))
    assert torch.equal(model.model.layers[3].mlp.up_proj.weight, plain.model.layers[3].mlp.up_proj.weight)
    # the int8 model is the float model with rounded down_proj weights: close, not equal
    for layer in plain.model.layers:
        q, s = _quantize(layer.mlp.down_proj.weight.detach())
        layer.mlp.down_proj.weight.data = q.float() * s[:, None]
    torch.testing.assert_close(_logits(model, ids), _logits(plain, ids), rtol=1e-5, atol=1e-5)
    # without the replacement the same checkpoint is refused, naming the foreign keys
    with pytest.raises(CheckpointError, match=r"do(es)? not have.*weight_int8"):
        load_pretrained(Gemma4ForCausalLM, int8_checkpoint, progress=False)


def test_hook_errors_name_file_and_tensor(int8_checkpoint):
    file = os.path.join(int8_checkpoint, SAFE_WEIGHTS_NAME)
    _rewrite(int8_checkpoint, lambda t: t.update({"model.layers.2.mlp.down_proj.weight_int8":
                                                   t["model.layers.2.mlp.down_proj.weight_int8"].to(torch.int16)}))
    with pytest.raises(CheckpointError, match=r"Int8Linear.load_hf_tensor\('weight_int8'\) refused it: .*int16") as e:
        load_pretrained(Gemma4ForCausalLM, int8_checkpoint, progress=False,
                        prepare_model=lambda m: _replace(m, DOWN, Int8Linear))
    assert e.value.source == file and e.value.key == "model.layers.2.mlp.down_proj.weight_int8"

    _rewrite(int8_checkpoint, lambda t: t.pop("model.layers.2.mlp.down_proj.weight_scale"))
    with pytest.raises(CheckpointError, match="missing") as e:
        load_pretrained(Gemma4ForCausalLM, int8_checkpoint, progress=False,
                        prepare_model=lambda m: _replace(m, DOWN, Int8Linear))
    assert e.value.key == "model.layers.2.mlp.down_proj.weight_scale"

    _rewrite(int8_checkpoint, lambda t: t.update({"model.layers.2.mlp.down_proj.weight_scale": torch.rand(5),
                                                   "model.layers.4.mlp.down_proj.bias": torch.rand(64)}))
    with pytest.raises(CheckpointError, match=r"Int8Linear 'model.layers.2.mlp.down_proj' expects \[64\]") as e:
        load_pretrained(Gemma4ForCausalLM, int8_checkpoint, progress=False,
                        prepare_model=lambda m: _replace(m, DOWN, Int8Linear))
    _rewrite(int8_checkpoint, lambda t: t.update({"model.layers.2.mlp.down_proj.weight_scale": torch.rand(64)}))
    with pytest.raises(CheckpointError, match="does not have") as e:
        load_pretrained(Gemma4ForCausalLM, int8_checkpoint, progress=False,
                        prepare_model=lambda m: _replace(m, DOWN, Int8Linear))
    assert e.value.key == "model.layers.4.mlp.down_proj.bias"


def test_finish_loading_error(checkpoint):
    class Failing(KeepingLinear):
        def finish_loading(self):
            raise RuntimeError("cannot repack")

    with pytest.raises(CheckpointError, match=r"Failing.finish_loading\(\) of 'model.layers.0.mlp.down_proj' failed"):
        load_pretrained(Gemma4ForCausalLM, checkpoint, progress=False,
                        prepare_model=lambda m: _replace(m, re.compile(r"model\.layers\.0\.mlp\.down_proj"), Failing))


def test_only_the_outermost_hook_module_is_called(checkpoint):
    class Outer(nn.Module):  # a whole MLP that loads itself; its children (which hook too) are not called
        def __init__(self, mlp):
            super().__init__()
            self.inner = mlp
            self.inner.down_proj = KeepingLinear(mlp.down_proj)
            self.names: list[str] = []

        def expected_hf_tensors(self):
            return {"gate_proj.weight": None, "up_proj.weight": None, "down_proj.weight": None}

        def load_hf_tensor(self, name, tensor):
            self.names.append(name)

    model = load_pretrained(Gemma4ForCausalLM, checkpoint, progress=False,
                            prepare_model=lambda m: _replace(m, re.compile(r"model\.layers\.1\.mlp"), Outer))
    assert list(hook_modules(model)) == ["model.layers.1.mlp"]
    assert sorted(model.model.layers[1].mlp.names) == ["down_proj.weight", "gate_proj.weight", "up_proj.weight"]
    assert model.model.layers[1].mlp.inner.down_proj.received == {}


def test_quantization_config_left_to_the_preparer(checkpoint, tmp_path):
    dst = tmp_path / "q"
    shutil.copytree(checkpoint, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "toy"}
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="quant_method 'toy'"):
        load_pretrained(Gemma4ForCausalLM, dst, progress=False)
    seen = []
    AutoModelForCausalLM.from_pretrained(dst, progress=False, prepare_model=lambda m: seen.append(m.device.type))
    assert seen == ["meta"]


# ------------------------------------------------------------------------------------- finiteness
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])  # read in place / through a temporary tensor
def test_non_finite_weight_refused(checkpoint, tmp_path, bad, dtype):
    dst = str(tmp_path / "bad")
    shutil.copytree(checkpoint, dst)
    key = "model.layers.5.self_attn.q_proj.weight"

    def poison(tensors):
        t = tensors[key].clone()
        t.view(-1)[torch.randint(0, t.numel(), (1,))] = bad
        tensors[key] = t

    _rewrite(dst, poison)
    with pytest.raises(CheckpointError, match="non-finite values") as e:
        load_pretrained(Gemma4ForCausalLM, dst, dtype=dtype, progress=False)
    assert e.value.source == os.path.join(dst, SAFE_WEIGHTS_NAME) and e.value.key == key
