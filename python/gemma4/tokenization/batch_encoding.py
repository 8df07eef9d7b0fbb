"""BatchEncoding: the dict-like output of the tokenizer (same behaviour as transformers')."""
from __future__ import annotations

from collections import UserDict
from collections.abc import Mapping
from typing import Any

import numpy as np


def _flatten(value) -> list:
    out = []
    for v in value:
        if isinstance(v, (list, tuple)):
            out.extend(_flatten(v))
        else:
            out.append(v)
    return out


def to_py_obj(obj):
    """Tensors / arrays / numpy scalars (possibly nested in lists and dicts) -> python lists and ints."""
    if isinstance(obj, Mapping):
        return {k: to_py_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_py_obj(o) for o in obj]
    if isinstance(obj, np.number):
        return obj.item()
    if hasattr(obj, "shape") and hasattr(obj, "tolist"):  # numpy arrays, torch tensors (any device)
        return obj.tolist()
    return obj


def is_torch_tensor(x) -> bool:
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return False
    return isinstance(x, torch.Tensor)


class BatchEncoding(UserDict):
    """Output of the tokenizer: a dict of `input_ids`, `attention_mask`, ... with attribute access.

    - `enc["input_ids"]` / `enc.input_ids`: the values (lists, or tensors with return_tensors).
    - `enc[i]` (int): the `tokenizers.Encoding` of batch item i (offsets, word ids, ...).
    - `enc.to(device)`: moves every tensor value (PyTorch) and returns the same object.
    - `enc.tokens(i)`, `enc.word_ids(i)`, `enc.sequence_ids(i)`, `enc.char_to_token(...)`.
    """

    def __init__(self, data: dict[str, Any] | None = None, encoding=None, tensor_type: str | None = None,
                 prepend_batch_axis: bool = False, n_sequences: int | None = None):
        super().__init__(data)
        if encoding is not None and not isinstance(encoding, (list, tuple)):
            encoding = [encoding]
        self._encodings = list(encoding) if encoding is not None else None
        if n_sequences is None and self._encodings:
            n_sequences = self._encodings[0].n_sequences
        self._n_sequences = n_sequences
        self.convert_to_tensors(tensor_type=tensor_type, prepend_batch_axis=prepend_batch_axis)

    # -- dict and attribute access -------------------------------------------------------------
    def __getitem__(self, item):
        if isinstance(item, str):
            return self.data[item]
        if self._encodings is not None:
            return self._encodings[item]
        if isinstance(item, slice):
            return {key: self.data[key][item] for key in self.data}
        raise KeyError("Invalid key. Only three types of key are available: (1) string, (2) integers for backend "
                       "Encoding, and (3) slices for data subsetting.")

    def __getattr__(self, item: str):
        try:
            return self.__dict__["data"][item]
        except KeyError:
            raise AttributeError(item) from None

    def __getstate__(self):
        return {"data": self.data, "encodings": self._encodings, "n_sequences": self._n_sequences}

    def __setstate__(self, state):
        self.data = state.get("data", {})
        self._encodings = state.get("encodings")
        self._n_sequences = state.get("n_sequences")

    # -- encodings ------------------------------------------------------------------------------
    @property
    def is_fast(self) -> bool:
        return self._encodings is not None

    @property
    def encodings(self):
        return self._encodings

    @property
    def n_sequences(self) -> int | None:
        return self._n_sequences

    def _encoding(self, batch_index: int):
        if not self._encodings:
            raise ValueError("This BatchEncoding holds no tokenizers.Encoding (it was built from ids, e.g. by pad())")
        return self._encodings[batch_index]

    def tokens(self, batch_index: int = 0) -> list[str]:
        return self._encoding(batch_index).tokens

    def sequence_ids(self, batch_index: int = 0) -> list[int | None]:
        return self._encoding(batch_index).sequence_ids

    def word_ids(self, batch_index: int = 0) -> list[int | None]:
        return self._encoding(batch_index).word_ids

    def _split(self, batch_or_index: int, index: int | None) -> tuple[int, int]:
        if index is not None:
            return batch_or_index, index
        if self._encodings is not None and len(self._encodings) > 1:
            raise ValueError("index must be given with a batch index for a batch of several sequences")
        return 0, batch_or_index

    def token_to_sequence(self, batch_or_token_index: int, token_index: int | None = None) -> int:
        b, t = self._split(batch_or_token_index, token_index)
        if t < 0:
            t = len(self._encoding(b).ids) + t
        return self._encoding(b).token_to_sequence(t)

    def token_to_word(self, batch_or_token_index: int, token_index: int | None = None) -> int:
        b, t = self._split(batch_or_token_index, token_index)
        if t < 0:
            t = len(self._encoding(b).ids) + t
        return self._encoding(b).token_to_word(t)

    def token_to_chars(self, batch_or_token_index: int, token_index: int | None = None):
        b, t = self._split(batch_or_token_index, token_index)
        span = self._encoding(b).token_to_chars(t)
        return tuple(span) if span is not None else None

    def char_to_token(self, batch_or_char_index: int, char_index: int | None = None, sequence_index: int = 0):
        b, c = self._split(batch_or_char_index, char_index)
        return self._encoding(b).char_to_token(c, sequence_index)

    def char_to_word(self, batch_or_char_index: int, char_index: int | None = None, sequence_index: int = 0):
        b, c = self._split(batch_or_char_index, char_index)
        return self._encoding(b).char_to_word(c, sequence_index)

    def word_to_tokens(self, batch_or_word_index: int, word_index: int | None = None, sequence_index: int = 0):
        b, w = self._split(batch_or_word_index, word_index)
        span = self._encoding(b).word_to_tokens(w, sequence_index)
        return tuple(span) if span is not None else None

    def word_to_chars(self, batch_or_word_index: int, word_index: int | None = None, sequence_index: int = 0):
        b, w = self._split(batch_or_word_index, word_index)
        return tuple(self._encoding(b).word_to_chars(w, sequence_index))

    # -- tensors --------------------------------------------------------------------------------
    def convert_to_tensors(self, tensor_type: str | None = None, prepend_batch_axis: bool = False):
        """Converts the values to "pt" (torch.Tensor) or "np" (numpy.ndarray); None leaves them as they are."""
        if tensor_type is None:
            return self
        tensor_type = getattr(tensor_type, "value", tensor_type)
        if tensor_type == "pt":
            import torch  # noqa: PLC0415

            def as_tensor(value):
                if isinstance(value, list) and len(value) > 0 and isinstance(value[0], np.ndarray):
                    return torch.from_numpy(np.array(value))
                if len(_flatten(value)) == 0:
                    return torch.tensor(value, dtype=torch.int64)
                return torch.tensor(value)

            is_tensor = torch.is_tensor
        elif tensor_type == "np":
            def as_tensor(value):
                if (isinstance(value, (list, tuple)) and len(value) > 0
                        and isinstance(value[0], (list, tuple, np.ndarray))):
                    if len({len(v) for v in value}) > 1:
                        arr = np.empty(len(value), dtype=object)
                        for i, v in enumerate(value):
                            arr[i] = np.asarray(v)
                        return arr
                if len(_flatten(value)) == 0:
                    return np.asarray(value, dtype=np.int64)
                return np.asarray(value)

            def is_tensor(x):
                return isinstance(x, np.ndarray)
        else:
            raise ValueError(f"return_tensors must be None, 'pt' or 'np', got {tensor_type!r}")

        for key, value in self.items():
            try:
                if prepend_batch_axis:
                    value = [value]
                if not is_tensor(value):
                    self[key] = as_tensor(value)
            except Exception as e:
                raise ValueError(
                    "Unable to create tensor, you should probably activate truncation and/or padding with "
                    f"'padding=True' 'truncation=True' to have batched tensors with the same length (`{key}`)."
                ) from e
        return self

    def to(self, device, *, non_blocking: bool = False) -> "BatchEncoding":
        """Moves every tensor value to `device` (str, torch.device or int) and returns self."""
        import torch  # noqa: PLC0415

        if isinstance(device, (str, int, torch.device)):
            self.data = {k: v.to(device=device, non_blocking=non_blocking) if hasattr(v, "to") and callable(v.to)
                         else v for k, v in self.data.items()}
        else:
            raise TypeError(f"BatchEncoding.to expects a device (str, int or torch.device), got {type(device)}")
        return self
