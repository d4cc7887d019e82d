"""Backbones: any Hugging Face causal LM (hub id or local path) or a built-in tiny preset,
put into its training mode (frozen | lora | full) with peft."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..config import BackboneConfig, ConfigError
from . import tiny
from .architectures import TINY_PRESETS
from .hub import OFFLINE_FIX, not_loadable, offline


def resolve(name: str, corpus: Callable[[], list[str]], steps: int, seed: int, cache_dir: str) -> str:
    """A loadable location: tiny presets are built (and cached) from `corpus`; anything else is
    a hub id or a local path, passed to `from_pretrained` unchanged."""
    if name in TINY_PRESETS:
        return str(tiny.ensure_pretrained(name, corpus, steps=steps, seed=seed, cache_dir=cache_dir))
    return name


@contextmanager
def explained(key: str, location: str):
    """A model that cannot be loaded: one ConfigError naming the key and the fix, not transformers'
    traceback (offline, a hub id fails with a generic OSError after the network lookup is skipped;
    hub.check_backbones catches most of those before the imports)."""
    try:
        yield
    except OSError as err:
        if Path(location).exists():
            raise
        fix = OFFLINE_FIX if offline() else f"the hub said: {str(err).splitlines()[0]}"
        raise not_loadable(key, location, fix) from None


def load_tokenizer(cfg, corpus: Callable[[], list[str]]) -> PreTrainedTokenizerBase:
    """The Generator's tokenizer for a run config, without loading any weights (a tiny preset's is
    trained on the corpus and cached, as its pretraining does, without the pretraining)."""
    name = cfg.generator.name
    if name in TINY_PRESETS:
        return tiny.corpus_tokenizer(corpus(), cfg.logging.cache_dir)
    with explained("generator.name", name):
        return AutoTokenizer.from_pretrained(name)


def load(
    location: str, dtype: Optional[torch.dtype] = None, random_init_seed: Optional[int] = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model and tokenizer from `location`. With `random_init_seed`, the model has the same
    architecture but random weights (the reasoner.init=random control), drawn from a forked RNG
    seeded with it, so no other randomness of the run shifts."""
    if random_init_seed is None:
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype or torch.float32)
    else:
        with torch.random.fork_rng(devices=[]):  # from_config initialises on the CPU
            torch.manual_seed(random_init_seed)
            model = AutoModelForCausalLM.from_config(
                AutoConfig.from_pretrained(location), dtype=dtype or torch.float32
            ).eval()
    tokenizer = AutoTokenizer.from_pretrained(location)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def check_same_vocabulary(
    generator_tokenizer: PreTrainedTokenizerBase, reasoner_tokenizer: PreTrainedTokenizerBase, names: tuple[str, str]
) -> None:
    """FlyThinker feeds the same token ids to both models, so their vocabularies must be identical."""
    generator_vocab, reasoner_vocab = generator_tokenizer.get_vocab(), reasoner_tokenizer.get_vocab()
    if generator_vocab != reasoner_vocab:
        differing = sorted(set(generator_vocab.items()) ^ set(reasoner_vocab.items()))[:5]
        raise ConfigError(
            f"generator.name={names[0]!r} and reasoner.name={names[1]!r} have different tokenizers "
            f"({len(generator_vocab)} vs {len(reasoner_vocab)} entries; e.g. {differing}). The Reasoner "
            "reads the Generator's token ids: pick two models of one family (e.g. Qwen2.5-0.5B and -3B) "
            "or two tiny presets."
        )


def lora_config(cfg: BackboneConfig, task_type: Optional[str]) -> LoraConfig:
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_targets),
        task_type=task_type,
    )


def check_lora_targets(model: nn.Module, cfg: BackboneConfig, key: str) -> None:
    """Every name in lora_targets must name layers of this model: peft adapts the names it finds and
    skips the rest silently (Llama-style names on Phi-3, whose attention is one qkv_proj, would leave
    only o_proj and down_proj adapted)."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [target for target in cfg.lora_targets if target not in names]
    if missing:
        head = getattr(model, "get_output_embeddings", lambda: None)()
        linear = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, module in model.named_modules()
                if isinstance(module, nn.Linear) and module is not head and "lora_" not in name
            }
            - {"base_layer"}
        )
        raise ConfigError(
            f"{key}.lora_targets names {missing}, which {type(model).__name__} does not have; its "
            f"linear layers are {linear}: set e.g. {key}.lora_targets=[{','.join(linear)}]"
        )


def set_mode(
    model: nn.Module,
    cfg: BackboneConfig,
    adapter_name: str,
    task_type: Optional[str],
    trainable_tokens: Sequence[int] = (),
) -> nn.Module:
    """frozen: no gradients; full: every weight trains; lora: peft adapter `adapter_name` only, plus
    the embedding rows of `trainable_tokens` (new tokens, e.g. Coconut's markers) through peft's
    trainable tokens."""
    if cfg.mode == "lora":
        check_lora_targets(model, cfg, adapter_name)
        config = lora_config(cfg, task_type)
        config.trainable_token_indices = list(trainable_tokens) or None
        return get_peft_model(model, config, adapter_name=adapter_name)
    model.requires_grad_(cfg.mode == "full")
    return model


def decoder_of(model: PreTrainedModel) -> nn.Module:
    """The causal LM without its head: its output `last_hidden_state` is after the final norm.
    The Reasoner never needs logits, and an unused trainable head would break DDP."""
    return model.base_model


def hidden_size(model: nn.Module) -> int:
    return model.config.hidden_size
