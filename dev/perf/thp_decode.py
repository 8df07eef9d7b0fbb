"""Experiment (2026-12-04, fourth session): does backing the weights with transparent huge pages speed up CPU decode?

The GEMVs stream every weight once per token. With 4 KB pages that is a TLB miss every 4 KB, and the hardware
prefetchers stop at page boundaries. This machine's THP setting is `madvise`, so torch's tensors get 4 KB pages.
The script loads the model, then alternates 24-step decode timings between:
- the weights as loaded;
- each parameter or buffer of 2 MB or more copied into a 2 MB-aligned anonymous mapping advised
  MADV_HUGEPAGE.

Tokens are compared between the two.

Measured on the 2-core Zen 5 EPYC, E2B, 2 threads, median step (ms), three rounds, 4 KB pages then huge pages:
- bf16: 105.5 / 101.3, 107.3 / 101.5, 106.7 / 104.7;
- int4 qhead: 38.2 / 38.0, 38.9 / 39.0, 38.9 / 36.8.

Tokens were identical. The qgemm shapes alone, rotated over 256 MB of copies, gained 7-20%, but in the decode step
the gain is 2-5% (bf16) and within noise (int4), so nothing ships.

    PYTHONPATH=.:python python dev/perf/thp_decode.py /work/e2bbench/gemma-4-E2B-random bf16|int4|int8
"""
import mmap
import statistics
import sys
import time

import torch

import gemma4
from gemma4.cache import Gemma4Cache
torch.set_num_threads(2)
HUGE = 2 << 20
def to_huge(t):
    nbytes = t.numel() * t.element_size()
    m = mmap.mmap(-1, nbytes + HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.madvise(mmap.MADV_HUGEPAGE)
    buf = torch.frombuffer(m, dtype=torch.uint8)
    off = (-buf.data_ptr()) % HUGE
    out = buf[off:off + nbytes].view(t.dtype).view(t.shape)
    out.copy_(t)
    return out
def swap(model, huge_on, saved):
    n = 0
    for mod in model.modules():
        for name, p in list(mod._parameters.items()) + list(mod._buffers.items()):
            if p is None or p.numel() * p.element_size() < HUGE: continue
            if p.untyped_storage().data_ptr() == 0: continue
            key = (id(mod), name)
            if huge_on:  # (the memory-mapped embedding is copied too: RSS grows by it in this phase)
                saved[key] = p.data
                p.data = to_huge(p.data); n += 1
            elif key in saved:
                p.data = saved.pop(key); n += 1
    return n
path, mode = sys.argv[1], sys.argv[2]
kw = {}
if mode != "bf16":
    kw = dict(quantization_config=gemma4.QuantizationConfig(weights=mode, group_size=32, modules_to_not_convert=["router"]))
model = gemma4.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, **kw).eval()
ids = torch.randint(0, 262144, (1, 64), generator=torch.Generator().manual_seed(0))
def run(new=24):
    with torch.inference_mode():
        cache = Gemma4Cache(model.config, max_cache_len=64 + new + 8, batch_size=1)
        tok = model(input_ids=ids, cache=cache, logits_to_keep=1).logits[0, -1].argmax()
        out=[int(tok)]; ts=[]
        for _ in range(new):
            t0=time.perf_counter()
            tok = model(input_ids=tok.view(1, 1), cache=cache).logits[0, -1].argmax()
            ts.append(time.perf_counter()-t0); out.append(int(tok))
    return out, statistics.median(ts[4:]) * 1e3
saved = {}
base_out, _ = run(6)
for r in range(3):
    o1, t1 = run()
    n = swap(model, True, saved)
    o2, t2 = run()
    swap(model, False, saved)
    print(f"round {r}: 4k pages {t1:.1f} ms, huge pages {t2:.1f} ms ({n} tensors), same tokens {o1 == o2}", flush=True)
