"""RoPE inverse frequencies and attention scaling for every RoPE type transformers 5.17 accepts for Gemma 4.

One function, `rope_frequencies(params, head_dim, max_position_embeddings, seq_len)`, returns what
transformers' `Gemma4TextRotaryEmbedding` holds for one layer type: the inverse frequencies
(float32 [head_dim // 2]) and the factor its cos/sin are multiplied by. The expressions are
transformers' own (modeling_rope_utils), evaluated in the same order and dtypes, so the float32
rounding is the same:

* default:      1 / theta^(2j/d), d = head_dim (partial_rotary_factor and factor are ignored, as there).
* proportional: the first int(p*d // 2) pairs get 1 / theta^(2j/d) (exponent over the FULL head size),
                the rest 0 (not rotated); all divided by factor.
* linear:       the default frequencies over d' = int(d*p), divided by factor.
* dynamic:      NTK-aware: theta grows with the sequence length past max_position_embeddings,
                theta * ((factor * L / max_pos) - (factor - 1))^(d'/(d'-2)), L = max(seq_len, max_pos).
                The model recomputes it as sequences grow (see Gemma4Model._update_dynamic_rope).
* yarn:         a ramp between interpolated (1/factor) and extrapolated frequencies over the pairs
                whose rotation count at original_max_position_embeddings lies between beta_slow and
                beta_fast; cos/sin are scaled by the attention factor (0.1 ln(factor) + 1 unless given).
* llama3:       low frequencies divided by factor, high ones kept, a smooth blend between.

Partial rotation (partial_rotary_factor p < 1) with linear / dynamic / yarn / llama3: transformers
5.17 computes d'/2 = int(d*p)/2 frequencies and then fails to apply them to a d-wide Gemma 4 head (a
shape error). gemma4 applies them in Gemma 4's own partial layout, that of "proportional": the
frequencies fill the first d'/2 of the head's d/2 rotation pairs (j, j + d/2) and the rest are 0, not
rotated. That is an extension beyond transformers, tested against its own reference.

yarn's `truncate` key: transformers 5.17 reads it from the outer (per layer type) dict, so for Gemma 4
it is always true; gemma4 does the same, so both give the same numbers for the same file.
"""
from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["ROPE_TYPES", "REQUIRED_KEYS", "rope_frequencies", "rope_inv_freq"]

ROPE_TYPES = ("default", "proportional", "linear", "dynamic", "yarn", "llama3")

# The frequencies are the config's, computed on the CPU whatever the default device: a model built under
# torch.device("meta") (checkpoint loading) asks for its attention scaling here, and arange on a meta tensor runs
# torch's Python decomposition, whose first call imports sympy and torch.fx's symbolic shapes (~50 MB for good).
_HOST = "cpu"

# Keys each type needs beyond rope_type and rope_theta (transformers' _validate_*_rope_parameters).
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "linear": ("factor",),
    "dynamic": ("factor",),
    "yarn": ("factor", "original_max_position_embeddings"),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


def _pad(inv_freq: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[d'/2] -> [head_dim/2]: pairs past d'/2 are not rotated (frequency 0), Gemma 4's partial layout."""
    missing = head_dim // 2 - inv_freq.numel()
    if missing <= 0:
        return inv_freq
    return torch.cat((inv_freq, torch.zeros(missing, dtype=torch.float32, device=_HOST)))


def _plain(base, dim: int, over: int | None = None) -> torch.Tensor:
    """1 / base^(2j/over) for the dim / 2 pairs (over = dim unless given; proportional divides by the
    whole head), with transformers' int64 arange converted to float32."""
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64, device=_HOST).to(dtype=torch.float) / (over or dim)))


def rope_frequencies(params: dict[str, Any], head_dim: int, max_position_embeddings: int,
                     seq_len: int | torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """(inv_freq float32 [head_dim // 2] on CPU, attention scaling) for one layer type's rope_parameters.

    seq_len matters for "dynamic" only: the sequence length the frequencies are stretched to (None: the
    model's max_position_embeddings, i.e. no stretch). Pass a tensor, as transformers' forward does, to
    get its float32 arithmetic; an int gives the float64 arithmetic of its initialisation.
    """
    rope_type = params["rope_type"]
    theta = params["rope_theta"]
    if rope_type == "default":
        return _plain(theta, head_dim), 1.0
    partial = params.get("partial_rotary_factor", 1.0)
    if rope_type == "proportional":
        rope_angles = int(partial * head_dim // 2)
        return _pad(_plain(theta, 2 * rope_angles, head_dim), head_dim) / params.get("factor", 1.0), 1.0
    dim = int(head_dim * partial)
    factor = params["factor"]
    if rope_type == "linear":
        inv_freq = _plain(theta, dim)
        inv_freq /= factor
        return _pad(inv_freq, head_dim), 1.0
    if rope_type == "dynamic":
        if seq_len is None:
            seq_len = max_position_embeddings
        elif isinstance(seq_len, torch.Tensor):
            seq_len = torch.maximum(seq_len, torch.tensor(max_position_embeddings, dtype=seq_len.dtype, device=seq_len.device))
        else:
            seq_len = max(seq_len, max_position_embeddings)
        base = theta * ((factor * seq_len / max_position_embeddings) - (factor - 1)) ** (dim / (dim - 2))
        return _pad(_plain(base, dim), head_dim), 1.0
    if rope_type == "yarn":
        return _yarn(params, theta, dim, head_dim, max_position_embeddings)
    if rope_type == "llama3":
        return _pad(_llama3(params, _plain(theta, dim)), head_dim), 1.0
    raise ValueError(f"unsupported rope_type {rope_type!r} (supported: {', '.join(ROPE_TYPES)})")


def _yarn(params: dict[str, Any], base: float, dim: int, head_dim: int,
          max_position_embeddings: int) -> tuple[torch.Tensor, float]:
    factor = params["factor"]
    original = params["original_max_position_embeddings"]
    if factor is None:
        factor = max_position_embeddings / original

    def mscale(scale, m=1):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        m, m_all = params.get("mscale"), params.get("mscale_all_dim")
        attention_factor = float(mscale(factor, m) / mscale(factor, m_all)) if m and m_all else mscale(factor)
    beta_fast = params.get("beta_fast") or 32
    beta_slow = params.get("beta_slow") or 1

    def correction_dim(rotations):  # the pair index that turns `rotations` times over `original` positions
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = math.floor(correction_dim(beta_fast)), math.ceil(correction_dim(beta_slow))  # truncate=True
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32, device=_HOST) - low) / (high - low), 0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2, device=_HOST).to(dtype=torch.float) / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    extrapolation_share = 1 - ramp
    inv_freq = interpolation * (1 - extrapolation_share) + extrapolation * extrapolation_share
    return _pad(inv_freq, head_dim), attention_factor


def _llama3(params: dict[str, Any], inv_freq: torch.Tensor) -> torch.Tensor:
    factor = params["factor"]
    low_f, high_f = params["low_freq_factor"], params["high_freq_factor"]
    old_context = params["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_context / low_f, old_context / high_f
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low_f) / (high_f - low_f)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def rope_inv_freq(rope_type: str, rope_theta: float, head_dim: int, partial_rotary_factor: float = 1.0,
                  factor: float = 1.0) -> torch.Tensor:
    """The inverse frequencies of a default / proportional / linear layer type (no length dependence)."""
    params = {"rope_type": rope_type, "rope_theta": rope_theta, "partial_rotary_factor": partial_rotary_factor,
              "factor": factor}
    return rope_frequencies(params, head_dim, max_position_embeddings=1)[0]
