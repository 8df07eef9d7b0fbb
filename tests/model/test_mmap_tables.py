"""The embedding tables are memory-mapped from safetensors when they stay on the CPU in the file's dtype
(checkpoint.load_pretrained, hf_format.safetensors.map_tensor): nothing of them is resident after loading,
a write never reaches the file, saving over the source directory works, and a bad table is one error."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from gemma4.checkpoint import SAFE_WEIGHTS_NAME
from gemma4.errors import CheckpointError
from gemma4.hf_format.safetensors import _PM_PRESENT, page_map, release_pages
from gemma4.modeling import Gemma4ForCausalLM
from gemma4.quant import QuantizationConfig, QuantLinear
from tests.oracle import make_hf_model, save_hf

TABLES = ("model.embed_tokens.weight", "model.embed_tokens_per_layer.weight")
IDS = torch.tensor([[2, 17, 301, 5, 99, 400, 3]])


def _mappings(path: str) -> list[tuple[int, int, int]]:
    """(start, end, resident kB) of every mapping of `path` in this process (/proc/self/smaps)."""
    out, current = [], None
    with open("/proc/self/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and len(parts) >= 5 and ":" in parts[3]:  # a mapping's header line
                current = None
                if len(parts) >= 6 and os.path.realpath(parts[5]) == os.path.realpath(path):
                    start, end = (int(x, 16) for x in parts[0].split("-"))
                    current = [start, end, 0]
                    out.append(current)
            elif current is not None and parts[0] == "Rss:":
                current[2] = int(parts[1])
    return [tuple(m) for m in out]


def _is_mapped_from(t: torch.Tensor, path: str) -> bool:
    p = t.data_ptr()
    return any(start <= p < end for start, end, _ in _mappings(path))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(4321)
    hf = make_hf_model("tiny-e2b")
    path = tmp_path_factory.mktemp("mmap")
    save_hf(hf, path)
    return str(path), hf


def _file_tensor(path: str, key: str) -> torch.Tensor:
    with safe_open(os.path.join(path, SAFE_WEIGHTS_NAME), "pt") as f:
        return f.get_tensor(key)


def test_tables_are_mapped_and_not_resident(checkpoint):
    path, hf = checkpoint
    file = os.path.join(path, SAFE_WEIGHTS_NAME)
    model = Gemma4ForCausalLM.from_pretrained(path, progress=False)
    table_kb = sum(model.get_parameter(k).nbytes for k in TABLES) // 1024
    assert table_kb >= 64
    resident = sum(rss for _, _, rss in _mappings(file))  # before anything below reads the tables
    assert resident <= 8, f"{resident} of the tables' {table_kb} kB resident right after loading"
    for key in TABLES:
        t = model.get_parameter(key)
        assert _is_mapped_from(t, file), key
        assert torch.equal(t, _file_tensor(path, key)), key
    assert not _is_mapped_from(model.get_parameter("model.layers.0.mlp.down_proj.weight"), file)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=IDS).logits, hf(input_ids=IDS).logits, rtol=1e-4, atol=1e-4)


def test_other_dtype_is_copied_not_mapped(checkpoint):
    path, _ = checkpoint
    model = Gemma4ForCausalLM.from_pretrained(path, dtype=torch.bfloat16, progress=False)
    t = model.model.embed_tokens_per_layer.weight
    assert t.dtype == torch.bfloat16 and not _is_mapped_from(t, os.path.join(path, SAFE_WEIGHTS_NAME))
    assert torch.equal(t, _file_tensor(path, TABLES[1]).to(torch.bfloat16))


def test_writes_stay_private_and_saving_over_the_source_works(checkpoint, tmp_path):
    src, _ = checkpoint
    path = tmp_path / "copy"
    save_hf(make_hf_model("tiny-e2b"), path)
    model = Gemma4ForCausalLM.from_pretrained(path, progress=False)
    before = _file_tensor(str(path), TABLES[0])
    with torch.no_grad():
        model.model.embed_tokens.weight[3] += 1.0  # copy-on-write: the file keeps its bytes
    assert torch.equal(_file_tensor(str(path), TABLES[0]), before)
    changed = model.model.embed_tokens.weight.detach().clone()
    model.save_pretrained(path)  # rewrites the file the table is still mapped from
    assert torch.equal(model.model.embed_tokens.weight, changed)
    again = Gemma4ForCausalLM.from_pretrained(path, progress=False)
    assert torch.equal(again.model.embed_tokens.weight, changed)
    assert not torch.equal(again.model.embed_tokens.weight, before)


def test_non_finite_table_is_one_error(checkpoint, tmp_path):
    src, hf = checkpoint
    path = tmp_path / "bad"
    save_hf(hf, path)
    file = os.path.join(path, SAFE_WEIGHTS_NAME)
    with safe_open(file, "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    row = torch.randint(0, tensors[TABLES[1]].shape[0], ()).item()
    tensors[TABLES[1]][row, 5] = float("nan")
    save_file(tensors, file, metadata=metadata)
    with pytest.raises(CheckpointError, match="non-finite") as info:
        Gemma4ForCausalLM.from_pretrained(path, progress=False)
    assert SAFE_WEIGHTS_NAME in str(info.value) and TABLES[1] in str(info.value)
    assert f"1 NaN, 0 inf of {tensors[TABLES[1]].numel()}" in str(info.value)  # counted over the whole table


def _present_pages(t: torch.Tensor) -> int:
    return int(((page_map(t) & _PM_PRESENT) != 0).sum())


def test_quantizing_the_tied_head_leaves_the_table_not_resident(checkpoint):
    """The tied head quantized while loading reads the whole mapped table once (quant/modules.py
    _quantize_into); its pages are handed back block by block, so the pass does not leave it resident."""
    path, hf = checkpoint
    file = os.path.join(path, SAFE_WEIGHTS_NAME)
    config = QuantizationConfig(weights="int8", group_size=32, modules_to_not_convert=["router"])
    model = Gemma4ForCausalLM.from_pretrained(path, progress=False, quantization_config=config)
    table = model.model.embed_tokens.weight
    assert isinstance(model.lm_head, QuantLinear) and _is_mapped_from(table, file)
    assert len(page_map(table)) >= 16
    assert _present_pages(table) == 0
    # the head is the table, quantized: within half a level of it
    err = (model.lm_head.dequantize() - table.float()).abs()
    assert (err <= model.lm_head.scales.float().repeat_interleave(32, 1) / 2 * (1 + 1e-6)).all()


def test_written_table_pages_are_never_dropped(checkpoint):
    """release_pages refuses a range holding a page written since mapping (dropping it would lose the write)."""
    path, _ = checkpoint
    model = Gemma4ForCausalLM.from_pretrained(path, progress=False)
    table = model.model.embed_tokens.weight
    with torch.no_grad():
        table[table.shape[0] // 2] += 1.0  # one private (copy-on-write) page, inside the whole pages
    want = table.detach().clone()
    release_pages(table)
    assert _present_pages(table) >= 1
    assert torch.equal(table, want)


def _ple_lookup(model, ids):
    table = model.model.embed_tokens_per_layer
    with torch.no_grad():
        return table(ids), torch.nn.functional.embedding(ids, table.weight) * table.embed_scale.to(table.weight.dtype)


def test_lookups_read_rows_from_the_file_not_the_map(checkpoint):
    """The model's lookups in its mapped tables (the token embedding, the per-layer inputs) read the file
    (FileRows): none of the tables' pages becomes resident (through the map, each touched row and the page
    cache's neighbours would stay), and the rows equal the table's, for ids of any shape. (A whole forward
    would touch the tied head's table, and the kernel maps page-cache neighbours of those faults, which in
    this tiny file are the other table's pages.)"""
    path, _ = checkpoint
    model = Gemma4ForCausalLM.from_pretrained(path, progress=False)
    tables = [model.get_parameter(k) for k in TABLES]
    table = tables[1]
    ids = torch.randint(0, table.shape[0], (3, 11), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        model.model.per_layer_inputs(ids, model.model.embed_tokens(ids))
    assert all(len(page_map(t)) >= 16 and _present_pages(t) == 0 for t in tables)
    got, want = _ple_lookup(model, ids)  # the F.embedding reference touches the map: after the check above
    assert got.shape == (3, 11, table.shape[1]) and torch.equal(got, want)


def test_lookups_after_a_write_or_with_gradients_use_the_table(checkpoint):
    """Once the table is written in place (its version moves) the file is stale, and a lookup that needs a
    gradient must go through autograd: both take the table itself. Bad ids get F.embedding's own error."""
    path, _ = checkpoint
    model = Gemma4ForCausalLM.from_pretrained(path, progress=False)
    emb = model.model.embed_tokens_per_layer
    ids = torch.tensor([[4, 9, 4]])
    with torch.no_grad():
        emb.weight[4] += 1.0
    got, want = _ple_lookup(model, ids)
    assert torch.equal(got, want) and not torch.equal(got[0, 0], torch.from_numpy(
        _file_tensor(path, "model.embed_tokens_per_layer.weight")[4].numpy()) * emb.embed_scale)
    fresh = Gemma4ForCausalLM.from_pretrained(path, progress=False).model.embed_tokens_per_layer
    fresh.weight.requires_grad_(True)
    fresh(ids).sum().backward()
    assert fresh.weight.grad[4].abs().sum() > 0 and fresh.weight.grad[5].abs().sum() == 0
    with pytest.raises(IndexError):
        with torch.no_grad():
            fresh(torch.tensor([[fresh.weight.shape[0]]]))


def test_copied_model_reads_the_same_rows(checkpoint):
    import copy  # noqa: PLC0415

    path, _ = checkpoint
    model = Gemma4ForCausalLM.from_pretrained(path, progress=False)
    twin = copy.deepcopy(model)
    ids = torch.tensor([[1, 2, 300]])
    with torch.no_grad():
        assert torch.equal(twin(input_ids=ids).logits, model(input_ids=ids).logits)
