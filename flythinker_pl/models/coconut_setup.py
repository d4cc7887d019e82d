"""Building method=coconut: the marker tokens in the vocabulary, the warm start from a method=cot
run's Generator weights (lit/rundirs.py reads them from coconut.init_from), the Generator's training
mode (under LoRA, peft trains the markers' embedding rows)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..config import Config, ConfigError
from . import backbones
from .coconut import Coconut, LatentTokens

MARKER_TOKENS = ("<|start-latent|>", "<|latent|>", "<|end-latent|>")


def add_latent_tokens(model: nn.Module, tokenizer: PreTrainedTokenizerBase, init_text: str) -> LatentTokens:
    """The three tokens join the tokenizer (as special tokens: decoded text drops them) and the
    model's embedding; their rows, and LM-head rows when untied, copy the row of `init_text`'s one
    token, as the official run.py does ("it helps stabilise the training")."""
    init_ids = tokenizer(init_text, add_special_tokens=False)["input_ids"]
    if len(init_ids) != 1:
        raise ConfigError(
            f"coconut.marker_init={init_text!r} is {len(init_ids)} tokens of the Generator's "
            f"vocabulary ({tokenizer.convert_ids_to_tokens(init_ids)}): name text that is one "
            f"existing token, e.g. {tokenizer.eos_token!r}"
        )
    tokenizer.add_tokens(list(MARKER_TOKENS), special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(list(MARKER_TOKENS))
    if max(ids) >= model.get_input_embeddings().weight.shape[0]:  # hub models often have spare rows
        model.resize_token_embeddings(max(ids) + 1, mean_resizing=False)
    with torch.no_grad():
        for layer in (model.get_input_embeddings(), model.get_output_embeddings()):  # the same table if tied
            layer.weight[ids] = layer.weight[init_ids[0]].clone()
    return LatentTokens(*ids)


def load_weights(generator: nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    try:
        _, unexpected = generator.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ConfigError(f"coconut.init_from={source!r}: {str(err).splitlines()[-1].strip()}") from None
    if unexpected:
        raise ConfigError(
            f"coconut.init_from={source!r}: {len(unexpected)} weights this Generator lacks, e.g. {unexpected[:3]}"
        )


def build_coconut(
    cfg: Config, generator: nn.Module, tokenizer: PreTrainedTokenizerBase, weights: dict[str, torch.Tensor] | None
) -> Coconut:
    """Coconut from the loaded Generator (before its training mode is set) and tokenizer, which
    gains the marker tokens when coconut.markers is on; `weights`: coconut.init_from's Generator."""
    coconut, lora = cfg.coconut, cfg.generator.mode == "lora"
    if bool(coconut.init_from) != (weights is not None):
        raise ValueError(
            "method=coconut with coconut.init_from builds from that run's weights (and only then): "
            "pass build_method the warm start that lit.rundirs.cot_weights(cfg) reads"
        )
    if weights is not None and not lora:  # the whole model, before the vocabulary grows (as run.py loads)
        load_weights(generator, weights, coconut.init_from)
    markers = add_latent_tokens(generator, tokenizer, coconut.marker_init) if coconut.markers else None
    generator = backbones.set_mode(
        generator,
        cfg.generator,
        "generator",
        task_type="CAUSAL_LM",
        trainable_tokens=(markers.start, markers.end) if markers and lora else (),
    )
    if weights is not None and lora:  # the adapter, which exists only now
        load_weights(generator, weights, coconut.init_from)
    return Coconut(generator, coconut.k, coconut.norm, coconut.eps, markers, tokenizer.pad_token_id)
