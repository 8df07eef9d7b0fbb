"""transformers-style entry points: AutoConfig and AutoModelForCausalLM (local directories only).

    config = AutoConfig.from_pretrained("path/to/gemma-4-E2B-it")
    model = AutoModelForCausalLM.from_pretrained("path/to/gemma-4-E2B-it", dtype=torch.bfloat16, device="cuda")
    model = AutoModelForCausalLM.from_config(get_preset("tiny-e2b"))

Every Gemma 4 checkpoint (Gemma4ForConditionalGeneration or Gemma4ForCausalLM, nested or flat
config) loads into our text-only Gemma4ForCausalLM; vision/audio towers are skipped.
"""
from __future__ import annotations

import os
from typing import Any

from .config import Gemma4Config
from .devices import parse_device

__all__ = ["AutoConfig", "AutoModelForCausalLM"]

# transformers from_pretrained arguments that change nothing here (local safetensors, our kernels).
_IGNORED_KWARGS = frozenset({"trust_remote_code", "low_cpu_mem_usage", "local_files_only", "attn_implementation",
                             "use_safetensors", "_fast_init", "offload_state_dict", "revision"})


def _config_from(config: Any) -> Gemma4Config:
    if isinstance(config, Gemma4Config):
        return config
    if isinstance(config, dict):
        return Gemma4Config.from_dict(config)
    if isinstance(config, (str, os.PathLike)):
        return Gemma4Config.from_pretrained(config)
    if hasattr(config, "to_dict"):  # a transformers Gemma4TextConfig / Gemma4Config
        return Gemma4Config.from_dict(config.to_dict(), source=f"{type(config).__name__} object")
    raise TypeError(f"expected a Gemma4Config, a config dict or a path, got {type(config).__name__}")


class AutoConfig:
    """`AutoConfig.from_pretrained(path)` -> Gemma4Config (path: directory or config.json)."""

    def __init__(self):
        raise TypeError("use AutoConfig.from_pretrained(path)")

    @staticmethod
    def from_pretrained(path: str | os.PathLike, **overrides: Any) -> Gemma4Config:
        return Gemma4Config.from_pretrained(path, **overrides)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Gemma4Config:
        return Gemma4Config.from_dict(d)


def _from_gguf(path, gguf_file, dtype, torch_dtype, device, progress, overrides, **refused):
    """from_pretrained(path, gguf_file=...): the GGUF file carries the config and decides the quantization."""
    from gemma4.hf_format.gguf_tensors import gguf_path, load_gguf  # noqa: PLC0415
    from gemma4.modeling import Gemma4ForCausalLM  # noqa: PLC0415

    given = sorted(k for k, v in refused.items() if v is not None)
    if given:
        raise ValueError(f"from_pretrained: {', '.join(given)} cannot be combined with gguf_file (the GGUF file holds "
                         "the config, and its tensor types decide what stays quantized)")
    return load_gguf(Gemma4ForCausalLM, gguf_path(path, gguf_file), dtype=dtype, torch_dtype=torch_dtype,
                     device=device, progress=progress, overrides=overrides)


class AutoModelForCausalLM:
    """Builds gemma4.modeling.Gemma4ForCausalLM from a checkpoint directory or a config."""

    def __init__(self):
        raise TypeError("use AutoModelForCausalLM.from_pretrained(path) or .from_config(config)")

    @staticmethod
    def from_pretrained(path: str | os.PathLike, *, dtype: Any = None, torch_dtype: Any = None, device: Any = None,
                        device_map: Any = None, progress: bool = True, config: Any = None,
                        prepare_model: Any = None, quantization_config: Any = None, gguf_file: Any = None,
                        **kwargs: Any):
        """Load a local Hugging Face-layout Gemma 4 checkpoint.

        dtype / torch_dtype: torch dtype, its name, or "auto"/None (= config.json's dtype, else the
            checkpoint's; transformers 5.17's default). device: "cpu" (default), "cuda", "cuda:1",
            "auto"; `device_map` is accepted as a synonym when it names one device.
        Other keyword arguments that are Gemma4Config fields override config.json values
        (e.g. `final_logit_softcapping=None`); transformers-only switches such as
        `trust_remote_code` or `attn_implementation` are accepted and ignored.
        prepare_model: fn(model) run on the meta-device model before loading, e.g. to swap in modules
        that load their own tensors (the load hook, docs/checkpoints.md).
        quantization_config: a gemma4.QuantizationConfig to quantize while loading (docs/quantization.md);
        a compressed-tensors checkpoint is read quantized without it.
        gguf_file: a llama.cpp GGUF file in `path` (or a path), as transformers' argument: config, weights
        (Q4_0 / Q8_0 kept quantized, other types dequantized) from the file alone (docs/quantization.md).
        """
        from gemma4.modeling import Gemma4ForCausalLM  # noqa: PLC0415

        if device_map is not None:
            if isinstance(device_map, dict):
                raise ValueError("device_map as a dict (splitting the model over devices) is not supported; pass "
                                 "one device, e.g. device='cuda'")
            if device is not None and parse_device(device) != parse_device(device_map, "device_map"):
                raise ValueError(f"device={device!r} and device_map={device_map!r} disagree")
            device = device if device is not None else device_map
        device = parse_device(device, "device" if device_map is None else "device_map")
        if kwargs.pop("use_safetensors", None) is False:
            raise ValueError("gemma4 loads safetensors only (use_safetensors=False would mean unpickling)")
        overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in Gemma4Config.__dataclass_fields__}
        unknown = sorted(k for k in kwargs if k not in _IGNORED_KWARGS)
        if unknown:
            raise TypeError(f"from_pretrained got unexpected keyword argument(s): {', '.join(unknown)}")
        if gguf_file is not None:
            return _from_gguf(path, gguf_file, dtype, torch_dtype, device, progress, overrides, config=config,
                              prepare_model=prepare_model, quantization_config=quantization_config)
        if config is not None:
            config = _config_from(config)
        if overrides:
            import dataclasses  # noqa: PLC0415

            base = config if config is not None else Gemma4Config.from_pretrained(path)
            config = dataclasses.replace(base, **overrides, source=os.fspath(path))
        from gemma4.quant.loading import load_pretrained_quantized  # noqa: PLC0415

        return load_pretrained_quantized(Gemma4ForCausalLM, path, quantization_config, prepare_model, dtype=dtype,
                                         torch_dtype=torch_dtype, device=device, progress=progress, config=config)

    @staticmethod
    def from_config(config: Any, *, dtype: Any = None, torch_dtype: Any = None, device: Any = None):
        """A freshly initialised model (random weights) from a Gemma4Config, config dict, path or preset name."""
        from gemma4.modeling import Gemma4ForCausalLM  # noqa: PLC0415

        if isinstance(config, str) and not os.path.exists(config):
            from gemma4.presets import PRESETS, get_preset  # noqa: PLC0415

            if config in PRESETS:
                config = get_preset(config)
        config = _config_from(config)
        # The loader's rules, so both entry points accept and refuse the same dtype arguments.
        from gemma4.checkpoint import resolve_dtype  # noqa: PLC0415

        dtype = resolve_dtype(dtype, torch_dtype, config)  # nothing given: the default dtype, built in anyway
        device = None if device is None else parse_device(device)
        return Gemma4ForCausalLM(config).to(device=device, dtype=dtype)

