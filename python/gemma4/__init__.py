"""gemma4: Gemma 4 text models on native operators, with Hugging Face interfaces.

Names load on first use, so `from gemma4 import AutoTokenizer` works without the compiled
operators; anything that runs the model loads them (and checks the build) first.
"""
from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "AutoConfig": "gemma4.auto",
    "AutoModelForCausalLM": "gemma4.auto",
    "Gemma4Config": "gemma4.config",
    "LayerSpec": "gemma4.config",
    "Gemma4ForCausalLM": "gemma4.modeling",
    "CausalLMOutput": "gemma4.modeling",
    "LoraConfig": "gemma4.lora",
    "QuantizationConfig": "gemma4.quant",
    "quantize": "gemma4.quant",
    "PRESETS": "gemma4.presets",
    "get_preset": "gemma4.presets",
    "AutoTokenizer": "gemma4.tokenization",
    "PreTrainedTokenizerFast": "gemma4.tokenization",
    "BatchEncoding": "gemma4.tokenization",
    "GEMMA4_CHAT_TEMPLATE": "gemma4.tokenization",
    "default_model_path": "gemma4.default_model",
    "GenerationConfig": "gemma4.generation",
    "TextStreamer": "gemma4.generation",
    "TextIteratorStreamer": "gemma4.generation",
    "Gemma4Cache": "gemma4.cache",
    "ConfigError": "gemma4.errors",
    "CheckpointError": "gemma4.errors",
    "ArgumentError": "gemma4.errors",
    "build_info": "gemma4._native",
    "ops": "gemma4.ops",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gemma4' has no attribute {name!r}")
    value = import_module(module)
    if name != "ops":
        value = getattr(value, name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
