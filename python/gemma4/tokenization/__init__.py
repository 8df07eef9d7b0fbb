"""Tokenization with the Hugging Face transformers interface, on `tokenizers` and jinja2 only."""
from .auto import AutoTokenizer, TokenizerLoadError
from .batch_encoding import BatchEncoding
from .chat_template import get_json_schema
from .tokenizer_fast import GemmaTokenizerFast, PreTrainedTokenizerFast

__all__ = ["AutoTokenizer", "BatchEncoding", "GemmaTokenizerFast", "PreTrainedTokenizerFast", "TokenizerLoadError",
           "get_json_schema"]
