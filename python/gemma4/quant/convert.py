"""gemma4.quantize(model, config): swap the targeted float modules for quantized ones, in place."""
from __future__ import annotations

import warnings

from torch import nn

from .config import QuantizationConfig
from .modules import QuantExperts, QuantLinear

__all__ = ["quantize", "quantizable_modules", "tied_head", "quantize_tied_head"]


def _is_experts(module: nn.Module) -> bool:
    return type(module).__name__ == "Gemma4Experts"


def quantizable_modules(model: nn.Module, config: QuantizationConfig) -> list[tuple[str, nn.Module]]:
    """(name, module) of every nn.Linear / expert bank the config converts, in model order. A Linear whose
    weight is an embedding table (the tied LM head) is never converted: the embedding needs it in full
    precision, and the training loss reads the head's weight."""
    tied = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    chosen = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and id(module.weight) in tied:
            continue
        if isinstance(module, nn.Linear) or (config.quantize_experts and _is_experts(module)):
            if not config.keeps_full_precision(name):
                chosen.append((name, module))
    return chosen


def tied_head(model: nn.Module, config: QuantizationConfig) -> nn.Linear | None:
    """The LM head when it shares the token table and ``config`` converts it ("lm_head" taken out of
    modules_to_not_convert), else None. Quantizing it quantizes a copy of the table: the embedding keeps
    the full-precision one, and the head is untied (config.tie_word_embeddings becomes False)."""
    head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if (isinstance(head, nn.Linear) and isinstance(embed, nn.Embedding) and head.weight is embed.weight
            and not config.keeps_full_precision("lm_head")):
        return head
    return None


def _input_sizes(module: nn.Module) -> list[int]:
    if isinstance(module, nn.Linear):
        return [module.in_features]
    return [module.gate_up_proj.shape[-1], module.down_proj.shape[-1]]


def _fits(module: nn.Module, group_size: int | None) -> bool:
    """Every input size is a multiple of 32 and of the group (the kernels' layout)."""
    return all(k % 32 == 0 and k % (group_size or k) == 0 for k in _input_sizes(module))


def _quantized(module: nn.Module, config: QuantizationConfig) -> QuantLinear | QuantExperts:
    """module's (a Linear or an experts block) quantized replacement under config."""
    args = (config.bits, config.group_size, config.torch_scale_dtype, config.trained_grid)
    if isinstance(module, nn.Linear):
        return QuantLinear.from_linear(module, *args)
    return QuantExperts.from_experts(module, *args)


def quantize(model: nn.Module, config: QuantizationConfig | None = None) -> nn.Module:
    """Quantize ``model``'s Linears (and MoE experts) in place per ``config`` and return it.

    A module whose input size is not a multiple of 32 and of the group size (tiny test models; 26B-A4B's
    expert K = 704 with groups of 128) stays in full precision, with a warning naming it; its names are
    kept in ``model.quantization_skipped``. Every replacement is computed before any is installed, so an
    error leaves the model as it was. The model remembers the config as
    ``model.quantization_config`` (save_pretrained writes it). Add LoRA adapters after quantizing.
    A tied LM head is converted only when "lm_head" is taken out of ``modules_to_not_convert`` (see
    ``tied_head``): decode then reads the packed head instead of the full-precision table.
    """
    config = config or QuantizationConfig()
    if not isinstance(config, QuantizationConfig):
        raise TypeError(f"quantize: config must be a gemma4.QuantizationConfig, got {type(config).__name__}")
    if getattr(model, "peft_config", None):
        raise ValueError("quantize: the model carries LoRA adapters; quantize first, then add the adapters")
    if getattr(model, "quantization_config", None) is not None:
        raise ValueError("quantize: the model is already quantized")
    replacements, skipped = [], []
    head = tied_head(model, config)
    for name, module in quantizable_modules(model, config) + ([("lm_head", head)] if head is not None else []):
        if not _fits(module, config.group_size):
            skipped.append(name)
            continue
        if module.weight.is_meta if isinstance(module, nn.Linear) else module.gate_up_proj.is_meta:
            raise ValueError(f"quantize: {name} has no weights yet (meta tensors); load the model first")
        try:
            new = _quantized(module, config)
        except ValueError as e:
            raise ValueError(f"quantize: cannot quantize {name}: {e}") from None
        replacements.append((name, new))
    for name, new in replacements:
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
    if head is not None and "lm_head" not in skipped:
        model.config.tie_word_embeddings = False  # tie_weights() must not put the float table back
    if skipped:
        warnings.warn(f"quantize: {len(skipped)} modules kept in full precision because their input size is not a "
                      f"multiple of 32 and of group_size={config.group_size}: {', '.join(skipped[:6])}"
                      + (" ..." if len(skipped) > 6 else ""), stacklevel=2)
    model.quantization_config = config
    model.quantization_skipped = skipped
    return model


def quantize_tied_head(model: nn.Module, config: QuantizationConfig) -> None:
    """Quantize-on-load's last step: the tied head, when ``config`` converts it. The loader's per-tensor
    path cannot (the checkpoint holds the table once, for the embedding), so it runs on the loaded model."""
    head = tied_head(model, config)
    if head is None:
        return
    if not _fits(head, config.group_size):
        model.quantization_skipped.append("lm_head")
        warnings.warn(f"quantization: lm_head kept in full precision (input size {head.in_features} is not a "
                      f"multiple of 32 and of group_size={config.group_size})", stacklevel=3)
        return
    model.lm_head = _quantized(head, config)
    if isinstance(model.lm_head, QuantLinear):
        model.lm_head.tile_now()  # in place now: the first forward's tiling copy was 226 MB of E2B's peak RSS
    model.config.tie_word_embeddings = False
