"""A decoding state of fixed shapes, for a compiled step (decode.compile).

A compiled step (torch.compile; CUDA graphs on GPU) wants the same tensor shapes, and on GPU the same
addresses, at every call; the eager state grows instead (the mask by a column a step, the KV cache by a
token). After the prompt pass (eager, as ever) `to_static` copies the state into buffers sized for the
whole decode: each KV cache into transformers' StaticLayer buffers (written in place at the next column),
the attention masks into [B, capacity] buffers whose columns are set to 1 as tokens arrive, the latent
into a buffer the step copies into. Unfilled columns are masked, so attention reads what the eager state
holds: the same function, at one shape per (batch, capacity). Capacity is rounded up to CAPACITY_STEP
columns, so that prompts of similar widths share a compiled graph.

Sliding-window families keep every column here too (as DecodeCache does); their mask applies the window.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicCache, StaticLayer

from ..models.sft import DecodeState

CAPACITY_STEP = 256


def capacity_for(columns: int, new_tokens: int) -> int:
    """Columns a decode needs (the prompt, then one a step: the last token is sampled, never read), rounded up."""
    needed = columns + max(new_tokens - 1, 0)
    return -(-needed // CAPACITY_STEP) * CAPACITY_STEP


def static_cache(cache: DynamicCache, capacity: int) -> Cache:
    """A filled dynamic cache's keys and values in StaticLayer buffers of `capacity` columns (every layer
    full-length, whatever the config says of sliding windows: the masks apply them)."""
    layers = []
    for layer in cache.layers:
        static = StaticLayer(capacity)
        static.lazy_initialization(layer.keys, layer.values)  # zeros; static addresses for CUDA graphs
        static.update(layer.keys, layer.values)  # the prompt's columns; its length counter follows
        layers.append(static)
    return Cache(layers=layers)


def _mask_buffer(mask: torch.Tensor, capacity: int) -> torch.Tensor:
    buffer = mask.new_zeros(mask.shape[0], capacity)
    buffer[:, : mask.shape[1]] = mask
    torch._dynamo.mark_static_address(buffer)
    return buffer


class StaticDecodeState(DecodeState):
    """DecodeState over fixed buffers: `append_token` writes the next mask column in place, and a new
    latent is copied into the latent buffer, so that a compiled step mutates its inputs and never
    replaces them."""

    def __init__(self, state: DecodeState, capacity: int):
        columns = state.attention_mask.shape[1]
        if columns > capacity:
            raise ValueError(f"the prompt has {columns} columns, more than the static capacity {capacity}")
        self._latents = None
        super().__init__(
            _mask_buffer(state.attention_mask, capacity),
            state.prompt_len,
            None if state.generator_cache is None else static_cache(state.generator_cache, capacity),
            None if state.reasoner_cache is None else static_cache(state.reasoner_cache, capacity),
            state.latents,
            state.latent_norm,
            None if state.reasoner_attention_mask is None else _mask_buffer(state.reasoner_attention_mask, capacity),
        )
        self.capacity = capacity
        self.length = torch.tensor([columns], device=state.attention_mask.device)  # the next token's column
        torch._dynamo.mark_static_address(self.length)
        self.columns = columns  # the same, on the host: a step past capacity is refused before it runs

    @property
    def latents(self):
        return self._latents

    @latents.setter
    def latents(self, value):
        if self._latents is None or value is None:
            self._latents = None if value is None else value.clone()
            if value is not None:
                torch._dynamo.mark_static_address(self._latents)
        else:
            self._latents.copy_(value)

    def append_token(self) -> torch.Tensor:
        self.attention_mask.index_fill_(1, self.length, 1)
        if self.reasoner_attention_mask is not None:
            self.reasoner_attention_mask.index_fill_(1, self.length, 1)
        self.length.add_(1)
        return self.attention_mask.sum(-1, keepdim=True) - 1

    def reserve_column(self) -> None:
        """Host-side bookkeeping before a step (outside any compiled code): refuse one past capacity."""
        if self.columns >= self.capacity:
            raise RuntimeError(
                f"the static decoding state holds {self.capacity} columns; a step past them was "
                "asked for (more steps than the engine was built for)"
            )
        self.columns += 1
