"""gemma4: Gemma 4 text models on native operators, with Hugging Face interfaces."""
from . import ops
from ._native import build_info

__version__ = "0.1.0"
__all__ = ["ops", "build_info"]
