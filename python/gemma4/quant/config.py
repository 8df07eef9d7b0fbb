"""QuantizationConfig: what `gemma4.quantize` (and quantize-on-load) converts, and how."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import torch

__all__ = ["QuantizationConfig", "DEFAULT_NOT_CONVERTED"]

# Kept in full precision unless the user asks otherwise: the (tied) LM head and the MoE router's tiny,
# sensitive projection (Google's QAT compressed-tensors checkpoints keep both in bf16). Embeddings and
# the per-layer embedding tables are not Linears and are never converted.
DEFAULT_NOT_CONVERTED = ("lm_head", "router")

_SCALE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class QuantizationConfig:
    """Weight-only quantization of a Gemma 4 model.

    Args:
        weights: ``"int4"`` (symmetric, 16 levels, GGUF Q4_0's rounding) or ``"int8"`` (symmetric).
        group_size: weights per scale along the input dimension: 32, 64, 128 (any multiple of 32), or
            None for one scale per output channel. Default: 32 for int4 (Google's QAT grid), None for int8.
        modules_to_not_convert: module names kept in full precision. An entry matches a module whose
            dotted name equals it, ends with ``"." + entry``, or contains it as a dotted component; an
            entry starting with ``"re:"`` is a regular expression matched against the whole name.
            Default: ``["lm_head", "router"]``.
        quantize_experts: also quantize the MoE expert banks (26B-A4B).
        scale_dtype: dtype of the stored scales, ``"bfloat16"`` (default; compressed-tensors' and
            Google's choice), ``"float16"`` (GGUF's) or ``"float32"``.
        trained_grid: the weights come from quantization-aware training (Google's
            ``*-qat-q4_0-unquantized``): recover each group's trained step instead of rounding (int4).
    """

    weights: str = "int4"
    group_size: int | None | str = "default"
    modules_to_not_convert: list[str] = field(default_factory=lambda: list(DEFAULT_NOT_CONVERTED))
    quantize_experts: bool = True
    scale_dtype: str = "bfloat16"
    trained_grid: bool = False

    def __post_init__(self):
        if self.weights not in ("int4", "int8"):
            raise ValueError(f"QuantizationConfig: weights must be 'int4' or 'int8', got {self.weights!r}")
        if self.group_size == "default":
            self.group_size = 32 if self.weights == "int4" else None
        if self.group_size is not None and (not isinstance(self.group_size, int) or self.group_size <= 0
                                            or self.group_size % 32):
            raise ValueError("QuantizationConfig: group_size must be a positive multiple of 32 (32, 64, 128, ...) "
                             f"or None for one scale per output channel, got {self.group_size!r}")
        if isinstance(self.scale_dtype, torch.dtype):
            self.scale_dtype = str(self.scale_dtype).removeprefix("torch.")
        if self.scale_dtype not in _SCALE_DTYPES:
            raise ValueError(f"QuantizationConfig: scale_dtype must be one of {sorted(_SCALE_DTYPES)}, "
                             f"got {self.scale_dtype!r}")
        if self.trained_grid and self.weights != "int4":
            raise ValueError("QuantizationConfig: trained_grid applies to int4 weights only")
        self.modules_to_not_convert = list(self.modules_to_not_convert or [])
        for entry in self.modules_to_not_convert:
            if entry.startswith("re:"):
                try:
                    re.compile(entry[3:])
                except re.error as e:
                    raise ValueError(f"QuantizationConfig: modules_to_not_convert entry {entry!r} is not a "
                                     f"valid regular expression: {e}") from None

    @property
    def bits(self) -> int:
        return 4 if self.weights == "int4" else 8

    @property
    def torch_scale_dtype(self) -> torch.dtype:
        return _SCALE_DTYPES[self.scale_dtype]

    def keeps_full_precision(self, name: str) -> bool:
        """True when the module called ``name`` must not be converted."""
        parts = name.split(".")
        for entry in self.modules_to_not_convert:
            if entry.startswith("re:"):
                if re.fullmatch(entry[3:], name):
                    return True
            elif name == entry or name.endswith("." + entry) or entry in parts:
                return True
        return False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "QuantizationConfig":
        return cls(**d)
