"""gemma4.AutoTokenizer: Hugging Face-style tokenizer over `tokenizers`, chat templates with jinja2.

The implementation lives in gemma4.tokenization; this module re-exports it. See docs/tokenizer.md.
"""
from .chat_templates import GEMMA4_CHAT_TEMPLATE
from .tokenization import (AutoTokenizer, BatchEncoding, GemmaTokenizerFast, PreTrainedTokenizerFast,
                           TokenizerLoadError, get_json_schema)

__all__ = ["AutoTokenizer", "BatchEncoding", "GEMMA4_CHAT_TEMPLATE", "GemmaTokenizerFast", "PreTrainedTokenizerFast",
           "TokenizerLoadError", "get_json_schema"]
