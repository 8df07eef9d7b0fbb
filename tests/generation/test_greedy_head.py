"""The exact greedy head (generation/greedy_head.py): greedy tokens read from an int8 copy of the LM head plus the
rows that could still win, always equal to the full head's argmax (ties after the soft-cap included), on every
kernel instruction set, dtype and variant family; used only where nothing else reads the logits."""
from __future__ import annotations

import os

import pytest
import torch

from gemma4 import ops
from gemma4.checkpoint import SAFE_WEIGHTS_NAME
from gemma4.generation import RepetitionPenaltyLogitsProcessor, SuppressTokensLogitsProcessor, full_greedy_head
from gemma4.generation.greedy_head import GreedyHead, greedy_head_for
from gemma4.hf_format.safetensors import _PM_PRESENT, page_map
from gemma4.modeling import Gemma4ForCausalLM
from gemma4.modeling.loss import soft_cap
from gemma4.modeling.random_model import build_random_model
from gemma4.ops.linear import linear_cpu_isa
from gemma4.ops.quant import qgemm_cpu_isa
from gemma4.presets import TEST_PRESETS, get_preset, preset_dict

DTYPES = [torch.bfloat16, torch.float32]


def _isas(setter, names):
    """The instruction sets among `names` this CPU runs (setting one it lacks raises)."""
    out = [n for n in names if _settable(setter, n)]
    setter("auto")
    return out


def _settable(setter, name) -> bool:
    try:
        setter(name)
        return True
    except RuntimeError:
        return False


LINEAR_ISAS = _isas(linear_cpu_isa, ["avx2", "avx512"])
QGEMM_ISAS = _isas(qgemm_cpu_isa, ["avx2", "avx512", "avx512vnni"])


@pytest.fixture(params=[(a, b) for a in LINEAR_ISAS for b in QGEMM_ISAS], ids=lambda p: f"{p[0]}-{p[1]}")
def isas(request):
    linear_cpu_isa(request.param[0])
    qgemm_cpu_isa(request.param[1])
    yield request.param
    linear_cpu_isa("auto")
    qgemm_cpu_isa("auto")


def _full_token(x, w, cap) -> int:
    """The full path: gemma4::linear on one row, the soft-cap in the model dtype, argmax of the float32 logits."""
    return int(torch.argmax(soft_cap(ops.linear(x[None, None], w), cap)[0, -1].float()))


def _head(V, H, dtype, g, near_ties=True):
    """A random head [V, H] (float32 before the cast) with rows that nearly tie: copies of other rows, exact or
    off by one unit here and there, so the bound cannot separate them and the full-precision pass decides (ties
    by the first index); every row holds one weight 40x the others, so its group's int8 steps are coarse."""
    w = torch.randn(V, H, generator=g) * 0.05
    w[torch.arange(V), torch.randint(0, H, (V,), generator=g)] *= 40
    if near_ties:
        src = torch.randint(0, V, (V // 8,), generator=g)
        dst = torch.randint(0, V, (V // 8,), generator=g)
        w[dst] = w[src]
        bump = dst[::2]
        cols = torch.randint(0, H, (bump.numel(),), generator=g)
        w[bump, cols] = torch.nextafter(w[bump, cols].to(dtype), torch.ones(bump.numel(), dtype=dtype)).float()
    return w.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cap", [30.0, None])
def test_token_is_the_full_heads_argmax(isas, dtype, cap):
    """Random heads and inputs, at scales where the soft-cap is far (the bound separates rows), near (ties in
    the capped dtype) and saturated (hundreds of logits tie at the cap's ceiling; the first index wins)."""
    g = torch.Generator().manual_seed(7)
    V, H = 3000, 160  # K = 160: not a multiple of 128, so the bound takes x's whole-row maximum
    w = _head(V, H, dtype, g)
    head = GreedyHead(w, cap)
    for scale in (0.1, 1.0, 20.0, 400.0):
        for _ in range(6):
            x = (torch.randn(H, generator=g) * scale).to(dtype)
            assert head.token(x) == _full_token(x, w, cap)
    # the hidden state the row with the largest logit shares with a copy of itself: the first copy wins
    x = w[17].clone()
    w2 = w.clone()
    w2[5] = w2[17]
    assert GreedyHead(w2, cap).token(x) == _full_token(x, w2, cap)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("penalty", [1.3, 1.01, 0.8])
def test_token_through_score_maps(isas, dtype, penalty):
    """With per-token score maps (a repetition penalty on the first 300 tokens, 50 suppressed ones), the token is
    the first argmax of the processed full logits, also where hundreds of logits tie at the cap's ceiling and the
    penalized ones among them drop below it (by less than the bounds' slack at 1.01, so they stay candidates)."""
    g = torch.Generator().manual_seed(9)
    V, H = 3000, 160
    w = _head(V, H, dtype, g)
    head = GreedyHead(w, 30.0)
    seen = torch.arange(300)[None]  # [1, 300] token ids "in the sequence"
    procs = [RepetitionPenaltyLogitsProcessor(penalty),
             SuppressTokensLogitsProcessor(torch.randint(0, V, (50,), generator=g).tolist())]

    def process(scores):
        for p in procs:
            scores = p(seen, scores)
        return scores

    for scale in (0.1, 1.0, 20.0, 400.0):
        for _ in range(6):
            x = (torch.randn(H, generator=g) * scale).to(dtype)
            want = int(torch.argmax(process(soft_cap(ops.linear(x[None, None], w), 30.0)[0, -1:].float())))
            assert head.token(x, process) == want


def test_exact_pass_overrules_the_int8_copy(isas):
    """48 rows close to one another (a base row plus noise a quarter of the weights' size) and inputs along the
    base row: the int8 copy's own argmax picks another row in some of them, the greedy head never does (fp32,
    where the logits resolve those differences; in bf16 the copy misranks far more rarely)."""
    g = torch.Generator().manual_seed(7)
    V, H = 3000, 160
    w = torch.randn(V, H, generator=g) * 0.05
    base = w[0].clone()
    family = torch.randperm(V, generator=g)[:48]
    w[family] = base + torch.randn(48, H, generator=g) * 0.012
    head = GreedyHead(w, 30.0)
    misranked = 0
    for scale in (0.1, 1.0, 20.0, 400.0):
        for _ in range(50):
            x = (base + torch.randn(H, generator=g) * 0.02) * scale
            want = _full_token(x, w, 30.0)
            assert head.token(x) == want
            approx = ops.qgemm(x.to(torch.bfloat16)[None], head.qweight, head.scales).float()
            misranked += int(torch.argmax(soft_cap(approx, 30.0)[0])) != want
    assert misranked >= 3


@pytest.mark.parametrize("dtype", DTYPES)
def test_bound_holds(isas, dtype):
    """|full head's logit - int8 approximation| <= the bound, row by row, at several scales of x and K = 256
    (blocks of 128) and 96 (one block)."""
    g = torch.Generator().manual_seed(3)
    for H in (256, 96):
        w = _head(2048, H, dtype, g, near_ties=False)
        head = GreedyHead(w, 30.0)
        for scale in (1e-3, 1.0, 50.0):
            x = (torch.randn(H, generator=g) * scale * (1 + 10 * torch.rand(H, generator=g))).to(dtype)
            xb = x.to(torch.bfloat16)
            approx = ops.qgemm(xb[None], head.qweight, head.scales)[0].float()
            bound = head._bound(x, xb, approx)
            exact = ops.linear(x[None], w)[0].double()
            err = (exact - approx.double()).abs()
            assert (err <= bound.double()).all(), float((err / bound.double()).max())
            assert float((err / bound.double()).max()) > 1e-3  # the bound is not vacuous either


@pytest.mark.parametrize("dtype", DTYPES)
def test_bound_is_nearly_reached_by_a_worst_case_row(isas, dtype):
    """A row whose weights all sit half an int8 step off their levels (every weight's error is the row's largest)
    and an x whose signs follow those errors: the error comes within a few percent of the bound, so a bound any
    smaller would fail test_bound_holds' check on this row."""
    g = torch.Generator().manual_seed(5)
    H, step = 256, 2.0 ** -7
    levels = torch.randint(-126, 126, (H,), generator=g).float() + 0.5  # (2q + 1) / 2: exact in bf16
    levels[::32] = 127.0  # each group's largest weight on level 127 exactly: its scale is `step`
    w = torch.randn(64, H, generator=g) * 0.3
    w[0] = levels * step
    w = w.to(dtype)
    head = GreedyHead(w, None)
    err = w[0].double() - head.qweight[0].double() * head.scales[0].double().repeat_interleave(32)
    x = (torch.sign(err) * (1 + torch.rand(H, generator=g))).to(torch.bfloat16).to(dtype)  # no bf16 rounding
    xb = x.to(torch.bfloat16)
    approx = ops.qgemm(xb[None], head.qweight, head.scales)[0].float()
    bound = head._bound(x, xb, approx)
    exact = ops.linear(x[None], w)[0].double()
    ratio = float((exact[0] - approx[0].double()).abs() / bound[0].double())
    assert 0.9 < ratio <= 1.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_computed_alone_equal_the_full_call(isas, dtype):
    """What the candidate pass rests on: gemma4::linear at one row of x gives each weight row the same value
    alone as inside the whole weight, bit for bit (any subset, any count, K with a tail)."""
    g = torch.Generator().manual_seed(11)
    for V, H in ((1000, 160), (777, 1536), (300, 200)):
        w = torch.randn(V, H, generator=g).to(dtype)
        x = torch.randn(1, H, generator=g).to(dtype)
        full = ops.linear(x, w)[0]
        for n in (1, 3, 64, 129):
            rows = torch.randperm(V, generator=g)[:n].sort().values
            assert torch.equal(ops.linear(x, w.index_select(0, rows))[0], full[rows])


def _config(preset, vocab):
    """The test preset with a vocabulary large enough for the greedy head (and the per-layer table to match)."""
    extra = {"vocab_size_per_layer_input": vocab} if "vocab_size_per_layer_input" in preset_dict(preset) else {}
    return get_preset(preset, vocab_size=vocab, **extra)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("preset", TEST_PRESETS)
def test_generate_gives_the_full_heads_tokens(preset, dtype):
    """generate's greedy tokens with the int8 head equal the full head's on every variant family, also with the
    head scaled so that many logits pass the soft-cap and tie at its ceiling; the head was used at every step."""
    model = build_random_model(_config(preset, 2048), dtype=dtype, seed=3)
    model.generation_config.eos_token_id = None
    ids = torch.randint(3, 2048, (1, 9), generator=torch.Generator().manual_seed(1))
    calls = []
    original = GreedyHead.token
    GreedyHead.token = lambda self, x, process=None: calls.append(1) or original(self, x, process)
    try:
        for scale in (1.0, 300.0):
            with torch.no_grad():
                model.lm_head.weight.mul_(scale)  # tied: the embedding moves too, which changes nothing here
            with full_greedy_head():
                want = model.generate(ids, max_new_tokens=10, do_sample=False)
            calls.clear()
            got = model.generate(ids, max_new_tokens=10, do_sample=False)
            assert torch.equal(got, want)
            assert len(calls) == 10  # the prefill's token and every decode step's
            assert model.__dict__["_greedy_head"].matches(model.lm_head.weight)  # rebuilt after the in-place scale
    finally:
        GreedyHead.token = original


def test_generate_with_chunked_prefill_and_eos():
    model = build_random_model(_config("tiny-e2b", 2048), dtype=torch.bfloat16, seed=5)
    ids = torch.randint(3, 2048, (1, 13), generator=torch.Generator().manual_seed(2))
    with full_greedy_head():
        want = model.generate(ids, max_new_tokens=12, do_sample=False, prefill_chunk_size=4)
    first = int(want[0, 13])
    got = model.generate(ids, max_new_tokens=12, do_sample=False, prefill_chunk_size=4)
    assert torch.equal(got, want)
    stop = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=first)  # stops at once
    assert stop.shape[1] == 14 and int(stop[0, 13]) == first


@pytest.mark.parametrize("kwargs", [
    {"repetition_penalty": 1.3},
    {"repetition_penalty": 0.7, "no_repeat_ngram_size": 2},
    {"suppress_tokens": list(range(0, 2048, 3)), "begin_suppress_tokens": [5, 6, 7]},
    {"min_new_tokens": 6, "eos_token_id": [1, 9]},
    {"forced_eos_token_id": 4, "repetition_penalty": 1.5},
])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1.0, 300.0])
def test_score_maps_keep_the_head(kwargs, dtype, scale):
    """Processors that map each token's score alone through a non-decreasing function (a repetition penalty above
    or below 1, banned n-grams, suppressed tokens, a minimum length, a forced EOS): the int8 head is still used,
    with the bounds through the processors, and the tokens are the full head's; also with logits past the cap."""
    model = build_random_model(_config("tiny-e2b", 2048), dtype=dtype, seed=6)
    with torch.no_grad():
        model.lm_head.weight.mul_(scale)
    ids = torch.randint(3, 40, (1, 12), generator=torch.Generator().manual_seed(3))  # repeats for the penalty
    kwargs = {"max_new_tokens": 10, "do_sample": False, **kwargs}
    with full_greedy_head():
        want = model.generate(ids, **kwargs)
    calls = []
    original = GreedyHead.token
    GreedyHead.token = lambda self, x, process=None: calls.append(process is not None) or original(self, x, process)
    try:
        got = model.generate(ids, **kwargs)
    finally:
        GreedyHead.token = original
    assert torch.equal(got, want)
    assert calls and all(calls)


class _Penalty(RepetitionPenaltyLogitsProcessor):
    """A subclass: it may do anything with the scores, so it keeps the full head."""


@pytest.mark.parametrize("kwargs", [
    {"do_sample": True, "top_k": 5},
    {"renormalize_logits": True},
    {"logits_processor": [_Penalty(1.2)]},
    {"return_dict_in_generate": True, "output_scores": True},
    {"return_dict_in_generate": True, "output_logits": True},
    {"remove_invalid_values": True},
])
def test_not_used_where_the_logits_are_read(kwargs):
    """Sampling, other logits processors, returned scores or logits, batches: the full logits every step."""
    model = build_random_model(_config("tiny-31b", 2048), dtype=torch.float32, seed=1)
    ids = torch.randint(3, 2048, (1, 5), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model.generate(ids, max_new_tokens=3, **kwargs)
    assert model.__dict__.get("_greedy_head") is None
    model.generate(torch.cat([ids, ids]), max_new_tokens=3, do_sample=False)  # two sequences
    assert model.__dict__.get("_greedy_head") is None


def test_not_used_with_a_hook_a_compiled_model_or_a_subclass_forward():
    model = build_random_model(_config("tiny-31b", 2048), dtype=torch.float32, seed=1)
    seen = []
    model.lm_head.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    model.generate(torch.tensor([[2, 7, 9]]), max_new_tokens=3, do_sample=False)
    assert model.__dict__.get("_greedy_head") is None and len(seen) == 3
    compiled = build_random_model(_config("tiny-31b", 2048), dtype=torch.float32, seed=1)
    compiled.compile()  # (lazy: nothing compiles until it is called) its calls would run compiled code
    assert greedy_head_for(compiled) is None

    class OwnLogits(Gemma4ForCausalLM):  # a subclass's forward may make its logits another way
        def forward(self, *args, **kwargs):
            return super().forward(*args, **kwargs)

    subclassed = build_random_model(_config("tiny-31b", 2048), dtype=torch.float32, seed=1)
    assert greedy_head_for(subclassed) is not None
    subclassed.__class__ = OwnLogits
    assert greedy_head_for(subclassed) is None


def test_copy_follows_the_head():
    """A cast model gets a new copy (its tokens still the full head's); one that can no longer use it (a hook on
    the head) drops it, and the copy never keeps an old weight alive."""
    model = build_random_model(_config("tiny-e2b", 2048), dtype=torch.float32, seed=4)
    ids = torch.tensor([[2, 9, 300, 41]])
    model.generate(ids, max_new_tokens=2, do_sample=False)
    first = model.__dict__["_greedy_head"]
    model.to(torch.bfloat16)
    with full_greedy_head():
        want = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert torch.equal(model.generate(ids, max_new_tokens=5, do_sample=False), want)
    assert model.__dict__["_greedy_head"] is not first and model.__dict__["_greedy_head"].dtype == torch.bfloat16
    assert first._weight() is None or first._weight().dtype == torch.bfloat16  # not the old fp32 tensor
    model.lm_head.register_forward_pre_hook(lambda m, i: None)
    model.generate(ids, max_new_tokens=2, do_sample=False)
    assert "_greedy_head" not in model.__dict__


def test_small_vocabulary_keeps_the_full_head():
    model = build_random_model("tiny-31b", dtype=torch.float32, seed=1)  # vocab 512
    assert greedy_head_for(model) is None


def test_non_finite_logits_are_still_refused():
    """A NaN in the hidden state: the head defers to the full logits, and generate raises its usual error."""
    from gemma4.generation.utils import NonFiniteLogitsError  # noqa: PLC0415

    model = build_random_model(_config("tiny-31b", 2048), dtype=torch.float32, seed=1)
    with torch.no_grad():
        model.model.norm.weight[3] = float("nan")
    with pytest.raises(NonFiniteLogitsError):
        model.generate(torch.tensor([[2, 7, 9]]), max_new_tokens=3, do_sample=False)
    assert model.__dict__["_greedy_head"] is not None  # built, and it declined


def test_mapped_tied_table_stays_off_the_resident_set(tmp_path):
    """A tied head memory-mapped from its checkpoint: building the int8 copy hands the table's pages back, and
    the candidate rows are read from the file, so after generate none of the table is resident."""
    model = build_random_model(_config("tiny-31b", 4096), dtype=torch.bfloat16, seed=2)
    model.save_pretrained(tmp_path)
    loaded = Gemma4ForCausalLM.from_pretrained(tmp_path, progress=False)
    table = loaded.model.embed_tokens.weight
    assert len(page_map(table)) >= 16
    ids = torch.tensor([[2, 40, 77, 3001]])
    with full_greedy_head():
        want = loaded.generate(ids, max_new_tokens=6, do_sample=False)
    loaded = Gemma4ForCausalLM.from_pretrained(tmp_path, progress=False)  # fresh: nothing resident
    table = loaded.model.embed_tokens.weight
    got = loaded.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(got, want)
    assert int(((page_map(table) & _PM_PRESENT) != 0).sum()) == 0
    assert os.path.exists(tmp_path / SAFE_WEIGHTS_NAME)
