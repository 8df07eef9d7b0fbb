"""Model-level LoRA adapter management: AdapterMixin (mixed into Gemma4ForCausalLM).

The API follows transformers' PEFT integration and PEFT's PeftModel:

    model.load_adapter(path, adapter_name="default", is_trainable=False)   PEFT-format adapter from disk
    model.add_adapter(gemma4.LoraConfig(...), adapter_name="default")       fresh trainable adapter (active)
    model.save_adapter(path, adapter_name=None)                             adapter_config.json + safetensors
    model.set_adapter("a") / model.set_adapter(["a", "b"])                  active adapters (summed)
    model.active_adapters  (list; also callable: model.active_adapters())
    model.disable_adapters() / model.enable_adapters() / with model.disable_adapter(): ...
    model.delete_adapter("a")
    model.merge_adapter() / model.unmerge_adapter()                         fold active adapters into weights
    model.merge_and_unload() / model.unload()                               back to the plain model
    model.peft_config                                                       {name: LoraConfig}
    model.get_adapter_state_dict(name), set_requires_grad, print_trainable_parameters

Which modules an adapter targets is decided exactly as PEFT 0.21 decides it on transformers' model
(target_modules list/regex/"all-linear", exclude_modules, layers_to_transform/layers_pattern,
modules_to_save exclusion, target_parameters, rank_pattern/alpha_pattern), on transformers' module names
(this model's names, or `model.language_model.*` for adapters made on Gemma4ForConditionalGeneration).
"""
from __future__ import annotations

import contextlib
import copy
import re
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from .config import LoraConfig
from .io import Root, check_base_model, read_adapter, write_adapter
from .layers import LoraLayer, LoraLinear, LoraParamWrapper, ModulesToSaveWrapper, is_linear_like

__all__ = ["AdapterMixin"]

_EXCLUDED = "excluded"
_LOW_PRECISION = (torch.float16, torch.bfloat16)
# The head reads lm_head.weight directly in the training loss (chunked cross-entropy), and it is tied to
# the embedding: LoRA there would be silently skipped in training and merging would change the embedding.
_REFUSED_LORA_PATHS = ("lm_head",)


class _AdapterList(list):
    """Active adapter names. A list (PEFT: `model.active_adapters`) that can also be called
    (transformers: `model.active_adapters()`)."""

    def __call__(self) -> list[str]:
        return list(self)


@dataclass
class _Adapter:
    config: LoraConfig
    root: Root
    trainable: bool
    linears: list[str] = field(default_factory=list)  # our module paths wrapped by LoraLinear
    params: list[tuple[str, str, int]] = field(default_factory=list)  # (module path, parameter, PEFT nesting depth)
    saves: list[str] = field(default_factory=list)  # module paths with a modules_to_save copy


@dataclass
class _Plan:
    linears: list[tuple[str, int, float]] = field(default_factory=list)  # (path, r, alpha)
    params: list[tuple[str, str, int, int, float]] = field(default_factory=list)  # (path, param, depth, r, alpha)
    saves: list[str] = field(default_factory=list)
    target_modules: object = None  # "all-linear" expanded to names, as PEFT stores it


class _State:
    def __init__(self):
        self.adapters: dict[str, _Adapter] = {}
        self.active: list[str] = []
        self.disabled = False
        self.requires_grad_before: dict[int, bool] = {}


# ------------------------------------------------------------------------------------------------------------
# PEFT's matching rules (tuners_utils.check_target_module_exists, _inject_parameters, other._set_trainable)
# ------------------------------------------------------------------------------------------------------------
def _match_target(config: LoraConfig, key: str, target_modules) -> object:
    ex = config.exclude_modules
    if ex:
        if isinstance(ex, str):
            if re.fullmatch(ex, key):
                return _EXCLUDED
        elif key in ex or any(key.endswith(f".{e}") for e in ex):
            return _EXCLUDED
    if config.modules_to_save and any(re.match(rf"(^|.*\.){m}($|\..*)", key) for m in config.modules_to_save):
        return _EXCLUDED  # adapters never go onto modules_to_save modules
    if target_modules is None:
        return False
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, key) is not None
    if key in target_modules:
        return True
    found = any(key.endswith(f".{t}") for t in target_modules)
    layer_indexes, layers_pattern = config.layers_to_transform, config.layers_pattern
    using_indexes = layer_indexes is not None and (len(layer_indexes) != 0 if isinstance(layer_indexes, list)
                                                   else True)
    if using_indexes and found:
        match = None
        if layers_pattern is None or len(layers_pattern) == 0:
            match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)
        else:
            for pattern in [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern:
                match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", key)
                if match is not None:
                    break
        idx = match.groupdict().get("idx") if match else None
        if idx is None:
            found = False
        elif isinstance(layer_indexes, int):
            found = int(idx) == layer_indexes
        else:
            found = int(idx) in layer_indexes
    return found


def _param_matches(key: str, targets: list[str]) -> bool:
    return key in targets or any(key.endswith(f".{t}") for t in targets)


def _innermost(module: nn.Module) -> nn.Module:
    while isinstance(module, LoraLayer):
        module = module.base_layer
    return module


def _param_chain(module: nn.Module) -> list[LoraParamWrapper]:
    chain = []
    while isinstance(module, LoraParamWrapper):
        chain.append(module)
        module = module.base_layer
    return chain


def _lora_dims(module: nn.Module, pname: str) -> tuple[int, int, int]:
    """(num_experts, in_features, out_features) of LoRA on `module.<pname>`, as PEFT's ParamWrapper sees it."""
    p = getattr(module, pname)
    if p.dim() == 3:
        E, a, b = p.shape
        return (E, b, a) if not getattr(module, "is_transposed", False) else (E, a, b)
    if p.dim() == 2:
        return 1, p.shape[1], p.shape[0]
    raise ValueError(f"target_parameters: {pname} has shape {tuple(p.shape)}; LoRA on parameters supports 2-D and "
                     "3-D parameters only")


# ------------------------------------------------------------------------------------------------------------
class AdapterMixin:
    """LoRA adapters in PEFT's format on a model whose module names mirror transformers'."""

    # ---- state ----
    @property
    def _lora(self) -> _State:
        state = self.__dict__.get("_lora_state")
        if state is None:
            state = _State()
            self.__dict__["_lora_state"] = state
        return state

    @property
    def peft_config(self) -> dict[str, LoraConfig]:
        """{adapter name: LoraConfig} of the adapters on the model."""
        return {name: a.config for name, a in self._lora.adapters.items()}

    @property
    def active_adapters(self) -> _AdapterList:
        """Names of the active adapters (a list; calling it, as in transformers, returns the same list)."""
        return _AdapterList(self._lora.active)

    @property
    def active_adapter(self) -> str | None:
        active = self._lora.active
        return active[0] if active else None

    # ---- model traversal ----
    def _logical_modules(self) -> list[tuple[str, nn.Module]]:
        """(path, module) as the base model has them: an adapter wrapper stands for the module it wraps and
        nothing inside a wrapper is listed (PEFT skips adapter internals the same way)."""
        out: list[tuple[str, nn.Module]] = []

        def visit(prefix: str, module: nn.Module) -> None:
            for name, child in module._modules.items():
                if child is None:
                    continue
                path = prefix + name
                out.append((path, child))
                if not isinstance(child, (LoraLayer, ModulesToSaveWrapper)):
                    visit(path + ".", child)

        visit("", self)
        return out

    def _replace_module(self, path: str, new: nn.Module) -> None:
        parent_path, _, child = path.rpartition(".")
        parent = self.get_submodule(parent_path) if parent_path else self
        setattr(parent, child, new)

    # ---- planning: what an adapter config targets in this model ----
    def _plan(self, config: LoraConfig, root: Root) -> _Plan:
        plan = _Plan()
        logical = self._logical_modules()
        target_modules = config.target_modules
        if isinstance(target_modules, str) and target_modules.lower() == "all-linear":
            # PEFT: every Linear except the output embedding, stored as the explicit list of names
            target_modules = sorted(root.to_hf(p) for p, m in logical
                                    if (is_linear_like(_innermost(m)) or isinstance(m, LoraLinear))
                                    and p != "lm_head" and not isinstance(m, LoraParamWrapper))
        plan.target_modules = target_modules
        excluded, unmatched, lora_paths = [], [], set()
        for path, module in logical:
            hf = root.to_hf(path)
            result = _match_target(config, hf, target_modules)
            if result == _EXCLUDED:
                excluded.append(hf)
                continue
            if not result:
                unmatched.append(hf)
                continue
            base = _innermost(module) if isinstance(module, LoraLinear) else module
            if path in _REFUSED_LORA_PATHS:
                raise ValueError(f"target module {hf!r}: LoRA on the tied LM head is not supported (the training "
                                 "loss reads lm_head.weight directly and merging would change the tied "
                                 "embedding); remove it from target_modules")
            if isinstance(module, (ModulesToSaveWrapper, LoraParamWrapper)):
                how = "modules_to_save" if isinstance(module, ModulesToSaveWrapper) else "target_parameters"
                raise ValueError(f"target module {hf!r} is already adapted through {how} by another adapter; it "
                                 "cannot also be a LoRA target")
            if isinstance(base, nn.Embedding):
                raise ValueError(f"target module {hf!r} is an embedding: LoRA on embeddings is not supported by "
                                 "gemma4 (remove it from target_modules, or train it with modules_to_save)")
            if not is_linear_like(base):
                raise ValueError(f"Target module {hf!r} ({type(base).__name__}) is not supported. Currently, only "
                                 "Linear layers (target_modules) and 2-D/3-D parameters (target_parameters) are "
                                 "supported.")
            r, alpha = config.rank_and_alpha(hf)
            plan.linears.append((path, r, alpha))
            lora_paths.add(path)

        # target_parameters: nn.Parameters adapted directly (PEFT's ParamWrapper), nested per module in
        # registration order: the first targeted parameter of a module is innermost.
        targets = sorted(set(config.target_parameters or []))
        if targets:
            for path, module in logical:
                hf = root.to_hf(path)
                inner = _innermost(module)
                names = [n for n, _ in inner.named_parameters(recurse=False) if _param_matches(f"{hf}.{n}", targets)]
                if not names:
                    continue
                if isinstance(module, (LoraLinear, ModulesToSaveWrapper)) or path in lora_paths:
                    raise ValueError(f"Trying to wrap an `nn.Parameter` of layer {hf!r}, which is not a valid "
                                     "target: it is also adapted through target_modules or modules_to_save")
                if path in _REFUSED_LORA_PATHS:
                    raise ValueError(f"target parameter {hf}.{names[0]}: LoRA on the tied LM head is not supported")
                for i, pname in enumerate(names):
                    _lora_dims(inner, pname)  # raises for 1-D parameters
                    r, alpha = config.rank_and_alpha(f"{hf}.{pname}")
                    plan.params.append((path, pname, len(names) - 1 - i, r, alpha))

        # modules_to_save: a module matches when its full name ends with the entry (plain suffix, PEFT).
        mts = config.modules_to_save or []
        if mts:
            param_paths = {p for p, *_ in plan.params}
            for path, module in logical:
                hf = root.to_hf(path)
                if not any(hf.endswith(m) for m in mts):
                    continue
                if isinstance(module, LoraLayer) or path in lora_paths or path in param_paths:
                    raise ValueError(f"modules_to_save cannot be applied to {hf!r}: it is a LoRA-adapted layer")
                plan.saves.append(path)
            for a in plan.saves:
                for b in plan.saves:
                    if b.startswith(a + "."):
                        raise ValueError(f"modules_to_save matches both {root.to_hf(a)!r} and the module inside it "
                                         f"{root.to_hf(b)!r}; nested modules_to_save are not supported")

        if not plan.linears and not plan.params:
            if excluded and not unmatched:
                raise ValueError("All modules were excluded. This is likely unintended. Check your "
                                 "`target_modules`, `exclude_modules` and `modules_to_save` configuration.")
            if config.target_parameters and not config.target_modules:
                raise ValueError(f"target_parameters={config.target_parameters} were set but no parameter was "
                                 "matched.")
            if not config.target_modules:
                raise ValueError("Please specify `target_modules` or `target_parameters` in the LoraConfig (PEFT "
                                 "has no default target modules for Gemma 4 text models)")
            raise ValueError(f"Target modules {config.target_modules} not found in the base model. Please check the "
                             "target modules and try again.")
        for attr in ("rank_pattern", "alpha_pattern"):
            patterns = getattr(config, attr)
            names = [root.to_hf(p) for p, *_ in plan.linears]
            unmatched_patterns = [k for k in patterns if not any(re.match(rf"(.*\.)?({k})$", n) for n in names)]
            if unmatched_patterns and not plan.params:
                warnings.warn(f"The following {attr} keys did not match any targeted module and were ignored: "
                              f"{sorted(unmatched_patterns)}.", RuntimeWarning)
        return plan

    def _expected_tensors(self, plan: _Plan, root: Root) -> dict[str, tuple[int, ...]]:
        """PEFT file key (without base_model.model.) -> shape, for the adapter described by `plan`."""
        expected: dict[str, tuple[int, ...]] = {}
        for path, r, _ in plan.linears:
            base = _innermost(self.get_submodule(path))
            hf = root.to_hf(path)
            expected[f"{hf}.lora_A.weight"] = (r, base.in_features)
            expected[f"{hf}.lora_B.weight"] = (base.out_features, r)
        for path, pname, depth, r, _ in plan.params:
            E, fin, fout = _lora_dims(_innermost(self.get_submodule(path)), pname)
            key = root.to_hf(path) + ".base_layer" * depth
            expected[f"{key}.lora_A.weight"] = (r * E, fin)
            expected[f"{key}.lora_B.weight"] = (fout, r * E)
        for path in plan.saves:
            module = self.get_submodule(path)
            if isinstance(module, ModulesToSaveWrapper):
                module = module.original_module
            for k, t in module.state_dict().items():
                expected[f"{root.to_hf(path)}.{k}"] = tuple(t.shape)
        return expected

    # ---- injection ----
    def _adapter_dtype(self, weight: torch.Tensor | None, autocast: bool) -> torch.dtype:
        dtype = weight.dtype if isinstance(weight, torch.Tensor) and weight.is_floating_point() else torch.float32
        return torch.float32 if autocast and dtype in _LOW_PRECISION else dtype

    def _inject(self, name: str, config: LoraConfig, root: Root, plan: _Plan, trainable: bool,
                autocast_adapter_dtype: bool, init) -> _Adapter:
        """Wrap the planned modules and give them adapter `name`: all of it, or (on any error) none of it."""
        state = self._lora
        first = not state.adapters
        if first:
            state.requires_grad_before = {id(p): p.requires_grad for p in self.parameters()}
        adapter = _Adapter(config=config, root=root, trainable=trainable)
        replaced: list[tuple[str, nn.Module]] = []  # (path, the module that was there)
        touched: list[nn.Module] = []  # layers that may hold a (partial) adapter `name`

        def wrap(path: str, new: nn.Module) -> None:
            replaced.append((path, self.get_submodule(path)))
            self._replace_module(path, new)

        try:
            for path, r, alpha in plan.linears:
                module = self.get_submodule(path)
                if not isinstance(module, LoraLinear):
                    module = LoraLinear(module)
                    wrap(path, module)
                touched.append(module)
                dtype = self._adapter_dtype(getattr(module.base_layer, "weight", None), autocast_adapter_dtype)
                module.update_layer(name, r, alpha, config.use_rslora, config.lora_dropout, dtype, init)
                adapter.linears.append(path)
            for path, pname, depth, r, alpha in plan.params:
                top = self.get_submodule(path)
                wrapper = next((w for w in _param_chain(top) if w.parameter_name == pname), None)
                if wrapper is None:
                    wrapper = LoraParamWrapper(top, pname)
                    wrap(path, wrapper)
                touched.append(wrapper)
                dtype = self._adapter_dtype(wrapper.get_param(), autocast_adapter_dtype)
                wrapper.update_layer(name, r, alpha, config.use_rslora, dtype, init)
                adapter.params.append((path, pname, depth))
            for path in plan.saves:
                module = self.get_submodule(path)
                if not isinstance(module, ModulesToSaveWrapper):
                    module = ModulesToSaveWrapper(module)
                    wrap(path, module)
                touched.append(module)
                module.add(name)
                adapter.saves.append(path)
        except BaseException:
            for module in touched:
                module.delete_adapter(name)
            for path, before in reversed(replaced):
                self._replace_module(path, before)
            if first:
                self.__dict__.pop("_lora_state", None)
            raise
        state.adapters[name] = adapter
        # the base is frozen while adapters are attached (PEFT's _mark_only_adapters_as_trainable)
        adapter_ids = self._adapter_param_ids()
        for p in self.parameters():
            if id(p) not in adapter_ids:
                p.requires_grad_(False)
        return adapter

    def _adapter_param_ids(self) -> set[int]:
        ids: set[int] = set()
        for m in self.modules():
            if isinstance(m, LoraLayer):
                ids.update(id(p) for d in (m.lora_A, m.lora_B) for p in d.parameters())
            elif isinstance(m, ModulesToSaveWrapper):
                ids.update(id(p) for p in m.modules_to_save.parameters())
        return ids

    def _sync(self) -> None:
        """Push the model-level active/disabled/trainable state into every adapter layer."""
        state = self._lora
        for m in self.modules():
            if isinstance(m, LoraLayer):
                m.active_adapters = [a for a in state.active if a in m.lora_A]
                m.disable_adapters = state.disabled
                for a in m.lora_A.keys():
                    rg = a in state.active and state.adapters[a].trainable and not state.disabled
                    m.lora_A[a].requires_grad_(rg)
                    m.lora_B[a].requires_grad_(rg)
            elif isinstance(m, ModulesToSaveWrapper):
                present = [a for a in state.active if a in m.modules_to_save]
                m.active_adapter = present[0] if present else None
                m.disable_adapters = state.disabled
                for a, module in m.modules_to_save.items():
                    module.requires_grad_(a == m.active_adapter and state.adapters[a].trainable
                                          and not state.disabled)

    # ---- public API ----
    def add_adapter(self, adapter_config: LoraConfig, adapter_name: str | None = None,
                    autocast_adapter_dtype: bool = True) -> None:
        """Add a fresh LoRA adapter (A kaiming-uniform as PEFT, B zero) and make it the active one.

        It is trainable unless adapter_config.inference_mode; the base weights are frozen. Adapter weights
        are float32 for a bf16/fp16 model (PEFT's autocast_adapter_dtype=True)."""
        adapter_name = adapter_name or "default"
        if not isinstance(adapter_config, LoraConfig):
            adapter_config = _as_lora_config(adapter_config)
        if adapter_name in self._lora.adapters:
            raise ValueError(f"Adapter with name {adapter_name} already exists. Please use a different name.")
        config = copy.deepcopy(adapter_config)
        config.check_supported(for_creation=True)
        root = Root("causal")
        plan = self._plan(config, root)
        config.target_modules = plan.target_modules
        self._inject(adapter_name, config, root, plan, trainable=not config.inference_mode,
                     autocast_adapter_dtype=autocast_adapter_dtype, init=config.init_lora_weights)
        self.set_adapter(adapter_name)

    def load_adapter(self, path, adapter_name: str | None = None, is_trainable: bool = False,
                     autocast_adapter_dtype: bool = True) -> None:
        """Load a PEFT-format LoRA adapter (adapter_config.json + adapter_model.safetensors) from a directory.

        Keys may be rooted at transformers' Gemma4ForCausalLM (`model.layers...`) or
        Gemma4ForConditionalGeneration (`model.language_model.layers...`; LoRA of the vision/audio towers is
        skipped with a warning). Every key, shape and config option is checked: a mismatch raises ValueError
        naming the key, and the model is left unchanged. The first adapter becomes active; later ones are
        added inactive (set_adapter). is_trainable=False freezes it and puts the model in eval mode (as PEFT).
        """
        adapter_name = adapter_name or "default"
        if adapter_name in self._lora.adapters:
            raise ValueError(f"Adapter with name {adapter_name} already exists. Please use a different name.")
        config, tensors, weights_file, config_file = read_adapter(path)
        config.check_supported()
        check_base_model(config, self.config, config_file)
        root = Root.detect(tensors, weights_file)
        skipped = sorted(k for k in tensors if root.is_multimodal(k))
        plan = self._plan(config, root)
        config.target_modules = plan.target_modules
        expected = self._expected_tensors(plan, root)
        for k in tensors:
            if k in expected or root.is_multimodal(k):
                continue
            raise ValueError(f"{weights_file}: unexpected key {'base_model.model.' + k!r}: "
                             f"{self._explain_unexpected(k, root, config)}")
        for k, shape in expected.items():
            if k not in tensors:
                raise ValueError(f"{weights_file}: missing key {'base_model.model.' + k!r} (adapter_config.json "
                                 "targets this module but the file has no weights for it)")
            if tuple(tensors[k].shape) != shape:
                raise ValueError(f"{weights_file}: key {'base_model.model.' + k!r} has shape "
                                 f"{tuple(tensors[k].shape)} but this model needs {shape}: the adapter does not fit "
                                 "this base model (a different Gemma 4 variant?)")
            if not tensors[k].is_floating_point():
                raise ValueError(f"{weights_file}: key {'base_model.model.' + k!r} has dtype {tensors[k].dtype}, "
                                 "expected a floating-point tensor")
        if skipped:
            warnings.warn(f"{weights_file}: skipped {len(skipped)} LoRA tensors of the vision/audio towers "
                          f"(e.g. {skipped[0]!r}); this is a text-only model")
        adapter = self._inject(adapter_name, config, root, plan, trainable=is_trainable,
                               autocast_adapter_dtype=autocast_adapter_dtype, init=False)
        try:
            with torch.no_grad():
                for k, param in self._adapter_tensors(adapter_name, adapter).items():
                    param.copy_(tensors[k])
        except BaseException:
            self.delete_adapter(adapter_name)  # all or nothing
            raise
        if not self._lora.active:
            self._lora.active = [adapter_name]
        self._sync()
        if not is_trainable:
            self.eval()

    def _explain_unexpected(self, key: str, root: Root, config: LoraConfig) -> str:
        module_hf = key
        for marker in (".lora_A.", ".lora_B.", ".lora_embedding_A", ".lora_embedding_B", ".lora_magnitude_vector"):
            if marker in key:
                module_hf = key.split(marker)[0]
                break
        else:
            module_hf = key.rpartition(".")[0]
        while module_hf.endswith(".base_layer"):
            module_hf = module_hf[: -len(".base_layer")]
        if "lora_embedding" in key:
            return "LoRA on embeddings is not supported by gemma4"
        path = root.from_hf(module_hf)
        try:
            self.get_submodule(path) if path else None
        except AttributeError:
            path = None
        if path is None:
            return f"this model has no module {module_hf!r} (an adapter for a different base model?)"
        return (f"module {module_hf!r} exists but adapter_config.json (target_modules={config.target_modules!r}, "
                f"target_parameters={config.target_parameters!r}, modules_to_save={config.modules_to_save!r}) "
                "does not target it this way")

    def _adapter_tensors(self, name: str, adapter: _Adapter) -> dict[str, torch.Tensor]:
        """PEFT file key (without base_model.model.) -> the live tensor of adapter `name`."""
        root = adapter.root
        out: dict[str, torch.Tensor] = {}
        for path in adapter.linears:
            m = self.get_submodule(path)
            hf = root.to_hf(path)
            out[f"{hf}.lora_A.weight"] = m.lora_A[name].weight
            out[f"{hf}.lora_B.weight"] = m.lora_B[name].weight
        for path, pname, depth in adapter.params:
            w = next(w for w in _param_chain(self.get_submodule(path)) if w.parameter_name == pname)
            key = root.to_hf(path) + ".base_layer" * depth
            out[f"{key}.lora_A.weight"] = w.lora_A[name].weight
            out[f"{key}.lora_B.weight"] = w.lora_B[name].weight
        for path in adapter.saves:
            m = self.get_submodule(path)
            for k, t in m.modules_to_save[name].state_dict(keep_vars=True).items():
                out[f"{root.to_hf(path)}.{k}"] = t
        return out

    def _resolve_name(self, adapter_name: str | None) -> str:
        adapters = self._lora.adapters
        if not adapters:
            raise ValueError("No adapter loaded. Please load an adapter first.")
        if adapter_name is None:
            if len(self._lora.active) == 1:
                return self._lora.active[0]
            if len(adapters) == 1:
                return next(iter(adapters))
            raise ValueError(f"several adapters are loaded ({list(adapters)}); pass adapter_name")
        if adapter_name not in adapters:
            raise ValueError(f"Adapter {adapter_name!r} not found; loaded adapters: {list(adapters)}")
        return adapter_name

    def get_adapter_state_dict(self, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
        """The adapter's tensors under PEFT's saved names (transformers' module paths, adapter name removed,
        without the base_model.model. prefix that save_adapter adds), detached."""
        name = self._resolve_name(adapter_name)
        return {k: t.detach() for k, t in self._adapter_tensors(name, self._lora.adapters[name]).items()}

    def save_adapter(self, path, adapter_name: str | None = None) -> None:
        """Write adapter_config.json + adapter_model.safetensors in PEFT's format, loadable by
        PeftModel.from_pretrained(transformers' Gemma4ForCausalLM, path) (or, for an adapter loaded from a
        Gemma4ForConditionalGeneration one, by that class). adapter_name defaults to the active adapter."""
        name = self._resolve_name(adapter_name)
        adapter = self._lora.adapters[name]
        write_adapter(path, adapter.config, self.get_adapter_state_dict(name), adapter.root)

    def set_adapter(self, adapter_name: str | list[str]) -> None:
        """Make these adapters active (several: their updates add up). Merged adapters are unmerged first."""
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        state = self._lora
        for n in names:
            if n not in state.adapters:
                raise ValueError(f"Adapter {n!r} not found; loaded adapters: {list(state.adapters)}")
        for m in self.modules():
            if isinstance(m, ModulesToSaveWrapper):
                with_copy = [n for n in names if n in m.modules_to_save]
                if len(with_copy) > 1:
                    raise ValueError(f"adapters {with_copy} all have a modules_to_save copy of the same module; only "
                                     "one of them can be active at a time")
        if self._is_merged():
            warnings.warn("Adapter cannot be set when the model is merged. Unmerging the model first.")
            self.unmerge_adapter()
        state.active = names
        self._sync()

    def set_requires_grad(self, adapter_names: str | list[str], requires_grad: bool = True) -> None:
        """Mark adapters trainable or frozen (only active, enabled adapters get gradients)."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        for n in names:
            self._lora.adapters[self._resolve_name(n)].trainable = requires_grad
        self._sync()

    def disable_adapters(self) -> None:
        """Run the base model only (merged adapters are unmerged first)."""
        if not self._lora.adapters:
            raise ValueError("No adapter loaded. Please load an adapter first.")
        if self._is_merged():
            self.unmerge_adapter()
        self._lora.disabled = True
        self._sync()

    def enable_adapters(self) -> None:
        if not self._lora.adapters:
            raise ValueError("No adapter loaded. Please load an adapter first.")
        self._lora.disabled = False
        self._sync()

    @contextlib.contextmanager
    def disable_adapter(self):
        """Context manager: adapters off inside, back as they were after (PEFT's PeftModel.disable_adapter)."""
        was = self._lora.disabled
        self.disable_adapters()
        try:
            yield
        finally:
            self._lora.disabled = was
            self._sync()

    def delete_adapter(self, adapter_names: str | list[str]) -> None:
        """Remove adapters; wrappers left without adapters are removed, so deleting the last adapter gives back
        the plain model (with the base's original requires_grad flags)."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        state = self._lora
        for n in names:
            if n not in state.adapters:
                raise ValueError(f"Adapter {n!r} not found; loaded adapters: {list(state.adapters)}")
        for m in self.modules():
            if isinstance(m, LoraLayer):
                merged = [n for n in names if n in m.merged_adapters]
                if merged:
                    raise ValueError(f"adapter {merged[0]!r} is merged; call unmerge_adapter() before deleting it")
        for n in names:
            adapter = state.adapters.pop(n)
            for path in adapter.linears:
                m = self.get_submodule(path)
                m.delete_adapter(n)
                if not m.adapter_names():
                    self._replace_module(path, m.base_layer)
            for path in dict.fromkeys(p for p, _, _ in adapter.params):
                chain = _param_chain(self.get_submodule(path))
                for w in chain:
                    w.delete_adapter(n)
                self._relink_chain(path, chain)
            for path in adapter.saves:
                m = self.get_submodule(path)
                m.delete_adapter(n)
                if not len(m.modules_to_save):
                    self._replace_module(path, m.original_module)
        was_active = [a for a in state.active if a in names]
        state.active = [a for a in state.active if a not in names]
        if was_active and not state.active and state.adapters:
            new = sorted(state.adapters)[0]
            warnings.warn(f"Adapter {was_active[0]} was active which is now deleted. Setting active adapter to {new}.")
            state.active = [new]
        if not state.adapters:
            self._restore_plain()
        else:
            self._sync()

    def _relink_chain(self, path: str, chain: list[LoraParamWrapper]) -> None:
        base = _innermost(chain[0]) if chain else self.get_submodule(path)
        keep = [w for w in chain if w.adapter_names()]
        inner = base
        for w in reversed(keep):
            w.base_layer = inner
            inner = w
        self._replace_module(path, inner)

    def _restore_plain(self) -> None:
        state = self._lora
        before = state.requires_grad_before
        for p in self.parameters():
            if id(p) in before:
                p.requires_grad_(before[id(p)])
        self.__dict__.pop("_lora_state", None)

    def _is_merged(self) -> bool:
        return any(isinstance(m, LoraLayer) and m.merged for m in self.modules())

    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        """Fold the active adapters (or these) into the base weights: W += scaling * B @ A (float32 maths
        for bf16/fp16 weights). The forward then runs the plain layers; unmerge_adapter() undoes it."""
        state = self._lora
        if not state.adapters:
            raise ValueError("No adapter loaded. Please load an adapter first.")
        names = list(state.active) if adapter_names is None else list(adapter_names)
        for n in names:
            if n not in state.adapters:
                raise ValueError(f"Adapter {n!r} not found; loaded adapters: {list(state.adapters)}")
        self._check_no_shared_base()
        for m in self.modules():
            if isinstance(m, LoraLayer):
                m.merge(adapter_names=names, safe_merge=safe_merge)

    def _check_no_shared_base(self) -> None:
        counts: dict[int, int] = {}
        for _, p in self.named_parameters(remove_duplicate=False):
            counts[id(p)] = counts.get(id(p), 0) + 1
        for name, m in self.named_modules():
            if isinstance(m, LoraLinear):
                w = getattr(m.base_layer, "weight", None)
                if isinstance(w, torch.Tensor) and counts.get(id(w), 0) > 1:
                    raise ValueError(f"cannot merge into {name}: its weight is shared (tied) with another module")

    def unmerge_adapter(self) -> None:
        """Subtract every merged adapter from the base weights again (exact inverse within rounding)."""
        for m in self.modules():
            if isinstance(m, LoraLayer) and m.merged:
                m.unmerge()

    def merge_and_unload(self, progressbar: bool = False, safe_merge: bool = False,
                         adapter_names: list[str] | None = None):
        """Merge the active adapters (or these) into the weights, remove every adapter module and return the
        plain model (this model, changed in place). A modules_to_save module becomes the active adapter's
        copy. The base parameters get back the requires_grad flags they had before the first adapter."""
        if not self._lora.adapters:
            raise ValueError("No adapter loaded. Please load an adapter first.")
        self.merge_adapter(adapter_names=adapter_names, safe_merge=safe_merge)
        self._unload(keep_copies=True)
        return self

    def unload(self):
        """Remove every adapter without merging (merged adapters are unmerged first); returns the plain model."""
        if not self._lora.adapters:
            raise ValueError("No adapter loaded. Please load an adapter first.")
        self.unmerge_adapter()
        self._unload(keep_copies=False)
        return self

    def _unload(self, keep_copies: bool) -> None:
        before = self._lora.requires_grad_before
        for path, module in self._logical_modules():
            if isinstance(module, LoraLayer):
                self._replace_module(path, _innermost(module))
            elif isinstance(module, ModulesToSaveWrapper):
                chosen = module.current() if keep_copies and not module.disable_adapters else module.original_module
                if chosen is not module.original_module:
                    for p_new, p_old in zip(chosen.parameters(), module.original_module.parameters()):
                        before[id(p_new)] = before.get(id(p_old), True)
                self._replace_module(path, chosen)
        self._restore_plain()

    # ---- PEFT's conveniences ----
    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return trainable, total

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || "
              f"trainable%: {100 * trainable / max(total, 1):.4f}")


def _as_lora_config(obj) -> LoraConfig:
    """A peft.LoraConfig (or anything with to_dict) as our LoraConfig."""
    if hasattr(obj, "to_dict"):
        return LoraConfig.from_dict(obj.to_dict(), source=type(obj).__name__)
    if isinstance(obj, dict):
        return LoraConfig.from_dict(obj)
    raise TypeError(f"adapter_config must be a gemma4.LoraConfig, got {type(obj).__name__}")
