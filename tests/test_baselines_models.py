"""The baselines and controls on the method interface: Static (one prompt latent at every response
position), Coconut (k continuous thoughts), the Reasoner that does not see the user's history, the
randomly initialised Reasoner, and the method -> module mapping."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from flythinker_pl.config import ConfigError, DecodeConfig, load_config
from flythinker_pl.decoding.engines import Sequential, make_engine
from flythinker_pl.decoding.generate import generate, prompts_of
from flythinker_pl.lit.module import response_loss
from flythinker_pl.models.baselines import Coconut, StaticFlyThinker
from flythinker_pl.models.build import build_method
from flythinker_pl.models.flythinker import FlyThinker
from flythinker_pl.models.layout import last_prompt_column
from flythinker_pl.models.sft import SFT

from helpers import (
    HISTORY,
    PROMPT_LENGTHS,
    RESPONSE_LENGTHS,
    left_padded,
    no_corpus,
    static_of,
    token_rows,
    training_batch,
)


GREEDY = DecodeConfig(do_sample=False, max_new_tokens=8)


def scored_logits(logits, batch):
    """Per row, the logits that predict response tokens (what response_loss reads)."""
    last = last_prompt_column(batch["attention_mask"], batch["prompt_len"])
    return [logits[row, last[row] : -1] for row in range(len(last))]


def incremental_logits(method, batch, tokenizer):
    """Prefill on the prompts, then step the batch through each row's response tokens."""
    ids, mask, profile_mask = prompts_of(batch, tokenizer.pad_token_id)
    logits, state = method.prefill(ids, mask, batch["prompt_len"], profile_mask=profile_mask)
    last = last_prompt_column(batch["attention_mask"], batch["prompt_len"])
    steps = [logits]
    for k in range(max(RESPONSE_LENGTHS) - 1):  # rows whose response ended are fed a filler token
        columns = (last + 1 + k).clamp(max=batch["input_ids"].shape[1] - 1)
        steps.append(method.step(state, batch["input_ids"].gather(1, columns[:, None])[:, 0]))
    steps = torch.stack(steps, dim=1)
    return [steps[row, :length] for row, length in enumerate(RESPONSE_LENGTHS)]


def assert_rows_close(actual, expected):
    for row, (a, e) in enumerate(zip(actual, expected)):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=0, msg=lambda m: f"row {row}: {m}")


# --- Static -------------------------------------------------------------------------------------


@torch.no_grad()
def test_static_equals_flythinker_until_the_second_response_token_then_differs(make_flythinker, tokenizer):
    flythinker = make_flythinker(span="response", lam=2.0)
    batch = training_batch(tokenizer)
    args = batch["input_ids"], batch["attention_mask"], batch["prompt_len"]
    dynamic, static = flythinker(*args), static_of(flythinker)(*args)
    last = last_prompt_column(batch["attention_mask"], batch["prompt_len"])
    for row in range(len(last)):  # predicting response tokens 1 and 2: the same latent r_{P-1} (or none)
        torch.testing.assert_close(
            static[row, last[row] : last[row] + 2], dynamic[row, last[row] : last[row] + 2], atol=1e-6, rtol=0
        )
        later = slice(last[row] + 2, None)  # from token 3 on, FlyThinker's latents move, Static's do not
        assert not torch.allclose(static[row, later], dynamic[row, later], atol=1e-3), row
    # the same latent is added at every response position of a row
    embeds, _, latent, _ = static_of(flythinker).fused_embeds(*args, flythinker.latent_norm())
    offsets = embeds - flythinker.embed(batch["input_ids"])
    for row in range(len(last)):
        assert offsets[row, : last[row] + 1].abs().sum() == 0
        for column in range(last[row] + 1, offsets.shape[1]):
            torch.testing.assert_close(offsets[row, column], latent[row, 0])


@torch.no_grad()
def test_static_teacher_forced_equals_incremental_and_decodes_without_reasoner_steps(make_flythinker, tokenizer):
    static = static_of(make_flythinker(span="response", lam=2.0))
    batch = training_batch(tokenizer)
    full = static(batch["input_ids"], batch["attention_mask"], batch["prompt_len"])
    assert_rows_close(incremental_logits(static, batch, tokenizer), scored_logits(full, batch))

    reasoner_calls = []
    static.reasoner.register_forward_hook(lambda *_: reasoner_calls.append(1))
    for engine in ("auto", "sequential", "staggered"):
        assert type(make_engine(static, engine)) is Sequential  # nothing to overlap
    ids, mask, _ = prompts_of(batch, tokenizer.pad_token_id)
    result = generate(
        static,
        ids,
        mask,
        batch["prompt_len"],
        ["a", "b", "c"],
        dataclasses.replace(GREEDY, engine="staggered"),
        eos_ids=-1,
    )
    assert len(reasoner_calls) == 1  # the prompt, once
    for row, generated in enumerate(result.tokens):  # greedy == the teacher-forced argmax chain
        prompt = ids[row][mask[row].bool()].tolist()
        sequence = torch.tensor([prompt + generated])
        chain = static(sequence, torch.ones_like(sequence), batch["prompt_len"][row : row + 1])
        assert chain[0, len(prompt) - 1 : -1].argmax(-1).tolist() == generated


def test_static_needs_the_response_span(make_flythinker):
    with pytest.raises(ConfigError, match="fusion.span=response"):
        static_of(make_flythinker(span="global"))


# --- Coconut ------------------------------------------------------------------------------------


@torch.no_grad()
def test_coconut_without_thoughts_is_sft(make_flythinker, tokenizer):
    generator = make_flythinker().generator
    batch = training_batch(tokenizer)
    args = batch["input_ids"], batch["attention_mask"], batch["prompt_len"]
    coconut_logits, sft_logits = Coconut(generator, 0)(*args), SFT(generator)(*args)
    assert_rows_close(scored_logits(coconut_logits, batch), scored_logits(sft_logits, batch))
    torch.testing.assert_close(
        response_loss(coconut_logits, batch["labels"])[0], response_loss(sft_logits, batch["labels"])[0]
    )
    ids, mask, _ = prompts_of(batch, tokenizer.pad_token_id)
    decoded = [
        generate(method, ids, mask, batch["prompt_len"], ["a", "b", "c"], GREEDY, eos_ids=-1).tokens
        for method in (Coconut(generator, 0), SFT(generator))
    ]
    assert decoded[0] == decoded[1]
    thinking = Coconut(generator, 2)(*args)  # thoughts change the logits, so the test has teeth
    assert not torch.allclose(scored_logits(thinking, batch)[0], scored_logits(sft_logits, batch)[0], atol=1e-3)


@torch.no_grad()
def test_coconut_teacher_forced_equals_incremental(make_flythinker, tokenizer):
    coconut = Coconut(make_flythinker().generator, 2)
    batch = training_batch(tokenizer)
    full = coconut(batch["input_ids"], batch["attention_mask"], batch["prompt_len"])
    assert_rows_close(incremental_logits(coconut, batch, tokenizer), scored_logits(full, batch))
    ids, mask, _ = prompts_of(batch, tokenizer.pad_token_id)
    result = generate(coconut, ids, mask, batch["prompt_len"], ["a", "b", "c"], GREEDY, eos_ids=-1)
    for row, generated in enumerate(result.tokens):  # greedy == the teacher-forced argmax chain
        prompt = ids[row][mask[row].bool()].tolist()
        sequence = torch.tensor([prompt + generated])
        chain = coconut(sequence, torch.ones_like(sequence), batch["prompt_len"][row : row + 1])
        assert chain[0, len(prompt) - 1 : -1].argmax(-1).tolist() == generated


@pytest.mark.parametrize("norm", ["none", "table_mean"])
def test_coconut_feeds_thoughts_with_gradients_at_real_positions(make_flythinker, tokenizer, norm):
    """k+1 Generator passes (the prompt; thoughts 1..k-1; thought k with the response, as in the
    official forward); thoughts keep their autograd graph; norm=none feeds the previous pass's
    final-norm hidden state back unchanged, table_mean at the embedding norm; the response starts
    at position P + k."""
    k = 3
    coconut = Coconut(make_flythinker().generator, k, norm=norm).train()
    calls = []

    def record(_module, _args, kwargs):
        embeds = kwargs["inputs_embeds"]
        if embeds.requires_grad:
            embeds.retain_grad()
        calls.append((embeds, kwargs["position_ids"]))

    def final_hidden(_module, _args, output):
        finals.append(output.hidden_states[-1][:, -1:] if output.hidden_states else None)

    finals = []
    coconut.generator.register_forward_pre_hook(record, with_kwargs=True)
    coconut.generator.register_forward_hook(final_hidden)
    batch = training_batch(tokenizer)
    loss, _ = response_loss(coconut(batch["input_ids"], batch["attention_mask"], batch["prompt_len"]), batch["labels"])
    loss.backward()
    assert len(calls) == k + 1
    assert [embeds.shape[1] for embeds, _ in calls[1:-1]] == [1] * (k - 1)
    norm_of_table = coconut.generator.get_input_embeddings().weight.detach().norm(dim=-1).mean()
    for (inputs, _), hidden in zip(calls[1:], finals[:-1]):
        thought = inputs[:, :1]
        assert thought.grad_fn is not None and inputs.grad[:, :1].abs().sum() > 0  # not detached, and it matters
        if norm == "none":
            torch.testing.assert_close(thought, hidden, atol=0, rtol=0)
        else:
            torch.testing.assert_close(thought.norm(dim=-1), torch.full((3, 1), float(norm_of_table)))
    assert norm == "table_mean" or not torch.allclose(calls[1][0][:, 0].norm(dim=-1), norm_of_table)
    _, response_positions = calls[-1]
    for row, (p, r) in enumerate(zip(PROMPT_LENGTHS, RESPONSE_LENGTHS)):
        # the last thought (position P + k - 1), then the response; shorter rows are right-padded
        assert response_positions[row, : 1 + r].tolist() == list(range(p + k - 1, p + k + r))


# --- the Reasoner without the user's history ----------------------------------------------------


def hidden_history_model(make_flythinker, static=False):
    model = make_flythinker(lam=2.0, span="response" if static else "global")
    model.reasoner_sees_profile = False
    return static_of(model) if static else model


@torch.no_grad()
def test_reasoner_without_history_reads_exactly_the_prompt_without_it(make_flythinker, tokenizer):
    model = hidden_history_model(make_flythinker)
    batch = training_batch(tokenizer)
    args = batch["input_ids"], batch["attention_mask"], batch["prompt_len"]
    norm = model.latent_norm()
    embeds, _, latents, _ = model.fused_embeds(*args, norm, profile_mask=batch["profile_mask"])

    # the reference: a Reasoner that sees everything, given the rows with the history cut out
    rows = token_rows(tokenizer)
    cut_rows = [row[: HISTORY.start] + row[HISTORY.stop :] for row in rows]
    cut_ids, cut_mask = left_padded(cut_rows, tokenizer.pad_token_id)
    model.reasoner_sees_profile = True
    reference, _ = model.reasoner_latents(cut_ids, cut_mask, None, norm)
    seen = (batch["attention_mask"] * (1 - batch["profile_mask"])).bool()
    for row in range(len(rows)):
        torch.testing.assert_close(latents[row][seen[row]], reference[row][cut_mask[row].bool()], atol=1e-5, rtol=0)
    assert latents[~seen].abs().sum() == 0  # what the Reasoner produced at hidden tokens is dropped

    # swapping the history's tokens moves nothing the Generator receives from the Reasoner ...
    swapped = batch["input_ids"].masked_fill(batch["profile_mask"].bool(), 17)
    model.reasoner_sees_profile = False
    swapped_embeds, *_ = model.fused_embeds(swapped, *args[1:], norm, profile_mask=batch["profile_mask"])
    offsets = embeds - model.embed(batch["input_ids"])
    torch.testing.assert_close(swapped_embeds - model.embed(swapped), offsets, atol=1e-6, rtol=0)
    # ... while a Reasoner that sees the history passes the swap on (so the check above has teeth)
    model.reasoner_sees_profile = True
    seeing, *_ = model.fused_embeds(*args, norm, profile_mask=batch["profile_mask"])
    seeing_swapped, *_ = model.fused_embeds(swapped, *args[1:], norm, profile_mask=batch["profile_mask"])
    assert not torch.allclose(seeing - model.embed(batch["input_ids"]), seeing_swapped - model.embed(swapped))
    # and with sees_profile=true the profile mask changes nothing at all
    assert torch.equal(model(*args, profile_mask=batch["profile_mask"]), model(*args))


@pytest.mark.parametrize("static", [False, True], ids=["flythinker", "static"])
def test_reasoner_without_history_teacher_forced_equals_incremental_in_every_engine(make_flythinker, tokenizer, static):
    model = hidden_history_model(make_flythinker, static)
    batch = training_batch(tokenizer)
    args = batch["input_ids"], batch["attention_mask"], batch["prompt_len"]
    with torch.no_grad():
        full = model(*args, profile_mask=batch["profile_mask"])
        assert_rows_close(incremental_logits(model, batch, tokenizer), scored_logits(full, batch))
        assert not torch.allclose(full, _seeing(model)(*args))  # hiding matters
    ids, mask, profile_mask = prompts_of(batch, tokenizer.pad_token_id)
    outputs = [
        generate(
            model,
            ids,
            mask,
            batch["prompt_len"],
            ["a", "b", "c"],
            dataclasses.replace(GREEDY, engine=engine),
            eos_ids=-1,
            profile_mask=profile_mask,
        ).tokens
        for engine in ("sequential", "staggered")
    ]
    assert outputs[0] == outputs[1]
    with pytest.raises(ValueError, match="profile_mask"):
        model(*args)


def _seeing(model):
    """The same weights with a Reasoner that sees the history (for a before/after comparison)."""
    method_class = StaticFlyThinker if isinstance(model, StaticFlyThinker) else FlyThinker
    return method_class(model.generator, model.reasoner, model.fusion, False, reasoner_sees_profile=True)


# --- building: method mapping and the random Reasoner --------------------------------------------


def test_every_method_builds_its_module(local_models):
    """(sft and flythinker: test_backbones.py)"""
    expected = {
        ("method=nonpers", "data.retriever=none"): SFT,
        ("method=rag",): SFT,
        ("method=cot", "data.rationales=oracle"): SFT,
        ("method=static", "fusion.span=response", "reasoner.sees_profile=false"): StaticFlyThinker,
        ("method=coconut", "coconut.k=3"): Coconut,
    }
    built = {}
    for overrides, method_class in expected.items():
        built[overrides[0]], _ = build_method(load_config(None, [*local_models, *overrides]), corpus=no_corpus)
        assert type(built[overrides[0]]) is method_class, overrides
    assert built["method=coconut"].thoughts == 3
    assert built["method=static"].reasoner_sees_profile is False


def test_random_reasoner_is_fresh_seeded_and_leaves_other_randomness_alone(local_models):
    def reasoner_and_next_draw(*overrides):
        torch.manual_seed(0)
        method, _ = build_method(
            load_config(None, [*local_models, "reasoner.mode=frozen", *overrides]), corpus=no_corpus
        )
        return dict(method.reasoner.named_parameters()), torch.rand(3)

    pretrained, draw = reasoner_and_next_draw()
    random, random_draw = reasoner_and_next_draw("reasoner.init=random", "seed=1")
    again, _ = reasoner_and_next_draw("reasoner.init=random", "seed=1")
    other_seed, _ = reasoner_and_next_draw("reasoner.init=random", "seed=2")
    assert torch.equal(draw, random_draw)  # the generator's LoRA init etc. drew the same numbers
    assert pretrained.keys() == random.keys()
    assert [p.shape for p in pretrained.values()] == [p.shape for p in random.values()]
    weights = [name for name, p in pretrained.items() if p.dim() == 2]  # norms are initialised to ones
    assert all(not torch.equal(pretrained[name], random[name]) for name in weights)
    assert all(torch.equal(random[name], again[name]) for name in random)
    assert any(not torch.equal(random[name], other_seed[name]) for name in weights)
