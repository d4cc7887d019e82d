"""Benchmarks: commands that print a table of side-by-side ratios and write JSON (never timed tests)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..lit.module import method_loss


def optimizer_steps(method, optimizer, batches, device: torch.device) -> torch.Tensor:
    """One optimiser step per batch (forward, backward, update; bf16 autocast on CUDA, as
    train.precision=auto); the last loss."""
    for batch in batches:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss, _ = method_loss(method, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def write_json(path: str | Path, payload: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")
