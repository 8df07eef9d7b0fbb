"""The dense MLP keeps act(gate) * up for down_proj's weight gradient as a recipe (modeling/mlp.py): the
activation is recomputed from gate and up (which gated_activation keeps anyway) in backward. Gradients are
bit-identical to keeping it, the recipe is used once per MLP, and never under other saved-tensor hooks
(gradient checkpointing, offloading) or when nothing needs the activation."""
import gc
import weakref

import pytest
import torch

from gemma4 import LoraConfig
from gemma4.modeling import mlp as mlp_mod
from gemma4.modeling.random_model import build_random_model


def _grads(model, ids):
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _spy(monkeypatch):
    calls = []
    real = mlp_mod._Recompute.__call__
    monkeypatch.setattr(mlp_mod._Recompute, "__call__", lambda self: calls.append(1) or real(self))
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_recomputed_activation_gives_the_same_gradients(monkeypatch, dtype):
    model = build_random_model("tiny-e2b", dtype, seed=4)
    model.add_adapter(LoraConfig(r=4, target_modules=["down_proj", "q_proj"]))
    ids = torch.randint(3, model.config.vocab_size, (2, 11))
    calls = _spy(monkeypatch)
    got = _grads(model, ids)
    assert len(calls) == model.config.num_hidden_layers  # one recompute per dense MLP
    monkeypatch.setattr(mlp_mod, "_other_saved_tensor_hooks", lambda: True)  # keep the activation instead
    want = _grads(model, ids)
    assert len(calls) == model.config.num_hidden_layers
    assert got.keys() == want.keys() and all(torch.equal(got[n], want[n]) for n in got)


def test_not_used_under_checkpointing_or_without_a_weight_gradient(monkeypatch):
    model = build_random_model("tiny-e2b", torch.float32, seed=5)
    ids = torch.randint(3, model.config.vocab_size, (1, 7))
    calls = _spy(monkeypatch)
    model.requires_grad_(False)
    model.model.embed_tokens.weight.requires_grad_(True)  # activations need grads, no weight of down_proj does
    _grads(model, ids)
    model.gradient_checkpointing_enable()
    model.train()  # checkpointing runs in training mode only
    model.requires_grad_(True)
    _grads(model, ids)
    assert calls == []  # first call: kept as a recipe but never unpacked; second: checkpointing's hooks


def test_the_activation_itself_is_freed_after_forward(monkeypatch):
    """The recipe replaces the tensor: once forward is done nothing refers to act(gate) * up. (A hook closure
    that captured the tensor once kept every layer's activation alive, so the recomputation saved nothing.)"""
    model = build_random_model("tiny-e2b", torch.bfloat16, seed=6)
    # (q_proj too: then every MLP's gate needs a gradient, the recomputation's condition; with down_proj
    # alone the first layer's activation has no gradient path and is rightly kept, the cheaper choice)
    model.add_adapter(LoraConfig(r=4, target_modules=["down_proj", "q_proj"]))
    ids = torch.randint(3, model.config.vocab_size, (2, 9))
    refs, real = [], mlp_mod.ops.gated_activation

    class SpyOps:  # mlp.py's `ops`, recording each activation the MLPs make
        def __getattr__(self, name):
            return getattr(mlp_mod.ops_module, name)

        @staticmethod
        def gated_activation(gate, up, activation):
            hidden = real(gate, up, activation)
            refs.append(weakref.ref(hidden))
            return hidden

    monkeypatch.setattr(mlp_mod, "ops_module", mlp_mod.ops, raising=False)
    monkeypatch.setattr(mlp_mod, "ops", SpyOps())
    loss = model(input_ids=ids, labels=ids).loss
    gc.collect()
    assert len(refs) == model.config.num_hidden_layers
    assert all(r() is None for r in refs), f"{sum(r() is not None for r in refs)} activations still alive"
    loss.backward()  # and backward rebuilds them
