"""The lean LoRA forward (models/lora_step.py) computes what peft's forward computes: one adapter,
two adapters by row group, after an optimiser step, and inside every decoding engine. Adapters have
random, distinct, nonzero B matrices: with B = 0 (peft's init) a wrong dispatch would go unseen."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from flythinker_pl.config import BackboneConfig, DecodeConfig
from flythinker_pl.decoding.generate import generate
from flythinker_pl.models import tiny
from flythinker_pl.models.backbones import lora_config, set_mode
from flythinker_pl.models.lora_step import LeanLoRA, exact_scaling
from flythinker_pl.models.sft import SFT

from helpers import PROMPTS, left_padded, randomise_lora, sizes


GREEDY = DecodeConfig(do_sample=False, max_new_tokens=12)


@pytest.fixture
def two_adapters(tokenizer):
    model = set_mode(
        tiny.build_model(sizes(64), tokenizer, seed=3), BackboneConfig(mode="lora"), "generator", "CAUSAL_LM"
    )
    model.add_adapter("reasoner", lora_config(BackboneConfig(lora_alpha=8), "CAUSAL_LM"))  # another scaling
    model.add_adapter("odd", lora_config(BackboneConfig(lora_alpha=12), "CAUSAL_LM"))  # 1.5: not a power of two
    randomise_lora(model, which="lora_")
    return model.eval()


def forward(model, ids):
    return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def with_adapter(model, name: str):
    model.base_model.set_adapter(name)
    return model


@torch.no_grad()
def test_lean_single_adapter_equals_peft(two_adapters):
    ids = torch.tensor([PROMPTS[1], PROMPTS[1][::-1]])
    for name in ("generator", "reasoner", "odd"):  # scalings 2 and 1 (added in place), 1.5 (peft's ops)
        reference = forward(with_adapter(two_adapters, name), ids)
        with LeanLoRA(two_adapters) as lean:
            assert all("forward" in vars(layer) for layer in lean.layers)
            lean_logits = forward(two_adapters, ids)
        assert torch.equal(lean_logits, reference)  # the same operations in the same order
    assert all("forward" not in vars(layer) for layer in lean.layers)  # peft's forward is back


def test_only_powers_of_two_scale_exactly():
    assert [exact_scaling(s) for s in (1.0, 2.0, 0.5, 4.0, 0.125)] == [True] * 5
    assert [exact_scaling(s) for s in (1.5, 3.0, 0.75, 0.0, -2.0)] == [False] * 5


@torch.no_grad()
def test_rows_run_each_group_through_its_adapter_in_one_batch(two_adapters):
    ids = torch.tensor([PROMPTS[1], PROMPTS[1][::-1]])
    generator = forward(with_adapter(two_adapters, "generator"), ids)
    reasoner = forward(with_adapter(two_adapters, "reasoner"), ids)
    assert not torch.allclose(generator, reasoner, atol=1e-3)  # the adapters differ visibly
    with LeanLoRA(two_adapters) as lean, lean.rows("generator", "reasoner"):
        batched = forward(two_adapters, torch.cat([ids, ids]))
    torch.testing.assert_close(batched, torch.cat([generator, reasoner]), atol=1e-5, rtol=1e-5)


def test_lean_reads_the_trained_weights_after_an_optimiser_step(two_adapters):
    ids = torch.tensor([PROMPTS[2]])
    model = with_adapter(two_adapters, "generator")
    model.base_model.set_requires_grad(["generator", "reasoner"], True)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    lean = LeanLoRA(model)
    for _ in range(2):  # decode, train a step, decode again with the same LeanLoRA object
        with torch.no_grad():
            with lean, lean.rows("generator", "reasoner"):
                batched = forward(model, torch.cat([ids, ids]))
            reference = torch.cat(
                [forward(with_adapter(model, "generator"), ids), forward(with_adapter(model, "reasoner"), ids)]
            )
        torch.testing.assert_close(batched, reference, atol=1e-5, rtol=1e-5)
        model.base_model.set_requires_grad(["generator", "reasoner"], True)
        forward(model.train(), ids).logsumexp(-1).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        model.eval()


def test_layers_peft_treats_differently_keep_peft_forward(two_adapters):
    two_adapters.train()
    for layer in LeanLoRA(two_adapters).layers[:1]:
        layer.lora_dropout["generator"] = torch.nn.Dropout(0.1)
    with LeanLoRA(two_adapters) as lean:
        installed = ["forward" in vars(layer) for layer in lean.layers]
    assert installed[0] is False and all(installed[1:])
    with LeanLoRA(two_adapters) as lean, pytest.raises(ValueError, match="every LoRA layer on the lean forward"):
        with lean.rows("generator", "reasoner"):  # peft's forward there would ignore the rows
            pass


def test_rows_need_one_rank(tokenizer):
    model = set_mode(
        tiny.build_model(sizes(64), tokenizer, seed=3), BackboneConfig(mode="lora"), "generator", "CAUSAL_LM"
    )
    model.add_adapter("reasoner", lora_config(BackboneConfig(lora_r=4), "CAUSAL_LM"))
    ids = torch.tensor([PROMPTS[0], PROMPTS[0]])
    with pytest.raises(ValueError, match="one LoRA rank"), torch.no_grad():
        with LeanLoRA(model.eval()) as lean, lean.rows("generator", "reasoner"):
            forward(model, ids)


@torch.no_grad()
def test_sft_decodes_the_same_tokens_on_the_lean_and_peft_paths(tokenizer):
    generator = set_mode(
        tiny.build_model(sizes(64), tokenizer, seed=5), BackboneConfig(mode="lora"), "generator", "CAUSAL_LM"
    )
    randomise_lora(generator, seed=1, which="lora_")
    method = SFT(generator).eval()
    ids, mask = left_padded(PROMPTS, tokenizer.pad_token_id)
    prompt_len = torch.tensor([len(p) for p in PROMPTS])
    outputs = {
        path: generate(
            method, ids, mask, prompt_len, ["a", "b", "c"], dataclasses.replace(GREEDY, lora_path=path), eos_ids=-1
        ).tokens
        for path in ("lean", "peft")
    }
    assert outputs["lean"] == outputs["peft"]
    for prompt, generated in zip(PROMPTS, outputs["lean"]):  # == the teacher-forced argmax chain
        full = torch.tensor([prompt + generated])
        logits = method(full, torch.ones_like(full), torch.tensor([len(prompt)]))
        assert logits[0, len(prompt) - 1 : -1].argmax(-1).tolist() == generated
