"""Logits only where they are scored: every method's teacher-forced pass with logits_to_keep =
scored_width(labels) gives the loss and gradients of the full-width pass, with fewer LM-head columns."""

from __future__ import annotations

import pytest
import torch

from flythinker_pl.lit.module import method_loss, response_loss, scored_width

from helpers import METHODS, training_batch


def loss_and_grads(method, loss):
    params = [p for p in method.parameters() if p.requires_grad]
    return loss.detach(), torch.autograd.grad(loss, params)


@pytest.mark.parametrize("name", METHODS)
def test_scored_logits_only_keep_loss_and_gradients(make_method, tokenizer, name):
    method = make_method(name).train()
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
