"""The check's models: the Qwen2.5 architectures (or their tiny stand-ins) with random weights, built
directly on the device, made into the framework's methods by models/build.py's own steps (training
modes, fusion, the family checks) from the run config that would build them."""

from __future__ import annotations

import zlib

import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from ...config import Config, load_config
from ...models import families
from ...models.architectures import ARCHITECTURES
from ...models.build import generator_in_mode, shared_base, with_reasoner
from ...models.flythinker import FlyThinker
from ...models.shared import SharedBaseFlyThinker
from .plan import Plan

LAM = 0.5  # the paper's lambda
LORA_R = 16  # experiments/gpu/longlamp_qwen.yaml: r 16, alpha 32
LORA_B_STD = 0.02  # peft starts B at 0, which would hide an adapter dispatched to the wrong rows


def run_config(plan: Plan, reasoner: str = "", mode: str = "lora", shared: bool = False) -> Config:
    """The config of a run with these models, validated as a run's is (reasoner.name is unused by the
    shared base and by SFT)."""
    lora = [f"{key}.lora_r={LORA_R}" for key in ("generator", "reasoner")]
    lora += [f"{key}.lora_alpha={2 * LORA_R}" for key in ("generator", "reasoner")]
    return load_config(
        None,
        [
            f"generator.name={plan.generator}",
            f"reasoner.name={reasoner or plan.reasoners[0]}",
            f"reasoner.mode={mode}",
            f"reasoner.shared_base={str(shared).lower()}",
            f"fusion.lam={LAM}",
            *lora,
        ],
    )


def build_lm(name: str, key: str, dtype: torch.dtype, device: torch.device):
    """A Qwen2 causal LM of architecture `name`, random weights (seeded by the name: the same weights
    for the same architecture), initialised directly on `device`; `key` (generator | reasoner) names
    it in the family checks' messages, as a run's config key would."""
    torch.manual_seed(zlib.crc32(name.encode()))
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(Qwen2Config(**ARCHITECTURES[name]), dtype=dtype).eval()
    families.check_text_only(model, key, name)
    return model


def randomise_lora_b(model: torch.nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, LORA_B_STD)


def make_generator(plan: Plan, dtype, device):
    generator = generator_in_mode(run_config(plan), build_lm(plan.generator, "generator", dtype, device))
    randomise_lora_b(generator, seed=1)
    return generator


def make_flythinker(plan: Plan, reasoner_name: str, mode: str, dtype, device, generator=None) -> FlyThinker:
    """`generator`: one made by make_generator, shared with another method (decode's SFT)."""
    generator = generator if generator is not None else make_generator(plan, dtype, device)
    reasoner_lm = build_lm(reasoner_name, "reasoner", dtype, device)
    method = with_reasoner(run_config(plan, reasoner_name, mode), generator, reasoner_lm)
    randomise_lora_b(method.reasoner, seed=2)
    method.fusion.to(device)
    return method


def make_shared(plan: Plan, dtype, device) -> SharedBaseFlyThinker:
    method = shared_base(run_config(plan, shared=True), make_generator(plan, dtype, device))
    randomise_lora_b(method.generator, seed=3)  # both adapters nonzero and distinct
    method.fusion.to(device)
    return method


def weights_gb(module: torch.nn.Module) -> float:
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in module.parameters()}
    return sum(storages.values()) / 2**30
