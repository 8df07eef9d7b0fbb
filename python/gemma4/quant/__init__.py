"""Weight-only quantization: packed formats, quantizers, quantized modules and gemma4.quantize."""
from . import formats
from .config import QuantizationConfig
from .modules import QuantExperts, QuantLinear
from .convert import quantize

__all__ = ["formats", "QuantizationConfig", "QuantLinear", "QuantExperts", "quantize"]
