"""Weights in transparent huge pages (Linux): each large CPU weight gets an anonymous mapping of its own whose
2 MB-aligned interior is advised MADV_HUGEPAGE before anything touches it, so the kernel backs it with 2 MB pages.

Why: a decode step streams every weight once, and on this project's 2-core Intel Xeon VM the rate depended on
which physical pages the weights happened to get. A process's first few GB come from the most fragmented free
memory (/proc/buddyinfo), and E2B's int8 decode ran up to a fifth slower on them (6.8-7.6 against 8.0-8.3 tok/s in
huge pages, the same process, rounds alternating with a bf16 model; docs/performance.md). Huge pages are
physically contiguous 2 MB runs and cut the page walks of a 2 GB stream 512-fold, whatever the free lists hold.

On by default on Intel CPUs only: on the 2-core AMD EPYC (Zen 4) VM of the nineteenth session the same advice
made E2B's bf16 decode 14-16% slower (docs/performance.md). GEMMA4_HUGE_PAGES=1 turns it on elsewhere too, 0 off;
where the kernel has THP "never" weights are allocated as before (torch.empty_strided).

Only the aligned interior is advised: a weight's last partial 2 MB stays in 4 KB pages, so the resident size
grows by nothing.
"""
from __future__ import annotations

import mmap
import os

import torch

HUGE_PAGE = 2 << 20  # x86-64's PMD size: the unit of a transparent huge page
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("vendor_id")), "")
    except OSError:
        return ""


def _enabled() -> bool:
    raw = os.environ.get("GEMMA4_HUGE_PAGES")
    if raw not in (None, "0", "1"):
        raise ValueError(f"GEMMA4_HUGE_PAGES={raw!r}: expected 0 or 1 (unset: on for Intel CPUs)")
    wanted = raw == "1" or (raw is None and _cpu_vendor() == "GenuineIntel")
    if not wanted or not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    try:
        with open(_THP_MODE) as f:
            mode = f.read()  # e.g. "always [madvise] never": the bracketed one is in force
    except OSError:
        return False
    return "[never]" not in mode


ENABLED = _enabled()


def empty_strided(size, stride, dtype: torch.dtype, device) -> torch.Tensor:
    """torch.empty_strided, with a CPU tensor of at least one huge page placed in huge pages (module docstring)."""
    device = torch.device(device)
    nbytes = (1 + sum((n - 1) * s for n, s in zip(size, stride))) * dtype.itemsize if all(size) else 0
    if not ENABLED or device.type != "cpu" or nbytes < HUGE_PAGE:
        return torch.empty_strided(size, stride, dtype=dtype, device=device)
    # Private: a shared anonymous mapping is shmem, whose huge pages follow another switch (shmem_enabled).
    # Untouched: no page exists until the loader's first write, after the advice.
    region = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    start = -torch.frombuffer(region, dtype=torch.uint8, count=1).data_ptr() % HUGE_PAGE  # to the next 2 MB
    region.madvise(mmap.MADV_HUGEPAGE, start, nbytes // HUGE_PAGE * HUGE_PAGE)
    # A storage of exactly nbytes (torch.save writes whole storages), which keeps the mapping alive.
    flat = torch.frombuffer(memoryview(region)[start:start + nbytes], dtype=torch.uint8)  # [nbytes]
    return flat.view(dtype).as_strided(size, stride)
