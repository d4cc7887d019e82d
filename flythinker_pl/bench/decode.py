"""Decoding latency: SFT and FlyThinker's sequential / staggered / shared engines on the same prompts
and lengths (EOS suppressed, so every run makes exactly --new-tokens tokens), at each batch size,
in one process; rounds interleaved, median of repeats, warm-up not timed.

    flythinker bench decode -c experiments/demo.yaml [--new-tokens 32 --batch-sizes 1 16 --repeats 3]

`shared` is one base model (the Generator's) carrying both adapters, so its Reasoner has the
Generator's size; the other FlyThinker rows use the configured Reasoner.
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

VARIANTS = {  # name: (config overrides, engine)
    "sft": (["method=sft"], "sequential"),
    "flythinker sequential": (["method=flythinker"], "sequential"),
    "flythinker staggered": (["method=flythinker"], "staggered"),
    "flythinker shared": (["method=flythinker", "reasoner.shared_base=true", "reasoner.mode=lora",
                           "generator.mode=lora"], "shared"),
}


def weights_mb(method: torch.nn.Module) -> float:
    storages = {p.data_ptr(): p.numel() * p.element_size() for p in method.parameters()}
    return sum(storages.values()) / 2**20


def _rows(prompts: dict, count: int) -> dict:
    """The first `count` prompts, without columns that are padding in all of them."""
    keep = prompts["mask"][:count].any(0)
    return {"ids": prompts["ids"][:count][:, keep], "mask": prompts["mask"][:count][:, keep],
            "prompt_len": prompts["prompt_len"][:count], "sample_ids": prompts["sample_ids"][:count]}


def bench_decode(config_path: str, overrides: list[str], new_tokens: int = 32, batch_sizes=(1, 16),
                 repeats: int = 3, out: str = "bench/decode.json") -> pd.DataFrame:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models, tokenizer, base = {}, None, load_config(config_path, overrides)
    for extra, _ in VARIANTS.values():
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

    def run(name: str, batch_size: int) -> float:
        extra, engine = VARIANTS[name]
        cfg = dataclasses.replace(base.decode, engine=engine, min_new_tokens=new_tokens, max_new_tokens=new_tokens)
        rows = _rows(prompts, batch_size)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        return generate(models[tuple(extra)], rows["ids"], rows["mask"], rows["prompt_len"], rows["sample_ids"],
                        cfg, tokenizer.eos_token_id).seconds

    peak = {}  # GPU memory of one batch-max run with only that variant's model resident
    for name, (extra, _) in VARIANTS.items():
        model = models[tuple(extra)].to(device)
        run(name, max(batch_sizes))
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
        seconds = {name: [] for name in VARIANTS}
        for _ in range(repeats):  # interleaved rounds: drift hits every variant alike
            for name in VARIANTS:
                seconds[name].append(run(name, batch_size))
        median = {name: statistics.median(times) for name, times in seconds.items()}
        for name, (extra, _) in VARIANTS.items():
            results.append({
                "method": name, "batch": batch_size, "ms/token": round(1000 * median[name] / new_tokens, 2),
                "tokens/s": round(batch_size * new_tokens / median[name], 1),
                "speed vs sft": round(median["sft"] / median[name], 3),
                "speed-up vs sequential": round(median["flythinker sequential"] / median[name], 3),
                "weights MB": round(weights_mb(models[tuple(extra)]), 2),
                "peak MB (GPU)": None if peak[name] is None else round(peak[name], 1)})
    write_json(out, {"device": str(device), "torch_threads": torch.get_num_threads(), "new_tokens": new_tokens,
                     "repeats": repeats, "results": results})
    return pd.DataFrame(results)
