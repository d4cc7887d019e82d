"""What the GPU check runs: the models and sizes of each section, its time budget, and what a unit of work
that fails leaves in the report (the check goes on)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch


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


def section_deadline(seconds: float) -> Callable[[], bool]:
    end = time.perf_counter() + seconds
    return lambda: time.perf_counter() > end


def failure(error: BaseException) -> str:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return "failed: CUDA out of memory: " + str(error).splitlines()[0][:200]
    return f"failed: {type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
