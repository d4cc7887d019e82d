"""Config -> method module (+ the tokenizer every method shares)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..config import Config
from . import backbones, families
from .baselines import StaticFlyThinker
from .coconut_setup import build_coconut
from .flythinker import FlyThinker
from .fusion import LatentFusion
from .recurrent import RecurrentFlyThinker
from .sft import SFT
from .shared import SharedBaseFlyThinker


SFT_METHODS = ("sft", "nonpers", "rag", "cot")  # the Generator alone; they differ in data and prompts only


def _load(key: str, cfg_backbone, corpus, cache_dir, gradient_checkpointing: bool, random_init_seed=None):
    location = backbones.resolve(
        cfg_backbone.name, corpus, cfg_backbone.pretrain_steps, cfg_backbone.pretrain_seed, cache_dir
    )
    with backbones.explained(f"{key}.name", location):
        model, tokenizer = backbones.load(location, random_init_seed=random_init_seed)
    families.check_text_only(model, key, cfg_backbone.name)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, tokenizer


def build_method(
    cfg: Config,
    corpus: Callable[[], list[str]],
    warm_start: dict[str, torch.Tensor] | None = None,
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """`corpus` is called only when a tiny preset must be built (tokenizer + pretraining);
    `warm_start`: the Generator weights of coconut.init_from (lit.rundirs.cot_weights reads them)."""
    checkpointing = cfg.train.gradient_checkpointing
    generator, tokenizer = _load("generator", cfg.generator, corpus, cfg.logging.cache_dir, checkpointing)
    if cfg.method == "coconut":  # its markers and warm start come before the training mode
        return build_coconut(cfg, generator, tokenizer, warm_start), tokenizer
    generator = generator_in_mode(cfg, generator)
    if cfg.method in SFT_METHODS:
        return SFT(generator), tokenizer
    if cfg.reasoner.shared_base:  # its config rules are checked in config.py
        return shared_base(cfg, generator), tokenizer
    random_init_seed = cfg.seed if cfg.reasoner.init == "random" else None
    reasoner_lm, reasoner_tokenizer = _load(
        "reasoner", cfg.reasoner, corpus, cfg.logging.cache_dir, checkpointing, random_init_seed
    )
    backbones.check_same_vocabulary(tokenizer, reasoner_tokenizer, (cfg.generator.name, cfg.reasoner.name))
    return with_reasoner(cfg, generator, reasoner_lm), tokenizer


# The steps below take models already built (gpu-check builds its own, at the paper's sizes on the GPU).


def generator_in_mode(cfg: Config, generator: nn.Module) -> nn.Module:
    """The Generator's causal LM in its training mode (generator.mode; LoRA adapter "generator")."""
    return backbones.set_mode(generator, cfg.generator, "generator", task_type="CAUSAL_LM")


def shared_base(cfg: Config, generator: nn.Module) -> SharedBaseFlyThinker:
    """reasoner.shared_base: a "reasoner" LoRA adapter beside the Generator's, on its one base model,
    for a family whose logits we can compute from its LM head."""
    families.check_head_logits(generator.get_base_model(), "reasoner.shared_base")
    backbones.check_lora_targets(generator, cfg.reasoner, "reasoner")
    generator.add_adapter("reasoner", backbones.lora_config(cfg.reasoner, task_type="CAUSAL_LM"))
    width = backbones.hidden_size(generator)
    return SharedBaseFlyThinker(
        generator, LatentFusion(width, width, cfg.fusion, families.embedding_multiplier(generator))
    )


def with_reasoner(cfg: Config, generator: nn.Module, reasoner_lm: nn.Module) -> nn.Module:
    """cfg.method (flythinker, static, flythinker_recurrent) of a Generator in its training mode and
    the Reasoner's causal LM as loaded (its decoder, in reasoner.mode, is what the method keeps)."""
    fusion = LatentFusion(
        backbones.hidden_size(reasoner_lm),
        backbones.hidden_size(generator),
        cfg.fusion,
        families.embedding_multiplier(generator),
    )
    reasoner = backbones.set_mode(backbones.decoder_of(reasoner_lm), cfg.reasoner, "reasoner", task_type=None)
    kwargs = dict(reasoner_frozen=cfg.reasoner.mode == "frozen", reasoner_sees_profile=cfg.reasoner.sees_profile)
    if cfg.method == "flythinker_recurrent":
        return RecurrentFlyThinker(
            generator, reasoner, fusion, mu=cfg.recurrent.mu, window=cfg.recurrent.window, **kwargs
        )
    method_class = StaticFlyThinker if cfg.method == "static" else FlyThinker
    return method_class(generator, reasoner, fusion, **kwargs)
