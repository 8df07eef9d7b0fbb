"""Shared pieces of the LoRA tests: the transformers 5.17 + peft 0.21 oracle on tiny random models.

Each preset's transformers model is built and saved once per test session; every test gets fresh copies
(PEFT edits the model it wraps in place, ours changes under load_adapter).
"""
from __future__ import annotations

import atexit
import copy
import functools
import math
import shutil
import tempfile
import warnings

import torch

import gemma4
from tests.oracle import make_hf_model, save_hf

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import peft
    from peft import PeftModel, get_peft_model

assert peft.__version__ == "0.21.0", f"the LoRA oracle is peft 0.21.0, found {peft.__version__}"

PRESETS = ("tiny-e2b", "tiny-e4b", "tiny-31b", "tiny-26b-a4b")
EXPERTS = ["experts.gate_up_proj", "experts.down_proj"]
PEFT_PREFIX = "base_model.model."
_TMP = tempfile.mkdtemp(prefix="gemma4-lora-tests-")
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)


def tmpdir(name: str) -> str:
    return tempfile.mkdtemp(prefix=name + "-", dir=_TMP)


@functools.lru_cache(maxsize=None)
def _base(preset: str, layout: str = "causal"):
    g = torch.Generator().manual_seed(1234)
    hf = make_hf_model(preset, torch.float32, generator=g)
    path = tmpdir(f"{preset}-{layout}")
    save_hf(hf, path, layout=layout)
    return hf, path


def hf_model(preset: str):
    """A fresh copy of the preset's transformers model (float32, eval)."""
    return copy.deepcopy(_base(preset)[0])


def base_path(preset: str, layout: str = "causal") -> str:
    return _base(preset, layout)[1]


def our_model(preset: str, dtype=torch.float32, layout: str = "causal"):
    return gemma4.AutoModelForCausalLM.from_pretrained(base_path(preset, layout), dtype=dtype, progress=False)


def ids_for(preset: str, batch: int = 2, seq: int = 11, seed: int = 0) -> torch.Tensor:
    vocab = _base(preset)[0].config.vocab_size
    ids = torch.randint(3, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))
    ids[:, 0] = 2
    return ids


@torch.no_grad()
def randomize_adapter_(named_parameters, scaling_of=None, generator: torch.Generator | None = None,
                       strength: float = 0.3) -> None:
    """Give LoRA factors and modules_to_save copies non-zero random values.

    A ~ N(0, 1/in); B ~ N(0, (strength / (scaling * sqrt(r)))^2): the update scaling * B @ A then has
    entries of about strength / sqrt(in), i.e. `strength` times a base weight's -- visible in the logits,
    not overwhelming. modules_to_save copies (norm weights) are multiplied by uniform(0.7, 1.3).
    """
    for name, p in named_parameters:
        if ".lora_A." in name:
            p.copy_(torch.randn(p.shape, generator=generator) * p.shape[1] ** -0.5)
        elif ".lora_B." in name:
            s, r = scaling_of(name) if scaling_of else (1.0, p.shape[1])
            p.copy_(torch.randn(p.shape, generator=generator) * strength / (s * math.sqrt(r)))
        elif ".modules_to_save." in name:
            p.mul_(torch.rand(p.shape, generator=generator) * 0.6 + 0.7)


def peft_scaling_lookup(model):
    """name of a lora_B parameter -> (LoRA scaling, rank), read from PEFT's (or our) layers."""
    scalings = {}
    for mname, m in model.named_modules():
        if isinstance(getattr(m, "scaling", None), dict) and hasattr(m, "lora_B"):
            for adapter, s in m.scaling.items():
                scalings[f"{mname}.lora_B.{adapter}.weight"] = (s, m.r[adapter])
    return lambda name: scalings[name]


def make_peft_adapter(preset: str, config_kwargs: dict, seed: int = 0, adapter_name: str = "default"):
    """PEFT's LoRA on a fresh transformers model with random non-zero factors; returns the PeftModel."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = get_peft_model(hf_model(preset), peft.LoraConfig(**config_kwargs), adapter_name=adapter_name)
    randomize_adapter_(pm.named_parameters(), peft_scaling_lookup(pm), torch.Generator().manual_seed(seed))
    return pm.eval()


def save_peft(pm, name: str) -> str:
    path = tmpdir(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm.save_pretrained(path)
    return path


def peft_load(preset: str, path: str, adapter_name: str = "default", is_trainable: bool = False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PeftModel.from_pretrained(hf_model(preset), path, adapter_name=adapter_name,
                                         is_trainable=is_trainable).eval()


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want|"""
    return ((got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-30)).item()


def assert_close_rel(got, want, tol: float = 1e-4, what: str = "") -> None:
    err = rel_err(got, want)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.0e}"
