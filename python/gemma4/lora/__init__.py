"""LoRA adapters in PEFT's format: LoraConfig, the LoRA layers and the model-level AdapterMixin.

See docs/lora.md. `gemma4.LoraConfig` is this package's LoraConfig; the model methods
(load_adapter, add_adapter, save_adapter, set_adapter, merge_and_unload, ...) come from AdapterMixin.
"""
from .adapters import AdapterMixin
from .config import LoraConfig
from .layers import LoraLayer, LoraLinear, LoraParamWrapper, ModulesToSaveWrapper

__all__ = ["AdapterMixin", "LoraConfig", "LoraLayer", "LoraLinear", "LoraParamWrapper", "ModulesToSaveWrapper"]
