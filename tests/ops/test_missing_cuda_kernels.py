"""A gemma4 op reached on the CUDA dispatch key where no CUDA kernel exists raises one clear
NotImplementedError (csrc/registration.cpp), and device="cuda" is refused by a build without CUDA
kernels. The op is reached through redispatch, so this runs on a CPU-only machine too."""
import pytest
import torch

import gemma4.devices
from gemma4._native import build_info

CUDA = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)


def _moe_quant():
    """(grad_out, x, weights, indices, gate_up_qweight, gate_up_scales, down_qweight, down_scales, activation)."""
    x = torch.randn(3, 32)
    return (torch.randn(3, 32), x, torch.rand(3, 2), torch.tensor([[0, 1], [1, 0], [0, 1]]),
            torch.zeros(2, 64, 16, dtype=torch.uint8), torch.ones(2, 64, 1), torch.zeros(2, 32, 16, dtype=torch.uint8),
            torch.ones(2, 32, 1), "silu")


def _calls():
    x, w = torch.randn(3, 8), torch.randn(8)
    q, k, v = torch.randn(1, 4, 2, 8), torch.randn(1, 4, 1, 8), torch.randn(1, 4, 1, 8)
    return {
        "linear": (x, torch.randn(5, 8), None),
        "linear_grad_input": (x, torch.randn(8, 5)),
        "qgemm": (x, torch.zeros(5, 4, dtype=torch.uint8), torch.ones(5, 1), None),
        "moe_experts_quant": _moe_quant()[1:],
        "moe_experts_quant_backward": _moe_quant(),
        "rms_norm": (x, w, 1e-6),
        "rope": (q, torch.arange(4)[None], torch.rand(4)),
        "attention": (q, k, v, None, 1.0, 0),
        "gated_activation": (x, x, "silu"),
        "moe_route": (x, torch.ones(8), 2),
        "softcap_cross_entropy": (x, torch.randint(0, 8, (3,)), torch.rand(3), 30.0),
        "lora_down": (x, torch.randn(2, 8), 1.0),
        "lora_up": (torch.randn(3, 2), torch.randn(8, 2), 1.0, None, torch.float32),
        "lora_weight_grad": (x, torch.randn(3, 2), 1.0),
    }


CPU_ONLY = {"linear", "linear_grad_input"}


@pytest.mark.parametrize("name", list(_calls()))
def test_cuda_call_without_a_cuda_kernel_says_why(name):
    op = getattr(torch.ops.gemma4, name).default
    if build_info["cuda"] and name not in CPU_ONLY:
        pytest.skip("this build has a CUDA kernel for it (tests/ops/test_cuda_kernels.py runs it)")
    reason = "has no CUDA kernel yet" if build_info["cuda"] else "built without CUDA kernels"
    with pytest.raises(NotImplementedError, match=f"gemma4::{name} .*{reason}"):
        op.redispatch(CUDA, *_calls()[name])


def test_cuda_device_refused_by_a_build_without_cuda_kernels(monkeypatch):
    if build_info["cuda"]:
        pytest.skip("a CUDA build")
    # torch may lack CUDA here too: pretend it has one GPU, so the build is what refuses
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="device='cuda': this gemma4 was built without CUDA kernels"):
        gemma4.devices.parse_device("cuda")
