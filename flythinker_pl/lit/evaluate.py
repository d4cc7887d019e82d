"""Scoring predictions into their run dirs: metrics.json (merged), position_eval.csv/.png, and in
TensorBoard the scores (HPARAMS), the plot's panels (IMAGES) and a results summary (TEXT); several
runs also get one comparison table, plot (PNG and one TensorBoard image per panel, every run on one
axis) and the paired difference of each run from the first (`differences`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import pandas as pd
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter

from ..config import EvalConfig, load_config
from ..evaluation.gaps import GAP_METRICS, N_RESAMPLES, gap_table, window_gaps
from ..evaluation.metrics import METRICS
from ..evaluation.predictions import evaluate_predictions, read_predictions
from ..evaluation.report import (
    CSV_NAME,
    MIN_SAMPLES,
    comparison_table,
    comparison_title,
    log_position_panels,
    save_position_eval,
    segment_table,
)
from ..evaluation.segments import text_units, windows
from .logs import SCORE_NAMES, events_dir, result_tag
from .rundirs import EVAL_CONFIG, eval_yaml, finished_run_dir, holding


ANSWER = ("answer_accuracy", "answer_missing_reference", "answer_missing_prediction")  # with eval.answer_pattern


def predictions_file(path: str | Path) -> Path:
    """A predictions file, a run dir holding one, or an experiment dir (its newest run with one)."""
    path = Path(path)
    if path.is_file():
        return path
    return (
        holding(path, "predictions.jsonl", "no predictions.jsonl here (run `flythinker predict` first)")
        / "predictions.jsonl"
    )


def run_name(run_dir: Path) -> str:
    return f"{run_dir.parent.name}/{run_dir.name}"


def run_method(run_dir: Path) -> Optional[str]:
    """The method behind a run dir's scores: metrics.json's, else its saved config's."""
    metrics = run_dir / "metrics.json"
    method = json.loads(metrics.read_text()).get("method") if metrics.exists() else None
    for name in ("config.yaml", "predictions.config.yaml"):
        if method is None and (run_dir / name).exists():
            method = OmegaConf.load(run_dir / name).get("method")
    return method


def run_title(run_dir: Path, method: Optional[str]) -> str:
    """ "sft (demo_sft/version_0)": the method and the run, for plot titles."""
    return f"{method} ({run_name(run_dir)})" if method else run_name(run_dir)


def run_labels(run_dirs: list[Path]) -> dict[str, str]:
    """Plot labels by run name: the method where no other run has it, else "method (run name)"."""
    methods = {run_name(run_dir): run_method(run_dir) for run_dir in run_dirs}
    shared = list(methods.values())
    return {
        name: name if method is None else method if shared.count(method) == 1 else f"{method} ({name})"
        for name, method in methods.items()
    }


def _tokenizer_of(run_cfg):
    """The Generator tokenizer of the run that made the predictions (for eval.segment_unit=tokens)."""
    from ..data.datamodule import pretraining_corpus
    from ..models.backbones import load_tokenizer

    return load_tokenizer(run_cfg, corpus=lambda: pretraining_corpus(run_cfg.data))


def decode_cost(predictions: Path) -> dict:
    """Decoding latency from the timings `flythinker predict` writes on every row (each row carries
    its batch's): ms per decoding step, and seconds per sample (which also counts, e.g., the
    rationale a CoT model writes before its response). Empty for predictions made elsewhere."""
    rows = pd.read_json(predictions, lines=True)
    if not {"ms_per_token", "batch_seconds", "batch_size"} <= set(rows):
        return {}
    return {
        "ms_per_token": float(rows["ms_per_token"].mean()),
        "seconds_per_sample": float((rows["batch_seconds"] / rows["batch_size"]).mean()),
    }


def output_stats(predictions: Path) -> dict:
    """How outputs ended and how long they are beside their references: the share that ended by EOS
    (the rest were cut at decode.max_new_tokens; absent for predictions made elsewhere) and the
    mean length in words of predictions and references."""
    rows = pd.read_json(predictions, lines=True, dtype=False).drop_duplicates("id")
    words = {
        "words": float(rows["prediction"].fillna("").str.split().str.len().mean()),
        "reference_words": float(rows["reference"].str.split().str.len().mean()),
    }
    return ({"eos_share": float(rows["ended_by_eos"].mean())} if "ended_by_eos" in rows else {}) | words


def score_names(split: str) -> list[str]:
    """The metrics.json keys scoring a decoded split: generation metrics (and answer accuracy) with
    their intervals, the empty predictions, how outputs ended and their length, decoding cost."""
    scores = [f"{name}{side}" for name in [*METRICS, "bertscore", ANSWER[0]] for side in ("", "_ci_low", "_ci_high")]
    return [f"{split}/{name}" for name in [*scores, "empty", "eos_share", "words", "reference_words"]] + [
        "decode/ms_per_token",
        "decode/seconds_per_sample",
    ]


def log_scores(writer: SummaryWriter, metrics: dict, split: str) -> None:
    """The split's scores as one-value TensorBoard scalars (logs.result_tag) at the run's last step,
    where the HPARAMS tab (logs.log_hparams) reads them, and as one TEXT summary (`results/<split>`)
    that reads at a glance."""
    for name in score_names(split):
        if isinstance(metrics.get(name), (int, float)):
            writer.add_scalar(result_tag(name), metrics[name], metrics.get("global_step", 0))
    row = pd.DataFrame([metrics], index=["this run"])
    writer.add_text(
        f"results/{split}",
        "\n\n".join([summary_table(row).T.to_markdown(), *interval_notes(scored_counts(row))]),
        metrics.get("global_step", 0),
    )


def evaluate_run(predictions: Path, cfg: EvalConfig) -> tuple[dict, pd.DataFrame]:
    saved = predictions.with_suffix(".config.yaml")  # absent for predictions made elsewhere
    run_cfg = load_config(saved) if saved.exists() else None
    if cfg.segment_unit == "tokens" and run_cfg is None:
        raise FileNotFoundError(f"{saved}: eval.segment_unit=tokens needs the config that made the predictions")
    tokenizer = _tokenizer_of(run_cfg) if cfg.segment_unit == "tokens" else None
    overall, segments = evaluate_predictions(
        predictions,
        cfg.segment_width,
        cfg.segment_max,
        cfg.segment_unit,
        tokenizer,
        cfg.n_bootstrap,
        cfg.bootstrap_seed,
        cfg.empty,
        cfg.bertscore_model,
        cfg.bertscore_layer,
        cfg.answer_pattern,
    )
    run_dir = predictions.parent
    split, method = (run_cfg.decode.split, run_cfg.method) if run_cfg else ("test", run_method(run_dir))
    title = f"{run_title(run_dir, method)}, {split} split"
    segments = segments.assign(method=method) if method else segments
    save_position_eval(segments, run_dir, title)
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    replaced = {
        f"{split}/{name}{suffix}"
        for name in ("count", "empty", "dropped", *METRICS, "bertscore", *ANSWER)
        for suffix in ("", "_ci_low", "_ci_high", "_unavailable")
    }  # a rescore leaves no stale key
    metrics = {key: value for key, value in metrics.items() if key not in replaced}
    metrics.update({f"{split}/{name}": value for name, value in (overall | output_stats(predictions)).items()})
    metrics.update({f"decode/{name}": value for name, value in decode_cost(predictions).items()})
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    with SummaryWriter(str(events_dir(run_dir, method))) as writer:
        log_position_panels(writer, f"position_eval/{split}", segments, title)  # one image per panel
        log_scores(writer, metrics, split)
    (run_dir / EVAL_CONFIG).write_text(eval_yaml(cfg))
    return overall, segments


def evaluate_runs(
    paths: list[str | Path], cfg: EvalConfig, out_dir: Optional[str | Path] = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(comparison table, segment scores of every run). With several runs and `out_dir`, the
    combined comparison (save_comparison) is written there too."""
    scores, frames, run_dirs = {}, [], []
    for path in paths:
        predictions = predictions_file(path)
        overall, segments = evaluate_run(predictions, cfg)
        run_dirs.append(predictions.parent)
        name = run_name(predictions.parent)
        scores[name] = overall
        frames.append(segments.assign(run=name))
    combined = labelled(pd.concat(frames, ignore_index=True), run_dirs)
    if out_dir is not None and len(frames) > 1:
        save_comparison(combined, run_dirs, out_dir)
    return comparison_table(scores), combined


def labelled(frame: pd.DataFrame, run_dirs: list[Path]) -> pd.DataFrame:
    """Segment scores of several runs (`run` column) with each line's `label` and `method`."""
    return frame.assign(
        label=frame["run"].map(run_labels(run_dirs)),
        method=frame["run"].map({run_name(d): run_method(d) for d in run_dirs}),
    )


def run_split(run_dir: Path) -> str:
    """The split a run decoded (its predictions' saved config; "test" for predictions made elsewhere)."""
    saved = run_dir / "predictions.config.yaml"
    return OmegaConf.load(saved).get("decode", {}).get("split", "test") if saved.exists() else "test"


def save_comparison(combined: pd.DataFrame, run_dirs: list[Path], out_dir: str | Path, summary: str = "") -> None:
    """The comparison in `out_dir`: position_eval.csv/.png (all panels, titled with the split and the
    runs) and, for TensorBoard (a run named after `out_dir`), one image per panel with every run on
    one axis (`position_eval/<split>/<panel>`, the tag of each run's own panels) and `summary` as TEXT."""
    split = run_split(run_dirs[0])
    title = comparison_title(split, [run_title(run_dir, run_method(run_dir)) for run_dir in run_dirs])
    save_position_eval(combined, out_dir, title)
    with SummaryWriter(str(out_dir)) as writer:
        log_position_panels(writer, f"position_eval/{split}", combined, title)
        if summary:
            writer.add_text("comparison", summary)


def runs_table(paths: list[str | Path]) -> pd.DataFrame:
    """One row per run from its metrics.json: nothing is recomputed."""
    rows = []
    for path in paths:
        run_dir = finished_run_dir(path)
        rows.append({"run": run_name(run_dir), **json.loads((run_dir / "metrics.json").read_text())})
    return pd.DataFrame(rows).set_index("run")


def _scored_split(row: pd.Series) -> Optional[str]:
    return next((key.split("/")[0] for key in row.index if key.endswith("/bleu") and pd.notna(row[key])), None)


def _with_interval(row: pd.Series, key: str, digits: int) -> Optional[str]:
    if pd.isna(row.get(key)):
        return None
    low, high = row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
    value = f"{row[key]:.{digits}f}"
    count = row.get(f"{key.split('/')[0]}/count")
    if pd.notna(count) and count < MIN_SAMPLES:  # a bootstrap over so few records is no interval
        return f"{value} (n={count:.0f}, no interval)"
    return value if pd.isna(low) or pd.isna(high) else f"{value} [{low:.{digits}f}, {high:.{digits}f}]"


def scored_counts(runs: pd.DataFrame) -> dict[str, float]:
    """The records each run (a runs_table row) was scored over."""
    splits = {name: _scored_split(row) for name, row in runs.iterrows()}
    return {name: runs.loc[name].get(f"{split}/count") for name, split in splits.items() if split}


def interval_notes(counts: dict[str, float]) -> list[str]:
    """One line per run scored over fewer than MIN_SAMPLES records: its intervals mean nothing."""
    return [
        f"Note: {name} was scored over {count:.0f} record(s): a 95% interval over fewer than {MIN_SAMPLES} "
        "means nothing (one record gives a zero-width one); score more records before reading or comparing it."
        for name, count in counts.items()
        if pd.notna(count) and count < MIN_SAMPLES
    ]


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """runs_table as a result reads: one row per run, rounded, generation metrics (and answer
    accuracy, with eval.answer_pattern) with their 95% bootstrap intervals, the empty predictions
    (where there are any; "dropped" under eval.empty=drop), the share of outputs that ended by EOS
    and their length beside the references'. A column no run has is left out; a cell a run lacks is blank."""

    def summary(row: pd.Series) -> dict:
        def number(key: str, spec: str) -> Optional[str]:
            return format(row[key], spec) if pd.notna(row.get(key)) else None

        split = _scored_split(row) or "test"
        loss, before = number("val/loss", ".3f"), number("val/loss_before", ".3f")
        words, reference = number(f"{split}/words", ".0f"), number(f"{split}/reference_words", ".0f")
        empty = number(f"{split}/empty", ".0f") if row.get(f"{split}/empty") else None
        if empty and pd.notna(row.get(f"{split}/dropped")):
            empty += " dropped"
        return {
            "method": row.get("method"),
            "steps": row.get("global_step"),
            "val loss": f"{before} -> {loss}" if before and loss else loss,
            **{
                f"{split} {name}": _with_interval(row, f"{split}/{key}", digits)
                for name, key, digits in [
                    ("BLEU", "bleu", 2),
                    ("ROUGE-1", "rouge1", 3),
                    ("ROUGE-L", "rougeL", 3),
                    ("METEOR", "meteor", 3),
                    ("BERTScore", "bertscore", 3),
                    ("answer acc.", ANSWER[0], 3),
                ]
            },
            "empty": empty,
            "ended by EOS": number(f"{split}/eos_share", ".0%"),
            "words (reference)": f"{words} ({reference})" if words else None,
            "ms/token": number("decode/ms_per_token", ".1f"),
        }

    table = pd.DataFrame([summary(row) for _, row in runs.iterrows()], index=runs.index)
    return table.dropna(axis=1, how="all").fillna("")


def runs_segments(paths: list[str | Path], out_dir: Optional[str | Path] = None, summary: str = "") -> pd.DataFrame:
    """The runs' position_eval.csv side by side (segment_table layout); with `out_dir`, also the
    combined comparison (save_comparison, with `summary` as its TensorBoard TEXT)."""
    frames, run_dirs = [], []
    for path in paths:
        run_dir = finished_run_dir(path)
        if not (run_dir / CSV_NAME).exists():
            raise FileNotFoundError(f"{run_dir}: no {CSV_NAME} (run `flythinker evaluate` or `flythinker run`)")
        run_dirs.append(run_dir)
        frames.append(pd.read_csv(run_dir / CSV_NAME).assign(run=run_name(run_dir)))
    combined = labelled(pd.concat(frames, ignore_index=True), run_dirs)
    if out_dir is not None:
        save_comparison(combined, run_dirs, out_dir, summary)
    return segment_table(combined)


def _settings(run_dir: Path) -> tuple[EvalConfig, Optional[object]]:
    """(the eval settings a run was scored with, its run config or None)."""
    scored = run_dir / EVAL_CONFIG
    cfg = EvalConfig(**OmegaConf.to_container(OmegaConf.load(scored))) if scored.exists() else EvalConfig()
    saved = run_dir / "config.yaml"
    return cfg, load_config(saved) if saved.exists() else None


def verdict(low: float, high: float, count: int, run: str, reference: str, digits: int) -> str:
    """What a paired 95% interval of `run` minus `reference` says, in words (read at the `digits` it is
    printed with: an interval that shows as [+0.00, +0.00] is no difference)."""
    if count < MIN_SAMPLES:
        return f"too few records (n={count}) to tell"
    low, high = round(low, digits), round(high, digits)
    return f"{run} ahead" if low > 0 else f"{reference} ahead" if high < 0 else "no difference at 95%"


def differences(paths: list[str | Path], last_windows: int = 2) -> tuple[pd.DataFrame, list[str]]:
    """Each run minus the first (the reference), paired over the records both decoded: per metric,
    the difference, its 95% bootstrap interval (gaps.py: gap_table overall, window_gaps for the last
    `last_windows` position windows that at least MIN_SAMPLES references reach, in the reference's
    eval.segment_* windows) and a verdict. Returns (table, notes on runs that could not be paired)."""
    run_dirs = [finished_run_dir(path) for path in paths]
    labels, reference, seeds = run_labels(run_dirs), run_dirs[0], {}
    for run_dir in run_dirs:
        cfg, run_cfg = _settings(run_dir)
        seeds[run_dir] = run_cfg.seed if run_cfg else 0
    cfg, run_cfg = _settings(reference)
    units = text_units(cfg.segment_unit, _tokenizer_of(run_cfg) if cfg.segment_unit == "tokens" else None)
    rows, notes = [], []
    for run_dir in run_dirs[1:]:
        mine, theirs = labels[run_name(run_dir)], labels[run_name(reference)]
        if not all((d / "predictions.jsonl").exists() for d in (run_dir, reference)):
            notes.append(f"{mine} vs {theirs}: no difference without both runs' predictions.jsonl")
            continue
        runs = pd.DataFrame(
            {
                "point": [run_name(run_dir), run_name(reference)],
                "seed": [seeds[run_dir], seeds[reference]],
                "run_dir": [str(run_dir), str(reference)],
            }
        )
        try:
            overall = gap_table(
                runs,
                {run_name(run_dir): run_name(reference)},
                answer_pattern=cfg.answer_pattern,
                seed=cfg.bootstrap_seed,
            ).iloc[0]
            by_window = window_gaps(
                run_dir,
                reference,
                windows(cfg.segment_width, cfg.segment_max),
                units,
                seed=cfg.bootstrap_seed,
                min_count=MIN_SAMPLES,
                last=last_windows,
                training_seed=seeds[run_dir],
            )
        except ValueError as err:  # different records: nothing to pair
            notes.append(f"{mine} vs {theirs}: {err}")
            continue
        count = len(read_predictions(reference / "predictions.jsonl"))
        scopes = [(f"all ({count} records)", count, overall)] + [
            (
                f"{cfg.segment_unit} {w['segment_start']:.0f}-{w['segment_end']:.0f} ({w['count']:.0f} records)",
                int(w["count"]),
                w,
            )
            for _, w in by_window.iterrows()
        ]
        for scope, n, gaps in scopes:
            for metric in (m for m in GAP_METRICS if pd.notna(gaps.get(f"{m}_gap"))):
                digits = 2 if metric == "bleu" else 3
                gap, low, high = (gaps[f"{metric}_{key}"] for key in ("gap", "ci_low", "ci_high"))
                rows.append(
                    {
                        "compared": f"{mine} - {theirs}",
                        "records": scope,
                        "metric": SCORE_NAMES[metric],
                        "difference": f"{gap:+.{digits}f}",
                        "95% interval": f"[{low:+.{digits}f}, {high:+.{digits}f}]",
                        "verdict": verdict(low, high, n, mine, theirs, digits),
                    }
                )
    return pd.DataFrame(rows), notes


DIFFERENCES_NOTE = (
    f"Paired bootstrap ({N_RESAMPLES} resamples of the records both runs decoded) of each run "
    "minus the first; BLEU 0-100, the others 0-1"
)
