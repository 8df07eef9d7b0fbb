"""The one safetensors reader and writer (checkpoints and adapters).

Reading uses our own header parser: a truncated file, a corrupt header, an unknown dtype code or
offsets that do not fit the data are one CheckpointError naming the file and tensor, before any tensor
memory is allocated. Tensors are read with plain file reads at the validated offsets, and every
floating-point tensor is checked for NaN/inf as it is read. The one exception is `map_tensor`: the big
lookup tables (embeddings) are memory-mapped, so only the rows a run touches become resident.

Writing goes through the safetensors package, after making every tensor a contiguous CPU tensor
with storage of its own (safetensors refuses views of one storage).
"""
from __future__ import annotations

import json
import math
import mmap
import os
import weakref
from dataclasses import dataclass

import torch

from ..errors import CheckpointError

__all__ = ["TensorEntry", "read_header", "read_tensor", "read_into", "map_tensor", "FileRows", "load_file",
           "row_blocks_read_once", "save_file", "check_finite", "DTYPES"]

# safetensors dtype codes -> (torch dtype, bytes per element). Unknown codes are reported, not guessed.
DTYPES: dict[str, tuple[torch.dtype | None, int]] = {
    "F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2),
    "F8_E4M3": (getattr(torch, "float8_e4m3fn", None), 1), "F8_E5M2": (getattr(torch, "float8_e5m2", None), 1),
    "I64": (torch.int64, 8), "I32": (torch.int32, 4), "I16": (torch.int16, 2), "I8": (torch.int8, 1),
    "U64": (getattr(torch, "uint64", None), 8), "U32": (getattr(torch, "uint32", None), 4),
    "U16": (getattr(torch, "uint16", None), 2), "U8": (torch.uint8, 1), "BOOL": (torch.bool, 1),
}
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as a safetensors header describes it."""

    file: str
    key: str
    dtype_code: str
    dtype: torch.dtype | None  # None: a code this torch has no dtype for
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the data in the file
    nbytes: int


def read_header(path: str) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """Parse and validate a .safetensors header without reading tensor data.

    Returns ({key: TensorEntry}, metadata). Raises CheckpointError naming the file (and tensor) for
    a file that is missing, truncated, has a corrupt header, or whose offsets do not fit its data.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"truncated or not a safetensors file ({size} bytes; the 8-byte header "
                                      "length is missing)", path)
            n = int.from_bytes(head, "little")
            if n > _MAX_HEADER_BYTES or n > size - 8:
                raise CheckpointError(f"corrupt or truncated safetensors file: header length {n} does not fit the "
                                      f"file's {size} bytes", path)
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"cannot read: {e.strerror or e}", path) from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"corrupt safetensors header (not valid JSON: {e})", path) from None
    if not isinstance(header, dict):
        raise CheckpointError("corrupt safetensors header (not a JSON object)", path)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise CheckpointError("corrupt safetensors header (__metadata__ is not an object)", path)
    data_len = size - 8 - n
    entries: dict[str, TensorEntry] = {}
    for key, info in header.items():
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise CheckpointError("corrupt safetensors header entry (needs dtype, shape, data_offsets)", path, key)
        code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if code not in DTYPES:
            raise CheckpointError(f"unknown safetensors dtype {code!r}", path, key)
        dtype, itemsize = DTYPES[code]
        if (not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape)
                or not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and o >= 0 for o in offsets) or offsets[0] > offsets[1]):
            raise CheckpointError(f"corrupt safetensors header entry (shape {shape!r}, data_offsets {offsets!r})",
                                  path, key)
        nbytes = math.prod(shape) * itemsize
        if offsets[1] - offsets[0] != nbytes:
            raise CheckpointError(f"corrupt safetensors header: shape {shape} of {code} needs {nbytes} bytes but "
                                  f"data_offsets span {offsets[1] - offsets[0]}", path, key)
        if offsets[1] > data_len:
            raise CheckpointError(f"truncated safetensors file: the tensor ends at data byte {offsets[1]} but the "
                                  f"file holds only {data_len} data bytes", path, key)
        entries[key] = TensorEntry(path, key, code, dtype, tuple(shape), 8 + n + offsets[0], nbytes)
    return entries, metadata


def read_into(fh, entry: TensorEntry, target: torch.Tensor) -> None:
    """Copy one tensor from the open file into `target` (any dtype/device; the default load).

    A contiguous CPU target of the stored dtype is filled in place, anything else goes through one
    temporary host tensor: peak extra memory is one tensor, and the file is never memory-mapped
    (whose pages would otherwise count against the process).
    """
    direct = target.device.type == "cpu" and target.dtype == entry.dtype and target.is_contiguous()
    host = target.detach() if direct else torch.empty(entry.shape, dtype=entry.dtype)
    _read_bytes(fh, entry, host)
    if not direct:
        target.copy_(host)


def read_tensor(fh, entry: TensorEntry) -> torch.Tensor:
    """One tensor as stored (dtype, shape): a fresh CPU tensor the caller may keep."""
    if entry.dtype is None:
        raise CheckpointError(f"dtype {entry.dtype_code} has no torch equivalent in torch {torch.__version__}",
                              entry.file, entry.key)
    host = torch.empty(entry.shape, dtype=entry.dtype)
    _read_bytes(fh, entry, host)
    return host


class FileRows:
    """Rows of a memory-mapped table (map_tensor) read with plain file reads instead of through the map.

    A page touched through a file map stays in the process's resident set, and the kernel maps the page
    cache's neighbouring pages at each fault too ("fault-around": up to hundreds of KB per touched row with
    large page-cache folios). A run that looks up one per-layer-embedding row per token (36 KB in float32)
    so kept ~45 MB of the E2B table resident (float32, 128-token prompt and 64 new tokens: peak RSS 9.26 ->
    9.20 GB with the rows read by pread, which cost only the output tensor).

    Valid while the tensor is the mapped one, unwritten: the same data pointer and version counter as when
    the table was mapped (an in-place write, e.g. training the table, bumps the version; `.data = ...` or a
    dtype change moves the pointer). The file descriptor is a duplicate of one opened while loading, so a file
    replaced on disk after loading is not read. Copies of a model share it (it is never written)."""

    def __init__(self, table: torch.Tensor, fd: int, offset: int):
        self.fd = os.dup(fd)
        weakref.finalize(self, os.close, self.fd)
        self.offset = offset  # of row 0 in the file
        self.row_bytes = table[0].numel() * table.element_size()
        self.ptr, self.version = table.data_ptr(), table._version

    def valid(self, table: torch.Tensor) -> bool:
        return table.data_ptr() == self.ptr and table._version == self.version

    def gather(self, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """table[ids] ([*ids.shape, *table.shape[1:]]), for ids in range (the caller checks)."""
        flat = ids.reshape(-1).tolist()
        out = torch.empty((len(flat), *table.shape[1:]), dtype=table.dtype)  # [n, ...]
        rows = out.view(len(flat), -1).view(torch.uint8).numpy()  # [n, row_bytes]
        for i, row in enumerate(flat):
            if os.preadv(self.fd, [rows[i]], self.offset + row * self.row_bytes) != self.row_bytes:
                raise OSError(f"short read of row {row} from a memory-mapped table")
        return out.view(*ids.shape, *table.shape[1:])

    def __deepcopy__(self, memo):
        return self


def map_tensor(entry: TensorEntry, maps: dict[str, mmap.mmap]) -> tuple[torch.Tensor, FileRows] | None:
    """The tensor as a private, copy-on-write memory map of its file, and its FileRows for lookups that
    read rows without the map (None when its offset is not a multiple of its element size, which
    torch.frombuffer needs).

    Pages are read from the file (or the page cache, shared with other processes) when first touched,
    so a table used one row per token costs the rows used, as llama.cpp's mmap does. A write (training
    the table) copies the page it touches and never reaches the file. `maps` holds one map per file,
    shared by its tensors (each tensor keeps its map alive). The finite check reads every page once;
    they are released after it, so loading leaves none of them resident.
    """
    item = entry.dtype.itemsize
    if entry.offset % item or not entry.nbytes:
        return None
    with open(entry.file, "rb") as fh:
        if entry.file not in maps:
            maps[entry.file] = mmap.mmap(fh.fileno(), 0, flags=mmap.MAP_PRIVATE,
                                         prot=mmap.PROT_READ | mmap.PROT_WRITE)
        m = maps[entry.file]
        t = torch.frombuffer(m, dtype=entry.dtype, count=entry.nbytes // item, offset=entry.offset).view(entry.shape)
        rows_from_file = FileRows(t, fh.fileno(), entry.offset)
    rows = t.reshape(t.shape[0], -1)  # [R, C]
    row_bytes = rows_from_file.row_bytes
    step = max(1, (1 << 24) // max(1, row_bytes))  # 16 MiB of rows at a time
    page = mmap.PAGESIZE
    for start in range(0, rows.shape[0], step):
        if not all_finite(rows[start:start + step]):
            check_finite(t, entry.file, entry.key)  # the error, with the whole table's counts
        first = (entry.offset + start * row_bytes) // page * page  # madvise wants a page-aligned start
        end = entry.offset + min(start + step, rows.shape[0]) * row_bytes
        m.madvise(mmap.MADV_DONTNEED, first, end - first)  # so the check never holds more than a chunk
    # Then the whole map: the kernel also maps cached pages around each fault ("fault-around"). Nothing
    # in the map has been written yet, so nothing is lost.
    m.madvise(mmap.MADV_DONTNEED)
    return t, rows_from_file


def is_file_mapped(t: torch.Tensor) -> bool:
    """Whether t's memory lies in a mapping of a file (map_tensor's tables), per /proc/self/maps (Linux)."""
    if t.device.type != "cpu" or not t.numel() or not os.path.exists("/proc/self/maps"):
        return False
    addr = t.data_ptr()
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            lo, hi = (int(a, 16) for a in fields[0].split("-"))
            if lo <= addr < hi:
                return len(fields) >= 6 and fields[5].startswith("/")
    return False


# /proc/self/pagemap: one 64-bit entry per virtual page (Documentation/admin-guide/mm/pagemap.rst).
_PM_PRESENT, _PM_SWAPPED, _PM_FILE = 1 << 63, 1 << 62, 1 << 61


def _whole_pages(t: torch.Tensor) -> tuple[int, int]:
    """[first, last) addresses of the pages wholly inside t's memory."""
    page, start = mmap.PAGESIZE, t.data_ptr()
    return -(-start // page) * page, (start + t.numel() * t.element_size()) // page * page


def page_map(t: torch.Tensor):
    """The pagemap entries (numpy uint64) of the pages wholly inside t, or None where unreadable."""
    import numpy as np  # noqa: PLC0415

    first, last = _whole_pages(t)
    if last <= first:
        return np.zeros(0, dtype=np.uint64)
    try:
        with open("/proc/self/pagemap", "rb") as f:
            f.seek(first // mmap.PAGESIZE * 8)
            return np.frombuffer(f.read((last - first) // mmap.PAGESIZE * 8), dtype=np.uint64)
    except OSError:
        return None


def release_pages(t: torch.Tensor) -> None:
    """Drop the resident pages wholly inside t, a file-mapped tensor (is_file_mapped) just read through,
    so one pass over a memory-mapped table (quantizing the tied head) does not leave it all resident.
    They come back from the file when touched again. Only when none of them was written since mapping:
    a written page of a private map is the only copy of the write, and dropping it would lose it (then,
    or where pagemap cannot be read, nothing is done)."""
    import ctypes  # noqa: PLC0415

    entries = page_map(t)
    if entries is None or not len(entries):
        return
    private = ((entries & (_PM_PRESENT | _PM_SWAPPED)) != 0) & ((entries & _PM_FILE) == 0)
    if private.any():
        return
    first, last = _whole_pages(t)
    ctypes.CDLL(None).madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), mmap.MADV_DONTNEED)


def row_blocks_read_once(t: torch.Tensor, rows: int):
    """(start, t[start:start + rows]) over t's rows, for a pass that reads t once: where t is file-mapped
    (is_file_mapped), each block's pages are handed back once the caller is done with it (release_pages), so the
    pass does not leave the whole table resident (quantizing the tied head, the greedy head's int8 copy)."""
    mapped = is_file_mapped(t)
    for start in range(0, t.shape[0], rows):
        block = t[start:start + rows]
        yield start, block
        if mapped:
            release_pages(block)


def load_file(path: str) -> dict[str, torch.Tensor]:
    """Every tensor of a (small) safetensors file, validated, as CPU tensors in file order."""
    entries, _ = read_header(path)
    with open(path, "rb") as fh:
        return {e.key: read_tensor(fh, e) for e in sorted(entries.values(), key=lambda e: e.offset)}


def _read_bytes(fh, entry: TensorEntry, host: torch.Tensor) -> None:
    """Fill the contiguous CPU tensor `host` with the entry's bytes; refuse NaN/inf in float tensors."""
    if entry.nbytes:
        view = memoryview(host.reshape(-1).view(torch.uint8).numpy())
        fh.seek(entry.offset)
        done = 0
        while done < entry.nbytes:
            got = fh.readinto(view[done:])
            if not got:
                raise CheckpointError(f"file ended after {done} of the tensor's {entry.nbytes} bytes (truncated while "
                                      "loading?)", entry.file, entry.key)
            done += got
    check_finite(host, entry.file, entry.key)


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether a floating-point tensor holds no NaN or inf: its min and max are finite (both propagate NaN).

    One vectorised reduction with two scalar outputs, where isfinite(t).all() made a bool tensor of t's size
    in a slow elementwise pass: loading the bf16 E2B checkpoint took 11.5-16.7 s, 3.6-6.3 s with this. The
    bool temporary was also big enough (10-40 MB a weight) for glibc to mmap it, and freeing it raised glibc's
    mmap threshold for the rest of the process, so the C heap grew to hold later temporaries."""
    low, high = torch.aminmax(tensor.reshape(-1))
    return bool(torch.isfinite(low) & torch.isfinite(high))


def check_finite(tensor: torch.Tensor, source: str, key: str) -> None:
    """CheckpointError naming the file and tensor when a floating-point tensor holds NaN or inf.

    A single NaN weight turns every logit NaN; reading the file costs far more than this pass.
    """
    if tensor.is_floating_point() and tensor.numel() and not all_finite(tensor):
        nan = int(torch.isnan(tensor).sum())
        inf = int(torch.isinf(tensor).sum())
        raise CheckpointError(f"holds non-finite values ({nan} NaN, {inf} inf of {tensor.numel()}); the file is "
                              "corrupt or the weights diverged", source, key)


def save_file(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str] | None = None) -> int:
    """Write `tensors` (any device, views allowed) to `path`; returns the bytes of tensor data written.

    Written to a temporary file beside `path`, then renamed over it: the old file's inode lives on for
    tensors still memory-mapped from it (map_tensor), which rewriting it in place would corrupt.
    """
    from safetensors.torch import save_file as _save  # noqa: PLC0415

    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        storage = t.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() != t.numel() * t.element_size():
            t = t.clone()  # a view of a larger storage, or of one already written: give it its own
        seen.add(t.untyped_storage().data_ptr())
        out[key] = t
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        _save(out, tmp, metadata={"format": "pt", **(metadata or {})})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return sum(t.numel() * t.element_size() for t in out.values())
