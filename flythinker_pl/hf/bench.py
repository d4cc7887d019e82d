"""Decoding speed of an exported folder's generate() beside the framework's engines, on the same trained
model and prompts (the run's val split), in one process: rounds interleaved, median of repeats, the
first round a warm-up. `ms/token` is one decoding step, (time of N tokens - time of 1 token) / (N - 1),
each call timed whole (generate() with its logits processors and stopping criteria, the framework's
loop with its sampler); EOS is suppressed, so every call makes exactly N tokens. Before timing, the
folder's greedy tokens are checked against the framework's sequential engine at the largest batch.

    python -m flythinker_pl.hf.bench RUN_DIR [--new-tokens 64 --batch-sizes 1 16 --repeats 5 --out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from transformers import AutoModelForCausalLM

from ..bench import write_json
from ..data.datamodule import PersonalisationDataModule
from ..decoding.generate import generate, prompts_of
from .export import check_run, export, load_trained, stop_ids

ENGINES = ("sequential", "auto")  # the framework's reference, and what `flythinker predict` picks here


def val_prompts(cfg, tokenizer, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    datamodule = PersonalisationDataModule(cfg.data, tokenizer, predict_split="val", predict_batch_size=count)
    datamodule.setup("predict")
    batch = next(iter(datamodule.predict_dataloader()))
    if len(batch["ids"]) < count:
        raise ValueError(f"the val split has {len(batch['ids'])} records, fewer than batch {count}")
    ids, mask, _ = prompts_of(batch, tokenizer.pad_token_id)
    return ids, mask, batch["prompt_len"], batch["ids"]


def bench_export(
    run: str, new_tokens: int = 64, batch_sizes=(1, 16), repeats: int = 5, out: str = "bench/export.json"
) -> pd.DataFrame:
    _, cfg, weights = check_run(run)
    method, tokenizer = load_trained(cfg, weights)
    folder = Path(tempfile.mkdtemp(prefix="flythinker-export-")) / "model"
    export(run, folder)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    ids, mask, prompt_len, names = val_prompts(cfg, tokenizer, max(batch_sizes))

    stops = stop_ids(method, tokenizer)

    def call(variant: str, rows: int, tokens: int):
        """Greedy tokens of the first `rows` prompts; EOS suppressed on both sides in the same way."""
        keep = mask[:rows].any(0)
        batch = ids[:rows][:, keep], mask[:rows][:, keep]
        if variant == "exported generate()":
            produced = model.generate(
                input_ids=batch[0],
                attention_mask=batch[1],
                do_sample=False,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
            )
            return produced[:, batch[0].shape[1] :].tolist()
        decode = dataclasses.replace(
            cfg.decode, engine=variant.split()[-1], do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens
        )
        return generate(method, *batch, prompt_len[:rows], names[:rows], decode, stops).tokens

    variants = [f"framework {engine}" for engine in ENGINES] + ["exported generate()"]
    with torch.no_grad():
        if call("exported generate()", max(batch_sizes), new_tokens) != call(
            "framework sequential", max(batch_sizes), new_tokens
        ):
            raise RuntimeError("the exported folder's greedy tokens differ from the framework's sequential engine")
        timings = {(b, v): {"step": [], "first": []} for b in batch_sizes for v in variants}
        for round_index in range(repeats + 1):
            for batch_size in batch_sizes:
                for variant in variants:
                    seconds = {}
                    for tokens in (1, new_tokens):
                        started = time.perf_counter()
                        call(variant, batch_size, tokens)
                        seconds[tokens] = time.perf_counter() - started
                    if round_index:  # round 0 warms up
                        timing = timings[batch_size, variant]
                        timing["step"].append(1000 * (seconds[new_tokens] - seconds[1]) / (new_tokens - 1))
                        timing["first"].append(1000 * seconds[1])
    rows = []
    for batch_size in batch_sizes:
        sequential = timings[batch_size, "framework sequential"]["step"]
        for variant in variants:
            timing = timings[batch_size, variant]
            rows.append(
                {
                    "batch": batch_size,
                    "variant": variant,
                    "ms/token": statistics.median(timing["step"]),
                    "first token ms": statistics.median(timing["first"]),
                    "/ sequential": statistics.median(s / r for s, r in zip(timing["step"], sequential)),
                }
            )
    table = pd.DataFrame(rows).round(3)
    write_json(
        out,
        {
            "run": str(run),
            "new_tokens": new_tokens,
            "repeats": repeats,
            "threads": torch.get_num_threads(),
            "rows": table.to_dict("records"),
        },
    )
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a finished run dir (or an experiment dir: its newest finished run)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="bench/export.json")
    args = parser.parse_args(argv)
    print(bench_export(args.run, args.new_tokens, args.batch_sizes, args.repeats, args.out).to_markdown(index=False))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
