"""decode.compile: a static decoding state computes what the growing one does, a compiled step gives
eager's greedy tokens in every engine, a failed compile falls back to eager; and bf16 decoding reads
bf16 copies of the frozen weights, computing autocast's numbers exactly (decoding/precision.py)."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from flythinker_pl.config import ConfigError, DecodeConfig, FusionConfig
from flythinker_pl.decoding import compiled as compiled_module
from flythinker_pl.decoding.engines import Sequential, make_engine
from flythinker_pl.decoding.generate import compile_steps, generate
from flythinker_pl.decoding.precision import low_precision_weights
from flythinker_pl.decoding.reasoner_process import reasoner_process
from flythinker_pl.decoding.static import CAPACITY_STEP, StaticDecodeState, capacity_for
from flythinker_pl.models.flythinker import FlyThinker
from flythinker_pl.models.fusion import LatentFusion
from flythinker_pl.models.lora_step import LeanLoRA
from flythinker_pl.models.sft import SFT

from helpers import PROMPTS, argmax_chain_matches, prompt_batch, random_lora_backbones

GREEDY = DecodeConfig(do_sample=False, max_new_tokens=10, compile=False)
SAMPLED = DecodeConfig(do_sample=True, temperature=1.3, top_p=0.9, max_new_tokens=10, seed=7, compile=False)


@pytest.fixture(scope="module")
def flythinker(tokenizer):
    """LoRA on both models, random nonzero distinct adapters; lam large enough to steer greedy choices."""
    generator, reasoner = random_lora_backbones(tokenizer)
    model = FlyThinker(generator, reasoner, LatentFusion(32, 64, FusionConfig(lam=4.0)), reasoner_frozen=False)
    yield model.eval()
    reasoner_process(model).close()


def test_capacity_rounds_up_to_whole_steps():
    assert capacity_for(10, 5) == CAPACITY_STEP
    assert capacity_for(CAPACITY_STEP - 3, 4) == CAPACITY_STEP  # the last token is sampled, never stored
    assert capacity_for(CAPACITY_STEP - 3, 5) == 2 * CAPACITY_STEP


@torch.no_grad()
def test_static_state_computes_what_the_growing_state_does(flythinker, tokenizer):
    """Eager steps (no compiler involved) on the static buffers: the same logits and latents, for the
    Reasoner's own mask too (history hidden); a step past the capacity is refused before it runs."""
    ids, mask, prompt_len, _ = prompt_batch(tokenizer)
    profile_mask = torch.zeros_like(mask)
    profile_mask[:, -4:-2] = 1
    flythinker.reasoner_sees_profile = False
    try:
        _, growing = flythinker.prefill(ids, mask, prompt_len, profile_mask)
        _, state = flythinker.prefill(ids, mask, prompt_len, profile_mask)
        static = StaticDecodeState(state, capacity=ids.shape[1] + 3)
        for token in (11, 12, 13):
            tokens = torch.full((3,), token)
            static.reserve_column()
            torch.testing.assert_close(
                flythinker.step(static, tokens), flythinker.step(growing, tokens), atol=1e-5, rtol=1e-5
            )
            torch.testing.assert_close(static.latents, growing.latents, atol=1e-5, rtol=1e-5)
        assert static.attention_mask.shape == (3, ids.shape[1] + 3)
        assert torch.equal(static.reasoner_attention_mask, growing.reasoner_attention_mask)
        with pytest.raises(RuntimeError, match="holds .* columns; a step past them"):
            static.reserve_column()
    finally:
        flythinker.reasoner_sees_profile = True


def test_compiled_step_decodes_eagers_greedy_tokens(flythinker, tokenizer):
    """The compiled sequential step (one graph for both models): the argmax chain, compile seconds
    reported on the first decode of a shape only."""
    batch = prompt_batch(tokenizer)
    eager = generate(flythinker, *batch, dataclasses.replace(GREEDY, engine="sequential"), eos_ids=-1)
    first, again = (
        generate(flythinker, *batch, dataclasses.replace(GREEDY, engine="sequential", compile=True), eos_ids=-1)
        for _ in range(2)
    )
    assert first.tokens == again.tokens == eager.tokens
    for prompt, generated in zip(PROMPTS, first.tokens):
        argmax_chain_matches(flythinker, prompt, generated, eos_id=-1)
    assert first.compile_seconds > 0 and again.compile_seconds == 0
    assert eager.compile_seconds == 0


@pytest.mark.slow  # every engine compiles its own graphs: ~1 min on 2 cores (seconds from inductor's disk cache)
@pytest.mark.parametrize("cfg", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_every_engine_compiled_decodes_as_eager(flythinker, tokenizer, cfg):
    batch = prompt_batch(tokenizer)
    for method, engine in [
        (SFT(flythinker.generator), "sequential"),
        (flythinker, "sequential"),
        (flythinker, "staggered"),
    ]:
        options = dataclasses.replace(cfg, engine=engine)
        eager = generate(method, *batch, options, eos_ids=tokenizer.eos_token_id).tokens
        assert (
            generate(method, *batch, dataclasses.replace(options, compile=True), eos_ids=tokenizer.eos_token_id).tokens
            == eager
        ), engine


@pytest.mark.slow
def test_shared_engine_compiled_decodes_as_eager(shared_model, tokenizer):
    method = shared_model
    batch = prompt_batch(tokenizer)
    eager = generate(method, *batch, dataclasses.replace(GREEDY, engine="shared"), eos_ids=-1)
    compiled = generate(method, *batch, dataclasses.replace(GREEDY, engine="shared", compile=True), eos_ids=-1)
    assert compiled.tokens == eager.tokens
    for prompt, generated in zip(PROMPTS, compiled.tokens):
        argmax_chain_matches(method, prompt, generated, eos_id=-1)


def test_a_step_that_cannot_compile_decodes_eagerly_and_says_so(flythinker, tokenizer, monkeypatch, caplog):
    import torch._dynamo.exc

    def fails(function, device_type):
        def call(*args):
            raise torch._dynamo.exc.Unsupported("no C++ compiler here")

        return call

    monkeypatch.setattr(compiled_module, "compiled", fails)
    monkeypatch.setattr(compiled_module, "_failed", set())
    batch = prompt_batch(tokenizer)
    with caplog.at_level(logging.WARNING, logger="flythinker_pl.decoding.compiled"):
        result = generate(flythinker, *batch, dataclasses.replace(GREEDY, engine="sequential", compile=True), -1)
    assert result.tokens == generate(flythinker, *batch, dataclasses.replace(GREEDY, engine="sequential"), -1).tokens
    assert [r.getMessage() for r in caplog.records] == [
        "decode.compile: FlyThinker.step could not be compiled (no C++ compiler here); it decodes eagerly"
    ]  # once


def test_compile_setting_is_resolved_and_checked(flythinker, run_config):
    cpu = torch.device("cpu")
    assert compile_steps(DecodeConfig(compile="auto"), flythinker, cpu) is False  # bench decode: no gain on CPU
    assert compile_steps(DecodeConfig(compile=True), flythinker, cpu) is True
    assert compile_steps(DecodeConfig(compile=False), flythinker, torch.device("cuda")) is False
    assert run_config("decode.compile=true").decode.compile is True
    with pytest.raises(ConfigError, match="decode.compile='sometimes' is not allowed"):
        run_config("decode.compile=sometimes")
    with pytest.raises(ValueError, match="give max_new_tokens >= 1"):
        make_engine(flythinker, "sequential", compile=True)
    assert isinstance(make_engine(flythinker, "sequential"), Sequential)  # the public call is unchanged


@torch.no_grad()
def test_bf16_decoding_reads_frozen_weights_cast_once_with_autocasts_numbers(flythinker, tokenizer):
    ids, mask, prompt_len, sample_ids = prompt_batch(tokenizer)
    linears = [m for m in flythinker.modules() if type(m) is torch.nn.Linear]
    frozen = [m for m in linears if not m.weight.requires_grad]
    trainable = [m for m in linears if m.weight.requires_grad]
    assert frozen and trainable  # base weights and LoRA adapters
    originals = {m: m.weight for m in linears}

    def prefill_and_steps():
        with LeanLoRA(flythinker):
            logits, state = flythinker.prefill(ids, mask, prompt_len)
            return torch.stack([logits, flythinker.step(state, torch.tensor([11, 12, 13]))])

    with torch.autocast("cpu", dtype=torch.bfloat16):
        recast_every_op = prefill_and_steps()
        with low_precision_weights(flythinker, "cpu"):
            assert all(m.weight.dtype == torch.bfloat16 for m in frozen)
            assert all(m.weight is originals[m] and m.weight.dtype == torch.float32 for m in trainable)
            cast_once = prefill_and_steps()
            copy = frozen[0].weight
        assert torch.equal(cast_once, recast_every_op)  # the same numbers, bit for bit
        assert all(m.weight is originals[m] for m in linears)  # the model is as it was
        with low_precision_weights(flythinker, "cpu"):
            assert frozen[0].weight is copy  # kept for the next decode...
        frozen[0].weight.mul_(2)  # ...while its source is unchanged
        try:
            with low_precision_weights(flythinker, "cpu"):
                assert frozen[0].weight is not copy
                assert torch.equal(frozen[0].weight, originals[frozen[0]].to(torch.bfloat16))
        finally:
            frozen[0].weight.div_(2)
        seen = []  # generate() decodes on the copies (the LM head: a frozen Linear that runs its own forward)
        head = flythinker.generator.get_output_embeddings()
        hook = head.register_forward_pre_hook(lambda module, args: seen.append(module.weight.dtype))
        try:
            generate(flythinker, ids, mask, prompt_len, sample_ids, GREEDY, -1)
        finally:
            hook.remove()
        assert seen and set(seen) == {torch.bfloat16}
    with low_precision_weights(flythinker, "cpu"):  # no autocast: nothing swapped
        assert all(m.weight is originals[m] for m in linears)
