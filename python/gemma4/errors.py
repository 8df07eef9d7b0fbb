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
]


class Gemma4Error(Exception):
    """Base class of gemma4's own exceptions."""


class ConfigError(Gemma4Error, ValueError):
    """A config.json (or dict) that is not a valid Gemma 4 text config.

    Attributes: ``source`` (file name or "<dict>") and ``key`` (dotted key path, or None).
    """

    def __init__(self, message: str, source: str | None = None, key: str | None = None):
        self.source = source
        self.key = key
        self.detail = message
        where = source or "<config>"
        if key:
            where += f": key '{key}'"
        super().__init__(f"{where}: {message}")


class ConfigNotFoundError(ConfigError, FileNotFoundError):
    """The config path (directory or config.json) does not exist."""


class CheckpointError(Gemma4Error, ValueError):
    """A checkpoint that cannot be loaded into (or saved from) the model.

    Attributes: ``source`` (the file involved) and ``key`` (the tensor name, or None).
    """

    def __init__(self, message: str, source: str | None = None, key: str | None = None):
        self.source = source
        self.key = key
        self.detail = message
        where = source or "<checkpoint>"
        if key:
            where += f": tensor '{key}'"
        super().__init__(f"{where}: {message}")


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint directory or one of its files does not exist."""
