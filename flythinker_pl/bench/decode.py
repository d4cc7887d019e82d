"""Decoding latency: SFT and FlyThinker's sequential / staggered / shared engines on the same prompts
and lengths (EOS suppressed, so every run makes exactly --new-tokens tokens), at each batch size,
in one process; rounds interleaved, median of repeats, warm-up not timed. `ms/token` is a decoding
step (what a reader waits per token); the prompt pass is reported on its own (`prefill ms`, the time
to the first token) and folded in by `ms/token with prefill`. A ratio is the median over rounds of
the ratio within a round (the two runs seconds apart, on the same machine state).

    flythinker bench decode -c experiments/demo.yaml [--new-tokens 64 --batch-sizes 1 16 --repeats 5] [--no-compile]

`shared` is one base model (the Generator's) carrying both adapters, so its Reasoner has the
Generator's size; the other FlyThinker rows use the configured Reasoner. LoRA layers run the lean
forward (decode.lora_path=lean) except in `sft (peft path)`, the same SFT model through peft's own
forward, and `sft (HF generate)`, that model's Hugging Face `generate()` (greedy, its default cache):
what a user would run instead. `... (compiled)` rows decode with decode.compile=true (a static cache
and a compiled step), their `/ sft` and `/ sequential` ratios against the compiled SFT and sequential
rows; `compile s` is what compiling took when that batch size first ran (inductor's disk cache makes
a second run of the bench cheaper), `eager / compiled` the step's speed-up.

Before timing, every variant decodes greedily at the largest batch and the bench checks that each
gives the tokens of its reference: SFT's rows those of peft's forward, a FlyThinker engine those of its
model's sequential engine. Below the table: the prompt pass's floors and whether compiling pays for a
typical decode (the demo's test split). Two floors under FlyThinker's time to the first token / SFT's:
its arithmetic (FLOPs of SFT's and of FlyThinker's prompt pass, counted by torch's FlopCounterMode),
where SFT keeps every core busy; and, timed in the same rounds, the Reasoner's prompt pass alone (its
forward and KV cache, nothing of the fusion or the engine) beside SFT's, what two passes cost unless
the models run side by side. The two differ where time does not follow FLOPs: on CPU the attention
kernel's time follows sequence length squared times heads, hardly the head size that FLOPs count.
"""

from __future__ import annotations

import dataclasses
import statistics

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..config import load_config
from ..data.datamodule import PersonalisationDataModule, pretraining_corpus
from ..decoding.generate import Generation, generate, prompts_of
from ..models.build import build_method
from ..models.fusion_math import real_positions
from ..models.lora_step import LeanLoRA
from ..measure import peak_memory_mb, reset_peak_memory, timed
from . import write_json

SHARED = ["method=flythinker", "reasoner.shared_base=true", "reasoner.mode=lora", "generator.mode=lora"]
HF = "hf"  # the engine column of the Hugging Face generate() row
VARIANTS = {  # name: (config overrides, engine, LoRA path, compiled)
    "sft": (["method=sft"], "sequential", "lean", False),
    "sft (peft path)": (["method=sft"], "sequential", "peft", False),
    "sft (HF generate)": (["method=sft"], HF, "peft", False),
    "flythinker sequential": (["method=flythinker"], "sequential", "lean", False),
    "flythinker staggered": (["method=flythinker"], "staggered", "lean", False),
    "flythinker shared": (SHARED, "shared", "lean", False),
}
COMPILED = {
    f"{name} (compiled)": (*VARIANTS[name][:3], True)
    for name in ("sft", "flythinker sequential", "flythinker staggered", "flythinker shared")
}
# A typical decode (the demo's test split): 96 records, batches of 16, up to 360 new tokens each.
TYPICAL_DECODE = {"records": 96, "batch": 16, "max_new_tokens": 360}


def weights_mb(method: torch.nn.Module) -> float:
    storages = {p.data_ptr(): p.numel() * p.element_size() for p in method.parameters()}
    return sum(storages.values()) / 2**20


def _rows(prompts: dict, count: int) -> dict:
    """The first `count` prompts, without columns that are padding in all of them."""
    keep = prompts["mask"][:count].any(0)
    return {
        "ids": prompts["ids"][:count][:, keep],
        "mask": prompts["mask"][:count][:, keep],
        "prompt_len": prompts["prompt_len"][:count],
        "sample_ids": prompts["sample_ids"][:count],
    }


def reference_of(name: str) -> tuple[str, str]:
    """(variant, engine) whose greedy tokens `name`'s must equal."""
    if name.startswith("sft"):
        return "sft (peft path)", "sequential"
    return name.removesuffix(" (compiled)"), "sequential"


@torch.no_grad()
def hf_generate(model, rows: dict, new_tokens: int, eos_id: int, pad_id: int) -> Generation:
    """Hugging Face generate() on the SFT model (peft's forward, its default cache), greedy, exactly
    `new_tokens` tokens; its prompt pass timed as a 1-token generate() of its own."""

    def call(tokens: int):
        out, seconds = timed(
            rows["ids"].device,
            lambda: model.generator.generate(
                input_ids=rows["ids"],
                attention_mask=rows["mask"],
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                num_beams=1,
                eos_token_id=eos_id,
                pad_token_id=pad_id,
            ),
        )
        return out[:, rows["ids"].shape[1] :].tolist(), seconds

    _, first = call(1)
    tokens, seconds = call(new_tokens)
    return Generation(tokens, [new_tokens] * len(tokens), [False] * len(tokens), seconds, first)


@torch.no_grad()
def prompt_flops(method, rows: dict) -> float:
    """FLOPs of one prompt pass (prefill) of `method` on `rows`, counted on peft's LoRA forward: the lean
    one computes the same function, its low-rank update by an in-place addmm_ the counter does not know."""
    with FlopCounterMode(display=False) as counter:
        method.prefill(rows["ids"], rows["mask"], rows["prompt_len"])
    return counter.get_total_flops()


@torch.no_grad()
def reasoner_pass_seconds(method, rows: dict) -> float:
    """Seconds of the Reasoner's own prompt pass on `rows` (its forward, making its KV cache, on the lean
    LoRA path), as FlyThinker's prefill runs it: what two passes add to SFT's at the least."""
    mask = method.reasoner_mask(rows["mask"], None)
    with LeanLoRA(method):
        _, seconds = timed(
            rows["ids"].device,
            lambda: method.reasoner_forward(rows["ids"], mask, real_positions(mask), method.reasoner_decode_cache()),
        )
    return seconds


def bench_decode(
    config_path: str | list[str],
    overrides: list[str],
    new_tokens: int = 64,
    batch_sizes=(1, 16),
    repeats: int = 5,
    out: str = "bench/decode.json",
    compiled: bool = True,
) -> pd.DataFrame:
    if new_tokens < 2:
        raise ValueError(f"--new-tokens {new_tokens}: at least 2, so that decoding steps follow the prompt pass")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    variants = {**VARIANTS, **(COMPILED if compiled else {})}
    models, tokenizer, base = {}, None, load_config(config_path, overrides)
    for extra, _, _, _ in variants.values():
        if tuple(extra) not in models:
            cfg = load_config(config_path, [*overrides, *extra])
            torch.manual_seed(cfg.seed)
            method, tokenizer = build_method(cfg, corpus=lambda cfg=cfg: pretraining_corpus(cfg.data))
            models[tuple(extra)] = method.eval()  # on the CPU until measured

    datamodule = PersonalisationDataModule(
        base.data, tokenizer, predict_split="val", predict_batch_size=max(batch_sizes)
    )
    datamodule.setup("predict")
    batch = next(iter(datamodule.predict_dataloader()))
    ids, mask, _ = prompts_of(batch, tokenizer.pad_token_id)
    prompts = {
        "ids": ids.to(device),
        "mask": mask.to(device),
        "prompt_len": batch["prompt_len"].to(device),
        "sample_ids": batch["ids"],
    }
    if len(prompts["sample_ids"]) < max(batch_sizes):
        raise ValueError(f"the val split has {len(prompts['sample_ids'])} records, fewer than batch {max(batch_sizes)}")

    def run(name: str, batch_size: int, engine: str = "", greedy: bool = False) -> Generation:
        extra, variant_engine, lora_path, compile_steps = variants[name]
        rows = _rows(prompts, batch_size)
        if (engine or variant_engine) == HF:
            return hf_generate(models[tuple(extra)], rows, new_tokens, tokenizer.eos_token_id, tokenizer.pad_token_id)
        cfg = dataclasses.replace(
            base.decode,
            engine=engine or variant_engine,
            lora_path=lora_path,
            min_new_tokens=new_tokens,
            max_new_tokens=new_tokens,
            compile=compile_steps,
            do_sample=base.decode.do_sample and not greedy,
        )
        return generate(
            models[tuple(extra)],
            rows["ids"],
            rows["mask"],
            rows["prompt_len"],
            rows["sample_ids"],
            cfg,
            tokenizer.eos_token_id,
        )

    peak = {}  # GPU memory of one batch-max run with only that variant's model resident
    same_tokens, compile_seconds = {}, {}  # greedy tokens == the reference; seconds compiling per (variant, batch)
    references = {}
    for index, (name, (extra, _, _, _)) in enumerate(variants.items(), 1):
        print(
            f"bench decode: greedy tokens of {name} vs its reference, batch {max(batch_sizes)} "
            f"({index}/{len(variants)})",
            flush=True,
        )
        model = models[tuple(extra)].to(device)
        if reference_of(name) not in references:
            references[reference_of(name)] = run(
                *reference_of(name)[:1], max(batch_sizes), reference_of(name)[1], greedy=True
            ).tokens
        reset_peak_memory(device)
        result = run(name, max(batch_sizes), greedy=True)
        same_tokens[name] = result.tokens == references[reference_of(name)]
        compile_seconds[name, max(batch_sizes)] = result.compile_seconds
        peak[name] = peak_memory_mb(device) if device.type == "cuda" else None
        if device.type == "cuda":
            model.cpu()
            torch.cuda.empty_cache()
    for model in models.values():
        model.to(device)

    results, floors = [], {}
    for batch_size in batch_sizes:
        for index, name in enumerate(variants, 1):  # warm-up at this batch size, not timed
            print(f"bench decode: batch {batch_size}: warm-up {name} ({index}/{len(variants)})", flush=True)
            warm = run(name, batch_size)
            compile_seconds.setdefault((name, batch_size), warm.compile_seconds)
        timings, reasoner_pass = {name: [] for name in variants}, []
        flythinker = models[("method=flythinker",)]
        reasoner_pass_seconds(flythinker, _rows(prompts, batch_size))  # warm-up
        for round_index in range(repeats):  # interleaved rounds: drift hits every variant alike
            print(f"bench decode: batch {batch_size}: round {round_index + 1}/{repeats} of every variant", flush=True)
            for name in variants:
                timings[name].append(run(name, batch_size))
            reasoner_pass.append(reasoner_pass_seconds(flythinker, _rows(prompts, batch_size)))
        # per token: the steps after the prompt pass; total: prompt pass + every step, over the tokens
        step = {
            name: [(g.seconds - g.prefill_seconds - g.compile_seconds) / (new_tokens - 1) for g in runs]
            for name, runs in timings.items()
        }
        total = {name: [(g.seconds - g.compile_seconds) / new_tokens for g in runs] for name, runs in timings.items()}
        prefill = {name: [g.prefill_seconds for g in runs] for name, runs in timings.items()}

        def ratio(times: dict, name: str, reference: str) -> float:
            """Median over rounds of the ratio within a round: runs seconds apart share the machine's state."""
            return round(statistics.median(a / b for a, b in zip(times[name], times[reference])), 3)

        for name, (extra, engine, _, compile_steps) in variants.items():
            eager = name.removesuffix(" (compiled)")
            like = " (compiled)" if compile_steps else ""  # compiled rows compare with compiled SFT
            results.append(
                {
                    "method": name,
                    "batch": batch_size,
                    "ms/token": round(1000 * statistics.median(step[name]), 2),
                    "/ sft": ratio(step, name, "sft" + like),
                    "/ sequential": ratio(step, name, "flythinker sequential" + like),
                    "prefill ms": round(1000 * statistics.median(prefill[name]), 1),
                    "prefill / sft": ratio(prefill, name, "sft" + like),
                    "ms/token with prefill": round(1000 * statistics.median(total[name]), 2),
                    "with prefill / sft": ratio(total, name, "sft" + like),
                    "with prefill / HF generate": ratio(total, name, "sft (HF generate)"),
                    "tokens/s": round(batch_size / statistics.median(total[name]), 1),
                    "eager / compiled": ratio(step, eager, name) if compile_steps else None,
                    "compile s": round(compile_seconds[name, batch_size], 1) if compile_steps else None,
                    "greedy == reference": same_tokens[name],
                    "weights MB": round(weights_mb(models[tuple(extra)]), 2),
                    "peak MB (GPU)": None if peak[name] is None else round(peak[name], 1),
                }
            )
        rows = _rows(prompts, batch_size)
        sft_flops = prompt_flops(models[("method=sft",)], rows)
        fly_flops = prompt_flops(flythinker, rows)
        # per round: (SFT's prompt pass + the Reasoner's alone) / SFT's, the median over rounds
        timed_floor = 1 + statistics.median(r / s for r, s in zip(reasoner_pass, prefill["sft"]))
        # the prompt pass is never compiled (compiled rows run the eager one): the best of the eager rows
        best = min((name for name in VARIANTS if name.startswith("flythinker")), key=lambda n: ratio(prefill, n, "sft"))
        floors[batch_size] = {
            "sft GFLOP": round(sft_flops / 1e9, 3),
            "flythinker GFLOP": round(fly_flops / 1e9, 3),
            "floor (flythinker / sft)": round(fly_flops / sft_flops, 3),
            "reasoner pass ms": round(1000 * statistics.median(reasoner_pass), 2),
            "timed floor (sft prefill + reasoner pass) / sft prefill": round(timed_floor, 3),
            "best engine": best,
            "best prefill / sft": ratio(prefill, best, "sft"),
        }
    frame = pd.DataFrame(results)
    notes = summary(frame, floors, compiled)
    write_json(
        out,
        {
            "device": str(device),
            "torch_threads": torch.get_num_threads(),
            "new_tokens": new_tokens,
            "repeats": repeats,
            "results": results,
            "prompt pass floor": floors,
            "notes": notes,
        },
    )
    frame.attrs["notes"] = notes
    return frame


def summary(frame: pd.DataFrame, floors: dict, compiled: bool) -> list[str]:
    """The lines printed under the table: the prompt pass's floor, and whether compiling pays."""
    lines = []
    for batch, floor in floors.items():
        timed_floor = floor["timed floor (sft prefill + reasoner pass) / sft prefill"]
        lines.append(
            f"batch {batch}: prompt pass {floor['sft GFLOP']} GFLOP for SFT, {floor['flythinker GFLOP']} for "
            f"FlyThinker (its Reasoner's share): where SFT keeps every core busy, FlyThinker / SFT cannot go "
            f"below {floor['floor (flythinker / sft)']}; timed, the Reasoner's prompt pass alone takes "
            f"{floor['reasoner pass ms']} ms, so two passes cannot go below {timed_floor}: the best engine "
            f"({floor['best engine']}) is at {floor['best prefill / sft']}, "
            f"{100 * (floor['best prefill / sft'] / timed_floor - 1):+.1f}% from it"
        )
    if not compiled:
        return lines
    typical = TYPICAL_DECODE
    steps = -(-typical["records"] // typical["batch"]) * (typical["max_new_tokens"] - 1)
    rows = (
        frame[frame["batch"] == typical["batch"]]
        if typical["batch"] in set(frame["batch"])
        else frame[frame["batch"] == frame["batch"].max()]
    )
    for name in COMPILED:
        eager, fast = (rows[rows["method"] == n].iloc[0] for n in (name.removesuffix(" (compiled)"), name))
        saved = steps * (eager["ms/token"] - fast["ms/token"]) / 1000
        compile_s = frame[frame["method"] == name]["compile s"].sum()
        lines.append(
            f"{name}: a typical decode ({typical['records']} records, batch {int(fast['batch'])}, "
            f"{typical['max_new_tokens']} tokens: {steps} steps) saves {saved:.1f} s of steps for "
            f"{compile_s:.1f} s compiling in this run: {'pays' if saved > compile_s else 'does not pay'}"
        )
    return lines
