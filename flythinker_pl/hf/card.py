"""The model card (README.md) of an exported folder: how to load it, what it is, how its prompts are
built, the run's data and scores (with their 95% intervals), and where it came from."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers

from ..config import Config


def _backbone(cfg: Config, side: str, config) -> str:
    backbone = getattr(cfg, side)
    return f"`{backbone.name}` ({config.model_type}, hidden {config.hidden_size}), trained as `{backbone.mode}`"


def _scores(run_dir: Path) -> str:
    from ..lit.evaluate import runs_table, summary_table

    table = summary_table(runs_table([run_dir])).T
    return table.to_markdown(headers=["", run_dir.name])


def _what(cfg: Config, model, custom: bool, adapters: bool) -> str:
    config = model.config
    rows = [("method", f"`{cfg.method}`")]
    generator = config.generator if custom else config
    rows.append(("Generator", _backbone(cfg, "generator", generator)))
    if custom and config.method in ("flythinker", "static"):
        reasoner = config.reasoner or config.generator
        source = (
            "the Generator's base model with its own LoRA adapter"
            if cfg.reasoner.shared_base
            else _backbone(cfg, "reasoner", reasoner)
        )
        rows += [
            ("Reasoner", source),
            (
                "fusion",
                f"lambda {config.lam}, norm `{config.norm}` (c = {config.latent_norm:.6g}), dims "
                f"`{config.dims}`, span `{config.span}`, eps {config.eps}",
            ),
        ]
    if custom and config.method == "coconut":
        rows.append(
            (
                "thoughts",
                f"{config.thoughts}, norm `{config.norm}`, markers {'on' if config.thought_markers else 'off'}",
            )
        )
    rows.append(
        (
            "weights",
            "LoRA kept as peft adapters in adapters/ (peft needed)"
            if adapters and custom and config.adapters
            else "LoRA merged into the weights",
        )
    )
    return "\n".join(["| | |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)])


def model_card(run_dir: Path, cfg: Config, model, custom: bool, adapters: bool) -> str:
    from ..lit.rundirs import git_commit

    data, decode = cfg.data, cfg.decode
    commit_file = run_dir / "git_commit.txt"
    commit = commit_file.read_text().strip() if commit_file.exists() else "unknown (no git_commit.txt)"
    remote = ", trust_remote_code=True" if custom else ""
    source = data.path or data.hub or f"synthetic ({data.synthetic_dir}, {data.synthetic})"
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [flythinker, personalization{", custom_code" if custom else ""}]
---
# {cfg.logging.experiment} / {run_dir.name}: `{cfg.method}` exported from flythinker-pl

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("path/to/this/folder"{remote})
tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder"{remote})
```

`model.generate(...)` samples as the run decoded (generation_config.json: temperature {decode.temperature},
top-p {decode.top_p}, top-k {decode.top_k or "off"}, up to {decode.max_new_tokens} new tokens); pass
`do_sample=False` for greedy decoding. Prompts are left-padded batches, built as in training
(`flythinker generate FOLDER --record ID` or `--history FILE --query TEXT` builds and streams them).
{
        "The modeling code (modeling_flythinker.py, fusion_math.py) is in this folder; it needs transformers "
        + transformers.__version__
        + " or close, and peft for adapters/."
        if custom
        else ""
    }

## Model

{_what(cfg, model, custom, adapters)}

## Prompts

The chat template of the tokenizer wraps one user turn: the user's history (retrieved profile items,
LongLaMP's `{data.task}` template, joined with ", and "), then the task's suffix with the query; the
response follows the assistant header. Retrieval `{data.retriever}`, k = {data.k}; token budgets:
history {data.profile_tokens}, query {data.input_tokens}, target {data.target_tokens}.

## Data

`{data.task}_{data.setting}` from {source}.

## Results

Scored on the run's `{decode.split}` split (means with seeded bootstrap 95% intervals):

{_scores(run_dir)}

## Provenance

- run: `{run_dir}`; its full config is `flythinker_run.yaml` beside this card
- commit of the run: {commit}; exported at commit {git_commit()}
- exported {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC with torch {torch.__version__}, transformers
  {transformers.__version__}
"""
