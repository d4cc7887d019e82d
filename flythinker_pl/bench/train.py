"""Training throughput: tokens/s of SFT, FlyThinker (Reasoner frozen, LoRA, full) and Coconut
(k = 0, 1, 2, 4 continuous thoughts: k+1 sequential Generator passes) on the same batches in one
process, rounds interleaved, median of repeats; `ratio to sft` (SFT's time over the row's) is the median
over rounds of the ratio within a round, the two runs seconds apart on the same machine state.

    flythinker bench train -c experiments/demo.yaml [--batches 4 --repeats 5 --out bench/train.json]
"""

from __future__ import annotations

import statistics

import pandas as pd
import torch

from ..config import Config, load_config
from ..data.datamodule import PersonalisationDataModule, pretraining_corpus
from ..models.build import build_method
from ..measure import timed
from . import optimizer_steps, write_json

VARIANTS = {
    "sft": ["method=sft"],
    "flythinker (reasoner frozen)": ["method=flythinker", "reasoner.mode=frozen"],
    "flythinker (reasoner lora)": ["method=flythinker", "reasoner.mode=lora"],
    "flythinker (reasoner full)": ["method=flythinker", "reasoner.mode=full"],
    **{f"coconut (k={k})": ["method=coconut", f"coconut.k={k}"] for k in (0, 1, 2, 4)},
}


def _train_steps(method, optimizer, batches, device) -> float:
    """Seconds for one optimiser step per batch (forward, backward, update)."""
    return timed(device, lambda: optimizer_steps(method, optimizer, batches, device))[1]


def bench_train(
    config_path: str | list[str],
    overrides: list[str],
    batches: int = 4,
    repeats: int = 5,
    out: str = "bench/train.json",
) -> pd.DataFrame:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    configs: dict[str, Config] = {
        name: load_config(config_path, [*overrides, *extra]) for name, extra in VARIANTS.items()
    }
    methods, tokenizer = {}, None
    for name, cfg in configs.items():
        torch.manual_seed(cfg.seed)
        method, tokenizer = build_method(cfg, corpus=lambda cfg=cfg: pretraining_corpus(cfg.data))
        trainable = [p for p in method.parameters() if p.requires_grad]
        methods[name] = (method.to(device).train(), torch.optim.AdamW(trainable, lr=1e-5))
    datamodule = PersonalisationDataModule(next(iter(configs.values())).data, tokenizer)
    datamodule.setup()
    fixed = [
        {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}
        for b, _ in zip(datamodule.val_dataloader(), range(batches))
    ]
    tokens = sum(int(b["attention_mask"].sum()) for b in fixed)

    for method, optimizer in methods.values():  # warm-up, not timed
        _train_steps(method, optimizer, fixed[:1], device)
    seconds = {name: [] for name in methods}
    for _ in range(repeats):  # interleaved rounds: drift hits every variant alike
        for name, (method, optimizer) in methods.items():
            seconds[name].append(_train_steps(method, optimizer, fixed, device))

    rows = []
    for name in methods:
        median = statistics.median(seconds[name])
        rows.append(
            {
                "method": name,
                "tokens/s": round(tokens / median),
                "ms/step": round(1000 * median / len(fixed)),
                "ratio to sft": round(statistics.median(a / b for a, b in zip(seconds["sft"], seconds[name])), 3),
            }
        )
    write_json(
        out,
        {
            "device": str(device),
            "torch_threads": torch.get_num_threads(),
            "batches": len(fixed),
            "tokens_per_round": tokens,
            "repeats": repeats,
            "results": rows,
        },
    )
    return pd.DataFrame(rows)
