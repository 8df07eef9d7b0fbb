"""Small tokenizers built in code and saved as Hugging Face tokenizer directories.

Each builder trains a tiny model with `tokenizers` on CORPUS, lays out the special tokens, and
writes tokenizer.json + tokenizer_config.json (+ chat_template.jinja / special_tokens_map.json /
additional_chat_templates/ depending on the variant). The variants differ on purpose, so that
every loading path of transformers 5.17 (the oracle) is exercised:

- "gemma":      Gemma-4-like BPE with byte fallback, the Gemma 4 control tokens at their real ids
                (<pad>=0, <eos>=1, <bos>=2, <unk>=3, <|tool>=46 ... <|turn>=105, <turn|>=106,
                "\\n"=107), a "<bos> $A" post-processor, tokenizer_class GemmaTokenizer (class
                defaults: left padding), the model-specific tokens (image_token, boi_token, ...),
                template in chat_template.jinja.
- "gemma_cfg":  the same vocabulary, no post-processor, tokenizer_class PreTrainedTokenizerFast,
                template inside tokenizer_config.json, special tokens as AddedToken dicts,
                special_tokens_map.json, extra_special_tokens list, model_max_length 48.
- "bytelevel":  GPT-2-style byte-level BPE, "<s> $A </s>" post-processor, templates as a list of
                {name, template} (default + tool_use), left truncation, right padding.
- "wordlevel":  WordLevel over whitespace words with [UNK], no decoder, clean-up of tokenization
                spaces on, template in additional_chat_templates/ plus chat_template.jinja.
"""
from __future__ import annotations

import json
import os
import random

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from gemma4.tokenization import GEMMA4_CHAT_TEMPLATE
from gemma4.tokenization.gemma4_format import (CONTROL_TOKENS, MODEL_SPECIFIC_TOKENS, MULTIMODAL_TOKENS, NEWLINE_ID,
                                               TOOL_TOKENS, TURN_TOKENS)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A journey of a thousand miles begins with a single step.",
    "To be, or not to be: that is the question.",
    "All that glitters is not gold; all who wander are not lost.",
    "Gemma models read text, and they write text back.",
    "Tokenizers split sentences into pieces, then map pieces to ids.",
    "The weather today is sunny with a chance of rain in the evening.",
    "She sells sea shells by the sea shore, doesn't she?",
    "I can't believe it's already the end of the year!",
    "Numbers like 42, 3.14159 and 1,000,000 appear in text too.",
    "Paris, London, Tokyo and Nairobi are large cities.",
    "Can you help me write a short poem about the ocean?",
    "Sure! Here is a poem: waves of blue, forever new.",
    "What is the capital of France? The capital of France is Paris.",
    "Machine learning models learn patterns from data.",
    "    Indented code: def f(x):\n        return x * 2\n",
    "Line one\nLine two\n\nLine four after a blank line.",
    "Café, naïve, résumé, jalapeño: accents matter.",
    "Größe, Straße, Übermut — German has its own letters.",
    "日本語のテキストも少し含めます。",
    "Emoji are text too: 🙂 🚀 ✨",
    "Tabs\tand  double  spaces   are kept.",
    "Mr. Smith's dog isn't here; he'll be back at 5 o'clock.",
    "An apple a day keeps the doctor away, they say .",
    "The model answered , then paused ... and answered again !",
]

# Gemma 4's control tokens at their real ids, from the package's table; the multimodal tokens
# (real ids ~256k) follow the trained vocabulary here.
GEMMA_CONTROL = CONTROL_TOKENS
GEMMA_MULTIMODAL = list(MULTIMODAL_TOKENS)
GEMMA_MODEL_SPECIFIC = MODEL_SPECIFIC_TOKENS
TURN_TOKENS = list(TURN_TOKENS)
TOOL_TOKENS = list(TOOL_TOKENS)

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# A template exercising trim_blocks/lstrip_blocks, tojson with arguments, loop controls, namespace,
# strftime_now-free globals, tools and documents.
TOOL_TEMPLATE = """{{ bos_token }}
{% if tools %}
Tools:
{% for tool in tools %}
    {{ tool | tojson(indent=2) }}
{% endfor %}
{% endif %}
{% if documents %}
{% for doc in documents %}
Doc {{ loop.index }}: {{ doc.title }} - {{ doc.text }}
{% endfor %}
{% endif %}
{% set ns = namespace(n=0) %}
{% for message in messages %}
    {% if message.role == 'skip' %}{% continue %}{% endif %}
    {% set ns.n = ns.n + 1 %}
    [{{ ns.n }}] {{ message.role }}: {{ message.content }}
    {% if message.role == 'stop' %}{% break %}{% endif %}
{% endfor %}
{% if add_generation_prompt %}[{{ ns.n + 1 }}] assistant:{% endif %}"""

VARIANTS = ("gemma", "gemma_cfg", "bytelevel", "wordlevel")


def _write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)


def _train_pieces(pre_tokenizer, vocab_size: int, initial_alphabet=()) -> tuple[dict, list]:
    """Trains a BPE on CORPUS; returns (vocab, merges) of the trained model."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, show_progress=False,
                                  initial_alphabet=list(initial_alphabet))
    tok.train_from_iterator(CORPUS * 2, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], model["merges"]


def _gemma_tokenizer(post_processor: bool) -> tuple[Tokenizer, dict[int, str]]:
    trained_vocab, merges = _train_pieces(pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never"), 420)
    id_to_token: dict[int, str] = dict(GEMMA_CONTROL)
    unused = 0
    for i in range(NEWLINE_ID):
        if i not in id_to_token:
            id_to_token[i] = f"<unused{unused}>"
            unused += 1
    id_to_token[NEWLINE_ID] = "\n"
    vocab = {t: i for i, t in id_to_token.items()}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece in sorted(trained_vocab, key=trained_vocab.get):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    for t in GEMMA_MULTIMODAL:
        vocab[t] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    added = []
    for i in sorted(id_to_token):
        t = id_to_token[i]
        if t == "\n":
            continue
        added.append(AddedToken(t, special=not t.startswith("<unused"), normalized=False))
    added += [AddedToken(t, special=True, normalized=False) for t in GEMMA_MULTIMODAL]
    tok.add_tokens(added)
    if post_processor:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos>:0 $A:0", pair="<bos>:0 $A:0 <bos>:1 $B:1", special_tokens=[("<bos>", 2)])
    for t in added:
        assert tok.token_to_id(t.content) == vocab[t.content], t
    return tok, {vocab[t.content]: t for t in added}


def _added_tokens_decoder(added: dict[int, AddedToken]) -> dict[str, dict]:
    return {str(i): {"content": t.content, "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": t.special} for i, t in sorted(added.items())}


def build(variant: str, directory: str) -> str:
    """Writes the tokenizer directory for `variant` into `directory` and returns it."""
    os.makedirs(directory, exist_ok=True)
    p = lambda name: os.path.join(directory, name)  # noqa: E731
    if variant == "gemma":
        tok, added = _gemma_tokenizer(post_processor=True)
        tok.save(p("tokenizer.json"))
        _write_json(p("tokenizer_config.json"), {
            "tokenizer_class": "GemmaTokenizer",
            "add_bos_token": False, "add_eos_token": False,
            "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
            "mask_token": "<mask>",
            **GEMMA_MODEL_SPECIFIC,
            "added_tokens_decoder": _added_tokens_decoder(added),
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1000000000000000019884624838656,
        })
        with open(p("chat_template.jinja"), "w", encoding="utf-8") as f:
            f.write(GEMMA4_CHAT_TEMPLATE)
    elif variant == "gemma_cfg":
        tok, added = _gemma_tokenizer(post_processor=False)
        tok.save(p("tokenizer.json"))

        def addtok(content):
            return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": False,
                    "rstrip": False, "single_word": False, "special": True}
        _write_json(p("tokenizer_config.json"), {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": True,
            "bos_token": addtok("<bos>"), "eos_token": addtok("<eos>"), "pad_token": "<pad>",
            "unk_token": "<unk>",
            "extra_special_tokens": TURN_TOKENS,
            "padding_side": "right",
            "model_max_length": 48,
            "chat_template": GEMMA4_CHAT_TEMPLATE,
        })
        _write_json(p("special_tokens_map.json"), {
            "bos_token": {"content": "<bos>", "lstrip": False, "normalized": False, "rstrip": False,
                          "single_word": False},
            "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
            "additional_special_tokens": TOOL_TOKENS[:2],
        })
    elif variant == "bytelevel":
        specials = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
        trained_vocab, merges = _train_pieces(pre_tokenizers.ByteLevel(add_prefix_space=False), 500,
                                              pre_tokenizers.ByteLevel.alphabet())
        vocab = {t: i for i, t in enumerate(specials)}
        for piece in sorted(trained_vocab, key=trained_vocab.get):
            vocab.setdefault(piece, len(vocab))
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens(specials)
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B:1 </s>:1",
                                          special_tokens=[("<s>", 1), ("</s>", 2)]),
        ])
        tok.save(p("tokenizer.json"))
        _write_json(p("tokenizer_config.json"), {
            "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
            "padding_side": "right", "truncation_side": "left",
            "clean_up_tokenization_spaces": True,
            "chat_template": [{"name": "default", "template": CHATML_TEMPLATE},
                              {"name": "tool_use", "template": TOOL_TEMPLATE}],
        })
    elif variant == "wordlevel":
        words = {}
        for line in CORPUS:
            for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(line):
                words[w] = words.get(w, 0) + 1
        specials = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "<|turn>", "<turn|>"]
        vocab = {t: i for i, t in enumerate(specials)}
        for w in sorted(words, key=lambda w: (-words[w], w)):
            vocab.setdefault(w, len(vocab))
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.add_special_tokens(specials)
        tok.add_tokens([AddedToken("<sep>", special=False, normalized=False)])
        tok.save(p("tokenizer.json"))
        _write_json(p("tokenizer_config.json"), {
            "bos_token": "[BOS]", "eos_token": "[EOS]", "pad_token": "[PAD]", "unk_token": "[UNK]",
            "clean_up_tokenization_spaces": True,
            "padding_side": "left",
            "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
        })
        with open(p("chat_template.jinja"), "w", encoding="utf-8") as f:
            f.write(GEMMA4_CHAT_TEMPLATE.replace("<|turn>", "[BOS]").replace("<turn|>", "[EOS]"))
        os.makedirs(p("additional_chat_templates"), exist_ok=True)
        with open(p("additional_chat_templates/chatml.jinja"), "w", encoding="utf-8") as f:
            f.write(CHATML_TEMPLATE)
    else:
        raise ValueError(f"unknown variant {variant!r}")
    # AutoTokenizer (the oracle) wants a model config to pick the tokenizer class.
    _write_json(p("config.json"), {"model_type": "gemma4_text"})
    return directory


# ----------------------------------------------------------------------------------------------
# Random inputs
# ----------------------------------------------------------------------------------------------
_UNICODE_POOL = (
    "àéîõüçñßøåæœ" "ΑβγΔεζ" "абвгдеж" "你好世界中文" "こんにちは" "한국어" "مرحبا" "שלום" "हिन्दी"
    "🙂🚀✨🎉👍🏽" "\u00a0\u2009\u200b" "∑∫√∞≈" "ℌℍ①②ﬁ"
)


def random_text(rng: random.Random, specials: list[str] = (), max_words: int = 24) -> str:
    """Random words from CORPUS mixed with random unicode, odd whitespace and special tokens."""
    words = [w for line in CORPUS for w in line.split()]
    out = []
    for _ in range(rng.randint(0, max_words)):
        r = rng.random()
        if r < 0.65:
            out.append(rng.choice(words))
        elif r < 0.85:
            out.append("".join(rng.choice(_UNICODE_POOL) for _ in range(rng.randint(1, 4))))
        elif r < 0.93 and specials:
            out.append(rng.choice(specials))
        else:
            out.append(rng.choice(["\n", "\n\n", "\t", "  ", " ", "   x", "-", "'", "."]))
    text = ""
    for w in out:
        text += w + rng.choice([" ", " ", " ", "", "  ", "\n"])
    if rng.random() < 0.3:
        text = " " + text
    return text
