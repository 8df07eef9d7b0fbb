"""Quantized replacements of the model's float modules, calling ``gemma4::qgemm``.

    QuantLinear    for nn.Linear: buffers ``qweight`` / ``scales`` in the packed format of formats.py
                   (+ the float ``bias`` parameter); forward = ops.qgemm(x, qweight, scales, bias).
    QuantExperts   for the MoE expert bank (Gemma4Experts): ``gate_up_proj_qweight [E, 2Im, ...]`` etc.;
                   forward = ops.moe_experts_quant (tokens grouped by expert, each chosen expert's packed
                   weights through qgemm's kernels, in one op).

The quantized weights are frozen buffers; gradients flow to the inputs (QLoRA) and to the bias.
The scales keep their dtype when the model is cast (``model.half()`` must not round bf16 scales).

state_dict() holds the buffers as they are; save_pretrained writes compressed-tensors' ``pack-quantized``
names and layout instead (compressed_tensors.py; load_state_dict accepts both). Loading goes through the checkpoint loader's per-module hook
(``expected_hf_tensors`` / ``load_hf_tensor``): with ``load_source = "float"`` the module receives the
checkpoint's float ``weight`` and quantizes it on arrival (quantize-on-load: the float weight of one
module at a time), with ``"compressed-tensors"`` it receives the packed tensors and repacks them.
"""
from __future__ import annotations

import torch
from torch import nn

from gemma4 import ops
from gemma4.hf_format.safetensors import row_blocks_read_once
from gemma4.switch import Switch

from . import compressed_tensors as ct
from . import formats

__all__ = ["QuantLinear", "QuantExperts", "row_layout_only"]


def _quantize(w: torch.Tensor, bits: int, group_size: int | None, scale_dtype: torch.dtype, trained_grid: bool):
    """float [N, K] -> (qweight, scales) in the packed format."""
    if bits == 8:
        return formats.quantize_int8(w, group_size, scale_dtype)
    if trained_grid:
        return formats.quantize_int4_trained_grid(w, group_size, scale_dtype)[:2]
    return formats.quantize_int4(w, group_size, scale_dtype)


@torch.no_grad()
def _quantize_into(q: "QuantLinear", w: torch.Tensor, trained_grid: bool) -> None:
    """Fill q's packed buffers from its float weight w [N, K] a block of rows at a time: the peak is the
    packed weight plus one block (the whole-weight quantizers would also hold a list of packed chunks and
    their concatenation, two more packed copies). A memory-mapped w (the tied head's table) has each
    block's pages handed back after it, so the pass does not leave the whole table resident."""
    rows = formats.chunk_rows(w.shape[1])
    for start, block in row_blocks_read_once(w, rows):
        qweight, scales = _quantize(block, q.bits, q.group_size, q.scales.dtype, trained_grid)
        q.qweight[start:start + rows].copy_(qweight)
        q.scales[start:start + rows].copy_(scales)


def _packed_shapes(out_features: int, in_features: int, bits: int, group_size: int | None):
    group = group_size or in_features
    if in_features % 32 or in_features % group:
        raise ValueError(f"in_features={in_features} cannot be quantized in groups of {group}: it must be a "
                         "multiple of 32 and of the group size (use group_size 32 or 64, or None)")
    cols = in_features // 2 if bits == 4 else in_features
    return (out_features, cols), (out_features, in_features // group)


def _ct_names(module) -> dict[str, tuple[int, ...]]:
    """compressed-tensors tensor names and shapes of a QuantLinear."""
    n, k = module.out_features, module.in_features
    names = {"weight_packed": (n, k * module.bits // 32), "weight_scale": (n, k // (module.group_size or k)),
             "weight_shape": (2,)}
    if module.bias is not None:
        names["bias"] = (n,)
    return names


@torch.no_grad()
def _load_packed(module, qname: str, sname: str, shape: tuple[int, ...], part: str, tensor: torch.Tensor) -> None:
    """One compressed-tensors tensor (part = "packed" | "scale" | "shape") into the buffers qname/sname of a
    weight of logical shape [..., N, K]. A scale of another float dtype replaces the buffer (never rounded)."""
    k = shape[-1]
    if part == "packed":
        levels = ct.unpack_int32(tensor, module.bits, k).reshape(*shape)
        q = formats.pack_int4(levels.reshape(-1, k)).reshape(getattr(module, qname).shape) if module.bits == 4 \
            else levels
        getattr(module, qname).copy_(q)
    elif part == "scale":
        old = getattr(module, sname)
        if tuple(tensor.shape) != tuple(old.shape) or not tensor.is_floating_point():
            raise ValueError(f"scale must be a float tensor of shape {tuple(old.shape)}, got {tensor.dtype} "
                             f"{tuple(tensor.shape)}")
        if tensor.dtype == old.dtype:
            old.copy_(tensor)
        else:
            module._buffers[sname] = tensor.to(old.device)
    elif part == "shape":
        if tuple(int(v) for v in tensor.reshape(-1).tolist()) != tuple(shape[-2:]):
            raise ValueError(f"weight_shape {tensor.tolist()} differs from the module's {list(shape[-2:])}")
    else:
        raise ValueError(f"unexpected tensor {part!r}")


def _load_named(module, names, state_dict, prefix, missing_keys, error_msgs) -> None:
    """load_state_dict for a module whose on-disk names are not its attributes: each name through load_hf_tensor."""
    saved = module.load_source
    module.load_source = "compressed-tensors"
    try:
        for name in names:
            if prefix + name not in state_dict:
                missing_keys.append(prefix + name)
                continue
            try:
                module.load_hf_tensor(name, state_dict[prefix + name])
            except (ValueError, RuntimeError) as e:
                error_msgs.append(f"{prefix + name}: {e}")
    finally:
        module.load_source = saved


class _KeepsScaleDtype(nn.Module):
    """Module casts (``.to(dtype)``, ``.half()``) move the quantized buffers but never change their dtype."""

    _frozen_buffers: tuple[str, ...] = ()
    # state_dict() gives the buffers; save_pretrained switches this on to get compressed-tensors tensors
    save_as_compressed_tensors = False

    def _apply(self, fn, recurse=True):
        kept = {name: self._buffers.pop(name) for name in self._frozen_buffers if name in self._buffers}
        try:
            super()._apply(fn, recurse)
        finally:
            for name, t in kept.items():
                new = fn(t)  # a move (.to(device), to_empty) keeps the dtype; a cast is undone, exactly:
                self._buffers[name] = new if new.dtype == t.dtype else t.to(new.device)
        return self


_TILES = Switch()  # off inside row_layout_only()


def row_layout_only():
    """A ``with`` block in which QuantLinear does not tile its buffers for CPU inference (buffers already tiled stay
    so until a move, a cast or a forward under autograd): for comparing the two layouts."""
    return _TILES.off()


def _cpu_has_tiled_kernel() -> bool:
    return _TILES.on and ops.quant.qgemm_cpu_isa() == "avx512vnni"


class QuantLinear(_KeepsScaleDtype):
    """Weight-only quantized nn.Linear: ``y = x @ dequant(qweight, scales)^T + bias``.

    CPU inference layout: on a CPU whose qgemm runs AVX512-VNNI, a forward without autograd on 16-bit x turns int4
    groups-of-32 buffers into the 16-row tiled layout (formats.tile16; 1.5-2x faster at 1-32 rows of x), and a
    forward with autograd turns them back. Everything else sees the row layout: state_dict, saving, ``dequantize``,
    loading, and moves to other devices or dtypes (``_apply`` turns the buffers back first).
    """

    _frozen_buffers = ("qweight", "scales")

    def __init__(self, in_features: int, out_features: int, bias: bool = False, bits: int = 4,
                 group_size: int | None = 32, scale_dtype: torch.dtype = torch.bfloat16,
                 dtype: torch.dtype | None = None, device=None):
        super().__init__()
        if bits not in (4, 8):
            raise ValueError(f"QuantLinear: bits must be 4 or 8, got {bits}")
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size = bits, group_size
        self.trained_grid = False  # quantize-on-load: recover a QAT grid instead of rounding
        self.load_source = "float"  # what load_hf_tensor receives: "float" or "compressed-tensors"
        qshape, sshape = _packed_shapes(out_features, in_features, bits, group_size)
        self.register_buffer("qweight", torch.zeros(qshape, dtype=torch.uint8 if bits == 4 else torch.int8,
                                                    device=device))
        self.register_buffer("scales", torch.zeros(sshape, dtype=scale_dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, bits: int = 4, group_size: int | None = 32,
                    scale_dtype: torch.dtype = torch.bfloat16, trained_grid: bool = False) -> "QuantLinear":
        w = linear.weight
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, bits, group_size, scale_dtype,
                dtype=w.dtype, device=w.device)
        _quantize_into(q, w.detach(), trained_grid)
        if linear.bias is not None:
            q.bias.copy_(linear.bias)
        return q

    # ---- the CPU inference layout ----
    @property
    def tiled(self) -> bool:
        """Whether the buffers hold the 16-row tiled layout (see the class docstring)."""
        return self.qweight.dim() == 3

    def row_layout(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(qweight, scales) in the row layout of formats.py, whatever the buffers hold."""
        return formats.untile16(self.qweight, self.scales) if self.tiled else (self.qweight, self.scales)

    @torch.no_grad()
    def use_rows(self) -> None:
        """Turn tiled buffers back into the row layout (a no-op on rows)."""
        if self.tiled:
            with torch.inference_mode(False):
                self.qweight, self.scales = self.row_layout()

    def layout_for(self, x: torch.Tensor) -> None:
        """Pick the buffers' layout for a call on x: tiled for inference on 16-bit CPU x where the CPU has the tiled
        kernel, rows under autograd; left alone under torch.compile and for tensor subclasses (fake tensors)."""
        if type(x) is not torch.Tensor or torch.compiler.is_compiling():
            return
        if torch.is_grad_enabled():
            self.use_rows()
        elif x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16) and self._tiles_here():
            with torch.inference_mode(False), torch.no_grad():
                self.qweight, self.scales = formats.tile16(self.qweight, self.scales)

    def _tiles_here(self) -> bool:
        """Whether CPU inference would tile the buffers (row layout now, tileable, the CPU has the kernel)."""
        return (not self.tiled and self.bits == 4 and self.group_size == 32 and self.qweight.device.type == "cpu"
                and formats.tileable(self.qweight, self.scales) and _cpu_has_tiled_kernel())

    @torch.no_grad()
    def tile_now(self) -> None:
        """Tile the buffers in place (formats.tile16_) where CPU inference would tile them at its first forward,
        which copies them: for a module whose buffers nothing else holds yet (the tied head quantize-on-load has
        just made, whose copy would be the first forward's peak)."""
        if self._tiles_here() and self.qweight.is_contiguous() and self.scales.is_contiguous():
            self.qweight, self.scales = formats.tile16_(self.qweight, self.scales)

    def _apply(self, fn, recurse=True):
        self.use_rows()  # moves and casts see the row layout; the next CPU inference forward tiles again
        return super()._apply(fn, recurse)

    @torch.no_grad()
    def load_quantized(self, qweight: torch.Tensor, scales: torch.Tensor) -> None:
        """Fill from packed tensors (checked against this module's shapes and dtypes)."""
        self.use_rows()
        for name, new in (("qweight", qweight), ("scales", scales)):
            old = getattr(self, name)
            if new.shape != old.shape or new.dtype != old.dtype:
                raise ValueError(f"QuantLinear: {name} must be {old.dtype} {tuple(old.shape)}, "
                                 f"got {new.dtype} {tuple(new.shape)}")
        self.qweight.copy_(qweight)
        self.scales.copy_(scales)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight the kernel multiplies with, ``[out, in]`` (exact in float32)."""
        return formats.dequantize(self.qweight, self.scales, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.layout_for(x)
        bias = self.bias
        if bias is not None and bias.dtype != x.dtype:
            bias = bias.to(x.dtype)
        return ops.qgemm(x, self.qweight, self.scales, bias)

    # ---- on disk: compressed-tensors names (weight_packed, weight_scale, weight_shape) ----
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        qweight, scales = self.row_layout()
        if not self.save_as_compressed_tensors:
            super()._save_to_state_dict(destination, prefix, keep_vars)
            destination[prefix + "qweight"], destination[prefix + "scales"] = qweight, scales
            return
        destination[prefix + "weight_packed"] = ct.pack_int32(formats.levels(qweight), self.bits)
        destination[prefix + "weight_scale"] = scales
        destination[prefix + "weight_shape"] = torch.tensor([self.out_features, self.in_features])
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        self.use_rows()
        if prefix + "qweight" in state_dict:
            return super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                                 unexpected_keys, error_msgs)
        _load_named(self, _ct_names(self), state_dict, prefix, missing_keys, error_msgs)

    # ---- checkpoint loader hook (gemma4.checkpoint) ----
    def expected_hf_tensors(self) -> dict[str, tuple[int, ...]]:
        wanted = {"weight": (self.out_features, self.in_features)} if self.load_source == "float" else _ct_names(self)
        if self.bias is not None:
            wanted["bias"] = (self.out_features,)
        return wanted

    @torch.no_grad()
    def load_hf_tensor(self, name: str, tensor: torch.Tensor) -> None:
        self.use_rows()
        if name == "bias":
            self.bias.copy_(tensor)
        elif name == "weight":
            self.load_quantized(*_quantize(tensor, self.bits, self.group_size, self.scales.dtype, self.trained_grid))
        else:
            _load_packed(self, "qweight", "scales", (self.out_features, self.in_features), name.removeprefix("weight_"),
                         tensor)

    def extra_repr(self) -> str:
        group = self.group_size or "channel"
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"int{self.bits}, group={group}, scales={str(self.scales.dtype).removeprefix('torch.')}")


class QuantExperts(_KeepsScaleDtype):
    """The MoE expert bank with int4/int8 weights: the packed form of ``gate_up_proj [E, 2Im, H]`` and
    ``down_proj [E, H, Im]`` (each expert's matrix packed like a QuantLinear's)."""

    _frozen_buffers = ("gate_up_proj_qweight", "gate_up_proj_scales", "down_proj_qweight", "down_proj_scales")

    def __init__(self, hidden_size: int, num_experts: int, moe_intermediate_size: int, activation: str,
                 bits: int = 4, group_size: int | None = 32, scale_dtype: torch.dtype = torch.bfloat16, device=None):
        super().__init__()
        self.num_experts, self.hidden_size, self.moe_intermediate_size = num_experts, hidden_size, moe_intermediate_size
        self.activation, self.bits, self.group_size = activation, bits, group_size
        self.trained_grid = False
        self.load_source = "float"
        self.shapes = {"gate_up_proj": (num_experts, 2 * moe_intermediate_size, hidden_size),
                       "down_proj": (num_experts, hidden_size, moe_intermediate_size)}
        qdtype = torch.uint8 if bits == 4 else torch.int8
        for name, (n, k) in (("gate_up_proj", (2 * moe_intermediate_size, hidden_size)),
                             ("down_proj", (hidden_size, moe_intermediate_size))):
            qshape, sshape = _packed_shapes(n, k, bits, group_size)
            self.register_buffer(f"{name}_qweight", torch.zeros((num_experts, *qshape), dtype=qdtype, device=device))
            self.register_buffer(f"{name}_scales", torch.zeros((num_experts, *sshape), dtype=scale_dtype, device=device))

    @classmethod
    @torch.no_grad()
    def from_experts(cls, experts: nn.Module, bits: int = 4, group_size: int | None = 32,
                     scale_dtype: torch.dtype = torch.bfloat16, trained_grid: bool = False) -> "QuantExperts":
        e, two_im, h = experts.gate_up_proj.shape
        q = cls(h, e, two_im // 2, experts.activation, bits, group_size, scale_dtype, device=experts.gate_up_proj.device)
        for name in ("gate_up_proj", "down_proj"):
            w = getattr(experts, name).detach()
            for i in range(e):
                qw, sc = _quantize(w[i], bits, group_size, scale_dtype, trained_grid)
                getattr(q, f"{name}_qweight")[i].copy_(qw)
                getattr(q, f"{name}_scales")[i].copy_(sc)
        return q

    def dequantize(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``gate_up_proj`` or ``down_proj`` as a float ``[E, out, in]`` tensor (exact in float32)."""
        qw, sc = getattr(self, f"{name}_qweight"), getattr(self, f"{name}_scales")
        return torch.stack([formats.dequantize(qw[i], sc[i], dtype) for i in range(qw.shape[0])])

    def forward(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """x [N, H], weights [N, K] routing weights, indices [N, K] expert ids -> [N, H] in x.dtype."""
        return ops.moe_experts_quant(x, weights, indices, self.gate_up_proj_qweight, self.gate_up_proj_scales,
                                     self.down_proj_qweight, self.down_proj_scales, self.activation)

    # ---- on disk: <w>_packed / <w>_scale / <w>_shape per weight w (compressed_tensors.py) ----
    def _ct_names(self) -> dict[str, tuple[int, ...]]:
        names = {}
        for w, (e, n, k) in self.shapes.items():
            names.update({f"{w}_packed": (e, n, k * self.bits // 32),
                          f"{w}_scale": tuple(getattr(self, f"{w}_scales").shape), f"{w}_shape": (2,)})
        return names

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if not self.save_as_compressed_tensors:
            return super()._save_to_state_dict(destination, prefix, keep_vars)
        for w, (e, n, k) in self.shapes.items():
            destination[f"{prefix}{w}_packed"] = ct.pack_int32(
                formats.levels(getattr(self, f"{w}_qweight").reshape(e * n, -1)).reshape(e, n, k), self.bits)
            destination[f"{prefix}{w}_scale"] = getattr(self, f"{w}_scales")
            destination[f"{prefix}{w}_shape"] = torch.tensor([n, k])

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        if prefix + "gate_up_proj_qweight" in state_dict:
            return super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                                 unexpected_keys, error_msgs)
        _load_named(self, self._ct_names(), state_dict, prefix, missing_keys, error_msgs)

    # ---- checkpoint loader hook (gemma4.checkpoint) ----
    def expected_hf_tensors(self) -> dict[str, tuple[int, ...]]:
        return dict(self.shapes) if self.load_source == "float" else self._ct_names()

    @torch.no_grad()
    def load_hf_tensor(self, name: str, tensor: torch.Tensor) -> None:
        if name in self.shapes:  # a float expert bank: quantize expert by expert
            if tuple(tensor.shape) != self.shapes[name]:
                raise ValueError(f"{name} must have shape {self.shapes[name]}, got {tuple(tensor.shape)}")
            for i in range(tensor.shape[0]):
                qw, sc = _quantize(tensor[i], self.bits, self.group_size, getattr(self, f"{name}_scales").dtype,
                                   self.trained_grid)
                getattr(self, f"{name}_qweight")[i].copy_(qw)
                getattr(self, f"{name}_scales")[i].copy_(sc)
            return
        w, _, part = name.rpartition("_")
        if w not in self.shapes:
            raise ValueError(f"unexpected tensor {name!r}")
        _load_packed(self, f"{w}_qweight", f"{w}_scales", self.shapes[w], part, tensor)

    def extra_repr(self) -> str:
        return (f"experts={self.num_experts}, hidden={self.hidden_size}, intermediate={self.moe_intermediate_size}, "
                f"int{self.bits}, group={self.group_size or 'channel'}")
