"""`flythinker` command line.

flythinker run -c experiments/demo.yaml            # fit + predict + evaluate; reuses what is done
flythinker fit -c experiments/demo.yaml fusion.lam=1.0 trainer.max_steps=50
flythinker predict -c experiments/demo.yaml ckpt_path=lightning_logs/demo/version_0/checkpoints/last.ckpt
flythinker evaluate lightning_logs/demo_sft lightning_logs/demo --out lightning_logs/compare
flythinker table lightning_logs/demo_sft lightning_logs/demo --segments --plot lightning_logs/compare
flythinker data stats -c experiments/demo.yaml     # records, users, words (--tokens: tokens, budget hits)
flythinker data show -c experiments/demo.yaml --index 3
flythinker pretrain -c experiments/demo.yaml       # build + cache the tiny backbones only
flythinker bench train -c experiments/demo.yaml    # training tokens/s, ratio to SFT
flythinker bench decode -c experiments/demo.yaml   # decoding ms/token, engines vs SFT
flythinker bench data                              # records/s of data preparation
flythinker gpu-check --out bench/gpu_check.json    # every CUDA path at paper sizes (tiny on CPU)
flythinker memory -c experiments/gpu/longlamp_qwen.yaml trainer.devices=8   # per-rank GiB, DDP vs FSDP
flythinker sweep ablations/lambda.yaml --dry-run   # an ablation: every point x seed, then tables + plots
flythinker sweep ablations/lambda.yaml --launcher slurm   # every run a SLURM job; then:
flythinker sweep status ablations/lambda.yaml --wait      # one line per run; the tables when all are done
flythinker probe lightning_logs/demo_sft lightning_logs/demo --out lightning_logs/probe   # what latents know
flythinker export lightning_logs/demo --out exports/demo   # a Hugging Face model folder (from_pretrained)
flythinker generate exports/demo --record U00002-0   # stream one output (a run dir works too), then ms/token
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from .config import ConfigError, load_config
from .console import silence_known_noise
from .data.schema import DataError


def _with_config(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "-c",
        "--config",
        action="append",
        help="experiment YAML (see experiments/); several -c merge in order, later wins "
        "(-c experiments/demo.yaml -c experiments/debug/tiny.yaml)",
    )
    parser.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. fusion.lam=1.0")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flythinker", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _with_config(commands.add_parser("run", help="train, decode and evaluate one experiment (reuses what is done)"))
    _with_config(commands.add_parser("fit", help="train one run"))
    _with_config(
        commands.add_parser(
            "predict",
            help="decode decode.split into predictions.jsonl (ckpt_path=RUN/checkpoints/last.ckpt, or none: zero-shot)",
        )
    )
    evaluate = commands.add_parser("evaluate", help="score predictions into their run dirs; one comparison table")
    evaluate.add_argument(
        "paths",
        nargs="+",
        help="predictions.jsonl files, run dirs or experiment dirs; "
        "key=value items override eval settings (eval.segment_width=25)",
    )
    evaluate.add_argument("-c", "--config", help="take the eval settings from this experiment YAML")
    evaluate.add_argument("--out", help="where the combined position_eval.csv/.png of several runs go")
    table = commands.add_parser("table", help="compare finished runs from their run dirs (nothing is recomputed)")
    table.add_argument("runs", nargs="+", help="run dirs or experiment dirs (newest finished version)")
    table.add_argument(
        "--all", action="store_true", help="every metrics.json key (one column per run), not just the summary"
    )
    table.add_argument("--segments", action="store_true", help="also the position-segment table")
    table.add_argument("--plot", help="write the runs' combined position_eval.csv/.png into this directory")
    data = commands.add_parser("data", help="inspect a config's data: stats per split, or one prompt")
    data.add_argument("view", choices=["stats", "show"])  # before the overrides: positionals fill in order
    _with_config(data)
    data.add_argument("--split", default="test", choices=["train", "val", "test"])
    data.add_argument("--index", type=int, default=0, help="record index for `show`")
    data.add_argument(
        "--tokens",
        action="store_true",
        help="`stats`: also token lengths and budget hits, from the Generator's tokenizer (no model is loaded)",
    )
    _with_config(commands.add_parser("pretrain", help="build and cache the tiny preset backbones"))
    kinds = commands.add_parser("bench", help="benchmarks: a table of side-by-side ratios + JSON").add_subparsers(
        dest="benchmark", required=True
    )
    bench_train = _with_config(kinds.add_parser("train", help="training tokens/s of SFT and FlyThinker per mode"))
    bench_train.add_argument("--batches", type=int, default=4)
    bench_train.add_argument("--repeats", type=int, default=5)
    bench_train.add_argument("--out", default="bench/train.json")
    bench_data = kinds.add_parser(
        "data",
        help="records/s preparing synthetic records, and the speed-up over the "
        "reference path (rank-bm25, one record tokenised at a time)",
    )
    bench_data.add_argument("--records", type=int, default=20_000)
    bench_data.add_argument("--retriever", default="bm25")
    bench_data.add_argument("--k", type=int, default=1)
    bench_data.add_argument(
        "--reference-records", type=int, default=2_000, help="records timed through the reference path too (0 = skip)"
    )
    bench_decode = _with_config(kinds.add_parser("decode", help="decoding ms/token: SFT vs FlyThinker engines"))
    bench_decode.add_argument("--new-tokens", type=int, default=64)
    bench_decode.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    bench_decode.add_argument("--repeats", type=int, default=5)
    bench_decode.add_argument("--out", default="bench/decode.json")
    bench_decode.add_argument(
        "--no-compile",
        action="store_true",
        help="leave out the decode.compile=true rows (their first run compiles, seconds to minutes)",
    )
    gpu_check = commands.add_parser(
        "gpu-check",
        help="every CUDA path at the paper's sizes (tiny ones on CPU): "
        "parity, training and decoding speed; JSON + markdown",
    )
    gpu_check.add_argument("--out", default="bench/gpu_check.json", help="JSON; the markdown table goes beside it")
    gpu_check.add_argument("--sizes", choices=["paper", "tiny"], help="default: paper on CUDA, tiny on CPU")
    gpu_check.add_argument(
        "--only", nargs="+", choices=["parity", "train", "decode", "two_gpu", "ddp"], help="run only these sections"
    )
    memory = _with_config(
        commands.add_parser(
            "memory", help="per-rank GiB of parameters, gradients and AdamW state: DDP vs FSDP (nothing is loaded)"
        )
    )
    memory.add_argument(
        "--ranks",
        type=int,
        nargs="+",
        help="FSDP world sizes (default: the config's trainer.devices x trainer.num_nodes, and 8)",
    )
    sweep = commands.add_parser(
        "sweep",
        help="run an ablation (every point x seed; reuses finished runs), "
        "then its mean/std table, per-position table and plots; "
        "`sweep status FILE`: where each run stands",
    )
    sweep.add_argument(
        "file",
        help="sweep YAML (see ablations/ and the README's 'Ablations (sweeps)'), or `status` then the sweep YAML",
    )
    sweep.add_argument("overrides", nargs="*", help="dotlist overrides for every point, after the file's")
    sweep.add_argument(
        "--launcher",
        help="inline: in this process, in order; local: jobs on this machine; slurm: "
        "SLURM jobs (default: the file's launcher.name, else inline)",
    )
    sweep.add_argument("--parallel", type=int, help="runs at once (local; slurm: of each job array)")
    sweep.add_argument("--dry-run", action="store_true", help="list the runs and what each would do; run nothing")
    sweep.add_argument("--aggregate-only", action="store_true", help="rebuild the tables from finished runs only")
    sweep.add_argument(
        "--wait",
        action="store_true",
        help="status: one progress line until no run is pending or running, then the tables",
    )
    sweep.add_argument("--out", help="results directory (default: results/<name>/ beside the sweep file)")
    probe = commands.add_parser(
        "probe",
        help="linear probes from each run's Reasoner and Generator hidden states "
        "to the users' latent attributes, per response position",
    )
    probe.add_argument("runs", nargs="+", help="run dirs or experiment dirs (newest finished version)")
    probe.add_argument(
        "--out", help="where probe.csv/.md, probe_vs_position.png and pca.png go (default: <first run dir>/probe)"
    )
    probe.add_argument(
        "--held-out",
        nargs="+",
        default=["val", "test"],
        choices=["val", "test"],
        help="the splits whose users score the probes (never the training users)",
    )
    probe.add_argument("--color-by", default="arc", help="the attribute that colours pca.png")
    probe.add_argument("--n-bootstrap", type=int, default=1000, help="resamples of held-out users (0: none)")
    probe.add_argument(
        "--train-records-per-user",
        type=int,
        default=4,
        help="each training user's first N records fit the probes (0: all)",
    )
    probe.add_argument(
        "--windows",
        type=int,
        nargs="+",
        default=None,
        help="first response position of each window, increasing from 0 (default: 0 1 8 32 64 128 "
        "192); e.g. 0 1 2 ... 9 probes every position of a short response",
    )
    export = commands.add_parser(
        "export",
        help="a trained run as a Hugging Face model folder: from_pretrained, generate(), its modeling code inside",
    )
    export.add_argument("run", help="a finished run dir (or an experiment dir: its newest finished run)")
    export.add_argument("--out", required=True, help="the folder to write (new, or empty)")
    export.add_argument(
        "--adapters",
        action="store_true",
        help="keep LoRA as peft adapters beside the base weights (default: merged into them)",
    )
    generate = commands.add_parser("generate", help="stream one output of a run or exported folder, then ms/token")
    generate.add_argument("source", help="a run dir or a folder written by `flythinker export`")
    prompt = generate.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--record", help="id of a record of the run's data (test, val, then train split)")
    prompt.add_argument("--history", help="a JSON list of the user's profile items (the task's fields); with --query")
    generate.add_argument("--query", help="the request (a record's `input`), with --history")
    generate.add_argument("--max-new-tokens", type=int, help="default: the run's decode.max_new_tokens")
    generate.add_argument("--greedy", action="store_true", help="greedy instead of the run's sampler")
    return parser


def _config(args, loads_models: bool = True):
    """The config, and a `ckpt_path=` item pulled out of the overrides (it is not a config key; only
    `predict` takes one). With `loads_models`, offline hub ids are checked now (models/hub.py): all
    of it before the heavy imports, so a typo or a missing model fails in a blink."""
    ckpt_path = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("ckpt_path=")), None)
    if ckpt_path is not None and args.command != "predict":
        raise ConfigError(
            f"ckpt_path= is `flythinker predict`'s (the weights it decodes); `{args.command}` takes "
            f"none. To continue training from a checkpoint: train.resume={ckpt_path}"
        )
    cfg = load_config(args.config, [o for o in args.overrides if not o.startswith("ckpt_path=")])
    if loads_models:
        from .models.hub import check_backbones

        check_backbones(cfg)
    return cfg, ckpt_path


def run(args):
    cfg = _config(args)[0]  # checked before the heavy imports: a typo fails in a blink
    from .lit.evaluate import interval_notes, runs_table, scored_counts, summary_table
    from .lit.run import run_experiment

    run_dir = run_experiment(cfg)
    if _rank_zero():
        runs = runs_table([run_dir])
        print(summary_table(runs).T.to_markdown())
        for note in interval_notes(scored_counts(runs)):
            print(note)
        print(f"Run: {run_dir} (every number in its metrics.json)")


def _rank_zero() -> bool:
    """Whether this process prints results (the other ranks of a multi-process launch run the same command)."""
    from lightning.pytorch.utilities import rank_zero_only

    return rank_zero_only.rank == 0


def fit(args):
    cfg = _config(args)[0]
    from .lit.run import fit as fit_run

    tensorboard = Path(sys.executable).parent / "tensorboard"  # installed beside this Python, maybe not on PATH
    print(f"Run: {fit_run(cfg)}\nTensorBoard: {tensorboard} --logdir {cfg.logging.root_dir}")


def predict(args):
    cfg, ckpt_path = _config(args)
    if ckpt_path is None:  # decoding untrained weights by accident would be scored like a result
        raise ConfigError(
            "flythinker predict decodes trained weights: give ckpt_path=RUN/checkpoints/last.ckpt, "
            "or ckpt_path=none to decode the weights as loaded (zero-shot)"
        )
    if ckpt_path.lower() == "none":
        ckpt_path = None
    elif Path(ckpt_path).is_dir():  # a sharded checkpoint (trainer.strategy=fsdp): one file per rank
        raise FileNotFoundError(
            f"ckpt_path={ckpt_path} is a sharded (FSDP) checkpoint folder; decode "
            f"{Path(ckpt_path).parent / 'weights.ckpt'}, the weights exported from it at the "
            "end of fit"
        )
    elif not Path(ckpt_path).is_file():  # before any model is built or run folder made
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    from .lit.run import predict as predict_run

    print(f"Predictions: {predict_run(cfg, ckpt_path)}")


def evaluate(args):
    from .lit.evaluate import evaluate_runs, interval_notes

    paths = [p for p in args.paths if "=" not in p]
    cfg = load_config(args.config, [p for p in args.paths if "=" in p])
    table, _ = evaluate_runs(paths, cfg.eval, args.out)
    print(table.to_markdown(floatfmt=".4f"))
    for note in interval_notes(table["count"].to_dict()):
        print(note)
    if args.out and len(paths) > 1:
        print(f"Position-segmented comparison: {Path(args.out) / 'position_eval.png'}")


def table(args):
    from .evaluation.report import COUNTS_NOTE
    from .lit.evaluate import (
        DIFFERENCES_NOTE,
        differences,
        interval_notes,
        runs_segments,
        runs_table,
        scored_counts,
        summary_table,
    )

    runs = runs_table(args.runs)
    summary = [
        runs.T.to_markdown(floatfmt=".4g") if args.all else summary_table(runs).to_markdown(),
        *interval_notes(scored_counts(runs)),
    ]
    if len(args.runs) > 1:  # what the numbers mean: each run against the first, paired
        compared, notes = differences(args.runs)
        if len(compared):
            summary += [f"{DIFFERENCES_NOTE}:", compared.to_markdown(index=False, disable_numparse=True)]
        summary += notes
    print("\n\n".join(summary))
    if args.segments or args.plot:
        segments = runs_segments(args.runs, args.plot, "\n\n".join(summary))
        if args.segments:
            print(f"\nPer position window ({COUNTS_NOTE}):")
            print(segments.to_markdown(floatfmt=".4g"))
        if args.plot:
            print(f"\nPosition-segmented plot: {Path(args.plot) / 'position_eval.png'}")


def data(args):
    tokens = args.view == "show" or args.tokens
    cfg = _config(args, loads_models=tokens)[0]
    from .data import describe

    tokenizer = None
    if tokens:  # the Generator's tokenizer only: no model is built, no tiny preset pretrained
        from .data.datamodule import pretraining_corpus
        from .models.backbones import load_tokenizer

        tokenizer = load_tokenizer(cfg, corpus=lambda: pretraining_corpus(cfg.data))
    if args.view == "stats":
        print(describe.stats(cfg.data, tokenizer))
        return
    try:
        print(describe.show(cfg.data, tokenizer, args.split, args.index))
    except IndexError as err:  # an --index outside the split: a usage error, not a bug
        raise DataError(str(err)) from None


def pretrain(args):
    cfg = _config(args)[0]
    from .lit.run import build

    build(cfg)
    print(f"Backbones cached under {cfg.logging.cache_dir}")


def bench(args):
    if args.benchmark == "data":
        from .bench.data import bench_data

        for name, value in bench_data(args.records, args.retriever, args.k, args.reference_records).items():
            print(f"{name:>28}: {value}")
        return
    if args.benchmark == "train":
        from .bench.train import bench_train

        result = bench_train(args.config, args.overrides, args.batches, args.repeats, args.out)
    else:
        from .bench.decode import bench_decode

        result = bench_decode(
            args.config,
            args.overrides,
            args.new_tokens,
            args.batch_sizes,
            args.repeats,
            args.out,
            compiled=not args.no_compile,
        )
    print(result.to_markdown(index=False))
    for note in result.attrs.get("notes", []):
        print(note)
    print(f"written {args.out}")


def gpu_check(args):
    from .bench.gpu.report import gpu_check as check, markdown

    print(markdown(check(args.out, args.sizes or "", args.only)))
    print(f"written {args.out} and {Path(args.out).with_suffix('.md')}")


def memory(args):
    cfg = _config(args, loads_models=False)[0]  # counts from known architectures: no model needs to load
    from .bench.memory import method_counts, per_rank
    from .lit.launch import processes
    from .lit.run import precision

    world = processes(cfg)  # the rule the sweep counts ranks by ("0,1" is two devices)
    counts = method_counts(cfg)
    print(
        f"{cfg.method}: {counts.total / 1e9:.3g} B parameters, {counts.trainable / 1e9:.3g} B trainable "
        f"(generator.mode={cfg.generator.mode}, reasoner.mode={cfg.reasoner.mode}); per rank, "
        "activations and the CUDA context not included:"
    )
    print(per_rank(counts, precision(cfg), args.ranks or sorted({world, 8})).to_markdown(index=False))


def sweep(args):
    from .sweep.runs import aggregate, plan, run_sweep
    from .sweep.spec import choose_launcher, load_sweep

    if args.file == "status":
        return sweep_status(args)
    spec = load_sweep(args.file, args.overrides)
    launcher = choose_launcher(spec.path, spec.launcher, args.launcher, args.parallel)
    out = Path(args.out or spec.results_dir)
    if args.dry_run:
        print(plan(spec).to_markdown())
        return
    if args.aggregate_only:
        waiting = plan(spec).query("status != 'done'")
        if len(waiting):
            print(f"Not finished yet, left out:\n{waiting.to_markdown()}\n")
        aggregate(spec, out)
    elif launcher.name == "slurm":
        from .sweep.launchers import submit_slurm

        submit_slurm(spec, launcher, out, args.overrides)
        print(f"Watch: flythinker sweep status {args.file}{' --out ' + args.out if args.out else ''} --wait")
        return
    elif launcher.name == "local":
        from .sweep.launchers import run_local

        run_local(spec, launcher, out, args.overrides)
    else:
        run_sweep(spec, out)
        if not _rank_zero():  # launched by torchrun/srun: rank 0 prints the results
            return
    print_results(out)


def print_results(out: Path) -> None:
    for table in ("table.md", "segments.md", "gaps.md", "segment_gaps.md"):
        if (out / table).exists():
            print((out / table).read_text())
    print(f"Results: {out}/ (table.csv, runs.csv, segments.csv, *.png)")


def sweep_status(args):
    """`flythinker sweep status FILE [overrides] [--wait]`: with no overrides, those the jobs were submitted with."""
    from .sweep.jobs import Manifest
    from .sweep.runs import aggregate
    from .sweep.spec import SweepError, load_sweep
    from .sweep.status import status_table, statuses, wait

    if not args.overrides:
        raise ConfigError("usage: flythinker sweep status SWEEP.yaml [key=value ...] [--wait] [--out DIR]")
    path, overrides = args.overrides[0], args.overrides[1:]
    out = Path(args.out or load_sweep(path).results_dir)
    manifest = Manifest(out)
    spec = load_sweep(path, overrides or manifest.data["overrides"])
    found = wait(spec, manifest) if args.wait else statuses(spec, manifest)
    print(status_table(found))
    if args.wait:
        unfinished = [s.run.key for s in found if s.state != "done"]
        if unfinished:
            raise SweepError(
                f"{path}: {len(unfinished)} of {len(found)} runs did not finish ({', '.join(unfinished)}); "
                "submit the sweep again to rerun them (they resume)"
            )
        aggregate(spec, out)
        print_results(out)


def probe(args):
    from .probe.run import print_summary, probe_runs

    from .probe.features import WINDOW_STARTS

    frame, out = probe_runs(
        args.runs,
        args.out,
        tuple(args.held_out),
        args.color_by,
        args.n_bootstrap,
        tuple(args.windows or WINDOW_STARTS),
        train_per_user=args.train_records_per_user or None,
    )
    print_summary(frame, out)


def export(args):
    from .hf.export import export as export_run

    print(f"Model folder: {export_run(args.run, args.out, args.adapters)}")


def generate(args):
    from .hf.stream import stream

    stream(args.source, args.record, args.history, args.query, args.max_new_tokens, args.greedy)


COMMANDS = {
    "run": run,
    "fit": fit,
    "predict": predict,
    "evaluate": evaluate,
    "table": table,
    "data": data,
    "pretrain": pretrain,
    "bench": bench,
    "gpu-check": gpu_check,
    "memory": memory,
    "sweep": sweep,
    "probe": probe,
    "export": export,
    "generate": generate,
}


# Commands whose rerun continues: training resumes from the run's last checkpoint, finished stages are reused.
RESUMABLE = ("run", "fit", "sweep")
_signals: list[int] = []


def _on_sigint(signum, frame):
    _signals.append(signum)  # Lightning turns the KeyboardInterrupt into sys.exit(1): remember why
    raise KeyboardInterrupt


def _interrupted(command: str, signum: int) -> int:
    if command in RESUMABLE:
        print(
            f"\ninterrupted ({signal.Signals(signum).name}): rerun the same command to continue; training "
            "resumes from the run's checkpoints/last.ckpt (saved at every validation) and finished stages are "
            "reused",
            file=sys.stderr,
        )
    else:
        print(f"\ninterrupted ({signal.Signals(signum).name})", file=sys.stderr)
    return 128 + signum


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # argparse fills `overrides` at the first positional chunk; key=value items placed among the
    # options after it come back as unknown, and are overrides all the same.
    args, unknown = parser.parse_known_args(argv)
    stray = [item for item in unknown if item.startswith("-") or "=" not in item or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if unknown:
        args.overrides = [*args.overrides, *unknown]
    silence_known_noise()
    _signals.clear()
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        COMMANDS[args.command](args)
    except (ConfigError, DataError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _interrupted(args.command, signal.SIGINT)
    except SystemExit as err:
        # Lightning's SIGTERMException (scancel, a pre-empting scheduler) is a SystemExit; matched by
        # name, as importing Lightning here would slow every config error
        if type(err).__name__ == "SIGTERMException":
            return _interrupted(args.command, signal.SIGTERM)
        if _signals:
            return _interrupted(args.command, _signals[-1])
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
