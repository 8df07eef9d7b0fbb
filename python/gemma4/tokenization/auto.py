"""AutoTokenizer.from_pretrained: builds a PreTrainedTokenizerFast from a local tokenizer directory.

Files read (as transformers 5.17 reads them):

- tokenizer.json (required): the `tokenizers` pipeline and its added tokens.
- tokenizer_config.json (optional): special tokens (strings or AddedToken dicts), model-specific
  tokens (any "*_token" entry, e.g. image_token), extra_special_tokens (list or dict),
  added_tokens_decoder, padding_side, truncation_side, model_max_length, model_input_names,
  clean_up_tokenization_spaces, split_special_tokens, chat_template (string or list of
  {name, template}), tokenizer_class.
- special_tokens_map.json (optional; read only when tokenizer_config.json has no
  added_tokens_decoder, as in transformers).
- chat_template.jinja (optional; wins over tokenizer_config.json's chat_template) and
  additional_chat_templates/*.jinja (named templates).
- config.json (optional): tokenizer_class / model_type when tokenizer_config.json names no class.

add_bos_token / add_eos_token in tokenizer_config.json are ignored, as transformers 5.17 ignores
them when a tokenizer.json is present: the post-processor of tokenizer.json decides (pass
add_bos_token=... to from_pretrained, or set tok.add_bos_token, to override).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from tokenizers import AddedToken
from tokenizers import Tokenizer as RustTokenizer

from .pipeline import gemma_pipeline
from .tokenizer_fast import SPECIAL_TOKENS_ATTRIBUTES, GemmaTokenizerFast, PreTrainedTokenizerFast

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_DIR = "additional_chat_templates"
MODEL_CONFIG_FILE = "config.json"

# Model types whose registered transformers tokenizer class is GemmaTokenizer.
_GEMMA_MODEL_TYPES = {"gemma", "gemma2", "gemma3", "gemma3_text", "gemma3n", "gemma3n_text", "recurrent_gemma",
                      "shieldgemma2", "t5gemma", "diffusion_gemma"}


class TokenizerLoadError(OSError):
    """A tokenizer directory that cannot be read: missing directory or file, invalid JSON."""


def _read_json(path: str) -> dict:
    """A JSON file holding an object (every tokenizer file does)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise TokenizerLoadError(f"{path}: invalid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise TokenizerLoadError(f"{path}: not UTF-8 text ({e})") from None
    if not isinstance(data, dict):
        raise TokenizerLoadError(f"{path}: expected a JSON object, found a {type(data).__name__}")
    return data


def _bad(path: str, key: str, message: str) -> TokenizerLoadError:
    return TokenizerLoadError(f"{path}: key '{key}': {message}")


def _as_added_token(fields, path: str, key: str) -> AddedToken:
    """An AddedToken from its JSON fields (content, special, lstrip, ...), or an error naming file and key."""
    if not isinstance(fields, dict) or not isinstance(fields.get("content"), str):
        raise _bad(path, key, f"expected an object with a string 'content', got {fields!r:.80}")
    try:
        return AddedToken(**{k: v for k, v in fields.items() if k not in ("__type", "id")})
    except TypeError as e:
        raise _bad(path, key, f"not a valid added token ({e})") from None


def _check_template(template, path: str, key: str) -> None:
    """chat_template: a string of Jinja that compiles, or a list of {name, template} / a dict of them."""
    from .chat_template import ChatTemplateError, compile_template  # noqa: PLC0415

    if isinstance(template, (list, tuple)):
        for i, entry in enumerate(template):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or "template" not in entry:
                raise _bad(path, f"{key}[{i}]", "expected an object {\"name\": ..., \"template\": ...}")
            _check_template(entry["template"], path, f"{key}[{i}].template")
        return
    if isinstance(template, dict):
        for name, t in template.items():
            _check_template(t, path, f"{key}.{name}")
        return
    if not isinstance(template, str):
        raise _bad(path, key, f"expected a Jinja template string, got {type(template).__name__}")
    try:
        compile_template(template)
    except ChatTemplateError as e:
        raise _bad(path, key, str(e)) from None


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise TokenizerLoadError(f"{path}: not UTF-8 text ({e})") from None


def _added_token(obj):
    """{"__type": "AddedToken", ...} dicts -> AddedToken, recursively (transformers' convert_added_tokens)."""
    if isinstance(obj, dict) and obj.get("__type") == "AddedToken":
        obj = dict(obj)
        obj.pop("__type")
        return AddedToken(**obj)
    if isinstance(obj, (list, tuple)):
        return [_added_token(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _added_token(v) for k, v in obj.items()}
    return obj


def _token_dict(obj):
    """A special token given as a plain dict without "__type" (transformers would reject it) -> AddedToken."""
    if isinstance(obj, dict) and "content" in obj:
        obj = {k: v for k, v in obj.items() if k != "__type"}
        return AddedToken(**obj)
    return obj


def _resolve_class(directory: str, config: dict) -> str | None:
    name = config.get("tokenizer_class")
    if name is not None and not isinstance(name, str):
        raise _bad(os.path.join(directory, TOKENIZER_CONFIG_FILE), "tokenizer_class", f"expected a class name, got "
                   f"{name!r}")
    if name is None:
        path = os.path.join(directory, MODEL_CONFIG_FILE)
        if os.path.isfile(path):
            model_config = _read_json(path)
            name = model_config.get("tokenizer_class")
            if name is not None and not isinstance(name, str):
                raise _bad(path, "tokenizer_class", f"expected a class name, got {name!r}")
            if name is None and model_config.get("model_type") in _GEMMA_MODEL_TYPES:
                name = "GemmaTokenizer"
    return name.removesuffix("Fast") if isinstance(name, str) else None


def _gemma_backend(tokenizer_file: str, kwargs: dict) -> tuple[RustTokenizer, dict]:
    """transformers' GemmaTokenizer: rebuilds the pipeline around tokenizer.json's vocab and merges.

    BPE with byte fallback and fuse_unk, spaces normalized to "▁", split on " " merged with the
    previous piece, decoder "▁" -> " " + byte fallback + fuse; post-processor, padding and
    truncation taken from tokenizer.json. Class defaults: <bos>/<eos>/<pad>/<unk>/<mask> and left
    padding.
    """
    tokenizer_json = _read_json(tokenizer_file)
    model = tokenizer_json.get("model", {})
    if not isinstance(model, dict):
        raise _bad(tokenizer_file, "model", f"expected an object, got {type(model).__name__}")
    if model.get("type") not in (None, "BPE"):
        raise TokenizerLoadError(f"{tokenizer_file}: GemmaTokenizer needs a BPE model, found {model.get('type')}")
    # The post-processor, padding and truncation of tokenizer.json, read from a copy without the
    # vocabulary (parsing a 262k-entry vocabulary twice would double the load time).
    minimal = dict(tokenizer_json, added_tokens=[], model=dict(model, vocab={}, merges=[]))
    try:
        from_file = RustTokenizer.from_str(json.dumps(minimal))
    except Exception as e:  # the Rust error names no file
        raise TokenizerLoadError(f"{tokenizer_file}: not a valid tokenizers file ({e})") from None
    extra = {"post_processor": from_file.post_processor, "tokenizer_padding": from_file.padding,
             "tokenizer_truncation": from_file.truncation}
    vocab = _bpe_vocab(model.get("vocab") or {}, tokenizer_file)
    merges = _bpe_merges(model.get("merges") or [], tokenizer_file)
    for key, default in (("unk_token", "<unk>"), ("bos_token", "<bos>"), ("eos_token", "<eos>"),
                         ("pad_token", "<pad>"), ("mask_token", "<mask>")):
        if kwargs.get(key) is None:
            kwargs[key] = default
    if not vocab:
        vocab = {str(kwargs[k]): i for i, k in enumerate(("pad_token", "eos_token", "bos_token", "unk_token",
                                                           "mask_token"))}
    return gemma_pipeline(vocab, merges, str(kwargs["unk_token"])), extra


def _bpe_vocab(vocab, path: str) -> dict[str, int]:
    """model.vocab of a BPE tokenizer.json: {piece: id} (or a list of pieces / [piece, score] pairs)."""
    if isinstance(vocab, list):
        vocab = {(t[0] if isinstance(t, list) and t else t): i for i, t in enumerate(vocab)}
    if not isinstance(vocab, dict):
        raise _bad(path, "model.vocab", f"expected an object {{piece: id}}, got {type(vocab).__name__}")
    for piece, index in vocab.items():
        if not isinstance(piece, str) or isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise _bad(path, "model.vocab", f"entry {piece!r}: {index!r} is not a piece with an id >= 0")
    return vocab


def _bpe_merges(merges, path: str) -> list[tuple[str, str]]:
    """model.merges of a BPE tokenizer.json: "a b" strings or [a, b] pairs."""
    if not isinstance(merges, list):
        raise _bad(path, "model.merges", f"expected a list, got {type(merges).__name__}")
    out = []
    for i, m in enumerate(merges):
        pair = tuple(m.split(" ")) if isinstance(m, str) else tuple(m) if isinstance(m, list) else None
        if pair is None or len(pair) != 2 or not all(isinstance(p, str) for p in pair):
            raise _bad(path, f"model.merges[{i}]", f"expected \"a b\" or [\"a\", \"b\"], got {m!r:.80}")
        out.append(pair)
    return out


class AutoTokenizer:
    """Loads a tokenizer directory (tokenizer.json + tokenizer_config.json + chat template).

    >>> tok = AutoTokenizer.from_pretrained("path/to/gemma-4-E2B-it")
    >>> ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
    ...                               return_tensors="pt")
    """

    def __init__(self):
        raise EnvironmentError("AutoTokenizer is a loader: use AutoTokenizer.from_pretrained(directory)")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> PreTrainedTokenizerFast:
        """Builds the tokenizer of a local directory; keyword arguments override tokenizer_config.json entries
        (e.g. padding_side="left", chat_template=..., bos_token=...)."""
        for ignored in ("use_fast", "trust_remote_code", "local_files_only", "revision", "cache_dir", "token"):
            kwargs.pop(ignored, None)
        directory = str(pretrained_model_name_or_path)
        if kwargs.get("gguf_file") is not None:  # the vocabulary of a llama.cpp GGUF file (gguf_vocab.py)
            from ..hf_format.gguf_tensors import gguf_path  # noqa: PLC0415
            from .gguf_vocab import tokenizer_from_gguf  # noqa: PLC0415

            return tokenizer_from_gguf(gguf_path(directory, kwargs.pop("gguf_file")), **kwargs)
        kwargs.pop("gguf_file", None)
        if not os.path.isdir(directory):
            if os.path.exists(directory):
                raise TokenizerLoadError(f"{directory}: not a directory (give the folder holding tokenizer.json)")
            raise TokenizerLoadError(f"{directory}: no such directory (only local tokenizer folders are supported; "
                                     "download the model first, e.g. with `huggingface-cli download`)")
        path = lambda name: os.path.join(directory, name)  # noqa: E731
        tokenizer_file = path(TOKENIZER_FILE)
        if not os.path.isfile(tokenizer_file):
            raise TokenizerLoadError(f"{tokenizer_file}: missing (gemma4.AutoTokenizer needs the `tokenizers` "
                                     "serialization; sentencepiece-only folders are not supported)")

        config_file = path(TOKENIZER_CONFIG_FILE)
        config = _read_json(config_file) if os.path.isfile(config_file) else {}
        tokenizer_class = _resolve_class(directory, config)
        config.pop("tokenizer_class", None)
        config.pop("init_inputs", None)
        config.pop("auto_map", None)
        # transformers 5.17 drops these when tokenizer.json exists (its post-processor decides).
        config.pop("add_bos_token", None)
        config.pop("add_eos_token", None)

        templates = {}
        if os.path.isfile(path(CHAT_TEMPLATE_FILE)):
            templates["default"] = _read_text(path(CHAT_TEMPLATE_FILE))
        template_dir = Path(directory, CHAT_TEMPLATE_DIR)
        if template_dir.is_dir():
            for f in sorted(template_dir.glob("*.jinja")):
                templates[f.name.removesuffix(".jinja")] = _read_text(str(f))
        for name, text in templates.items():
            where = path(CHAT_TEMPLATE_FILE) if name == "default" else str(template_dir / f"{name}.jinja")
            _check_template(text, where, "chat_template")
        if "chat_template" in config and not templates:
            _check_template(config["chat_template"], config_file, "chat_template")
        if len(templates) == 1 and "default" in templates:
            config["chat_template"] = templates["default"]
        elif templates:
            config["chat_template"] = templates

        config.update(kwargs)
        if "additional_special_tokens" in config:
            config.setdefault("extra_special_tokens", config.pop("additional_special_tokens"))
        model_specific = {k: config.pop(k) for k in list(config)
                          if k not in SPECIAL_TOKENS_ATTRIBUTES and k.endswith("_token")
                          and isinstance(config[k], (str, AddedToken))}
        if isinstance(config.get("extra_special_tokens"), dict):
            model_specific.update(config.pop("extra_special_tokens"))
        if model_specific:
            config["model_specific_special_tokens"] = model_specific

        added_tokens_decoder: dict[int, AddedToken] = {}
        added_tokens_map: dict[str, AddedToken] = {}
        if "added_tokens_decoder" in config:
            decoder = config.pop("added_tokens_decoder")
            if not isinstance(decoder, dict):
                raise _bad(config_file, "added_tokens_decoder", f"expected an object {{id: token}}, got "
                           f"{type(decoder).__name__}")
            for idx, token in decoder.items():
                key = f"added_tokens_decoder.{idx}"
                if not isinstance(token, AddedToken):
                    token = _as_added_token(token, config_file, key)
                try:
                    index = int(idx)
                except ValueError:
                    raise _bad(config_file, key, f"{idx!r} is not an integer token id") from None
                if index < 0:
                    raise _bad(config_file, key, "token ids are >= 0")
                added_tokens_decoder[index] = token
                added_tokens_map[str(token)] = token
        else:
            if os.path.isfile(path(SPECIAL_TOKENS_MAP_FILE)):
                special_map = _read_json(path(SPECIAL_TOKENS_MAP_FILE))
                for key, value in special_map.items():
                    if key in kwargs and kwargs[key]:
                        continue
                    if isinstance(value, dict) and key != "extra_special_tokens":
                        value = _as_added_token(value, path(SPECIAL_TOKENS_MAP_FILE), key)
                        value.special = True
                    elif key == "extra_special_tokens" and isinstance(value, list):
                        existing = list(config.get("extra_special_tokens") or [])
                        for i, tok in enumerate(value):
                            if isinstance(tok, dict):
                                tok = _as_added_token(tok, path(SPECIAL_TOKENS_MAP_FILE), f"{key}[{i}]")
                                tok.special = True
                            if tok not in existing:
                                existing.append(tok)
                        value = existing
                    config[key] = value
                if isinstance(config.get("extra_special_tokens"), dict):
                    config.setdefault("model_specific_special_tokens", {}).update(config.pop("extra_special_tokens"))
            entries = _read_json(tokenizer_file).get("added_tokens", [])
            if not isinstance(entries, list):
                raise _bad(tokenizer_file, "added_tokens", f"expected a list, got {type(entries).__name__}")
            for i, entry in enumerate(entries):
                idx = entry.get("id") if isinstance(entry, dict) else None
                if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
                    raise _bad(tokenizer_file, f"added_tokens[{i}].id", f"expected a token id >= 0, got {idx!r}")
                added_tokens_decoder[idx] = _as_added_token(entry, tokenizer_file, f"added_tokens[{i}]")
                added_tokens_map[str(added_tokens_decoder[idx])] = added_tokens_decoder[idx]

        config = _added_token(config)
        for key in SPECIAL_TOKENS_ATTRIBUTES:
            if key in config and config[key] is not None:
                config[key] = _token_dict(config[key])
                if added_tokens_map:
                    config[key] = added_tokens_map.get(str(config[key]), config[key])
        if isinstance(config.get("model_specific_special_tokens"), dict):
            config["model_specific_special_tokens"] = {
                k: _token_dict(v) for k, v in config["model_specific_special_tokens"].items()}
        if isinstance(config.get("extra_special_tokens"), list):
            config["extra_special_tokens"] = [_token_dict(v) for v in config["extra_special_tokens"]]

        extra = {}
        if tokenizer_class == "GemmaTokenizer":
            backend, extra = _gemma_backend(tokenizer_file, config)
            tokenizer_cls = GemmaTokenizerFast
        else:
            tokenizer_cls = PreTrainedTokenizerFast
            try:
                backend = RustTokenizer.from_file(tokenizer_file)
            except Exception as e:  # the Rust error names no file
                raise TokenizerLoadError(f"{tokenizer_file}: not a valid tokenizers file ({e})") from None
        config["name_or_path"] = directory
        try:
            return tokenizer_cls(backend, added_tokens_decoder=added_tokens_decoder, **extra, **config)
        except (TypeError, ValueError) as e:  # a special token, side or length of the wrong kind
            raise TokenizerLoadError(f"{config_file}: {e}") from None
