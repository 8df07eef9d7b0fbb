"""Shared test helpers: the backends present, and tolerances derived from the computation, never guessed.

Low precision: our error against a float32 (or float64) reference may be at most 2x the error of
the same computation done in plain PyTorch at the low precision (the flash-attention rule), plus
one unit in the last place at the output's magnitude so an exactly-rounded plain result does not
demand perfection.
"""
import torch

from gemma4 import _native

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
