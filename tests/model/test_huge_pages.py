"""Large CPU weights in transparent huge pages (gemma4/huge_pages.py): placed, advised, and plain elsewhere."""
import os

import pytest
import torch

from gemma4 import checkpoint, huge_pages

needs_thp = pytest.mark.skipif(not huge_pages.ENABLED, reason="transparent huge pages are off on this machine")


def _anon_huge_bytes(ptr: int) -> int:
    """AnonHugePages of the mapping that holds address ptr (/proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and ":" not in head:  # a mapping's first line: "start-end perms ..."
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= ptr < hi
            elif inside and head == "AnonHugePages:":
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no mapping holds {ptr:#x}")


@needs_thp
def test_large_cpu_tensor_gets_huge_pages_and_keeps_its_values():
    size, stride = (3, 700, 1000), (700_000, 1000, 1)  # 8.4 MB of float32: 4 whole huge pages inside
    t = huge_pages.empty_strided(size, stride, torch.float32, "cpu")
    assert t.shape == size and t.stride() == stride and t.dtype == torch.float32
    values = torch.randn(size)
    t.copy_(values)
    assert torch.equal(t, values)
    nbytes = t.numel() * 4
    got = _anon_huge_bytes(t.data_ptr())
    assert nbytes // huge_pages.HUGE_PAGE * huge_pages.HUGE_PAGE <= got <= nbytes, got  # the interior, not the tail


def test_small_or_non_cpu_tensors_are_plain():
    small = huge_pages.empty_strided((100, 100), (100, 1), torch.bfloat16, "cpu")
    meta = huge_pages.empty_strided((4096, 4096), (4096, 1), torch.float32, "meta")
    assert small._base is None and small.shape == (100, 100) and small.dtype == torch.bfloat16
    assert meta.device.type == "meta" and meta.shape == (4096, 4096)


@needs_thp
def test_materialized_model_weights_are_in_huge_pages():
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(2048, 1024), torch.nn.Linear(16, 16))
    checkpoint.materialize(model, {}, "cpu")
    big, small = model[0].weight, model[1].weight
    with torch.no_grad():
        big.normal_()
        small.normal_()
    assert big.device.type == "cpu" and big.shape == (1024, 2048) and torch.isfinite(big).all()
    assert _anon_huge_bytes(big.data_ptr()) >= huge_pages.HUGE_PAGE * 3  # 8 MB: 3-4 whole huge pages
    assert small._base is None


def test_switch_reads_zero_one_and_refuses_anything_else(monkeypatch):
    monkeypatch.setenv("GEMMA4_HUGE_PAGES", "0")
    assert huge_pages._enabled() is False
    monkeypatch.setattr(huge_pages, "_cpu_vendor", lambda: "AuthenticAMD")  # measured slower there: off unless asked
    monkeypatch.delenv("GEMMA4_HUGE_PAGES")
    assert huge_pages._enabled() is False
    monkeypatch.setenv("GEMMA4_HUGE_PAGES", "1")
    mode = open(huge_pages._THP_MODE).read() if os.path.exists(huge_pages._THP_MODE) else "[never]"
    assert huge_pages._enabled() is ("[never]" not in mode)
    monkeypatch.setenv("GEMMA4_HUGE_PAGES", "yes")
    with pytest.raises(ValueError, match="GEMMA4_HUGE_PAGES='yes'"):
        huge_pages._enabled()


@needs_thp
def test_storage_is_the_tensor_and_is_freed_with_it():
    import gc
    import io

    t = huge_pages.empty_strided((1024, 1024), (1024, 1), torch.float32, "cpu")  # 4 MB
    t.copy_(torch.randn(1024, 1024))
    assert t.untyped_storage().nbytes() == t.numel() * 4  # torch.save writes no padding
    buf = io.BytesIO()
    torch.save(t, buf)
    assert buf.tell() < t.numel() * 4 + 65536
    ptr = t.data_ptr()
    del t
    gc.collect()
    with pytest.raises(AssertionError, match="no mapping holds"):
        _anon_huge_bytes(ptr)
