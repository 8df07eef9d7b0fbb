"""On the GPU machine: which bad-input errors kill the process? Each case runs in its own subprocess, called
both straight through torch.ops (the C++ autograd-less path) and through gemma4.ops' Python wrapper (which
goes through torch.library's autograd redispatch). Prints one line per case with the exit code."""
import subprocess
import sys

CASES = {
    "dtype": "rms_norm(torch.randn(4, 16).int(), torch.randn(16), 1e-6)",
    "size": "rms_norm(torch.randn(4, 16), torch.randn(15), 1e-6)",
    "dim": "rms_norm(torch.randn(4, 16), torch.randn(1, 16), 1e-6)",
    "wdtype": "rms_norm(torch.randn(4, 16), torch.randn(16).double(), 1e-6)",
    "device": "rms_norm(torch.randn(4, 16), torch.randn(16, device='cuda'), 1e-6)",
    "aten_mm": "torch.mm(torch.randn(4, 16), torch.randn(15, 3))",
}
PATHS = {
    "torch.ops": "rms_norm = torch.ops.gemma4.rms_norm",
    "wrapper": "from gemma4.ops.norm import rms_norm",
    "wrapper+grad": "from gemma4.ops.norm import rms_norm as _r\n"
                    "def rms_norm(x, w, e): return _r(x, w.requires_grad_() if w.is_floating_point() else w, e)",
    "redispatch": "def rms_norm(*a): return torch.ops.gemma4.rms_norm.default.redispatch("
                  "torch._C.DispatchKeySet(torch._C.DispatchKey.CPU), *a)",
    "aten_redispatch": "def rms_norm(*a): return torch.ops.aten.mm.default.redispatch("
                       "torch._C.DispatchKeySet(torch._C.DispatchKey.CPU), torch.randn(4, 16), torch.randn(15, 3))",
}
for pname, imp in PATHS.items():
    for cname, call in CASES.items():
        src = f"import torch, gemma4.ops\n{imp}\ntry:\n    {call}\nexcept Exception as e:\n    print(type(e).__name__, str(e).splitlines()[0][:90])\n"
        r = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, timeout=60)
        print(f"{pname:16s} {cname:8s} rc={r.returncode:4d} {r.stdout.strip()[:110]}", flush=True)
