"""Logits only where they are scored: every method's teacher-forced pass with logits_to_keep =
scored_width(labels) gives the loss and gradients of the full-width pass, with fewer LM-head columns."""

from __future__ import annotations

import pytest
import torch

from flythinker_pl.config import BackboneConfig, FusionConfig
from flythinker_pl.lit.module import method_loss, response_loss, scored_width
from flythinker_pl.models import tiny
from flythinker_pl.models.backbones import lora_config, set_mode
from flythinker_pl.models.baselines import Coconut
from flythinker_pl.models.fusion import LatentFusion
from flythinker_pl.models.sft import SFT
from flythinker_pl.models.shared import SharedBaseFlyThinker

from helpers import sizes, static_of, training_batch


def shared_base(tokenizer):
    model = set_mode(
        tiny.build_model(sizes(64), tokenizer, seed=3), BackboneConfig(mode="lora"), "generator", "CAUSAL_LM"
    )
    model.add_adapter("reasoner", lora_config(BackboneConfig(), "CAUSAL_LM"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return SharedBaseFlyThinker(model, LatentFusion(64, 64, FusionConfig(lam=2.0)))


METHODS = {
    "sft": lambda make, tok: SFT(make(32, 64).generator),
    "flythinker": lambda make, tok: make(32, 64, lam=2.0),
    "static": lambda make, tok: static_of(make(32, 64, lam=2.0, span="response")),
    "coconut": lambda make, tok: Coconut(make(32, 64).generator, thoughts=2),
    "shared": lambda make, tok: shared_base(tok),
}


def loss_and_grads(method, loss):
    params = [p for p in method.parameters() if p.requires_grad]
    return loss.detach(), torch.autograd.grad(loss, params)


@pytest.mark.parametrize("name", METHODS)
def test_scored_logits_only_keep_loss_and_gradients(make_flythinker, tokenizer, name):
    method = METHODS[name](make_flythinker, tokenizer).train()
    batch = training_batch(tokenizer)
    keep = scored_width(batch["labels"])
    assert keep < batch["input_ids"].shape[1]  # the batch has prompt columns to skip
    full_logits = method(
        batch["input_ids"], batch["attention_mask"], batch["prompt_len"], profile_mask=batch["profile_mask"]
    )
    full_loss, full_grads = loss_and_grads(method, response_loss(full_logits, batch["labels"])[0])
    kept_loss, kept_grads = loss_and_grads(method, method_loss(method, batch)[0])
    torch.testing.assert_close(kept_loss, full_loss, atol=1e-6, rtol=1e-6)
    for kept, full in zip(kept_grads, full_grads):
        torch.testing.assert_close(kept, full, atol=1e-6, rtol=1e-5)
    assert sum(g.abs().sum() for g in kept_grads) > 0


def test_scored_width_reaches_the_earliest_scored_token():
    labels = torch.tensor([[-100, -100, -100, 5, 6], [-100, -100, -100, -100, 7]])
    assert scored_width(labels) == 3  # column 2 predicts the first scored token (column 3)
    assert scored_width(torch.full((2, 4), -100)) == 1  # nothing scored: one column, an empty loss
