"""Experiment (2026-12-06, twenty-first session): the loaded model's weights collapsed into transparent huge pages
(madvise MADV_COLLAPSE on the 2 MB-aligned interior of every CPU parameter or buffer of 2 MB or more), decode timed
before and after in one process: (time of 40 new tokens - time of 8) / 32, twice each.

On the 2-core Intel Xeon (AVX-512, AMX), E2B bf16 random checkpoint, 2 threads: 169.3 ms a token before, 163.8 /
162.9 after (176 tensors, 3.3 GB, 5.1 s to collapse), the same tokens. dev/perf/thp_decode.py (the fourth session)
copied the weights into huge-page mappings instead, on the EPYC: 2-5% in bf16. Not shipped.

    PYTHONPATH=.:python python dev/perf/thp_collapse_decode.py /work/e2bbench/gemma-4-E2B-random bf16|int8|int4
"""
import ctypes
import sys
import time

import torch

import gemma4

MADV_COLLAPSE = 25  # Linux 6.1+
HUGE = 2 << 20


def collapse(model):
    """Collapse each large CPU tensor's aligned interior; returns (tensors, bytes, failures)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    done = nbytes = fails = 0
    for t in list(model.parameters()) + list(model.buffers()):
        size = t.numel() * t.element_size()
        if size < HUGE or t.device.type != "cpu":
            continue
        lo = (t.data_ptr() + HUGE - 1) // HUGE * HUGE
        hi = (t.data_ptr() + size) // HUGE * HUGE
        if hi <= lo:
            continue
        if libc.madvise(lo, hi - lo, MADV_COLLAPSE) == 0:
            done, nbytes = done + 1, nbytes + hi - lo
        else:
            fails += 1
    return done, nbytes, fails


def main():
    path, mode = sys.argv[1], sys.argv[2]
    torch.set_num_threads(2)
    kw = {} if mode == "bf16" else {"quantization_config": gemma4.QuantizationConfig(weights=mode, group_size=32)}
    model = gemma4.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, **kw).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 64), generator=torch.Generator().manual_seed(0))

    def ms_per_token():
        times, out = [], None
        for new in (8, 40):
            t = time.perf_counter()
            out = model.generate(ids, max_new_tokens=new, do_sample=False)
            times.append(time.perf_counter() - t)
        return (times[1] - times[0]) / 32 * 1e3, out[0, -32:].tolist()

    ms_per_token()  # the first call builds the greedy head's int8 copy
    before, tokens_before = ms_per_token()
    t = time.perf_counter()
    stats = collapse(model)
    took = time.perf_counter() - t
    after, tokens_after = ms_per_token()
    print(f"{mode}: 4 KB pages {before:.1f} ms a token; collapsed (tensors, bytes, failures) {stats} in {took:.2f} s; "
          f"huge pages {after:.1f} ms a token; same tokens {tokens_before == tokens_after}")


if __name__ == "__main__":
    main()
