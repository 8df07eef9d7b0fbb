"""GPU machine probes (one call): (1) does an op that raises under a TorchFunctionMode (torch.device
context) kill the process, for an aten op and for ours, in a plain python process; (2) gelu_tanh in the
deep negative tail (u in [-10.5, -8.5]) on CUDA and CPU in float32 against float64 with no cancellation."""
import subprocess
import sys

import torch

CASES = {
    "aten mm bad dtypes, no mode": "torch.mm(torch.ones(2,2,dtype=torch.int32), torch.ones(2,2))",
    "aten mm bad dtypes, device mode": "with torch.device('cpu'): torch.mm(torch.ones(2,2,dtype=torch.int32), torch.ones(2,2))",
    "ours bad dtype, no mode": "torch.ops.gemma4.rms_norm(torch.randn(4,16).int(), torch.randn(16), 1e-6)",
    "ours bad dtype, device mode": "with torch.device('cpu'): torch.ops.gemma4.rms_norm(torch.randn(4,16).int(), torch.randn(16), 1e-6)",
    "ours bad dtype, cuda device mode": "with torch.device('cuda'): torch.ops.gemma4.rms_norm(torch.randn(4,16).int(), torch.randn(16), 1e-6)",
}
for name, stmt in CASES.items():
    code = f"import torch, gemma4.ops\ntry:\n    {stmt}\nexcept RuntimeError as e:\n    print('raised:', str(e).splitlines()[0][:90])\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    print(f"{name}: rc={r.returncode} {r.stdout.strip()[:120]}")

import gemma4.ops  # noqa: E402,F401

u = torch.linspace(-10.5, -8.5, 4001, dtype=torch.float64)
b = torch.ones_like(u)
c = 0.7978845608028654
k = 2 * c * (u + 0.044715 * u ** 3)
exact = u * torch.sigmoid(k)  # float64, no 1 + tanh cancellation
for dev in ("cpu", "cuda"):
    out = torch.ops.gemma4.gated_activation(u.float().to(dev), b.float().to(dev), "gelu_tanh").double().cpu()
    rel = ((out - exact).abs() / exact.abs().clamp_min(1e-300))
    worst = rel.argmax()
    print(f"{dev}: worst rel err {rel.max():.3e} at u={u[worst]:.4f} (exact {exact[worst]:.3e}, got {out[worst]:.3e});"
          f" median rel {rel.median():.3e}")
