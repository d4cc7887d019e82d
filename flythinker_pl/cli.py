"""`flythinker` command line.

    flythinker fit -c experiments/demo.yaml fusion.lam=1.0 trainer.max_steps=50
    flythinker pretrain -c experiments/demo.yaml      # build + cache the tiny backbones only
    flythinker bench train -c experiments/demo.yaml   # training tokens/s, ratio to SFT
    flythinker table lightning_logs/demo_sft lightning_logs/demo_flythinker
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import ConfigError, load_config


def _with_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", help="experiment YAML (see experiments/)")
    parser.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. fusion.lam=1.0")


def _latest_run(path: Path) -> Path:
    """A run dir, or an experiment dir whose newest finished version is taken."""
    if (path / "metrics.json").exists():
        return path
    finished = sorted((p for p in path.glob("version_*") if (p / "metrics.json").exists()),
                      key=lambda p: int(p.name.split("_")[-1]))
    if not finished:
        raise FileNotFoundError(f"{path}: no finished run (a run dir with metrics.json) found")
    return finished[-1]


def results_table(paths: list[str]):
    import pandas as pd

    rows = []
    for path in paths:
        run = _latest_run(Path(path))
        rows.append({"run": str(run), **json.loads((run / "metrics.json").read_text())})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flythinker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    _with_config(commands.add_parser("fit", help="train one run"))
    _with_config(commands.add_parser("pretrain", help="build and cache the tiny preset backbones"))
    benchmarks = commands.add_parser("bench", help="benchmarks (printed table + JSON)")
    bench = benchmarks.add_subparsers(dest="benchmark", required=True).add_parser(
        "train", help="training tokens/s of SFT and FlyThinker per Reasoner mode, ratio to SFT")
    _with_config(bench)
    bench.add_argument("--batches", type=int, default=4)
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--out", default="bench/train.json")
    table = commands.add_parser("table", help="compare finished runs (metrics.json) as a markdown table")
    table.add_argument("runs", nargs="+", help="run dirs or experiment dirs (newest finished version)")
    args = parser.parse_args(argv)

    try:
        if args.command == "table":
            print(results_table(args.runs).to_markdown(index=False, floatfmt=".4g"))
            return 0
        cfg = load_config(args.config, args.overrides)
        if args.command == "fit":
            from .lit.run import fit

            run_dir = fit(cfg)
            print(f"Run: {run_dir}\nTensorBoard: tensorboard --logdir {cfg.logging.root_dir}")
        elif args.command == "pretrain":
            from .lit.run import build

            build(cfg)
            print(f"Backbones cached under {cfg.logging.cache_dir}")
        elif args.command == "bench":
            from .bench import bench_train

            result = bench_train(args.config, args.overrides, args.batches, args.repeats, args.out)
            print(result.to_markdown(index=False))
            print(f"written {args.out}")
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
