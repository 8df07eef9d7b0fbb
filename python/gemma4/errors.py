"""Exceptions raised by gemma4 for bad configurations and checkpoints.

Every message names the file (or "<dict>" for in-memory input) and the offending key, so one
exception tells the user what to fix. The classes subclass ValueError (and FileNotFoundError for
missing paths), so generic handlers keep working.
"""
from __future__ import annotations

__all__ = [
    "Gemma4Error",
    "ConfigError",
    "ConfigNotFoundError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "AdapterError",
    "AdapterNotFoundError",
    "AdapterConfigError",
    "ArgumentError",
    "ArgumentTypeError",
]


class Gemma4Error(Exception):
    """Base class of gemma4's own exceptions."""


class _LocatedError(Gemma4Error, ValueError):
    """An error in a file (or dict), at a key: "<source>: <kind> '<key>': <message>".

    Attributes: ``source`` (file name, or None), ``key`` (or None) and ``detail`` (the bare message).
    """

    default_source = "<input>"
    key_kind = "key"

    def __init__(self, message: str, source: str | None = None, key: str | None = None):
        self.source = source
        self.key = key
        self.detail = message
        where = source or self.default_source
        if key:
            where += f": {self.key_kind} '{key}'"
        super().__init__(f"{where}: {message}")


class ConfigError(_LocatedError):
    """A config.json (or dict) that is not a valid Gemma 4 text config (key: dotted key path)."""

    default_source = "<config>"


class ConfigNotFoundError(ConfigError, FileNotFoundError):
    """The config path (directory or config.json) does not exist."""


class CheckpointError(_LocatedError):
    """A checkpoint that cannot be loaded into (or saved from) the model (key: the tensor name)."""

    default_source = "<checkpoint>"
    key_kind = "tensor"


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint directory or one of its files does not exist."""


class AdapterError(_LocatedError):
    """A PEFT adapter directory or file that cannot be read (adapter_config.json, the weights file)."""

    default_source = "<adapter>"
    key_kind = "tensor"


class AdapterNotFoundError(AdapterError, FileNotFoundError):
    """The adapter directory or one of its files does not exist."""


class AdapterConfigError(AdapterError):
    """A LoRA adapter config (adapter_config.json or a LoraConfig) with a value of the wrong type or form."""

    default_source = "<adapter config>"
    key_kind = "key"


class ArgumentError(Gemma4Error, ValueError):
    """A bad argument to a gemma4 call (generate, forward, a tokenizer method); the message names it."""


class ArgumentTypeError(ArgumentError, TypeError):
    """An argument of the wrong type (also a TypeError, as Python's convention asks)."""
