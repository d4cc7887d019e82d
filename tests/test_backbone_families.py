"""Every backbone family users pass (issue 15), as tiny random models built from each family's config
class (as peft's test-suite does), saved to local folders and built by build_method like a run's
models. Per family: teacher-forced == incremental logits in every engine, greedy decoding == the
argmax chain in every engine, lambda = 0 == SFT exactly, and latents added in the space the decoder
layers see. A shared base is supported for every family listed. Refused at build time, with tested
errors: a shared base on a family whose logits the LM-head path cannot reproduce (a patched Llama),
LoRA target names a family lacks (Phi-3's fused projections), vision-language checkpoints (Gemma 3 4B+).

Post-processing is set strong (the tiny models' logits have std ~0.15), so a path that skips a
softcap, logits_scaling or logit_scale fails the logit comparisons; sliding windows are shorter
than the sequences, so the sliding-attention masks run; LoRA B matrices are random and nonzero.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import Gemma3Config, LlamaForCausalLM

from flythinker_pl.config import ConfigError, load_config
from flythinker_pl.decoding import prefill
from flythinker_pl.decoding.engines import make_engine
from flythinker_pl.decoding.generate import generate
from flythinker_pl.models.build import build_method
from flythinker_pl.models.families import head_logits
from flythinker_pl.models.fusion_math import real_positions
from flythinker_pl.models.lora_step import LeanLoRA
from flythinker_pl.models.sft import SFT

from helpers import (
    ENGINES,
    FAMILIES,
    GREEDY,
    LAM,
    LATENT_METHODS,
    METHODS,
    NORMS,
    PROMPTS,
    RESPONSE_LEN,
    argmax_chain_matches,
    batch,
    family_config,
    family_folders,
    grid_overrides,
    prompt_batch,
    randomise_lora,
    save_family,
)


POST_PROCESSED = {"gemma2", "gemma3", "granite", "cohere"}
SAMPLED = dataclasses.replace(GREEDY, do_sample=True, temperature=1.3, top_p=0.9, seed=7)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory, tokenizer):
    return family_folders(request.param, tmp_path_factory.mktemp(request.param), tokenizer)


def build(family, kind: str, lam: float = LAM, **fusion):
    """kind: one of ENGINES, LoRA on both models with random, distinct, nonzero adapters."""
    overrides = grid_overrides(family, *(f"fusion.{k}={v}" for k, v in fusion.items()), *METHODS[kind], lam=lam)
    method, _ = build_method(load_config(None, overrides), corpus=None)
    randomise_lora(method, which="lora_")
    return method.eval()


@torch.no_grad()
def engine_logits(method, engine_name: str, ids, mask, prompt_len) -> torch.Tensor:
    """Prefill on the prompts, then step through the response, in `engine_name`, under the LoRA path
    generate() uses (the lean forward): the next-token logits of every response position."""
    prompt_width = ids.shape[1] - RESPONSE_LEN  # left padding puts every prompt end at this column
    lean = getattr(method, "lora", None) or LeanLoRA(method)
    with lean:
        engine = make_engine(method, engine_name)
        try:
            logits, state = engine.prefill(ids[:, :prompt_width], mask[:, :prompt_width], prompt_len)
            steps = [logits] + [engine.step(state, ids[:, prompt_width + k]) for k in range(RESPONSE_LEN - 1)]
        finally:
            engine.close()
    return torch.stack(steps, dim=1)


@pytest.mark.parametrize("kind", ENGINES)
@torch.no_grad()
def test_teacher_forced_equals_incremental_in_every_engine(family, tokenizer, kind):
    method = build(family, kind)
    ids, mask, prompt_len = batch(tokenizer)
    full = method(ids, mask, prompt_len)[:, ids.shape[1] - RESPONSE_LEN - 1 : -1]
    for engine in ENGINES[kind]:
        torch.testing.assert_close(
            engine_logits(method, engine, ids, mask, prompt_len),
            full,
            atol=2e-5,
            rtol=1e-4,
            msg=lambda m: f"{family[0]} {kind} {engine}: {m}",
        )


@pytest.mark.parametrize("kind", LATENT_METHODS)
@pytest.mark.parametrize("sees_profile", [True, False])
@torch.no_grad()
def test_chunked_prompt_pass_equals_the_one_pass(family, tokenizer, kind, sees_profile, monkeypatch):
    """The overlapped prompt pass (decoding/prefill.py) in chunks of 2 columns (the last of 1; the shared
    base pads to whole chunks), left-padded rows, the Reasoner hiding part of the prompt or not: its
    logits, and every step after it, are the teacher-forced function."""
    monkeypatch.setattr(prefill, "MIN_CHUNK", 2)
    monkeypatch.setattr(prefill, "CHUNKS", 5)
    method = build(family, kind)
    method.reasoner_sees_profile = sees_profile
    ids, mask, prompt_len = batch(tokenizer)
    profile_mask = torch.zeros_like(mask)
    profile_mask[:, -RESPONSE_LEN - 4 : -RESPONSE_LEN - 1] = 1  # three prompt columns of every row: its "history"
    full = method(ids, mask, prompt_len, profile_mask=profile_mask)[:, ids.shape[1] - RESPONSE_LEN - 1 : -1]
    width = ids.shape[1] - RESPONSE_LEN
    chunks = prefill._Prompt(method, ids[:, :width], mask[:, :width], prompt_len, profile_mask[:, :width]).bounds
    assert len(chunks) == 5
    if kind == "flythinker":
        logits, state = prefill.prefill_two_models(
            method, ids[:, :width], mask[:, :width], prompt_len, profile_mask[:, :width]
        )
        _, one_pass = method.prefill(ids[:, :width], mask[:, :width], prompt_len, profile_mask[:, :width])
        torch.testing.assert_close(state.latents, one_pass.latents, atol=2e-5, rtol=1e-4)
        steps = [logits] + [method.step(state, ids[:, width + k]) for k in range(RESPONSE_LEN - 1)]
    else:
        with method.lora:
            logits, state = prefill.prefill_shared(
                method, ids[:, :width], mask[:, :width], prompt_len, profile_mask[:, :width]
            )
            steps = [logits] + [method.batched_step(state, ids[:, width + k]) for k in range(RESPONSE_LEN - 1)]
    torch.testing.assert_close(
        torch.stack(steps, dim=1), full, atol=2e-5, rtol=1e-4, msg=lambda m: f"{family[0]} {kind}: {m}"
    )
    if not sees_profile:  # the hidden history matters, so a chunk that ignored it would fail above
        method.reasoner_sees_profile = True
        seen = method(ids, mask, prompt_len, profile_mask=profile_mask)[:, ids.shape[1] - RESPONSE_LEN - 1 : -1]
        assert (seen - full).abs().max() > 1e-3


@torch.no_grad()
def test_logit_post_processing_is_reproduced_where_it_matters(family, tokenizer):
    """head_logits (the shared engine's LM-head path) == the model's forward; for the post-processing
    families, the bare LM head is far from it (so the engine tests above have teeth)."""
    model = build(family, "shared").generator.get_base_model()
    ids = torch.tensor([PROMPTS[1]])
    hidden = model.base_model(input_ids=ids).last_hidden_state
    expected = model(input_ids=ids).logits
    torch.testing.assert_close(head_logits(model, hidden), expected, atol=1e-6, rtol=1e-6)
    bare_gap = float((model.get_output_embeddings()(hidden) - expected).abs().max())
    assert (bare_gap > 1e-2) == (family[0] in POST_PROCESSED), bare_gap


@pytest.mark.parametrize("kind", LATENT_METHODS)
def test_greedy_is_the_argmax_chain_and_sampling_agrees_in_every_engine(family, tokenizer, kind):
    method = build(family, kind)
    prompts = prompt_batch(tokenizer)
    greedy, sampled = {}, {}
    for engine in ENGINES[kind]:
        greedy[engine] = generate(method, *prompts, dataclasses.replace(GREEDY, engine=engine), eos_ids=-1).tokens
        sampled[engine] = generate(method, *prompts, dataclasses.replace(SAMPLED, engine=engine), eos_ids=-1).tokens
        for prompt, generated in zip(PROMPTS, greedy[engine]):
            argmax_chain_matches(method, prompt, generated, eos_id=-1)
    assert len({str(tokens) for tokens in greedy.values()}) == 1
    assert len({str(tokens) for tokens in sampled.values()}) == 1  # sampling reads logit values, not just order


@pytest.mark.parametrize("kind", LATENT_METHODS)
@torch.no_grad()
def test_lambda_zero_is_sft_exactly(family, tokenizer, kind):
    method = build(family, kind, lam=0.0)
    ids, mask, prompt_len = batch(tokenizer)
    logits = method(ids, mask, prompt_len)  # (the shared base leaves its `generator` adapter active)
    sft = SFT(method.generator)
    assert torch.equal(logits, sft(ids, mask, prompt_len))
    prompts = prompt_batch(tokenizer)
    sft_tokens = generate(sft, *prompts, GREEDY, eos_ids=-1).tokens
    for engine in ENGINES[kind]:
        assert generate(method, *prompts, dataclasses.replace(GREEDY, engine=engine), eos_ids=-1).tokens == sft_tokens
    method.fusion.cfg.lam = LAM  # and the latents do change the logits, so the comparison has teeth
    assert (method(ids, mask, prompt_len) - logits).abs().max() > 1e-3


def first_layer_inputs(generator, run) -> torch.Tensor:
    """The hidden states the Generator's first decoder layer receives while `run()` runs."""
    captured = []
    layer = generator.get_base_model().base_model.layers[0]
    handle = layer.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        run()
    finally:
        handle.remove()
    return captured[0]


@pytest.mark.parametrize("norm", NORMS)
@torch.no_grad()
def test_latents_are_added_in_the_space_the_decoder_layers_see(family, tokenizer, norm):
    """Independently of fusion.py: the first layer reads e(x_j) + lam * pad(r_{j-1}), where e(x) and the
    table's mean norm c are measured at that layer's input from the model's own forward on token ids
    (Gemma's sqrt(d) and Granite's embedding_multiplier included), and r = c h / ||h|| (or h)."""
    method = build(family, "flythinker", norm=norm)
    ids, mask, prompt_len = batch(tokenizer)
    generator, positions = method.generator, real_positions(mask)
    tokens = first_layer_inputs(
        generator, lambda: generator(input_ids=ids, attention_mask=mask, position_ids=positions)
    )
    vocab = torch.arange(len(tokenizer))[None]
    table_norm = first_layer_inputs(generator, lambda: generator(input_ids=vocab)).norm(dim=-1).mean()
    hidden = method.reasoner(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
    latents = table_norm * hidden / hidden.norm(dim=-1, keepdim=True) if norm == "table_mean" else hidden
    latents = torch.nn.functional.pad(latents, (0, tokens.shape[-1] - hidden.shape[-1]))
    inject = (mask.bool() & (positions >= 1))[..., None]
    expected = tokens + torch.where(inject, LAM * torch.nn.functional.pad(latents[:, :-1], (0, 0, 1, 0)), 0.0)
    fused = first_layer_inputs(generator, lambda: method(ids, mask, prompt_len))
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=1e-5)


def test_shared_base_refuses_a_family_whose_logits_it_cannot_reproduce(tmp_path, tokenizer, monkeypatch):
    family = family_folders("llama", tmp_path, tokenizer)
    forward = LlamaForCausalLM.forward

    def biased_forward(self, *args, **kwargs):  # a made-up family: logits scaled and shifted in its forward
        out = forward(self, *args, **kwargs)
        out.logits = out.logits * 2.0 + 0.5
        return out

    monkeypatch.setattr(LlamaForCausalLM, "forward", biased_forward)
    with pytest.raises(ConfigError, match=r"does not reproduce LlamaForCausalLM.forward .*reasoner.shared_base=false"):
        build(family, "shared")
    build(family, "flythinker")  # two models run the model's own forward: still fine


def test_lora_targets_a_family_lacks_are_refused_with_its_layer_names(tmp_path, tokenizer):
    """Phi-3 fuses q/k/v and gate/up: peft would adapt only o_proj and down_proj of the default targets."""
    _, generator, reasoner = family_folders("phi3", tmp_path, tokenizer)
    cfg = load_config(None, [f"generator.name={generator}", f"reasoner.name={reasoner}", "generator.mode=lora"])
    with pytest.raises(
        ConfigError,
        match=r"generator.lora_targets names \['q_proj', 'k_proj', 'v_proj', 'gate_proj', "
        r"'up_proj'\].*\[down_proj,gate_up_proj,o_proj,qkv_proj\]",
    ):
        build_method(cfg, corpus=None)


def test_a_vision_language_checkpoint_is_refused(tmp_path, tokenizer):
    """Gemma 3 from 4B up loads as Gemma3ForConditionalGeneration: its text model beside a vision tower."""
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    vocab = len(tokenizer)
    config = Gemma3Config(
        text_config=family_config("gemma3", 64, tokenizer).to_dict(),
        vision_config=vision,
        mm_tokens_per_image=4,
        image_token_id=vocab - 1,
        boi_token_id=vocab - 2,
        eoi_token_id=vocab - 3,
    )
    path = save_family(tmp_path, "gemma3-vision", 64, tokenizer, seed=0, config=config)
    cfg = load_config(None, [f"generator.name={path}", "method=sft"])
    with pytest.raises(ConfigError, match=r"Gemma3ForConditionalGeneration, a vision-language model.*text-only"):
        build_method(cfg, corpus=None)
