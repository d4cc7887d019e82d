"""train: tokens/s and peak memory of one optimiser step, SFT vs FlyThinker (each Reasoner, each mode)
and the shared base, bf16-mixed on CUDA (fp32 weights, bf16 autocast), after a warm-up step."""

from __future__ import annotations

from typing import Callable, Optional

import torch

from ...measure import peak_memory_mb, release, reset_peak_memory, timed
from ...models.architectures import ARCHITECTURES
from ...models.sft import SFT
from .. import optimizer_steps
from .batches import random_tokens, sequences
from .models import LORA_R, make_flythinker, make_generator, make_shared, weights_gb
from .plan import Plan, failure


def peak_gb(device: torch.device) -> Optional[float]:
    """Peak CUDA memory since reset_peak_memory (GB); None on CPU (not measured there)."""
    return peak_memory_mb(device) / 1024 if device.type == "cuda" else None


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
