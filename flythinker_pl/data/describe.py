"""What a config's data looks like: `flythinker data stats|show -c CONFIG`. Counting and validating
needs no model; token statistics and `show` need the Generator's tokenizer only (never its weights)."""

from __future__ import annotations

import statistics
from typing import Optional

import numpy as np
import pandas as pd
from transformers import PreTrainedTokenizerBase

from ..config import DataConfig
from .datamodule import prepare_record, split_records
from .readers import SPLITS
from .schema import TASKS

PERCENTILES = (50, 90, 99, 100)


def _percentiles(values: list[int]) -> str:
    if not values:
        return "-"
    return " / ".join(str(int(v)) for v in np.percentile(values, PERCENTILES, method="higher"))


def split_stats(cfg: DataConfig, split: str, tokenizer: Optional[PreTrainedTokenizerBase] = None) -> dict:
    """What a split holds after validation: records, users, profile sizes, words of queries and
    targets; with a tokenizer also the prompts and targets as the model reads them (retrieval,
    rendering, tokenisation): token lengths and how many records hit each budget."""
    records, rationales, report = split_records(cfg, split)
    profile_sizes = [len(r["profile"]) for r in records] or [0]
    stats = {
        "records": len(records),
        "skipped": len(report.skipped),
        "users": len({r[TASKS[cfg.task].user_key] for r in records}),
        "profile items: min / median / max": f"{min(profile_sizes)} / {statistics.median(profile_sizes):g} / "
        f"{max(profile_sizes)}",
        "empty profiles": sum(not r["profile"] for r in records),
        **({"with a rationale": sum(r["id"] in rationales for r in records)} if cfg.rationales else {}),
        "query words p50 / p90 / p99 / max": _percentiles([len(r["input"].split()) for r in records]),
        "target words p50 / p90 / p99 / max": _percentiles([len(r["output"].split()) for r in records]),
    }
    if tokenizer is None:
        return stats
    examples = [prepare_record(r, cfg, tokenizer, rationale=rationales.get(r["id"])) for r in records]
    return stats | {
        **(
            {f"hit rationale budget ({cfg.rationale_tokens})": sum(e["cut"].get("rationale", False) for e in examples)}
            if cfg.rationales
            else {}
        ),
        "items shown: mean": f"{np.mean([e['items_shown'] for e in examples] or [0]):.2f}",
        "prompt tokens p50 / p90 / p99 / max": _percentiles([e["prompt_len"] for e in examples]),
        "target tokens p50 / p90 / p99 / max": _percentiles([e["target_tokens"] for e in examples]),
        f"hit profile budget ({cfg.profile_tokens})": sum(e["cut"]["profile"] for e in examples),
        f"hit input budget ({cfg.input_tokens})": sum(e["cut"]["input"] for e in examples),
        f"hit target budget ({cfg.target_tokens})": sum(e["target_tokens"] > cfg.target_tokens for e in examples),
    }


def stats(cfg: DataConfig, tokenizer: Optional[PreTrainedTokenizerBase] = None) -> str:
    """A table, one column per split: records, users, profile sizes, query and target words (percentiles);
    with a tokenizer, prompt / target token lengths (before the target budget) and how many records hit
    each budget (a target over its budget is cut in every split; the scored reference stays whole)."""
    table = pd.DataFrame({split: split_stats(cfg, split, tokenizer) for split in SPLITS})
    header = f"{cfg.task}_{cfg.setting}: retriever={cfg.retriever} k={cfg.k}"
    if tokenizer is not None:
        header += f", budgets (tokens) profile={cfg.profile_tokens} input={cfg.input_tokens} target={cfg.target_tokens}"
    return header + "\n\n" + table.to_markdown()


def show(cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, split: str, index: int) -> str:
    """Record `index` of `split` (after validation) as the model reads it: the full prompt and its target."""
    records, rationales, _ = split_records(cfg, split)
    if not 0 <= index < len(records):
        raise IndexError(f"{split} has {len(records)} valid records; --index must be in 0..{len(records) - 1}")
    record = records[index]
    example = prepare_record(record, cfg, tokenizer, rationale=rationales.get(record["id"]))
    prompt = tokenizer.decode(example["input_ids"][: example["prompt_len"]])
    cut = ", ".join(name for name, hit in example["cut"].items() if hit) or "nothing"
    return (
        f"{split}[{index}] id={record['id']} user={record[TASKS[cfg.task].user_key]}\n"
        f"retrieved ({cfg.retriever}, k={cfg.k}): profile items {example['retrieved']} "
        f"of {len(record['profile'])}; budgets cut: {cut}\n"
        f"----- prompt ({example['prompt_len']} tokens) -----\n{prompt}\n"
        + (
            f"----- rationale (before the response in the target) -----\n{rationales[record['id']]}\n"
            if record["id"] in rationales
            else ""
        )
        + f"----- target ({example['target_tokens']} tokens, untruncated reference) -----\n{record['output']}\n"
    )
