"""parity: the logits of a teacher-forced pass == those of every engine's prompt pass and one-token steps,
greedy tokens of the concurrent engines == sequential, lambda = 0 == SFT; in bf16 and fp32."""

from __future__ import annotations

from typing import Callable, Optional

import torch

from ...config import DecodeConfig
from ...decoding.engines import make_engine
from ...decoding.generate import generate
from ...measure import release
from ...models.architectures import ARCHITECTURES
from ...models.lora_step import LeanLoRA
from ...models.sft import SFT
from .batches import random_tokens, sequences
from .models import LAM, make_flythinker, make_shared
from .plan import Plan, failure

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

    def engine_rows(label: str, method, engine: str):
        """Teacher-forced == incremental through sequential and `engine`, and their greedy tokens equal;
        returns the teacher-forced logits."""
        reference = teacher_forced(method, batch)
        for name in ("sequential", engine):
            difference = relative_diff(incremental(method, name, batch), reference)
            yield logit_row(f"{label}: teacher-forced == incremental ({name})", dtype, difference, tolerance)
        tokens = {name: greedy(method, name, batch, plan.parity_tokens, vocab) for name in ("sequential", engine)}
        yield greedy_row(
            f"{label}: greedy tokens {engine} == sequential",
            dtype,
            tokens["sequential"],
            tokens[engine],
            teacher_forced(method, after_prompts(tokens["sequential"])),
            tolerance,
        )
        return reference

    flythinker = make_flythinker(plan, plan.reasoners[0], "lora", dtype, device).eval()
    sft = SFT(flythinker.generator)
    reference = yield from engine_rows("flythinker", flythinker, "staggered")
    sft_reference = teacher_forced(sft, batch)
    yield logit_row(
        "sft: teacher-forced == incremental",
        dtype,
        relative_diff(incremental(sft, "sequential", batch), sft_reference),
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
    # teacher-forced: peft's forward, switching adapters between the two passes
    reference = yield from engine_rows("shared base", shared, "shared")
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
