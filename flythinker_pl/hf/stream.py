"""`flythinker generate RUN_OR_EXPORT --record ID | --history FILE --query TEXT`: one output, streamed to
the terminal as the model writes it (transformers' TextStreamer over generate()), then ms/token.

The prompt is built as the run built its training prompts: its data config (config.yaml of a run,
flythinker_run.yaml of an exported folder) retrieves from the user's history, renders and budgets it.
A run dir is decoded through the exported model built in memory (the same code as the folder's).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional, TextIO

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TextStreamer

from ..config import Config, ConfigError, load_config
from ..data.datamodule import prepare_record, split_records
from ..data.readers import SPLITS, read_json
from ..data.schema import TASKS, DataError, find_problem
from ..models import modeling_flythinker as modeling
from .export import RUN_CONFIG, check_run, generation_config, hf_model, load_trained, stop_ids


class TimedStreamer(TextStreamer):
    """TextStreamer writing to `out`, noting when each new token arrived (generate passes the prompt first)."""

    def __init__(self, tokenizer, out: TextIO):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.out, self.arrivals = out, []

    def put(self, value):
        if not self.next_tokens_are_prompt:
            self.arrivals.append(time.perf_counter())
        super().put(value)

    def on_finalized_text(self, text: str, stream_end: bool = False):
        print(text, file=self.out, flush=True, end="\n" if stream_end else "")


def load_folder(folder: Path):
    """(model, tokenizer, run config) of an exported folder, through this package's own modeling code."""
    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") == modeling.FlyThinkerConfig.model_type:
        model_class = getattr(modeling, config["auto_map"]["AutoModelForCausalLM"].rsplit(".", 1)[1])
    else:
        model_class = AutoModelForCausalLM
    model = model_class.from_pretrained(folder)  # given its config, AutoTokenizer needs no remote code
    return model.eval(), AutoTokenizer.from_pretrained(folder, config=model.config), load_config(folder / RUN_CONFIG)


def load_model(source: str | Path):
    """(model, tokenizer, run config) of an exported folder or of a run (exported in memory)."""
    source = Path(source)
    if (source / RUN_CONFIG).exists():
        return load_folder(source)
    _, cfg, weights = check_run(source)
    method, tokenizer = load_trained(cfg, weights)
    stops = stop_ids(method, tokenizer)
    model = hf_model(method, cfg)
    model.generation_config = generation_config(cfg, stops, tokenizer.pad_token_id)
    return model, tokenizer, cfg


def find_record(cfg: Config, record_id: str) -> dict:
    for split in ("test", "val", "train"):
        records, _, _ = split_records(cfg.data, split)
        found = next((record for record in records if str(record["id"]) == record_id), None)
        if found is not None:
            return found
    raise DataError(
        f"no record with id {record_id!r} in the run's data ({cfg.data.task}_{cfg.data.setting}: {', '.join(SPLITS)})"
    )


def history_record(cfg: Config, history: str | Path, query: str) -> dict:
    """A record of the user's profile items (`history`: a JSON list of them) and a query."""
    schema = TASKS[cfg.data.task]
    record = {"id": "query", schema.user_key: "user", "input": query, "output": "", "profile": read_json(Path(history))}
    problem = find_problem({**record, "output": "(to be written)"}, schema)
    if problem:
        field, _, detail = problem
        raise DataError(
            f"{history}: field '{field}': {detail} (a {cfg.data.task} profile item has "
            f"{', '.join(schema.profile_keys)})"
        )
    return record


def prompt_ids(cfg: Config, tokenizer, record: dict) -> torch.Tensor:
    example = prepare_record(record, cfg.data, tokenizer)  # no rationale: a CoT model writes its own
    return torch.as_tensor(example["input_ids"][: example["prompt_len"]], dtype=torch.long)[None]


def stream(
    source: str | Path,
    record: Optional[str] = None,
    history: Optional[str] = None,
    query: Optional[str] = None,
    max_new_tokens: Optional[int] = None,
    greedy: bool = False,
    out: Optional[TextIO] = None,
    err: Optional[TextIO] = None,
) -> dict:
    """Stream one output to `out` (stdout); the timing line goes to `err` (stderr). Returns the timing and
    the text."""
    out, err = out or sys.stdout, err or sys.stderr
    if (history is None) != (query is None) or (record is None) == (history is None):
        raise ConfigError("give --record ID, or --history FILE with --query TEXT")
    model, tokenizer, cfg = load_model(source)
    user = find_record(cfg, record) if record is not None else history_record(cfg, history, query)
    ids = prompt_ids(cfg, tokenizer, user)
    streamer = TimedStreamer(tokenizer, out)
    settings = {"max_new_tokens": max_new_tokens} if max_new_tokens else {}
    started = time.perf_counter()
    with torch.no_grad():
        output = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            streamer=streamer,
            **settings,
            **({"do_sample": False} if greedy else {}),
        )
    new = output.shape[1] - ids.shape[1]
    arrivals = streamer.arrivals
    timing = {
        "new_tokens": new,
        "prompt_tokens": ids.shape[1],
        "prompt_ms": 1000 * (arrivals[0] - started),
        "ms_per_token": 1000 * (arrivals[-1] - arrivals[0]) / max(len(arrivals) - 1, 1),
    }
    print(
        f"[{new} tokens, {timing['ms_per_token']:.1f} ms/token; prompt of {timing['prompt_tokens']} tokens "
        f"{timing['prompt_ms']:.0f} ms]",
        file=err,
        flush=True,
    )
    return {**timing, "text": tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True)}
