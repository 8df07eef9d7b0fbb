"""LoraLinear over a bf16/fp16 base with float32 factors (PEFT's autocast_adapter_dtype), the usual LoRA
training setup, takes layers._lowp_input_lora_update (the gemma4::lora_* ops): the numbers of the generic
path (F.linear on a float32 copy of x, then addmm: PEFT's maths) up to float32 rounding order, while
backward keeps x in its own dtype instead of that float32 copy."""
import copy

import pytest
import torch
from torch import nn

from gemma4.lora import layers as lora_layers
from gemma4.lora.layers import LoraLinear
from tests.helpers import assert_lowp_close, tight_tol


class PassThrough(nn.Module):
    """An identity 'dropout' the layer does not recognise: it forces the generic path."""

    def forward(self, x):
        return x


def lora_layer(in_features=256, out_features=512, r=8, alpha=16.0, dtype=torch.bfloat16, bias=True, seed=0):
    torch.manual_seed(seed)
    base = nn.Linear(in_features, out_features, bias=bias, dtype=dtype).requires_grad_(False)
    lora = LoraLinear(base)
    lora.update_layer("default", r, alpha, False, 0.0, torch.float32, init=False)
    lora.active_adapters = ["default"]
    with torch.no_grad():
        lora.lora_B["default"].weight.normal_()  # (nn.Linear's init is small: make the update count)
    return lora


def generic_twin(lora: LoraLinear) -> LoraLinear:
    twin = copy.deepcopy(lora)
    twin.lora_dropout["default"] = PassThrough()
    return twin


def spy_update(monkeypatch):
    seen, real = [], lora_layers._lowp_input_lora_update

    def spy(*args):
        seen.append(args)
        return real(*args)

    monkeypatch.setattr(lora_layers, "_lowp_input_lora_update", spy)
    return seen


def run(lora: LoraLinear, x0: torch.Tensor, grad_out: torch.Tensor, x_grad: bool, factor_grads: tuple):
    A, B = lora.lora_A["default"].weight, lora.lora_B["default"].weight
    A.requires_grad_(factor_grads[0])
    B.requires_grad_(factor_grads[1])
    x = x0.clone().requires_grad_(x_grad)
    y = lora(x)
    y.backward(grad_out)
    return y, x.grad, A.grad, B.grad


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(64, 256), (2, 7, 256)])
@pytest.mark.parametrize("x_grad, factor_grads", [(True, (True, True)), (False, (True, True)),
                                                  (True, (False, False)), (True, (True, False)),
                                                  (False, (False, True))])
@pytest.mark.parametrize("alpha", [16.0, 8.0])  # scaling 2 and 1
def test_low_precision_base_update_equals_the_generic_path(monkeypatch, dtype, shape, x_grad, factor_grads, alpha):
    lora = lora_layer(dtype=dtype, alpha=alpha)
    twin = generic_twin(lora)
    exact = generic_twin(lora).double()  # the generic path in float64: the reference both are measured against
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(shape, generator=g).to(dtype)
    grad_out = torch.randn(shape[:-1] + (512,), generator=g).to(dtype)
    seen = spy_update(monkeypatch)
    got = run(lora, x0, grad_out, x_grad, factor_grads)
    assert len(seen) == 1
    want = run(twin, x0, grad_out, x_grad, factor_grads)
    best = run(exact, x0.double(), grad_out.double(), x_grad, factor_grads)
    assert len(seen) == 1, "the twins must take the generic path"
    assert got[0].dtype == dtype and got[0].shape == want[0].shape
    for name, a, b, c in zip(["out", "x.grad", "A.grad", "B.grad"], got, want, best):
        assert (a is None) == (b is None), name
        if a is None:
            continue
        assert a.dtype == b.dtype, name
        if a.dtype == torch.float32:  # the factors' gradients: the same float32 sums as PEFT's, reordered
            torch.testing.assert_close(a, b, **tight_tol(torch.float32))
        assert_lowp_close(a, c, b)  # and no further from the exact value than PEFT's own rounding
    assert (got[1] is not None) == x_grad and (got[2] is not None) == factor_grads[0]


def _train_dropout(lora):
    lora.lora_dropout["default"] = nn.Dropout(0.1)
    lora.train()


def _second_adapter(lora):
    lora.update_layer("other", 4, 8.0, False, 0.0, torch.float32, init=False)
    lora.active_adapters = ["default", "other"]


@pytest.mark.parametrize("setup, dtype, taken", [
    (lambda lora: None, torch.bfloat16, True),
    (lambda lora: lora.lora_dropout.__setitem__("default", nn.Dropout(0.0)), torch.bfloat16, True),
    (lambda lora: (lora.lora_dropout.__setitem__("default", nn.Dropout(0.1)), lora.eval()), torch.bfloat16, True),
    (_train_dropout, torch.bfloat16, False),
    (_second_adapter, torch.bfloat16, False),
    (lambda lora: (lora.lora_A.to(torch.bfloat16), lora.lora_B.to(torch.bfloat16)), torch.bfloat16, False),
    (lambda lora: None, torch.float32, False),  # a float32 base
])
def test_which_layers_take_the_low_precision_update(monkeypatch, setup, dtype, taken):
    lora = lora_layer(dtype=dtype)
    setup(lora)
    seen = spy_update(monkeypatch)
    x = torch.randn(3, 5, 256).to(dtype).requires_grad_()
    lora(x).float().sum().backward()
    assert len(seen) == (1 if taken else 0)
    with torch.no_grad():  # without autograd too: the ops skip the float32 copies either way
        lora(x)
    assert len(seen) == (2 if taken else 0)


def test_low_precision_update_not_taken_under_autocast(monkeypatch):
    lora = lora_layer()
    seen = spy_update(monkeypatch)
    x = torch.randn(4, 256).to(torch.bfloat16).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lora(x).float().sum().backward()
    assert not seen


def saved_bytes(lora: LoraLinear, x: torch.Tensor) -> dict:
    """Bytes kept for backward by one forward, per dtype."""
    saved = {}

    def pack(t):
        saved[t.dtype] = saved.get(t.dtype, 0) + t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lora(x)
    return saved


def test_bf16_input_is_saved_not_a_float32_copy():
    lora = lora_layer(256, 512, r=8)
    x = torch.randn(64, 256).to(torch.bfloat16).requires_grad_()
    limit = x.numel() * 4  # a float32 copy of x
    generic = saved_bytes(generic_twin(lora), x)
    assert generic.get(torch.float32, 0) >= limit  # (what the test guards against)
    saved = saved_bytes(lora, x)
    assert saved.get(torch.float32, 0) < limit, saved  # A, B and down = x @ A.T [64, 8] only
    assert saved.get(torch.bfloat16, 0) >= x.numel() * 2  # x itself
    # also when x needs no gradient (A's gradient still reads x)
    saved = saved_bytes(lora, x.detach())
    assert saved.get(torch.float32, 0) < limit, saved
