"""The whole model on CUDA against transformers on CUDA: logits, loss, gradients, generation, LoRA.

The same four variant families as tests/model/test_vs_transformers.py, with both models on the GPU.
Skipped without a CUDA device or without gemma4's CUDA kernels.
"""
import pytest
import torch

import gemma4
from tests.helpers import max_abs_err
from tests.model.test_vs_transformers import PRESETS, _batch, _loss_and_grads, _valid
from tests.oracle import make_hf_model, save_hf

pytestmark = pytest.mark.cuda
CUDA = "cuda"


def _has_cuda_kernels() -> bool:
    if not torch.cuda.is_available():
        return False
    from gemma4 import _native

    return bool(_native.build_info.get("cuda"))


if torch.cuda.is_available() and not _has_cuda_kernels():
    pytest.skip("gemma4 was built without CUDA kernels", allow_module_level=True)


@pytest.fixture(scope="module", params=PRESETS)
def saved(request, tmp_path_factory):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    hf = make_hf_model(request.param, dtype=torch.float32)
    path = tmp_path_factory.mktemp(request.param)
    save_hf(hf, path, layout="causal")
    return request.param, hf.to(CUDA), path


def _cuda_batch(vocab):
    ids, mask = _batch(vocab)
    return ids.to(CUDA), mask.to(CUDA)


def test_fp32_logits_match(saved):
    name, hf, path = saved
    ours = gemma4.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, device=CUDA)
    assert ours.device.type == "cuda"
    ids, mask = _cuda_batch(hf.config.vocab_size)
    with torch.no_grad():
        want = _valid(hf(input_ids=ids, attention_mask=mask).logits, mask)
        got = _valid(ours(input_ids=ids, attention_mask=mask).logits, mask)
    scale = want.abs().max().item()
    assert max_abs_err(got, want) <= 1e-4 * scale, f"{name}: {max_abs_err(got, want):.3e} vs scale {scale:.2f}"


def test_bf16_error_within_twice_transformers(saved):
    """bf16 on CUDA: our error against transformers' fp32 logits is at most 2x transformers' bf16 error."""
    import copy

    name, hf, path = saved
    ids, mask = _cuda_batch(hf.config.vocab_size)
    with torch.no_grad():
        ref = _valid(hf(input_ids=ids, attention_mask=mask).logits, mask)
        theirs = _valid(copy.deepcopy(hf).to(torch.bfloat16)(input_ids=ids, attention_mask=mask).logits, mask)
        ours = gemma4.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device=CUDA)
        got = _valid(ours(input_ids=ids, attention_mask=mask).logits, mask)
    assert got.dtype == torch.bfloat16
    err_ours, err_theirs = max_abs_err(got, ref), max_abs_err(theirs, ref)
    assert err_ours <= 2 * err_theirs, f"{name}: ours {err_ours:.3e} vs transformers {err_theirs:.3e}"


def test_loss_and_gradients_match(saved):
    """fp32 loss and every gradient equal transformers' on CUDA (1e-4 of each gradient's scale, or where
    float32 is noisier than that, a worst error vs float64 within 2x transformers' own, as on CPU)."""
    name, hf, path = saved
    ours = gemma4.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, device=CUDA)
    ids, mask = _cuda_batch(hf.config.vocab_size)
    labels = ids.masked_fill(mask == 0, -100)
    hf_loss, hf_grads = _loss_and_grads(hf, ids, mask, labels)
    our_loss, our_grads = _loss_and_grads(ours, ids, mask, labels)
    torch.testing.assert_close(our_loss, hf_loss, rtol=1e-5, atol=1e-6)
    assert set(our_grads) == set(hf_grads)
    off = [n for n, g in hf_grads.items() if max_abs_err(our_grads[n], g) > 1e-4 * (g.abs().max().item() + 1e-12)]
    if not off:
        return
    hf64 = make_hf_model(name, dtype=torch.float64).to(CUDA)
    hf64.load_state_dict({k: v.double() for k, v in hf.state_dict().items()})
    truth = _loss_and_grads(hf64, ids, mask, labels)[1]

    def worst(grads):
        return max(max_abs_err(grads[n], t) / (t.abs().max().item() + 1e-30) for n, t in truth.items())

    assert worst(our_grads) <= 2 * worst(hf_grads), (
        f"{name}: gradients {off[:4]} differ; worst vs float64: ours {worst(our_grads):.2e}, "
        f"transformers {worst(hf_grads):.2e}")


def test_greedy_generation_matches(saved):
    name, hf, path = saved
    ours = gemma4.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, device=CUDA)
    ids, mask = _cuda_batch(hf.config.vocab_size)
    kw = dict(max_new_tokens=30, min_new_tokens=30, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        want = hf.generate(input_ids=ids, attention_mask=mask, **kw)
        got = ours.generate(ids, attention_mask=mask, **kw)
    assert got.device.type == "cuda"
    assert torch.equal(got, want), f"{name}: greedy tokens differ from transformers' on CUDA"


def test_sampling_runs_on_device_and_is_seeded(saved):
    _, hf, path = saved
    ours = gemma4.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, device=CUDA)
    ids, mask = _cuda_batch(hf.config.vocab_size)
    kw = dict(max_new_tokens=12, do_sample=True, top_p=0.9, top_k=20, temperature=0.8, pad_token_id=0,
              eos_token_id=None)
    torch.manual_seed(7)
    a = ours.generate(ids, attention_mask=mask, **kw)
    torch.manual_seed(7)
    b = ours.generate(ids, attention_mask=mask, **kw)
    assert a.device.type == "cuda" and torch.equal(a, b)


def test_lora_trains_and_merges_on_cuda(tmp_path):
    hf = make_hf_model("tiny-e2b", dtype=torch.float32)
    save_hf(hf, tmp_path, layout="causal")
    model = gemma4.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, device=CUDA)
    model.add_adapter(gemma4.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"]),
                      adapter_name="a")
    params = [p for p in model.parameters() if p.requires_grad]
    assert params and all(p.device.type == "cuda" for p in params)
    opt = torch.optim.AdamW(params, lr=1e-2)
    ids = torch.randint(3, model.config.vocab_size, (2, 16), device=CUDA)
    losses = []
    for _ in range(20):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
        model.merge_adapter()
        merged = model(input_ids=ids).logits
    assert max_abs_err(merged, unmerged) <= 1e-4 * unmerged.abs().max().item()


def test_gradient_checkpointing_same_gradients(tmp_path):
    hf = make_hf_model("tiny-e4b", dtype=torch.float32)
    save_hf(hf, tmp_path, layout="causal")
    model = gemma4.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, device=CUDA)
    ids = torch.randint(3, model.config.vocab_size, (2, 20), device=CUDA)
    plain = _loss_and_grads(model, ids, torch.ones_like(ids), ids)
    model.gradient_checkpointing_enable()
    ckpt = _loss_and_grads(model, ids, torch.ones_like(ids), ids)
    torch.testing.assert_close(ckpt[0], plain[0])
    for n, g in plain[1].items():
        assert max_abs_err(ckpt[1][n], g) <= 1e-5 * (g.abs().max().item() + 1e-12), n


def test_torch_compile_fullgraph_on_cuda(tmp_path):
    hf = make_hf_model("tiny-26b-a4b", dtype=torch.float32)
    save_hf(hf, tmp_path, layout="causal")
    ours = gemma4.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, device=CUDA)
    ids, mask = _cuda_batch(hf.config.vocab_size)
    torch._dynamo.reset()
    compiled = torch.compile(ours, fullgraph=True)
    with torch.no_grad():
        eager = ours(input_ids=ids, attention_mask=mask).logits
        traced = compiled(input_ids=ids, attention_mask=mask).logits
    assert max_abs_err(_valid(traced, mask), _valid(eager, mask)) <= 1e-5 * eager.abs().max().item()
