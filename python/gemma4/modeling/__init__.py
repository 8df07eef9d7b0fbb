"""The Gemma 4 text model, module by module (names mirror transformers')."""
from .model import CausalLMOutput, Gemma4ForCausalLM, Gemma4TextModel

__all__ = ["Gemma4ForCausalLM", "Gemma4TextModel", "CausalLMOutput"]
