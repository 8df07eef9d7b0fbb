"""The scaled token embedding (main and per-layer tables)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


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

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight, self.padding_idx) * self.embed_scale.to(self.weight.dtype)
