"""A KV cache for decoding that appends in place.

transformers' DynamicCache concatenates each layer's keys and values with the new token's at every
step: a decode step copies the whole cache (with batch 16 and a 400-token prompt, tens of MB a
step on a tiny model). `DecodeCache` is a DynamicCache whose layers keep spare capacity, grown
geometrically, and return views of it: a step writes one token. Same tensors, same attention.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

GROWTH = 2  # capacity multiplies by this when full: O(log n) reallocations for n tokens


class AppendLayer(DynamicLayer):
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self.key_buffer = self.value_buffer = None
        self.length = 0

    def update(self, key_states, value_states, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if self.key_buffer is None or end > self.key_buffer.shape[-2]:
            capacity = max(end, GROWTH * (0 if self.key_buffer is None else self.key_buffer.shape[-2]))
            self.key_buffer = self._with_capacity(self.key_buffer, key_states, capacity)
            self.value_buffer = self._with_capacity(self.value_buffer, value_states, capacity)
        self.key_buffer[..., self.length : end, :] = key_states
        self.value_buffer[..., self.length : end, :] = value_states
        self.length = end
        self.keys, self.values = self.key_buffer[..., :end, :], self.value_buffer[..., :end, :]
        return self.keys, self.values

    def _with_capacity(self, buffer, like: torch.Tensor, capacity: int) -> torch.Tensor:
        grown = like.new_empty((*like.shape[:-2], capacity, like.shape[-1]))
        if buffer is not None:
            grown[..., : self.length, :] = buffer[..., : self.length, :]
        return grown

    def _adopt(self) -> None:
        """After an operation that replaced keys/values (crop, batch selection): they become the buffer."""
        self.key_buffer, self.value_buffer = self.keys, self.values
        self.length = self.keys.shape[-2]

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        if self.is_initialized:
            self._adopt()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._adopt()

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._adopt()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self._adopt()


class DecodeCache(DynamicCache):
    """DynamicCache (every isinstance check still holds) built of AppendLayer."""

    def __init__(self):
        Cache.__init__(self, layer_class_to_replicate=AppendLayer)
