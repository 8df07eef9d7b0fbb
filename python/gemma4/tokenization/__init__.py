"""Tokenization with the Hugging Face transformers interface, on `tokenizers` and jinja2 only (docs/tokenizer.md).

gemma4.AutoTokenizer loads a tokenizer folder; gemma4_format holds Gemma 4's special-token table and the
chat template this package ships (GEMMA4_CHAT_TEMPLATE).
"""
from .auto import AutoTokenizer, TokenizerLoadError
from .batch_encoding import BatchEncoding
from .chat_template import ChatTemplateError, get_json_schema
from .gemma4_format import GEMMA4_CHAT_TEMPLATE
from .tokenizer_fast import GemmaTokenizerFast, PreTrainedTokenizerFast

__all__ = ["AutoTokenizer", "BatchEncoding", "ChatTemplateError", "GEMMA4_CHAT_TEMPLATE", "GemmaTokenizerFast",
           "PreTrainedTokenizerFast", "TokenizerLoadError", "get_json_schema"]
