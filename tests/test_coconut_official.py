"""Our Coconut (norm=none) against a port of the official algorithm (facebookresearch/coconut:
coconut.py's forward and generate, dataset.py's sequences and MyCollator's padding), written here
from the published code: logits, loss, gradients and greedy tokens, k = 0..3 thoughts, with and
without the <|start-latent|>/<|end-latent|> markers, and rows with different numbers of thoughts.

Both run on the same tiny Qwen2 in float64, so the only differences left are summation order."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import DynamicCache

from flythinker_pl.config import DecodeConfig
from flythinker_pl.decoding.generate import generate
from flythinker_pl.lit.module import response_loss
from flythinker_pl.models import tiny
from flythinker_pl.models.coconut import Coconut, LatentTokens
from flythinker_pl.models.layout import last_prompt_column

from helpers import left_padded, sizes


QUESTIONS = [7, 4, 6]  # question (prompt) lengths
ANSWERS = [5, 3, 4]  # answer (response) lengths
IGNORE = -100


# --- the port -----------------------------------------------------------------------------------


def official_sequence(question, answer, thoughts, latent, markers):
    """dataset.py: question [+ start] + latent x k [+ end] + answer; labels only on the answer."""
    head = question + ([markers.start] if markers else []) + [latent] * thoughts + ([markers.end] if markers else [])
    return head + answer, [IGNORE] * len(head) + answer


def official_collate(sequences, latent, pad_id):
    """MyCollator: rows with thoughts are left-padded so that their first latent shares one column
    (position ids 0 there), then every row is right-padded (labels -100, position ids 0)."""
    firsts = [ids.index(latent) for ids, _ in sequences if latent in ids]
    rows = []
    for ids, labels in sequences:
        shift = max(firsts) - ids.index(latent) if latent in ids else 0
        rows.append(
            (
                [pad_id] * shift + ids,
                [IGNORE] * shift + labels,
                [0] * shift + list(range(len(ids))),
                [0] * shift + [1] * len(ids),
            )
        )
    width = max(len(ids) for ids, *_ in rows)
    return [
        torch.tensor([values + [fill] * (width - len(values)) for values in column])
        for column, fill in zip(zip(*rows), (pad_id, IGNORE, 0, 0))
    ]


def official_forward(model, input_ids, attention_mask, labels, position_ids, latent):
    """coconut.py Coconut.forward: one pass up to the first latent column, one pass per further
    latent column, one pass for the rest, over one KV cache cut back to each pass's start; each
    latent's input is replaced by the last-layer hidden state of the position before it."""
    latent_columns = [(input_ids[row] == latent).nonzero()[:, 0].tolist() for row in range(len(input_ids))]
    passes = max(map(len, latent_columns))
    embeds = model.get_input_embeddings()(input_ids)
    end = int((input_ids == latent).nonzero()[:, 1].min()) if passes else input_ids.shape[1]
    start, cache, logits = 0, None, []
    for pass_index in range(passes + 1):
        if cache is not None:  # drop what a previous pass computed past this pass's start
            for layer in cache.layers:
                layer.keys, layer.values = layer.keys[:, :, :start], layer.values[:, :, :start]
        out = model(
            inputs_embeds=embeds[:, start:end],
            attention_mask=attention_mask[:, :end],
            position_ids=position_ids[:, start:end],
            past_key_values=cache or DynamicCache(),
            use_cache=True,
            output_hidden_states=True,
        )
        logits.append(out.logits)
        if pass_index == passes:
            break
        hidden, cache, offset = out.hidden_states[-1], out.past_key_values, start
        rows = [list(embeds[row]) for row in range(len(embeds))]  # rebuilt, not written in place
        for row, columns in enumerate(latent_columns):
            if pass_index < len(columns):
                rows[row][columns[pass_index]] = hidden[row, columns[pass_index] - 1 - offset]
        embeds = torch.stack([torch.stack(row) for row in rows])
        start, end = end, input_ids.shape[1] if pass_index + 1 == passes else end + 1
    logits = torch.cat(logits, dim=-2)
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE)
    return logits, loss, embeds


def official_generate(model, question, thoughts, latent, markers, max_new_tokens):
    """coconut.py Coconut.generate (batch 1, greedy, no KV cache after the first forward)."""
    ids, _ = official_sequence(question, [], thoughts, latent, markers)
    ids = torch.tensor([ids])
    logits, _, embeds = official_forward(
        model, ids, torch.ones_like(ids), ids.clone(), torch.arange(ids.shape[1])[None], latent
    )
    tokens = [int(logits[0, -1].argmax())]
    for _ in range(max_new_tokens - 1):
        embeds = torch.cat([embeds, model.get_input_embeddings()(torch.tensor([[tokens[-1]]]))], dim=1)
        tokens.append(int(model(inputs_embeds=embeds).logits[0, -1].argmax()))
    return tokens


# --- the comparison -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    model = tiny.build_model(sizes(64), tokenizer, seed=4).double().train()
    with torch.no_grad():  # away from the near-identity of a fresh init, so greedy tokens depend on the thoughts
        for name, weight in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                weight.mul_(8)
    return model


def rows_of(tokenizer, seed=0):
    g = torch.Generator().manual_seed(seed)
    draw = lambda n: torch.randint(3, len(tokenizer) - 3, (n,), generator=g).tolist()  # noqa: E731
    return [draw(q) for q in QUESTIONS], [draw(a) for a in ANSWERS]


def special_ids(tokenizer):
    """Three ids stand in for the markers and the latent token (the forward only needs ids)."""
    top = len(tokenizer)
    return LatentTokens(start=top - 3, latent=top - 2, end=top - 1)


def ours(model, tokenizer, questions, answers, thoughts, markers):
    ids, mask = left_padded([q + a for q, a in zip(questions, answers)], tokenizer.pad_token_id)
    prompt_len = torch.tensor(list(map(len, questions)))
    coconut = Coconut(model, max(thoughts), norm="none", markers=markers, pad_id=tokenizer.pad_token_id)
    logits = coconut(ids, mask, prompt_len, thoughts=torch.tensor(thoughts))
    labels = torch.full_like(ids, IGNORE)
    last = last_prompt_column(mask, prompt_len)
    for row in range(len(ids)):
        labels[row, last[row] + 1 :] = ids[row, last[row] + 1 :]
    scored = [logits[row, last[row] : -1] for row in range(len(ids))]
    # response_loss computes in fp32 (as training does); the same mean in float64 for the gradients
    exact = F.cross_entropy(torch.cat(scored), torch.cat([torch.tensor(a) for a in answers]))
    return scored, response_loss(logits, labels)[0], exact


def theirs(model, tokenizer, questions, answers, thoughts, latent, markers):
    sequences = [official_sequence(q, a, k, latent, markers) for q, a, k in zip(questions, answers, thoughts)]
    ids, labels, positions, mask = official_collate(sequences, latent, tokenizer.pad_token_id)
    logits, loss, _ = official_forward(model, ids, mask, labels, positions, latent)
    scored = []
    for row, answer in enumerate(answers):
        first_answer = int((labels[row] != IGNORE).nonzero()[0])
        scored.append(logits[row, first_answer - 1 : first_answer - 1 + len(answer)])
    return scored, loss


THOUGHTS = {f"k={k}": [k] * 3 for k in range(4)} | {"k=2,0,3": [2, 0, 3]}


@pytest.mark.parametrize("markers", [False, True], ids=["plain", "markers"])
@pytest.mark.parametrize("thoughts", THOUGHTS.values(), ids=THOUGHTS.keys())
def test_logits_loss_and_gradients_equal_the_official_forward(model, tokenizer, thoughts, markers):
    tokens = special_ids(tokenizer)
    questions, answers = rows_of(tokenizer)
    params = [p for p in model.parameters() if p.requires_grad]
    our_logits, our_loss, our_exact_loss = ours(
        model, tokenizer, questions, answers, thoughts, tokens if markers else None
    )
    their_logits, their_loss = theirs(
        model, tokenizer, questions, answers, thoughts, tokens.latent, tokens if markers else None
    )
    for row, (a, b) in enumerate(zip(our_logits, their_logits)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0, msg=lambda m: f"row {row}: {m}")
    torch.testing.assert_close(our_loss.double(), their_loss, atol=1e-6, rtol=0)
    torch.testing.assert_close(our_exact_loss, their_loss, atol=1e-13, rtol=0)
    our_grads = torch.autograd.grad(our_exact_loss, params)
    their_grads = torch.autograd.grad(their_loss, params)
    for param, a, b in zip(params, our_grads, their_grads):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=0)
    assert sum(g.abs().sum() for g in our_grads) > 0


@torch.no_grad()
@pytest.mark.parametrize("markers", [False, True], ids=["plain", "markers"])
def test_greedy_tokens_equal_the_official_generate(model, tokenizer, markers):
    tokens = special_ids(tokenizer)
    questions, _ = rows_of(tokenizer, seed=1)
    ids, mask = left_padded(questions, tokenizer.pad_token_id)
    decoded = {}
    for k in range(4):
        coconut = Coconut(model.eval(), k, markers=tokens if markers else None, pad_id=tokenizer.pad_token_id)
        ours_ = generate(
            coconut,
            ids,
            mask,
            mask.sum(-1),
            ["a", "b", "c"],
            DecodeConfig(do_sample=False, max_new_tokens=6),
            eos_ids=-1,
        ).tokens
        theirs_ = [official_generate(model, q, k, tokens.latent, tokens if markers else None, 6) for q in questions]
        assert ours_ == theirs_, k
        decoded[k] = ours_
    model.train()
    assert len({str(tokens) for tokens in decoded.values()}) == 4  # every k decodes differently: the test has teeth
