"""Shared test helpers: the backends present, and tolerances derived from the computation, never guessed.

Low precision: our error against a float32 (or float64) reference may be at most 2x the error of
the same computation done in plain PyTorch at the low precision (the flash-attention rule), plus
one unit in the last place at the output's magnitude so an exactly-rounded plain result does not
demand perfection.
"""
from collections.abc import Sequence

import torch

from gemma4 import _native
from gemma4.modeling.mlp import Gemma4Router

# The backends the op tests run on: cpu always, cuda when there is a GPU and a CUDA build.
BACKENDS = ["cpu"] + (["cuda"] if torch.cuda.is_available() and _native.build_info["cuda"] else [])


def has_kernel(op: str, device: torch.device) -> bool:
    """Whether gemma4::<op> has a kernel registered for device's backend."""
    key = {"cpu": "CPU", "cuda": "CUDA"}[torch.device(device).type]
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"gemma4::{op}", key)


def max_abs_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_lowp_close(ours: torch.Tensor, ref_hi: torch.Tensor, plain_lowp: torch.Tensor, factor: float = 2.0):
    """ours, plain_lowp: low-precision results; ref_hi: the float32/float64 reference."""
    assert ours.shape == ref_hi.shape == plain_lowp.shape, (ours.shape, ref_hi.shape, plain_lowp.shape)
    assert torch.isfinite(ours.double()).all(), "non-finite values in our output"
    ulp = torch.finfo(ours.dtype).eps * ref_hi.double().abs().max().item()
    err_ours = max_abs_err(ours, ref_hi)
    err_plain = max_abs_err(plain_lowp, ref_hi)
    assert err_ours <= factor * err_plain + ulp, (
        f"{ours.dtype} error {err_ours:.3e} > {factor} x plain-PyTorch error {err_plain:.3e} + ulp {ulp:.3e}")


def tight_tol(dtype: torch.dtype) -> dict:
    """assert_close tolerances for full-precision comparisons against the reference."""
    if dtype == torch.float64:
        return dict(rtol=1e-10, atol=1e-10)
    return dict(rtol=1e-5, atol=1e-5)


def assert_same(got, want):
    """Bit-identical results (a tensor or a tuple of tensors), e.g. strided vs contiguous inputs."""
    if isinstance(got, torch.Tensor):
        got, want = (got,), (want,)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0, equal_nan=True)


# MoE routing is a discrete choice per (layer, token): the top k of each token's router logits pick its experts.
# Two implementations that differ only by rounding (a quantized kernel and plain PyTorch, ours and llama.cpp)
# choose different experts where the k-th and (k+1)-th logits are closer than their difference, and a flipped
# expert changes that token's hidden state, which attention carries into every later token: an error that no
# tolerance can absorb without hiding real ones. Tests of MoE models therefore draw inputs whose routing is
# well conditioned (draw_routable_ids).


def _routers(model) -> list:
    """model's Gemma4Router modules, in order."""
    return [m for m in model.modules() if isinstance(m, Gemma4Router)]


def has_moe(model) -> bool:
    """Whether model routes tokens to experts (a Gemma4Router in it)."""
    return bool(_routers(model))


def router_margins(model, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor | None:
    """[B, T] ids (and their attention mask) -> [B, T]: per token, the smallest top-k margin (k-th minus (k+1)-th
    largest router logit, the logits the experts are chosen from) over the MoE layers; None for a model without
    MoE."""
    routers = _routers(model)
    if not routers:
        return None
    logits = []
    hooks = [r.proj.register_forward_hook(lambda mod, args, out: logits.append(out.detach())) for r in routers]
    try:
        with torch.no_grad():
            model(ids, attention_mask=attention_mask)
    finally:
        for h in hooks:
            h.remove()
    k = routers[0].top_k
    top = torch.stack(logits).double().topk(k + 1, dim=-1).values  # [layers, B*T, k+1], largest first
    return (top[..., k - 1] - top[..., k]).amin(0).view(ids.shape)


# Float32 tests of MoE models against a float64 model: the least top-k margin of the router logits
# (router_margins) that every token of the exact model must have. The float32 models' router logits differ
# from the exact model's by up to ~1.1e-5 (measured: tiny-26b-a4b, 144 quantized and fake-quantized models over
# the three formats, routing unflipped), so a margin of 2e-4 is over 8x the most that both logits of a choice
# can move together (2 x 1.1e-5). Without it ~0.4% of the choices have a margin below 1e-4, and an expert
# choice flipped in one model and not in the other gave a float32 ratio of 63 (GEMMA4_TEST_SEED=2072224682,
# int8: margin 6.8e-8 at layer 10, the quantized model's logit off by 7.7e-8). bfloat16 is not conditioned:
# its router logits differ by up to ~8e-2, and the quantized and the plain bfloat16 models alike flip ~10% of
# their choices, so both errors there are the flips' and the ratio compares like with like.
FLOAT32_ROUTER_MARGIN = 2e-4


def draw_routable_ids(model, rows: int, tokens: int, low: int, high: int, min_margin: float,
                      prefix: Sequence[int] = (), candidates: int = 16, rounds: int = 8) -> torch.Tensor | None:
    """[rows, len(prefix) + tokens] ids: prefix (the same in every row), then random ids in [low, high) from
    the global RNG. For a MoE model each random id is drawn again until every routing choice of its token has a
    margin >= min_margin (redraw_routable). None when the prefix's routing (which the weights alone decide) or a
    position finds no such id: draw another model. A model without MoE gets plain random ids
    (torch.randint(low, high, (rows, tokens)))."""
    ids = torch.tensor(list(prefix), dtype=torch.long).view(1, -1).expand(rows, -1)
    if not has_moe(model):  # dense: no discrete choice to condition
        return torch.cat([ids, torch.randint(low, high, (rows, tokens))], dim=1)
    if len(prefix) and router_margins(model, ids[:1]).min() < min_margin:
        return None
    ids = torch.cat([ids, torch.zeros(rows, tokens, dtype=torch.long)], dim=1)  # the tokens: drawn below
    return redraw_routable(model, ids, [len(prefix)] * rows, low, high, min_margin, candidates=candidates,
                           rounds=rounds)


def redraw_routable(model, ids: torch.Tensor, first: Sequence[int], low: int, high: int, min_margin: float,
                    attention_mask: torch.Tensor | None = None, candidates: int = 16,
                    rounds: int = 8) -> torch.Tensor | None:
    """[rows, T] ids (CPU) with positions first[b].. of each row b drawn again from [low, high) with the global RNG,
    so that every routing choice of each of those tokens in model (run with attention_mask: left padding) has a
    margin >= min_margin (router_margins). Causal attention makes a token's routing depend on it and the ids
    before it only, so the draw goes position by position, candidates at a time per row, up to rounds times.
    None when a position finds no such id, or when the rows run as one batch miss the margin (padding is not
    counted)."""
    ids, device = ids.clone(), next(model.parameters()).device
    for p in range(min(first), ids.shape[1]):
        rows = [b for b in range(ids.shape[0]) if p >= first[b]]
        chosen = {}
        for _ in range(rounds):
            pending = [b for b in rows if b not in chosen]
            drawn = torch.randint(low, high, (len(pending), candidates))
            seqs = ids[pending, :p + 1].repeat_interleave(candidates, dim=0)  # [pending * candidates, p + 1]
            seqs[:, p] = drawn.view(-1)
            masks = None if attention_mask is None else \
                attention_mask[pending, :p + 1].repeat_interleave(candidates, dim=0).to(device)
            margins = router_margins(model, seqs.to(device), masks)[:, p].cpu()
            ok = (margins >= min_margin).view(len(pending), candidates)
            for i, b in enumerate(pending):
                if ok[i].any():
                    chosen[b] = int(drawn[i, ok[i].nonzero()[0, 0]])
            if len(chosen) == len(rows):
                break
        else:
            return None
        for b, v in chosen.items():
            ids[b, p] = v
    # the test runs the rows as one batch: hold that very forward to the margin too
    mask = None if attention_mask is None else attention_mask.to(device)
    margins = router_margins(model, ids.to(device), mask).cpu()
    valid = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.cpu().bool()
    return ids if margins[valid].min() >= min_margin else None
