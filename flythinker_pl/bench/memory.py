"""`flythinker memory`: what each rank holds for training, DDP vs FSDP, before a job is queued.

Per rank: parameters, gradients (trainable weights only) and AdamW's two moments, from the configured
backbones' parameter counts. The models are built on the meta device from their configs (nothing is
downloaded or allocated): a local path or a cached hub id, a tiny preset, or one of the Qwen2.5
architectures gpu-check knows (so the paper's sizes work offline). Under bf16-mixed (and 32-true)
Lightning keeps fp32 weights, so 4 bytes each, 16 per trainable weight with AdamW; bf16-true halves
that. DDP holds all of it on every rank; FSDP 1/N of it, plus one decoder layer gathered (in bf16
under bf16 precisions) while it computes. Activations and the CUDA context come on top.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from transformers import AutoConfig, AutoModelForCausalLM, Qwen2Config

from ..config import Config
from ..lit.sharding import decoder_layer_types
from ..models import backbones, tiny
from ..models.architectures import ARCHITECTURES, TINY_PRESETS
from ..models.build import SFT_METHODS

GIB = 1024**3


@dataclass
class Counts:
    total: int  # every parameter (tied weights once)
    trainable: int
    largest_layer: int  # the biggest decoder layer: what FSDP gathers at once

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(
            self.total + other.total, self.trainable + other.trainable, max(self.largest_layer, other.largest_layer)
        )


def architecture(name: str, key: str):
    """The model config of a backbone name, without weights."""

    if name in TINY_PRESETS:
        return Qwen2Config(vocab_size=tiny.VOCAB_SIZE, tie_word_embeddings=True, **TINY_PRESETS[name])
    if not Path(name).exists() and name.split("/")[-1] in ARCHITECTURES:
        return Qwen2Config(**ARCHITECTURES[name.split("/")[-1]])
    with backbones.explained(key, name):
        return AutoConfig.from_pretrained(name)


def backbone_counts(cfg_backbone, key: str, reasoner: bool) -> Counts:
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(architecture(cfg_backbone.name, key))
    if reasoner:
        model = backbones.decoder_of(model)
    model = backbones.set_mode(model, cfg_backbone, key.split(".")[0], task_type=None if reasoner else "CAUSAL_LM")
    layers = decoder_layer_types(model)
    return Counts(
        sum(p.numel() for p in model.parameters()),
        sum(p.numel() for p in model.parameters() if p.requires_grad),
        max(sum(p.numel() for p in m.parameters()) for m in model.modules() if isinstance(m, layers)),
    )


def method_counts(cfg: Config) -> Counts:
    counts = backbone_counts(cfg.generator, "generator.name", reasoner=False)
    if cfg.method in SFT_METHODS or cfg.method == "coconut":
        return counts
    if cfg.reasoner.shared_base:  # a second adapter on the same base
        return counts + Counts(counts.trainable, counts.trainable, 0)
    return counts + backbone_counts(cfg.reasoner, "reasoner.name", reasoner=True)


def per_rank(counts: Counts, precision: str, ranks: list[int]) -> pd.DataFrame:
    """GiB per rank for DDP (any number of ranks) and FSDP at each of `ranks`, under a Lightning precision."""
    weight = 2 if precision in ("bf16-true", "16-true") else 4
    gathered = 2 if precision.startswith(("bf16", "16")) else 4
    whole = {
        "parameters": counts.total * weight,
        "gradients": counts.trainable * weight,
        "AdamW moments": counts.trainable * 2 * weight,
    }
    rows = [{"strategy": "ddp", "ranks": "any", **whole, "gathered layer": 0}]
    rows += [
        {
            "strategy": "fsdp",
            "ranks": n,
            **{k: v / n for k, v in whole.items()},
            "gathered layer": counts.largest_layer * gathered,
        }
        for n in ranks
    ]
    table = pd.DataFrame(rows)
    table["total"] = table[[*whole, "gathered layer"]].sum(axis=1)
    for column in [*whole, "gathered layer", "total"]:
        table[column] = (table[column] / GIB).round(2)
    return table.rename(columns={c: f"{c} GiB" for c in [*whole, "gathered layer", "total"]})
