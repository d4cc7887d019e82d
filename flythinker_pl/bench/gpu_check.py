"""GPU readiness: one command that runs every CUDA path at the paper's sizes and reports all at once.

    flythinker gpu-check [--out bench/gpu_check.json] [--sizes paper|tiny] [--only parity decode ...]

On a CUDA device (default sizes: paper) it builds the real architectures of Qwen2.5-0.5B/1.5B/3B-Instruct
(their config values are in ARCHITECTURES; random weights, nothing from the hub), wraps them in the
framework's own method classes exactly as models/build.py does, and runs these sections, each on its own
time budget so that the whole run stays under 8 minutes on one GPU:

  parity    teacher-forced == incremental logits, through every engine (sequential, staggered on a side
            stream, shared), in fp32 and in bf16, with the tolerance stated; greedy tokens of staggered and
            shared == sequential; lambda = 0 == SFT (exactly)
  train     tokens/s and peak memory: SFT vs FlyThinker (Reasoner frozen / LoRA / full; the 0.5B and 1.5B
            Reasoners for the 3B Generator) and the shared base; bf16-mixed (fp32 weights, bf16 autocast:
            what train.precision=auto gives on GPU); a warm-up step, then a few timed steps
  decode    ms/token at batch 1, 16 and 64: SFT, sequential, staggered, shared (bf16 weights), and SFT with
            fp32 weights under bf16 autocast (what `flythinker predict` runs under bf16-mixed); ratios to SFT;
            SFT and sequential FlyThinker compiled (decode.compile: static cache, CUDA graphs), their
            compile seconds and speed-up over eager
  two_gpu   the Reasoner on cuda:1 (decode.reasoner_device): staggered == sequential, ms/token (>= 2 GPUs)
  ddp       2 processes over NCCL: FlyThinker trains and the replicas stay identical (>= 2 GPUs)

Every section runs even when an earlier one fails: an exception (CUDA OOM included) becomes
"failed: <error>" in the table, memory is released, and the next section starts. Within train and decode
a failure is one row's. On CPU the same code runs at tiny sizes in well under a minute (tests call it).
Output: JSON (--out) and a markdown table beside it (.md), also printed.

Timing: on CUDA, torch.cuda.Event pairs on the current stream after a device synchronize, never the
first call; on CPU, time.perf_counter. Decoding's ms/token is (time of N tokens - time of 1 token) / (N-1),
both through decoding/generate.generate, medians of interleaved repeats: the prompt pass falls out.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import tempfile
import time
import traceback
import zlib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import pandas as pd
import peft
import torch
import transformers
from transformers import AutoModelForCausalLM, Qwen2Config

from ..config import BackboneConfig, DecodeConfig, FusionConfig, ReasonerConfig
from ..data.encode import IGNORE_INDEX
from ..decoding.engines import make_engine
from ..decoding.generate import generate
from ..measure import peak_memory_mb, release, reset_peak_memory, timed
from ..models.architectures import ARCHITECTURES
from ..models.backbones import decoder_of, lora_config, set_mode
from ..models.flythinker import FlyThinker
from ..models.fusion import LatentFusion
from ..models.lora_step import LeanLoRA
from ..models.sft import SFT
from ..models.shared import SharedBaseFlyThinker
from . import optimizer_steps, write_json


LAM = 0.5  # the paper's lambda
LORA_R = 16  # experiments/gpu/longlamp_qwen.yaml: r 16, alpha 32
LORA_B_STD = 0.02  # peft starts B at 0, which would hide an adapter dispatched to the wrong rows
PAD_ID = 0
# Parity: max |logits - reference| / max |reference logits|, over every row, position and vocabulary entry.
# fp32 differs only by kernel choice (a prompt pass vs one-token steps; TF32 stays off); bf16 by rounding
# at every op: measured on CPU, 0.005 (tiny), 0.02 (Qwen2.5-0.5B architecture), 0.044 (3B); on an H200,
# 0.046-0.11 at 3B (the prompt pass and one-token steps take different attention kernels). A misplaced
# latent or a wrong adapter moves logits by 0.4 (tiny) to 1.1 (0.5B) of their scale: the "... move the
# logits" rows check that the effects the tolerance must catch exceed it POWER times.
TOLERANCE = {
    ("cpu", torch.float32): 1e-5,
    ("cuda", torch.float32): 1e-4,
    ("cpu", torch.bfloat16): 1e-1,
    ("cuda", torch.bfloat16): 1.5e-1,
}
POWER = 3


@dataclass(frozen=True)
class Plan:
    generator: str
    reasoners: tuple[str, str]  # the smaller and the larger Reasoner
    parity_batch: int
    parity_prompt: int  # longest prompt; rows are shorter (left padding)
    parity_tokens: int  # response tokens compared, and greedy tokens generated
    train_batch: int
    train_prompt: int
    train_response: int
    train_steps: int  # timed, after one warm-up step
    decode_batches: tuple[int, ...]
    decode_prompt: int
    decode_tokens: int
    decode_repeats: int
    budgets: dict = field(default_factory=dict)  # section -> seconds (checked between units of work)


PLANS = {
    "paper": Plan(
        "Qwen2.5-3B-Instruct",
        ("Qwen2.5-0.5B-Instruct", "Qwen2.5-1.5B-Instruct"),
        parity_batch=4,
        parity_prompt=64,
        parity_tokens=32,
        train_batch=4,
        train_prompt=768,
        train_response=256,
        train_steps=3,
        decode_batches=(1, 16, 64),
        decode_prompt=256,
        decode_tokens=32,
        decode_repeats=3,
        budgets={"parity": 80, "train": 110, "decode": 240, "two_gpu": 35, "ddp": 50},
    ),
    "tiny": Plan(
        "tiny-3B",
        ("tiny-0.5B", "tiny-1.5B"),
        parity_batch=3,
        parity_prompt=12,
        parity_tokens=8,
        train_batch=2,
        train_prompt=24,
        train_response=8,
        train_steps=2,
        decode_batches=(1, 2),
        decode_prompt=12,
        decode_tokens=6,
        decode_repeats=2,
        budgets={"parity": 40, "train": 30, "decode": 40, "two_gpu": 20, "ddp": 60},
    ),
}


# ---------------------------------------------------------------- building models, as models/build.py does


def build_lm(name: str, dtype: torch.dtype, device: torch.device):
    """A Qwen2 causal LM of architecture `name`, random weights (seeded by the name: the same weights
    for the same architecture), initialised directly on `device`."""
    torch.manual_seed(zlib.crc32(name.encode()))
    with torch.device(device):
        return AutoModelForCausalLM.from_config(Qwen2Config(**ARCHITECTURES[name]), dtype=dtype).eval()


def lora(cfg_class=BackboneConfig, mode: str = "lora"):
    return cfg_class(mode=mode, lora_r=LORA_R, lora_alpha=2 * LORA_R)


def randomise_lora_b(model: torch.nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, LORA_B_STD)


def make_generator(plan: Plan, dtype, device):
    generator = set_mode(build_lm(plan.generator, dtype, device), lora(), "generator", task_type="CAUSAL_LM")
    randomise_lora_b(generator, seed=1)
    return generator


def make_flythinker(plan: Plan, reasoner_name: str, mode: str, dtype, device, generator=None) -> FlyThinker:
    generator = generator if generator is not None else make_generator(plan, dtype, device)
    reasoner_lm = build_lm(reasoner_name, dtype, device)
    reasoner = set_mode(decoder_of(reasoner_lm), lora(ReasonerConfig, mode), "reasoner", task_type=None)
    randomise_lora_b(reasoner, seed=2)
    fusion = LatentFusion(reasoner_lm.config.hidden_size, generator.config.hidden_size, FusionConfig(lam=LAM))
    return FlyThinker(generator, reasoner, fusion.to(device), reasoner_frozen=mode == "frozen")


def make_shared(plan: Plan, dtype, device) -> SharedBaseFlyThinker:
    generator = make_generator(plan, dtype, device)
    generator.add_adapter("reasoner", lora_config(lora(ReasonerConfig), task_type="CAUSAL_LM"))
    randomise_lora_b(generator, seed=3)  # both adapters nonzero and distinct
    width = generator.config.hidden_size
    return SharedBaseFlyThinker(generator, LatentFusion(width, width, FusionConfig(lam=LAM)).to(device))


def weights_gb(module: torch.nn.Module) -> float:
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in module.parameters()}
    return sum(storages.values()) / 2**30


# ---------------------------------------------------------------- timing, memory, inputs


def peak_gb(device: torch.device) -> Optional[float]:
    """Peak CUDA memory since reset_peak_memory (GB); None on CPU (not measured there)."""
    return peak_memory_mb(device) / 1024 if device.type == "cuda" else None


def failure(error: BaseException) -> str:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return "failed: CUDA out of memory: " + str(error).splitlines()[0][:200]
    return f"failed: {type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"


def random_tokens(generator: torch.Generator, vocab: int, *shape: int) -> torch.Tensor:
    return torch.randint(1, vocab, shape, generator=generator)  # never PAD_ID


def sequences(plan_prompt: int, lengths: list[int], response: torch.Tensor, vocab: int, seed: int, device) -> dict:
    """Left-padded random prompts of `lengths` (<= plan_prompt), and prompt + `response` [B, R] as one
    teacher-forced batch (labels on the response only)."""
    rng = torch.Generator().manual_seed(seed)
    prompt_ids = torch.full((len(lengths), plan_prompt), PAD_ID)
    prompt_mask = torch.zeros((len(lengths), plan_prompt), dtype=torch.long)
    for row, length in enumerate(lengths):
        prompt_ids[row, plan_prompt - length :] = random_tokens(rng, vocab, length)
        prompt_mask[row, plan_prompt - length :] = 1
    ids = torch.cat([prompt_ids, response.cpu()], 1)
    mask = torch.cat([prompt_mask, torch.ones_like(response.cpu())], 1)
    labels = torch.cat([torch.full_like(prompt_ids, IGNORE_INDEX), response.cpu()], 1)
    batch = {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "prompt_len": torch.tensor(lengths),
        "response": response.cpu(),
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
    }
    return {k: v.to(device) for k, v in batch.items()}


def section_deadline(seconds: float) -> Callable[[], bool]:
    end = time.perf_counter() + seconds
    return lambda: time.perf_counter() > end


# ---------------------------------------------------------------- parity


@torch.no_grad()
def teacher_forced(method, batch: dict) -> torch.Tensor:
    """[B, R, V]: the logits that predict each response token, from one teacher-forced pass."""
    width = batch["response"].shape[1]
    logits = method(batch["input_ids"], batch["attention_mask"], batch["prompt_len"], logits_to_keep=width + 1)
    return logits[:, :width].float()


@torch.no_grad()
def incremental(method, engine_name: str, batch: dict) -> torch.Tensor:
    """[B, R, V]: the same logits from the prompt pass and one-token steps of an engine, fed the response
    (generate()'s loop with the tokens given instead of sampled; the lean LoRA forward installed as there)."""
    lean = getattr(method, "lora", None) or LeanLoRA(method)
    with lean:
        engine = make_engine(method, engine_name)
        try:
            logits, state = engine.prefill(batch["prompt_ids"], batch["prompt_mask"], batch["prompt_len"])
            steps = [logits]
            for column in range(batch["response"].shape[1] - 1):
                steps.append(engine.step(state, batch["response"][:, column]))
        finally:
            engine.close()
    return torch.stack(steps, 1).float()


def greedy(method, engine_name: str, batch: dict, tokens: int, vocab: int) -> list[list[int]]:
    cfg = DecodeConfig(engine=engine_name, do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens, compile=False)
    rows = len(batch["prompt_len"])
    return generate(
        method,
        batch["prompt_ids"],
        batch["prompt_mask"],
        batch["prompt_len"],
        [str(i) for i in range(rows)],
        cfg,
        eos_ids=vocab - 1,
    ).tokens


def relative_diff(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value - reference).abs().max() / reference.abs().max().clamp(min=1e-30))


def logit_row(check: str, dtype, value: float, tolerance: float, above: bool = False) -> dict:
    """A parity row; `above`: the value must EXCEED the tolerance (an effect the checks must be able to see)."""
    ok = value > tolerance if above else value <= tolerance
    return {
        "check": check,
        "dtype": str(dtype).removeprefix("torch."),
        "value": value,
        "tolerance": (">" if above else "<=") + f" {tolerance:g}",
        "ok": bool(ok),
        "detail": "",
    }


def greedy_row(
    check: str, dtype, reference: list, tokens: list, reference_logits: Optional[torch.Tensor], tolerance: float
) -> dict:
    """Tokens must equal the reference's; with a tolerance, a row may part at a near tie of the
    reference's own logits (margin <= tolerance x scale), after which rows are not comparable."""
    total = sum(map(len, reference))
    same = sum(a == b for ref, got in zip(reference, tokens) for a, b in zip(ref, got))
    parted = []
    for row, (ref, got) in enumerate(zip(reference, tokens)):
        step = next((k for k, (a, b) in enumerate(zip(ref, got)) if a != b), None)
        if step is None and len(ref) == len(got):
            continue
        if step is None or reference_logits is None:
            parted.append((row, step, float("inf")))
            continue
        logits = reference_logits[row, step]
        parted.append((row, step, float((logits[ref[step]] - logits[got[step]]).abs() / logits.abs().max())))
    ok = all(margin <= tolerance for _, _, margin in parted)
    detail = (
        "identical"
        if not parted
        else "; ".join(f"row {row} parts at step {step} (margin {margin:.1e} of scale)" for row, step, margin in parted)
    )
    return {
        "check": check,
        "dtype": str(dtype).removeprefix("torch."),
        "value": same / max(total, 1),
        "tolerance": "identical" if tolerance == 0 else f"identical or parts at a near tie (<= {tolerance:g})",
        "ok": bool(ok and (tolerance > 0 or not parted)),
        "detail": detail,
    }


def parity_rows(plan: Plan, device: torch.device, dtype: torch.dtype):
    """The parity checks' rows, one at a time (a failure midway keeps the rows before it)."""
    tolerance = TOLERANCE[(device.type, dtype)]
    vocab = ARCHITECTURES[plan.generator]["vocab_size"]
    count = plan.parity_batch
    lengths = [plan.parity_prompt - (plan.parity_prompt // 4) * i // max(count - 1, 1) for i in range(count)]
    response = random_tokens(torch.Generator().manual_seed(1), vocab, count, plan.parity_tokens)
    batch = sequences(plan.parity_prompt, lengths, response, vocab, seed=0, device=device)

    def after_prompts(tokens: list[list[int]]) -> dict:  # the same prompts, followed by `tokens`
        return sequences(plan.parity_prompt, lengths, torch.tensor(tokens), vocab, seed=0, device=device)

    flythinker = make_flythinker(plan, plan.reasoners[0], "lora", dtype, device).eval()
    sft = SFT(flythinker.generator)
    reference = teacher_forced(flythinker, batch)
    for engine in ("sequential", "staggered"):
        yield logit_row(
            f"flythinker: teacher-forced == incremental ({engine})",
            dtype,
            relative_diff(incremental(flythinker, engine, batch), reference),
            tolerance,
        )
    sft_reference = teacher_forced(sft, batch)
    yield logit_row(
        "sft: teacher-forced == incremental",
        dtype,
        relative_diff(incremental(sft, "sequential", batch), sft_reference),
        tolerance,
    )
    tokens = {
        engine: greedy(flythinker, engine, batch, plan.parity_tokens, vocab) for engine in ("sequential", "staggered")
    }
    yield greedy_row(
        "flythinker: greedy tokens staggered == sequential",
        dtype,
        tokens["sequential"],
        tokens["staggered"],
        teacher_forced(flythinker, after_prompts(tokens["sequential"])),
        tolerance,
    )
    flythinker.fusion.cfg.lam = 0.0
    try:
        without_latents = teacher_forced(flythinker, batch)
        yield logit_row(
            "lambda = 0 == sft: teacher-forced logits", dtype, relative_diff(without_latents, sft_reference), 0.0
        )
        yield greedy_row(
            "lambda = 0 == sft: greedy tokens (staggered vs sft)",
            dtype,
            greedy(sft, "sequential", batch, plan.parity_tokens, vocab),
            greedy(flythinker, "staggered", batch, plan.parity_tokens, vocab),
            None,
            0.0,
        )
    finally:
        flythinker.fusion.cfg.lam = LAM
    yield logit_row(
        "latents move the logits (the checks above can see a misplaced one)",
        dtype,
        relative_diff(reference, without_latents),
        POWER * tolerance,
        above=True,
    )
    del flythinker, sft
    release(device)

    shared = make_shared(plan, dtype, device).eval()
    reference = teacher_forced(shared, batch)  # peft's forward, switching adapters between the two passes
    for engine in ("sequential", "shared"):
        yield logit_row(
            f"shared base: teacher-forced == incremental ({engine})",
            dtype,
            relative_diff(incremental(shared, engine, batch), reference),
            tolerance,
        )
    tokens = {engine: greedy(shared, engine, batch, plan.parity_tokens, vocab) for engine in ("sequential", "shared")}
    yield greedy_row(
        "shared base: greedy tokens shared == sequential",
        dtype,
        tokens["sequential"],
        tokens["shared"],
        teacher_forced(shared, after_prompts(tokens["sequential"])),
        tolerance,
    )
    with shared.generator.disable_adapter():
        base_only = teacher_forced(shared, batch)
    yield logit_row(
        "LoRA adapters move the logits (a wrong adapter would show)",
        dtype,
        relative_diff(reference, base_only),
        POWER * tolerance,
        above=True,
    )


def check_parity(plan: Plan, device: torch.device, out_of_time: Callable[[], bool]) -> dict:
    rows = []
    for dtype in (torch.bfloat16, torch.float32):  # bf16 first: what runs on a GPU
        if out_of_time():
            rows.append(
                {
                    "check": "(all)",
                    "dtype": str(dtype).removeprefix("torch."),
                    "ok": False,
                    "detail": "skipped: time budget",
                }
            )
            continue
        try:
            for row in parity_rows(plan, device, dtype):
                rows.append(row)
        except Exception as error:  # one dtype's failure leaves the other's rows
            rows.append(
                {"check": "(all)", "dtype": str(dtype).removeprefix("torch."), "ok": False, "detail": failure(error)}
            )
        release(device)
    bad = [r for r in rows if not r["ok"]]
    return {
        "status": "ok" if not bad else f"failed: {len(bad)} of {len(rows)} checks",
        "rows": rows,
        "tolerances": {
            f"{d}/{str(t).removeprefix('torch.')}": v for (d, t), v in TOLERANCE.items() if d == device.type
        },
        "tolerance_meaning": "max |logits - reference| / max |reference logits|",
    }


# ---------------------------------------------------------------- training throughput


def train_variants(plan: Plan) -> list[tuple[str, str, str]]:
    """(row name, Reasoner, Reasoner mode)."""
    return [
        ("sft", "", ""),
        *(
            (f"flythinker {name.split('-')[1]} {mode}", name, mode)
            for name in plan.reasoners
            for mode in ("frozen", "lora", "full")
        ),
        ("flythinker shared base", plan.generator, "lora"),
    ]


def train_one(plan: Plan, device: torch.device, reasoner: str, mode: str, batch: dict) -> dict:
    dtype = torch.float32  # master weights; autocast runs the ops in bf16 on CUDA (bf16-mixed)
    if not reasoner:
        method = SFT(make_generator(plan, dtype, device))
    elif reasoner == plan.generator:
        method = make_shared(plan, dtype, device)
    else:
        method = make_flythinker(plan, reasoner, mode, dtype, device)
    method.train()
    trainable = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    weights = weights_gb(method)
    reset_peak_memory(device)

    optimizer_steps(method, optimizer, [batch], device)  # warm-up: kernels, allocator, optimiser state
    loss, seconds = timed(device, lambda: optimizer_steps(method, optimizer, [batch] * plan.train_steps, device))
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()}")
    tokens = int(batch["attention_mask"].sum()) * plan.train_steps
    return {
        "tokens/s": tokens / seconds,
        "ms/step": 1000 * seconds / plan.train_steps,
        "peak GB": peak_gb(device),
        "weights GB": weights,
        "trainable M": sum(p.numel() for p in trainable) / 1e6,
        "loss": loss.item(),
    }


def check_train(plan: Plan, device: torch.device, out_of_time: Callable[[], bool]) -> dict:
    vocab = ARCHITECTURES[plan.generator]["vocab_size"]
    response = random_tokens(torch.Generator().manual_seed(2), vocab, plan.train_batch, plan.train_response)
    batch = sequences(plan.train_prompt, [plan.train_prompt] * plan.train_batch, response, vocab, seed=3, device=device)
    rows = []
    for name, reasoner, mode in train_variants(plan):
        row = {"variant": name, "reasoner": reasoner or "-", "reasoner mode": mode or "-"}
        if out_of_time():
            rows.append({**row, "status": "skipped: time budget"})
            continue
        try:
            rows.append({**row, **train_one(plan, device, reasoner, mode, batch), "status": "ok"})
        except Exception as error:
            rows.append({**row, "status": failure(error)})
        release(device)
    sft = next((r["tokens/s"] for r in rows if r["variant"] == "sft" and r["status"] == "ok"), None)
    for row in rows:
        row["time / sft"] = sft / row["tokens/s"] if sft and "tokens/s" in row else None
    bad = [r for r in rows if r["status"] != "ok"]
    return {
        "status": "ok" if not bad else f"failed: {len(bad)} of {len(rows)} variants",
        "rows": rows,
        "setting": {
            "precision": "bf16-mixed (fp32 weights, bf16 autocast)" if device.type == "cuda" else "fp32",
            "batch": plan.train_batch,
            "prompt": plan.train_prompt,
            "response": plan.train_response,
            "timed steps": plan.train_steps,
            "warm-up steps": 1,
            "generator": plan.generator,
            "lora_r": LORA_R,
            "gradient checkpointing": False,
            "optimizer": "AdamW",
        },
    }


# ---------------------------------------------------------------- decoding latency

DECODE_VARIANTS = {  # row: (model, engine)
    "sft": ("sft", "sequential"),
    "sft (fp32 weights + bf16 autocast)": ("sft fp32", "sequential"),
    "flythinker sequential": ("flythinker", "sequential"),
    "flythinker staggered": ("flythinker", "staggered"),
    "flythinker shared": ("shared", "shared"),
    "sft (compiled)": ("sft", "sequential"),  # decode.compile=true: the rows named "... (compiled)"
    "flythinker sequential (compiled)": ("flythinker", "sequential"),
}
COMPILED = " (compiled)"


def decode_models(plan: Plan, device: torch.device, dtype) -> dict:
    """name -> method, or the failure that building it met (then only its rows fail)."""
    models = {}
    builders = {
        "sft": lambda: SFT(make_generator(plan, dtype, device)),
        "flythinker": lambda: make_flythinker(
            plan,
            plan.reasoners[0],
            "lora",
            dtype,
            device,  # SFT's Generator
            generator=getattr(models["sft"], "generator", None),
        ),
        "shared": lambda: make_shared(plan, dtype, device),
        "sft fp32": lambda: SFT(make_generator(plan, torch.float32, device)),
    }
    for name, build in builders.items():
        try:
            models[name] = build().eval()
        except Exception as error:
            models[name] = failure(error)
            release(device)
    return models


def decode_runner(
    models: dict, variants: dict, device: torch.device, batch: dict, vocab: int, compile_seconds: Optional[dict] = None
):
    """run(variant, tokens) -> seconds of one generate() call: greedy, EOS suppressed (exactly `tokens`).
    A "... fp32" model runs under bf16 autocast, as Lightning's bf16-mixed predict runs it; a "... (compiled)"
    variant with decode.compile=true, the seconds it spent compiling added to `compile_seconds[variant]`."""

    def run(variant: str, tokens: int) -> float:
        model, engine = variants[variant]
        cfg = DecodeConfig(
            engine=engine,
            do_sample=False,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            compile=variant.endswith(COMPILED),
        )

        def call():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=model.endswith("fp32")):
                return generate(
                    models[model],
                    batch["prompt_ids"],
                    batch["prompt_mask"],
                    batch["prompt_len"],
                    [str(i) for i in range(len(batch["prompt_len"]))],
                    cfg,
                    eos_ids=vocab - 1,
                )

        result, seconds = timed(device, call)
        if compile_seconds is not None:
            compile_seconds[variant] = compile_seconds.get(variant, 0.0) + result.compile_seconds
        return seconds

    return run


def step_seconds(run, variants, tokens: int, repeats: int) -> dict:
    """variant -> (seconds per decoding step, seconds of a 1-token generate: the prompt pass), medians of
    interleaved rounds (drift hits every variant alike). The caller has warmed every variant up."""
    runs = {variant: ([], []) for variant in variants}
    for _ in range(repeats):
        for variant, (full, first) in runs.items():
            full.append(run(variant, tokens))
            first.append(run(variant, 1))
    return {
        variant: ((statistics.median(full) - statistics.median(first)) / (tokens - 1), statistics.median(first))
        for variant, (full, first) in runs.items()
    }


def check_decode(plan: Plan, device: torch.device, out_of_time: Callable[[], bool]) -> dict:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    vocab = ARCHITECTURES[plan.generator]["vocab_size"]
    models = decode_models(plan, device, dtype)
    weights = {name: weights_gb(model) for name, model in models.items() if not isinstance(model, str)}
    rows, tokens = [], plan.decode_tokens
    for size in plan.decode_batches:
        if out_of_time():
            rows += [{"method": v, "batch": size, "status": "skipped: time budget"} for v in DECODE_VARIANTS]
            continue
        batch = sequences(
            plan.decode_prompt,
            [plan.decode_prompt] * size,
            torch.zeros(size, 0, dtype=torch.long),
            vocab,
            seed=size,
            device=device,
        )
        compiling = {}  # variant -> seconds its warm-up at this batch spent compiling
        run = decode_runner(models, DECODE_VARIANTS, device, batch, vocab, compiling)
        status, extra = {}, {}
        for variant, (model, _) in DECODE_VARIANTS.items():  # warm-up (not timed); memory above the weights
            if isinstance(models[model], str):
                status[variant] = models[model]
                continue
            try:
                before = reset_peak_memory(device)
                run(variant, tokens)
                extra[variant] = None if before is None else (peak_memory_mb(device) - before) / 1024
                status[variant] = "ok"
            except Exception as error:
                status[variant] = failure(error)
                release(device)
        seconds = step_seconds(run, [v for v in DECODE_VARIANTS if status[v] == "ok"], tokens, plan.decode_repeats)
        sft, sequential = seconds.get("sft", (None,))[0], seconds.get("flythinker sequential", (None,))[0]
        for variant, (model, _) in DECODE_VARIANTS.items():
            if variant not in seconds:
                rows.append({"method": variant, "batch": size, "status": status[variant]})
                continue
            step, prefill = seconds[variant]
            eager = seconds.get(variant.removesuffix(COMPILED), (None,))[0] if variant.endswith(COMPILED) else None
            rows.append(
                {
                    "method": variant,
                    "batch": size,
                    "ms/token": 1000 * step,
                    "/ sft": step / sft if sft else None,
                    "/ sequential": step / sequential if sequential and variant.startswith("flythinker") else None,
                    "prefill ms": 1000 * prefill,
                    "tokens/s": size / step,
                    "weights GB": weights[model],
                    "peak GB": None if extra[variant] is None else weights[model] + extra[variant],
                    "eager / compiled": eager / step if eager else None,
                    "compile s": compiling.get(variant) if variant.endswith(COMPILED) else None,
                    "status": "ok",
                }
            )
    bad = [r for r in rows if r["status"] != "ok"]
    return {
        "status": "ok" if not bad else f"failed: {len(bad)} of {len(rows)} rows",
        "rows": rows,
        "setting": {
            "dtype": str(dtype).removeprefix("torch."),
            "prompt": plan.decode_prompt,
            "new tokens": tokens,
            "repeats": plan.decode_repeats,
            "generator": plan.generator,
            "reasoner": plan.reasoners[0],
            "lora_path": "lean",
            "sampler": "greedy",
            "ms/token": "(median time of N tokens - median time of 1 token) / (N - 1)",
        },
    }


# ---------------------------------------------------------------- two GPUs


def check_two_gpu(plan: Plan, device: torch.device, out_of_time: Callable[[], bool]) -> dict:
    if device.type != "cuda":
        return {"status": "skipped: no CUDA device"}
    if torch.cuda.device_count() < 2:
        return {"status": "skipped: 1 GPU"}
    dtype, vocab = torch.bfloat16, ARCHITECTURES[plan.generator]["vocab_size"]
    flythinker = make_flythinker(plan, plan.reasoners[0], "lora", dtype, device).eval()
    flythinker.reasoner.to("cuda:1")  # what MethodModule.on_predict_start does for decode.reasoner_device
    size = plan.decode_batches[min(1, len(plan.decode_batches) - 1)]
    batch = sequences(
        plan.decode_prompt,
        [plan.decode_prompt] * size,
        torch.zeros(size, 0, dtype=torch.long),
        vocab,
        seed=size,
        device=device,
    )
    tokens = {
        engine: greedy(flythinker, engine, batch, plan.parity_tokens, vocab) for engine in ("sequential", "staggered")
    }
    chain = teacher_forced(
        flythinker,
        sequences(
            plan.decode_prompt,
            [plan.decode_prompt] * size,
            torch.tensor(tokens["sequential"]),
            vocab,
            seed=size,
            device=device,
        ),
    )
    agreement = greedy_row(
        "two GPUs: greedy tokens staggered == sequential",
        dtype,
        tokens["sequential"],
        tokens["staggered"],
        chain,
        TOLERANCE[("cuda", dtype)],
    )
    variants = {engine: ("flythinker", engine) for engine in ("sequential", "staggered")}
    run = decode_runner({"flythinker": flythinker}, variants, device, batch, vocab)
    for variant in variants:
        run(variant, plan.decode_tokens)  # warm-up
    seconds = step_seconds(run, variants, plan.decode_tokens, plan.decode_repeats)
    rows = [
        agreement,
        *(
            {
                "check": f"ms/token, {engine} (batch {size})",
                "dtype": "bfloat16",
                "value": 1000 * step,
                "ok": True,
                "detail": f"/ sequential {step / seconds['sequential'][0]:.3f}",
            }
            for engine, (step, _) in seconds.items()
        ),
    ]
    return {
        "status": "ok" if agreement["ok"] else "failed: staggered tokens differ",
        "rows": rows,
        "setting": {"generator": "cuda:0", "reasoner": "cuda:1", "batch": size},
    }


# ---------------------------------------------------------------- DDP


def check_ddp(plan: Plan, device: torch.device, out_of_time: Callable[[], bool], backend: str = "") -> dict:
    """Two processes train FlyThinker (LoRA Generator and Reasoner) on different data under DDP; the
    replicas must stay identical. NCCL on 2 GPUs; `backend="gloo"` runs the same on CPU (tests)."""
    if not backend:
        if device.type != "cuda":
            return {"status": "skipped: no CUDA device (NCCL needs 2 GPUs)"}
        if torch.cuda.device_count() < 2:
            return {"status": "skipped: 1 GPU"}
        backend = "nccl"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    limit = 3 * plan.budgets.get("ddp", 60)  # a hung collective must not hang the whole check
    with tempfile.TemporaryDirectory() as scratch:
        workers = torch.multiprocessing.start_processes(
            _ddp_worker, args=(2, backend, port, asdict(plan), scratch), nprocs=2, join=False, start_method="spawn"
        )
        end = time.perf_counter() + limit
        while not workers.join(timeout=1):  # raises when a worker failed (the other is terminated)
            if time.perf_counter() > end:
                for process in workers.processes:
                    process.kill()
                raise TimeoutError(f"the DDP workers did not finish within {limit} s (killed)")
        result = json.loads(Path(scratch, "ddp.json").read_text())
    same = result["replicas identical"] and result["weights changed"]
    return {
        "status": "ok" if same else "failed: replicas differ after DDP steps (or nothing trained)",
        "rows": [result],
        "setting": {"backend": backend, "processes": 2, "reasoner": plan.reasoners[0]},
    }


def _ddp_worker(rank: int, world_size: int, backend: str, port: int, plan_fields: dict, scratch: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    plan = Plan(
        **{
            **plan_fields,
            "reasoners": tuple(plan_fields["reasoners"]),
            "decode_batches": tuple(plan_fields["decode_batches"]),
        }
    )
    device = torch.device(f"cuda:{rank}") if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    try:
        result = _ddp_train(plan, device, rank, world_size)
        if rank == 0:
            Path(scratch, "ddp.json").write_text(json.dumps(result))
    finally:  # after _ddp_train returned: DDP's reducer must die before its process group, or exit can hang
        dist.destroy_process_group()


def _ddp_train(plan: Plan, device: torch.device, rank: int, world_size: int) -> dict:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    # every rank builds the same weights (seeded by name); DDP also broadcasts rank 0's
    method = make_flythinker(plan, plan.reasoners[0], "lora", torch.float32, device).train()
    model = DistributedDataParallel(method, device_ids=[rank] if device.type == "cuda" else None)
    trainable = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    vocab = ARCHITECTURES[plan.generator]["vocab_size"]
    response = random_tokens(torch.Generator().manual_seed(10 + rank), vocab, plan.train_batch, plan.train_response)
    batch = sequences(
        plan.train_prompt, [plan.train_prompt] * plan.train_batch, response, vocab, seed=20 + rank, device=device
    )  # each rank its own data

    def checksum() -> torch.Tensor:
        return torch.stack([p.detach().double().sum() for p in trainable])

    start = checksum()
    optimizer_steps(model, optimizer, [batch], device)
    _, seconds = timed(device, lambda: optimizer_steps(model, optimizer, [batch] * plan.train_steps, device))
    sums = checksum()
    gathered = [torch.zeros_like(sums) for _ in range(world_size)]
    dist.all_gather(gathered, sums)
    return {
        "check": "DDP replicas after training",
        "ms/step": 1000 * seconds / plan.train_steps,
        "replicas identical": all(torch.equal(gathered[0], other) for other in gathered[1:]),
        "weights changed": not torch.equal(start, sums),
        "steps": plan.train_steps + 1,
    }


# ---------------------------------------------------------------- the command

SECTIONS = {
    "parity": check_parity,
    "train": check_train,
    "decode": check_decode,
    "two_gpu": check_two_gpu,
    "ddp": check_ddp,
}


def environment(device: torch.device, sizes: str) -> dict:
    from ..lit.rundirs import git_commit

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})"
    info = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sizes": sizes,
        "device": name,
        "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "cpu threads": torch.get_num_threads(),
        "git commit": git_commit(),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(
            {
                "gpu memory GB": round(properties.total_memory / 2**30, 1),
                "compute capability": f"{properties.major}.{properties.minor}",
                "tf32 matmul": torch.backends.cuda.matmul.allow_tf32,
            }
        )
    elif Path("/dev/nvidia0").exists() or Path("/dev/nvidiactl").exists():
        info["note"] = (
            "an NVIDIA device is present but this torch has no CUDA (a CPU build?): install a CUDA "
            "build of torch to check the GPU"
        )
    return info


def run_section(name: str, plan: Plan, device: torch.device) -> dict:
    start = time.perf_counter()
    try:
        result = SECTIONS[name](plan, device, section_deadline(plan.budgets.get(name, 60)))
    except Exception as error:  # CUDA OOM included: record it, release memory, go on
        result = {"status": failure(error), "traceback": traceback.format_exc(limit=8)}
    release(device)
    return {**result, "seconds": round(time.perf_counter() - start, 1)}


def gpu_check(out: str = "bench/gpu_check.json", sizes: str = "", only: Optional[list[str]] = None) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = sizes or ("paper" if device.type == "cuda" else "tiny")
    unknown = sorted(set(only or []) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    plan = PLANS[sizes]
    start = time.perf_counter()
    report = {
        "environment": environment(device, sizes),
        "architectures": {name: ARCHITECTURES[name] for name in (plan.generator, *plan.reasoners)},
        "sections": {},
    }
    for name in SECTIONS:
        if only and name not in only:
            continue
        print(f"gpu-check: {name} ...", flush=True)
        report["sections"][name] = run_section(name, plan, device)
        print(
            f"gpu-check: {name}: {report['sections'][name]['status']} ({report['sections'][name]['seconds']} s)",
            flush=True,
        )
        report["total seconds"] = round(time.perf_counter() - start, 1)
        write_json(out, report)  # after every section: a run cut short still leaves what it measured
        Path(out).with_suffix(".md").write_text(markdown(report))
    return report


def _table(rows: list[dict]) -> str:
    frame = pd.DataFrame(rows)
    return frame.astype(object).where(frame.notna(), None).to_markdown(index=False, floatfmt=".4g", missingval="")


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        f"# gpu-check: {env['device']}, {env['date']}",
        "",
        f"torch {env['torch']} (CUDA {env['cuda']}), transformers {env['transformers']}, peft {env['peft']}; "
        f"sizes: {env['sizes']} ({', '.join(report['architectures'])}); commit {env['git commit']}; "
        f"total {report['total seconds']} s",
        "",
    ]
    if "note" in env:
        lines += [f"**Note:** {env['note']}", ""]
    lines += [
        _table(
            [
                {"section": name, "status": s["status"], "seconds": s["seconds"]}
                for name, s in report["sections"].items()
            ]
        ),
        "",
    ]
    for name, section in report["sections"].items():
        lines += [f"## {name}: {section['status']}", ""]
        if "setting" in section:
            lines += ["; ".join(f"{k}: {v}" for k, v in section["setting"].items()), ""]
        if "tolerances" in section:
            lines += [
                f"tolerance: {section['tolerance_meaning']} <= "
                + ", ".join(f"{v:g} ({k})" for k, v in section["tolerances"].items()),
                "",
            ]
        if section.get("rows"):
            lines += [_table(section["rows"]), ""]
    return "\n".join(lines)
