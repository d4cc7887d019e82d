"""Backbones given as local paths take the same from_pretrained path as hub ids."""

from __future__ import annotations

import pytest
import torch

from flythinker_pl.config import ConfigError, load_config
from flythinker_pl.models import tiny
from flythinker_pl.models.build import build_method
from flythinker_pl.models.flythinker import FlyThinker
from flythinker_pl.models.sft import SFT

from helpers import no_corpus, save_tiny_model


def test_local_paths_build_flythinker_and_sft(tmp_path, tokenizer):
    generator, reasoner = (
        save_tiny_model(tmp_path, "gen", 64, tokenizer),
        save_tiny_model(tmp_path, "rea", 32, tokenizer),
    )
    cfg = load_config(None, [f"generator.name={generator}", f"reasoner.name={reasoner}", "reasoner.mode=lora"])
    method, loaded_tokenizer = build_method(cfg, corpus=no_corpus)
    assert isinstance(method, FlyThinker) and method.fusion.pad_dims == 32
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    assert not hasattr(method.reasoner, "lm_head")  # the Reasoner is the base model only
    cfg.method = "sft"
    assert type(build_method(cfg, corpus=no_corpus)[0]) is SFT


def test_mismatched_tokenizers_and_oversized_pad_reasoner_fail_fast(tmp_path, tokenizer, corpus):
    generator = save_tiny_model(tmp_path, "gen", 64, tokenizer)
    stranger = tiny.train_tokenizer(corpus[:5], vocab_size=300)
    other = save_tiny_model(tmp_path, "other", 32, stranger)
    cfg = load_config(None, [f"generator.name={generator}", f"reasoner.name={other}"])
    with pytest.raises(ConfigError, match="different tokenizers"):
        build_method(cfg, corpus=no_corpus)
    big = save_tiny_model(tmp_path, "big", 128, tokenizer)
    cfg = load_config(None, [f"generator.name={generator}", f"reasoner.name={big}"])
    with pytest.raises(ConfigError, match="fusion.dims=linear"):
        build_method(cfg, corpus=no_corpus)
    cfg.fusion.dims = "linear"
    assert build_method(cfg, corpus=no_corpus)[0].fusion.project.weight.shape == (64, 128)


def test_tiny_preset_is_pretrained_once_and_cached(tmp_path, corpus):
    calls = []

    def counted_corpus():
        calls.append(1)
        return corpus

    first = tiny.ensure_pretrained("tiny-64", counted_corpus, steps=3, seed=0, cache_dir=str(tmp_path))
    again = tiny.ensure_pretrained("tiny-64", counted_corpus, steps=3, seed=0, cache_dir=str(tmp_path))
    other = tiny.ensure_pretrained("tiny-64", counted_corpus, steps=3, seed=1, cache_dir=str(tmp_path))
    assert first == again != other
    assert (first / "config.json").exists() and (first / "tokenizer.json").exists()
    assert first.stat().st_mtime == again.stat().st_mtime  # reused, not rebuilt


def test_building_a_tiny_preset_leaves_the_runs_random_state_as_loading_it_does(tmp_path, corpus):
    def draw_after_resolving():
        torch.manual_seed(7)
        tiny.ensure_pretrained("tiny-64", lambda: corpus, steps=2, seed=0, cache_dir=str(tmp_path))
        return torch.rand(4)

    cold = draw_after_resolving()  # builds and pretrains the preset
    warm = draw_after_resolving()  # loads it from the cache
    assert torch.equal(cold, warm)
