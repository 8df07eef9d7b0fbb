"""Hugging Face-layout checkpoints: load into and save from our Gemma4ForCausalLM. Safetensors only.

Loading (`load_pretrained`):
  1. read config.json (`Gemma4Config.from_pretrained`; both the nested "gemma4" and flat
     "gemma4_text" forms) and every safetensors header (gemma4.hf_format.safetensors: truncated or
     corrupt files are reported before any memory is touched); check num_hidden_layers against the
     layers the tensors hold, before anything is built;
  2. map checkpoint names to model names (explicit table below) and check every key, shape and
     dtype against the model built on the meta device: one CheckpointError lists everything missing
     or unexpected;
  3. `model.to(dtype)` on meta, `model.to_empty(device)`, then read tensors one at a time with
     plain file reads straight into their parameters, through one temporary tensor when the dtype
     or device differs (peak memory = model + one tensor), with a progress bar. The embedding tables
     (every nn.Embedding: the token table, which the head shares, and the per-layer table) are
     memory-mapped instead when they stay on the CPU in the file's dtype (hf_format.safetensors.
     map_tensor): a run keeps resident only the rows it touches, like llama.cpp. In another dtype
     or on a GPU they are read and converted like every other tensor;
  4. `model.tie_weights()`, `model.init_non_persistent_buffers()`, `model.eval()`. Tied aliases
     (lm_head.weight) are kept out of to_empty() and re-tied, so they never get storage of their own.
     The model gets a copy of the config (with the loaded dtype); a config passed in is not modified.
  Every floating-point tensor read is checked for NaN/inf (CheckpointError naming file and tensor).

Load hook (vLLM's weight_loader / process_weights_after_loading): a submodule that defines
`load_hf_tensor(name, tensor)` receives the checkpoint tensors under its name (name relative to it,
tensor as stored: a fresh CPU tensor of the file's dtype) instead of having them copied into its
state_dict; `expected_hf_tensors()` -> {name: shape or None} (default: its state_dict) says what it
needs, and `finish_loading()` runs after the last tensor. docs/checkpoints.md has the contract.

Key mapping (checkpoint -> model; gemma4.hf_format.keys):
  model.language_model.X   -> model.X    Gemma4ForConditionalGeneration (all Google repos)
  model.X                  -> model.X    Gemma4ForCausalLM (text-only saves)
  lm_head.weight           -> lm_head.weight (optional when tied to model.embed_tokens.weight)
  model.vision_tower.*, model.embed_vision.*, model.audio_tower.*, model.embed_audio.*,
  model.multi_modal_projector.* (hf_format.keys.MULTIMODAL_PREFIXES): skipped
  model.layers.{i}.self_attn.{k_proj,v_proj,k_norm,v_norm}.* of KV-shared layers i: skipped
      (Google's E2B/E4B uploads carry these unused tensors; transformers ignores them too)

dtype (as transformers 5.17's from_pretrained): None or "auto" -> the config's `dtype`
(`torch_dtype`), else the dtype of the first floating-point tensor in the checkpoint; a torch.dtype
or its name ("bfloat16") is used as given. `torch_dtype=` is the older spelling of `dtype=`.

Saving (`save_pretrained`): config.json in the flat Gemma4ForCausalLM form and model.safetensors
(or model-0000i-of-0000N.safetensors + model.safetensors.index.json above `max_shard_size`) with
keys `model.*`, without lm_head.weight when it is tied, as transformers writes them;
transformers' Gemma4ForCausalLM.from_pretrained loads the result.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Callable, Iterable

import torch

from . import huge_pages
from .config import Gemma4Config
from .devices import parse_device, parse_dtype
from .errors import CheckpointError, CheckpointNotFoundError, ConfigError
from .hf_format.config_json import CONFIG_NAME, read_json_object
from .hf_format.keys import map_checkpoint_key, shared_kv_unused_pattern
from .hf_format.safetensors import (TensorEntry, check_finite, map_tensor, read_header, read_into, read_tensor,
                                    save_file)

read_safetensors_header = read_header  # the name this module has always exported

__all__ = [
    "load_pretrained",
    "save_pretrained",
    "resolve_dtype",
    "read_safetensors_header",
    "checkpoint_files",
    "map_checkpoint_key",
    "hook_modules",
    "check_finite",
    "SAFE_WEIGHTS_NAME",
    "SAFE_WEIGHTS_INDEX_NAME",
]

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"

# ---------------------------------------------------------------------------------------- files
def checkpoint_files(path: str | os.PathLike) -> tuple[list[str], str | None]:
    """The safetensors files of a checkpoint directory: ([model.safetensors], None) or (shards, index path).

    As transformers: a single model.safetensors wins over an index. Raises CheckpointNotFoundError
    for a missing directory or shard, CheckpointError for a bad index or a pickle-only checkpoint.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        hint = ""
        if re.fullmatch(r"[\w.-]+/[\w.-]+", path):
            hint = (" (it looks like a Hugging Face Hub id: download it first, e.g. `huggingface-cli download "
                    f"{path} --local-dir <dir>`, and pass the directory)")
        raise CheckpointNotFoundError(f"no such checkpoint directory{hint}", path)
    if not os.path.isdir(path):
        raise CheckpointError("expected a checkpoint directory (with config.json and model.safetensors), got a "
                              "file", path)
    single = os.path.join(path, SAFE_WEIGHTS_NAME)
    index = os.path.join(path, SAFE_WEIGHTS_INDEX_NAME)
    if os.path.isfile(single):
        return [single], None
    if os.path.isfile(index):
        files: list[str] = []
        for key, name in _weight_map(index).items():
            if not isinstance(name, str) or os.path.basename(name) != name or not name:
                raise CheckpointError(f"weight_map names an invalid shard file {name!r}", index, key)
            shard = os.path.join(path, name)
            if shard not in files:
                if not os.path.isfile(shard):
                    raise CheckpointNotFoundError(f"weight_map names shard {name!r}, which does not exist in {path}",
                                                  index, key)
                files.append(shard)
        return files, index
    pickles = sorted(f for f in os.listdir(path) if f.endswith((".bin", ".pt", ".pth", ".ckpt")))
    if pickles:
        raise CheckpointError(f"holds only pickle files ({', '.join(pickles)}); gemma4 loads safetensors only and "
                              "never unpickles. Convert them with a trusted tool (e.g. transformers' "
                              "save_pretrained(safe_serialization=True)).", path)
    raise CheckpointNotFoundError(f"no {SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME} in the directory", path)


def _weight_map(index: str) -> dict[str, Any]:
    weight_map = read_json_object(index, CheckpointError, CheckpointNotFoundError).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError("index has no 'weight_map' object", index, "weight_map")
    return weight_map


def _read_headers(files: list[str], index: str | None) -> dict[str, TensorEntry]:
    entries: dict[str, TensorEntry] = {}
    for file in files:
        file_entries, _ = read_header(file)
        for key, e in file_entries.items():
            if key in entries:
                raise CheckpointError(f"tensor stored twice (also in {os.path.basename(entries[key].file)})", file, key)
            entries[key] = e
    if index is not None:
        for key, name in _weight_map(index).items():
            e = entries.get(key)
            if e is None or os.path.basename(e.file) != name:
                where = f"it is in {os.path.basename(e.file)}" if e else "no shard has it"
                raise CheckpointError(f"index places the tensor in {name!r} but {where}", index, key)
    return entries


# ---------------------------------------------------------------------------------------- names
def _shared_kv_unused(config: Gemma4Config):
    return shared_kv_unused_pattern(spec.index for spec in config.layers if spec.kv_shared)


def _tied_aliases(model: torch.nn.Module) -> dict[str, str]:
    """{alias name: canonical name} for parameters shared between modules (lm_head -> embed_tokens)."""
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    aliases = {}
    for names in groups.values():
        if len(names) > 1:
            canonical = sorted(names, key=lambda n: (n.startswith("lm_head."), names.index(n)))[0]
            aliases.update({n: canonical for n in names if n != canonical})
    return aliases


def _summarise(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


# ---------------------------------------------------------------------------------------- dtype
def _as_dtype(value: Any, argument: str) -> torch.dtype | None:
    """devices.parse_dtype (None for None or "auto"), its errors as CheckpointError."""
    try:
        return parse_dtype(value, argument)
    except (TypeError, ValueError) as e:
        raise CheckpointError(str(e), argument) from None


def resolve_dtype(dtype: Any, torch_dtype: Any, config: Gemma4Config,
                  entries: dict[str, TensorEntry] | None = None) -> torch.dtype:
    """The dtype to load in, following transformers 5.17's rules (None means "auto")."""
    wanted = _as_dtype(dtype, "dtype")
    if torch_dtype is not None:
        old = _as_dtype(torch_dtype, "torch_dtype")
        if dtype is not None and wanted != old:  # "auto" against a dtype disagrees too
            raise CheckpointError(f"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree (torch_dtype is the "
                                  "old name of dtype; pass one)", "dtype")
        wanted = old
    if wanted is not None:
        return wanted
    if config.dtype is not None:
        return _as_dtype(config.dtype, "config.json dtype")
    for key in sorted(entries or {}):
        e = entries[key]
        if e.dtype is not None and e.dtype.is_floating_point and map_checkpoint_key(key) is not None:
            return e.dtype
    return torch.get_default_dtype()


# ---------------------------------------------------------------------------------------- load
def load_pretrained(model_cls, path: str | os.PathLike, dtype: Any = None, device: Any = None,
                    torch_dtype: Any = None, progress: bool = True, config: Gemma4Config | None = None,
                    prepare_model: Callable[[torch.nn.Module], Any] | None = None):
    """Build `model_cls(config)` from a Hugging Face-layout checkpoint directory.

    path: directory with config.json and model.safetensors, or shards + model.safetensors.index.json
        (Gemma4ForConditionalGeneration or Gemma4ForCausalLM layout).
    dtype / torch_dtype: torch dtype, its name, "auto" or None (= "auto", as transformers).
    device: where the weights go (default "cpu"; "auto" = cuda when available).
    config: use this config instead of path/config.json.
    prepare_model: called with the model while it is still on the meta device (already in the target
        dtype), before the checkpoint is checked against it: it may replace modules (e.g. with
        quantized linears implementing the load hook, see `load_hf_tensor` below and
        docs/checkpoints.md). With it, a config.json carrying a `quantization_config` is not refused:
        the preparer owns that decision.
    The model class must accept `model_cls(config)` and provide `tie_weights()` and
    `init_non_persistent_buffers()` (derived buffers such as RoPE frequencies).
    Raises CheckpointError / ConfigError (ValueError subclasses) naming the file and key.
    """
    path = os.fspath(path)
    files, index = checkpoint_files(path)
    config_file = os.path.join(path, CONFIG_NAME)
    if config is None:
        if not os.path.isfile(config_file):
            raise CheckpointNotFoundError("checkpoint directory has no config.json", path)
        config = Gemma4Config.from_pretrained(config_file)
        if prepare_model is None:
            _refuse_quantized(config_file)
    entries = _read_headers(files, index)
    _check_layer_count(config, entries)
    target_dtype = resolve_dtype(dtype, torch_dtype, config, entries)
    target_device = parse_device(device)

    # The model gets its own copy, with the loaded dtype (as transformers records it); the caller's
    # config is left as it was.
    config = dataclasses.replace(config, dtype=str(target_dtype).removeprefix("torch."),
                                 source=getattr(config, "_source", None))
    with torch.device("meta"):
        model = model_cls(config)
    model.to(target_dtype)
    if prepare_model is not None:
        prepare_model(model)
    aliases = _tied_aliases(model)
    hooks = hook_modules(model)
    plan = _plan(model, config, entries, aliases, hooks, index or files[0])

    materialize(model, aliases, target_device)
    live = model.state_dict(keep_vars=True)
    mappable = _embedding_tables(model)
    maps: dict[str, Any] = {}  # one memory map per file (map_tensor)
    from tqdm.auto import tqdm  # noqa: PLC0415

    total = sum(len(v) for v in plan.values())
    with torch.no_grad(), tqdm(total=total, desc="Loading checkpoint", unit="tensor", disable=not progress) as bar:
        for file, items in plan.items():
            with open(file, "rb") as fh:
                for ckpt_key, model_key, owner in sorted(items, key=lambda item: entries[item[0]].offset):
                    entry = entries[ckpt_key]
                    if owner is None:
                        target = live[model_key]
                        mapped = (map_tensor(entry, maps) if model_key in mappable and target.device.type == "cpu"
                                  and target.dtype == entry.dtype else None)
                        if mapped is not None:
                            target.data = mapped[0]  # the to_empty() storage (never touched) is freed
                            model.get_submodule(model_key.rsplit(".", 1)[0]).rows_from_file = mapped[1]
                        else:
                            read_into(fh, entry, target)
                    else:
                        _deliver(hooks[owner], model_key[len(owner) + 1:], read_tensor(fh, entry), entry)
                    bar.update(1)
        for owner, module in hooks.items():
            _finish(module, owner, index or files[0])

    return finish_loading(model, aliases)


def materialize(model: torch.nn.Module, aliases: dict[str, str], device) -> None:
    """model.to_empty(device) for a model built on meta (see below). to_empty() would give every tied alias
    (lm_head.weight) storage of its own, only for tie_weights() to drop it again: an extra [V, H] at
    peak. So the aliases are detached first and re-tied after."""
    detached = _detach_aliases(model, aliases)
    # to_empty() itself, with empty_strided instead of its empty_like: empty_like of a meta tensor runs torch's
    # Python decomposition, whose first call imports sympy and torch.fx's symbolic shapes, ~50 MB that would stay
    # in the process (and in the peak RSS of everything after loading).
    # Large CPU weights go to huge pages (huge_pages.py: a decode step streams them all, and fragmented pages
    # streamed up to a fifth slower).
    model._apply(lambda t: huge_pages.empty_strided(t.size(), t.stride(), t.dtype, device))
    for module, name, canonical in detached:
        setattr(module, name, model.get_parameter(canonical))


def finish_loading(model: torch.nn.Module, aliases: dict[str, str]) -> torch.nn.Module:
    """The last steps once every weight is read: tie, rebuild the derived buffers, check the ties, eval."""
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    init = getattr(model, "init_non_persistent_buffers", None)
    if init is not None:
        init()
    elif _has_non_persistent_buffers(model):
        raise TypeError(f"{type(model).__name__} has non-persistent buffers but no init_non_persistent_buffers(); "
                        "after to_empty() they would hold garbage")
    _check_ties(model, aliases)
    release_freed_heap()
    return model.eval()


def release_freed_heap() -> None:
    """Hands the C heap's free pages back to the OS (glibc's malloc_trim). Loading frees many buffers (read
    chunks; under quantize-on-load every 16-bit weight), and glibc keeps what it freed at the top of its heap
    and in its arenas: on the E2B checkpoint in bf16, 40-60 MB that would otherwise stay in the process's RSS,
    and so in its peak once the head's pages come in. Elsewhere (no glibc) nothing happens."""
    import ctypes  # noqa: PLC0415

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _embedding_tables(model: torch.nn.Module) -> set[str]:
    """Model keys of the lookup tables worth memory-mapping: every nn.Embedding's weight."""
    return {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, torch.nn.Embedding)}


_LAYER_KEY = re.compile(r"model\.layers\.(\d+)\.")


def _check_layer_count(config: Gemma4Config, entries: dict[str, TensorEntry]) -> None:
    """num_hidden_layers against the layers the checkpoint holds, before the model is built."""
    layers = set()
    for key in entries:
        model_key = map_checkpoint_key(key)
        m = _LAYER_KEY.match(model_key) if model_key else None
        if m:
            layers.add(int(m.group(1)))
    if layers and layers != set(range(config.num_hidden_layers)):
        held = f"layers 0-{max(layers)}" if layers == set(range(max(layers) + 1)) else f"{len(layers)} layer indices"
        raise ConfigError(f"is {config.num_hidden_layers} but the checkpoint holds {held}",
                          getattr(config, "_source", None), "num_hidden_layers")


def _refuse_quantized(config_file: str) -> None:
    raw = read_json_object(config_file)
    q = raw.get("quantization_config") or (raw.get("text_config") or {}).get("quantization_config")
    if q:
        method = q.get("quant_method", "?") if isinstance(q, dict) else "?"
        raise CheckpointError(f"quantized checkpoint (quant_method {method!r}) cannot be loaded as float weights",
                              config_file, "quantization_config")


def _plan(model: torch.nn.Module, config: Gemma4Config, entries: dict[str, TensorEntry], aliases: dict[str, str],
          hooks: dict[str, torch.nn.Module], where: str) -> dict[str, list[tuple[str, str, str | None]]]:
    """Check the checkpoint against the (meta) model; return {file: [(checkpoint key, model key, owner)]}.

    owner is the name of the hook module that receives the tensor (None: copied into the model's
    own tensor). `where` names the checkpoint in errors about missing tensors (the single file or
    the index).
    """
    expected = {k: v for k, v in model.state_dict(keep_vars=True).items() if _owner(k, hooks) is None}
    hooked = {prefix: _expected_hf_tensors(module, prefix) for prefix, module in hooks.items()}
    unused = _shared_kv_unused(config)
    plan: dict[str, list[tuple[str, str, str | None]]] = {}
    found: dict[str, str] = {}  # model key -> checkpoint key
    unexpected: list[TensorEntry] = []
    for key in sorted(entries):
        e = entries[key]
        model_key = map_checkpoint_key(key)
        if model_key is None:
            continue
        if model_key in found:
            raise CheckpointError(f"tensor maps to {model_key!r} like {found[model_key]!r}; the checkpoint mixes the "
                                  "model.language_model. and model. prefixes", e.file, key)
        found[model_key] = key
        owner = _owner(model_key, hooks)
        if owner is not None:
            shapes = hooked[owner]
            local = model_key[len(owner) + 1:]
            if local not in shapes:
                unexpected.append(e)
                continue
            if shapes[local] is not None and tuple(shapes[local]) != e.shape:
                raise CheckpointError(f"shape {list(e.shape)} in the checkpoint, {type(hooks[owner]).__name__} "
                                      f"{owner!r} expects {list(shapes[local])} for {local!r}", e.file, key)
            if e.dtype is None:
                raise CheckpointError(f"dtype {e.dtype_code} has no torch equivalent in this torch version", e.file,
                                      key)
            plan.setdefault(e.file, []).append((key, model_key, owner))
            continue
        if model_key not in expected:
            if not unused.match(model_key):
                unexpected.append(e)
            continue
        target = expected[model_key]
        if tuple(target.shape) != e.shape:
            raise CheckpointError(f"shape {list(e.shape)} in the checkpoint, the model expects {list(target.shape)} "
                                  f"(as {model_key})", e.file, key)
        if e.dtype is None or (target.is_floating_point() != e.dtype.is_floating_point):
            raise CheckpointError(f"dtype {e.dtype_code} cannot be loaded into {model_key} ({target.dtype}); "
                                  "quantized or integer checkpoints are not supported", e.file, key)
        if model_key in aliases:
            continue  # tied to its canonical tensor, which is loaded instead
        plan.setdefault(e.file, []).append((key, model_key, None))
    if unexpected:
        first = unexpected[0]
        raise CheckpointError(f"{len(unexpected)} tensor(s) the model does not have: "
                              f"{_summarise(e.key for e in unexpected)}", first.file, first.key)
    missing = [k for k in expected if k not in found and k not in aliases]
    missing += [f"{prefix}.{local}" for prefix, shapes in hooked.items() for local in shapes
                if f"{prefix}.{local}" not in found]
    if missing:
        raise CheckpointError(f"{len(missing)} tensor(s) the model needs are missing: {_summarise(missing)}",
                              where, missing[0])
    return plan


# ---------------------------------------------------------------------------------------- load hook
def hook_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """{qualified name: module} of the submodules that load their own checkpoint tensors.

    A module opts in by defining `load_hf_tensor(name, tensor)`; only the outermost such module of
    a subtree is called (its children's tensors are its own business). The root model cannot opt in.
    """
    hooks: dict[str, torch.nn.Module] = {}
    for name, module in model.named_modules():
        if name and callable(getattr(module, "load_hf_tensor", None)) and _owner(name, hooks) is None:
            hooks[name] = module
    return hooks


def _owner(model_key: str, hooks: dict[str, torch.nn.Module]) -> str | None:
    """The hook module whose subtree holds `model_key` ("a.b.c" -> "a.b" or "a"), or None."""
    if not hooks:
        return None
    parts = model_key.split(".")
    for i in range(1, len(parts)):
        prefix = ".".join(parts[:i])
        if prefix in hooks:
            return prefix
    return None


def _expected_hf_tensors(module: torch.nn.Module, prefix: str) -> dict[str, tuple[int, ...] | None]:
    """{local name: shape, or None for any} the hook module wants: `expected_hf_tensors()` if it defines
    it, else its own state_dict (names and shapes)."""
    fn = getattr(module, "expected_hf_tensors", None)
    if fn is None:
        return {k: tuple(v.shape) for k, v in module.state_dict(keep_vars=True).items()}
    wanted = fn()
    if not isinstance(wanted, dict) or not all(isinstance(k, str) for k in wanted):
        raise TypeError(f"{type(module).__name__}.expected_hf_tensors() of {prefix!r} must return "
                        f"{{name: shape or None}}, got {wanted!r}")
    return dict(wanted)


def _deliver(module: torch.nn.Module, name: str, tensor: torch.Tensor, entry: TensorEntry) -> None:
    try:
        module.load_hf_tensor(name, tensor)
    except (ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{type(module).__name__}.load_hf_tensor({name!r}) refused it: {e}", entry.file,
                              entry.key) from e


def _finish(module: torch.nn.Module, owner: str, where: str) -> None:
    finish = getattr(module, "finish_loading", None)
    if finish is None:
        return
    try:
        finish()
    except (ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{type(module).__name__}.finish_loading() of {owner!r} failed: {e}", where,
                              owner) from e


def _detach_aliases(model: torch.nn.Module, aliases: dict[str, str]) -> list[tuple[torch.nn.Module, str, str]]:
    detached = []
    for alias, canonical in aliases.items():
        module_name, _, name = alias.rpartition(".")
        module = model.get_submodule(module_name)
        module._parameters[name] = None  # to_empty() skips None; restored (tied) right after
        detached.append((module, name, canonical))
    return detached


def _has_non_persistent_buffers(model: torch.nn.Module) -> bool:
    persistent = set(model.state_dict().keys())
    return any(name not in persistent for name, _ in model.named_buffers())


def _check_ties(model: torch.nn.Module, aliases: dict[str, str]) -> None:
    params = dict(model.named_parameters(remove_duplicate=False))
    for alias, canonical in aliases.items():
        if params[alias].data_ptr() != params[canonical].data_ptr():
            raise RuntimeError(f"after loading, {alias} is not tied to {canonical} (check "
                               f"{type(model).__name__}.tie_weights())")


# ---------------------------------------------------------------------------------------- save
def parse_size(size: int | str) -> int:
    """'5GB' -> 5*10**9, '500MiB' -> 500*2**20, ints pass through (bytes)."""
    if isinstance(size, int) and not isinstance(size, bool):
        if size <= 0:
            raise ValueError(f"max_shard_size must be positive, got {size}")
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", str(size), flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"max_shard_size must be bytes or a size like '5GB', got {size!r}")
    unit = (m.group(2) or "B").upper()
    mult = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
            "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}[unit]
    value = int(float(m.group(1)) * mult)
    if value <= 0:
        raise ValueError(f"max_shard_size must be positive, got {size!r}")
    return value


def save_pretrained(model: torch.nn.Module, path: str | os.PathLike, max_shard_size: int | str = "5GB",
                    safe_serialization: bool = True) -> None:
    """Write config.json + model.safetensors (or shards + index) in Gemma4ForCausalLM's layout."""
    if not safe_serialization:
        raise ValueError("gemma4 writes safetensors only (safe_serialization=False would mean pickle)")
    path = os.fspath(path)
    if os.path.isfile(path):
        raise CheckpointError("save_pretrained expects a directory, this is a file", path)
    os.makedirs(path, exist_ok=True)
    limit = parse_size(max_shard_size)

    config = model.config
    if not isinstance(config, Gemma4Config):
        config = Gemma4Config.from_dict(config.to_dict(), source=f"{type(model).__name__}.config")
    state = model.state_dict()
    aliases = _tied_aliases(model)
    tensors: dict[str, torch.Tensor] = {k: t for k, t in state.items() if k not in aliases}
    # the model's dtype: that of most float tensors, quantization scales aside (their dtype is the
    # scales' own, bf16 by default, and must not turn a float32 model into a bf16 one when reloaded)
    float_dtypes = [t.dtype for k, t in tensors.items() if t.is_floating_point() and not k.endswith("weight_scale")]
    config_dict = config.to_dict()
    if float_dtypes:
        config_dict["dtype"] = str(max(set(float_dtypes), key=float_dtypes.count)).removeprefix("torch.")

    # Greedy sharding in state_dict order; a tensor larger than the limit gets a shard of its own.
    shards: list[list[str]] = [[]]
    current = 0
    for key, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and current + nbytes > limit:
            shards.append([])
            current = 0
        shards[-1].append(key)
        current += nbytes

    names = ([SAFE_WEIGHTS_NAME] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    # Remove files of an earlier save that this one would leave stale.
    stale = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?$")
    for f in os.listdir(path):
        if stale.fullmatch(f) and f not in names:
            os.remove(os.path.join(path, f))

    weight_map: dict[str, str] = {}
    total_size = 0
    for name, keys in zip(names, shards):
        total_size += save_file({key: tensors[key] for key in keys}, os.path.join(path, name))
        weight_map.update({key: name for key in keys})
    if len(shards) > 1:
        with open(os.path.join(path, SAFE_WEIGHTS_INDEX_NAME), "w", encoding="utf-8") as f:
            json.dump({"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}, f,
                      indent=2)
            f.write("\n")
    with open(os.path.join(path, CONFIG_NAME), "w", encoding="utf-8") as f:
        f.write(json.dumps(config_dict, indent=2, sort_keys=True) + "\n")
