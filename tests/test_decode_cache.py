"""DecodeCache appends in place yet holds exactly what DynamicCache holds, through growth, crop and
batch selection; decoding with it is covered by every engine's parity test (test_decoding.py)."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from flythinker_pl.models.decode_cache import DecodeCache


def states(tokens: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 2, tokens, 8, generator=g), torch.randn(3, 2, tokens, 8, generator=g)


def assert_same(cache, reference):
    for layer, expected in zip(cache.layers, reference.layers):
        assert torch.equal(layer.keys, expected.keys) and torch.equal(layer.values, expected.values)
    assert cache.get_seq_length() == reference.get_seq_length()


def test_decode_cache_holds_what_dynamic_cache_holds():
    cache, reference = DecodeCache(), DynamicCache()
    assert isinstance(cache, DynamicCache)
    for step, tokens in enumerate([5, 1, 1, 7, 1] + [1] * 20):  # a prefill, steps, a chunk, growth past capacity
        for layer_index in range(2):
            keys, values = states(tokens, seed=10 * step + layer_index)
            returned = cache.update(keys, values, layer_index)
            expected = reference.update(keys, values, layer_index)
            assert torch.equal(returned[0], expected[0]) and torch.equal(returned[1], expected[1])
    assert_same(cache, reference)
    buffer = cache.layers[0].key_buffer
    cache.update(*states(1, seed=99), 0)
    assert cache.layers[0].key_buffer is buffer  # spare capacity: the step wrote in place
    reference.update(*states(1, seed=99), 0)
    for cache_ in (cache, reference):
        cache_.crop(-3)
        cache_.batch_select_indices(torch.tensor([2, 0]))
    assert_same(cache, reference)
    for cache_ in (cache, reference):  # and it keeps appending correctly after them
        cache_.update(torch.ones(2, 2, 2, 8), torch.zeros(2, 2, 2, 8), 0)
    assert_same(cache, reference)
