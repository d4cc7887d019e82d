"""Who learns: gradient flow per Reasoner mode, and every trainable parameter gets a gradient
(Lightning's DDP runs with find_unused_parameters=False)."""

from __future__ import annotations

import pytest
import torch

from flythinker_pl.config import BackboneConfig, ReasonerConfig
from flythinker_pl.lit.module import response_loss
from flythinker_pl.models.backbones import set_mode

from helpers import DIMS, MODES, left_padded


def training_batch(tokenizer):
    rows = [list(range(5, 25)), list(range(30, 44))]
    ids, mask = left_padded(rows, tokenizer.pad_token_id)
    prompt_len = torch.tensor([8, 6])
    labels = ids.clone()
    for row, width in enumerate([20, 14]):
        start = ids.shape[1] - width
        labels[row, : start + int(prompt_len[row])] = -100
    return ids, mask, prompt_len, labels


def snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


@pytest.mark.parametrize("generator_mode,reasoner_mode", MODES)
@pytest.mark.parametrize("dims", DIMS)
def test_optimiser_step_updates_exactly_the_trainable_parts(
    make_flythinker, tokenizer, reasoner_mode, generator_mode, dims
):
    model = make_flythinker(reasoner_frozen=reasoner_mode == "frozen", dims=dims)
    model.generator = set_mode(model.generator, BackboneConfig(mode=generator_mode), "generator", "CAUSAL_LM")
    model.reasoner = set_mode(model.reasoner, ReasonerConfig(mode=reasoner_mode), "reasoner", None)
    model.train()
    before = {"reasoner": snapshot(model.reasoner), "generator": snapshot(model.generator)}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.0)
    ids, mask, prompt_len, labels = training_batch(tokenizer)
    for _ in range(2):  # LoRA's A matrices get gradients once B has left zero
        loss, _ = response_loss(model(ids, mask, prompt_len), labels)
        loss.backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, f"trainable parameters without gradient (DDP would fail): {missing[:5]}"
        optimizer.step()
        optimizer.zero_grad()

    for part in ("reasoner", "generator"):
        module = getattr(model, part)
        changed = {n for n, p in module.named_parameters() if not torch.equal(p, before[part][n])}
        should_train = {n for n, p in module.named_parameters() if p.requires_grad}
        assert changed == should_train, part
    assert model.reasoner_frozen == (not any(p.requires_grad for p in model.reasoner.parameters()))
    if reasoner_mode != "frozen":
        assert any(p.requires_grad for p in model.reasoner.parameters())
    assert any(p.requires_grad for p in model.generator.parameters())
    if dims == "linear":
        assert model.fusion.project.weight.requires_grad


def test_frozen_reasoner_runs_without_autograd_and_stays_in_eval_mode(make_flythinker, tokenizer):
    model = make_flythinker(reasoner_frozen=True)
    model.reasoner.requires_grad_(False)
    model.train()
    assert not model.reasoner.training and model.generator.training
    ids, mask, prompt_len, _ = training_batch(tokenizer)
    hidden, _ = model.run_reasoner(ids, mask, torch.zeros_like(ids))
    assert not hidden.requires_grad
