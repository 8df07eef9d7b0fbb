"""GPU: one LoRA update (forward + backward, r=16, bf16 activations, float32 factors) at E2B's shapes, by the
gemma4::lora_* ops against PEFT's maths (float32 copies + cuBLAS float32 GEMMs). Per op: time and the
bandwidth of the bytes it must move (the wide operand read once, the output written once).

    python dev/train/bench_lora_ops_gpu.py [--tokens 8192] [--rank 16]
"""
import argparse
import json

import torch

from gemma4 import ops


def timed(fn, reps=20):
    fn()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / reps * 1e3  # us


def peft_update(x, base_out, A, B, s, g):
    """PEFT's forward + backward of result + lora_B(lora_A(x.float())) * s, by hand (what autograd runs)."""
    xf = x.float()
    down = xf @ A.t()
    out = (base_out.float() + (down @ B.t()) * s).to(base_out.dtype)
    gf = g.float() * s
    grad_B = gf.t() @ down
    gd = gf @ B
    grad_A = gd.t() @ xf
    grad_x = (gd @ A).to(x.dtype)
    return out, grad_A, grad_B, grad_x


def ours_update(x, base_out, A, B, s, g):
    down = ops.lora_down(x, A)
    out = ops.lora_up(down, B, s, base_out)
    gd = ops.lora_down(g, B.t(), s)
    grad_B = ops.lora_weight_grad(g, down, s).t()
    grad_A = ops.lora_weight_grad(x, gd)
    grad_x = ops.lora_up(gd, A.t(), 1.0, None, x.dtype)
    return out, grad_A, grad_B, grad_x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    N, r, dev = args.tokens, args.rank, "cuda"
    rows = []
    for fin, fout in [(1536, 2048), (1536, 256), (1536, 6144), (6144, 1536), (1536, 12288), (12288, 1536)]:
        x = torch.randn(N, fin, device=dev).bfloat16()
        base_out = torch.randn(N, fout, device=dev).bfloat16()
        g = torch.randn(N, fout, device=dev).bfloat16()
        A, B = torch.randn(r, fin, device=dev) * 0.02, torch.randn(fout, r, device=dev) * 0.02
        row = {"in": fin, "out": fout, "tokens": N, "rank": r}
        row["peft_us"] = timed(lambda: peft_update(x, base_out, A, B, 2.0, g))
        row["ours_us"] = timed(lambda: ours_update(x, base_out, A, B, 2.0, g))
        row["down_us"] = timed(lambda: ops.lora_down(x, A))
        down = ops.lora_down(x, A)
        row["up_us"] = timed(lambda: ops.lora_up(down, B, 2.0, base_out))
        row["wgrad_us"] = timed(lambda: ops.lora_weight_grad(x, down))
        # bytes the whole update must move: x twice (forward, grad_A), base_out + out, g twice, grad_x
        need = 2 * (2 * N * fin + 2 * N * fout + 2 * N * fout + N * fin)
        row["floor_us"] = need / 4.0e12 * 1e6
        # the numbers agree with PEFT's
        a, b = peft_update(x, base_out, A, B, 2.0, g), ours_update(x, base_out, A, B, 2.0, g)
        row["max_rel_diff"] = max(((p.float() - q.float()).abs().max() / p.float().abs().max()).item()
                                  for p, q in zip(a, b))
        rows.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    tot_p, tot_o = sum(r_["peft_us"] for r_ in rows), sum(r_["ours_us"] for r_ in rows)
    print(f"total: PEFT maths {tot_p:.0f} us, ours {tot_o:.0f} us ({tot_p / tot_o:.2f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
