"""decode: ms/token of generate() at several batch sizes, every engine against SFT, eager and compiled."""

from __future__ import annotations

import statistics
from typing import Callable, Optional

import torch

from ...config import DecodeConfig
from ...decoding.generate import generate
from ...measure import peak_memory_mb, release, reset_peak_memory, timed
from ...models.architectures import ARCHITECTURES
from ...models.sft import SFT
from .batches import decode_prompts
from .models import make_flythinker, make_generator, make_shared, weights_gb
from .plan import Plan, failure

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
        batch = decode_prompts(plan, size, vocab, device)
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
