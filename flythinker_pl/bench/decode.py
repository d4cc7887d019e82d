"""Decoding latency: SFT and FlyThinker's sequential / staggered / shared engines on the same prompts
and lengths (EOS suppressed, so every run makes exactly --new-tokens tokens), at each batch size,
in one process; rounds interleaved, median of repeats, warm-up not timed. `ms/token` is a decoding
step (what a reader waits per token); the prompt pass is reported on its own (`prefill ms`, the time
to the first token) and folded in by `ms/token with prefill`. A ratio is the median over rounds of
the ratio within a round (the two runs seconds apart, on the same machine state).

    flythinker bench decode -c experiments/demo.yaml [--new-tokens 64 --batch-sizes 1 16 --repeats 5]

`shared` is one base model (the Generator's) carrying both adapters, so its Reasoner has the
Generator's size; the other FlyThinker rows use the configured Reasoner. LoRA layers run the lean
forward (decode.lora_path=lean) except in `sft (peft path)`, the same SFT model through peft's own
forward: both SFT rows are shown so that every ratio is honest.

Before timing, every variant decodes greedily at the largest batch and the bench checks that each
engine gives the tokens of its model's sequential engine (and SFT's two paths the same tokens).
"""
from __future__ import annotations

import dataclasses
import statistics

import pandas as pd
import torch

from ..config import load_config
from ..data.datamodule import PersonalisationDataModule, pretraining_corpus
from ..decoding.generate import generate, prompts_of
from ..models.build import build_method
from . import synchronize, write_json

SHARED = ["method=flythinker", "reasoner.shared_base=true", "reasoner.mode=lora", "generator.mode=lora"]
VARIANTS = {  # name: (config overrides, engine, LoRA path)
    "sft": (["method=sft"], "sequential", "lean"),
    "sft (peft path)": (["method=sft"], "sequential", "peft"),
    "flythinker sequential": (["method=flythinker"], "sequential", "lean"),
    "flythinker staggered": (["method=flythinker"], "staggered", "lean"),
    "flythinker shared": (SHARED, "shared", "lean"),
}


def weights_mb(method: torch.nn.Module) -> float:
    storages = {p.data_ptr(): p.numel() * p.element_size() for p in method.parameters()}
    return sum(storages.values()) / 2**20


def _rows(prompts: dict, count: int) -> dict:
    """The first `count` prompts, without columns that are padding in all of them."""
    keep = prompts["mask"][:count].any(0)
    return {"ids": prompts["ids"][:count][:, keep], "mask": prompts["mask"][:count][:, keep],
            "prompt_len": prompts["prompt_len"][:count], "sample_ids": prompts["sample_ids"][:count]}


def bench_decode(config_path: str | list[str], overrides: list[str], new_tokens: int = 64, batch_sizes=(1, 16),
                 repeats: int = 5, out: str = "bench/decode.json") -> pd.DataFrame:
    if new_tokens < 2:
        raise ValueError(f"--new-tokens {new_tokens}: at least 2, so that decoding steps follow the prompt pass")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models, tokenizer, base = {}, None, load_config(config_path, overrides)
    for extra, _, _ in VARIANTS.values():
        if tuple(extra) not in models:
            cfg = load_config(config_path, [*overrides, *extra])
            torch.manual_seed(cfg.seed)
            method, tokenizer = build_method(cfg, corpus=lambda cfg=cfg: pretraining_corpus(cfg.data))
            models[tuple(extra)] = method.eval()  # on the CPU until measured

    datamodule = PersonalisationDataModule(base.data, tokenizer, predict_split="val",
                                           predict_batch_size=max(batch_sizes))
    datamodule.setup("predict")
    batch = next(iter(datamodule.predict_dataloader()))
    ids, mask, _ = prompts_of(batch, tokenizer.pad_token_id)
    prompts = {"ids": ids.to(device), "mask": mask.to(device), "prompt_len": batch["prompt_len"].to(device),
               "sample_ids": batch["ids"]}
    if len(prompts["sample_ids"]) < max(batch_sizes):
        raise ValueError(f"the val split has {len(prompts['sample_ids'])} records, fewer than batch {max(batch_sizes)}")

    def run(name: str, batch_size: int, engine: str = "", greedy: bool = False):
        extra, variant_engine, lora_path = VARIANTS[name]
        cfg = dataclasses.replace(base.decode, engine=engine or variant_engine, lora_path=lora_path,
                                  min_new_tokens=new_tokens, max_new_tokens=new_tokens,
                                  do_sample=base.decode.do_sample and not greedy)
        rows = _rows(prompts, batch_size)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        return generate(models[tuple(extra)], rows["ids"], rows["mask"], rows["prompt_len"], rows["sample_ids"],
                        cfg, tokenizer.eos_token_id)

    def greedy_tokens(name: str, engine: str = "") -> list:
        return run(name, max(batch_sizes), engine, greedy=True).tokens

    peak = {}  # GPU memory of one batch-max run with only that variant's model resident
    same_tokens = {}  # greedy tokens == the reference: sequential on the same model; SFT: peft's forward
    for name, (extra, _, _) in VARIANTS.items():
        model = models[tuple(extra)].to(device)
        reference = greedy_tokens("sft (peft path)") if name.startswith("sft") else greedy_tokens(name, "sequential")
        same_tokens[name] = greedy_tokens(name) == reference
        synchronize(device)
        peak[name] = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        if device.type == "cuda":
            model.cpu()
            torch.cuda.empty_cache()
    for model in models.values():
        model.to(device)

    results = []
    for batch_size in batch_sizes:
        for name in VARIANTS:  # warm-up at this batch size, not timed
            run(name, batch_size)
        timings = {name: [] for name in VARIANTS}
        for _ in range(repeats):  # interleaved rounds: drift hits every variant alike
            for name in VARIANTS:
                timings[name].append(run(name, batch_size))
        # per token: the steps after the prompt pass; total: prompt pass + every step, over the tokens
        step = {name: [(g.seconds - g.prefill_seconds) / (new_tokens - 1) for g in runs]
                for name, runs in timings.items()}
        total = {name: [g.seconds / new_tokens for g in runs] for name, runs in timings.items()}

        def ratio(times: dict, name: str, reference: str) -> float:
            """Median over rounds of the ratio within a round: runs seconds apart share the machine's state."""
            return round(statistics.median(a / b for a, b in zip(times[name], times[reference])), 3)

        for name, (extra, _, _) in VARIANTS.items():
            results.append({
                "method": name, "batch": batch_size, "ms/token": round(1000 * statistics.median(step[name]), 2),
                "/ sft": ratio(step, name, "sft"), "/ sequential": ratio(step, name, "flythinker sequential"),
                "prefill ms": round(1000 * statistics.median(g.prefill_seconds for g in timings[name]), 1),
                "ms/token with prefill": round(1000 * statistics.median(total[name]), 2),
                "with prefill / sft": ratio(total, name, "sft"),
                "tokens/s": round(batch_size / statistics.median(total[name]), 1),
                "greedy == reference": same_tokens[name],
                "weights MB": round(weights_mb(models[tuple(extra)]), 2),
                "peak MB (GPU)": None if peak[name] is None else round(peak[name], 1)})
    write_json(out, {"device": str(device), "torch_threads": torch.get_num_threads(), "new_tokens": new_tokens,
                     "repeats": repeats, "results": results})
    return pd.DataFrame(results)
