"""KV cache for Gemma 4: preallocated buffers for the layers that compute K/V, ring buffers for sliding ones.

Layout (design.md section 5):

* Storage only for layers that own K/V (`spec.cache_index is not None`). KV-shared layers have no slot:
  they attend over whatever their source layer's `update` returned in the same forward call.
* Full-attention layers: `key`/`value` buffers [B, nKV, T_max, hd]; slot p holds sequence position p.
* Sliding layers (window W): ring buffers [B, nKV, W, hd]; slot p % W holds the latest position p.
* `full_mask` [B, T_max] and one `ring_mask` [B, W] per window: True where a slot holds a real token
  (written and not padding). Padding recorded when a prompt is written is remembered for later calls.
* Sequence positions are physical slots shared by the batch (left padding occupies slots, exactly as in
  transformers, whose sliding window also counts padded slots); `lengths` [B] counts each sequence's real
  tokens, and `seen` is the number of written slots (transformers' `get_seq_length()`).

The attention op reads `buffer.transpose(1, 2)` ([B, S, nKV, hd] with a stride-1 last dim) directly.

A forward call over T new tokens (`begin(T, attention_mask)` once, then `update` per K/V-owning layer):

* T == 1 (decode): the token is written in place and attention runs over the whole buffer with the slot
  mask: full layers over [B, T_max] (the query sits at the last key index, so causality admits every
  slot and the mask admits only filled ones), sliding layers over the W ring slots (every filled slot is
  within the window of the newest token, so slot order does not matter). Shapes do not depend on the
  step, and the write position is a device tensor: the step never syncs and can be captured in a graph.
* T > 1 (prefill, or a chunk after earlier calls): attention runs over the prompt's own K/V (plus, after
  earlier calls, the cached past in order, with the window applied by the op), then the tokens are
  written into the buffers.

Full buffers grow (by reallocation) if a call would overflow T_max, so the cache also works in the
transformers style (`model(ids, use_cache=True)` then `model(next_ids, past_key_values=cache)`);
`generate` sizes T_max exactly, so it never reallocates.
"""
from __future__ import annotations

import torch

__all__ = ["Gemma4Cache"]


class Gemma4Cache:
    """Static KV cache (full layers) + ring buffers (sliding layers) for one batch of sequences.

    config: the model's Gemma4Config (its `layers` specs decide which layers get storage).
    max_cache_len: T_max, slots per full-attention layer (grown on demand when exceeded).
    batch_size / device / dtype: taken from the first call when not given.
    """

    def __init__(self, config, max_cache_len: int | None = None, batch_size: int | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        self.config = config
        self.specs = [spec for spec in config.layers if spec.cache_index is not None]
        self.max_cache_len = int(max_cache_len) if max_cache_len is not None else 0
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else None
        self.dtype = dtype
        self.key: list[torch.Tensor | None] = [None] * len(self.specs)    # [B, nKV, T_max | W, hd]
        self.value: list[torch.Tensor | None] = [None] * len(self.specs)
        self.full_mask: torch.Tensor | None = None                          # [B, T_max] bool
        self.ring_mask: dict[int, torch.Tensor] = {}                        # window -> [B, W] bool
        self.lengths: torch.Tensor | None = None                            # [B] int64, real tokens
        self.seen = 0                                                       # slots written (host int)
        self._pos: torch.Tensor | None = None                               # [1] int64 device mirror of seen
        # state of the forward call in progress (set by begin)
        self._num_new = 0
        self._past = 0
        self._new_mask: torch.Tensor | None = None                          # [B, T] bool or None (all real)
        self._write_index: torch.Tensor | None = None                       # [1] slot of the decode token
        self._ring_slot: dict[int, torch.Tensor] = {}                       # window -> [1] its ring slot
        self._all_real: torch.Tensor | None = None                          # [B, 1] True: a decode token's mask
        # per K/V-owning layer: (key, value, key.transpose(1, 2), value.transpose(1, 2)), the [B, S, nKV, hd]
        # views a decode step writes and attention reads, made once per buffer rather than once per step
        self._views: list[tuple | None] = [None] * len(self.specs)
        # counts (re)allocations of the buffers, so that what holds views of them (generate's C++ decode layers,
        # `decode_session`, modeling/decode_step.py) knows when to take new ones
        self.layout_version = 0
        self.decode_session = None

    # ------------------------------------------------------------------ queries (transformers' names)
    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Slots written so far (prompt padding included), as transformers' Cache.get_seq_length."""
        return self.seen

    def get_max_cache_shape(self) -> int:
        return self.max_cache_len

    def __len__(self) -> int:
        return len(self.specs)

    @property
    def new_token_mask(self) -> torch.Tensor | None:
        """[B, T] key mask of the tokens of the forward call in progress (None: all real)."""
        return self._new_mask

    @property
    def is_initialized(self) -> bool:
        return self.full_mask is not None

    def reset(self) -> None:
        """Forget every token (buffers are kept and reused)."""
        self.seen = 0
        if self.full_mask is not None:
            self.full_mask.zero_()
            self.lengths.zero_()
            self._pos.zero_()
            for mask in self.ring_mask.values():
                mask.zero_()

    # ------------------------------------------------------------------ allocation
    def _windows(self) -> set[int]:
        return {spec.window for spec in self.specs if spec.is_sliding and spec.window > 0}

    def _allocate_masks(self, batch: int, device: torch.device) -> None:
        self.batch_size, self.device = batch, device
        self.full_mask = torch.zeros(batch, self.max_cache_len, dtype=torch.bool, device=device)
        self.ring_mask = {w: torch.zeros(batch, w, dtype=torch.bool, device=device) for w in self._windows()}
        self.lengths = torch.zeros(batch, dtype=torch.int64, device=device)
        self._pos = torch.zeros(1, dtype=torch.int64, device=device)
        self._write_index = torch.zeros(1, dtype=torch.int64, device=device)
        self._all_real = torch.ones(batch, 1, dtype=torch.bool, device=device)
        self._ring_slot = {w: torch.zeros(1, dtype=torch.int64, device=device) for w in self.ring_mask}
        self.layout_version += 1

    def _slots(self, spec) -> int:
        return self._slots_for(spec, self.max_cache_len)

    @classmethod
    def _slots_for(cls, spec, max_cache_len: int) -> int:
        """Slots of a K/V-owning layer's buffers: the window for a ring, else max_cache_len."""
        return spec.window if cls._is_ring(spec) else max_cache_len

    @classmethod
    def storage_bytes(cls, config, max_cache_len: int, batch_size: int = 1,
                      dtype: torch.dtype = torch.float32) -> int:
        """Bytes of the K and V buffers a cache of `max_cache_len` slots allocates for this config and batch
        (KV-shared layers own none; the small slot masks are not counted). Python ints: never overflows."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        return sum(2 * batch_size * spec.num_kv_heads * cls._slots_for(spec, max_cache_len) * spec.head_dim * itemsize
                   for spec in config.layers if spec.cache_index is not None)

    @staticmethod
    def _is_ring(spec) -> bool:
        return spec.is_sliding and spec.window > 0

    def _allocate_layer(self, i: int, key: torch.Tensor) -> None:
        spec = self.specs[i]
        dtype = self.dtype or key.dtype
        shape = (self.batch_size, spec.num_kv_heads, self._slots(spec), spec.head_dim)
        self.key[i] = torch.zeros(shape, dtype=dtype, device=self.device)
        self.value[i] = torch.zeros(shape, dtype=dtype, device=self.device)
        self.layout_version += 1

    def _grow(self, needed: int) -> None:
        """Reallocate the full-layer buffers to hold `needed` slots (at least doubling)."""
        new_len = max(needed, 2 * self.max_cache_len, 16)
        pad = new_len - self.max_cache_len
        self.full_mask = torch.nn.functional.pad(self.full_mask, (0, pad))
        for i, spec in enumerate(self.specs):
            if self.key[i] is not None and not self._is_ring(spec):
                self.key[i] = torch.nn.functional.pad(self.key[i], (0, 0, 0, pad))
                self.value[i] = torch.nn.functional.pad(self.value[i], (0, 0, 0, pad))
        self.max_cache_len = new_len
        self.layout_version += 1

    # ------------------------------------------------------------------ the model's hooks
    def begin(self, num_new: int, attention_mask: torch.Tensor | None, batch_size: int,
              device: torch.device) -> int:
        """Start a forward call over `num_new` tokens; returns the number of slots already written.

        attention_mask: None (every new token is real), [B, num_new] (the new tokens), or
        [B, seen + num_new] (transformers' convention: the whole sequence; only its last num_new
        columns are read, the cache remembers the padding of earlier calls).
        """
        if self.full_mask is None:
            if self.max_cache_len == 0:
                self.max_cache_len = num_new
            self._allocate_masks(batch_size, device)
        elif batch_size != self.batch_size:
            raise ValueError(f"Gemma4Cache: batch size {batch_size} differs from the cache's {self.batch_size}")
        past = self.seen
        if past + num_new > self.max_cache_len:
            self._grow(past + num_new)
        new_mask = None
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.shape[0] != batch_size or \
                    attention_mask.shape[1] not in (num_new, past + num_new):
                raise ValueError(f"attention_mask must be [B, {num_new}] or [B, {past + num_new}] with a cache "
                                 f"holding {past} tokens, got {tuple(attention_mask.shape)}")
            new_mask = attention_mask[:, -num_new:].to(device=device, dtype=torch.bool)
        self._num_new, self._past, self._new_mask = num_new, past, new_mask

        # Record the new slots in the masks (fixed shapes and a device-side position when num_new == 1).
        if num_new == 1:
            real = new_mask if new_mask is not None else self._all_real  # [B, 1]
            self._write_index.copy_(self._pos)
            self.full_mask.index_copy_(1, self._pos, real)
            for w, mask in self.ring_mask.items():
                slot = torch.remainder(self._pos, w, out=self._ring_slot[w])  # in place: held by decode layers
                mask.index_copy_(1, slot, real)
            self._pos.add_(1)
            self.lengths += (1 if new_mask is None else real.sum(1))
            self.seen = past + 1
            return past
        real = new_mask if new_mask is not None else torch.ones(batch_size, num_new, dtype=torch.bool, device=device)
        self.full_mask[:, past:past + num_new] = real
        for w, mask in self.ring_mask.items():
            keep = min(num_new, w)  # only the last w tokens stay in the ring
            slots = torch.arange(past + num_new - keep, past + num_new, device=device) % w
            mask[:, slots] = real[:, num_new - keep:]
        self._pos.fill_(past + num_new)
        self.lengths += real.sum(1)
        self.seen = past + num_new
        return past

    def update(self, spec, key: torch.Tensor, value: torch.Tensor, key_mask: torch.Tensor | None = None):
        """Store layer `spec`'s new K/V ([B, T, nKV, hd]); return what its attention reads:
        (key, value, key_mask, window) with key/value [B, S, nKV, hd], key_mask [B, S] or None."""
        i = spec.cache_index
        if self.key[i] is None:
            self._allocate_layer(i, key)
        kbuf, vbuf = self.key[i], self.value[i]
        T, past = self._num_new, self._past
        if key.shape[1] != T:
            raise ValueError(f"Gemma4Cache.update: got {key.shape[1]} new tokens, begin() announced {T}")
        if T == 1:
            # decode: the token goes into its slot (the ring's, or the write position) through the [B, S, nKV, hd]
            # views, which attention then reads over every slot with the slot mask
            views = self._views[i]
            if views is None or views[0] is not kbuf or views[1] is not vbuf:
                views = self._views[i] = (kbuf, vbuf, kbuf.transpose(1, 2), vbuf.transpose(1, 2))
            key_t, value_t = views[2], views[3]
            ring = self._is_ring(spec)
            slot = self._ring_slot[spec.window] if ring else self._write_index
            key_t.index_copy_(1, slot, key if key.dtype == kbuf.dtype else key.to(kbuf.dtype))
            value_t.index_copy_(1, slot, value if value.dtype == vbuf.dtype else value.to(vbuf.dtype))
            # (every filled ring slot is inside the window of the newest token; order is irrelevant for one query)
            return key_t, value_t, self.ring_mask[spec.window] if ring else self.full_mask, 0
        k_new = key.transpose(1, 2).to(kbuf.dtype)  # [B, nKV, T, hd]
        v_new = value.transpose(1, 2).to(vbuf.dtype)
        if self._is_ring(spec):
            return self._update_ring(spec, kbuf, vbuf, key, value, k_new, v_new, T, past)
        # full layer
        kbuf[:, :, past:past + T] = k_new
        vbuf[:, :, past:past + T] = v_new
        if past == 0:  # prefill: attend over the prompt's own K/V
            return key, value, self._new_mask, 0
        S = past + T
        return kbuf[:, :, :S].transpose(1, 2), vbuf[:, :, :S].transpose(1, 2), self.full_mask[:, :S], 0

    def _update_ring(self, spec, kbuf, vbuf, key, value, k_new, v_new, T: int, past: int):
        W = spec.window
        # T > 1 (T == 1 is update's): the past's last W-1 tokens in order, then the new ones; the op applies
        # the window.
        n_past = min(past, W - 1)
        if n_past > 0:
            order = torch.arange(past - n_past, past, device=kbuf.device) % W
            key_all = torch.cat([kbuf.index_select(2, order), k_new], 2).transpose(1, 2)  # [B, n_past+T, nKV, hd]
            value_all = torch.cat([vbuf.index_select(2, order), v_new], 2).transpose(1, 2)
            mask_all = self.full_mask[:, past - n_past:past + T]  # slot masks of those positions
        else:
            key_all, value_all, mask_all = key, value, self._new_mask
        keep = min(T, W)
        slots = torch.arange(past + T - keep, past + T, device=kbuf.device) % W
        kbuf[:, :, slots] = k_new[:, :, T - keep:]
        vbuf[:, :, slots] = v_new[:, :, T - keep:]
        return key_all, value_all, mask_all, W

    # ------------------------------------------------------------------ utilities
    def crop(self, max_length: int) -> None:
        """Drop everything after the first `max_length` slots (negative: drop that many from the end).

        Only possible while no sliding layer has overwritten a ring slot that the cropped state needs.
        """
        if max_length < 0:
            max_length = self.seen + max_length
        if max_length >= self.seen:
            return
        for w in self.ring_mask:
            if self.seen > w and max_length < self.seen:
                raise ValueError("Gemma4Cache.crop: sliding-window ring buffers cannot be rolled back once they "
                                 "have wrapped around")
        self.lengths -= self.full_mask[:, max_length:self.seen].sum(1)
        self.full_mask[:, max_length:] = False
        for w, mask in self.ring_mask.items():
            mask[:, torch.arange(max_length, self.seen, device=mask.device) % w] = False
        self.seen = max_length
        self._pos.fill_(max_length)

    def __repr__(self) -> str:
        return (f"Gemma4Cache(layers={len(self.specs)}, batch={self.batch_size}, max_cache_len={self.max_cache_len}, "
                f"seen={self.seen})")
