"""DESIGN.md section 4: the fusion math, teacher-forced == incremental, lambda = 0 == SFT."""

from __future__ import annotations

import pytest
import torch

from flythinker_pl.config import ConfigError, FusionConfig
from flythinker_pl.models.fusion import LatentFusion, embedding_norm
from flythinker_pl.models.fusion_math import real_positions
from flythinker_pl.models.sft import SFT

from helpers import DIMS, RESPONSE_LEN, SPANS, batch


@pytest.mark.parametrize(
    "reasoner_dim,generator_dim,dims", [(32, 64, "pad"), (64, 64, "pad"), (32, 64, "linear"), (96, 64, "linear")]
)
@pytest.mark.parametrize("span", SPANS)
@torch.no_grad()
def test_teacher_forced_equals_incremental(make_flythinker, tokenizer, reasoner_dim, generator_dim, dims, span):
    model = make_flythinker(reasoner_dim, generator_dim, dims=dims, span=span)
    ids, mask, prompt_len = batch(tokenizer)
    full = model(ids, mask, prompt_len)

    prompt_width = ids.shape[1] - RESPONSE_LEN  # left padding puts every prompt end at this column
    logits, state = model.prefill(ids[:, :prompt_width], mask[:, :prompt_width], prompt_len)
    incremental = [logits]
    for k in range(RESPONSE_LEN - 1):
        incremental.append(model.step(state, ids[:, prompt_width + k]))
    incremental = torch.stack(incremental, dim=1)

    torch.testing.assert_close(incremental, full[:, prompt_width - 1 : -1], atol=1e-5, rtol=0)


@torch.no_grad()
def test_sft_teacher_forced_equals_incremental(make_flythinker, tokenizer):
    sft = SFT(make_flythinker().generator)
    ids, mask, prompt_len = batch(tokenizer)
    full = sft(ids, mask, prompt_len)
    prompt_width = ids.shape[1] - RESPONSE_LEN
    logits, state = sft.prefill(ids[:, :prompt_width], mask[:, :prompt_width], prompt_len)
    steps = [logits] + [sft.step(state, ids[:, prompt_width + k]) for k in range(RESPONSE_LEN - 1)]
    torch.testing.assert_close(torch.stack(steps, 1), full[:, prompt_width - 1 : -1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("dims", DIMS)
@torch.no_grad()
def test_lambda_zero_is_sft_exactly(make_flythinker, tokenizer, dims):
    model = make_flythinker(lam=0.0, dims=dims)
    ids, mask, prompt_len = batch(tokenizer)
    assert torch.equal(model(ids, mask, prompt_len), SFT(model.generator)(ids, mask, prompt_len))
    # and a nonzero lambda does change the logits, so the comparison above has teeth
    model.fusion.cfg.lam = 0.5
    assert not torch.allclose(model(ids, mask, prompt_len), SFT(model.generator)(ids, mask, prompt_len))


@pytest.mark.parametrize("span", SPANS)
@torch.no_grad()
def test_latents_land_exactly_where_the_span_allows(make_flythinker, tokenizer, span):
    model = make_flythinker(span=span)
    ids, mask, prompt_len = batch(tokenizer)
    embeds, _, latents, _ = model.fused_embeds(ids, mask, prompt_len, model.latent_norm())
    added = (embeds - model.embed(ids)).abs().sum(-1)  # [B, T]
    pos = real_positions(mask)
    for row in range(ids.shape[0]):
        for col in range(ids.shape[1]):
            real, j, p = bool(mask[row, col]), int(pos[row, col]), int(prompt_len[row])
            expected = real and j >= 1 and {"global": True, "response": j >= p, "prompt": j < p}[span]
            assert (added[row, col] > 0) == expected, (row, col, span)
            if expected:  # the latent added at j is the one produced at j-1
                torch.testing.assert_close(embeds[row, col] - model.embed(ids)[row, col], latents[row, col - 1])


def test_rescale_matches_the_mean_embedding_norm_and_zero_hidden_gives_no_nan(make_flythinker):
    model = make_flythinker(32, 64, lam=1.0)
    c = embedding_norm(model.generator.get_input_embeddings())
    expected = model.generator.get_input_embeddings().weight.norm(dim=-1).mean()
    torch.testing.assert_close(c, expected)
    hidden = torch.randn(2, 5, 32) * 100
    hidden[0, 2] = 0.0
    latents = model.fusion(hidden, c)
    assert torch.isfinite(latents).all()
    assert torch.equal(latents[0, 2], torch.zeros(64))
    norms = latents.norm(dim=-1)
    norms[0, 2] = c  # every other latent has norm exactly c
    torch.testing.assert_close(norms, torch.full_like(norms, float(c)))
    assert torch.equal(latents[..., 32:], torch.zeros(2, 5, 32))  # pad: only the first d_R dims


def test_linear_projection_starts_norm_preserving():
    fusion = LatentFusion(32, 64, FusionConfig(dims="linear", lam=1.0))
    out = fusion(torch.randn(4, 32), torch.tensor(3.0))
    torch.testing.assert_close(out.norm(dim=-1), torch.full((4,), 3.0))


def test_pad_with_larger_reasoner_fails_with_a_fix():
    with pytest.raises(ConfigError, match=r"d_R \(128\) <= d_G \(64\).*fusion.dims=linear"):
        LatentFusion(128, 64, FusionConfig(dims="pad"))


def test_sharded_embedding_is_refused():
    embedding = torch.nn.Embedding(10, 8)
    embedding.weight = torch.nn.Parameter(torch.empty(0))
    with pytest.raises(RuntimeError, match="sharded or released"):
        embedding_norm(embedding)
