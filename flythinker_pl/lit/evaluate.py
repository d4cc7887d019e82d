"""Scoring predictions into their run dirs: metrics.json (merged), position_eval.csv/.png and the
plot's panels as TensorBoard images; several runs also get one comparison table and plot."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import pandas as pd
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter

from ..config import EvalConfig, load_config
from ..evaluation.metrics import METRICS
from ..evaluation.predictions import evaluate_predictions
from ..evaluation.report import CSV_NAME, comparison_table, log_position_panels, save_position_eval, segment_table
from .rundirs import holding


EVAL_CONFIG = "eval_config.yaml"  # the eval settings behind a run dir's scores
ANSWER = ("answer_accuracy", "answer_missing_reference", "answer_missing_prediction")  # with eval.answer_pattern


def eval_yaml(cfg: EvalConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def predictions_file(path: str | Path) -> Path:
    """A predictions file, a run dir holding one, or an experiment dir (its newest run with one)."""
    path = Path(path)
    if path.is_file():
        return path
    return holding(path, "predictions.jsonl", "no predictions.jsonl here (run `flythinker predict` first)") \
        / "predictions.jsonl"


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


def run_labels(run_dirs: list[Path]) -> dict[str, str]:
    """Plot labels by run name: the method where no other run has it, else "method (run name)"."""
    methods = {run_name(run_dir): run_method(run_dir) for run_dir in run_dirs}
    shared = list(methods.values())
    return {name: name if method is None else method if shared.count(method) == 1 else f"{method} ({name})"
            for name, method in methods.items()}


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
    return {"ms_per_token": float(rows["ms_per_token"].mean()),
            "seconds_per_sample": float((rows["batch_seconds"] / rows["batch_size"]).mean())}


def output_stats(predictions: Path) -> dict:
    """How outputs ended and how long they are beside their references: the share that ended by EOS
    (the rest were cut at decode.max_new_tokens; absent for predictions made elsewhere) and the
    mean length in words of predictions and references."""
    rows = pd.read_json(predictions, lines=True, dtype=False).drop_duplicates("id")
    words = {"words": float(rows["prediction"].fillna("").str.split().str.len().mean()),
             "reference_words": float(rows["reference"].str.split().str.len().mean())}
    return ({"eos_share": float(rows["ended_by_eos"].mean())} if "ended_by_eos" in rows else {}) | words


def score_names(split: str) -> list[str]:
    """The metrics.json keys scoring a decoded split: generation metrics (and answer accuracy) with
    their intervals, the empty predictions, how outputs ended and their length, decoding cost."""
    scores = [f"{name}{side}" for name in [*METRICS, "bertscore", ANSWER[0]] for side in ("", "_ci_low", "_ci_high")]
    return [f"{split}/{name}" for name in [*scores, "empty", "eos_share", "words", "reference_words"]] + \
        ["decode/ms_per_token", "decode/seconds_per_sample"]


def log_scores(run_dir: Path, metrics: dict, split: str) -> None:
    """The split's scores as TensorBoard scalars at the run's last step, where the HPARAMS tab
    (run.log_hparams) reads them."""
    with SummaryWriter(str(run_dir)) as writer:
        for name in score_names(split):
            if isinstance(metrics.get(name), (int, float)):
                writer.add_scalar(name, metrics[name], metrics.get("global_step", 0))


def evaluate_run(predictions: Path, cfg: EvalConfig) -> tuple[dict, pd.DataFrame]:
    saved = predictions.with_suffix(".config.yaml")  # absent for predictions made elsewhere
    run_cfg = load_config(saved) if saved.exists() else None
    if cfg.segment_unit == "tokens" and run_cfg is None:
        raise FileNotFoundError(f"{saved}: eval.segment_unit=tokens needs the config that made the predictions")
    tokenizer = _tokenizer_of(run_cfg) if cfg.segment_unit == "tokens" else None
    overall, segments = evaluate_predictions(predictions, cfg.segment_width, cfg.segment_max, cfg.segment_unit,
                                             tokenizer, cfg.n_bootstrap, cfg.bootstrap_seed, cfg.empty,
                                             cfg.bertscore_model, cfg.bertscore_layer, cfg.answer_pattern)
    run_dir = predictions.parent
    split = run_cfg.decode.split if run_cfg else "test"
    title = f"{run_cfg.method} ({run_name(run_dir)})" if run_cfg else run_name(run_dir)
    title += f", {split} split"
    save_position_eval(segments, run_dir, title)
    with SummaryWriter(str(run_dir)) as writer:  # one image per panel: a strip of five reads as a thumbnail
        log_position_panels(writer, f"position_eval/{split}", segments, title)
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    replaced = {f"{split}/{name}{suffix}" for name in ("count", "empty", "dropped", *METRICS, "bertscore", *ANSWER)
                for suffix in ("", "_ci_low", "_ci_high", "_unavailable")}  # a rescore leaves no stale key
    metrics = {key: value for key, value in metrics.items() if key not in replaced}
    metrics.update({f"{split}/{name}": value for name, value in (overall | output_stats(predictions)).items()})
    metrics.update({f"decode/{name}": value for name, value in decode_cost(predictions).items()})
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    log_scores(run_dir, metrics, split)
    (run_dir / EVAL_CONFIG).write_text(eval_yaml(cfg))
    return overall, segments


def evaluate_runs(paths: list[str | Path], cfg: EvalConfig,
                  out_dir: Optional[str | Path] = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(comparison table, segment scores of every run). With several runs and `out_dir`, the
    combined position_eval.csv/.png (one line per run, labelled by method) are written there too."""
    scores, frames, run_dirs = {}, [], []
    for path in paths:
        predictions = predictions_file(path)
        overall, segments = evaluate_run(predictions, cfg)
        run_dirs.append(predictions.parent)
        name = run_name(predictions.parent)
        scores[name] = overall
        frames.append(segments.assign(run=name))
    combined = pd.concat(frames, ignore_index=True)
    combined["label"] = combined["run"].map(run_labels(run_dirs))
    if out_dir is not None and len(frames) > 1:
        save_position_eval(combined, out_dir)
    return comparison_table(scores), combined


def finished_run_dir(path: str | Path) -> Path:
    """A run dir, or an experiment dir whose newest finished version (with metrics.json) is taken."""
    return holding(path, "metrics.json", "no finished run (a run dir with metrics.json) found")


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
    return value if pd.isna(low) or pd.isna(high) else f"{value} [{low:.{digits}f}, {high:.{digits}f}]"


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
        return {"method": row.get("method"), "steps": row.get("global_step"),
                "val loss": f"{before} -> {loss}" if before and loss else loss,
                **{f"{split} {name}": _with_interval(row, f"{split}/{key}", digits) for name, key, digits in
                   [("BLEU", "bleu", 2), ("ROUGE-1", "rouge1", 3), ("ROUGE-L", "rougeL", 3), ("METEOR", "meteor", 3),
                    ("BERTScore", "bertscore", 3), ("answer acc.", ANSWER[0], 3)]},
                "empty": empty,
                "ended by EOS": number(f"{split}/eos_share", ".0%"),
                "words (reference)": f"{words} ({reference})" if words else None,
                "ms/token": number("decode/ms_per_token", ".1f")}

    table = pd.DataFrame([summary(row) for _, row in runs.iterrows()], index=runs.index)
    return table.dropna(axis=1, how="all").fillna("")


def runs_segments(paths: list[str | Path], out_dir: Optional[str | Path] = None) -> pd.DataFrame:
    """The runs' position_eval.csv side by side (segment_table layout); with `out_dir`, also the
    combined CSV and plot (one line per run, labelled by method)."""
    frames, run_dirs = [], []
    for path in paths:
        run_dir = finished_run_dir(path)
        if not (run_dir / CSV_NAME).exists():
            raise FileNotFoundError(f"{run_dir}: no {CSV_NAME} (run `flythinker evaluate` or `flythinker run`)")
        run_dirs.append(run_dir)
        frames.append(pd.read_csv(run_dir / CSV_NAME).assign(run=run_name(run_dir)))
    combined = pd.concat(frames, ignore_index=True)
    combined["label"] = combined["run"].map(run_labels(run_dirs))
    if out_dir is not None:
        save_position_eval(combined, out_dir)
    return segment_table(combined)
