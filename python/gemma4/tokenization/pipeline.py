"""GemmaTokenizer's `tokenizers` pipeline around a BPE vocabulary, shared by the tokenizer.json loader
(auto.py) and the GGUF vocabulary loader (gguf_vocab.py)."""
from __future__ import annotations

from tokenizers import Tokenizer as RustTokenizer
from tokenizers import decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE


def gemma_pipeline(vocab: dict[str, int], merges: list[tuple[str, str]], unk_token: str) -> RustTokenizer:
    """GemmaTokenizer's `tokenizers` pipeline around a BPE vocabulary and its merges (also built from GGUF)."""
    backend = RustTokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=True, unk_token=unk_token, dropout=None,
                                byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.normalizer = normalizers.Replace(" ", "▁")
    return backend
