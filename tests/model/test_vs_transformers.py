"""Our Gemma4ForCausalLM against transformers 5.17.0's, on random perturbed weights.

One tiny config per released feature set; batches with left padding and sequences longer than the
sliding window. transformers builds and saves the model, ours loads it from disk.
"""
import pytest
import torch

import gemma4
from tests.helpers import max_abs_err
from tests.oracle import make_hf_model, save_hf

PRESETS = ["tiny-e2b", "tiny-e4b", "tiny-31b", "tiny-26b-a4b"]
SEQ = 24  # > the tiny configs' sliding window (8)


def _batch(vocab: int, batch: int = 3, seq: int = SEQ, pad_lengths=(0, 5, 11)):
    ids = torch.randint(3, vocab, (batch, seq))
    ids[:, 0] = 2  # one leading <bos>, as Gemma expects
    mask = torch.ones(batch, seq, dtype=torch.long)
    for b, n in enumerate(pad_lengths[:batch]):
        mask[b, :n] = 0  # left padding
        ids[b, :n] = 0
        ids[b, n] = 2
    return ids, mask


def _valid(t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return t[mask.bool()]  # [n_valid, V]: pad rows attend to nothing and are not compared


@pytest.fixture(scope="module", params=PRESETS)
def saved(request, tmp_path_factory):
    hf = make_hf_model(request.param, dtype=torch.float32)
    path = tmp_path_factory.mktemp(request.param)
    save_hf(hf, path, layout="causal")
    return request.param, hf, path


def test_fp32_logits_match(saved):
    name, hf, path = saved
    ours = gemma4.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids, mask = _batch(hf.config.vocab_size)
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).logits
        got = ours(input_ids=ids, attention_mask=mask).logits
    want, got = _valid(want, mask), _valid(got, mask)
    scale = want.abs().max().item()
    assert max_abs_err(got, want) <= 1e-4 * scale, f"{name}: {max_abs_err(got, want):.3e} vs scale {scale:.2f}"


def test_bf16_error_within_twice_transformers(saved):
    name, hf, path = saved
    ids, mask = _batch(hf.config.vocab_size)
    with torch.no_grad():
        ref = _valid(hf(input_ids=ids, attention_mask=mask).logits, mask)
        hf_bf16 = make_hf_model_like(hf, torch.bfloat16)
        theirs = _valid(hf_bf16(input_ids=ids, attention_mask=mask).logits, mask)
        ours = gemma4.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
        got = _valid(ours(input_ids=ids, attention_mask=mask).logits, mask)
    assert got.dtype == torch.bfloat16
    err_ours, err_theirs = max_abs_err(got, ref), max_abs_err(theirs, ref)
    assert err_ours <= 2 * err_theirs, f"{name}: ours {err_ours:.3e} vs transformers {err_theirs:.3e}"


def make_hf_model_like(hf, dtype):
    import copy

    return copy.deepcopy(hf).to(dtype)


def _loss_and_grads(model, ids, mask, labels):
    model.zero_grad()
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad()
    return loss.detach(), grads


def test_loss_and_gradients_match(saved):
    """float32 loss and every weight's gradient equal transformers': within 1e-4 of each gradient's
    scale. Where float32 itself is noisier than that (sharp softmaxes at attention scale 1.0 amplify
    rounding), the bound comes from transformers' own float32 error: our worst gradient error relative
    to the float64 truth may be at most twice transformers' worst."""
    name, hf, path = saved
    ours = gemma4.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids, mask = _batch(hf.config.vocab_size)
    labels = ids.masked_fill(mask == 0, -100)
    hf_loss, hf_grads = _loss_and_grads(hf, ids, mask, labels)
    our_loss, our_grads = _loss_and_grads(ours, ids, mask, labels)
    torch.testing.assert_close(our_loss, hf_loss, rtol=1e-5, atol=1e-6)
    assert set(our_grads) == set(hf_grads), "parameter sets differ"
    off = [n for n, g in hf_grads.items() if max_abs_err(our_grads[n], g) > 1e-4 * (g.abs().max().item() + 1e-12)]
    if not off:
        return
    hf64 = make_hf_model(name, dtype=torch.float64)  # same weights in float64 (eager experts)
    hf64.load_state_dict({k: v.double() for k, v in hf.state_dict().items()})
    truth = _loss_and_grads(hf64, ids, mask, labels)[1]

    def worst(grads):
        return max(max_abs_err(grads[n], t) / (t.abs().max().item() + 1e-30) for n, t in truth.items())

    assert worst(our_grads) <= 2 * worst(hf_grads), (
        f"{name}: gradients {off[:4]} differ; worst relative error vs float64: ours {worst(our_grads):.2e}, "
        f"transformers {worst(hf_grads):.2e}")


@pytest.mark.parametrize("name", ["tiny-e2b", "tiny-26b-a4b"])
def test_conditional_generation_layout(name, tmp_path):
    hf = make_hf_model(name, dtype=torch.float32)
    save_hf(hf, tmp_path, layout="conditional")
    ours = gemma4.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    ids, mask = _batch(hf.config.vocab_size)
    with torch.no_grad():
        want = _valid(hf(input_ids=ids, attention_mask=mask).logits, mask)
        got = _valid(ours(input_ids=ids, attention_mask=mask).logits, mask)
    assert max_abs_err(got, want) <= 1e-4 * want.abs().max().item()


@pytest.mark.parametrize("name", PRESETS)
def test_our_save_loads_in_transformers(name, tmp_path):
    from transformers import Gemma4ForCausalLM as HFGemma4ForCausalLM

    hf = make_hf_model(name, dtype=torch.float32)
    save_hf(hf, tmp_path / "hf", layout="causal")
    ours = gemma4.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    ours.save_pretrained(tmp_path / "ours")
    reloaded = HFGemma4ForCausalLM.from_pretrained(tmp_path / "ours", dtype=torch.float32).eval()
    ids, mask = _batch(hf.config.vocab_size)
    with torch.no_grad():
        want = _valid(ours(input_ids=ids, attention_mask=mask).logits, mask)
        got = _valid(reloaded(input_ids=ids, attention_mask=mask).logits, mask)
    assert max_abs_err(got, want) <= 1e-4 * want.abs().max().item()


def test_torch_compile_fullgraph(tmp_path):
    hf = make_hf_model("tiny-e2b", dtype=torch.float32)
    save_hf(hf, tmp_path, layout="causal")
    ours = gemma4.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    ids, mask = _batch(hf.config.vocab_size)
    torch._dynamo.reset()
    compiled = torch.compile(ours, fullgraph=True)
    with torch.no_grad():
        eager = ours(input_ids=ids, attention_mask=mask).logits
        traced = compiled(input_ids=ids, attention_mask=mask).logits
    assert max_abs_err(_valid(traced, mask), _valid(eager, mask)) <= 1e-5 * eager.abs().max().item()
