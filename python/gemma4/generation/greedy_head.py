"""Exact greedy tokens through an int8 copy of the LM head (CPU, batch 1).

A greedy decode step needs only the argmax of the logits, yet the head is the largest single weight a step
reads (E2B: 262144 x 1536, 0.81 GB in bf16, 1.61 GB in fp32; 18% of a bf16 token's bytes). This head reads an
int8 copy instead (groups of 32, 0.40 GB + scales) and then, in full precision, only the rows that could still
be the argmax:

1. ``a = qgemm(x, q, s)``: every approximate logit (bf16 x: the int16-activation kernel; fp32 x goes in as bf16);
2. a bound ``B_i >= |y_i - a_i|`` per row, where ``y_i`` is what the full head computes (``gemma4::linear``,
   fp32 sums) — from the weights' own quantization error, x's roundings and every float rounding (``_bound``);
3. the rows whose upper bound ``a_i + B_i`` reaches the best lower bound ``max_j (a_j - B_j)``, both compared
   after the model's own rounding to its dtype and soft-cap (a monotone map under which logits can tie, and a
   tie goes to the first index, as ``torch.argmax`` does);
4. those rows' logits computed by the full head's own kernel (``gemma4::linear`` at one row of x works row by
   row, so a row computed alone equals the same row of the full call bit for bit), soft-capped exactly as the
   model does, and the first maximum among them is the token.

The token is therefore always the full head's, ties included. generate uses it where nothing else looks at the
logits: greedy search without logits processors, scores or logits returned, one sequence, a CPU model whose head
is the stock bf16/fp32 ``Linear`` (not LoRA-wrapped, no hooks; quantized models keep a float head by default).
``full_greedy_head()`` turns it off inside a block (tests and benchmarks compare the two).

The int8 copy is built at the first such generate call and kept on the model (rebuilt if the head's weight
changes). A tied head memory-mapped from its file (checkpoint loading) is read once to build it, a block of rows
at a time handed back to the file (quant.modules does the same for a quantized tied head), and the candidate
rows are read from the file (FileRows), so the table does not become resident.
"""
from __future__ import annotations

import math
import weakref

import torch

from gemma4 import ops
from gemma4.hf_format.safetensors import row_blocks_read_once
from gemma4.linear_choice import uses_gemma4_kernel
from gemma4.modeling.linear import Linear
from gemma4.modeling.loss import soft_cap
from gemma4.ops.quant import qgemm_cpu_isa
from gemma4.quant import formats
from gemma4.switch import Switch

from .logits_process import (ForcedBOSTokenLogitsProcessor, ForcedEOSTokenLogitsProcessor, MinLengthLogitsProcessor,
                             MinNewTokensLengthLogitsProcessor, NoRepeatNGramLogitsProcessor,
                             RepetitionPenaltyLogitsProcessor, SuppressTokensAtBeginLogitsProcessor,
                             SuppressTokensLogitsProcessor)

__all__ = ["GreedyHead", "SCORE_MAPS", "full_greedy_head", "greedy_head_for"]

_GREEDY_HEAD = Switch()  # off inside full_greedy_head()
_GROUP = 32
_X16_MAX = 32639.0  # the smallest int16 range qgemm's CPU kernels quantize x to (32767 rows, 32639 tiles)
_MIN_VOCAB = 1024  # below this the full head costs little and the copy is not worth its memory

# Logits processors that take each token's score alone through a non-decreasing map (a penalty's division or
# multiplication, or a constant -inf / 0), so bounds on the logits stay bounds on the scores. Exact types only: a
# subclass may do anything.
SCORE_MAPS = (RepetitionPenaltyLogitsProcessor, NoRepeatNGramLogitsProcessor, MinLengthLogitsProcessor,
              MinNewTokensLengthLogitsProcessor, SuppressTokensLogitsProcessor, SuppressTokensAtBeginLogitsProcessor,
              ForcedBOSTokenLogitsProcessor, ForcedEOSTokenLogitsProcessor)


def full_greedy_head():
    """Inside the block, greedy generate computes the full logits every step (no int8 head)."""
    return _GREEDY_HEAD.off()


class GreedyHead:
    """The argmax of ``soft_cap(x @ weight.T)`` for one row x, exactly, reading an int8 copy of ``weight``."""

    def __init__(self, weight: torch.Tensor, cap: float | None, rows_from_file=None):
        V, H = weight.shape
        self.dtype, self.cap = weight.dtype, cap
        self.key = (weight.data_ptr(), weight._version, weight.dtype, tuple(weight.shape))
        # weakly: a copy left on a model whose head moved on must not keep the old weight alive too
        self._weight, self.rows_from_file = weakref.ref(weight), rows_from_file
        self.qweight = torch.empty(V, H, dtype=torch.int8)  # [V, H]
        self.scales = torch.empty(V, H // _GROUP, dtype=torch.bfloat16)  # [V, H / 32]
        self.err = torch.empty(V, dtype=torch.float32)  # [V] max_k |w - dequant(w)|, rounded up
        self.wmax = torch.empty(V, dtype=torch.float32)  # [V] max_k |w| + err: bounds |w| and |dequant(w)|
        rows = formats.chunk_rows(H)
        up = 1.0 + 2.0 ** -20  # float64 -> float32 rounding of the maxima, rounded up
        with torch.no_grad():
            for start, block in row_blocks_read_once(weight, rows):  # [r, H] blocks
                q, s = formats.quantize_int8(block, _GROUP, torch.bfloat16)  # [r, H], [r, H / 32]
                self.qweight[start:start + rows] = q
                self.scales[start:start + rows] = s
                w64 = block.double()
                deq = (q.double().view(q.shape[0], -1, _GROUP) * s.double()[..., None]).view_as(w64)  # exact
                err = (w64 - deq).abs().amax(-1)  # [r]
                self.err[start:start + rows] = (err * up).float()
                self.wmax[start:start + rows] = ((w64.abs().amax(-1) + err) * up).float()
        self.wmax_max = float(self.wmax.max())
        self.finite = math.isfinite(self.wmax_max)
        # no soft-capped logit exceeds this (tanh <= 1), where there is a cap
        big = torch.tensor([torch.finfo(self.dtype).max], dtype=self.dtype)
        self.ceiling = float(soft_cap(big, cap)) if cap is not None else float("inf")

    FIRST_ROWS = 64  # rows computed in full in the first chunk

    def matches(self, weight: torch.Tensor) -> bool:
        return self.key == (weight.data_ptr(), weight._version, weight.dtype, tuple(weight.shape))

    def _bound(self, x: torch.Tensor, xb: torch.Tensor, approx: torch.Tensor) -> torch.Tensor | None:
        """B [V] with |y_i - approx_i| <= B_i, or None where a logit could overflow (the caller then takes the
        full head, which reports it).

        x [H] the head's input (model dtype), xb [H] the bf16 x given to qgemm, approx [V] its float32 result.
        |y - approx| <= |y - w.x| + |w.x - dq.x| + |dq.x - dq.x~| + |dq.x~ - approx|, where x~ is what the kernel
        multiplies (xb rounded to int16 steps of amax / 32639 per block of at most 128) and dq the int8 weight:
        - |y - w.x| <= g |w| |x| and |dq.x~ - approx| <= g |dq| |x~| + the output's bf16 rounding (2^-8 |approx|,
          taken as 2^-7), g = 2K * 2^-24 (fp32 sums of K terms, with the kernel's scale products);
        - |w.x - dq.x| <= err |x|_1;  |dq.x - dq.x~| <= |dq| |x - x~|_1 = |dq| D.
        """
        x64, xb64 = x.double(), xb.double()
        K = x.shape[0]
        l1 = float(x64.abs().sum())
        blocks = xb64.abs().view(-1, 128).amax(-1) if K % 128 == 0 else xb64.abs().amax().view(1)
        per = 128 if K % 128 == 0 else K
        D = float((x64 - xb64).abs().sum()) + float(blocks.sum()) * per * 0.52 / _X16_MAX  # half a step, and the
        # kernel's own rounding of x * (1 / step): up to 32767 * 2^-22 of a step more
        g = 2.0 * K * 2.0 ** -24
        c_err, c_w = l1, D + g * (2.0 * l1 + D)
        if not (l1 < 1e30 and self.wmax_max * (l1 + D) < 1e37):
            return None  # an approximate or exact logit could overflow: let the full head decide
        s = 1.0 + 2.0 ** -18  # the float32 roundings of this sum and of approx +- B
        return (self.err * (c_err * s) + self.wmax * (c_w * s)).add_(approx.abs(), alpha=2.0 ** -7 + 2.0 ** -18)

    def _exact(self, x: torch.Tensor, weight: torch.Tensor, rows: torch.Tensor, size: int, process=None) -> torch.Tensor:
        """The model's soft-capped logits [C] for weight rows `rows` [C], computed as the full head computes them:
        gemma4::linear at one row of x (row by row, so a row alone equals the same row of the full call), then
        the soft-cap on a [V] vector, where each index takes the same lanes of the elementwise kernels as in the
        model's [1, 1, V] logits; with `process`, generate's scores: those logits in float32 through it."""
        source = self.rows_from_file
        w = source.gather(weight, rows) if source is not None and source.valid(weight) \
            else weight.index_select(0, rows)  # [C, H]
        exact = ops.linear(x[None], w)[0]  # [C]
        logits = torch.zeros(size, dtype=self.dtype).index_copy_(0, rows, exact)  # [V]
        capped = soft_cap(logits, self.cap)  # [V]
        if process is not None:
            capped = process(capped.float()[None])[0]
        return capped.index_select(0, rows)  # [C]

    @torch.no_grad()
    def token(self, x: torch.Tensor, process=None) -> int | None:
        """The greedy token for x [H] (model dtype), or None where the full logits must be computed (x not
        finite, or logits that could overflow).

        process: None, or generate's logits processors for this step, scores [1, V] float32 -> [1, V], made only
        of maps that take each token's score alone through a non-decreasing function (SCORE_MAPS): the token is
        then the first argmax of the processed scores."""
        weight = self._weight()
        if weight is None or not self.matches(weight) or not self.finite or not bool(torch.isfinite(x).all()) \
                or qgemm_cpu_isa() == "dequant":
            return None  # (a forced "dequant" route rounds the dequantized weights to bf16: not what _bound covers)
        xb = x.to(torch.bfloat16)  # [H]
        approx = ops.qgemm(xb[None], self.qweight, self.scales)[0].float()  # [V]
        bound = self._bound(x, xb, approx)
        if bound is None:
            return None
        # Both bounds through the model's rounding and soft-cap, on [V] vectors as the model's logits are: a row
        # stays a candidate when its capped upper bound reaches the best capped lower bound. With processors, each
        # bound (widened by the ulps _below allows) goes through them too, as each token's map is non-decreasing.
        high = soft_cap((approx + bound).to(self.dtype), self.cap)  # [V]
        low = soft_cap((approx - bound).to(self.dtype), self.cap)  # [V]
        if process is None:
            floor = self._below(low.max())
        else:
            high = process(self._below(high, up=True).float()[None])[0]  # [V] float32
            floor = process(self._below(low).float()[None])[0].max()
            if not bool(torch.isfinite(floor)):
                return None  # every score -inf (all suppressed): the full path picks among them
        rows = torch.nonzero(high >= floor).flatten()  # [C] ascending
        if not rows.numel():
            return None
        V = approx.shape[0]
        # Where logits pass the soft-cap they tie at its ceiling (a random model's do), and the first index to reach
        # the highest score any row can have is the token: the rows that could reach it go first, in growing chunks
        # in index order. That score is the ceiling, or with processors the most a candidate's map gives it.
        if process is None:
            target = self.ceiling
            top = rows[high.index_select(0, rows) >= self._below(torch.tensor(self.ceiling, dtype=self.dtype))]
        else:
            most = process(torch.full((1, V), self.ceiling))[0].index_select(0, rows)  # [C]
            target = float(most.max())
            top = rows[high.index_select(0, rows) >= target]
        done, size = 0, self.FIRST_ROWS
        while done < top.shape[0]:
            chunk = top[done:done + size]  # [c]
            hits = torch.nonzero(self._exact(x, weight, chunk, V, process) >= target).flatten()
            if hits.numel():
                return int(chunk[int(hits[0])])
            done, size = done + size, size * 4
        capped = self._exact(x, weight, rows, V, process)  # [C]: none reached the highest score
        return int(rows[int(torch.argmax(capped.float()))])  # the first maximum, as the full path's argmax

    @staticmethod
    def _below(v: torch.Tensor, up: bool = False) -> torch.Tensor:
        """v four units in the last place lower (up: higher), in v's dtype. The soft-cap's tanh is computed to
        within an ulp, so it may fail to be monotone by about that much; comparisons of capped bounds allow for it."""
        limit = v.new_tensor(float("inf") if up else -float("inf"))
        for _ in range(4):
            v = torch.nextafter(v, limit)
        return v


def greedy_head_for(model) -> GreedyHead | None:
    """The model's GreedyHead (built at the first call, then cached on the model), or None where the full head
    must run: switched off, a model whose forward or head was replaced or hooked, a head that is not the stock
    bf16/fp32 Linear on the CPU, one the full path would not send to gemma4::linear, or a small vocabulary.
    The caller checks the rest (greedy, one sequence, nothing that reads the logits)."""
    if not _GREEDY_HEAD.on:
        return None
    head = getattr(model, "lm_head", None)
    w = getattr(head, "weight", None)
    eligible = _stock_forward(model) and not _hooked(model) and type(head) is Linear \
        and head.bias is None and not _hooked(head) and w.dtype in (torch.bfloat16, torch.float32) \
        and w.device.type == "cpu" and w.shape[0] >= _MIN_VOCAB and w.shape[1] % _GROUP == 0 \
        and uses_gemma4_kernel(torch.empty(1, w.shape[1], dtype=w.dtype), w)  # the head's input at a decode step
    cached = model.__dict__.get("_greedy_head")
    if not eligible or cached is None or not cached.matches(w):
        model.__dict__.pop("_greedy_head", None)  # a copy of a head the model no longer has (moved, cast, written)
    if not eligible:
        return None
    if "_greedy_head" not in model.__dict__:
        embed = model.model.embed_tokens
        source = embed.rows_from_file if embed.weight is w else None
        model.__dict__["_greedy_head"] = GreedyHead(w, model.config.final_logit_softcapping, source)
    return model.__dict__["_greedy_head"]


def _stock_forward(model) -> bool:
    """Whether the model's class runs Gemma4ForCausalLM's own forward (a subclass may compute its logits another
    way). By name: modeling.model imports generation, so this module cannot import it."""
    forward = type(model).forward
    return getattr(forward, "__module__", None) == "gemma4.modeling.model" \
        and getattr(forward, "__qualname__", None) == "Gemma4ForCausalLM.forward"


def _hooked(module) -> bool:
    """Whether calling the module runs more than its class's forward: hooks, a replaced forward, module.compile()."""
    hooks = torch.nn.modules.module
    return bool(module._forward_hooks or module._forward_pre_hooks or "forward" in module.__dict__
                or getattr(module, "_compiled_call_impl", None) is not None
                or hooks._global_forward_hooks or hooks._global_forward_pre_hooks)
