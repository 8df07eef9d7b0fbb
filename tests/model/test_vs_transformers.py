"""Our Gemma4ForCausalLM against transformers 5.17.0's, on random perturbed weights, on each device.

One tiny config per released feature set; batches with left padding and sequences longer than the
sliding window. transformers builds and saves the model, ours loads it from disk; both run on the
test's device. The cuda cases are collected everywhere and skipped without a CUDA device or without
gemma4's CUDA kernels. Checks whose CPU versions live elsewhere (tests/generation, tests/lora,
tests/training: generation, LoRA training, gradient checkpointing) run here on cuda only.
"""
import copy

import pytest
import torch

import gemma4
from tests.helpers import BACKENDS, FLOAT32_ROUTER_MARGIN, has_moe, max_abs_err, redraw_routable, router_margins
from tests.oracle import make_hf_model, save_hf
from tests.training.test_lora_training import train

PRESETS = ["tiny-e2b", "tiny-e4b", "tiny-31b", "tiny-26b-a4b", "tiny-12b"]  # tiny-12b: gemma4_unified_text
SEQ = 24  # > the tiny configs' sliding window (8)
CUDA = pytest.param("cuda", marks=pytest.mark.cuda, id="cuda")  # the marker lets `-m cuda` pick the GPU cases
cuda_only = pytest.mark.parametrize("device", [CUDA], indirect=True)


@pytest.fixture(scope="module", params=["cpu", CUDA])
def device(request):
    if request.param not in BACKENDS:
        pytest.skip("needs a CUDA device and gemma4 built with CUDA kernels")
    return torch.device(request.param)


def _batch(vocab: int, device="cpu", batch: int = 3, seq: int = SEQ, pad_lengths=(0, 5, 11), routed_by=None):
    """[batch, seq] ids and attention mask: left padding, <bos>, random ids. routed_by: a MoE model (ours, on
    `device`) whose float32 outputs a test compares with another float32 implementation's; each random id is
    then drawn again until every routing choice of its token has a margin of FLOAT32_ROUTER_MARGIN in that model
    (tests/helpers.py: the two differ by rounding, and an expert choice flipped in one of them alone changes that
    token and every later one: tiny-26b-a4b, GEMMA4_TEST_SEED=1692187305, a margin of 9.5e-7 at layer 10, logits
    1.35 apart). Their router logits differ by at most 5.3e-5 (ours against transformers' over 40 models)."""
    ids = torch.randint(3, vocab, (batch, seq))
    ids[:, 0] = 2  # one leading <bos>, as Gemma expects
    mask = torch.ones(batch, seq, dtype=torch.long)
    for b, n in enumerate(pad_lengths[:batch]):
        mask[b, :n] = 0  # left padding
        ids[b, :n] = 0
        ids[b, n] = 2
    if routed_by is not None and has_moe(routed_by):
        first = [pad_lengths[b] + 1 if b < len(pad_lengths) else 1 for b in range(batch)]  # after <bos>
        ids = redraw_routable(routed_by, ids, first, 3, vocab, FLOAT32_ROUTER_MARGIN, attention_mask=mask)
        assert ids is not None, f"no batch routes with a margin of {FLOAT32_ROUTER_MARGIN} (its <bos>?)"
    return ids.to(device), mask.to(device)  # drawn on the CPU: the same batch for a seed on every device


def _valid(t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return t[mask.bool()]  # [n_valid, V]: pad rows attend to nothing and are not compared


def _make_saved(name: str, path, layout: str = "causal"):
    """transformers' float32 model of a preset (make_hf_model), saved to path in layout. A MoE preset is drawn again
    (up to 8 times) until its <bos> routes with a margin of FLOAT32_ROUTER_MARGIN in our model of it: _batch's
    routed_by conditions every later token, but the <bos>'s routing is the weights' alone (one model of the full
    suite's had a margin of 1.1e-4 there)."""
    for _ in range(8):
        hf = make_hf_model(name, dtype=torch.float32)
        save_hf(hf, path, layout=layout)
        margins = router_margins(_load(path, torch.device("cpu")), torch.tensor([[2]]))  # None: no MoE
        if margins is None or margins.min() >= FLOAT32_ROUTER_MARGIN:
            return hf
    raise AssertionError(f"{name}: no model in 8 draws routes <bos> with a margin of {FLOAT32_ROUTER_MARGIN}")


@pytest.fixture(scope="module", params=PRESETS)
def saved(request, device, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    hf = _make_saved(request.param, path)
    return request.param, hf.to(device), path


def _load(path, device, dtype=torch.float32):
    ours = gemma4.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device=device)
    assert ours.device.type == device.type
    return ours


def test_fp32_logits_match(saved, device):
    name, hf, path = saved
    ours = _load(path, device)
    ids, mask = _batch(hf.config.vocab_size, device, routed_by=ours)
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).logits
        got = ours(input_ids=ids, attention_mask=mask).logits
    want, got = _valid(want, mask), _valid(got, mask)
    scale = want.abs().max().item()
    assert max_abs_err(got, want) <= 1e-4 * scale, f"{name}: {max_abs_err(got, want):.3e} vs scale {scale:.2f}"


def test_bf16_error_within_twice_transformers(saved, device):
    """bf16: our error against transformers' fp32 logits is at most 2x transformers' bf16 error."""
    name, hf, path = saved
    hf_bf16, ours = copy.deepcopy(hf).to(torch.bfloat16), _load(path, device, torch.bfloat16)
    # The norm over all valid logits of 4 batches: a max over one batch is set by a few tokens (its
    # ratio ran 0.3x-2.7x over 6 seeds), and with MoE one batch's norm is set by the few tokens whose
    # expert choice flips in bf16 (one batch ran 0.5x-2.1x); 4 batches average the flips out.
    sq_ours = sq_theirs = 0.0
    for _ in range(4):
        ids, mask = _batch(hf.config.vocab_size, device)
        with torch.no_grad():
            ref = _valid(hf(input_ids=ids, attention_mask=mask).logits, mask).double()
            theirs = _valid(hf_bf16(input_ids=ids, attention_mask=mask).logits, mask)
            got = _valid(ours(input_ids=ids, attention_mask=mask).logits, mask)
        assert got.dtype == torch.bfloat16
        sq_ours += (got.double() - ref).square().sum().item()
        sq_theirs += (theirs.double() - ref).square().sum().item()
    err_ours, err_theirs = sq_ours ** 0.5, sq_theirs ** 0.5
    assert err_ours <= 2 * err_theirs, f"{name}: ours {err_ours:.3e} vs transformers {err_theirs:.3e}"


def _loss_and_grads(model, ids, mask, labels):
    model.zero_grad()
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad()
    return loss.detach(), grads


def test_loss_and_gradients_match(saved, device):
    """float32 loss and every weight's gradient equal transformers': within 1e-4 of each gradient's
    scale. Where float32 itself is noisier than that (sharp softmaxes at attention scale 1.0 amplify
    rounding), the bound comes from transformers' own float32 error: our worst gradient error relative
    to the float64 truth may be at most twice transformers' worst."""
    name, hf, path = saved
    ours = _load(path, device)
    ids, mask = _batch(hf.config.vocab_size, device, routed_by=ours)
    labels = ids.masked_fill(mask == 0, -100)
    hf_loss, hf_grads = _loss_and_grads(hf, ids, mask, labels)
    our_loss, our_grads = _loss_and_grads(ours, ids, mask, labels)
    torch.testing.assert_close(our_loss, hf_loss, rtol=1e-5, atol=1e-6)
    assert set(our_grads) == set(hf_grads), "parameter sets differ"
    off = [n for n, g in hf_grads.items() if max_abs_err(our_grads[n], g) > 1e-4 * (g.abs().max().item() + 1e-12)]
    if not off:
        return
    hf64 = make_hf_model(name, dtype=torch.float64).to(device)  # same weights in float64 (eager experts)
    hf64.load_state_dict({k: v.double() for k, v in hf.state_dict().items()})
    truth = _loss_and_grads(hf64, ids, mask, labels)[1]

    def worst(grads):
        return max(max_abs_err(grads[n], t) / (t.abs().max().item() + 1e-30) for n, t in truth.items())

    assert worst(our_grads) <= 2 * worst(hf_grads), (
        f"{name}: gradients {off[:4]} differ; worst relative error vs float64: ours {worst(our_grads):.2e}, "
        f"transformers {worst(hf_grads):.2e}")


@pytest.mark.parametrize("name", ["tiny-e2b", "tiny-26b-a4b", "tiny-12b"])
def test_conditional_generation_layout(name, tmp_path):
    hf = _make_saved(name, tmp_path, layout="conditional")
    ours = gemma4.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    ids, mask = _batch(hf.config.vocab_size, routed_by=ours)
    with torch.no_grad():
        want = _valid(hf(input_ids=ids, attention_mask=mask).logits, mask)
        got = _valid(ours(input_ids=ids, attention_mask=mask).logits, mask)
    assert max_abs_err(got, want) <= 1e-4 * want.abs().max().item()


@pytest.mark.parametrize("name", PRESETS)
def test_our_save_loads_in_transformers(name, tmp_path):
    from transformers import AutoModelForCausalLM as HFAutoModelForCausalLM

    hf = _make_saved(name, tmp_path / "hf")
    ours = gemma4.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    ours.save_pretrained(tmp_path / "ours")
    reloaded = HFAutoModelForCausalLM.from_pretrained(tmp_path / "ours", dtype=torch.float32).eval()
    assert type(reloaded) is type(hf)  # Gemma4ForCausalLM, or Gemma4UnifiedForCausalLM for tiny-12b
    ids, mask = _batch(hf.config.vocab_size, routed_by=ours)
    with torch.no_grad():
        want = _valid(ours(input_ids=ids, attention_mask=mask).logits, mask)
        got = _valid(reloaded(input_ids=ids, attention_mask=mask).logits, mask)
    assert max_abs_err(got, want) <= 1e-4 * want.abs().max().item()


@pytest.mark.parametrize("device, name", [
    ("cpu", "tiny-e2b"), pytest.param("cuda", "tiny-26b-a4b", marks=pytest.mark.cuda, id="cuda-tiny-26b-a4b"),
], indirect=["device"])
def test_torch_compile_fullgraph(device, name, tmp_path):
    hf = _make_saved(name, tmp_path)
    ours = _load(tmp_path, device)
    ids, mask = _batch(hf.config.vocab_size, device, routed_by=ours)
    torch._dynamo.reset()
    compiled = torch.compile(ours, fullgraph=True)
    with torch.no_grad():
        eager = ours(input_ids=ids, attention_mask=mask).logits
        traced = compiled(input_ids=ids, attention_mask=mask).logits
    assert max_abs_err(_valid(traced, mask), _valid(eager, mask)) <= 1e-5 * eager.abs().max().item()


def _decided_lengths(model, tokens: torch.Tensor, mask: torch.Tensor, prompt: int) -> list[int]:
    """[B, T] prompt + generated tokens (mask: the prompt's) -> per row, how many leading tokens two float32
    implementations must agree on. A MoE token whose routing margin in model is below FLOAT32_ROUTER_MARGIN may
    choose other experts in the other implementation by rounding alone, and then the next token and all after
    it may differ: a row is compared up to and including its first such generated token. The prompt's tokens
    are drawn routable (_batch), so every row keeps at least its prompt and first new token."""
    T = tokens.shape[1]
    full = torch.cat([mask, mask.new_ones(mask.shape[0], T - prompt)], dim=1)
    margins = router_margins(model, tokens, full)  # [B, T] or None without MoE
    if margins is None:
        return [T] * tokens.shape[0]
    lengths = []
    for row in margins[:, prompt:-1]:  # token prompt + j's routing decides token prompt + j + 1
        low = (row < FLOAT32_ROUTER_MARGIN).nonzero()
        lengths.append(prompt + int(low[0]) + 1 if len(low) else T)
    return lengths


@cuda_only
def test_greedy_generation_matches(saved, device):
    name, hf, path = saved
    ours = _load(path, device)
    ids, mask = _batch(hf.config.vocab_size, device, routed_by=ours)
    kw = dict(max_new_tokens=30, min_new_tokens=30, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        want = hf.generate(input_ids=ids, attention_mask=mask, **kw)
        got = ours.generate(ids, attention_mask=mask, **kw)
    assert got.device.type == device.type and got.shape == want.shape
    for b, n in enumerate(_decided_lengths(ours, got, mask, ids.shape[1])):
        assert torch.equal(got[b, :n], want[b, :n]), f"{name}: row {b}'s greedy tokens differ on {device}"


@cuda_only
def test_sampling_runs_on_device_and_is_seeded(saved, device):
    _, hf, path = saved
    ours = _load(path, device)
    ids, mask = _batch(hf.config.vocab_size, device)
    kw = dict(max_new_tokens=12, do_sample=True, top_p=0.9, top_k=20, temperature=0.8, pad_token_id=0,
              eos_token_id=None)
    torch.manual_seed(7)
    a = ours.generate(ids, attention_mask=mask, **kw)
    torch.manual_seed(7)
    b = ours.generate(ids, attention_mask=mask, **kw)
    assert a.device.type == device.type and torch.equal(a, b)


@cuda_only
def test_lora_trains_and_merges(device, tmp_path):
    save_hf(make_hf_model("tiny-e2b", dtype=torch.float32), tmp_path, layout="causal")
    model = _load(tmp_path, device)
    model.add_adapter(gemma4.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"]),
                      adapter_name="a")
    params = [p for p in model.parameters() if p.requires_grad]
    assert params and all(p.device.type == device.type for p in params)
    ids = torch.randint(3, model.config.vocab_size, (2, 16), device=device)
    losses = train(model, ids, steps=20, lr=1e-2)
    assert losses[-1] < 0.5 * losses[0], losses
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
        model.merge_adapter()
        merged = model(input_ids=ids).logits
    assert max_abs_err(merged, unmerged) <= 1e-4 * unmerged.abs().max().item()


@cuda_only
def test_gradient_checkpointing_same_gradients(device, tmp_path):
    save_hf(make_hf_model("tiny-e4b", dtype=torch.float32), tmp_path, layout="causal")
    model = _load(tmp_path, device)
    ids = torch.randint(3, model.config.vocab_size, (2, 20), device=device)
    plain = _loss_and_grads(model, ids, torch.ones_like(ids), ids)
    model.gradient_checkpointing_enable()
    ckpt = _loss_and_grads(model, ids, torch.ones_like(ids), ids)
    torch.testing.assert_close(ckpt[0], plain[0])
    for n, g in plain[1].items():
        assert max_abs_err(ckpt[1][n], g) <= 1e-5 * (g.abs().max().item() + 1e-12), n
