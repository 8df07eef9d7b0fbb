"""Importing gemma4 makes glibc keep freed heap memory for reuse (csrc/module.cpp's keep_freed_memory):
activations allocated and freed again and again must not come back as fresh pages, each first write a page
fault. GEMMA4_KEEP_FREED_MB sets how much free heap top is kept (default 64); 0 leaves malloc alone.

Each case runs in a fresh interpreter: the setting is process-wide and made once, at import.
"""
import os
import platform
import subprocess
import sys

import pytest

# A prefill's pattern, reduced: 16 activations of 3 MB (a [128, 12288] bf16 projection's size), 48 MB, written
# and then all freed together, 20 rounds after eight in which the heap settles (it takes five here); prints the
# minor page faults per round. glibc's own rule keeps at most twice the largest block freed so far (6 MB here)
# free at its heap top, so when the blocks lie at the top it hands the 48 MB back each round and the next round
# faults again; with the default 64 MB kept it does not.
PROBE = r"""
import resource, torch
import gemma4._native as native
def layer(seed):
    blocks = [torch.empty(128, 12288, dtype=torch.bfloat16).fill_(seed + i) for i in range(16)]
    return sum(float(b[0, 0]) for b in blocks)
for i in range(8):
    layer(i)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(20):
    layer(8 + i)
print(native.keeps_freed_memory, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def run_probe(keep_mb):
    env = {k: v for k, v in os.environ.items() if k != "GEMMA4_KEEP_FREED_MB"}
    if keep_mb is not None:
        env["GEMMA4_KEEP_FREED_MB"] = keep_mb
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's malloc")
def test_freed_activations_are_reused_without_page_faults():
    kept = run_probe(None)
    assert kept.returncode == 0, kept.stderr
    applied, faults = kept.stdout.split()
    assert applied == "True"
    # One round's blocks are 12288 pages. Left to glibc's rule (GEMMA4_KEEP_FREED_MB=0) a round faults all of
    # them whenever its blocks end up at the heap top (most runs here; a small block placed above them keeps
    # them too); reused, a round faults none, or now and then one block's pages over the 20 rounds.
    assert float(faults) < 1000, f"{faults} minor page faults a round with freed memory kept"


def test_zero_leaves_malloc_alone():
    plain = run_probe("0")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.split()[0] == "False"


@pytest.mark.parametrize("value", ["-1", "many", "4096"])
def test_a_bad_value_is_one_error_naming_the_variable(value):
    bad = run_probe(value)
    assert bad.returncode != 0
    assert f"GEMMA4_KEEP_FREED_MB={value!r}" in bad.stderr
    assert bad.stderr.count("Error:") == 1
