"""Config -> method module (+ the tokenizer every method shares)."""
from __future__ import annotations

from typing import Callable

from torch import nn
from transformers import PreTrainedTokenizerBase

from ..config import Config, ConfigError
from . import backbones
from .flythinker import FlyThinker
from .fusion import LatentFusion
from .sft import SFT
from .shared import SharedBaseFlyThinker


def _load(cfg_backbone, corpus, cache_dir, gradient_checkpointing: bool):
    location = backbones.resolve(cfg_backbone.name, corpus, cfg_backbone.pretrain_steps,
                                 cfg_backbone.pretrain_seed, cache_dir)
    model, tokenizer = backbones.load(location)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, tokenizer


def build_method(cfg: Config, corpus: Callable[[], list[str]]) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """`corpus` is called only when a tiny preset must be built (tokenizer + pretraining)."""
    checkpointing = cfg.train.gradient_checkpointing
    generator, tokenizer = _load(cfg.generator, corpus, cfg.logging.cache_dir, checkpointing)
    generator_dim = backbones.hidden_size(generator)
    generator = backbones.set_mode(generator, cfg.generator, "generator", task_type="CAUSAL_LM")
    if cfg.method == "sft":
        return SFT(generator), tokenizer

    if cfg.reasoner.shared_base:
        if (cfg.generator.mode, cfg.reasoner.mode) != ("lora", "lora"):
            raise ConfigError("reasoner.shared_base=true puts two LoRA adapters on one base model: it needs "
                              f"generator.mode=lora and reasoner.mode=lora (got {cfg.generator.mode}, "
                              f"{cfg.reasoner.mode})")
        if checkpointing:  # recomputation in backward would run with whichever adapter is active then
            raise ConfigError("reasoner.shared_base=true cannot use train.gradient_checkpointing: the backward "
                              "pass would recompute the Reasoner's layers with the Generator's adapter")
        if getattr(generator.config, "final_logit_softcapping", None):
            raise ConfigError("reasoner.shared_base=true computes logits from the LM head directly, without "
                              f"{generator.config.model_type}'s final logit softcapping; use two models")
        generator.add_adapter("reasoner", backbones.lora_config(cfg.reasoner, task_type="CAUSAL_LM"))
        fusion = LatentFusion(generator_dim, generator_dim, cfg.fusion)
        return SharedBaseFlyThinker(generator, fusion), tokenizer
    reasoner_lm, reasoner_tokenizer = _load(cfg.reasoner, corpus, cfg.logging.cache_dir, checkpointing)
    backbones.check_same_vocabulary(tokenizer, reasoner_tokenizer, (cfg.generator.name, cfg.reasoner.name))
    fusion = LatentFusion(backbones.hidden_size(reasoner_lm), generator_dim, cfg.fusion)
    reasoner = backbones.set_mode(backbones.decoder_of(reasoner_lm), cfg.reasoner, "reasoner", task_type=None)
    return FlyThinker(generator, reasoner, fusion, reasoner_frozen=cfg.reasoner.mode == "frozen"), tokenizer
