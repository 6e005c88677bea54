"""The hybrid decoding cache: a fixed-size fp32 state per lightning layer, a KV cache only for softmax layers.

One row per sequence. Rows may hold different numbers of tokens (``lengths``), so prompts of different lengths
are prefilled packed (no padding) and then decoded together; softmax layers mask each row's unused slots.
The lightning state is [H, D, D] fp32 per row and layer whatever the context length; only the softmax layers'
keys and values grow (one layer in eight for MiniMax).
"""

from __future__ import annotations

from itertools import pairwise

import torch
from lightswe.model.config import LIGHTNING, MiniMaxConfig
from lightswe.errors import UserInputError


class HybridCache:
    """Decoding state of ``batch_size`` sequences. Created empty; the first forward through it fills it."""

    def __init__(self, config: MiniMaxConfig, batch_size: int, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, reserve: int = 0) -> None:
        """``reserve``: extra KV slots to allocate beyond the prompt (e.g. max_new_tokens), to avoid regrowth."""
        self.config, self.batch_size, self.device, self.dtype, self.reserve = config, batch_size, device, dtype, reserve
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self._max_length = 0  # host copy of lengths.max(): sizing the KV views needs no device sync
        self.started = False
        self._states: dict[int, torch.Tensor] = {}
        self._keys: dict[int, torch.Tensor] = {}
        self._values: dict[int, torch.Tensor] = {}

    # ------------------------------------------------------------------------------ lightning layers
    def lightning_state(self, layer: int) -> torch.Tensor:
        """[B, H, D, D] fp32, updated in place by decoding."""
        return self._states[layer]

    def set_lightning_state(self, layer: int, state: torch.Tensor) -> None:
        self._states[layer] = state.float().contiguous()

    # -------------------------------------------------------------------------------- softmax layers
    def _allocate(self, layer: int, capacity: int) -> None:
        shape = (self.batch_size, self.config.num_key_value_heads, capacity, self.config.head_dim)
        self._keys[layer] = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self._values[layer] = torch.zeros(shape, dtype=self.dtype, device=self.device)

    def store_packed_kv(self, layer: int, k: torch.Tensor, v: torch.Tensor, bounds: list[int] | None) -> None:
        """First prefill: k, v [B, KVH, T, D] (bounds None) or packed [1, KVH, T, D] with cumulative bounds."""
        if bounds is None:
            lengths = [k.shape[2]] * k.shape[0]
            pieces = [(i, 0, k.shape[2]) for i in range(k.shape[0])]
        else:
            lengths = [e - s for s, e in pairwise(bounds)]
            pieces = [(0, s, e) for s, e in pairwise(bounds)]
        if len(lengths) != self.batch_size:
            raise UserInputError(f"cache has {self.batch_size} rows, the prefill holds {len(lengths)} sequences")
        self._allocate(layer, max(lengths) + self.reserve)
        for row, (src, start, end) in enumerate(pieces):
            self._keys[layer][row, :, : end - start] = k[src, :, start:end]
            self._values[layer][row, :, : end - start] = v[src, :, start:end]

    def append_kv(self, layer: int, k: torch.Tensor, v: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Write k, v [B, KVH, T, D] after each row's tokens; return keys, values [B, KVH, S, D] and the
        boolean mask [B, 1, T, S] (True = attend) that gives every row causal attention over its own prefix."""
        steps = k.shape[2]
        needed = self._max_length + steps
        if needed > self._keys[layer].shape[2]:
            old_k, old_v = self._keys[layer], self._values[layer]
            self._allocate(layer, max(needed, 2 * old_k.shape[2]))
            self._keys[layer][:, :, : old_k.shape[2]] = old_k
            self._values[layer][:, :, : old_v.shape[2]] = old_v
        rows = torch.arange(self.batch_size, device=self.lengths.device)[:, None]
        slots = self.lengths[:, None] + torch.arange(steps, device=self.lengths.device)  # [B, T]
        self._keys[layer][rows, :, slots] = k.transpose(1, 2).to(self.dtype)
        self._values[layer][rows, :, slots] = v.transpose(1, 2).to(self.dtype)
        keys, values = self._keys[layer][:, :, :needed], self._values[layer][:, :, :needed]
        mask = torch.arange(needed, device=self.lengths.device)[None, None, :] <= slots[:, :, None]
        return keys, values, mask[:, None]

    # ------------------------------------------------------------------------------------ bookkeeping
    def advance(self, lengths: torch.Tensor | int) -> None:
        """Called by the model after a forward: each row now holds ``lengths`` more tokens."""
        self.lengths = self.lengths + lengths
        self._max_length += int(lengths) if isinstance(lengths, int) else int(lengths.max())
        self.started = True

    def select(self, rows: torch.Tensor | list[int]) -> None:
        """Keep only ``rows`` (e.g. drop finished sequences), in that order."""
        index = torch.as_tensor(rows, dtype=torch.long, device=self.lengths.device)
        self.lengths = self.lengths[index]
        self._max_length = int(self.lengths.max()) if len(index) else 0
        for store in (self._states, self._keys, self._values):
            for layer in store:
                store[layer] = store[layer][index]
        self.batch_size = len(index)

    def state_bytes_per_sequence(self) -> int:
        """Bytes of lightning state per sequence: constant in the context length."""
        c = self.config
        return c.attn_type_list.count(LIGHTNING) * c.num_attention_heads * c.head_dim * c.head_dim * 4

    def kv_bytes_per_token(self) -> int:
        """Bytes of softmax-layer keys and values per cached token of one sequence."""
        c = self.config
        element = torch.empty((), dtype=self.dtype).element_size()
        return (len(c.attn_type_list) - c.attn_type_list.count(LIGHTNING)) * 2 * c.num_key_value_heads * c.head_dim * element

    def bytes_per_sequence(self) -> list[int]:
        """Cache bytes each row uses now: its lightning state plus the keys and values of its tokens."""
        return [self.state_bytes_per_sequence() + int(n) * self.kv_bytes_per_token() for n in self.lengths.tolist()]

    def nbytes(self) -> int:
        """Bytes allocated by the whole cache (KV capacity included)."""
        return sum(t.numel() * t.element_size() for s in (self._states, self._keys, self._values) for t in s.values())
