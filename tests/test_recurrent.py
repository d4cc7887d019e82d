"""method=flythinker_recurrent (models/recurrent.py): the exact teacher-forced pass is decoding's
computation, a truncated window is exact where it claims to be, mu = 0 is FlyThinker, gradients
cross the recurrence, every engine decodes it alike, and the config refuses what it cannot run."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from flythinker_pl.config import ConfigError, DecodeConfig, FusionConfig, load_config
from flythinker_pl.decoding.engines import Staggered, make_engine
from flythinker_pl.decoding.generate import generate
from flythinker_pl.decoding.reasoner_process import reasoner_process
from flythinker_pl.lit.module import response_loss
from flythinker_pl.models.build import build_method
from flythinker_pl.models.flythinker import FlyThinker
from flythinker_pl.models.fusion import LatentFusion
from flythinker_pl.models.fusion_math import real_positions
from flythinker_pl.models.layout import last_prompt_column
from flythinker_pl.models.recurrent import RecurrentFlyThinker

from helpers import left_padded, no_corpus, random_lora_backbones, save_tiny_model


PROMPT_LENGTHS = [5, 9, 7, 2]
# differing: rows enter their responses at different columns, the last while still padded in others' responses
RESPONSE_LENGTHS = [6, 3, 5, 2]
GREEDY = DecodeConfig(do_sample=False, max_new_tokens=8)
SAMPLED = DecodeConfig(do_sample=True, temperature=1.3, top_p=0.9, max_new_tokens=8, seed=7)


@pytest.fixture(scope="module")
def backbones(tokenizer):
    """LoRA on both models, every lora_B random, nonzero and distinct (B = 0 would hide a wrong adapter)."""
    generator, reasoner = random_lora_backbones(tokenizer)
    return generator.eval(), reasoner.eval()


def model(backbones, mu=1.0, window=0, lam=2.0, span="global", cls=RecurrentFlyThinker):
    fusion = LatentFusion(32, 64, FusionConfig(lam=lam, span=span))
    extra = dict(mu=mu, window=window) if cls is RecurrentFlyThinker else {}
    return cls(*backbones, fusion, reasoner_frozen=False, **extra)


def batch(tokenizer, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = [
        torch.randint(3, len(tokenizer), (p + r,), generator=g).tolist()
        for p, r in zip(PROMPT_LENGTHS, RESPONSE_LENGTHS)
    ]
    ids, mask = left_padded(rows, tokenizer.pad_token_id)
    return ids, mask, torch.tensor(PROMPT_LENGTHS)


def response_logits(logits, mask, prompt_len):
    """Per row, the logits predicting its response tokens: columns last prompt .. end - 1."""
    last = last_prompt_column(mask, prompt_len)
    return [logits[row, last[row] : last[row] + length] for row, length in enumerate(RESPONSE_LENGTHS)]


def incremental_logits(method, ids, mask, prompt_len, pad_id):
    """Prefill on each row's prompt (left-padded again), then step through its response tokens."""
    prompts = [ids[row, mask[row].bool()][:p].tolist() for row, p in enumerate(PROMPT_LENGTHS)]
    responses = [ids[row, mask[row].bool()][p:].tolist() for row, p in enumerate(PROMPT_LENGTHS)]
    prompt_ids, prompt_mask = left_padded(prompts, pad_id)
    logits, state = method.prefill(prompt_ids, prompt_mask, prompt_len)
    steps = [logits]
    for k in range(max(RESPONSE_LENGTHS) - 1):  # a row whose response ended is fed a filler token
        steps.append(method.step(state, torch.tensor([r[min(k, len(r) - 1)] for r in responses])))
    steps = torch.stack(steps, dim=1)
    return [steps[row, :length] for row, length in enumerate(RESPONSE_LENGTHS)]


def assert_rows_close(actual, expected, atol=1e-5):
    for row, (a, e) in enumerate(zip(actual, expected)):
        torch.testing.assert_close(a, e, atol=atol, rtol=0, msg=lambda m: f"row {row}: {m}")


@pytest.mark.parametrize("span", ["global", "response"])
@pytest.mark.parametrize("mu", [1.0, 3.0])
@torch.no_grad()
def test_exact_teacher_forced_equals_incremental(backbones, tokenizer, span, mu):
    method = model(backbones, mu=mu, span=span)
    ids, mask, prompt_len = batch(tokenizer)
    full = response_logits(method(ids, mask, prompt_len), mask, prompt_len)
    assert_rows_close(incremental_logits(method, ids, mask, prompt_len, tokenizer.pad_token_id), full)
    # the recurrence changes the Generator's logits from the second response token on
    flythinker = response_logits(model(backbones, span=span, cls=FlyThinker)(ids, mask, prompt_len), mask, prompt_len)
    for row in range(len(full)):
        torch.testing.assert_close(full[row][:2], flythinker[row][:2], atol=1e-5, rtol=0)
        assert RESPONSE_LENGTHS[row] <= 2 or not torch.allclose(full[row][2:], flythinker[row][2:], atol=1e-3), row


@torch.no_grad()
def test_truncated_window_is_exact_where_it_claims_and_only_there(backbones, tokenizer):
    ids, mask, prompt_len = batch(tokenizer)
    positions = real_positions(mask)
    response = mask.bool() & (positions >= prompt_len[:, None])
    exact_method = model(backbones, window=0)
    exact_states = exact_method.reasoner_states(ids, mask, positions, response)
    exact = exact_method(ids, mask, prompt_len)
    last = last_prompt_column(mask, prompt_len)  # the column of position P - 1
    for window in (1, 2):
        method = model(backbones, window=window)
        states = method.reasoner_states(ids, mask, positions, response)
        logits = method(ids, mask, prompt_len)
        for row in range(ids.shape[0]):
            exact_until = last[row] + 1 + window  # states: positions < P + w; logits: positions <= P + w
            torch.testing.assert_close(states[row, :exact_until], exact_states[row, :exact_until], atol=1e-5, rtol=0)
            torch.testing.assert_close(logits[row, : exact_until + 1], exact[row, : exact_until + 1], atol=1e-5, rtol=0)
            if exact_until < ids.shape[1]:  # the first state beyond the claim is not exact
                assert not torch.allclose(states[row, exact_until], exact_states[row, exact_until], atol=1e-4)
            if exact_until + 1 < ids.shape[1]:
                assert not torch.allclose(logits[row, exact_until + 1], exact[row, exact_until + 1], atol=1e-4)
    # as many passes as response tokens: exact everywhere (Jacobi reaches the fixed point)
    deep = model(backbones, window=max(RESPONSE_LENGTHS))(ids, mask, prompt_len)
    torch.testing.assert_close(deep, exact, atol=1e-5, rtol=0)


@pytest.mark.parametrize("window", [0, 1, 2])
@torch.no_grad()
def test_mu_zero_is_flythinker(backbones, tokenizer, window):
    ids, mask, prompt_len = batch(tokenizer)
    recurrent, flythinker = model(backbones, mu=0.0, window=window), model(backbones, cls=FlyThinker)
    torch.testing.assert_close(
        recurrent(ids, mask, prompt_len), flythinker(ids, mask, prompt_len), atol=0 if window else 1e-5, rtol=0
    )
    assert_rows_close(
        incremental_logits(recurrent, ids, mask, prompt_len, tokenizer.pad_token_id),
        incremental_logits(flythinker, ids, mask, prompt_len, tokenizer.pad_token_id),
        atol=1e-6,
    )


def reasoner_lora_grads(method, ids, mask, prompt_len):
    method.zero_grad()
    labels = ids.masked_fill(~(mask.bool() & (real_positions(mask) >= prompt_len[:, None])), -100)
    loss, _ = response_loss(method(ids, mask, prompt_len), labels)
    loss.backward()
    return loss, {n: p.grad.clone() for n, p in method.reasoner.named_parameters() if "lora_" in n}


def test_gradients_reach_the_reasoner_through_the_recurrence(backbones, tokenizer):
    ids, mask, prompt_len = batch(tokenizer)
    grads = {}
    for window in (0, 1, max(RESPONSE_LENGTHS)):
        loss, grads[window] = reasoner_lora_grads(model(backbones, window=window).train(), ids, mask, prompt_len)
        assert torch.isfinite(loss)
        assert all(g.abs().sum() > 0 and torch.isfinite(g).all() for g in grads[window].values())
    # the exact function has one gradient, whichever way it is computed: the graph crosses every hop
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[max(RESPONSE_LENGTHS)][name], atol=1e-5, rtol=1e-4)
    _, feedback_free = reasoner_lora_grads(model(backbones, mu=0.0).train(), ids, mask, prompt_len)
    assert any(not torch.allclose(grads[0][name], feedback_free[name], atol=1e-5) for name in feedback_free)
    assert any(not torch.allclose(grads[0][name], grads[1][name], atol=1e-5) for name in grads[1])


def test_a_training_step_moves_the_reasoner(backbones, tokenizer):
    method = model(backbones, window=1).train()
    ids, mask, prompt_len = batch(tokenizer)
    lora = [p for n, p in method.named_parameters() if "lora_" in n]
    before = [p.detach().clone() for p in lora]
    optimizer = torch.optim.SGD(lora, lr=0.1)
    reasoner_lora_grads(method, ids, mask, prompt_len)
    optimizer.step()
    moved = {
        n
        for (n, p), b in zip(((n, p) for n, p in method.named_parameters() if "lora_" in n), before)
        if not torch.equal(p, b)
    }
    assert any(n.startswith("reasoner.") for n in moved) and any(n.startswith("generator.") for n in moved)
    with torch.no_grad():  # restore the module-scoped weights
        for p, b in zip(lora, before):
            p.copy_(b)
    method.eval()


@pytest.fixture(scope="module")
def decoding_method(backbones):
    method = model(backbones, lam=4.0).eval()
    yield method
    reasoner_process(method).close()


def test_every_engine_decodes_the_teacher_forced_recurrence(decoding_method, tokenizer):
    method = decoding_method
    prompts = [[5, 9, 13, 21, 8], list(range(30, 41)), [7, 7, 3, 19, 44, 52, 61, 12]]
    ids, mask = left_padded(prompts, tokenizer.pad_token_id)
    prompt_len = torch.tensor([len(p) for p in prompts])
    assert isinstance(make_engine(method, "staggered"), Staggered)
    for cfg in (GREEDY, SAMPLED):
        outputs = {
            engine: generate(
                method, ids, mask, prompt_len, ["a", "b", "c"], dataclasses.replace(cfg, engine=engine), eos_ids=-1
            ).tokens
            for engine in ("sequential", "staggered")
        }  # staggered on CPU: the worker process
        assert outputs["sequential"] == outputs["staggered"]
    flythinker = generate(
        model((method.generator, method.reasoner), lam=4.0, cls=FlyThinker),
        ids,
        mask,
        prompt_len,
        ["a", "b", "c"],
        GREEDY,
        eos_ids=-1,
    ).tokens
    assert flythinker != outputs["sequential"]  # the recurrence steers greedy choices: the checks have teeth
    with torch.no_grad():  # greedy == the teacher-forced argmax chain, row by row
        for prompt, generated in zip(
            prompts, generate(method, ids, mask, prompt_len, ["a", "b", "c"], GREEDY, eos_ids=-1).tokens
        ):
            sequence = torch.tensor([prompt + generated])
            chain = method(sequence, torch.ones_like(sequence), torch.tensor([len(prompt)]))
            assert chain[0, len(prompt) - 1 : -1].argmax(-1).tolist() == generated


# --- building and config ---------------------------------------------------------------------------


def test_build_and_config(tmp_path, tokenizer):
    local = [
        f"generator.name={save_tiny_model(tmp_path, 'gen', 64, tokenizer)}",
        f"reasoner.name={save_tiny_model(tmp_path, 'rea', 32, tokenizer, seed=5)}",
        "method=flythinker_recurrent",
    ]
    method, _ = build_method(load_config(None, [*local, "recurrent.mu=0.5", "recurrent.window=2"]), corpus=no_corpus)
    assert type(method) is RecurrentFlyThinker and (method.mu, method.window) == (0.5, 2)
    assert load_config(None, local).recurrent.window == 0  # exact by default

    refused = {
        ("recurrent.window=-1",): "recurrent.window=-1 must be >= 0",
        ("recurrent.mu=-0.5",): "recurrent.mu=-0.5 must be >= 0",
        ("reasoner.shared_base=true",): "reasoner.shared_base=true is not supported",
        ("reasoner.sees_profile=false",): "does not support reasoner.sees_profile=false",
        ("fusion.span=prompt",): "fusion.span=global or response",
        ("train.gradient_checkpointing=true",): "recurrent.window=0 \\(exact\\)",
    }
    for overrides, message in refused.items():
        with pytest.raises(ConfigError, match=message):
            load_config(None, [*local, *overrides])
    load_config(None, [*local, "train.gradient_checkpointing=true", "recurrent.window=1"])  # truncated: fine
    with pytest.raises(ConfigError, match="fusion.span=global or response"):
        model((method.generator, method.reasoner), span="prompt")
