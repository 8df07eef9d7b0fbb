"""The scaled token embedding (main and per-layer tables)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..hf_format.safetensors import FileRows


def _in_range(ids: torch.Tensor, rows: int) -> bool:
    """Whether every id indexes one of `rows` rows (one pass over ids, one host read)."""
    low, high = torch.aminmax(ids)
    return bool((low >= 0) & (high < rows))


class Gemma4ScaledEmbedding(nn.Embedding):
    """embedding(ids) * scale, the scale cast to the weight dtype first (sqrt(1536) -> 39.25 in bf16),
    as transformers does."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int, embed_scale: float):
        super().__init__(num_embeddings, embedding_dim, padding_idx)
        self.scalar_embed_scale = embed_scale
        self.register_buffer("embed_scale", torch.tensor(embed_scale), persistent=False)

    def reset_parameters(self) -> None:
        # A model built on the meta device to be loaded (checkpoint.load_pretrained) skips nn.Embedding's random
        # init: normal_ on a meta tensor runs torch's Python decomposition, whose first call imports
        # torch._dynamo and sympy, ~50 MB of the process's memory for good. Loading overwrites the table anyway,
        # and init_weights() initialises a model built for real.
        if not self.weight.is_meta:
            super().reset_parameters()

    def reset_embed_scale(self) -> None:
        self.embed_scale = torch.tensor(self.scalar_embed_scale, device=self.weight.device)

    # Set by loading when the table is memory-mapped from its file (checkpoint.load_pretrained): the rows looked
    # up are then read from the file, so they do not stay resident through the map (FileRows says why).
    rows_from_file: FileRows | None = None

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._rows(input_ids) * self.embed_scale.to(self.weight.dtype)

    def _rows(self, input_ids: torch.Tensor) -> torch.Tensor:
        source, w = self.rows_from_file, self.weight
        from_file = (source is not None and not torch.compiler.is_compiling() and source.valid(w)
                     and input_ids.device.type == "cpu" and input_ids.dtype in (torch.int32, torch.int64)
                     and not (torch.is_grad_enabled() and w.requires_grad) and input_ids.numel() > 0
                     and _in_range(input_ids, w.shape[0]))
        # the table itself where it was written, for autograd and compile, and for F.embedding's errors on bad ids
        return source.gather(w, input_ids) if from_file else F.embedding(input_ids, w, self.padding_idx)
