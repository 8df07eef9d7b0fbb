"""The fast paths that skip a Linear's forward (LoRA's base GEMM, the fused loss's head) are taken for the
model's own Linear (gemma4.modeling.linear.Linear, an nn.Linear subclass), and only for plain linears:
a subclass with a forward of its own, a QuantLinear or a hooked module is called as a module."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from gemma4 import LoraConfig
from gemma4.float32_gemm import is_plain_linear
from gemma4.linear_choice import torch_linear_only
from gemma4.lora import layers as lora_layers
from gemma4.lora.layers import LoraLinear
from gemma4.modeling import loss as loss_mod
from gemma4.modeling.linear import Linear
from gemma4.modeling.random_model import build_random_model
from gemma4.quant import QuantLinear


class KeepsForward(Linear):
    """A subclass that adds nothing: still plain."""


class Doubles(Linear):
    """A subclass with behaviour of its own: a fast path that skipped it would give wrong numbers."""

    def forward(self, x):
        return super().forward(x) * 2


def calls(monkeypatch, owner, name):
    """Replace owner.name by a pass-through that records each call; returns the list of calls."""
    seen, real = [], getattr(owner, name)

    def spy(*args, **kwargs):
        seen.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return seen


def test_which_modules_are_plain():
    assert is_plain_linear(nn.Linear(4, 3)) and is_plain_linear(Linear(4, 3)) and is_plain_linear(KeepsForward(4, 3))
    assert not is_plain_linear(Doubles(4, 3))
    assert not is_plain_linear(QuantLinear(64, 8))  # not an nn.Linear: never a float fast path
    assert not is_plain_linear(LoraLinear(Linear(4, 3)))
    hooked = Linear(4, 3)
    hooked.register_forward_hook(lambda module, args, out: out * 0)
    assert not is_plain_linear(hooked)


def lora_over(base: nn.Module) -> LoraLinear:
    lora = LoraLinear(base)
    lora.update_layer("default", 4, 8.0, False, 0.0, torch.float32, init=False)  # non-zero A and B
    lora.active_adapters = ["default"]
    base.weight.requires_grad_(False)
    return lora


def expected(lora: LoraLinear, x: torch.Tensor) -> torch.Tensor:
    A, B = lora.lora_A["default"].weight, lora.lora_B["default"].weight
    return lora.base_layer(x) + F.linear(F.linear(x, A), B) * lora.scaling["default"]


def test_lora_layer_over_the_model_linear_takes_the_fast_path(monkeypatch):
    model = build_random_model("tiny-e2b", torch.float32, seed=3)
    model.add_adapter(LoraConfig(r=4, target_modules=["q_proj"]))
    lora = model.model.layers[0].self_attn.q_proj
    assert isinstance(lora, LoraLinear) and type(lora.base_layer) is Linear
    fast = calls(monkeypatch, lora_layers, "_plain_linear_output")
    gemm = calls(monkeypatch, lora_layers, "linear")  # float32_gemm.linear: torch's GEMM
    own = calls(monkeypatch, lora_layers.ops, "linear")  # gemma4::linear, the model Linear's own choice
    x = torch.randn(2, 5, lora.in_features, requires_grad=True)  # 10 rows of float32: gemma4::linear's
    lora(x).sum().backward()
    assert len(fast) == 1 and len(own) == 1 and own[0][1] is lora.base_layer.weight and not gemm
    with torch.no_grad():  # no backward: still the fast path (updated in place)
        lora(x)
    assert len(fast) == 2 and len(own) == 2 and not gemm
    x1 = torch.randn(1, 1, lora.in_features, requires_grad=True)  # one row, a small float32 weight: ours too
    lora(x1).sum().backward()
    assert len(fast) == 3 and len(own) == 3 and not gemm
    with torch_linear_only():  # where the Linear picks torch's GEMM, so does the fast path
        lora(x1).sum().backward()
    assert len(fast) == 4 and len(own) == 3 and len(gemm) == 1 and gemm[0][1] is lora.base_layer.weight


@pytest.mark.parametrize("base_cls, plain", [(nn.Linear, True), (Linear, True), (KeepsForward, True),
                                             (Doubles, False)])
@pytest.mark.parametrize("grad", [True, False])
def test_lora_layer_fast_path_only_for_plain_linears(monkeypatch, base_cls, plain, grad):
    lora = lora_over(base_cls(24, 16))
    fast = calls(monkeypatch, lora_layers, "_plain_linear_output")
    x = torch.randn(3, 24, requires_grad=grad)
    got = lora(x)
    assert len(fast) == (1 if plain else 0)
    torch.testing.assert_close(got, expected(lora, x), rtol=1e-5, atol=1e-5)


def test_fused_loss_over_the_model_lm_head(monkeypatch):
    model = build_random_model("tiny-e2b", torch.float32, seed=3)
    assert type(model.lm_head) is Linear
    fused = calls(monkeypatch, loss_mod._FusedLinearCrossEntropy, "apply")
    generic = calls(monkeypatch, loss_mod, "checkpoint")
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    out = model(input_ids=ids, labels=ids)
    assert out.logits is None and len(fused) == 1 and not generic
    out.loss.backward()


@pytest.mark.parametrize("head_cls, fused_path", [(Linear, True), (Doubles, False)])
def test_fused_loss_only_for_plain_heads(monkeypatch, head_cls, fused_path):
    head = head_cls(24, 301, bias=False)
    fused = calls(monkeypatch, loss_mod._FusedLinearCrossEntropy, "apply")
    hidden = torch.randn(2, 11, 24, requires_grad=True)
    labels = torch.randint(0, 301, (2, 11))
    got = loss_mod.chunked_causal_lm_loss(hidden, head, labels, 30.0, 8)
    assert len(fused) == (1 if fused_path else 0)
    logits = torch.tanh(head(hidden) / 30.0) * 30.0
    shifted = F.pad(labels, (0, 1), value=-100)[:, 1:]  # next-token labels, none after the last
    want = F.cross_entropy(logits.float().flatten(0, 1), shifted.flatten(), ignore_index=-100)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
