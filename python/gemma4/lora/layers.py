"""LoRA layers with PEFT's module and parameter names (peft 0.21, tuners/lora/layer.py).

    LoraLinear          wraps a Linear: `base_layer` + `lora_A`/`lora_B` ModuleDicts of nn.Linear per adapter,
                        so parameters are named `<path>.lora_A.<adapter>.weight` exactly as PEFT's lora.Linear.
                        forward = base(x) + sum_a  B_a(A_a(dropout_a(x))) * scaling_a   (no merged weight).
    LoraParamWrapper    LoRA on an nn.Parameter of a module (PEFT's lora.ParamWrapper, `target_parameters`):
                        for a 3-D expert bank W [E, out, in] (transformers' layout, not transposed)
                          lora_A: Linear(in, r*E)  weight [r*E, in]   -> A_e = weight.view(E, r, in)[e]
                          lora_B: Linear(r*E, out) weight [out, r*E]  -> B_e = weight.view(out, r, E)[:, :, e]
                          W_eff[e] = W[e] + scaling * B_e @ A_e
                        The wrapper calls its module with W_eff in place of W (torch.func.functional_call): with
                        one active adapter W_eff = baddbmm(W, B, A, alpha=scaling) in W's dtype (PEFT's
                        _LoraFactorsProxy), with several W + sum of the deltas (PEFT's _LoraParameterProxy).
                        When a call routes tokens to only some experts (decoding), W_eff is built for those
                        experts only and the indices are renumbered (same per-expert maths, far less memory).
                        Two parameters of one module nest, as PEFT: the wrapper of the later-registered
                        parameter is outermost (`experts.lora_A...` = down_proj, `experts.base_layer.lora_A...` =
                        gate_up_proj when both are targeted).
    ModulesToSaveWrapper a full trainable copy of a module per adapter (PEFT's ModulesToSaveWrapper):
                        `original_module` + `modules_to_save.<adapter>`.

The model-level bookkeeping (which adapters exist, are active, trainable) lives in adapters.py; these layers
only hold per-layer state and do the maths.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn
from torch.nn import functional as F

from gemma4 import ops
from gemma4.float32_gemm import is_plain_linear, linear
from gemma4.linear_choice import uses_gemma4_kernel

__all__ = ["LoraLayer", "LoraLinear", "LoraParamWrapper", "ModulesToSaveWrapper", "is_linear_like"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def is_linear_like(module: nn.Module) -> bool:
    """nn.Linear, or a Linear replacement (e.g. a quantized linear) exposing int in_features/out_features."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(getattr(module, "in_features", None), int) and isinstance(
        getattr(module, "out_features", None), int) and not isinstance(module, LoraLayer)


def _plain_linear_output(base: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """base(x) for a plain linear (float32_gemm.is_plain_linear), as a fresh tensor that nothing saved."""
    w, b = base.weight, base.bias
    if uses_gemma4_kernel(x, w) and (b is None or b.dtype == x.dtype):
        # gemma4::linear where it beats torch's GEMM (CPU prefill in float32 and bf16), and
        # linear_grad_input in backward: the same choice as the model's own Linear layers
        return ops.linear(x, w, b)
    grads = torch.is_grad_enabled() and (x.requires_grad or w.requires_grad or (b is not None and b.requires_grad))
    if grads or type(base).forward is nn.Linear.forward:
        # bf16/fp16 GEMMs, and their backward, in float32 on CPUs without a native one (float32_gemm.py)
        return linear(x, w, b)
    return base(x)  # no backward: the subclass's own kernel choice (gemma4's Linear: gemma4::linear)


def _scaling(r: int, alpha: float, use_rslora: bool) -> float:
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def _lowp_input_lora_update(base_out: torch.Tensor, x: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                            scaling: float) -> torch.Tensor:
    """(base_out.float() + scaling * (x.float() @ A.T) @ B.T).to(base_out.dtype) for a bf16/fp16 x and base
    output with float32 factors (PEFT's autocast_adapter_dtype), by the gemma4::lora_* ops.

    PEFT's maths (F.linear on x.to(float32), then a float32 sum with the base output) makes float32 copies of
    x, of the base output and, in backward, of the output gradient, and keeps the copy of x for A's
    gradient: twice the bytes of x per LoRA Linear, while x itself is usually kept anyway (q/k/v read the
    same normed input). The ops read each in its own dtype instead (on CUDA without any copy), and autograd
    saves x, A, B and down = x.float() @ A.T [N, r]. The same sums in float32, so the numbers are PEFT's up
    to float32 rounding order (on the CPU, the same ATen GEMMs).
    """
    x2 = x.reshape(-1, x.shape[-1])  # [N, in]
    down = ops.lora_down(x2, A)  # [N, r] float32
    out = ops.lora_up(down, B, scaling, base_out.reshape(-1, base_out.shape[-1]), base_out.dtype)  # [N, out]
    return out.view(base_out.shape)


class LoraLayer(nn.Module):
    """Per-layer adapter state shared by the LoRA layers (PEFT's LoraLayer attributes, same names)."""

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.use_rslora: dict[str, bool] = {}
        self.lora_dropout = nn.ModuleDict()
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.merged_adapters: list[str] = []
        self.active_adapters: list[str] = []
        self.disable_adapters = False

    # ---- bookkeeping ----
    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    def get_base_layer(self) -> nn.Module:
        base = self.base_layer
        while isinstance(base, LoraLayer):
            base = base.base_layer
        return base

    def adapter_names(self) -> list[str]:
        return list(self.lora_A.keys())

    def _new_factors(self, name: str, in_features: int, rank_out: int, out_features: int, r: int, alpha: float,
                     use_rslora: bool, dropout: float, dtype: torch.dtype, device: torch.device,
                     init: bool | str) -> None:
        if r <= 0:
            raise ValueError(f"`r` should be a positive integer value but the value passed is {r}")
        self.r[name] = r
        self.lora_alpha[name] = alpha
        self.use_rslora[name] = use_rslora
        self.scaling[name] = _scaling(r, alpha, use_rslora)
        self.lora_dropout[name] = nn.Dropout(p=dropout) if dropout > 0.0 else nn.Identity()
        lora_A = nn.Linear(in_features, rank_out, bias=False, device=device, dtype=dtype)
        lora_B = nn.Linear(rank_out, out_features, bias=False, device=device, dtype=dtype)
        with torch.no_grad():
            # PEFT reset_lora_parameters: A kaiming-uniform(a=sqrt(5)) (nn.Linear's default) or normal(1/r),
            # B zero; init False keeps nn.Linear's default init for both (a non-identity adapter).
            if init is True:
                nn.init.kaiming_uniform_(lora_A.weight, a=math.sqrt(5))
                nn.init.zeros_(lora_B.weight)
            elif isinstance(init, str) and init.lower() == "gaussian":
                nn.init.normal_(lora_A.weight, std=1 / r)
                nn.init.zeros_(lora_B.weight)
        self.lora_A[name] = lora_A
        self.lora_B[name] = lora_B

    def delete_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            raise ValueError(f"adapter {name!r} is merged into this layer; unmerge it first")
        for d in (self.r, self.lora_alpha, self.scaling, self.use_rslora):
            d.pop(name, None)
        for md in (self.lora_dropout, self.lora_A, self.lora_B):
            if name in md:
                del md[name]
        self.active_adapters = [a for a in self.active_adapters if a != name]

    def _active_unmerged(self) -> list[str]:
        if self.disable_adapters or self.merged:
            return []
        return [a for a in self.active_adapters if a in self.lora_A]

    def _check_merge_names(self, adapter_names: Iterable[str] | None) -> list[str]:
        names = list(self.active_adapters) if adapter_names is None else list(adapter_names)
        return [a for a in names if a in self.lora_A and a not in self.merged_adapters]

    def extra_repr(self) -> str:
        return f"adapters={self.adapter_names()}, active={self.active_adapters}, merged={self.merged_adapters}"


class LoraLinear(LoraLayer):
    """LoRA around a Linear (PEFT lora.Linear): y = base(x) + sum_a B_a(A_a(dropout_a(x))) * scaling_a."""

    def __init__(self, base_layer: nn.Module):
        if not is_linear_like(base_layer):
            raise TypeError(f"LoraLinear wraps a Linear, got {type(base_layer).__name__}")
        super().__init__(base_layer)
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The base weight (as PEFT's BaseTunerLayer.weight): code that reads `.weight` keeps working."""
        return self.base_layer.weight

    @property
    def bias(self):
        return getattr(self.base_layer, "bias", None)

    def update_layer(self, name: str, r: int, alpha: float, use_rslora: bool, dropout: float,
                     dtype: torch.dtype, init: bool | str = True) -> None:
        # the base's device: its weight, or for a quantized base (no .weight) its packed tensors
        device = next((t.device for t in (*self.base_layer.parameters(), *self.base_layer.buffers())), None)
        self._new_factors(name, self.in_features, r, self.out_features, r, alpha, use_rslora, dropout, dtype,
                          device, init)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        # nn.Linear or gemma4's Linear (not a QuantLinear, a nested wrapper or a subclass with its own forward)
        owned = is_plain_linear(self.base_layer) and not args and not kwargs
        result = _plain_linear_output(self.base_layer, x) if owned else self.base_layer(x, *args, **kwargs)
        active = self._active_unmerged()
        if not active:
            return result
        # any base, a quantized one included: lora_up reads the base output and writes a new one
        if len(active) == 1 and self._lowp_input_update(x, result, active[0]):
            name = active[0]
            return _lowp_input_lora_update(result, x, self.lora_A[name].weight, self.lora_B[name].weight,
                                           self.scaling[name])
        result_dtype, out_shape = result.dtype, result.shape
        # The update is accumulated into the base output by the second LoRA GEMM itself (addmm with
        # alpha = scaling): no separate [.., out] product, scaled copy or sum (PEFT: result +
        # lora_B(lora_A(x)) * scaling, three passes over the output). A plain Linear's output is a fresh
        # tensor that nothing saved for backward, so it is updated in place; the output of any other base
        # (a quantized linear, a nested wrapper) or of another dtype is copied once first.
        acc = result.reshape(-1, result.shape[-1])  # [N, out]
        autocast = torch.is_autocast_enabled(x.device.type)  # then addmm casts its operands itself
        for name in active:
            lora_A, lora_B = self.lora_A[name], self.lora_B[name]
            dtype = lora_A.weight.dtype
            xa = x if x.dtype == dtype else x.to(dtype)
            down = F.linear(self.lora_dropout[name](xa), lora_A.weight)  # [..., r], x.A computed once
            down = down.reshape(-1, down.shape[-1])  # [N, r]
            if acc.dtype != dtype and not autocast:  # a bf16 base with float32 adapters: sum in float32, as PEFT
                acc, owned = acc.to(dtype), True
            if owned and not autocast:
                acc = acc.addmm_(down, lora_B.weight.t(), alpha=self.scaling[name])  # [N, out]
            else:
                acc, owned = torch.addmm(acc, down, lora_B.weight.t(), alpha=self.scaling[name]), True
        return acc.view(out_shape).to(result_dtype)

    def _lowp_input_update(self, x: torch.Tensor, result: torch.Tensor, name: str) -> bool:
        """True when the loop below would do _lowp_input_lora_update's maths for adapter `name`: a bf16/fp16
        x and base output, float32 factors, no autocast, and a dropout that is the identity (p = 0, eval mode
        or nn.Identity, no hooks). With or without autograd (the ops skip the float32 copies either way)."""
        A, B = self.lora_A[name].weight, self.lora_B[name].weight
        if not (x.dtype in _LOW_PRECISION and result.dtype in _LOW_PRECISION and x.dim() >= 2
                and A.dtype == torch.float32 and B.dtype == torch.float32):
            return False
        if torch.is_autocast_enabled(x.device.type):
            return False
        drop = self.lora_dropout[name]
        if drop._forward_hooks or drop._forward_pre_hooks:
            return False
        return type(drop) is nn.Identity or (type(drop) is nn.Dropout and (drop.p == 0 or not drop.training))

    # ---- merging (PEFT lora.Linear.merge/unmerge/get_delta_weight) ----
    def get_delta_weight(self, name: str) -> torch.Tensor:
        """scaling * B @ A, [out, in], computed in float32 for bf16/fp16 adapters, returned in the weight dtype."""
        A, B = self.lora_A[name].weight, self.lora_B[name].weight
        compute = torch.float32 if A.dtype in _LOW_PRECISION else A.dtype
        delta = (B.to(compute) @ A.to(compute)) * self.scaling[name]
        return delta.to(self.weight.dtype)

    def _base_weight_for_merge(self) -> torch.Tensor:
        w = getattr(self.base_layer, "weight", None)
        if not isinstance(w, torch.Tensor) or not w.is_floating_point():
            raise ValueError(f"cannot merge LoRA into a {type(self.base_layer).__name__}: its weight is not a "
                             "floating-point tensor (quantized); keep the adapter unmerged")
        return w

    @torch.no_grad()
    def merge(self, adapter_names: Iterable[str] | None = None, safe_merge: bool = False) -> None:
        w = self._base_weight_for_merge()
        for name in self._check_merge_names(adapter_names):
            delta = self.get_delta_weight(name)
            if safe_merge:
                merged = w.data + delta
                if not torch.isfinite(merged).all():
                    raise ValueError(f"NaNs detected in the merged weights. The adapter {name} seems to be broken")
                w.data.copy_(merged)
            else:
                w.data += delta
            self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        w = self._base_weight_for_merge() if self.merged_adapters else None
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            w.data -= self.get_delta_weight(name)


class LoraParamWrapper(LoraLayer):
    """LoRA on one nn.Parameter of `base_layer`'s innermost module (PEFT lora.ParamWrapper)."""

    def __init__(self, base_layer: nn.Module, parameter_name: str):
        super().__init__(base_layer)
        self.parameter_name = parameter_name
        param = self.get_param()
        if param.dim() == 3:
            num_experts, in_features, out_features = param.shape
            # transformers' expert banks are [E, out, in] unless the module says is_transposed (then [E, in, out])
            self.swapped = not getattr(self.get_base_layer(), "is_transposed", False)
            if self.swapped:
                in_features, out_features = out_features, in_features
        elif param.dim() == 2:
            num_experts, in_features, out_features = 1, param.shape[1], param.shape[0]
            self.swapped = False
        else:
            raise ValueError(f"LoRA on parameters supports 2-D and 3-D parameters; {parameter_name} has shape "
                             f"{tuple(param.shape)}")
        self.num_experts, self.in_features, self.out_features = num_experts, in_features, out_features
        self.param_ndim = param.dim()

    def get_param(self) -> torch.Tensor:
        return getattr(self.get_base_layer(), self.parameter_name)

    def update_layer(self, name: str, r: int, alpha: float, use_rslora: bool, dtype: torch.dtype,
                     init: bool | str = True) -> None:
        self._new_factors(name, self.in_features, r * self.num_experts, self.out_features, r, alpha, use_rslora,
                          0.0, dtype, self.get_param().device, init)

    # ---- the update, as PEFT forms it ----
    def _factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(lhs, rhs) with delta = scaling * lhs @ rhs, batched over experts, in the adapter dtype."""
        A, B = self.lora_A[name].weight, self.lora_B[name].weight
        E = self.num_experts
        A3 = A.reshape(E, -1, A.shape[-1])  # [E, r, in]
        B3 = B.reshape(B.shape[0], -1, E).permute(2, 0, 1)  # [E, out, r]
        if self.param_ndim == 3 and not self.swapped:
            return A3.transpose(-2, -1), B3.transpose(-2, -1)  # param stored [E, in, out]
        return B3, A3

    def get_delta_weight(self, name: str) -> torch.Tensor:
        """scaling * B_e @ A_e for every expert, shaped like the parameter, in the parameter's dtype."""
        lhs, rhs = self._factors(name)
        delta = torch.bmm(lhs, rhs) * self.scaling[name]
        if self.param_ndim == 2:
            delta = delta[0]
        param = self.get_param()
        return delta.to(param.dtype)

    def effective_param(self, experts: torch.Tensor | None = None) -> torch.Tensor | None:
        """The parameter with the active, unmerged adapters applied, or None when none applies.

        experts: only these expert rows (int64 ids, 3-D banks), as a compact [len(experts), ...] bank.
        """
        active = self._active_unmerged()
        if not active:
            return None
        W = self.get_param()
        pick = (lambda t: t) if experts is None else (lambda t: t[experts])  # (faster than index_select here)
        W = pick(W)
        if len(active) == 1 and self.param_ndim == 3:
            lhs, rhs = self._factors(active[0])
            # one fused W + scaling * B @ A, in W's dtype (PEFT's _LoraFactorsProxy); W[experts] is a fresh
            # copy, so update it in place instead of writing a second one
            add = torch.baddbmm if experts is None else torch.Tensor.baddbmm_
            return add(W, pick(lhs).to(W.dtype), pick(rhs).to(W.dtype), alpha=self.scaling[active[0]])
        delta = None
        for name in active:
            lhs, rhs = self._factors(name)
            d = torch.bmm(pick(lhs), pick(rhs)) * self.scaling[name]  # get_delta_weight, on the picked rows
            d = (d[0] if self.param_ndim == 2 else d).to(W.dtype)
            delta = d if delta is None else delta + d
        return W + delta

    def forward(self, *args, **kwargs):
        # Collect W_eff of every wrapped parameter in the chain, then call the innermost module once with them.
        chain: list[LoraParamWrapper] = []
        module: nn.Module = self
        while isinstance(module, LoraParamWrapper):
            chain.append(module)
            module = module.base_layer
        active = [w for w in chain if w._active_unmerged()]
        if not active:
            return module(*args, **kwargs)
        routed = _routed_experts(module, chain, args, kwargs)
        if routed is None:
            overrides = {w.parameter_name: w.effective_param() for w in active}
            return torch.func.functional_call(module, overrides, args, kwargs, strict=False)
        # Only some experts are routed to (decoding, small batches): build the effective banks of those
        # experts only -- the same per-expert W_e + scaling * B_e @ A_e -- and renumber the indices.
        experts, local_indices, position = routed
        overrides = {w.parameter_name: w.effective_param(experts) for w in active}
        for name, p in module.named_parameters(recurse=False):
            if p.dim() == 3 and name not in overrides:  # a bank without an active adapter: just its rows
                overrides[name] = p[experts]
        args = args[:position] + (local_indices,) + args[position + 1:]
        return torch.func.functional_call(module, overrides, args, kwargs, strict=False)

    def __getattr__(self, name: str):
        # Attributes of the wrapped module (e.g. `activation`, `gate_up_proj`) stay reachable, as through PEFT.
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules")
            if name == "base_layer" or modules is None or "base_layer" not in modules:
                raise  # (also while unpickling/deepcopying, before the module is set up)
            return getattr(modules["base_layer"], name)

    @torch.no_grad()
    def merge(self, adapter_names: Iterable[str] | None = None, safe_merge: bool = False) -> None:
        param = self.get_param()
        for name in self._check_merge_names(adapter_names):
            delta = self.get_delta_weight(name)
            if safe_merge:
                merged = param.data + delta
                if not torch.isfinite(merged).all():
                    raise ValueError(f"NaNs detected in the merged weights. The adapter {name} seems to be broken")
                param.data.copy_(merged)
            else:
                param.data += delta
            self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        param = self.get_param()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            param.data -= self.get_delta_weight(name)

    def extra_repr(self) -> str:
        return f"parameter_name={self.parameter_name!r}, " + super().extra_repr()


# Expert modules whose forward is (x, routing weights, expert indices [N, K], ...) over [E, ...] banks: the
# position of the indices argument. For these, LoRA builds effective banks only for the experts in use.
ROUTED_EXPERT_MODULES = {"Gemma4Experts": 2}


def _routed_experts(module: nn.Module, chain: list, args: tuple, kwargs: dict):
    """(sorted used expert ids, indices renumbered into them, argument position) when `module` is a routed
    expert bank called with fewer distinct experts than it has, else None (then the whole bank is used).
    Skipped under torch.compile (data-dependent shapes)."""
    position = ROUTED_EXPERT_MODULES.get(type(module).__name__)
    if position is None or kwargs or len(args) <= position or torch.compiler.is_compiling():
        return None
    indices = args[position]
    if not isinstance(indices, torch.Tensor) or indices.is_floating_point():
        return None
    banks = [p for p in module.parameters(recurse=False) if p.dim() == 3]
    num_experts = banks[0].shape[0] if banks else 0
    if not banks or any(p.shape[0] != num_experts for p in banks) or any(w.param_ndim != 3 for w in chain):
        return None
    experts = torch.unique(indices)  # sorted
    if experts.numel() >= num_experts:
        return None
    lookup = torch.zeros(num_experts, dtype=indices.dtype, device=indices.device)
    lookup[experts] = torch.arange(experts.numel(), dtype=indices.dtype, device=indices.device)
    return experts, lookup[indices], position


class ModulesToSaveWrapper(nn.Module):
    """A module trained fully per adapter: `original_module` (frozen) + `modules_to_save[adapter]` copies.

    The forward uses the copy of the (single) active adapter that has one, else the original module.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.original_module = module
        self.modules_to_save = nn.ModuleDict()
        self.active_adapter: str | None = None
        self.disable_adapters = False

    def add(self, name: str) -> None:
        import copy  # noqa: PLC0415

        if name not in self.modules_to_save:
            self.modules_to_save[name] = copy.deepcopy(self.original_module)

    def delete_adapter(self, name: str) -> None:
        if name in self.modules_to_save:
            del self.modules_to_save[name]
        if self.active_adapter == name:
            self.active_adapter = None

    def current(self) -> nn.Module:
        if self.disable_adapters or self.active_adapter is None or self.active_adapter not in self.modules_to_save:
            return self.original_module
        return self.modules_to_save[self.active_adapter]

    def forward(self, *args, **kwargs):
        return self.current()(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules")
            if name in ("original_module", "modules_to_save") or modules is None or "modules_to_save" not in modules \
                    or "disable_adapters" not in self.__dict__:
                raise  # (also while unpickling/deepcopying, before the module is set up)
            return getattr(self.current(), name)

    def extra_repr(self) -> str:
        return f"adapters={list(self.modules_to_save.keys())}, active={self.active_adapter}"
