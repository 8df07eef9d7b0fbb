"""The embedded default model: a tiny Gemma 4 trained on Jane Austen's novels (see docs/default_model.md).

Files beside this module, in the Hugging Face layout (loadable by gemma4 and by transformers 5.17):
config.json, generation_config.json, model.safetensors (bfloat16, loaded as float32 by default),
tokenizer.json, tokenizer_config.json, chat_template.jinja, training_summary.json. They are
written by scripts/train_default_model.py.

    import gemma4
    model = gemma4.AutoModelForCausalLM.from_pretrained(gemma4.default_model_path())
    tok = gemma4.AutoTokenizer.from_pretrained(gemma4.default_model_path())
"""
from __future__ import annotations

import os

__all__ = ["default_model_path", "DEFAULT_MODEL_NAME"]

DEFAULT_MODEL_NAME = "default"  # what the command line's --model accepts for this folder


def default_model_path() -> str:
    """The folder holding the default model's checkpoint and tokenizer (inside the installed package)."""
    return os.path.dirname(os.path.abspath(__file__))
